//! The push intake actor: turns committed chat messages and created
//! notifications into queued pushes for recipients with no live session.
//!
//! Chat messages are gathered for [`CHAT_WINDOW`] and handled together: one
//! push per recipient and room however many messages came meanwhile (the
//! newest, titled with the count), one audience query per window. The
//! chat path only sends this actor a message; the work runs in futures of
//! its own, so a slow database or presence lookup never holds up a room.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::join_all;

use super::payload::{for_chat, for_notification};
use super::sender::{Kick, PushSender};
use super::{push_allowed, PushError};
use crate::config::Settings;
use crate::db::models::{MessageRow, NotificationRow};
use crate::db::push::{QueuedPushRow, PUSH_QUEUED};
use crate::db::Db;
use crate::domain::email::{ChatRoom, EmailKind};
use crate::metrics::Metrics;
use crate::notify::intake::is_chat;
use crate::rooms::hub::{Hub, IsOnline};
use crate::rooms::sequencer::Committed;

/// How long committed chat messages are gathered before they are pushed.
const CHAT_WINDOW: Duration = Duration::from_millis(200);
/// ... or as soon as this many wait.
const CHAT_MESSAGES_MAX: usize = 5_000;

/// Notifications were stored: push them to their users who are away.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct PushNotifications(pub Vec<NotificationRow>);

pub struct PushIntake {
    db: Db,
    hub: Addr<Hub>,
    sender: Addr<PushSender>,
    metrics: Arc<Metrics>,
    app_base_url: Arc<str>,
    /// Committed chat messages waiting for the window to end.
    chat: Vec<MessageRow>,
    chat_flush: Option<SpawnHandle>,
}

/// One push owed to one user (for each of their subscriptions).
struct Owed {
    user_id: String,
    kind: EmailKind,
    source: String,
    payload: String,
}

impl PushIntake {
    pub fn new(
        db: Db,
        hub: Addr<Hub>,
        sender: Addr<PushSender>,
        settings: &Settings,
        metrics: Arc<Metrics>,
    ) -> Self {
        PushIntake {
            db,
            hub,
            sender,
            metrics,
            app_base_url: settings.email.app_base_url.trim_end_matches('/').into(),
            chat: Vec::new(),
            chat_flush: None,
        }
    }

    fn flush_chat(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.chat_flush.take() {
            ctx.cancel_future(handle);
        }
        let messages = std::mem::take(&mut self.chat);
        if messages.is_empty() {
            return;
        }
        let db = self.db.clone();
        let app = self.app_base_url.clone();
        self.queue(async move { chat_pushes(&db, &app, messages).await }, ctx);
    }

    /// Runs `owed`, then queues a push per subscription of each owed user
    /// who has no live session and wants the kind.
    fn queue<F>(&mut self, owed: F, ctx: &mut Context<Self>)
    where
        F: std::future::Future<Output = Result<Vec<Owed>, PushError>> + 'static,
    {
        let db = self.db.clone();
        let hub = self.hub.clone();
        let sender = self.sender.clone();
        let metrics = self.metrics.clone();
        ctx.spawn(
            async move {
                let owed = owed.await?;
                let rows = rows_for_offline(&db, &hub, owed).await?;
                let queued = db.queue_pushes(&rows).await?;
                if queued > 0 {
                    metrics.pushes_queued.inc_by(queued as u64);
                    sender.do_send(Kick);
                }
                Ok::<_, PushError>(())
            }
            .into_actor(self)
            .map(|result, _, _| {
                if let Err(error) = result {
                    // A push is a nudge, not a record: the email fallback
                    // still covers what is not read.
                    tracing::warn!(%error, "cannot queue pushes");
                }
            }),
        );
    }
}

impl Actor for PushIntake {
    type Context = Context<Self>;
}

impl Handler<Committed> for PushIntake {
    type Result = ();

    fn handle(&mut self, msg: Committed, ctx: &mut Context<Self>) {
        let before = self.chat.len();
        self.chat.extend(
            msg.0
                .iter()
                .filter(|stored| is_chat(&stored.row))
                .map(|stored| stored.row.clone()),
        );
        if self.chat.len() >= CHAT_MESSAGES_MAX {
            self.flush_chat(ctx);
        } else if before == 0 && !self.chat.is_empty() && self.chat_flush.is_none() {
            self.chat_flush = Some(ctx.run_later(CHAT_WINDOW, |intake, ctx| {
                intake.chat_flush = None;
                intake.flush_chat(ctx);
            }));
        }
    }
}

impl Handler<PushNotifications> for PushIntake {
    type Result = ();

