//! Stripe as the tests play it: events built from Stripe's own example
//! objects (`../shared/fixtures/stripe/`), signed as Stripe signs them, and
//! delivered to the webhook.

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use uuid::Uuid;

use crate::helpers::{now_secs, TestServer};

pub const STRIPE_SECRET: &str = "whsec_test_5b1c0e7d9a3f4e2b8c6d";

pub fn stripe_env() -> Vec<(&'static str, &'static str)> {
    vec![("MIXROOM__STRIPE__WEBHOOK_SECRET", STRIPE_SECRET)]
}

/// One of Stripe's example objects (`charge`, `payment_intent`,
/// `checkout_session`, `refund`, `dispute`).
pub fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/../shared/fixtures/stripe/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let raw = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A whole event around `object`, as Stripe sends it; returns its id and
/// the payload.
pub fn event_of(event_type: &str, object: Value) -> (String, String) {
    let id = format!("evt_{}", Uuid::new_v4().simple());
    let event = json!({
        "id": id,
        "object": "event",
        "api_version": "2025-03-31.basil",
        "created": now_secs(),
        "data": { "object": object },
        "livemode": false,
        "pending_webhooks": 1,
        "request": { "id": null, "idempotency_key": null },
        "type": event_type,
    });
    (id, event.to_string())
}

/// A Stripe event built from Stripe's own example object.
pub fn stripe_event(event_type: &str, booking_id: &str) -> (String, String) {
    let (fixture_name, status) = match event_type {
        "charge.refunded" => ("charge", "succeeded"),
        "payment_intent.payment_failed" => ("payment_intent", "requires_payment_method"),
        _ => ("payment_intent", "succeeded"),
    };
    let mut object = fixture(fixture_name);
    object["metadata"] = json!({ "booking_id": booking_id });
    object["status"] = json!(status);
    // Stripe's ids are unique per payment: one payment per booking here.
    if fixture_name == "charge" {
        object["id"] = json!(format!("ch_{booking_id}"));
        object["payment_intent"] = json!(format!("pi_{booking_id}"));
    } else {
        object["id"] = json!(format!("pi_{booking_id}"));
    }
    if event_type == "charge.refunded" {
        object["refunded"] = json!(true);
        object["amount_refunded"] = object["amount"].clone();
    }
    event_of(event_type, object)
}

/// `Stripe-Signature` as Stripe computes it: HMAC-SHA256 of `t.payload`.
pub fn stripe_signature(payload: &str, secret: &str, timestamp: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.{payload}").as_bytes());
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

pub async fn post_webhook(
    server: &TestServer,
    payload: &str,
    signature: Option<&str>,
) -> reqwest::Response {
    let mut request = server
        .http_client()
        .post(server.http("/v1/webhooks/stripe"))
        .header("content-type", "application/json")
        .body(payload.to_owned());
    if let Some(signature) = signature {
        request = request.header("Stripe-Signature", signature);
    }
    request.send().await.expect("POST webhook")
}

pub async fn deliver(server: &TestServer, payload: &str) -> Value {
    let signature = stripe_signature(payload, STRIPE_SECRET, now_secs());
    let response = post_webhook(server, payload, Some(&signature)).await;
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "webhook answered {status}: {body}");
    serde_json::from_str(&body).unwrap()
}
