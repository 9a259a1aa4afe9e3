//! One actor per active room on a node: its members' sessions, presence,
//! typing and read receipts, and fan-out of committed messages strictly in
//! seq order.
//!
//! Presence is per room: a user is online in a room while one of their
//! sessions has joined it, on this node or another (leases in Redis).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytestring::ByteString;

use super::hub::{Hub, RoomIdle, RoomStopped};
use super::member::{offer, ToSession};
use super::sequencer::StoredMessage;
use super::{RoomKind, RoomName};
use crate::cluster::{Channel, Cluster, ClusterEvent};
use crate::db::bookings::Participant;
use crate::db::Db;
use crate::domain::wire::{MemberView, ServerFrame};
use crate::error::AppError;
use crate::metrics::Metrics;

/// How long a hole in the seq order may wait for the missing message to
/// arrive before it is read back from the store.
const GAP_WAIT: Duration = Duration::from_millis(200);
/// Messages read from the store per catch-up query.
const CATCH_UP_PAGE: i64 = 500;

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
    cluster: Cluster,
    idle_after: Duration,
    metrics: Arc<Metrics>,
    /// This node's sessions in the room. A list, not a map: delivery walks
    /// them all, and per member it is a fraction of a map's memory.
    members: Vec<RoomMember>,
    participants: Vec<Participant>,
    /// Users present in this room on other nodes.
    remote_users: HashSet<String>,
    /// Users last announced online to this node's members.
    announced: HashSet<String>,
    /// Highest seq delivered to members.
    last_seq: i64,
    /// Committed messages that arrived ahead of a missing one.
    waiting: BTreeMap<i64, Arc<StoredMessage>>,
    gap_check: Option<SpawnHandle>,
    idle_check: Option<SpawnHandle>,
    joins_seen: u64,
}

impl RoomActor {
    pub fn new(
        name: String,
        db: Db,
        hub: Addr<Hub>,
        cluster: Cluster,
        idle_after: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        RoomActor {
            name: name.into(),
            db,
            hub,
            cluster,
            idle_after,
            metrics,
            members: Vec::new(),
            participants: Vec::new(),
            remote_users: HashSet::new(),
            announced: HashSet::new(),
            last_seq: 0,
            waiting: BTreeMap::new(),
            gap_check: None,
            idle_check: None,
            joins_seen: 0,
        }
    }

    fn remove_member(&mut self, session_id: &str) -> Option<RoomMember> {
        let at = self
            .members
            .iter()
            .position(|m| m.session_id == session_id)?;
        Some(self.members.swap_remove(at))
    }

    fn local_users(&self) -> HashSet<String> {
        self.members.iter().map(|m| m.user_id.clone()).collect()
    }

    /// Sends a frame to every member whose user is not in `except_users`.
    fn broadcast_event(&mut self, frame: &ByteString, except_users: &[String]) {
        let metrics = &self.metrics;
        metrics.frames_out.inc_by(self.members.len() as u64);
        self.members.retain(|member| {
            except_users.contains(&member.user_id)
                || offer(&member.recipient, ToSession::Event(frame.clone()), metrics)
        });
    }

    /// Sends a frame to members here and on the other nodes.
    fn broadcast_everywhere(&mut self, frame: ByteString, except_users: Vec<String>) {
        self.broadcast_event(&frame, &except_users);
        self.cluster.publish(
            Channel::Room(self.name.to_string()),
            ClusterEvent::RoomFrame {
                frame: frame.to_string(),
                except_users,
            },
        );
    }

    /// Tells this node's members who came online or went offline since the
    /// last announcement (a user is not told about themself).
    fn announce_presence(&mut self) {
        let online: HashSet<String> = self
            .local_users()
            .union(&self.remote_users)
            .cloned()
            .collect();
        let changes: Vec<(String, bool)> = online
            .difference(&self.announced)
            .map(|u| (u.clone(), true))
            .chain(
                self.announced
                    .difference(&online)
                    .map(|u| (u.clone(), false)),
            )
            .collect();
        for (user_id, is_online) in changes {
            let frame = ServerFrame::Presence {
                room: &self.name,
                user_id: &user_id,
                online: is_online,
            }
            .encode();
            self.broadcast_event(&frame, std::slice::from_ref(&user_id));
        }
        self.announced = online;
    }

    /// A user arrived or left on this node: announce it here, record it in
    /// the cluster and let the other nodes announce it.
    fn local_presence_changed(&mut self, ctx: &mut Context<Self>, user_id: &str, present: bool) {
        self.announce_presence();
        if self.cluster.is_enabled() {
            let cluster = self.cluster.clone();
            let room = self.name.to_string();
            let user = vec![user_id.to_owned()];
            let (present, gone) = if present {
                (user, Vec::new())
            } else {
                (Vec::new(), user)
            };
            ctx.spawn(
                async move { cluster.update_room_presence(&room, present, gone).await }
                    .into_actor(self),
            );
        }
    }

