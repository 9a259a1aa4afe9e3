//! The notifier actor: stores what is owed as messages and notifications
//! are committed (see [`super::intake`]), and wakes when items are due to
//! have them decided ([`super::policy`]) into digests ([`super::digest`])
//! that the mailer sends.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::digest::Composer;
use super::intake::{catch_up, chat_ranges, is_chat, notification_items, UnreadChat};
use super::mailer::{Kick, Mailer};
use super::policy::{decide, Delays};
use super::NotifyError;
use crate::config::Settings;
use crate::db::email::EmailItemRow;
use crate::db::models::NotificationRow;
use crate::db::Db;
use crate::domain::email::ItemState;
use crate::metrics::Metrics;
use crate::rooms::hub::{Hub, IsOnline};
use crate::rooms::sequencer::Committed;

/// Recipients decided per query, and queries per wake-up.
const RECIPIENTS_PER_ROUND: i64 = 100;
const MAX_ROUNDS: usize = 20;
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

pub struct Notifier {
    db: Db,
    hub: Addr<Hub>,
    mailer: Addr<Mailer>,
    metrics: Arc<Metrics>,
    delays: Delays,
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
        let delays = Delays::from_settings(&settings.email);
        Notifier {
            db,
            hub,
            mailer,
            metrics,
            delays,
            composer: Arc::new(Composer::from_settings(&settings)),
            sweep_every: Duration::from_millis(settings.email.sweep_interval_ms),
            dispatching: false,
            dispatch_again: false,
            wake: None,
            unread_chat: UnreadChat::default(),
            chat_items_every: chat_items_every(delays),
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
            delays: self.delays,
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
        let delays = self.delays;
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
        let delays = self.delays;
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
        let items = notification_items(self.delays, &msg.0);
        self.store_notification_items(items, ctx);
    }
}

/// How long committed chat messages wait to become ranges: a tenth of the
/// shorter delay, within [`CHAT_ITEMS_EVERY_MIN`, `CHAT_ITEMS_EVERY_MAX`].
fn chat_items_every(delays: Delays) -> Duration {
    let shorter = delays.offline_ms.min(delays.unread_ms).max(0) as u64;
    Duration::from_millis(shorter / 10).clamp(CHAT_ITEMS_EVERY_MIN, CHAT_ITEMS_EVERY_MAX)
}

/// One pass over the recipients with due items.
struct DispatchRound {
    db: Db,
    hub: Addr<Hub>,
    metrics: Arc<Metrics>,
    delays: Delays,
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
        let delays = self.delays;
        let composer = self.composer.clone();
        let user = user_id.to_owned();
        let plan = self
            .db
            .dispatch_email_items(user_id, move |snapshot| {
                let now = crate::time::now_ms();
                decide(delays, &composer, &user, snapshot, now, online)
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
        self.metrics.emails_queued.inc_by(plan.emails.len() as u64);
        Ok(!plan.emails.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAYS: Delays = Delays {
        offline_ms: 60_000,
        unread_ms: 600_000,
    };

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
}
