//! One actor per WebSocket: authentication and its expiry, heartbeats,
//! frame rate limits, and the frames of the contract.
//!
//! Ordering promise per room: a session sends `joined`, then the replayed
//! messages, then live ones, each seq once. Joins run under `ctx.wait`, so
//! live deliveries queue in the mailbox until the replay is written, and a
//! per-room high-water mark drops anything already sent.
//!
//! By job: this file holds the actor (its lifecycle, timers, frame
//! dispatch and rate limits, what it is sent); `auth.rs` authentication,
//! token refresh and expiry; `rooms.rs` the room frames (join, send, read,
//! history).

mod auth;
mod rooms;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytestring::ByteString;

use self::rooms::Change;
use super::joined::{replay_page, JoinedRoom, JoinedRooms};
use super::transport::{
    self, Assembled, Fragments, Item, Message, ProtocolError, WebsocketContext,
};
use super::SessionServices;
use crate::auth::Identity;
use crate::db::messages::{Action, NewMessage};
use crate::domain::close;
use crate::domain::role::Role;
use crate::domain::wire::{parse_client_frame, ClientFrame, Envelope, ServerFrame};
use crate::error::AppError;
use crate::rooms::hub::{
    CloseConnection, JoinRoom, OpenConnection, RegisterSession, UnregisterSession,
};
use crate::rooms::member::ToSession;
use crate::rooms::room::{Leave, ReadReceipt, RoomMember, Typing};
use crate::rooms::sequencer::StoreOutcome;
use crate::rooms::{authorize_read, authorize_write, RoomKind, RoomName};

const HISTORY_DEFAULT: i64 = 50;
const HISTORY_MAX: i64 = 100;
/// How long a closing session waits for the acks of messages it already
/// handed to the sequencer (they are stored: the client must hear so).
const ACK_WAIT: Duration = Duration::from_secs(5);
const CLIENT_ID_MAX: usize = 128;
/// How long a write-access check of a room not joined stays valid.
const WRITE_ACCESS_TTL: Duration = Duration::from_secs(30);

pub struct WsSession {
    id: String,
    state: Arc<SessionServices>,
    identity: Option<Identity>,
    last_heard: Instant,
    rooms: JoinedRooms,
    /// Rooms this socket may write to without having joined them, and
    /// when that was checked (checks expire, so a participant removed
    /// from a booking loses write access).
    writable: HashMap<String, Instant>,
    /// Sends to a room whose write access is being checked, in order.
    awaiting_access: HashMap<String, Vec<(NewMessage, Option<String>)>>,
    /// The session's one timer, set for the nearest of the deadlines
    /// below (a timer each would be three boxed futures per idle socket).
    timer: Option<SpawnHandle>,
    /// When to ping next (and check that the peer was heard from).
    next_ping: Instant,
    /// Until `auth`: when the socket is closed for not authenticating.
    auth_deadline: Instant,
    /// After `auth`: when the token expires and the socket is closed.
    token_expiry: Option<Instant>,
    /// `rate_limited` answers in a row; too many closes the socket.
    strikes: u32,
    /// Messages handed to the sequencer whose ack has not been written.
    pending_acks: u32,
    /// Set while a close waits for `pending_acks`: the code and reason.
    /// Frames from the client are ignored meanwhile.
    closing: Option<Box<(u16, String)>>,
    /// A message split into continuation frames, being reassembled.
    fragments: Fragments,
    /// For the per-address connection limit.
    client_ip: Option<IpAddr>,
    /// Every log line of this socket carries its session id (and user).
    span: tracing::Span,
    /// Whether this socket counts towards its address's limit.
    counted_ip: bool,
}

impl WsSession {
    pub fn new(state: Arc<SessionServices>, client_ip: Option<IpAddr>) -> Self {
        let id = uuid::Uuid::new_v4().to_string();
        let server = &state.server;
        let now = Instant::now();
        WsSession {
            next_ping: now + Duration::from_millis(server.heartbeat_ms),
            auth_deadline: now + Duration::from_millis(server.auth_timeout_ms),
            token_expiry: None,
            timer: None,
            span: tracing::info_span!("session", id = %id, user = tracing::field::Empty),
            id,
            state,
            identity: None,
            last_heard: Instant::now(),
            rooms: JoinedRooms::default(),
            writable: HashMap::new(),
            awaiting_access: HashMap::new(),
            strikes: 0,
            pending_acks: 0,
            closing: None,
            fragments: Fragments::default(),
            client_ip,
            counted_ip: true,
        }
    }

