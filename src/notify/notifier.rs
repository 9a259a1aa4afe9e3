//! The notifier actor: turns unread things into stored items, and due items
//! into digest emails in the outbox (see the module above for the design).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::mailer::{Kick, Mailer};
use super::templates::{self, DigestEntry, UnsubscribeLink};
use super::unsubscribe::UnsubscribeSigner;
use super::{Delays, NotifyError};
use crate::config::Settings;
use crate::db::email::{
    is_status_notice, DispatchPlan, EmailItemRow, ItemSource, OutboxRow, PendingItem,
    PreferencesRow, RecipientSnapshot,
};
use crate::db::models::{MessageRow, NotificationRow};
use crate::db::Db;
use crate::domain::email::{ChatRoom, EmailKind, ItemState, OutboxState};
use crate::metrics::Metrics;
use crate::rooms::hub::{Hub, IsOnline};
use crate::rooms::sequencer::Committed;

/// The catch-up after a start looks this far before the newest stored item
/// (the last moments before a crash) ...
const CATCH_UP_MARGIN_MS: i64 = 10 * 60 * 1000;
/// ... but never further back than this.
const CATCH_UP_MAX_AGE_MS: i64 = 24 * 60 * 60 * 1000;
const CATCH_UP_PAGE: i64 = 500;
/// Recipients decided per query, and queries per wake-up.
const RECIPIENTS_PER_ROUND: i64 = 100;
const MAX_ROUNDS: usize = 20;
/// An online recipient whose offline delay has passed is looked at again
/// this often, in case they leave before the unread delay.
const PRESENCE_RECHECK_MAX_MS: i64 = 60_000;
const PRESENCE_RECHECK_MIN_MS: i64 = 1_000;
/// After a storage error the notifier looks again this much later.
const ERROR_RETRY_MS: i64 = 2_000;
/// Committed chat messages are turned into ranges together, at most this
/// often: one write per recipient and room however many messages came
/// meanwhile (a crash meanwhile is covered by the catch-up of the next
/// start) ...
const CHAT_ITEMS_EVERY_MAX: Duration = Duration::from_secs(1);
/// ... and at least this often where the delays are short, so a message is
/// stored well before a digest due with it is decided.
const CHAT_ITEMS_EVERY_MIN: Duration = Duration::from_millis(100);
/// ... or as soon as this many rooms wait.
const CHAT_ROOMS_MAX: usize = 20_000;

/// Notifications were stored (booking updates, backend notifications).
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct NotificationsCreated(pub Vec<NotificationRow>);

/// What deciding needs besides the database, shared with the decide step.
struct Composer {
    delays: Delays,
    signer: UnsubscribeSigner,
    app_base_url: String,
}

pub struct Notifier {
    db: Db,
    hub: Addr<Hub>,
    mailer: Addr<Mailer>,
    metrics: Arc<Metrics>,
    composer: Arc<Composer>,
    sweep_every: Duration,
    dispatching: bool,
    dispatch_again: bool,
    wake: Option<(i64, SpawnHandle)>,
    /// Committed chat messages waiting to become ranges.
    unread_chat: UnreadChat,
    /// How long they wait (see [`chat_items_every`]).
    chat_items_every: Duration,
    chat_flush: Option<SpawnHandle>,
}

impl Notifier {
    pub fn new(
        settings: Arc<Settings>,
        db: Db,
        hub: Addr<Hub>,
        mailer: Addr<Mailer>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Notifier {
            db,
            hub,
            mailer,
            metrics,
            composer: Arc::new(Composer {
                delays: Delays::from_settings(&settings.email),
                signer: UnsubscribeSigner::from_settings(&settings),
                app_base_url: settings.email.app_base_url.trim_end_matches('/').to_owned(),
            }),
            sweep_every: Duration::from_millis(settings.email.sweep_interval_ms),
            dispatching: false,
            dispatch_again: false,
            wake: None,
            unread_chat: UnreadChat::default(),
            chat_items_every: chat_items_every(Delays::from_settings(&settings.email)),
            chat_flush: None,
        }
    }

