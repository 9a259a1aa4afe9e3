//! The push sender actor: sends what waits in `push_queue`.
//!
//! One send loop per node, never two at once: it claims up to
//! `push.concurrency` due pushes (a lease in the database, so two nodes
//! never send the same push at the same time, and a node that dies
//! mid-send leaves it to another once the lease runs out), sends them
//! together, and records each outcome:
//! - 2xx: done, the row is deleted;
//! - 404/410: the subscription is gone: it and its queued pushes go;
//! - 429, 5xx, network error, timeout: tried again after an exponential
//!   backoff with jitter, or after `Retry-After` when that is longer,
//!   until `push.max_attempts`, then given up;
//! - another 4xx: given up at once (it would never be accepted), logged.
//!
//! It wakes when the intake queued pushes, at the next retry it knows of,
//! and every `push.sweep_interval_ms` for work of other nodes.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::join_all;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::StatusCode;
use web_push_native::{p256, Auth, WebPushBuilder};

use super::vapid::{decode_base64url, VapidKey};
use super::PushError;
use crate::config::PushSettings;
use crate::db::push::{PushSubscriptionRow, QueuedPushRow};
use crate::db::Db;
use crate::metrics::Metrics;
use crate::notify::mailer::backoff_ms;

/// A lease outlives the request's own timeout by this much.
const LEASE_MARGIN_MS: i64 = 5_000;
/// Claims per wake-up before the loop yields to a fresh wake-up.
const MAX_ROUNDS: usize = 50;
/// After a storage error the loop looks again this much later.
const ERROR_RETRY_MS: i64 = 2_000;
/// A `Retry-After` longer than this is capped (the push is looked at then,
/// and may wait again).
const MAX_RETRY_AFTER_MS: i64 = 3_600_000;
/// Given-up pushes are kept this long for inspection.
const FAILED_KEPT_MS: i64 = 7 * 24 * 3_600_000;
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Pushes were queued.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Kick;

/// How one request went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    Sent,
    /// 404 or 410: the browser unsubscribed or the subscription expired.
    Gone(StatusCode),
    /// May succeed later: 429 (`rate_limited`), 5xx or no answer
    /// (`transient`); `retry_after_ms` when the service said when.
    Retry {
        reason: &'static str,
        error: String,
        retry_after_ms: Option<i64>,
    },
    /// Will never be accepted as it is.
    Rejected(String),
}

pub struct PushSender {
    db: Db,
    key: Arc<VapidKey>,
    http: reqwest::Client,
    settings: Arc<PushSettings>,
    metrics: Arc<Metrics>,
    /// Who holds a lease: this process.
    node: Arc<str>,
    running: bool,
    run_again: bool,
    wake: Option<(i64, SpawnHandle)>,
}