    /// Closes the socket with `code`. Frames already written go first;
    /// the acks of messages already accepted are waited for (at most
    /// `ACK_WAIT`), except for a client that stopped reading.
    fn close(&mut self, ctx: &mut WebsocketContext<Self>, code: u16, reason: &str) {
        if self.pending_acks == 0 || code == close::SLOW_CONSUMER {
            return Self::close_now(ctx, code, reason);
        }
        if self.closing.is_some() {
            return;
        }
        self.closing = Some(Box::new((code, reason.to_owned())));
        ctx.run_later(ACK_WAIT, |session, ctx| session.finish_closing(ctx));
    }

    fn close_now(ctx: &mut WebsocketContext<Self>, code: u16, reason: &str) {
        let reason = transport::CloseReason {
            code: transport::CloseCode::from(code),
            description: Some(reason.to_owned()),
        };
        transport::close(ctx, Some(reason));
    }

    fn finish_closing(&mut self, ctx: &mut WebsocketContext<Self>) {
        if let Some(closing) = self.closing.take() {
            Self::close_now(ctx, closing.0, &closing.1);
        }
    }

    fn send_error(
        &self,
        ctx: &mut WebsocketContext<Self>,
        reference: Option<&str>,
        error: &AppError,
    ) {
        self.state
            .metrics
            .errors_sent
            .with_label_values(&[error.code().as_str()])
            .inc();
        ctx.text(super::error_frame(reference, error));
    }

    fn on_text(&mut self, text: &str, ctx: &mut WebsocketContext<Self>) {
        self.state.metrics.frames_in.inc();
        let parsed = parse_client_frame(text);
        let Some(identity) = self.identity.clone() else {
            return match parsed {
                Ok(Envelope {
                    frame: ClientFrame::Auth { token },
                    ..
                }) => self.authenticate(&token, ctx),
                Ok(Envelope { reference, .. }) | Err((reference, _)) => {
                    self.refuse_before_auth(reference.as_deref(), ctx)
                }
            };
        };
        // Every frame counts, valid or not: junk is not free.
        let reference = match &parsed {
            Ok(envelope) => envelope.reference.as_deref(),
            Err((reference, _)) => reference.as_deref(),
        };
        if !self.count_frame(&identity, reference, ctx) {
            return;
        }
        let Envelope { reference, frame } = match parsed {
            Ok(envelope) => envelope,
            Err((reference, error)) => {
                return self.send_error(ctx, reference.as_deref(), &error.into())
            }
        };
        let result = match frame {
            ClientFrame::Auth { token } => {
                self.refresh_auth(&token, reference.as_deref(), ctx);
                Ok(())
            }
            ClientFrame::Join { room, since } => {
                self.join(identity, &room, since, reference.clone(), ctx)
            }
            ClientFrame::Leave { room } => {
                if let Some(joined) = self.rooms.remove(&room) {
                    joined.addr.do_send(Leave {
                        session_id: self.id.clone(),
                    });
                }
                ctx.text(
                    ServerFrame::Left {
                        reference: reference.as_deref(),
                        room: &room,
                    }
                    .encode(),
                );
                Ok(())
            }
            ClientFrame::Send {
                room,
                client_id,
                body,
                reply_to,
                attachments,
            } => self.send_message(
                identity,
                &room,
                client_id,
                body,
                reply_to,
                attachments,
                reference.clone(),
                ctx,
            ),
            ClientFrame::Edit {
                room,
                seq,
                body,
                client_id,
            } => {
                let window_ms = self.state.chat.edit_window_ms;
                let change = Change {
                    body,
                    action: Action::Edit {
                        target: seq,
                        window_ms,
                    },
                    client_id,
                };
                self.change_message(identity, &room, change, reference.clone(), ctx)
            }
            ClientFrame::Delete {
                room,
                seq,
                client_id,
            } => {
                let moderator = identity.role == Role::Admin;
                let change = Change {
                    body: String::new(),
                    action: Action::Delete {
                        target: seq,
                        moderator,
                    },
                    client_id,
                };
                self.change_message(identity, &room, change, reference.clone(), ctx)
            }
            ClientFrame::React {
                room,
                seq,
                emoji,
                on,
                client_id,
            } => {
                let change = Change {
                    body: emoji,
                    action: Action::React { target: seq, on },
                    client_id,
                };
                self.change_message(identity, &room, change, reference.clone(), ctx)
            }
            ClientFrame::Typing { room } => self.joined_room(&room).map(|joined| {
                joined.addr.do_send(Typing {
                    user_id: identity.user_id.clone(),
                })
            }),
            ClientFrame::Read { room, seq } => {
                self.read(identity, &room, seq, reference.clone(), ctx)
            }
            ClientFrame::History {
                room,
                before,
                limit,
            } => self.history(identity, &room, before, limit, reference.clone(), ctx),
            ClientFrame::Ping => {
                ctx.text(
                    ServerFrame::Pong {
                        reference: reference.as_deref(),
                        server_time: crate::time::rfc3339_ms(crate::time::now_ms()),
                    }
                    .encode(),
                );
                Ok(())
            }
        };
        if let Err(error) = result {
            self.send_error(ctx, reference.as_deref(), &error);
        }
    }