    /// Decides about every recipient with a due item, then sleeps until the
    /// next item is due.
    fn dispatch(&mut self, ctx: &mut Context<Self>) {
        if self.dispatching {
            self.dispatch_again = true;
            return;
        }
        self.dispatching = true;
        let round = DispatchRound {
            db: self.db.clone(),
            hub: self.hub.clone(),
            metrics: self.metrics.clone(),
            composer: self.composer.clone(),
        };
        ctx.spawn(async move { round.run().await }.into_actor(self).map(
            |result, notifier, ctx| {
                notifier.dispatching = false;
                let now = crate::time::now_ms();
                match result {
                    Ok((queued, next_due)) => {
                        if queued > 0 {
                            notifier.mailer.do_send(Kick);
                        }
                        if let Some(due) = next_due {
                            // An item still due now failed to be decided:
                            // no tight loop over it.
                            let at = if due <= now {
                                now + ERROR_RETRY_MS
                            } else {
                                due
                            };
                            notifier.wake_at(at, ctx);
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "email notifier: deciding failed; retrying");
                        notifier.wake_at(now + ERROR_RETRY_MS, ctx);
                    }
                }
                if std::mem::take(&mut notifier.dispatch_again) {
                    notifier.dispatch(ctx);
                }
            },
        ));
    }

    /// Dispatches at `at` (unix ms), unless one is already set earlier.
    fn wake_at(&mut self, at: i64, ctx: &mut Context<Self>) {
        if let Some((planned, handle)) = self.wake {
            if planned <= at {
                return;
            }
            ctx.cancel_future(handle);
        }
        let delay = Duration::from_millis((at - crate::time::now_ms()).max(0) as u64);
        let handle = ctx.run_later(delay, |notifier, ctx| {
            notifier.wake = None;
            notifier.dispatch(ctx);
        });
        self.wake = Some((at, handle));
    }

    /// Items for the committed chat messages gathered so far.
    fn store_chat_items(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.chat_flush.take() {
            ctx.cancel_future(handle);
        }
        let unread = std::mem::take(&mut self.unread_chat);
        if unread.is_empty() {
            return;
        }
        let db = self.db.clone();
        let delays = self.composer.delays;
        self.store_items(
            async move {
                let ranges = chat_ranges(&db, delays, unread).await?;
                db.upsert_chat_ranges(&ranges).await?;
                Ok(ranges)
            },
            ctx,
        );
    }

    /// Stores notifications' items.
    fn store_notification_items(&mut self, items: Vec<EmailItemRow>, ctx: &mut Context<Self>) {
        let db = self.db.clone();
        self.store_items(
            async move {
                db.insert_email_items(&items).await?;
                Ok(items)
            },
            ctx,
        );
    }

    /// Runs `store`, then makes sure the earliest item it stored is looked at.
    fn store_items<F>(&mut self, store: F, ctx: &mut Context<Self>)
    where
        F: Future<Output = Result<Vec<EmailItemRow>, NotifyError>> + 'static,
    {
        ctx.spawn(
            async move {
                let items = store.await?;
                Ok::<_, NotifyError>(items.iter().map(|i| i.due_at).min())
            }
            .into_actor(self)
            .map(|result, notifier, ctx| match result {
                Ok(Some(due)) => notifier.wake_at(due, ctx),
                Ok(None) => {}
                // The catch-up of the next start finds what was not stored.
                Err(error) => tracing::error!(%error, "email notifier: cannot store unread items"),
            }),
        );
    }
}

impl Actor for Notifier {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let db = self.db.clone();
        let delays = self.composer.delays;
        ctx.wait(
            async move { catch_up(&db, delays).await }
                .into_actor(self)
                .map(|result, notifier, ctx| {
                    match result {
                        Ok(0) => {}
                        Ok(stored) => {
                            tracing::info!(stored, "email notifier: caught up after start")
                        }
                        Err(error) => tracing::error!(%error, "email notifier: catch-up failed"),
                    }
                    notifier.dispatch(ctx);
                }),
        );
        ctx.run_interval(self.sweep_every, |notifier, ctx| notifier.dispatch(ctx));
    }
}

impl Handler<Committed> for Notifier {
    type Result = ();

    fn handle(&mut self, msg: Committed, ctx: &mut Context<Self>) {
        let was_empty = self.unread_chat.is_empty();
        for stored in &msg.0 {
            if is_chat(&stored.row) {
                self.unread_chat.add(&stored.row);
            }
        }
        if self.unread_chat.rooms() >= CHAT_ROOMS_MAX {
            self.store_chat_items(ctx);
        } else if was_empty && !self.unread_chat.is_empty() && self.chat_flush.is_none() {
            self.chat_flush = Some(ctx.run_later(self.chat_items_every, |notifier, ctx| {
                notifier.chat_flush = None;
                notifier.store_chat_items(ctx);
            }));
        }
    }
}

impl Handler<NotificationsCreated> for Notifier {
    type Result = ();

    fn handle(&mut self, msg: NotificationsCreated, ctx: &mut Context<Self>) {
        if msg.0.is_empty() {
            return;
        }
        let items = notification_items(self.composer.delays, &msg.0);
        self.store_notification_items(items, ctx);
    }
}

