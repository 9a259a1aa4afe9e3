//! The hub routes: user → live sessions, room → room actor. It starts room
//! actors on first join and stops them when idle, and it is where committed
//! messages enter fan-out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytestring::ByteString;

use super::room::{Join, JoinInfo, RoomActor, RoomMember, StopRoom};
use super::sequencer::Committed;
use crate::db::Db;
use crate::error::AppError;
use crate::metrics::Metrics;
use crate::ws::session::ToSession;

struct RoomEntry {
    addr: Addr<RoomActor>,
    /// Joins forwarded; a room may stop only when it has seen them all.
    joins_forwarded: u64,
}

pub struct Hub {
    db: Db,
    room_idle: Duration,
    metrics: Arc<Metrics>,
    rooms: HashMap<String, RoomEntry>,
    users: HashMap<String, HashMap<String, Recipient<ToSession>>>,
    /// Actors that see every committed message (see [`WatchCommitted`]).
    watchers: Vec<Recipient<Committed>>,
}

impl Hub {
    pub fn new(db: Db, room_idle: Duration, metrics: Arc<Metrics>) -> Self {
        Hub {
            db,
            room_idle,
            metrics,
            rooms: HashMap::new(),
            users: HashMap::new(),
            watchers: Vec::new(),
        }
    }

    fn update_gauges(&self) {
        self.metrics.rooms_active.set(self.rooms.len() as i64);
        self.metrics.users_online.set(self.users.len() as i64);
    }
}

impl Actor for Hub {
    type Context = Context<Self>;
}

/// A session authenticated: route its user's channel to it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RegisterSession {
    pub session_id: String,
    pub user_id: String,
    pub recipient: Recipient<ToSession>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct UnregisterSession {
    pub session_id: String,
    pub user_id: String,
}

/// Join a room, starting its actor if needed.
#[derive(Message)]
#[rtype(result = "Result<(Addr<RoomActor>, JoinInfo), AppError>")]
pub struct JoinRoom {
    pub room: String,
    pub member: RoomMember,
}

/// A room has had no members for a while.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RoomIdle {
    pub room: String,
    pub joins_seen: u64,
}

/// A room actor stopped by itself (e.g. it could not load).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RoomStopped {
    pub room: String,
    pub addr: Addr<RoomActor>,
}

/// A frame for every live session of a user (`user:<id>` channel).
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct ToUser {
    pub user_id: String,
    pub frame: ByteString,
}

/// The booking's participants changed: active rooms reload them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RoomChanged {
    pub room: String,
}

/// Server shutdown: close every session with 1001. Answers how many.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CloseAllSessions;

/// Whether anyone is connected as this user on this node.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct IsOnline {
    pub user_id: String,
}

impl Handler<RegisterSession> for Hub {
    type Result = ();

    fn handle(&mut self, msg: RegisterSession, _: &mut Context<Self>) {
        self.users
            .entry(msg.user_id)
            .or_default()
            .insert(msg.session_id, msg.recipient);
        self.update_gauges();
    }
}

impl Handler<UnregisterSession> for Hub {
    type Result = ();

    fn handle(&mut self, msg: UnregisterSession, _: &mut Context<Self>) {
        if let Some(sessions) = self.users.get_mut(&msg.user_id) {
            sessions.remove(&msg.session_id);
            if sessions.is_empty() {
                self.users.remove(&msg.user_id);
            }
        }
        self.update_gauges();
    }
}

impl Handler<JoinRoom> for Hub {
    type Result = ResponseFuture<Result<(Addr<RoomActor>, JoinInfo), AppError>>;

    fn handle(&mut self, msg: JoinRoom, ctx: &mut Context<Self>) -> Self::Result {
        let hub = ctx.address();
        let entry = self
            .rooms
            .entry(msg.room.clone())
            .or_insert_with(|| RoomEntry {
                addr: RoomActor::new(msg.room.clone(), self.db.clone(), hub, self.room_idle)
                    .start(),
                joins_forwarded: 0,
            });
        entry.joins_forwarded += 1;
        let addr = entry.addr.clone();
        self.update_gauges();
        Box::pin(async move {
            let info = addr
                .send(Join { member: msg.member })
                .await
                .map_err(|e| AppError::internal(anyhow::anyhow!("room unavailable: {e}")))??;
            Ok((addr, info))
        })
    }
}

