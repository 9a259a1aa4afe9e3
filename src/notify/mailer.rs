//! The mailer actor: sends what waits in the outbox.
//!
//! One send loop per node, never two at once: it groups queued emails into
//! batches, claims the batch due first (a lease in the database, so nodes
//! never send the same batch at the same time), waits for the rate limiter,
//! sends, and records the outcome:
//! - accepted: the batch and its emails are marked sent;
//! - 429: the batch waits Resend's `Retry-After` (not counted as a failure)
//!   and the whole loop pauses as long, since every request would be refused;
//! - 5xx, network error, timeout: tried again after an exponential backoff
//!   with jitter, until `email.max_attempts`, then given up (log + metric);
//! - another 4xx: a batch of several is split so each email goes alone (one
//!   bad address must not sink the others); a single email is given up.
//!
//! It wakes when the notifier has queued emails, at the next retry time it
//! knows of, and every `email.sweep_interval_ms` for work of other nodes.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;

use super::transport::{SendOutcome, Transport};
use super::NotifyError;
use crate::config::EmailSettings;
use crate::db::email::BatchRow;
use crate::db::Db;
use crate::metrics::Metrics;

/// Resend takes at most 100 emails per batch request.
const MAX_BATCH: i64 = 100;
/// A lease outlives the request's own timeout and the rate limiter's wait
/// by at least this much, so a node still sending never loses its batch.
const LEASE_MARGIN_MS: i64 = 5_000;
/// Requests per wake-up before the loop yields to a fresh wake-up.
const MAX_SENDS_PER_RUN: usize = 200;
/// After a storage error the loop looks again this much later.
const ERROR_RETRY: Duration = Duration::from_secs(2);

/// New emails are in the outbox.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Kick;

pub struct Mailer {
    db: Db,
    transport: Arc<Transport>,
    /// Resend's rate, for this node (only when sending for real).
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    settings: Arc<EmailSettings>,
    metrics: Arc<Metrics>,
    /// Who holds a lease: this process.
    node: Arc<str>,
    running: bool,
    run_again: bool,
    /// Nothing is sent before this (unix ms), after a 429.
    paused_until: i64,
    wake: Option<(i64, SpawnHandle)>,
}

/// What one run of the send loop saw.
struct RunReport {
    /// When to run next: the earliest retry, or a 429's pause.
    next: Option<i64>,
    paused_until: Option<i64>,
}

impl Mailer {
    pub fn new(
        db: Db,
        transport: Transport,
        settings: EmailSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let limiter = transport.is_remote().then(|| {
            // No burst: Resend counts requests in any one second, and a burst
            // of `rate` followed by the steady rate would exceed that. And a
            // tenth slower than the rate, so a request held up on the way
            // does not land in the same second as the next two.
            let rate = settings.rate_per_sec.max(1);
            let period = Duration::from_micros(1_100_000 / u64::from(rate));
            let quota = Quota::with_period(period)
                .expect("a positive period")
                .allow_burst(NonZeroU32::MIN);
            Arc::new(RateLimiter::direct(quota))
        });
        Mailer {
            db,
            transport: Arc::new(transport),
            limiter,
            settings: Arc::new(settings),
            metrics,
            node: uuid::Uuid::new_v4().to_string().into(),
            running: false,
            run_again: false,
            paused_until: 0,
            wake: None,
        }
    }

    fn run(&mut self, ctx: &mut Context<Self>) {
        if self.running {
            self.run_again = true;
            return;
        }
        let now = crate::time::now_ms();
        if now < self.paused_until {
            self.wake_at(self.paused_until, ctx);
            return;
        }
        self.running = true;
        let loop_state = SendLoop {
            db: self.db.clone(),
            transport: self.transport.clone(),
            limiter: self.limiter.clone(),
            settings: self.settings.clone(),
            metrics: self.metrics.clone(),
            node: self.node.clone(),
        };
        ctx.spawn(async move { loop_state.run().await }.into_actor(self).map(
            |result, mailer, ctx| {
                mailer.running = false;
                match result {
                    Ok(report) => {
                        if let Some(until) = report.paused_until {
                            mailer.paused_until = until;
                        }
                        if let Some(next) = report.next {
                            mailer.wake_at(next.max(mailer.paused_until), ctx);
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "email outbox: send loop failed; retrying");
                        mailer.wake_at(crate::time::now_ms() + ERROR_RETRY.as_millis() as i64, ctx);
                    }
                }
                if std::mem::take(&mut mailer.run_again) {
                    mailer.run(ctx);
                }
            },
        ));
    }

    /// Runs the loop at `at` (unix ms), unless a run is already set earlier.
    fn wake_at(&mut self, at: i64, ctx: &mut Context<Self>) {
        if let Some((planned, handle)) = self.wake {
            if planned <= at {
                return;
            }
            ctx.cancel_future(handle);
        }
        let delay = Duration::from_millis((at - crate::time::now_ms()).max(0) as u64);
        let handle = ctx.run_later(delay, |mailer, ctx| {
            mailer.wake = None;
            mailer.run(ctx);
        });
        self.wake = Some((at, handle));
    }
}

impl Actor for Mailer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Whatever a previous run of the process left in the outbox.
        self.run(ctx);
        ctx.run_interval(
            Duration::from_millis(self.settings.sweep_interval_ms),
            |mailer, ctx| mailer.run(ctx),
        );
    }
}

impl Handler<Kick> for Mailer {
    type Result = ();