/// How long committed chat messages wait to become ranges: a tenth of the
/// shorter delay, within [`CHAT_ITEMS_EVERY_MIN`, `CHAT_ITEMS_EVERY_MAX`].
fn chat_items_every(delays: Delays) -> Duration {
    let shorter = delays.offline_ms.min(delays.unread_ms).max(0) as u64;
    Duration::from_millis(shorter / 10).clamp(CHAT_ITEMS_EVERY_MIN, CHAT_ITEMS_EVERY_MAX)
}

/// Messages people write (and notices posted into rooms), in the rooms
/// emails are about. Booking status notices are left out: each status
/// change is also a `booking` notification, which is emailed.
fn is_chat(message: &MessageRow) -> bool {
    ChatRoom::parse(&message.room).is_some() && !is_status_notice(message)
}

/// Committed chat messages not yet in a range, by room and sender: all a
/// recipient's range needs is the first and last of the others' messages
/// and when the first was sent, however many there were.
#[derive(Default)]
struct UnreadChat {
    by_room: HashMap<String, Vec<SenderSpan>>,
}

struct SenderSpan {
    sender: Option<String>,
    first_seq: i64,
    last_seq: i64,
    first_sent_at: i64,
}

impl UnreadChat {
    fn add(&mut self, message: &MessageRow) {
        // The room's name is copied once per flush, not once per message.
        let spans = match self.by_room.get_mut(&message.room) {
            Some(spans) => spans,
            None => self.by_room.entry(message.room.clone()).or_default(),
        };
        match spans.iter_mut().find(|s| s.sender == message.sender_id) {
            Some(span) => {
                span.first_seq = span.first_seq.min(message.seq);
                span.last_seq = span.last_seq.max(message.seq);
                span.first_sent_at = span.first_sent_at.min(message.sent_at);
            }
            None => spans.push(SenderSpan {
                sender: message.sender_id.clone(),
                first_seq: message.seq,
                last_seq: message.seq,
                first_sent_at: message.sent_at,
            }),
        }
    }

    fn is_empty(&self) -> bool {
        self.by_room.is_empty()
    }

    fn rooms(&self) -> usize {
        self.by_room.len()
    }

    /// A recipient's range in `room`: the others' first and last message
    /// and when the first was sent; none when only they wrote.
    fn range_for(&self, room: &str, user: &str) -> Option<(i64, i64, i64)> {
        self.by_room
            .get(room)?
            .iter()
            .filter(|span| span.sender.as_deref() != Some(user))
            .map(|span| (span.first_seq, span.last_seq, span.first_sent_at))
            .reduce(|(f1, l1, t1), (f2, l2, t2)| (f1.min(f2), l1.max(l2), t1.min(t2)))
    }
}

fn new_item(
    user_id: &str,
    kind: EmailKind,
    source: String,
    created_at: i64,
    due_at: i64,
) -> EmailItemRow {
    let now = crate::time::now_ms();
    EmailItemRow {
        id: uuid::Uuid::now_v7().to_string(),
        user_id: user_id.to_owned(),
        kind,
        source,
        room: None,
        seq: None,
        message_id: None,
        notification_id: None,
        created_at,
        due_at,
        state: ItemState::Pending,
        outbox_id: None,
        updated_at: now,
        up_to_seq: None,
    }
}

/// One range per recipient and room: the booking's participants, or the
/// user who opened the support conversation; a recipient's own messages
/// are left out of it (and a room only they wrote in gets none).
async fn chat_ranges(
    db: &Db,
    delays: Delays,
    unread: UnreadChat,
) -> Result<Vec<EmailItemRow>, NotifyError> {
    let rooms: Vec<(&String, ChatRoom)> = unread
        .by_room
        .keys()
        .filter_map(|room| Some((room, ChatRoom::parse(room)?)))
        .collect();
    let (booking_ids, conversation_ids) = ChatRoom::ids(rooms.iter().map(|(_, room)| *room));
    let audience = db.chat_audience(&booking_ids, &conversation_ids).await?;
    let recipients: Vec<String> = rooms
        .iter()
        .flat_map(|(_, room)| audience.recipients(*room))
        .map(str::to_owned)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let chat_delays: HashMap<String, Option<i64>> = db
        .email_preferences_of(&recipients)
        .await?
        .into_iter()
        .map(|p| (p.user_id, p.chat_delay_secs))
        .collect();

    let mut ranges = Vec::new();
    for (room, chat_room) in &rooms {
        let kind = chat_room.email_kind();
        for user in audience.recipients(*chat_room) {
            let Some((first, last, first_sent_at)) = unread.range_for(room, user) else {
                continue;
            };
            let own_delay = chat_delays.get(user).copied().flatten();
            let due = delays.for_item(kind, own_delay).first_check(first_sent_at);
            let mut item = new_item(user, kind, String::new(), first_sent_at, due);
            item.source = format!("range:{room}:{}", item.id);
            item.room = Some((*room).clone());
            item.seq = Some(first);
            item.up_to_seq = Some(last);
            ranges.push(item);
        }
    }
    Ok(ranges)
}

