//! `POST /v1/webhooks/stripe`: payment events move a booking's status.
//!
//! The signature is checked by async-stripe against the raw body (HMAC-SHA256
//! of `t.payload`, 5-minute tolerance). Only a failed verification is a 400:
//! a verified event for an unknown type or booking is answered 200 and
//! logged, because any 4xx makes Stripe retry for days.

use actix_web::{web, HttpRequest, HttpResponse};
use secrecy::ExposeSecret;
use serde_json::json;
use stripe_webhook::{EventObject, Webhook, WebhookError};

use crate::app::AppState;
use crate::db::bookings::BookingOutcome;
use crate::error::AppError;

/// The fields this server needs from a verified event.
struct PaymentEvent {
    id: String,
    event_type: String,
    booking_id: Option<String>,
}

fn parse_verified(payload: &str, signature: &str, secret: &str) -> Result<PaymentEvent, AppError> {
    match Webhook::construct_event(payload, signature, secret) {
        Ok(event) => {
            let metadata = match &event.data.object {
                EventObject::PaymentIntentSucceeded(intent)
                | EventObject::PaymentIntentPaymentFailed(intent) => Some(&intent.metadata),
                EventObject::ChargeRefunded(charge) => Some(&charge.metadata),
                _ => None,
            };
            Ok(PaymentEvent {
                id: event.id.to_string(),
                event_type: event.type_.to_string(),
                booking_id: metadata.and_then(|m| m.get("booking_id")).cloned(),
            })
        }
        // The signature and timestamp were verified before parsing: an
        // object the SDK's types do not cover (API version drift) is still
        // a genuine event, so read the three fields from the JSON itself.
        Err(WebhookError::BadParse(reason)) => {
            tracing::warn!(%reason, "verified Stripe event outside the SDK's types");
            let value: serde_json::Value = serde_json::from_str(payload)
                .map_err(|e| AppError::Invalid(format!("event is not JSON: {e}")))?;
            let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
            Ok(PaymentEvent {
                id: text(&value["id"])
                    .ok_or_else(|| AppError::Invalid("event without id".into()))?,
                event_type: text(&value["type"]).unwrap_or_default(),
                booking_id: text(&value["data"]["object"]["metadata"]["booking_id"]),
            })
        }
        Err(error) => Err(AppError::Invalid(format!(
            "signature verification failed: {error}"
        ))),
    }
}

/// Whether a booking in the given status may take the event's status.
type StatusGuard = fn(&str) -> bool;

/// The booking status an event type leads to, and from which current
/// statuses (events can arrive out of order: a failure reported after the
/// payment succeeded, or after a refund, must not undo them).
fn target_status(event_type: &str) -> Option<(&'static str, StatusGuard)> {
    match event_type {
        "payment_intent.succeeded" => Some(("paid", |current| current != "refunded")),
        "payment_intent.payment_failed" => Some(("payment_failed", |current| {
            !matches!(current, "paid" | "refunded" | "in_session" | "completed")
        })),
        "charge.refunded" => Some(("refunded", |_| true)),
        _ => None,
    }
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
    // before its body (which may be slow, see `limits::body_deadline`).
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

    if state.db.stripe_event_seen(&event.id).await? {
        tracing::info!(event = %event.id, "Stripe event replayed; already applied");
        return Ok(HttpResponse::Ok().json(json!({ "received": true, "duplicate": true })));
    }
    let outcome = match (
        target_status(&event.event_type),
        event.booking_id.as_deref(),
    ) {
        (None, _) => "ignored_type",
        (Some(_), None) => "no_booking_id",
        (Some((status, allowed)), Some(booking_id)) => {
            let reason = Some(format!("Stripe {}", event.event_type));
            let caused_by = format!("stripe:{}", event.id);
            match crate::bookings::set_status(
                &state, booking_id, status, reason, caused_by, allowed,
            )
            .await?
            {
                None => "unknown_booking",
                Some(BookingOutcome::Applied {
                    status_change: Some(_),
                    ..
                }) => "applied",
                Some(_) => "unchanged",
            }
        }
    };
    state
        .db
        .record_stripe_event(
            &event.id,
            &event.event_type,
            event.booking_id.as_deref(),
            outcome,
        )
        .await?;
    tracing::info!(event = %event.id, kind = %event.event_type, outcome, "Stripe event");
    Ok(HttpResponse::Ok().json(json!({ "received": true, "outcome": outcome })))
}