impl PushSender {
    pub fn new(
        db: Db,
        key: Arc<VapidKey>,
        settings: PushSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, PushError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(settings.request_timeout_secs))
            // A push service answers; it does not send us elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| PushError::Client(e.to_string()))?;
        Ok(PushSender {
            db,
            key,
            http,
            settings: Arc::new(settings),
            metrics,
            node: uuid::Uuid::new_v4().to_string().into(),
            running: false,
            run_again: false,
            wake: None,
        })
    }

    fn run(&mut self, ctx: &mut Context<Self>) {
        if self.running {
            self.run_again = true;
            return;
        }
        self.running = true;
        let send_loop = SendLoop {
            db: self.db.clone(),
            key: self.key.clone(),
            http: self.http.clone(),
            settings: self.settings.clone(),
            metrics: self.metrics.clone(),
            node: self.node.clone(),
        };
        ctx.spawn(async move { send_loop.run().await }.into_actor(self).map(
            |result, sender, ctx| {
                sender.running = false;
                match result {
                    Ok(Some(next)) => sender.wake_at(next, ctx),
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(%error, "push queue: send loop failed; retrying");
                        sender.wake_at(crate::time::now_ms() + ERROR_RETRY_MS, ctx);
                    }
                }
                if std::mem::take(&mut sender.run_again) {
                    sender.run(ctx);
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
        let handle = ctx.run_later(delay, |sender, ctx| {
            sender.wake = None;
            sender.run(ctx);
        });
        self.wake = Some((at, handle));
    }
}

impl Actor for PushSender {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Whatever a previous run of the process left queued.
        self.run(ctx);
        ctx.run_interval(
            Duration::from_millis(self.settings.sweep_interval_ms),
            |sender, ctx| sender.run(ctx),
        );
        ctx.run_interval(PRUNE_EVERY, |sender, _| {
            let db = sender.db.clone();
            actix::spawn(async move {
                let before = crate::time::now_ms() - FAILED_KEPT_MS;
                if let Err(error) = db.prune_failed_pushes(before).await {
                    tracing::warn!(%error, "cannot prune given-up pushes");
                }
            });
        });
    }
}

impl Handler<Kick> for PushSender {
    type Result = ();

    fn handle(&mut self, _: Kick, ctx: &mut Context<Self>) {
        self.run(ctx);
    }
}

/// The send loop's own copy of what it needs, so it runs off the actor.
struct SendLoop {
    db: Db,
    key: Arc<VapidKey>,
    http: reqwest::Client,
    settings: Arc<PushSettings>,
    metrics: Arc<Metrics>,
    node: Arc<str>,
}

impl SendLoop {
    /// Sends what is due; answers when the next push is due.
    async fn run(&self) -> Result<Option<i64>, PushError> {
        let lease_ms = i64::try_from(self.settings.request_timeout_secs.saturating_mul(1000))
            .unwrap_or(i64::MAX / 4)
            + LEASE_MARGIN_MS;
        let batch = i64::try_from(self.settings.concurrency).unwrap_or(i64::MAX);
        for _ in 0..MAX_ROUNDS {
            let lease_until = crate::time::now_ms() + lease_ms;
            let claimed = self.db.claim_pushes(&self.node, lease_until, batch).await?;
            if claimed.is_empty() {
                break;
            }
            // A push whose subscription went meanwhile was dropped by the claim.
            let sends = claimed
                .into_iter()
                .filter_map(|(push, subscription)| Some((push, subscription?)))
                .map(|(push, subscription)| async move {
                    let outcome = self.send(&push, &subscription).await;
                    (push, outcome)
                });
            for (push, outcome) in join_all(sends).await {
                self.record(&push, outcome).await?;
            }
        }
        Ok(self.db.next_push_due().await?)
    }

    async fn send(&self, push: &QueuedPushRow, subscription: &PushSubscriptionRow) -> PushOutcome {
        let request = match self.request(push, subscription) {
            Ok(request) => request,
            Err(error) => return PushOutcome::Rejected(error),
        };
        match self.http.execute(request).await {
            Ok(response) => {
                let status = response.status();
                let retry_after_ms = retry_after_ms(response.headers());
                let excerpt = if status.is_success() {
                    String::new()
                } else {
                    let text = response.text().await.unwrap_or_default();
                    text.chars().take(200).collect()
                };
                classify(status, retry_after_ms, &excerpt)
            }
            Err(error) => PushOutcome::Retry {
                reason: "transient",
                error: format!("no answer: {error}"),
                retry_after_ms: None,
            },
        }
    }

    /// The encrypted (RFC 8291) and signed (RFC 8292) request.
    fn request(
        &self,
        push: &QueuedPushRow,
        subscription: &PushSubscriptionRow,
    ) -> Result<reqwest::Request, String> {
        let url = reqwest::Url::parse(&subscription.endpoint)
            .map_err(|e| format!("endpoint is not a URL: {e}"))?;
        let uri: http::Uri = subscription
            .endpoint
            .parse()
            .map_err(|e| format!("endpoint is not a URI: {e}"))?;
        let browser_key = decode_base64url(&subscription.p256dh)
            .and_then(|raw| p256::PublicKey::from_sec1_bytes(&raw).ok())
            .ok_or("the subscription's p256dh is not a P-256 public key")?;
        let auth: [u8; 16] = decode_base64url(&subscription.auth)
            .and_then(|raw| raw.try_into().ok())
            .ok_or("the subscription's auth secret is not 16 bytes")?;
        let auth = Auth::from(auth);
        let request = WebPushBuilder::new(uri, browser_key, auth)
            .with_valid_duration(Duration::from_secs(self.settings.ttl_secs))
            .build(push.payload.as_bytes().to_vec())
            .map_err(|e| format!("cannot encrypt the payload: {e}"))?;
        let mut request = reqwest::Request::try_from(request)
            .map_err(|e| format!("cannot make the request: {e}"))?;
        // Our own VAPID header: the crate's leaves the port out of `aud`.
        let authorization = self.key.authorization(&url).map_err(|e| e.to_string())?;
        request.headers_mut().insert(
            AUTHORIZATION,
            HeaderValue::from_str(&authorization).map_err(|e| e.to_string())?,
        );
        Ok(request)
    }

    /// Stores how a send went.
    async fn record(&self, push: &QueuedPushRow, outcome: PushOutcome) -> Result<(), PushError> {
        let node = &*self.node;
        let origin = origin_of(&push.endpoint);
        let held = match outcome {
            PushOutcome::Sent => {
                let held = self.db.push_sent(node, push).await?;
                if held {
                    self.metrics.pushes_sent.inc();
                    tracing::debug!(push = %push.id, %origin, "push sent");
                }
                held
            }
            PushOutcome::Gone(status) => {
                if self.db.drop_gone_push_subscription(&push.endpoint).await? {
                    self.metrics.push_subscriptions_removed.inc();
                    tracing::info!(
                        user = %push.user_id,
                        %origin,
                        %status,
                        "push subscription gone: removed"
                    );
                }
                true
            }
            PushOutcome::Retry {
                reason,
                error,
                retry_after_ms,
            } if push.attempts < i64::from(self.settings.max_attempts) => {
                let backoff = backoff_ms(
                    push.attempts,
                    self.settings.retry_base_ms,
                    self.settings.retry_max_ms,
                );
                let wait = backoff.max(retry_after_ms.unwrap_or(0).min(MAX_RETRY_AFTER_MS));
                let at = crate::time::now_ms() + wait;
                let held = self.db.push_retry(node, &push.id, at, &error).await?;
                if held {
                    self.metrics.push_retries.with_label_values(&[reason]).inc();
                    tracing::info!(
                        push = %push.id,
                        %origin,
                        attempt = push.attempts,
                        retry_in_ms = wait,
                        %error,
                        "push not accepted yet; will retry"
                    );
                }
                held
            }
            PushOutcome::Retry { error, .. } | PushOutcome::Rejected(error) => {
                let held = self.db.push_failed(node, &push.id, &error).await?;
                if held {
                    self.metrics.pushes_failed.inc();
                    tracing::warn!(
                        push = %push.id,
                        user = %push.user_id,
                        %origin,
                        attempts = push.attempts,
                        %error,
                        "push given up"
                    );
                }
                held
            }
        };
        if !held {
            tracing::warn!(
                push = %push.id,
                "the lease on a push ran out before its outcome was stored; \
                 the node holding it now sends it"
            );
        }
        Ok(())
    }
}

/// Sorts a push service's answer into what happens next.
pub fn classify(status: StatusCode, retry_after_ms: Option<i64>, body: &str) -> PushOutcome {
    let error = || {
        if body.trim().is_empty() {
            status.to_string()
        } else {
            format!("{status}: {}", body.trim())
        }
    };
    if status.is_success() {
        PushOutcome::Sent
    } else if status == StatusCode::NOT_FOUND || status == StatusCode::GONE {
        PushOutcome::Gone(status)
    } else if status == StatusCode::TOO_MANY_REQUESTS {
        PushOutcome::Retry {
            reason: "rate_limited",
            error: error(),
            retry_after_ms,
        }
    } else if status.is_server_error() {
        PushOutcome::Retry {
            reason: "transient",
            error: error(),
            retry_after_ms,
        }
    } else {
        PushOutcome::Rejected(error())
    }
}

/// `Retry-After` in seconds (the form push services use), as ms.
fn retry_after_ms(headers: &HeaderMap) -> Option<i64> {
    let secs: i64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(secs.max(0).saturating_mul(1000))
}

/// The endpoint's origin, for logs: the path is the subscription's secret
/// capability and stays out of them.
fn origin_of(endpoint: &str) -> String {
    reqwest::Url::parse(endpoint)
        .map(|url| url.origin().ascii_serialization())
        .unwrap_or_else(|_| "(unparsable endpoint)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_sorted_into_done_gone_retry_or_give_up() {
        assert_eq!(classify(StatusCode::CREATED, None, ""), PushOutcome::Sent);
        assert_eq!(
            classify(StatusCode::GONE, None, ""),
            PushOutcome::Gone(StatusCode::GONE)
        );
        assert_eq!(
            classify(StatusCode::NOT_FOUND, None, ""),
            PushOutcome::Gone(StatusCode::NOT_FOUND)
        );
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, Some(1000), ""),
            PushOutcome::Retry {
                reason: "rate_limited",
                retry_after_ms: Some(1000),
                ..
            }
        ));
        assert!(matches!(
            classify(StatusCode::BAD_GATEWAY, None, ""),
            PushOutcome::Retry {
                reason: "transient",
                ..
            }
        ));
        assert!(matches!(
            classify(StatusCode::PAYLOAD_TOO_LARGE, None, "too big"),
            PushOutcome::Rejected(error) if error.contains("too big")
        ));
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after_ms(&headers), Some(3000));
        headers.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after_ms(&headers), None);
        assert_eq!(
            origin_of("https://push.example:8443/wpush/v2/secret"),
            "https://push.example:8443"
        );
    }
}