fn notification_items(delays: Delays, rows: &[NotificationRow]) -> Vec<EmailItemRow> {
    rows.iter()
        .filter(|n| n.read_at.is_none())
        .filter_map(|n| {
            // Kinds are checked where notifications are made; one that is
            // not a kind of email has no switch to honour, so no email.
            let Some(kind) = EmailKind::parse(&n.kind) else {
                tracing::warn!(kind = %n.kind, "notification of no email kind: not emailed");
                return None;
            };
            let due = delays.first_check(n.created_at);
            let mut item = new_item(
                &n.user_id,
                kind,
                format!("notification:{}", n.id),
                n.created_at,
                due,
            );
            item.notification_id = Some(n.id.clone());
            Some(item)
        })
        .collect()
}

/// After a start: messages and notifications stored shortly before the
/// previous process stopped may have no item yet (it died between storing
/// them and storing their items). Notification items are unique per
/// source, so storing them all again adds only the missing ones; messages
/// are left out where an item already covers them. Read ones are dropped
/// when they are decided.
async fn catch_up(db: &Db, delays: Delays) -> Result<usize, NotifyError> {
    let now = crate::time::now_ms();
    let newest = db
        .latest_email_item_created()
        .await?
        .unwrap_or(now)
        .min(now);
    let since = (newest - CATCH_UP_MARGIN_MS).max(now - CATCH_UP_MAX_AGE_MS);
    let mut stored = 0;

    let mut after: Option<String> = None;
    loop {
        let page = db
            .chat_messages_since(since, after.as_deref(), CATCH_UP_PAGE)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        let rooms: Vec<String> = page
            .iter()
            .filter(|m| is_chat(m))
            .map(|m| m.room.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let covered = db.chat_ranges_of_rooms(&rooms, since).await?;
        let mut unread = UnreadChat::default();
        for message in page.iter().filter(|m| is_chat(m)) {
            unread.add(message);
        }
        // A recipient already covered for a message is left out of its
        // range; the others still get one.
        let ranges: Vec<EmailItemRow> = chat_ranges(db, delays, unread)
            .await?
            .into_iter()
            .filter_map(|range| uncovered_part(range, &page, &covered))
            .collect();
        stored += db.upsert_chat_ranges(&ranges).await?;
        if (page.len() as i64) < CATCH_UP_PAGE {
            break;
        }
    }

    let mut after: Option<String> = None;
    loop {
        let page = db
            .unread_notifications_since(since, after.as_deref(), CATCH_UP_PAGE)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        stored += db
            .insert_email_items(&notification_items(delays, &page))
            .await?;
        if (page.len() as i64) < CATCH_UP_PAGE {
            break;
        }
    }
    Ok(stored)
}

/// What of a catch-up range no stored item covers yet: the recipient's
/// range shrunk to the others' messages of `page` outside every range in
/// `covered` (recipient, room, first, last); none when all are covered.
fn uncovered_part(
    mut range: EmailItemRow,
    page: &[MessageRow],
    covered: &[(String, String, i64, i64)],
) -> Option<EmailItemRow> {
    let room = range.room.clone()?;
    let user = range.user_id.clone();
    let is_covered = |seq: i64| {
        covered
            .iter()
            .any(|(u, r, first, last)| *u == user && *r == room && *first <= seq && seq <= *last)
    };
    let uncovered = page.iter().filter(|m| {
        m.room == room
            && is_chat(m)
            && m.sender_id.as_deref() != Some(user.as_str())
            && !is_covered(m.seq)
    });
    let (first, last, first_sent_at) = uncovered
        .map(|m| (m.seq, m.seq, m.sent_at))
        .reduce(|(f1, l1, t1), (f2, l2, t2)| (f1.min(f2), l1.max(l2), t1.min(t2)))?;
    range.seq = Some(first);
    range.up_to_seq = Some(last);
    // Its first look stays as early as the whole range's: harmless, the
    // look reschedules what is not due yet.
    range.created_at = first_sent_at;
    Some(range)
}

/// One pass over the recipients with due items.
struct DispatchRound {
    db: Db,
    hub: Addr<Hub>,
    metrics: Arc<Metrics>,
    composer: Arc<Composer>,
}

impl DispatchRound {
    /// Returns how many emails were queued and when the next item is due.
    async fn run(&self) -> Result<(usize, Option<i64>), NotifyError> {
        let mut queued = 0;
        let mut failed: HashSet<String> = HashSet::new();
        for _ in 0..MAX_ROUNDS {
            let recipients = self
                .db
                .due_email_recipients(crate::time::now_ms(), RECIPIENTS_PER_ROUND)
                .await?;
            let fresh: Vec<String> = recipients
                .iter()
                .filter(|r| !failed.contains(*r))
                .cloned()
                .collect();
            if fresh.is_empty() {
                break;
            }
            for user_id in fresh {
                match self.decide_for(&user_id).await {
                    Ok(true) => queued += 1,
                    Ok(false) => {}
                    Err(error) => {
                        tracing::warn!(%error, user = %user_id, "cannot decide about unread items");
                        failed.insert(user_id);
                    }
                }
            }
            if (recipients.len() as i64) < RECIPIENTS_PER_ROUND {
                break;
            }
        }
        Ok((queued, self.db.next_email_item_due().await?))
    }

    /// Decides one recipient's items; true when an email was queued.
    async fn decide_for(&self, user_id: &str) -> Result<bool, NotifyError> {
        let online = match self
            .hub
            .send(IsOnline {
                user_id: user_id.to_owned(),
            })
            .await
        {
            Ok(online) => online,
            Err(error) => {
                // Unknown presence: assume online, the case that waits for
                // the unread delay rather than emailing someone watching.
                tracing::warn!(%error, "presence unknown");
                true
            }
        };
        let composer = self.composer.clone();
        let user = user_id.to_owned();
        let plan = self
            .db
            .dispatch_email_items(user_id, move |snapshot| {
                decide(&composer, &user, snapshot, crate::time::now_ms(), online)
            })
            .await?;
        for (_, reason) in &plan.dropped {
            self.metrics
                .email_items_dropped
                .with_label_values(&[reason.as_str()])
                .inc();
        }
        if plan.dropped.iter().any(|(_, r)| *r == ItemState::NoAddress) {
            tracing::warn!(
                user = %user_id,
                items = plan.dropped.len(),
                "unread items not emailed: the user has no email address"
            );
        }
        if plan.email.is_some() {
            self.metrics.emails_queued.inc();
        }
        Ok(plan.email.is_some())
    }
}

/// Whether an item may be emailed now, or when to look again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timing {
    Due,
    Later(i64),
}