    /// Before `auth` only `auth` is accepted: anything else is answered
    /// `unauthorized` and closes the socket (4001), so an anonymous socket
    /// cannot make the server work until the auth deadline.
    fn refuse_before_auth(&mut self, reference: Option<&str>, ctx: &mut WebsocketContext<Self>) {
        let error = AppError::Unauthorized("the first frame must be auth".into());
        self.send_error(ctx, reference, &error);
        self.close(ctx, close::AUTH_FAILED, "the first frame must be auth");
    }

    /// Counts a frame against the user's budget, shared by all of the
    /// user's sockets. Over it: `rate_limited`, and after
    /// `limits.flood_strikes` of those in a row, close 4029 (after the
    /// acks of what was accepted). Returns whether to handle the frame.
    fn count_frame(
        &mut self,
        identity: &Identity,
        reference: Option<&str>,
        ctx: &mut WebsocketContext<Self>,
    ) -> bool {
        let Err(error) = self.state.limiters.check_frame(&identity.user_id) else {
            self.strikes = 0;
            return true;
        };
        self.state
            .metrics
            .rate_limited
            .with_label_values(&["frames"])
            .inc();
        self.send_error(ctx, reference, &error);
        self.strikes += 1;
        if self.strikes >= self.state.limits.flood_strikes {
            self.state
                .metrics
                .connections_refused
                .with_label_values(&["flooding"])
                .inc();
            self.close(ctx, close::FLOODING, "flooding after rate_limited");
        }
        false
    }

    /// Counts a frame that is not text (binary, fragment, ping): before
    /// `auth` it closes the socket. Returns whether to handle it.
    fn count_other_frame(&mut self, ctx: &mut WebsocketContext<Self>) -> bool {
        match self.identity.clone() {
            Some(identity) => self.count_frame(&identity, None, ctx),
            None => {
                self.refuse_before_auth(None, ctx);
                false
            }
        }
    }

    /// Sets the timer for the nearest deadline: the next ping, and the
    /// auth timeout or the token's expiry.
    fn arm_timer(&mut self, ctx: &mut WebsocketContext<Self>) {
        if let Some(handle) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        let deadline = self
            .next_ping
            .min(self.token_expiry.unwrap_or(self.auth_deadline));
        let delay = deadline.saturating_duration_since(Instant::now());
        self.timer = Some(ctx.run_later(delay, |session, ctx| {
            session.timer = None;
            session.on_timer(ctx);
        }));
    }

