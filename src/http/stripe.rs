//! `POST /v1/webhooks/stripe`: payment events move a booking's status
//! (the machine: `crate::payments`, `docs/payments.md`).
//!
//! The signature is checked by async-stripe against the raw body (HMAC-SHA256
//! of `t.payload`, 5-minute tolerance). Only a failed verification is a 400:
//! a verified event for an unknown type or booking is answered 200 and
//! logged, because any 4xx makes Stripe retry for days.

use actix_web::{web, HttpRequest, HttpResponse};
use secrecy::ExposeSecret;
use serde_json::json;
use stripe_webhook::{Webhook, WebhookError};

use crate::db::bookings::BookingOutcome;
use crate::db::payments::{EventClaim, PaymentOutcome};
use crate::error::AppError;
use crate::http::AppState;
use crate::payments::{EventKind, PaymentEvent};

/// A verified event: its id, type and object.
struct VerifiedEvent {
    id: String,
    event_type: String,
    object: serde_json::Value,
}

/// Checks the signature and timestamp with async-stripe, then reads the
/// event as JSON: the payment logic (`crate::payments`) reads the same few
/// fields from every object, including objects of API versions the SDK's
/// types do not cover (those verify, then fail to parse: still genuine).
fn parse_verified(payload: &str, signature: &str, secret: &str) -> Result<VerifiedEvent, AppError> {
    match Webhook::construct_event(payload, signature, secret) {
        Ok(_) => {}
        Err(WebhookError::BadParse(reason)) => {
            tracing::debug!(%reason, "verified Stripe event outside the SDK's types");
        }
        Err(error) => {
            return Err(AppError::Invalid(format!(
                "signature verification failed: {error}"
            )))
        }
    }
    let mut value: serde_json::Value = serde_json::from_str(payload)
        .map_err(|e| AppError::Invalid(format!("event is not JSON: {e}")))?;
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    Ok(VerifiedEvent {
        id: text(&value["id"]).ok_or_else(|| AppError::Invalid("event without id".into()))?,
        event_type: text(&value["type"]).unwrap_or_default(),
        object: value["data"]["object"].take(),
    })
}

/// Applies a claimed event to its booking's payment; answers what it did.
async fn apply(state: &AppState, event: &VerifiedEvent) -> Result<&'static str, AppError> {
    let payment = PaymentEvent::from_stripe(&event.event_type, &event.object);
    if !payment.is_known() {
        return Ok("ignored_type");
    }
    let caused_by = format!("stripe:{}", event.id);
    let outcome = state.db.apply_payment_event(&payment, caused_by).await?;
    Ok(match outcome {
        PaymentOutcome::Unassigned => "no_booking_id",
        PaymentOutcome::UnknownBooking { .. } => "unknown_booking",
        PaymentOutcome::Applied {
            booking_id,
            outcome,
        } => {
            state
                .bookings
                .announce_payment(&booking_id, &outcome)
                .await?;
            match (outcome.as_ref(), &payment.kind) {
                (_, EventKind::Expired) => "recorded",
                (
                    BookingOutcome::Applied {
                        status_change: Some(_),
                        ..
                    },
                    _,
                ) => "applied",
                _ => "unchanged",
            }
        }
    })
}

pub async fn webhook(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let secret = state.settings.stripe.webhook_secret.expose_secret();
    if secret.is_empty() {
        tracing::warn!("Stripe webhook refused: stripe.webhook_secret is not set");
        return Err(AppError::Invalid("webhooks are not configured".into()));
    }
    let signature = req
        .headers()
        .get("Stripe-Signature")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| AppError::Invalid("missing Stripe-Signature header".into()))?;
    // Read only once the header is there: an unsigned request is refused
    // before its body (which may be slow, see `http::middleware::body_deadline`).
    let limit = state.settings.server.max_http_body_bytes;
    let body = match body.to_bytes_limited(limit).await {
        Ok(Ok(body)) => body,
        Ok(Err(error)) => return Err(AppError::Invalid(format!("body not read: {error}"))),
        Err(_) => {
            return Err(AppError::TooLarge(format!(
                "the body is larger than {limit} bytes"
            )))
        }
    };
    let payload =
        std::str::from_utf8(&body).map_err(|_| AppError::Invalid("body is not UTF-8".into()))?;
    let event = parse_verified(payload, signature, secret)?;

    let booking_id = PaymentEvent::from_stripe(&event.event_type, &event.object).booking_id;
    let claim = state
        .db
        .claim_stripe_event(&event.id, &event.event_type, booking_id.as_deref())
        .await?;
    if claim == EventClaim::Duplicate {
        tracing::info!(event = %event.id, "Stripe event delivered again; applied once already");
        return Ok(HttpResponse::Ok().json(json!({ "received": true, "duplicate": true })));
    }
    let outcome = match apply(&state, &event).await {
        Ok(outcome) => outcome,
        Err(error) => {
            // Stripe retries a failed delivery: let that retry apply it.
            if let Err(release) = state.db.release_stripe_event(&event.id).await {
                tracing::error!(event = %event.id, %release, "cannot release a Stripe event claim");
            }
            return Err(error);
        }
    };
    state.db.finish_stripe_event(&event.id, outcome).await?;
    tracing::info!(event = %event.id, kind = %event.event_type, outcome, "Stripe event");
    Ok(HttpResponse::Ok().json(json!({ "received": true, "outcome": outcome })))
}
