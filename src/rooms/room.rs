//! One actor per active room: its members' sessions, presence, typing and
//! read receipts, and fan-out of committed messages strictly in seq order.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::hub::{Hub, RoomIdle, RoomStopped};
use super::sequencer::StoredMessage;
use super::{RoomKind, RoomName};
use crate::db::bookings::Participant;
use crate::db::Db;
use crate::error::AppError;
use crate::ws::frames::{MemberView, ServerFrame};
use crate::ws::session::ToSession;

/// How long a hole in the seq order may wait for the missing message to
/// arrive before it is read back from the store.
const GAP_WAIT: Duration = Duration::from_millis(200);

#[derive(Clone)]
pub struct RoomMember {
    pub session_id: String,
    pub user_id: String,
    pub name: String,
    pub role: String,
    pub recipient: Recipient<ToSession>,
}

pub struct JoinInfo {
    /// Every message with a higher seq is delivered to the new member live.
    pub last_seq: i64,
    pub members: Vec<MemberView>,
}

pub struct RoomActor {
    name: Arc<str>,
    db: Db,
    hub: Addr<Hub>,
    idle_after: Duration,
    members: HashMap<String, RoomMember>,
    participants: Vec<Participant>,
    /// Highest seq delivered to members.
    last_seq: i64,
    /// Committed messages that arrived ahead of a missing one.
    waiting: BTreeMap<i64, Arc<StoredMessage>>,
    gap_check: Option<SpawnHandle>,
    idle_check: Option<SpawnHandle>,
    joins_seen: u64,
}

impl RoomActor {
    pub fn new(name: String, db: Db, hub: Addr<Hub>, idle_after: Duration) -> Self {
        RoomActor {
            name: name.into(),
            db,
            hub,
            idle_after,
            members: HashMap::new(),
            participants: Vec::new(),
            last_seq: 0,
            waiting: BTreeMap::new(),
            gap_check: None,
            idle_check: None,
            joins_seen: 0,
        }
    }

    fn user_present(&self, user_id: &str) -> bool {
        self.members.values().any(|m| m.user_id == user_id)
    }

    /// Sends a frame to every member whose user is not `except_user`.
    fn broadcast_event(&self, frame: &bytestring::ByteString, except_user: Option<&str>) {
        for member in self.members.values() {
            if Some(member.user_id.as_str()) != except_user {
                member.recipient.do_send(ToSession::Event(frame.clone()));
            }
        }
    }

    fn deliver_in_order(&mut self, ctx: &mut Context<Self>) {
        while let Some(message) = self.waiting.remove(&(self.last_seq + 1)) {
            self.last_seq = message.row.seq;
            for member in self.members.values() {
                member.recipient.do_send(ToSession::Message {
                    room: self.name.clone(),
                    seq: message.row.seq,
                    frame: message.frame.clone(),
                });
            }
        }
        if self.waiting.is_empty() {
            if let Some(handle) = self.gap_check.take() {
                ctx.cancel_future(handle);
            }
        } else if self.gap_check.is_none() {
            self.gap_check = Some(ctx.run_later(GAP_WAIT, |room, ctx| {
                room.gap_check = None;
                room.fill_gap(ctx);
            }));
        }
    }

    /// Reads the messages missing before the first waiting one.
    fn fill_gap(&mut self, ctx: &mut Context<Self>) {
        let Some(&first_waiting) = self.waiting.keys().next() else {
            return;
        };
        let db = self.db.clone();
        let room = self.name.to_string();
        let after = self.last_seq;
        ctx.wait(
            async move {
                db.messages_after(&room, after, first_waiting - 1, first_waiting - after)
                    .await
            }
            .into_actor(self)
            .map(|result, room, ctx| {
                match result {
                    Ok(rows) => {
                        for row in rows {
                            let seq = row.seq;
                            if seq > room.last_seq {
                                room.waiting.insert(seq, StoredMessage::new(row));
                            }
                        }
                    }
                    Err(error) => tracing::warn!(%error, room = %room.name, "gap fill failed"),
                }
                room.deliver_in_order(ctx);
            }),
        );
    }

    fn schedule_idle_check(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.idle_check.take() {
            ctx.cancel_future(handle);
        }
        self.idle_check = Some(ctx.run_later(self.idle_after, |room, _| {
            room.idle_check = None;
            if room.members.is_empty() {
                room.hub.do_send(RoomIdle {
                    room: room.name.to_string(),
                    joins_seen: room.joins_seen,
                });
            }
        }));
    }

    fn load_participants(&mut self, ctx: &mut Context<Self>) {
        let Ok(name) = RoomName::parse(&self.name) else {
            return;
        };
        if name.kind() != RoomKind::Booking {
            return;
        }
        let db = self.db.clone();
        ctx.wait(
            async move { db.booking_participants(name.id()).await }
                .into_actor(self)
                .map(|result, room, ctx| match result {
                    Ok(participants) => {
                        room.participants = participants;
                        room.drop_non_participants(ctx);
                    }
                    Err(error) => tracing::warn!(%error, "cannot load participants"),
                }),
        );
    }

