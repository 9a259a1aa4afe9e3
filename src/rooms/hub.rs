//! The hub routes: user → live sessions, room → room actor. It starts room
//! actors on first join and stops them when idle; committed messages and
//! server notices enter fan-out here, locally and to the other nodes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytestring::ByteString;

use super::member::{offer, ToSession};
use super::room::{
    Broadcast, Deliver, FrameExcept, Join, JoinInfo, RefreshPresence, ReloadParticipants, Resync,
    RoomActor, RoomMember, StopRoom,
};
use super::sequencer::{Committed, StoredMessage};
use crate::cluster::{Channel, Cluster, ClusterEvent, Inbound};
use crate::db::messages::Entry;
use crate::db::Db;
use crate::error::AppError;
use crate::metrics::Metrics;

struct RoomEntry {
    addr: Addr<RoomActor>,
    /// Joins forwarded; a room may stop only when it has seen them all.
    joins_forwarded: u64,
}

pub struct Hub {
    db: Db,
    room_idle: Duration,
    metrics: Arc<Metrics>,
    cluster: Cluster,
    rooms: HashMap<String, RoomEntry>,
    /// Each online user's sessions on this node (session id, address): a
    /// user has a few at most, and a list is a fraction of a map's memory.
    users: HashMap<String, Vec<(String, Recipient<ToSession>)>>,
    /// Actors that see every message committed on this node.
    watchers: Vec<Recipient<Committed>>,
    /// Open sockets per client address (the per-address limit).
    connections_per_ip: HashMap<IpAddr, usize>,
}

impl Hub {
    pub fn new(db: Db, room_idle: Duration, metrics: Arc<Metrics>) -> Self {
        Hub {
            db,
            room_idle,
            metrics,
            cluster: Cluster::single_node(),
            rooms: HashMap::new(),
            users: HashMap::new(),
            watchers: Vec::new(),
            connections_per_ip: HashMap::new(),
        }
    }

    fn update_gauges(&self) {
        self.metrics.rooms_active.set(self.rooms.len() as i64);
        self.metrics.users_online.set(self.users.len() as i64);
    }

    fn send_to_user(&mut self, user_id: &str, frame: &ByteString) {
        if let Some(sessions) = self.users.get_mut(user_id) {
            // A session that stopped reading is told to close and gets no more.
            let metrics = &self.metrics;
            sessions.retain(|(_, recipient)| {
                offer(recipient, ToSession::Event(frame.clone()), metrics)
            });
        }
    }

    fn close_user(&self, user_id: &str) {
        if let Some(sessions) = self.users.get(user_id) {
            for (_, recipient) in sessions {
                recipient.do_send(ToSession::Close {
                    code: crate::domain::close::AUTH_FAILED,
                    reason: "account data erased",
                });
            }
        }
    }

    fn remove_room(&mut self, room: &str) -> Option<RoomEntry> {
        let entry = self.rooms.remove(room)?;
        self.cluster.unsubscribe(Channel::Room(room.to_owned()));
        self.update_gauges();
        Some(entry)
    }

    /// Keeps this node's user presence leases alive.
    fn renew_user_presence(&mut self, ctx: &mut Context<Self>) {
        let Some(lease) = self.cluster.lease() else {
            return;
        };
        ctx.run_interval(lease / 3, |hub, _| {
            let cluster = hub.cluster.clone();
            let users: Vec<String> = hub.users.keys().cloned().collect();
            actix::spawn(async move { cluster.update_user_presence(users, Vec::new()).await });
        });
    }
}

impl Actor for Hub {
    type Context = Context<Self>;
}

/// The node joined a cluster: from now on fan-out also crosses nodes.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UseCluster(pub Cluster);

impl Handler<UseCluster> for Hub {
    type Result = ();

    fn handle(&mut self, msg: UseCluster, ctx: &mut Context<Self>) {
        self.cluster = msg.0;
        self.renew_user_presence(ctx);
    }
}

/// A session authenticated: route its user's channel to it. Answers false
/// (and registers nothing) when the user already has `max_sessions` here.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct RegisterSession {
    pub session_id: String,
    pub user_id: String,
    pub recipient: Recipient<ToSession>,
    pub max_sessions: usize,
}

/// A socket opened from `ip`: answers false when the address already has
/// `max` open here.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct OpenConnection {
    pub ip: IpAddr,
    pub max: usize,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseConnection {
    pub ip: IpAddr,
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

/// Server shutdown: close every session with 1001, spread evenly over
/// `spread` so their clients do not reconnect elsewhere all at once.
/// Answers how many.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CloseAllSessions {
    pub spread: Duration,
}

/// Closes go out in at most this many steps across the spread.
const CLOSE_STEPS: usize = 50;

/// Whether the user has a live session on any node.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct IsOnline {
    pub user_id: String,
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

/// A frame for every member of a room (e.g. the pieces of a streamed agent
/// reply, which are not stored).
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct RoomBroadcast {
    pub room: String,
    pub frame: ByteString,
}

