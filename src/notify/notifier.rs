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
    item_state, outbox_state, DispatchPlan, EmailItemRow, ItemSource, OutboxRow, PendingItem,
    PreferencesRow, RecipientSnapshot,
};
use crate::db::models::{MessageRow, NotificationRow};
use crate::db::Db;
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
/// Committed chat messages are turned into items together, at most this
/// often: one query and one write for many messages (items are due minutes
/// later; a crash meanwhile is covered by the catch-up of the next start).
const CHAT_ITEMS_EVERY: Duration = Duration::from_millis(200);
/// ... or as soon as this many messages wait.
const CHAT_ITEMS_MAX: usize = 5_000;

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
    /// Committed chat messages waiting to become items.
    unread_chat: Vec<MessageRow>,
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
            unread_chat: Vec::new(),
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
        let messages = std::mem::take(&mut self.unread_chat);
        if messages.is_empty() {
            return;
        }
        let db = self.db.clone();
        let delays = self.composer.delays;
        self.store_items(async move { chat_items(&db, delays, &messages).await }, ctx);
    }

    /// Stores items, then makes sure the earliest of them is looked at.
    fn store_items<F>(&mut self, items: F, ctx: &mut Context<Self>)
    where
        F: Future<Output = Result<Vec<EmailItemRow>, NotifyError>> + 'static,
    {
        let db = self.db.clone();
        ctx.spawn(
            async move {
                let items = items.await?;
                db.insert_email_items(&items).await?;
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
        let waiting = self.unread_chat.len();
        self.unread_chat.extend(
            msg.0
                .iter()
                .filter(|stored| is_chat(&stored.row))
                .map(|stored| stored.row.clone()),
        );
        if self.unread_chat.len() >= CHAT_ITEMS_MAX {
            self.store_chat_items(ctx);
        } else if self.unread_chat.len() > waiting && self.chat_flush.is_none() {
            self.chat_flush = Some(ctx.run_later(CHAT_ITEMS_EVERY, |notifier, ctx| {
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
        self.store_items(async move { Ok(items) }, ctx);
    }
}

/// Messages people write (and notices posted into rooms), in the rooms
/// emails are about. Booking status notices are left out: each status
/// change is also a `booking` notification, which is emailed.
fn is_chat(message: &MessageRow) -> bool {
    let room_ok = message.room.starts_with("booking:") || message.room.starts_with("support:");
    let status_notice = message.sender_role == "system"
        && message
            .client_id
            .as_deref()
            .is_some_and(|c| c.starts_with("status:"));
    room_ok && !status_notice
}

fn new_item(
    user_id: &str,
    kind: &str,
    source: String,
    created_at: i64,
    due_at: i64,
) -> EmailItemRow {
    let now = crate::time::now_ms();
    EmailItemRow {
        id: uuid::Uuid::now_v7().to_string(),
        user_id: user_id.to_owned(),
        kind: kind.to_owned(),
        source,
        room: None,
        seq: None,
        message_id: None,
        notification_id: None,
        created_at,
        due_at,
        state: item_state::PENDING.to_owned(),
        outbox_id: None,
        updated_at: now,
    }
}

/// One item per recipient of each message: the booking's participants, or
/// the user who opened the support conversation; never the sender.
async fn chat_items(
    db: &Db,
    delays: Delays,
    messages: &[MessageRow],
) -> Result<Vec<EmailItemRow>, NotifyError> {
    let booking_ids: HashSet<&str> = messages
        .iter()
        .filter_map(|m| m.room.strip_prefix("booking:"))
        .collect();
    let conversation_ids: HashSet<&str> = messages
        .iter()
        .filter_map(|m| m.room.strip_prefix("support:"))
        .collect();
    let mut members: HashMap<String, Vec<String>> = HashMap::new();
    if !booking_ids.is_empty() {
        let ids: Vec<&str> = booking_ids.into_iter().collect();
        for (booking, user) in db.participants_of_bookings(&ids).await? {
            members
                .entry(format!("booking:{booking}"))
                .or_default()
                .push(user);
        }
    }
    if !conversation_ids.is_empty() {
        let ids: Vec<&str> = conversation_ids.into_iter().collect();
        for (conversation, user) in db.support_conversation_owners(&ids).await? {
            members
                .entry(format!("support:{conversation}"))
                .or_default()
                .push(user);
        }
    }
    let recipients: Vec<String> = members
        .values()
        .flatten()
        .cloned()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let chat_delays: HashMap<String, Option<i64>> = db
        .email_preferences_of(&recipients)
        .await?
        .into_iter()
        .map(|p| (p.user_id, p.chat_delay_secs))
        .collect();

    let mut items = Vec::new();
    for message in messages {
        let kind = if message.room.starts_with("support:") {
            "support"
        } else {
            "chat"
        };
        for user in members.get(&message.room).into_iter().flatten() {
            if message.sender_id.as_deref() == Some(user.as_str()) {
                continue;
            }
            let own_delay = chat_delays.get(user).copied().flatten();
            let due = delays
                .for_item(kind, own_delay)
                .first_check(message.sent_at);
            let mut item = new_item(
                user,
                kind,
                format!("message:{}", message.id),
                message.sent_at,
                due,
            );
            item.room = Some(message.room.clone());
            item.seq = Some(message.seq);
            item.message_id = Some(message.id.clone());
            items.push(item);
        }
    }
    Ok(items)
}

fn notification_items(delays: Delays, rows: &[NotificationRow]) -> Vec<EmailItemRow> {
    rows.iter()
        .filter(|n| n.read_at.is_none())
        .map(|n| {
            let due = delays.first_check(n.created_at);
            let mut item = new_item(
                &n.user_id,
                &n.kind,
                format!("notification:{}", n.id),
                n.created_at,
                due,
            );
            item.notification_id = Some(n.id.clone());
            item
        })
        .collect()
}

/// After a start: messages and notifications stored shortly before the
/// previous process stopped may have no item yet (it died between storing
/// them and storing their items). Items are unique per source, so storing
/// them all again adds only the missing ones; read ones are dropped when
/// they are decided.
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
        let messages: Vec<MessageRow> = page.iter().filter(|m| is_chat(m)).cloned().collect();
        stored += db
            .insert_email_items(&chat_items(db, delays, &messages).await?)
            .await?;
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
                .with_label_values(&[reason])
                .inc();
        }
        if plan
            .dropped
            .iter()
            .any(|(_, r)| *r == item_state::NO_ADDRESS)
        {
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
fn drop_reason(item: &PendingItem, preferences: &PreferencesRow) -> Option<&'static str> {
    match &item.source {
        ItemSource::Gone => Some(item_state::GONE),
        ItemSource::Chat { member: false, .. } => Some(item_state::GONE),
        ItemSource::Chat {
            message,
            read_up_to,
            ..
        } if *read_up_to >= message.seq => Some(item_state::READ),
        ItemSource::Notification(row) if row.read_at.is_some() => Some(item_state::READ),
        _ if !preferences.allows(&item.row.kind) => Some(item_state::DISABLED),
        _ => None,
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
                    .for_item(&item.row.kind, preferences.chat_delay_secs);
                let timing = timing(now, online, item.row.created_at, delays);
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
                .map(|(item, _)| (item.row.id, item_state::NO_ADDRESS)),
        );
        return plan;
    };

    let entries: Vec<DigestEntry> = keep
        .iter()
        .map(|(item, _)| digest_entry(composer, item))
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
        state: outbox_state::QUEUED.to_owned(),
        solo: false,
        batch_id: None,
        provider_id: None,
        last_error: None,
        created_at: now,
        sent_at: None,
    });
    plan
}

fn digest_entry(composer: &Composer, item: &PendingItem) -> DigestEntry {
    match &item.source {
        ItemSource::Chat {
            message,
            booking_title,
            ..
        } => {
            let (place, link) = match message.room.split_once(':') {
                Some(("booking", id)) => (
                    booking_title.clone().filter(|t| !t.trim().is_empty()),
                    format!("{}/bookings/{id}", composer.app_base_url),
                ),
                Some(("support", id)) => (
                    Some("Mixroom support".to_owned()),
                    format!("{}/support/{id}", composer.app_base_url),
                ),
                _ => (None, composer.app_base_url.clone()),
            };
            let heading = match place {
                Some(place) => format!("{} · {place}", message.sender_name),
                None => message.sender_name.clone(),
            };
            DigestEntry {
                kind: item.row.kind.clone(),
                is_message: true,
                heading,
                body: message.body.clone(),
                link: Some(link),
                at_ms: message.sent_at,
            }
        }
        ItemSource::Notification(row) => DigestEntry {
            kind: row.kind.clone(),
            is_message: false,
            heading: row.title.clone(),
            body: row.body.clone(),
            link: row
                .link
                .as_deref()
                .and_then(|l| templates::absolute_link(&composer.app_base_url, l)),
            at_ms: row.created_at,
        },
        ItemSource::Gone => DigestEntry {
            kind: item.row.kind.clone(),
            is_message: false,
            heading: String::new(),
            body: String::new(),
            link: None,
            at_ms: item.row.created_at,
        },
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
        let own = DELAYS.for_item("chat", Some(5));
        assert_eq!(
            own,
            Delays {
                offline_ms: 5_000,
                unread_ms: 5_000
            }
        );
        assert_eq!(DELAYS.for_item("booking", Some(5)), DELAYS);
        assert_eq!(DELAYS.for_item("chat", None), DELAYS);
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
            "chat",
            format!("message:{}", message.id),
            created_at,
            0,
        );
        row.id = id.into();
        PendingItem {
            row,
            source: ItemSource::Chat {
                message,
                booking_title: Some("Vocals".into()),
                read_up_to,
                member: true,
            },
        }
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
        assert_eq!(plan.dropped, vec![("c".to_owned(), item_state::READ)]);
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
        assert_eq!(plan.dropped, vec![("a".to_owned(), item_state::DISABLED)]);

        let snapshot = RecipientSnapshot {
            user: sam(None),
            preferences: None,
            items: vec![chat_item("a", 1, 0, 0)],
        };
        let plan = decide(&composer(), "sam", snapshot, 60_000, false);
        assert!(plan.email.is_none());
        assert_eq!(plan.dropped, vec![("a".to_owned(), item_state::NO_ADDRESS)]);
    }
}