impl Handler<RoomIdle> for Hub {
    type Result = ();

    fn handle(&mut self, msg: RoomIdle, _: &mut Context<Self>) {
        let idle = self
            .rooms
            .get(&msg.room)
            .is_some_and(|entry| entry.joins_forwarded == msg.joins_seen);
        if idle {
            if let Some(entry) = self.rooms.remove(&msg.room) {
                entry.addr.do_send(StopRoom);
            }
            self.update_gauges();
        }
    }
}

impl Handler<RoomStopped> for Hub {
    type Result = ();

    fn handle(&mut self, msg: RoomStopped, _: &mut Context<Self>) {
        if self
            .rooms
            .get(&msg.room)
            .is_some_and(|e| e.addr == msg.addr)
        {
            self.rooms.remove(&msg.room);
            self.update_gauges();
        }
    }
}

impl Handler<Committed> for Hub {
    type Result = ();

    fn handle(&mut self, msg: Committed, _: &mut Context<Self>) {
        for message in &msg.0 {
            if let Some(entry) = self.rooms.get(&message.row.room) {
                entry.addr.do_send(super::room::Deliver(message.clone()));
            }
        }
        for watcher in &self.watchers {
            watcher.do_send(msg.clone());
        }
    }
}

impl Handler<ToUser> for Hub {
    type Result = ();

    fn handle(&mut self, msg: ToUser, _: &mut Context<Self>) {
        if let Some(sessions) = self.users.get(&msg.user_id) {
            for recipient in sessions.values() {
                recipient.do_send(ToSession::Event(msg.frame.clone()));
            }
        }
    }
}

impl Handler<RoomChanged> for Hub {
    type Result = ();

    fn handle(&mut self, msg: RoomChanged, _: &mut Context<Self>) {
        if let Some(entry) = self.rooms.get(&msg.room) {
            entry.addr.do_send(super::room::ReloadParticipants);
        }
    }
}

impl Handler<CloseAllSessions> for Hub {
    type Result = usize;

    fn handle(&mut self, _: CloseAllSessions, _: &mut Context<Self>) -> usize {
        let mut closed = 0;
        for sessions in self.users.values() {
            for recipient in sessions.values() {
                recipient.do_send(ToSession::Close {
                    code: 1001,
                    reason: "server shutting down; reconnect and resume with since",
                });
                closed += 1;
            }
        }
        closed
    }
}

impl Handler<IsOnline> for Hub {
    type Result = bool;

    fn handle(&mut self, msg: IsOnline, _: &mut Context<Self>) -> bool {
        self.users.contains_key(&msg.user_id)
    }
}

/// A booking's status changed: every participant's sessions get the frame
/// on their user channel; room members who are not participants (admins
/// watching) get it through the room. Each session receives it once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct BookingUpdated {
    pub room: String,
    pub participants: Vec<String>,
    pub frame: ByteString,
}

impl Handler<BookingUpdated> for Hub {
    type Result = ();

    fn handle(&mut self, msg: BookingUpdated, _: &mut Context<Self>) {
        for user_id in &msg.participants {
            if let Some(sessions) = self.users.get(user_id) {
                for recipient in sessions.values() {
                    recipient.do_send(ToSession::Event(msg.frame.clone()));
                }
            }
        }
        if let Some(entry) = self.rooms.get(&msg.room) {
            entry.addr.do_send(super::room::ToNonParticipants {
                participants: msg.participants,
                frame: msg.frame,
            });
        }
    }
}

/// A frame for every member of a room on this node (e.g. the pieces of a
/// streamed agent reply, which are not stored).
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct RoomBroadcast {
    pub room: String,
    pub frame: ByteString,
}

impl Handler<RoomBroadcast> for Hub {
    type Result = ();

    fn handle(&mut self, msg: RoomBroadcast, _: &mut Context<Self>) {
        if let Some(entry) = self.rooms.get(&msg.room) {
            entry.addr.do_send(super::room::Broadcast(msg.frame));
        }
    }
}

/// Registers an actor that sees every committed message after fan-out
/// (the notifier, the support agents).
#[derive(Message)]
#[rtype(result = "()")]
pub struct WatchCommitted(pub Recipient<Committed>);

impl Handler<WatchCommitted> for Hub {
    type Result = ();

    fn handle(&mut self, msg: WatchCommitted, _: &mut Context<Self>) {
        self.watchers.push(msg.0);
    }
}