/// The contract's rule: after the offline delay without a live session,
/// after the unread delay when online.
fn timing(now: i64, online: bool, created_at: i64, delays: Delays) -> Timing {
    let offline_due = created_at.saturating_add(delays.offline_ms);
    let unread_due = created_at.saturating_add(delays.unread_ms);
    if online {
        if now >= unread_due {
            return Timing::Due;
        }
        if offline_due > now {
            return Timing::Later(offline_due.min(unread_due));
        }
        // Past the offline delay: if they leave before the unread delay,
        // that is noticed at the next look.
        let recheck = delays
            .offline_ms
            .clamp(PRESENCE_RECHECK_MIN_MS, PRESENCE_RECHECK_MAX_MS);
        Timing::Later((now + recheck).min(unread_due))
    } else {
        if now >= offline_due {
            return Timing::Due;
        }
        // If they come online, the unread delay may end first.
        if unread_due > now {
            Timing::Later(offline_due.min(unread_due))
        } else {
            Timing::Later(offline_due)
        }
    }
}

/// Why an item will not be emailed, if it will not.
fn drop_reason(item: &PendingItem, preferences: &PreferencesRow) -> Option<ItemState> {
    match &item.source {
        ItemSource::Gone => Some(ItemState::Gone),
        ItemSource::Chat { member: false, .. } => Some(ItemState::Gone),
        ItemSource::Chat { read: true, .. } => Some(ItemState::Read),
        // Nothing of the range left to show: only the recipient's own,
        // notices, or what an earlier email showed.
        ItemSource::Chat { messages, more, .. } if messages.is_empty() && *more == 0 => {
            Some(ItemState::Gone)
        }
        ItemSource::Notification(row) if row.read_at.is_some() => Some(ItemState::Read),
        _ if !preferences.allows(item.row.kind) => Some(ItemState::Disabled),
        _ => None,
    }
}

/// When what an item stands for became unread: for a chat range, when its
/// oldest unread message was sent (what was read meanwhile no longer counts).
fn unread_since(item: &PendingItem) -> i64 {
    match &item.source {
        ItemSource::Chat {
            oldest_unread_at: Some(at),
            ..
        } => *at,
        _ => item.row.created_at,
    }
}

