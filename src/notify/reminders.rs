//! The reminder actor: takes booking reminders when they come due (see
//! [`crate::db::reminders`]) and hands their notifications to the inbox,
//! which shows them live and has them emailed at once.
//!
//! Every node runs one. Taking is one transaction per page of due
//! reminders, so whichever node comes first sends a reminder and the
//! others find it taken; one due while every node was down is taken by the
//! first node up (late, or `missed` once the session began).

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::db::Db;
use crate::metrics::Metrics;
use crate::notifications::Inbox;

/// After a storage error the actor looks again this much later.
const ERROR_RETRY_MS: i64 = 2_000;
/// Pages taken per wake-up before yielding to a fresh wake-up.
const MAX_PAGES: usize = 100;

/// A booking's reminders changed on this node: look at when the next is due.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RemindersChanged;

pub struct Reminders {
    db: Db,
    inbox: Inbox,
    metrics: Arc<Metrics>,
    /// Other nodes' bookings are seen at most this late.
    sweep_every: Duration,
    running: bool,
    run_again: bool,
    wake: Option<(i64, SpawnHandle)>,
}

impl Reminders {
    pub fn new(db: Db, inbox: Inbox, metrics: Arc<Metrics>, sweep_every: Duration) -> Self {
        Reminders {
            db,
            inbox,
            metrics,
            sweep_every,
            running: false,
            run_again: false,
            wake: None,
        }
    }

    fn run(&mut self, ctx: &mut Context<Self>) {
        if self.running {
            self.run_again = true;
            return;
        }
        self.running = true;
        let db = self.db.clone();
        let inbox = self.inbox.clone();
        let metrics = self.metrics.clone();
        ctx.spawn(
            async move { take_due(&db, &inbox, &metrics).await }
                .into_actor(self)
                .map(|result, reminders, ctx| {
                    reminders.running = false;
                    match result {
                        Ok(Some(due)) => reminders.wake_at(due, ctx),
                        Ok(None) => {}
                        Err(error) => {
                            tracing::warn!(%error, "reminders: taking due ones failed; retrying");
                            reminders.wake_at(crate::time::now_ms() + ERROR_RETRY_MS, ctx);
                        }
                    }
                    if std::mem::take(&mut reminders.run_again) {
                        reminders.run(ctx);
                    }
                }),
        );
    }

    /// Runs at `at` (unix ms), unless a run is already set earlier.
    fn wake_at(&mut self, at: i64, ctx: &mut Context<Self>) {
        if let Some((planned, handle)) = self.wake {
            if planned <= at {
                return;
            }
            ctx.cancel_future(handle);
        }
        let delay = Duration::from_millis((at - crate::time::now_ms()).max(0) as u64);
        let handle = ctx.run_later(delay, |reminders, ctx| {
            reminders.wake = None;
            reminders.run(ctx);
        });
        self.wake = Some((at, handle));
    }
}

/// Takes every due reminder; answers when the next one is due.
async fn take_due(
    db: &Db,
    inbox: &Inbox,
    metrics: &Metrics,
) -> Result<Option<i64>, crate::db::DbError> {
    for _ in 0..MAX_PAGES {
        let taken = db.take_due_reminders(crate::time::now_ms()).await?;
        for (outcome, count) in [
            ("sent", taken.sent),
            ("missed", taken.missed),
            ("cancelled", taken.cancelled),
        ] {
            metrics
                .reminders
                .with_label_values(&[outcome])
                .inc_by(count as u64);
        }
        if taken.missed > 0 {
            tracing::warn!(
                missed = taken.missed,
                "booking reminders came due while no node ran and their sessions have begun: \
                 dropped"
            );
        }
        inbox.push(&taken.notifications);
        if !taken.more {
            break;
        }
    }
    db.next_reminder_due().await
}

impl Actor for Reminders {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Whatever came due while this node was down.
        self.run(ctx);
        ctx.run_interval(self.sweep_every, |reminders, ctx| reminders.run(ctx));
    }
}

impl Handler<RemindersChanged> for Reminders {
    type Result = ();

    fn handle(&mut self, _: RemindersChanged, ctx: &mut Context<Self>) {
        self.run(ctx);
    }
}