    fn handle(&mut self, _: Kick, ctx: &mut Context<Self>) {
        self.run(ctx);
    }
}

/// Exponential backoff with jitter after the `attempt`-th failure (1-based):
/// a random wait in the upper half of `base * 2^(attempt-1)`, capped.
pub fn backoff_ms(attempt: i64, base_ms: u64, max_ms: u64) -> i64 {
    let exponent = (attempt.max(1) - 1).min(30) as u32;
    let ceiling = base_ms.saturating_mul(1u64 << exponent).min(max_ms).max(1);
    rand::rng().random_range(ceiling.div_ceil(2)..=ceiling) as i64
}

/// The send loop's own copy of what it needs, so it runs off the actor.
struct SendLoop {
    db: Db,
    transport: Arc<Transport>,
    limiter: Option<Arc<DefaultDirectRateLimiter>>,
    settings: Arc<EmailSettings>,
    metrics: Arc<Metrics>,
    node: Arc<str>,
}

impl SendLoop {
    async fn run(&self) -> Result<RunReport, NotifyError> {
        let limiter_wait_ms = 2000 / i64::from(self.settings.rate_per_sec.max(1));
        let lease_ms = i64::try_from(self.settings.request_timeout_secs.saturating_mul(1000))
            .unwrap_or(i64::MAX / 4)
            + LEASE_MARGIN_MS.max(limiter_wait_ms);
        for _ in 0..MAX_SENDS_PER_RUN {
            while self.db.form_email_batch(MAX_BATCH).await?.is_some() {}
            let lease_until = crate::time::now_ms() + lease_ms;
            let Some((batch, emails)) = self.db.claim_email_batch(&self.node, lease_until).await?
            else {
                break;
            };
            if let Some(limiter) = &self.limiter {
                limiter.until_ready().await;
            }
            let outcome = self.transport.send(&batch.id, &emails).await;
            if let Some(pause_until) = self.record(&batch, emails.len(), outcome).await? {
                return Ok(RunReport {
                    next: Some(pause_until),
                    paused_until: Some(pause_until),
                });
            }
        }
        Ok(RunReport {
            next: self.db.next_email_send().await?,
            paused_until: None,
        })
    }

    /// Stores how a send went; returns a pause (unix ms) after a 429.
    async fn record(
        &self,
        batch: &BatchRow,
        email_count: usize,
        outcome: SendOutcome,
    ) -> Result<Option<i64>, NotifyError> {
        let now = crate::time::now_ms();
        let node = &*self.node;
        let id = batch.id.as_str();
        let (held, pause) = match outcome {
            SendOutcome::Sent(ids) => {
                let held = self.db.email_batch_sent(node, id, &ids).await?;
                if held {
                    self.metrics.emails_sent.inc_by(email_count as u64);
                    tracing::debug!(batch = id, emails = email_count, "emails sent");
                }
                (held, None)
            }
            SendOutcome::RateLimited { retry_after } => {
                let resume = now + retry_after.as_millis() as i64;
                let held = self
                    .db
                    .email_batch_retry(node, id, resume, "429 rate limited", false)
                    .await?;
                self.metrics
                    .email_retries
                    .with_label_values(&["rate_limited"])
                    .inc();
                tracing::info!(batch = id, ?retry_after, "Resend rate limit: waiting");
                (held, Some(resume))
            }
            SendOutcome::Transient(error)
                if batch.attempts < i64::from(self.settings.max_attempts) =>
            {
                let wait = backoff_ms(
                    batch.attempts,
                    self.settings.retry_base_ms,
                    self.settings.retry_max_ms,
                );
                let held = self
                    .db
                    .email_batch_retry(node, id, now + wait, &error, true)
                    .await?;
                if held {
                    self.metrics
                        .email_retries
                        .with_label_values(&["transient"])
                        .inc();
                    tracing::warn!(
                        batch = id,
                        attempt = batch.attempts,
                        retry_in_ms = wait,
                        %error,
                        "sending emails failed; will retry"
                    );
                }
                (held, None)
            }
            SendOutcome::Rejected(error) if email_count > 1 => {
                let held = self.db.split_email_batch(node, id, &error).await?;
                if held {
                    tracing::warn!(
                        batch = id,
                        emails = email_count,
                        %error,
                        "Resend refused a batch; its emails will go one by one"
                    );
                }
                (held, None)
            }
            SendOutcome::Transient(error) | SendOutcome::Rejected(error) => {
                let held = self.db.email_batch_failed(node, id, &error).await?;
                if held {
                    self.metrics.emails_failed.inc_by(email_count as u64);
                    tracing::error!(
                        batch = id,
                        attempts = batch.attempts,
                        emails = email_count,
                        %error,
                        "emails given up"
                    );
                }
                (held, None)
            }
        };
        if !held {
            tracing::warn!(
                batch = id,
                "the lease on a batch ran out before its outcome was stored; \
                 the node holding it now sends it (same Idempotency-Key)"
            );
        }
        Ok(pause)
    }
}

#[cfg(test)]
mod tests {
    use super::backoff_ms;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for _ in 0..200 {
            let first = backoff_ms(1, 1000, 60_000);
            assert!((500..=1000).contains(&first), "{first}");
            let third = backoff_ms(3, 1000, 60_000);
            assert!((2000..=4000).contains(&third), "{third}");
            let late = backoff_ms(40, 1000, 60_000);
            assert!((30_000..=60_000).contains(&late), "{late}");
        }
    }
}
