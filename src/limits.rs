//! Rate and connection limits (the privacy policy's "rate limiting on API
//! endpoints"): per client IP on HTTP requests and WebSocket connects, per
//! user on frames, per key on the internal API. A limited request changes
//! nothing and is told when to retry.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use actix_web::dev::RequestHead;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::LimitSettings;
use crate::error::AppError;

pub struct Limiters {
    pub frames: DefaultKeyedRateLimiter<String>,
    http: DefaultKeyedRateLimiter<IpAddr>,
    connects: DefaultKeyedRateLimiter<IpAddr>,
    internal: DefaultDirectRateLimiter,
    /// Per user: new support conversations, and escalations to a person
    /// (each notifies and emails every admin).
    support_conversations: DefaultKeyedRateLimiter<String>,
    support_escalations: DefaultKeyedRateLimiter<String>,
    /// Proxies in front of the server whose X-Forwarded-For entries are
    /// believed (0: the peer address is the client).
    trusted_proxies: usize,
}

fn quota(per_sec: u32, burst: u32) -> Quota {
    let non_zero = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(non_zero(per_sec)).allow_burst(non_zero(burst))
}

fn per_hour(n: u32) -> Quota {
    Quota::per_hour(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

fn retry_after(not_until: governor::NotUntil<governor::clock::QuantaInstant>) -> AppError {
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    AppError::RateLimited {
        retry_after_ms: (wait.as_millis() as u64).max(1),
    }
}

impl Limiters {
    /// The per-address budget of HTTP requests.
    pub fn check_http(&self, ip: IpAddr) -> Result<(), AppError> {
        self.http.check_key(&ip).map_err(retry_after)
    }

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
            support_conversations: RateLimiter::keyed(per_hour(
                settings.support_conversations_per_hour,
            )),
            support_escalations: RateLimiter::keyed(per_hour(
                settings.support_escalations_per_hour,
            )),
            trusted_proxies: settings.trusted_proxies,
        }
    }

    /// The client's address (the one place that decides it): the peer,
    /// or behind `limits.trusted_proxies` proxies the X-Forwarded-For
    /// entry that many from the right, over all of the header's lines.
    /// Each proxy appends the address it was connected from, so entries
    /// left of that one are whatever the client wrote.
    pub fn client_ip(&self, head: &RequestHead) -> Option<IpAddr> {
        let peer = head.peer_addr.map(|addr| addr.ip());
        if self.trusted_proxies == 0 {
            return peer;
        }
        forwarded_client(
            head.headers
                .get_all("X-Forwarded-For")
                .map(|line| line.to_str().unwrap_or("")),
            self.trusted_proxies,
        )
        .or(peer)
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

    pub fn check_support_conversation(&self, user_id: &str) -> Result<(), AppError> {
        self.support_conversations
            .check_key(&user_id.to_owned())
            .map_err(retry_after)
    }

    pub fn check_support_escalation(&self, user_id: &str) -> Result<(), AppError> {
        self.support_escalations
            .check_key(&user_id.to_owned())
            .map_err(retry_after)
    }

    /// Forgets idle keys so the maps stay small.
    pub fn evict_idle(&self) {
        self.support_conversations.retain_recent();
        self.support_escalations.retain_recent();
        self.frames.retain_recent();
        self.http.retain_recent();
        self.connects.retain_recent();
    }
}

/// Open HTTP connections per peer address, capped.
pub struct ConnectionCap {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max: usize,
    metrics: Arc<crate::metrics::Metrics>,
}

/// One admitted connection; dropping it frees its place.
pub struct AdmittedConnection {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: Option<IpAddr>,
}

impl ConnectionCap {
    pub fn new(settings: &LimitSettings, metrics: Arc<crate::metrics::Metrics>) -> Self {
        ConnectionCap {
            metrics,
            open: Arc::default(),
            // Behind proxies every connection is a proxy's: no cap.
            max: if settings.trusted_proxies > 0 {
                0
            } else {
                settings.max_http_connections_per_ip
            },
        }
    }

    /// Admits a new connection, or `None` when its address has `max` open.
    pub fn admit(&self, stream: &actix_rt::net::TcpStream) -> Option<AdmittedConnection> {
        let ip = match (self.max, stream.peer_addr()) {
            (0, _) | (_, Err(_)) => None,
            (_, Ok(peer)) => Some(peer.ip()),
        };
        if let Some(ip) = ip {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            let count = open.entry(ip).or_default();
            if *count >= self.max {
                tracing::debug!(%ip, "too many HTTP connections from this address");
                self.metrics
                    .connections_refused
                    .with_label_values(&["http_per_ip"])
                    .inc();
                return None;
            }
            *count += 1;
        }
        Some(AdmittedConnection {
            open: self.open.clone(),
            ip,
        })
    }
}

impl Drop for AdmittedConnection {
    fn drop(&mut self) {
        let Some(ip) = self.ip else { return };
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&ip);
            }
        }
    }
}

/// The entry `trusted` from the right of the X-Forwarded-For lines (the
/// leftmost when there are fewer), `None` when it is not an address.
fn forwarded_client<'a>(lines: impl Iterator<Item = &'a str>, trusted: usize) -> Option<IpAddr> {
    let entries: Vec<&str> = lines
        .flat_map(|line| line.split(','))
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .collect();
    let at = entries.len().saturating_sub(trusted);
    entries.get(at)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::forwarded_client;

    #[test]
    fn forwarded_addresses_are_counted_from_the_right_over_all_lines() {
        let lines = ["203.0.113.9, 10.0.0.1", "198.51.100.7"];
        let ip = |s: &str| Some(s.parse().unwrap());
        assert_eq!(forwarded_client(lines.into_iter(), 1), ip("198.51.100.7"));
        assert_eq!(forwarded_client(lines.into_iter(), 2), ip("10.0.0.1"));
        assert_eq!(forwarded_client(lines.into_iter(), 3), ip("203.0.113.9"));
        // Fewer entries than proxies: the leftmost, written by a proxy.
        assert_eq!(forwarded_client(lines.into_iter(), 9), ip("203.0.113.9"));
        assert_eq!(forwarded_client(["junk"].into_iter(), 1), None);
        assert_eq!(forwarded_client(std::iter::empty(), 1), None);
    }
}