/// Registers an actor that sees every message committed on this node (the
/// notifier, the support agents): each message is seen by one node only.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WatchCommitted(pub Recipient<Committed>);

impl Handler<OpenConnection> for Hub {
    type Result = bool;

    fn handle(&mut self, msg: OpenConnection, _: &mut Context<Self>) -> bool {
        let open = self.connections_per_ip.entry(msg.ip).or_default();
        if *open >= msg.max {
            return false;
        }
        *open += 1;
        true
    }
}

impl Handler<CloseConnection> for Hub {
    type Result = ();

    fn handle(&mut self, msg: CloseConnection, _: &mut Context<Self>) {
        if let Some(open) = self.connections_per_ip.get_mut(&msg.ip) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                self.connections_per_ip.remove(&msg.ip);
            }
        }
    }
}

impl Handler<RegisterSession> for Hub {
    type Result = bool;

    fn handle(&mut self, msg: RegisterSession, _: &mut Context<Self>) -> bool {
        if self
            .users
            .get(&msg.user_id)
            .is_some_and(|sessions| sessions.len() >= msg.max_sessions)
        {
            return false;
        }
        let sessions = self.users.entry(msg.user_id.clone()).or_default();
        if sessions.is_empty() {
            self.cluster.subscribe(Channel::User(msg.user_id.clone()));
            let cluster = self.cluster.clone();
            let user = msg.user_id;
            actix::spawn(async move { cluster.update_user_presence(vec![user], Vec::new()).await });
        }
        super::push_small(sessions, (msg.session_id, msg.recipient));
        self.update_gauges();
        true
    }
}

impl Handler<UnregisterSession> for Hub {
    type Result = ();

    fn handle(&mut self, msg: UnregisterSession, _: &mut Context<Self>) {
        if let Some(sessions) = self.users.get_mut(&msg.user_id) {
            sessions.retain(|(id, _)| *id != msg.session_id);
            if sessions.is_empty() {
                self.users.remove(&msg.user_id);
                self.cluster.unsubscribe(Channel::User(msg.user_id.clone()));
                let cluster = self.cluster.clone();
                let user = msg.user_id;
                actix::spawn(
                    async move { cluster.update_user_presence(Vec::new(), vec![user]).await },
                );
            }
        }
        self.update_gauges();
    }
}

impl Handler<JoinRoom> for Hub {
    type Result = ResponseFuture<Result<(Addr<RoomActor>, JoinInfo), AppError>>;

    fn handle(&mut self, msg: JoinRoom, ctx: &mut Context<Self>) -> Self::Result {
        if !self.rooms.contains_key(&msg.room) {
            self.cluster.subscribe(Channel::Room(msg.room.clone()));
            let room = RoomActor::new(
                msg.room.clone(),
                self.db.clone(),
                ctx.address(),
                self.cluster.clone(),
                self.room_idle,
                self.metrics.clone(),
            );
            self.rooms.insert(
                msg.room.clone(),
                RoomEntry {
                    addr: room.start(),
                    joins_forwarded: 0,
                },
            );
            self.update_gauges();
        }
        let entry = self.rooms.get_mut(&msg.room).expect("inserted above");
        entry.joins_forwarded += 1;
        let addr = entry.addr.clone();
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
            if let Some(entry) = self.remove_room(&msg.room) {
                entry.addr.do_send(StopRoom);
            }
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
            self.remove_room(&msg.room);
        }
    }
}

impl Handler<Committed> for Hub {
    type Result = ();

    fn handle(&mut self, msg: Committed, _: &mut Context<Self>) {
        for message in &msg.0 {
            if let Some(entry) = self.rooms.get(&message.row.room) {
                entry.addr.do_send(Deliver(message.clone()));
            }
            self.cluster.publish(
                Channel::Room(message.row.room.clone()),
                ClusterEvent::Message {
                    row: Box::new(message.row.clone()),
                    context: Some(Box::new(message.context.clone())),
                },
            );
        }
        for watcher in &self.watchers {
            watcher.do_send(msg.clone());
        }
    }
}

impl Handler<ToUser> for Hub {
    type Result = ();

    fn handle(&mut self, msg: ToUser, _: &mut Context<Self>) {
        self.send_to_user(&msg.user_id, &msg.frame);
        self.cluster.publish(
            Channel::User(msg.user_id),
            ClusterEvent::UserFrame {
                frame: msg.frame.to_string(),
            },
        );
    }
}

impl Handler<RoomChanged> for Hub {
    type Result = ();

    fn handle(&mut self, msg: RoomChanged, _: &mut Context<Self>) {
        if let Some(entry) = self.rooms.get(&msg.room) {
            entry.addr.do_send(ReloadParticipants);
        }
        self.cluster
            .publish(Channel::Room(msg.room), ClusterEvent::RoomChanged);
    }
}

impl Handler<CloseAllSessions> for Hub {
    type Result = usize;