    fn on_timer(&mut self, ctx: &mut WebsocketContext<Self>) {
        let now = Instant::now();
        match self.token_expiry {
            None if now >= self.auth_deadline => {
                return self.close(ctx, close::AUTH_TIMEOUT, "no auth frame in time");
            }
            Some(expiry) if now >= expiry => {
                return self.close(ctx, close::AUTH_FAILED, "token expired");
            }
            _ => {}
        }
        if now >= self.next_ping {
            let server = &self.state.server;
            if self.last_heard.elapsed() > Duration::from_millis(server.client_timeout_ms) {
                tracing::debug!(session = %self.id, "peer silent; dropping session");
                return ctx.stop();
            }
            ctx.ping(b"");
            self.next_ping = now + Duration::from_millis(server.heartbeat_ms);
        }
        self.arm_timer(ctx);
    }
}

impl WsSession {
    /// A message sent in continuation frames, once it is whole (within
    /// the same size limit as a single frame).
    fn on_fragment(&mut self, item: Item, ctx: &mut WebsocketContext<Self>) {
        match self.fragments.push(item, self.state.server.max_frame_bytes) {
            Assembled::Incomplete => {}
            Assembled::Text(text) => self.on_text(&text, ctx),
            Assembled::Binary => {
                let error =
                    AppError::Invalid("binary frames are not supported; send JSON text".into());
                self.send_error(ctx, None, &error);
            }
            Assembled::TooLarge => self.close(ctx, 1009, "message larger than the limit"),
            Assembled::NotUtf8 => {
                let error = AppError::Invalid("text frame is not UTF-8".into());
                self.send_error(ctx, None, &error);
            }
        }
    }
}

/// Access errors are answered once per queued send.
fn clone_error(error: &AppError) -> AppError {
    match error {
        AppError::Invalid(m) => AppError::Invalid(m.clone()),
        AppError::Unprocessable(m) => AppError::Unprocessable(m.clone()),
        AppError::Unauthorized(m) => AppError::Unauthorized(m.clone()),
        AppError::Forbidden(m) => AppError::Forbidden(m.clone()),
        AppError::NotFound(m) => AppError::NotFound(m.clone()),
        AppError::Gone(m) => AppError::Gone(m.clone()),
        AppError::TooLarge(m) => AppError::TooLarge(m.clone()),
        AppError::Timeout(m) => AppError::Timeout(m.clone()),
        AppError::Conflict(m) => AppError::Conflict(m.clone()),
        AppError::RateLimited { retry_after_ms } => AppError::RateLimited {
            retry_after_ms: *retry_after_ms,
        },
        AppError::Unavailable { code, message } => AppError::Unavailable {
            code: *code,
            message: message.clone(),
        },
        AppError::Internal(source) => AppError::internal(anyhow::anyhow!("{source:#}")),
    }
}

/// Runs a session's database work as a task of its own and hands back the
/// result. A context under `ctx.wait` (a join) polls none of its other
/// futures, so a pool wait parked in a `ctx.spawn` future would sit on the
/// connection the pool hands it meanwhile; in a burst of joins that was
/// every connection of the pool, while the joins waited for a new room
/// actor that waited for the pool.
async fn off_context<T: 'static>(
    work: impl std::future::Future<Output = Result<T, AppError>> + 'static,
) -> Result<T, AppError> {
    actix_rt::spawn(work).await.map_err(AppError::internal)?
}

/// The contract's history limit: default 50, at most 100.
pub fn history_limit(limit: Option<i64>) -> Result<i64, AppError> {
    match limit {
        None => Ok(HISTORY_DEFAULT),
        Some(n) if n < 1 => Err(AppError::Invalid("`limit` must be at least 1".into())),
        Some(n) => Ok(n.min(HISTORY_MAX)),
    }
}

