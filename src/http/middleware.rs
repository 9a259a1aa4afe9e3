//! The HTTP middleware of the limits (`crate::limits` holds the limiters
//! themselves): a deadline for request bodies and the per-address request
//! budget. Middleware runs at the edge, so it may read the whole state.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use actix_web::HttpMessage;

use super::AppState;
use crate::error::AppError;

/// A request body that must be complete by a deadline.
struct DeadlineBody {
    inner: actix_web::dev::Payload,
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// Set once the whole body was read.
    complete: Rc<Cell<bool>>,
    /// Set when the deadline passed first.
    late: Rc<Cell<bool>>,
}

impl futures_util::Stream for DeadlineBody {
    type Item = Result<bytes::Bytes, actix_web::error::PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Poll::Ready(item) = Pin::new(&mut self.inner).poll_next(cx) {
            if item.is_none() {
                self.complete.set(true);
            }
            return Poll::Ready(item);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.late.set(true);
            let late = std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request body not received in time",
            );
            return Poll::Ready(Some(Err(late.into())));
        }
        Poll::Pending
    }
}

/// Middleware: a request's body must arrive within
/// `server.body_timeout_ms` of its start; a slow one fails (408, whatever
/// the handler made of its cut-off body) and its connection is closed, so
/// a trickling client holds nothing for long.
pub async fn body_deadline(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    use actix_web::http::header;
    let has_body = req.headers().contains_key(header::CONTENT_LENGTH)
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    let timeout = req
        .app_data::<web::Data<AppState>>()
        .map(|state| Duration::from_millis(state.settings.server.body_timeout_ms));
    let complete = Rc::new(Cell::new(true));
    let late = Rc::new(Cell::new(false));
    if let (true, Some(timeout)) = (has_body, timeout) {
        complete.set(false);
        let body = DeadlineBody {
            inner: req.take_payload(),
            deadline: Box::pin(tokio::time::sleep(timeout)),
            complete: complete.clone(),
            late: late.clone(),
        };
        req.set_payload(actix_web::dev::Payload::Stream {
            payload: Box::pin(body),
        });
    }
    let response = next.call(req).await?;
    let mut response = if late.get() {
        let error = AppError::Timeout(format!(
            "the request body did not arrive within {} ms",
            timeout.unwrap_or_default().as_millis()
        ));
        response.error_response(error).map_into_right_body()
    } else {
        response.map_into_left_body()
    };
    if !complete.get() {
        // The body was left unread (refused early, or too slow): the
        // connection is not kept for a request behind it.
        response
            .response_mut()
            .head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
    }
    Ok(response)
}

/// Probes answer from cached state (`http::health`), so they are cheap
/// and never limited: a load balancer must always get an answer.
fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// The Mixroom backend, which has a budget of its own per key
/// (`limits.internal_per_sec`): it is not throttled as an address.
/// Anyone else on these routes is an address like any other.
pub(crate) fn is_internal_caller(req: &ServiceRequest, state: &AppState) -> bool {
    req.path().starts_with("/v1/internal/")
        && req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|key| {
                crate::auth::internal_key_matches(&state.settings.auth.internal_api_key, key.trim())
            })
}

/// Middleware: the per-IP budget of HTTP requests.
pub async fn limit_http(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if !is_probe(req.path()) {
        if let Some(state) = req
            .app_data::<web::Data<AppState>>()
            .filter(|state| !is_internal_caller(&req, state))
        {
            if let Some(ip) = state.limiters.client_ip(req.head()) {
                if let Err(error) = state.limiters.check_http(ip) {
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
