//! Admission of a WebSocket upgrade: THE place to add a policy for
//! `/v1/ws`.
//!
//! An upgrade leaves actix-http's dispatcher before the actix-web app and
//! its middleware (see `app::serve`): a policy written as middleware never
//! sees it. Every check an upgrade must pass is in [`CHECKS`], in order;
//! the first refusal is the HTTP response the client gets.

use std::net::IpAddr;

use actix_http::body::BoxBody;
use actix_http::header::HeaderMap;
use actix_http::{RequestHead, Response};
use actix_web::ResponseError;

use crate::error::AppError;
use crate::limits::Limiters;
use crate::metrics::Metrics;
use crate::ws::PATH;

/// What the checks read of the server.
pub struct Policy<'a> {
    pub limiters: &'a Limiters,
    pub metrics: &'a Metrics,
    /// `server.allowed_origins`: empty lets every `Origin` in.
    pub allowed_origins: &'a [String],
}

/// An upgrade that passed every check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// The client's address, for the per-address limits (`None` when
    /// the peer's address is unknown).
    pub client_ip: Option<IpAddr>,
}

/// One policy: `Ok` lets the upgrade go on to the next check.
type Check = fn(&Policy<'_>, &RequestHead, &Admitted) -> Result<(), Response<BoxBody>>;

/// Every policy an upgrade goes through, in order. To add one (a check
/// the HTTP middleware makes for other routes, say), add it here.
const CHECKS: &[Check] = &[path, handshake, connect_limit, origin];

/// Admits an upgrade request, or refuses it with the response it gets.
pub fn admit(policy: &Policy<'_>, head: &RequestHead) -> Result<Admitted, Response<BoxBody>> {
    let admitted = Admitted {
        client_ip: policy.limiters.client_ip(head),
    };
    for check in CHECKS {
        check(policy, head, &admitted)?;
    }
    Ok(admitted)
}

fn refusal(error: AppError) -> Response<BoxBody> {
    error.error_response().into()
}

/// The endpoint exists at one path only.
fn path(_: &Policy<'_>, head: &RequestHead, _: &Admitted) -> Result<(), Response<BoxBody>> {
    if head.uri.path() == PATH {
        return Ok(());
    }
    let message = format!("no WebSocket endpoint at {}", head.uri.path());
    Err(refusal(AppError::NotFound(message)))
}

/// A well-formed WebSocket handshake (version, key, `Connection`).
fn handshake(_: &Policy<'_>, head: &RequestHead, _: &Admitted) -> Result<(), Response<BoxBody>> {
    actix_http::ws::verify_handshake(head).map_err(Response::from)
}

/// Connects per address and second (`limits.connects_per_sec`).
fn connect_limit(
    policy: &Policy<'_>,
    _: &RequestHead,
    admitted: &Admitted,
) -> Result<(), Response<BoxBody>> {
    let Some(ip) = admitted.client_ip else {
        return Ok(());
    };
    policy.limiters.check_connect(ip).map_err(|error| {
        policy
            .metrics
            .rate_limited
            .with_label_values(&["connects"])
            .inc();
        refusal(error)
    })
}

/// Browsers send `Origin`; with an allow-list configured, only the web
/// app's pages may open a socket with the user's token (no cross-site
/// WebSocket hijacking). Clients without `Origin` (servers, CLIs) pass.
fn origin(policy: &Policy<'_>, head: &RequestHead, _: &Admitted) -> Result<(), Response<BoxBody>> {
    if origin_allowed(&head.headers, policy.allowed_origins) {
        Ok(())
    } else {
        Err(refusal(AppError::Forbidden("origin not allowed".into())))
    }
}

fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(actix_http::header::ORIGIN) else {
        return true;
    };
    allowed.is_empty() || allowed.iter().any(|a| a.as_bytes() == origin.as_bytes())
}
