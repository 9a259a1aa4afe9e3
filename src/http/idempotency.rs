//! `Idempotency-Key` on the backend's POSTs. The first request with a key
//! is handled and its answer kept; the same request again gets that answer
//! (200, header `Idempotent-Replayed: true`) and changes nothing; another
//! request under a used key is refused (409 `conflict`) rather than
//! silently answered with the first result. Failed requests release their
//! key, so a retry may use it. Keys are kept for a day (`retention`).

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use sha2::{Digest, Sha256};

use super::AppState;
use crate::db::idempotency::KeyClaim;
use crate::error::AppError;

pub const HEADER: &str = "Idempotency-Key";
const MAX_KEY_BYTES: usize = 255;

fn parse_key(req: &ServiceRequest) -> Result<Option<String>, AppError> {
    let Some(value) = req.headers().get(HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .filter(|key| !key.is_empty() && key.len() <= MAX_KEY_BYTES)
        .filter(|key| key.bytes().all(|b| b.is_ascii_graphic()))
        .map(|key| Some(key.to_owned()))
        .ok_or_else(|| {
            AppError::Invalid(format!(
                "`{HEADER}` must be 1 to {MAX_KEY_BYTES} visible ASCII characters"
            ))
        })
}

/// Middleware for the `/v1/internal` scope.
pub async fn idempotent_posts(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let applies = req.method() == Method::POST
        && state
            .as_ref()
            .is_some_and(|state| super::middleware::is_internal_caller(&req, state));
    // Anyone without the key is refused by the route itself: they must not
    // be able to fill the key table.
    let (Some(state), true) = (state, applies) else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let Some(key) = parse_key(&req)? else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let body = req.extract::<web::Bytes>().await.map_err(|error| {
        let too_large = error
            .as_error::<actix_web::error::PayloadError>()
            .is_some_and(|e| matches!(e, actix_web::error::PayloadError::Overflow));
        if too_large {
            AppError::TooLarge("request body too large".into())
        } else {
            AppError::Invalid(format!("cannot read the request body: {error}"))
        }
    })?;
    let route = format!("{} {}", req.method(), req.path());
    let mut hasher = Sha256::new();
    hasher.update(route.as_bytes());
    hasher.update(b"\n");
    hasher.update(&body);
    let hash = hex::encode(hasher.finalize());
    let now = crate::time::now_ms();
    match state
        .db
        .claim_idempotency_key(&key, &route, &hash, now)
        .await
        .map_err(AppError::from)?
    {
        KeyClaim::Claimed => {}
        KeyClaim::Answered { status, response } => {
            // Created the first time; this time nothing is created.
            let status = match StatusCode::from_u16(status) {
                Ok(StatusCode::CREATED) | Err(_) => StatusCode::OK,
                Ok(status) => status,
            };
            let replay = HttpResponse::build(status)
                .insert_header(("Idempotent-Replayed", "true"))
                .content_type("application/json")
                .body(response);
            return Ok(req.into_response(replay));
        }
        KeyClaim::OtherRequest => {
            return Err(AppError::Conflict(format!(
                "`{HEADER}` {key} was used for another request (another route or body); \
                 use a new key for a new request"
            ))
            .into())
        }
        KeyClaim::InFlight => {
            return Err(AppError::Conflict(format!(
                "a request with `{HEADER}` {key} is still being handled; retry shortly"
            ))
            .into())
        }
    }
    req.set_payload(body.into());
    let release = |state: web::Data<AppState>, key: String| async move {
        if let Err(error) = state.db.release_idempotency_key(&key).await {
            tracing::warn!(%error, "idempotency key not released; it expires with retention");
        }
    };
    let response = match next.call(req).await {
        Ok(response) => response,
        Err(error) => {
            release(state, key).await;
            return Err(error);
        }
    };
    if !response.status().is_success() {
        release(state, key).await;
        return Ok(response.map_into_boxed_body());
    }
    let status = response.status();
    let (req, response) = response.into_parts();
    let (response, body) = response.into_parts();
    let body = match actix_web::body::to_bytes(body).await {
        Ok(body) => body,
        Err(_) => {
            release(state, key).await;
            return Err(AppError::internal(anyhow::anyhow!("response body unreadable")).into());
        }
    };
    let text = String::from_utf8_lossy(&body);
    state
        .db
        .settle_idempotency_key(&key, status.as_u16(), &text)
        .await
        .map_err(AppError::from)?;
    Ok(ServiceResponse::new(
        req,
        response.set_body(body).map_into_boxed_body(),
    ))
}