/// The decision for one recipient: drop what is read or unwanted; if
/// anything left is due, all of it becomes one digest; else each waits.
fn decide(
    composer: &Composer,
    user_id: &str,
    snapshot: RecipientSnapshot,
    now: i64,
    online: bool,
) -> DispatchPlan {
    let preferences = snapshot
        .preferences
        .unwrap_or_else(|| PreferencesRow::defaults(user_id));
    let mut plan = DispatchPlan::default();
    let mut keep: Vec<(PendingItem, Timing)> = Vec::new();
    for item in snapshot.items {
        match drop_reason(&item, &preferences) {
            Some(reason) => plan.dropped.push((item.row.id.clone(), reason)),
            None => {
                let delays = composer
                    .delays
                    .for_item(item.row.kind, preferences.chat_delay_secs);
                let timing = timing(now, online, unread_since(&item), delays);
                keep.push((item, timing));
            }
        }
    }
    if !keep.iter().any(|(_, t)| *t == Timing::Due) {
        plan.rescheduled = keep
            .into_iter()
            .filter_map(|(item, timing)| match timing {
                Timing::Later(at) if at != item.row.due_at => Some((item.row.id, at)),
                _ => None,
            })
            .collect();
        return plan;
    }
    let address = snapshot
        .user
        .as_ref()
        .filter(|u| u.erased_at.is_none())
        .and_then(|u| u.email.as_deref())
        .map(str::trim)
        .filter(|e| e.contains('@'));
    let Some(address) = address else {
        plan.dropped.extend(
            keep.into_iter()
                .map(|(item, _)| (item.row.id, ItemState::NoAddress)),
        );
        return plan;
    };

    let entries: Vec<DigestEntry> = keep
        .iter()
        .flat_map(|(item, _)| digest_entries(composer, item))
        .collect();
    let mut kinds: Vec<&str> = keep.iter().map(|(i, _)| i.row.kind.as_str()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let unsubscribe: Vec<UnsubscribeLink> = kinds
        .iter()
        .map(|kind| UnsubscribeLink {
            kind: (*kind).to_owned(),
            url: composer.signer.url(user_id, kind),
        })
        .collect();
    let rendered = templates::render_digest(
        snapshot.user.as_ref().and_then(|u| u.name.as_deref()),
        &entries,
        &unsubscribe,
        &format!("{}/settings/notifications", composer.app_base_url),
    );
    let email_id = uuid::Uuid::now_v7().to_string();
    plan.emailed = keep.iter().map(|(i, _)| i.row.id.clone()).collect();
    plan.email = Some(OutboxRow {
        id: email_id,
        user_id: user_id.to_owned(),
        to_address: address.to_owned(),
        subject: rendered.subject,
        html: rendered.html,
        text: rendered.text,
        // One-click unsubscribe only when the email is about one kind.
        unsubscribe_url: match unsubscribe.as_slice() {
            [only] => Some(only.url.clone()),
            _ => None,
        },
        item_count: plan.emailed.len() as i64,
        state: OutboxState::Queued,
        solo: false,
        batch_id: None,
        provider_id: None,
        last_error: None,
        created_at: now,
        sent_at: None,
    });
    plan
}

/// An item's lines in the digest: each message shown of a chat range
/// (after a count of the older unread ones, if any), or the notification.
fn digest_entries(composer: &Composer, item: &PendingItem) -> Vec<DigestEntry> {
    match &item.source {
        ItemSource::Chat {
            messages,
            more,
            oldest_unread_at,
            booking_title,
            ..
        } => {
            let room = item.row.room.as_deref().and_then(ChatRoom::parse);
            let (place, link) = match room {
                Some(ChatRoom::Booking(id)) => (
                    booking_title.clone().filter(|t| !t.trim().is_empty()),
                    format!("{}/bookings/{id}", composer.app_base_url),
                ),
                Some(ChatRoom::Support(id)) => (
                    Some("Mixroom support".to_owned()),
                    format!("{}/support/{id}", composer.app_base_url),
                ),
                None => (None, composer.app_base_url.clone()),
            };
            let mut entries = Vec::with_capacity(messages.len() + 1);
            if *more > 0 {
                let what = if *more == 1 {
                    "1 earlier unread message".to_owned()
                } else {
                    format!("{more} earlier unread messages")
                };
                entries.push(DigestEntry {
                    kind: item.row.kind.as_str().to_owned(),
                    is_message: false,
                    heading: match &place {
                        Some(place) => format!("{what} · {place}"),
                        None => what,
                    },
                    body: String::new(),
                    link: Some(link.clone()),
                    at_ms: oldest_unread_at.unwrap_or(item.row.created_at),
                });
            }
            entries.extend(messages.iter().map(|message| DigestEntry {
                kind: item.row.kind.as_str().to_owned(),
                is_message: true,
                heading: match &place {
                    Some(place) => format!("{} · {place}", message.sender_name),
                    None => message.sender_name.clone(),
                },
                body: message.body.clone(),
                link: Some(link.clone()),
                at_ms: message.sent_at,
            }));
            entries
        }
        ItemSource::Notification(row) => vec![DigestEntry {
            kind: row.kind.clone(),
            is_message: false,
            heading: row.title.clone(),
            body: row.body.clone(),
            link: row
                .link
                .as_deref()
                .and_then(|l| templates::absolute_link(&composer.app_base_url, l)),
            at_ms: row.created_at,
        }],
        ItemSource::Gone => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::models::UserRow;

    const DELAYS: Delays = Delays {
        offline_ms: 60_000,
        unread_ms: 600_000,
    };

    #[test]
    fn offline_recipients_wait_the_offline_delay() {
        assert_eq!(timing(59_999, false, 0, DELAYS), Timing::Later(60_000));
        assert_eq!(timing(60_000, false, 0, DELAYS), Timing::Due);
    }

    #[test]
    fn online_recipients_wait_the_unread_delay_and_are_looked_at_again() {
        assert_eq!(timing(1_000, true, 0, DELAYS), Timing::Later(60_000));
        // Past the offline delay but online: look again, in case they left.
        assert_eq!(timing(60_000, true, 0, DELAYS), Timing::Later(120_000));
        assert_eq!(timing(590_000, true, 0, DELAYS), Timing::Later(600_000));
        assert_eq!(timing(600_000, true, 0, DELAYS), Timing::Due);
    }

    #[test]
    fn a_shorter_unread_delay_applies_to_online_recipients_first() {
        let delays = Delays {
            offline_ms: 10_000,
            unread_ms: 4_000,
        };
        assert_eq!(timing(0, false, 0, delays), Timing::Later(4_000));
        assert_eq!(timing(4_000, false, 0, delays), Timing::Later(10_000));
        assert_eq!(timing(4_000, true, 0, delays), Timing::Due);
    }

    #[test]
    fn a_users_chat_delay_replaces_both_for_chat_only() {
        let own = DELAYS.for_item(EmailKind::Chat, Some(5));
        assert_eq!(
            own,
            Delays {
                offline_ms: 5_000,
                unread_ms: 5_000
            }
        );
        assert_eq!(DELAYS.for_item(EmailKind::Booking, Some(5)), DELAYS);
        assert_eq!(DELAYS.for_item(EmailKind::Chat, None), DELAYS);
    }

    fn composer() -> Composer {
        let settings = Settings::load(None).unwrap();
        Composer {
            delays: DELAYS,
            signer: UnsubscribeSigner::from_settings(&settings),
            app_base_url: "https://app.example.com".into(),
        }
    }

    fn chat_item(id: &str, seq: i64, created_at: i64, read_up_to: i64) -> PendingItem {
        let message = MessageRow {
            id: format!("m-{id}"),
            room: "booking:b1".into(),
            seq,
            sender_id: Some("ava".into()),
            sender_name: "Ava".into(),
            sender_role: "client".into(),
            client_id: Some(id.into()),
            body: format!("take {seq}"),
            sent_at: created_at,
        };
        let mut row = new_item(
            "sam",
            EmailKind::Chat,
            format!("message:{}", message.id),
            created_at,
            0,
        );
        row.id = id.into();
        row.room = Some(message.room.clone());
        row.seq = Some(seq);
        row.up_to_seq = Some(seq);
        let read = read_up_to >= seq;
        PendingItem {
            row,
            source: ItemSource::Chat {
                oldest_unread_at: (!read).then_some(created_at),
                messages: if read { Vec::new() } else { vec![message] },
                more: 0,
                booking_title: Some("Vocals".into()),
                read,
                member: true,
            },
        }
    }

    fn message(seq: i64, sender: &str, sent_at: i64) -> MessageRow {
        MessageRow {
            id: format!("m{seq}"),
            room: "booking:b1".into(),
            seq,
            sender_id: Some(sender.into()),
            sender_name: sender.into(),
            sender_role: "client".into(),
            client_id: Some(format!("c{seq}")),
            body: format!("take {seq}"),
            sent_at,
        }
    }

    #[test]
    fn ranges_are_stored_at_a_tenth_of_the_shorter_delay_within_bounds() {
        assert_eq!(chat_items_every(DELAYS), Duration::from_secs(1));
        let short = Delays {
            offline_ms: 1_000,
            unread_ms: 30_000,
        };
        assert_eq!(chat_items_every(short), Duration::from_millis(100));
        let middle = Delays {
            offline_ms: 5_000,
            unread_ms: 3_000,
        };
        assert_eq!(chat_items_every(middle), Duration::from_millis(300));
    }

    #[test]
    fn a_recipients_range_holds_the_others_messages_only() {
        let mut unread = UnreadChat::default();
        for (seq, sender, at) in [
            (4, "ava", 40),
            (5, "sam", 50),
            (6, "eli", 60),
            (7, "ava", 70),
        ] {
            unread.add(&message(seq, sender, at));
        }
        assert_eq!(unread.rooms(), 1);
        assert_eq!(unread.range_for("booking:b1", "sam"), Some((4, 7, 40)));
        assert_eq!(unread.range_for("booking:b1", "ava"), Some((5, 6, 50)));
        assert_eq!(unread.range_for("booking:b2", "sam"), None);

        let mut alone = UnreadChat::default();
        alone.add(&message(1, "sam", 10));
        assert_eq!(alone.range_for("booking:b1", "sam"), None);
    }

    #[test]
    fn a_catch_up_range_leaves_out_what_is_covered() {
        let page: Vec<MessageRow> = (1..=6).map(|seq| message(seq, "ava", seq * 10)).collect();
        let mut range = new_item("sam", EmailKind::Chat, String::new(), 10, 0);
        range.room = Some("booking:b1".into());
        range.seq = Some(1);
        range.up_to_seq = Some(6);
        let covered = vec![
            ("sam".to_owned(), "booking:b1".to_owned(), 1, 3),
            // Another recipient's, or another room's, cover nothing of Sam's.
            ("eli".to_owned(), "booking:b1".to_owned(), 4, 6),
            ("sam".to_owned(), "booking:b2".to_owned(), 4, 6),
        ];
        let part = uncovered_part(range.clone(), &page, &covered).unwrap();
        assert_eq!(
            (part.seq, part.up_to_seq, part.created_at),
            (Some(4), Some(6), 40)
        );

        let all = vec![("sam".to_owned(), "booking:b1".to_owned(), 1, 6)];
        assert!(uncovered_part(range, &page, &all).is_none());
    }

    fn sam(email: Option<&str>) -> Option<UserRow> {
        Some(UserRow {
            id: "sam".into(),
            email: email.map(Into::into),
            name: Some("Sam".into()),
            role: "studio_owner".into(),
            updated_at: 0,
            erased_at: None,
        })
    }

    #[test]
    fn one_due_item_takes_the_others_into_one_digest() {
        let snapshot = RecipientSnapshot {
            user: sam(Some("sam@example.com")),
            preferences: None,
            items: vec![
                chat_item("a", 1, 0, 0),
                chat_item("b", 2, 30_000, 0),
                chat_item("c", 3, 40_000, 3),
            ],
        };
        let plan = decide(&composer(), "sam", snapshot, 60_000, false);
        assert_eq!(plan.emailed, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(plan.dropped, vec![("c".to_owned(), ItemState::Read)]);
        let email = plan.email.unwrap();
        assert_eq!(email.to_address, "sam@example.com");
        assert_eq!(email.item_count, 2);
        assert!(email.text.contains("take 1") && email.text.contains("take 2"));
        assert!(!email.text.contains("take 3"));
        assert!(email.html.contains("https://app.example.com/bookings/b1"));
        assert!(email.unsubscribe_url.unwrap().contains("token=sam.chat."));
    }

    #[test]
    fn nothing_due_means_no_email_and_later_checks() {
        let snapshot = RecipientSnapshot {
            user: sam(Some("sam@example.com")),
            preferences: None,
            items: vec![chat_item("a", 1, 0, 0)],
        };
        let plan = decide(&composer(), "sam", snapshot, 10_000, false);
        assert!(plan.email.is_none());
        assert_eq!(plan.rescheduled, vec![("a".to_owned(), 60_000)]);
    }

    #[test]
    fn turned_off_kinds_and_missing_addresses_drop_items() {
        let mut preferences = PreferencesRow::defaults("sam");
        preferences.chat = false;
        let snapshot = RecipientSnapshot {
            user: sam(Some("sam@example.com")),
            preferences: Some(preferences),
            items: vec![chat_item("a", 1, 0, 0)],
        };
        let plan = decide(&composer(), "sam", snapshot, 60_000, false);
        assert!(plan.email.is_none());
        assert_eq!(plan.dropped, vec![("a".to_owned(), ItemState::Disabled)]);

        let snapshot = RecipientSnapshot {
            user: sam(None),
            preferences: None,
            items: vec![chat_item("a", 1, 0, 0)],
        };
        let plan = decide(&composer(), "sam", snapshot, 60_000, false);
        assert!(plan.email.is_none());
        assert_eq!(plan.dropped, vec![("a".to_owned(), ItemState::NoAddress)]);
    }
}