    /// Re-reads who is present on other nodes and announces the changes.
    /// With `before_anything_else`, the room handles nothing meanwhile (at
    /// start, so the first `joined` already shows remote members online).
    fn refresh_remote_presence(&mut self, ctx: &mut Context<Self>, before_anything_else: bool) {
        if !self.cluster.is_enabled() {
            return;
        }
        let cluster = self.cluster.clone();
        let room = self.name.to_string();
        let present: Vec<String> = self.local_users().into_iter().collect();
        let refresh = async move {
            cluster.renew_room_presence(&room, present).await;
            cluster.remote_room_presence(&room).await
        }
        .into_actor(self)
        .map(|remote, room, _| {
            // Unknown (Redis down): keep what we knew rather than flap.
            if let Some(remote) = remote {
                room.remote_users = remote;
                room.announce_presence();
            }
        });
        if before_anything_else {
            ctx.wait(refresh);
        } else {
            ctx.spawn(refresh);
        }
    }

    fn deliver_in_order(&mut self, ctx: &mut Context<Self>) {
        while let Some(message) = self.waiting.remove(&(self.last_seq + 1)) {
            self.last_seq = message.row.seq;
            let room = &self.name;
            let metrics = &self.metrics;
            metrics
                .fanout_seconds
                .observe(message.known_since.elapsed().as_secs_f64());
            metrics.frames_out.inc_by(self.members.len() as u64);
            // A member that stopped reading is told to close and leaves the
            // room; it resumes with `since` when it reconnects.
            self.members.retain(|member| {
                offer(
                    &member.recipient,
                    ToSession::Message {
                        room: room.clone(),
                        seq: message.row.seq,
                        frame: message.frame.clone(),
                    },
                    metrics,
                )
            });
        }
        if self.waiting.is_empty() {
            if let Some(handle) = self.gap_check.take() {
                ctx.cancel_future(handle);
            }
        } else if self.gap_check.is_none() {
            self.gap_check = Some(ctx.run_later(GAP_WAIT, |room, ctx| {
                room.gap_check = None;
                let up_to = room.waiting.keys().next().map(|first| first - 1);
                room.catch_up(ctx, up_to);
            }));
        }
    }