    /// A participant removed from the booking loses the room at once
    /// (admins stay: they never were participants).
    fn drop_non_participants(&mut self, _ctx: &mut Context<Self>) {
        let participants: Vec<&str> = self
            .participants
            .iter()
            .map(|p| p.user_id.as_str())
            .collect();
        let removed: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.role != "admin" && !participants.contains(&m.user_id.as_str()))
            .map(|(id, _)| id.clone())
            .collect();
        for session_id in removed {
            if let Some(member) = self.members.remove(&session_id) {
                member.recipient.do_send(ToSession::Kicked {
                    room: self.name.clone(),
                });
            }
        }
    }

    fn member_views(&self) -> Vec<MemberView> {
        let mut views: Vec<MemberView> = self
            .participants
            .iter()
            .map(|p| MemberView {
                user_id: p.user_id.clone(),
                name: p.name.clone(),
                role: p.role.clone(),
                online: self.user_present(&p.user_id),
            })
            .collect();
        for member in self.members.values() {
            if views.iter().all(|v| v.user_id != member.user_id) {
                views.push(MemberView {
                    user_id: member.user_id.clone(),
                    name: member.name.clone(),
                    role: member.role.clone(),
                    online: true,
                });
            }
        }
        views
    }
}

impl Actor for RoomActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let db = self.db.clone();
        let room = self.name.to_string();
        // Nothing is handled until the room knows where its sequence stands.
        ctx.wait(
            async move { db.room_last_seq(&room).await }
                .into_actor(self)
                .map(|result, room, ctx| match result {
                    Ok(last_seq) => room.last_seq = last_seq,
                    Err(error) => {
                        tracing::error!(%error, room = %room.name, "cannot load room");
                        ctx.stop();
                    }
                }),
        );
        self.load_participants(ctx);
        self.schedule_idle_check(ctx);
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        self.hub.do_send(RoomStopped {
            room: self.name.to_string(),
            addr: ctx.address(),
        });
    }
}

#[derive(Message)]
#[rtype(result = "Result<JoinInfo, AppError>")]
pub struct Join {
    pub member: RoomMember,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    pub session_id: String,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Typing {
    pub user_id: String,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct ReadReceipt {
    pub user_id: String,
    pub seq: i64,
}

/// A committed message for fan-out.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Deliver(pub Arc<StoredMessage>);

#[derive(Message)]
#[rtype(result = "()")]
pub struct ReloadParticipants;

#[derive(Message)]
#[rtype(result = "()")]
pub struct StopRoom;

impl Handler<Join> for RoomActor {
    type Result = Result<JoinInfo, AppError>;

    fn handle(&mut self, msg: Join, ctx: &mut Context<Self>) -> Self::Result {
        self.joins_seen += 1;
        if let Some(handle) = self.idle_check.take() {
            ctx.cancel_future(handle);
        }
        let member = msg.member;
        let newly_present = !self.user_present(&member.user_id);
        let user_id = member.user_id.clone();
        self.members.insert(member.session_id.clone(), member);
        if newly_present {
            let frame = ServerFrame::Presence {
                room: &self.name,
                user_id: &user_id,
                online: true,
            }
            .encode();
            self.broadcast_event(&frame, Some(&user_id));
        }
        Ok(JoinInfo {
            last_seq: self.last_seq,
            members: self.member_views(),
        })
    }
}

impl Handler<Leave> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: Leave, ctx: &mut Context<Self>) {
        let Some(member) = self.members.remove(&msg.session_id) else {
            return;
        };
        if !self.user_present(&member.user_id) {
            let frame = ServerFrame::Presence {
                room: &self.name,
                user_id: &member.user_id,
                online: false,
            }
            .encode();
            self.broadcast_event(&frame, None);
        }
        if self.members.is_empty() {
            self.schedule_idle_check(ctx);
        }
    }
}

impl Handler<Typing> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: Typing, _: &mut Context<Self>) {
        let frame = ServerFrame::Typing {
            room: &self.name,
            user_id: &msg.user_id,
        }
        .encode();
        self.broadcast_event(&frame, Some(&msg.user_id));
    }
}

impl Handler<ReadReceipt> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: ReadReceipt, _: &mut Context<Self>) {
        let frame = ServerFrame::Read {
            room: &self.name,
            user_id: &msg.user_id,
            seq: msg.seq,
        }
        .encode();
        self.broadcast_event(&frame, Some(&msg.user_id));
    }
}

impl Handler<Deliver> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Context<Self>) {
        let seq = msg.0.row.seq;
        if seq > self.last_seq {
            self.waiting.insert(seq, msg.0);
            self.deliver_in_order(ctx);
        }
    }
}

impl Handler<ReloadParticipants> for RoomActor {
    type Result = ();

    fn handle(&mut self, _: ReloadParticipants, ctx: &mut Context<Self>) {
        self.load_participants(ctx);
    }
}

impl Handler<StopRoom> for RoomActor {
    type Result = ();

    fn handle(&mut self, _: StopRoom, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// A frame for the members who are not among `participants`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ToNonParticipants {
    pub participants: Vec<String>,
    pub frame: bytestring::ByteString,
}

impl Handler<ToNonParticipants> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: ToNonParticipants, _: &mut Context<Self>) {
        for member in self.members.values() {
            if !msg.participants.contains(&member.user_id) {
                member
                    .recipient
                    .do_send(ToSession::Event(msg.frame.clone()));
            }
        }
    }
}

/// A frame for every member.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Broadcast(pub bytestring::ByteString);

impl Handler<Broadcast> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: Broadcast, _: &mut Context<Self>) {
        self.broadcast_event(&msg.0, None);
    }
}
