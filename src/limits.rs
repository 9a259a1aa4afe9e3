//! Rate and connection limits (the privacy policy's "rate limiting on API
//! endpoints"): per client IP on HTTP requests and WebSocket connects, per
//! user on frames, per key on the internal API. A limited request changes
//! nothing and is told when to retry.

use std::net::IpAddr;
use std::num::NonZeroU32;

use actix_web::body::MessageBody;
use actix_web::dev::RequestHead;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::app::AppState;
use crate::config::LimitSettings;
use crate::error::AppError;

pub struct Limiters {
    pub frames: DefaultKeyedRateLimiter<String>,
    http: DefaultKeyedRateLimiter<IpAddr>,
    connects: DefaultKeyedRateLimiter<IpAddr>,
    internal: DefaultDirectRateLimiter,
    trust_forwarded_for: bool,
}

fn quota(per_sec: u32, burst: u32) -> Quota {
    let non_zero = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(non_zero(per_sec)).allow_burst(non_zero(burst))
}

fn retry_after(not_until: governor::NotUntil<governor::clock::QuantaInstant>) -> AppError {
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    AppError::RateLimited {
        retry_after_ms: (wait.as_millis() as u64).max(1),
    }
}

impl Limiters {
    pub fn new(settings: &LimitSettings) -> Self {
        Limiters {
            frames: RateLimiter::keyed(quota(settings.frames_per_sec, settings.frames_burst)),
            http: RateLimiter::keyed(quota(
                settings.http_per_sec_per_ip,
                settings.http_burst_per_ip,
            )),
            connects: RateLimiter::keyed(quota(
                settings.connects_per_sec_per_ip,
                settings.connects_burst_per_ip,
            )),
            internal: RateLimiter::direct(quota(
                settings.internal_per_sec,
                settings.internal_burst,
            )),
            trust_forwarded_for: settings.trust_forwarded_for,
        }
    }

    /// The client's address: the peer, or behind a trusted load balancer
    /// the last X-Forwarded-For entry (the one the balancer added).
    pub fn client_ip(&self, head: &RequestHead) -> Option<IpAddr> {
        if self.trust_forwarded_for {
            let forwarded = head
                .headers
                .get("X-Forwarded-For")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .and_then(|ip| ip.trim().parse().ok());
            if forwarded.is_some() {
                return forwarded;
            }
        }
        head.peer_addr.map(|addr| addr.ip())
    }

    pub fn check_frame(&self, user_id: &String) -> Result<(), AppError> {
        self.frames.check_key(user_id).map_err(retry_after)
    }

    pub fn check_connect(&self, ip: IpAddr) -> Result<(), AppError> {
        self.connects.check_key(&ip).map_err(retry_after)
    }

    pub fn check_internal(&self) -> Result<(), AppError> {
        self.internal.check().map_err(retry_after)
    }

    /// Forgets idle keys so the maps stay small.
    pub fn evict_idle(&self) {
        self.frames.retain_recent();
        self.http.retain_recent();
        self.connects.retain_recent();
    }
}

/// Probes are never limited: a load balancer must always get an answer.
fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// Middleware: the per-IP budget of HTTP requests.
pub async fn limit_http(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if !is_probe(req.path()) {
        if let Some(state) = req.app_data::<web::Data<AppState>>() {
            if let Some(ip) = state.limiters.client_ip(req.head()) {
                if let Err(error) = state.limiters.http.check_key(&ip).map_err(retry_after) {
                    state
                        .metrics
                        .rate_limited
                        .with_label_values(&["http"])
                        .inc();
                    return Err(error.into());
                }
            }
        }
    }
    next.call(req).await
}