impl Actor for WsSession {
    type Context = WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.state.metrics.ws_sessions.inc();
        // Bounds what waits for a client that stops reading (see `offer`).
        ctx.set_mailbox_capacity(self.state.limits.session_queue);
        if let Some(ip) = self.client_ip {
            let open = self.state.hub.send(OpenConnection {
                ip,
                max: self.state.limits.max_connections_per_ip,
            });
            ctx.wait(open.into_actor(self).map(|admitted, session, ctx| {
                if !matches!(admitted, Ok(true)) {
                    session.counted_ip = false;
                    session
                        .state
                        .metrics
                        .connections_refused
                        .with_label_values(&["per_ip"])
                        .inc();
                    session.close(ctx, close::POLICY, "too many connections from this address");
                }
            }));
        }
        self.arm_timer(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.state.metrics.ws_sessions.dec();
        if let (Some(ip), true) = (self.client_ip, self.counted_ip) {
            self.state.hub.do_send(CloseConnection { ip });
        }
        for (_, joined) in self.rooms.drain() {
            joined.addr.do_send(Leave {
                session_id: self.id.clone(),
            });
        }
        if let Some(identity) = &self.identity {
            self.state.hub.do_send(UnregisterSession {
                session_id: self.id.clone(),
                user_id: identity.user_id.clone(),
            });
        }
    }
}

/// A message this socket sent was stored (or could not be): the `ack`.
impl Handler<StoreOutcome> for WsSession {
    type Result = ();

    fn handle(&mut self, outcome: StoreOutcome, ctx: &mut Self::Context) {
        self.pending_acks = self.pending_acks.saturating_sub(1);
        self.write_outcome(outcome, ctx);
        if self.pending_acks == 0 {
            self.finish_closing(ctx);
        }
    }
}

impl WsSession {
    fn write_outcome(&mut self, outcome: StoreOutcome, ctx: &mut WebsocketContext<Self>) {
        let reference = outcome.reference.as_deref();
        match outcome.result {
            Ok(appended) => {
                let row = &appended.row;
                ctx.text(
                    ServerFrame::Ack {
                        reference,
                        client_id: row.client_id.as_deref(),
                        id: &row.id,
                        seq: row.seq,
                        sent_at: crate::time::rfc3339_ms(row.sent_at),
                    }
                    .encode(),
                );
            }
            Err(error) => self.send_error(ctx, reference, &error.into()),
        }
    }
}

impl Handler<ToSession> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: ToSession, ctx: &mut Self::Context) {
        let span = self.span.clone();
        let _in_session = span.enter();
        match msg {
            ToSession::Message { room, seq, frame } => {
                if let Some(joined) = self.rooms.get_mut(&room) {
                    if seq > joined.delivered {
                        joined.delivered = seq;
                        ctx.text(frame);
                    }
                }
            }
            ToSession::Event(frame) => ctx.text(frame),
            ToSession::Kicked { room } => {
                if self.rooms.remove(&room).is_some() {
                    ctx.text(
                        ServerFrame::Left {
                            reference: None,
                            room: &room,
                        }
                        .encode(),
                    );
                }
            }
            ToSession::Close { code, reason } => self.close(ctx, code, reason),
        }
    }
}

impl StreamHandler<Result<Message, ProtocolError>> for WsSession {
    fn handle(&mut self, item: Result<Message, ProtocolError>, ctx: &mut Self::Context) {
        let span = self.span.clone();
        let _in_session = span.enter();
        self.last_heard = Instant::now();
        if self.closing.is_some() {
            // Closing: only the client's own close still matters.
            if let Ok(Message::Close(_)) = item {
                self.finish_closing(ctx);
            }
            return;
        }
        match item {
            Ok(Message::Text(text)) => self.on_text(&text, ctx),
            Ok(Message::Binary(_)) => {
                if self.count_other_frame(ctx) {
                    self.send_error(
                        ctx,
                        None,
                        &AppError::Invalid(
                            "binary frames are not supported; send JSON text".into(),
                        ),
                    )
                }
            }
            Ok(Message::Continuation(item)) => {
                // The last fragment is counted as the text it completes.
                let last = matches!(item, Item::Last(_));
                if last || self.count_other_frame(ctx) {
                    self.on_fragment(item, ctx)
                }
            }
            Ok(Message::Ping(payload)) => {
                if self.identity.is_none() || self.count_other_frame(ctx) {
                    ctx.pong(&payload)
                }
            }
            Ok(Message::Pong(_)) | Ok(Message::Nop) => {}
            // The client's close is answered with a close.
            Ok(Message::Close(reason)) => transport::close(ctx, reason),
            Err(error) => {
                tracing::debug!(%error, "websocket protocol error");
                let (code, reason) = transport::close_for(&error);
                self.close(ctx, code, reason);
            }
        }
    }
}