    /// Reads committed messages after `last_seq` (up to `up_to`, or all)
    /// from the store and delivers them: fills holes left by messages lost
    /// between nodes.
    fn catch_up(&mut self, ctx: &mut Context<Self>, up_to: Option<i64>) {
        let db = self.db.clone();
        let room = self.name.to_string();
        let after = self.last_seq;
        let up_to = up_to.unwrap_or(i64::MAX);
        ctx.wait(
            async move {
                let rows = db
                    .messages_after(&room, after, up_to, CATCH_UP_PAGE)
                    .await?;
                let read = rows.len() as i64;
                Ok::<_, crate::db::DbError>((db.with_context(rows).await?, read))
            }
            .into_actor(self)
            .map(move |result, room, ctx| {
                let mut more = false;
                match result {
                    Ok((entries, read)) => {
                        more = read == CATCH_UP_PAGE;
                        for entry in entries {
                            if entry.row.seq > room.last_seq {
                                room.waiting
                                    .insert(entry.row.seq, StoredMessage::new(entry));
                            }
                        }
                    }
                    Err(error) => tracing::warn!(%error, room = %room.name, "catch-up failed"),
                }
                room.deliver_in_order(ctx);
                if more {
                    room.catch_up(ctx, Some(up_to));
                }
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
    fn drop_non_participants(&mut self, ctx: &mut Context<Self>) {
        let participants: Vec<&str> = self
            .participants
            .iter()
            .map(|p| p.user_id.as_str())
            .collect();
        let removed: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.role != "admin" && !participants.contains(&m.user_id.as_str()))
            .map(|m| m.session_id.clone())
            .collect();
        for session_id in removed {
            if let Some(member) = self.remove_member(&session_id) {
                member.recipient.do_send(ToSession::Kicked {
                    room: self.name.clone(),
                });
                if !self.members.iter().any(|m| m.user_id == member.user_id) {
                    self.local_presence_changed(ctx, &member.user_id, false);
                }
            }
        }
    }

    fn member_views(&self) -> Vec<MemberView> {
        // Sets, not scans: a large booking's joins would otherwise cost
        // participants × members each.
        let here: HashSet<&str> = self.members.iter().map(|m| m.user_id.as_str()).collect();
        let mut listed: HashSet<&str> = HashSet::with_capacity(self.participants.len());
        let mut views: Vec<MemberView> = self
            .participants
            .iter()
            .map(|p| {
                listed.insert(p.user_id.as_str());
                MemberView {
                    user_id: p.user_id.clone(),
                    name: p.name.clone(),
                    role: p.role.clone(),
                    online: here.contains(p.user_id.as_str())
                        || self.remote_users.contains(&p.user_id),
                }
            })
            .collect();
        for member in self.members.iter() {
            if listed.insert(member.user_id.as_str()) {
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
        if let Some(lease) = self.cluster.lease() {
            self.refresh_remote_presence(ctx, true);
            ctx.run_interval(lease / 3, |room, ctx| {
                room.refresh_remote_presence(ctx, false)
            });
        }
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

/// A member read up to `seq`. Answered with the room's last seq when
/// `seq` is beyond what this node has fanned out (the caller then checks
/// the store, which may be a moment ahead of this node).
#[derive(Message)]
#[rtype(result = "Result<(), i64>")]
pub struct ReadReceipt {
    pub user_id: String,
    /// The reading session: the user's other sessions are told too.
    pub session_id: String,
    pub seq: i64,
    /// Set once the store confirmed `seq`: announce without checking.
    pub confirmed: bool,
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

/// A frame for this node's members, except some users' sessions.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FrameExcept {
    pub except_users: Vec<String>,
    pub frame: ByteString,
}

/// A frame for every member on this node.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Broadcast(pub ByteString);

/// Presence changed on another node.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RefreshPresence;

/// The cluster link was down: catch up from the store.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resync;

impl Handler<Join> for RoomActor {
    type Result = Result<JoinInfo, AppError>;

    fn handle(&mut self, msg: Join, ctx: &mut Context<Self>) -> Self::Result {
        self.joins_seen += 1;
        if let Some(handle) = self.idle_check.take() {
            ctx.cancel_future(handle);
        }
        let member = msg.member;
        let newly_present = !self.members.iter().any(|m| m.user_id == member.user_id);
        let user_id = member.user_id.clone();
        // A session that joins again replaces its earlier membership.
        self.remove_member(&member.session_id);
        super::push_small(&mut self.members, member);
        if newly_present {
            self.local_presence_changed(ctx, &user_id, true);
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
        match self.remove_member(&msg.session_id) {
            Some(member) if !self.members.iter().any(|m| m.user_id == member.user_id) => {
                self.local_presence_changed(ctx, &member.user_id, false);
            }
            Some(_) => {}
            // Dropped earlier as a slow consumer: only settle presence here
            // (its cluster lease runs out by itself).
            None => self.announce_presence(),
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
        self.broadcast_everywhere(frame, vec![msg.user_id]);
    }
}

impl Handler<ReadReceipt> for RoomActor {
    type Result = Result<(), i64>;

    fn handle(&mut self, msg: ReadReceipt, _: &mut Context<Self>) -> Self::Result {
        if msg.seq > self.last_seq && !msg.confirmed {
            return Err(self.last_seq);
        }
        let frame = ServerFrame::Read {
            room: &self.name,
            user_id: &msg.user_id,
            seq: msg.seq,
        }
        .encode();
        // Everyone but the reading session: the reader's other tabs move
        // their own cursor and unread count with it.
        let metrics = &self.metrics;
        metrics.frames_out.inc_by(self.members.len() as u64);
        self.members.retain(|member| {
            member.session_id == msg.session_id
                || offer(&member.recipient, ToSession::Event(frame.clone()), metrics)
        });
        self.cluster.publish(
            Channel::Room(self.name.to_string()),
            ClusterEvent::RoomFrame {
                frame: frame.to_string(),
                except_users: Vec::new(),
            },
        );
        Ok(())
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

impl Handler<FrameExcept> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: FrameExcept, _: &mut Context<Self>) {
        self.broadcast_event(&msg.frame, &msg.except_users);
    }
}

impl Handler<Broadcast> for RoomActor {
    type Result = ();

    fn handle(&mut self, msg: Broadcast, _: &mut Context<Self>) {
        self.broadcast_event(&msg.0, &[]);
    }
}

impl Handler<RefreshPresence> for RoomActor {
    type Result = ();

    fn handle(&mut self, _: RefreshPresence, ctx: &mut Context<Self>) {
        self.refresh_remote_presence(ctx, false);
    }
}

impl Handler<Resync> for RoomActor {
    type Result = ();

    fn handle(&mut self, _: Resync, ctx: &mut Context<Self>) {
        self.catch_up(ctx, None);
    }
}