    fn handle(&mut self, msg: CloseAllSessions, ctx: &mut Context<Self>) -> usize {
        let sessions: Vec<Recipient<ToSession>> = self
            .users
            .values()
            .flat_map(|sessions| sessions.iter().map(|(_, recipient)| recipient.clone()))
            .collect();
        let close = |recipients: &[Recipient<ToSession>]| {
            for recipient in recipients {
                recipient.do_send(ToSession::Close {
                    code: 1001,
                    reason: "server shutting down; reconnect and resume with since",
                });
            }
        };
        if msg.spread.is_zero() || sessions.len() < 2 {
            close(&sessions);
            return sessions.len();
        }
        let per_step = sessions.len().div_ceil(CLOSE_STEPS);
        let steps = sessions.len().div_ceil(per_step) as u32;
        for (step, batch) in sessions.chunks(per_step).enumerate() {
            let batch = batch.to_vec();
            let at = msg.spread * step as u32 / steps;
            ctx.run_later(at, move |_, _| close(&batch));
        }
        sessions.len()
    }
}

impl Handler<IsOnline> for Hub {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, msg: IsOnline, _: &mut Context<Self>) -> Self::Result {
        let here = self.users.contains_key(&msg.user_id);
        let cluster = self.cluster.clone();
        Box::pin(async move { here || cluster.online_elsewhere(&msg.user_id).await })
    }
}

impl Handler<BookingUpdated> for Hub {
    type Result = ();

    fn handle(&mut self, msg: BookingUpdated, _: &mut Context<Self>) {
        for user_id in &msg.participants {
            self.send_to_user(user_id, &msg.frame);
            self.cluster.publish(
                Channel::User(user_id.clone()),
                ClusterEvent::UserFrame {
                    frame: msg.frame.to_string(),
                },
            );
        }
        if let Some(entry) = self.rooms.get(&msg.room) {
            entry.addr.do_send(FrameExcept {
                except_users: msg.participants.clone(),
                frame: msg.frame.clone(),
            });
        }
        self.cluster.publish(
            Channel::Room(msg.room),
            ClusterEvent::RoomFrame {
                frame: msg.frame.to_string(),
                except_users: msg.participants,
            },
        );
    }
}

impl Handler<RoomBroadcast> for Hub {
    type Result = ();

    fn handle(&mut self, msg: RoomBroadcast, _: &mut Context<Self>) {
        if let Some(entry) = self.rooms.get(&msg.room) {
            entry.addr.do_send(Broadcast(msg.frame.clone()));
        }
        self.cluster.publish(
            Channel::Room(msg.room),
            ClusterEvent::RoomFrame {
                frame: msg.frame.to_string(),
                except_users: Vec::new(),
            },
        );
    }
}

impl Handler<WatchCommitted> for Hub {
    type Result = ();

    fn handle(&mut self, msg: WatchCommitted, _: &mut Context<Self>) {
        self.watchers.push(msg.0);
    }
}

/// What other nodes published: delivered here only, never published again.
impl Handler<Inbound> for Hub {
    type Result = ();

    fn handle(&mut self, msg: Inbound, _: &mut Context<Self>) {
        match msg {
            Inbound::Event {
                channel: Channel::User(user_id),
                event,
            } => match *event {
                ClusterEvent::UserFrame { frame } => {
                    self.send_to_user(&user_id, &ByteString::from(frame))
                }
                ClusterEvent::CloseUser => self.close_user(&user_id),
                _ => {}
            },
            Inbound::Event {
                channel: Channel::Room(room),
                event,
            } => {
                let Some(entry) = self.rooms.get(&room) else {
                    return;
                };
                match *event {
                    ClusterEvent::Message {
                        row,
                        context: Some(context),
                    } => {
                        entry.addr.do_send(Deliver(StoredMessage::new(Entry {
                            row: *row,
                            context: *context,
                        })));
                    }
                    // From an earlier release: what the frame shows is not
                    // known here; the room reads the gap from the store.
                    ClusterEvent::Message { context: None, .. } => {}
                    ClusterEvent::RoomFrame {
                        frame,
                        except_users,
                    } => entry.addr.do_send(FrameExcept {
                        except_users,
                        frame: frame.into(),
                    }),
                    ClusterEvent::RoomChanged => entry.addr.do_send(ReloadParticipants),
                    ClusterEvent::PresenceChanged => entry.addr.do_send(RefreshPresence),
                    ClusterEvent::UserFrame { .. } | ClusterEvent::CloseUser => {}
                }
            }
            Inbound::Reconnected => {
                for entry in self.rooms.values() {
                    entry.addr.do_send(Resync);
                    entry.addr.do_send(RefreshPresence);
                }
            }
        }
    }
}

/// Close every session of a user, on every node.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseUserSessions {
    pub user_id: String,
}

impl Handler<CloseUserSessions> for Hub {
    type Result = ();

    fn handle(&mut self, msg: CloseUserSessions, _: &mut Context<Self>) {
        self.close_user(&msg.user_id);
        self.cluster
            .publish(Channel::User(msg.user_id), ClusterEvent::CloseUser);
    }
}