    fn handle(&mut self, msg: PushNotifications, ctx: &mut Context<Self>) {
        let owed: Vec<Owed> = msg
            .0
            .iter()
            .filter(|n| n.read_at.is_none())
            .map(|n| Owed {
                user_id: n.user_id.clone(),
                kind: n.kind,
                source: format!("notification:{}", n.id),
                payload: for_notification(n, &self.app_base_url).to_json(),
            })
            .collect();
        if !owed.is_empty() {
            self.queue(async move { Ok(owed) }, ctx);
        }
    }
}

/// One push per recipient and room of `messages`: the booking's
/// participants or the user who opened the support conversation, never
/// for their own messages.
async fn chat_pushes(
    db: &Db,
    app: &str,
    messages: Vec<MessageRow>,
) -> Result<Vec<Owed>, PushError> {
    let mut by_room: HashMap<&str, Vec<&MessageRow>> = HashMap::new();
    for message in &messages {
        by_room
            .entry(message.room.as_str())
            .or_default()
            .push(message);
    }
    let rooms: Vec<(&str, ChatRoom)> = by_room
        .keys()
        .filter_map(|room| Some((*room, ChatRoom::parse(room)?)))
        .collect();
    let (booking_ids, conversation_ids) = ChatRoom::ids(rooms.iter().map(|(_, room)| *room));
    let audience = db.chat_audience(&booking_ids, &conversation_ids).await?;
    let titles = db.booking_titles(&booking_ids).await?;
    let mut owed = Vec::new();
    for (room, chat_room) in rooms {
        let in_room = &by_room[room];
        let title = match chat_room {
            ChatRoom::Booking(id) => titles.get(id).map(String::as_str),
            ChatRoom::Support(_) => None,
        };
        for user in audience.recipients(chat_room) {
            let theirs: Vec<&&MessageRow> = in_room
                .iter()
                .filter(|m| m.sender_id.as_deref() != Some(user))
                .collect();
            let Some(newest) = theirs.iter().max_by_key(|m| m.seq) else {
                continue;
            };
            let payload = for_chat(room, newest, theirs.len(), title, app);
            owed.push(Owed {
                user_id: user.to_owned(),
                kind: chat_room.email_kind(),
                source: format!("chat:{room}:{}", newest.seq),
                payload: payload.to_json(),
            });
        }
    }
    Ok(owed)
}

/// The pushes to queue for `owed`: for users with no live session on any
/// node, one per subscription, where their switch for the kind is on.
async fn rows_for_offline(
    db: &Db,
    hub: &Addr<Hub>,
    owed: Vec<Owed>,
) -> Result<Vec<QueuedPushRow>, PushError> {
    if owed.is_empty() {
        return Ok(Vec::new());
    }
    let users: Vec<String> = owed
        .iter()
        .map(|o| o.user_id.clone())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    // Subscriptions first: most users have none, and they need no
    // presence lookup.
    let mut subscriptions: HashMap<String, Vec<String>> = HashMap::new();
    for row in db.push_subscriptions_of_users(&users).await? {
        subscriptions
            .entry(row.user_id)
            .or_default()
            .push(row.endpoint);
    }
    let subscribed: Vec<String> = users
        .into_iter()
        .filter(|u| subscriptions.contains_key(u))
        .collect();
    let presence = join_all(subscribed.iter().map(|user_id| {
        hub.send(IsOnline {
            user_id: user_id.clone(),
        })
    }))
    .await;
    let away: Vec<String> = subscribed
        .into_iter()
        .zip(presence)
        // Presence unknown: assume online rather than push to someone
        // who may be watching (the email fallback still follows).
        .filter(|(_, online)| matches!(online, Ok(false)))
        .map(|(user, _)| user)
        .collect();
    let mut switches: HashMap<String, Vec<(EmailKind, bool)>> = HashMap::new();
    for (user, kind, on) in db.push_switches_of(&away).await? {
        switches.entry(user).or_default().push((kind, on));
    }
    let away: HashSet<String> = away.into_iter().collect();
    let now = crate::time::now_ms();
    let mut rows = Vec::new();
    for item in owed {
        if !away.contains(&item.user_id) {
            continue;
        }
        let changed = switches.get(&item.user_id).map_or(&[][..], Vec::as_slice);
        if !push_allowed(item.kind, changed) {
            continue;
        }
        for endpoint in subscriptions.get(&item.user_id).into_iter().flatten() {
            rows.push(QueuedPushRow {
                id: uuid::Uuid::now_v7().to_string(),
                endpoint: endpoint.clone(),
                user_id: item.user_id.clone(),
                kind: item.kind,
                source: item.source.clone(),
                payload: item.payload.clone(),
                state: PUSH_QUEUED.to_owned(),
                attempts: 0,
                next_attempt_at: now,
                claimed_by: None,
                claimed_until: None,
                last_error: None,
                created_at: now,
                updated_at: now,
            });
        }
    }
    Ok(rows)
}
