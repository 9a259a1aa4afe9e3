use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::app::AppState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready when the database answers and, with a broker configured, Redis
/// does too (a node without Redis still serves its own sockets, but an
/// operator should know cross-node delivery is paused).
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    // Shutting down: the load balancer must stop sending new clients here
    // while the sockets already here are still served.
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return HttpResponse::ServiceUnavailable().json(json!({"status": "draining"}));
    }
    let database = match state.db.ping().await {
        Ok(()) => "ok",
        Err(error) => {
            tracing::warn!(%error, "readiness: database unreachable");
            "unreachable"
        }
    };
    let broker = match state.cluster.is_healthy() {
        None => "not_configured",
        Some(true) => "ok",
        Some(false) => "unreachable",
    };
    // Published signing keys: not ready until a set was ever fetched (no
    // asymmetric token could be verified); a failing refresh keeps the last
    // set and is reported, not fatal.
    let signing_keys = state.verifier.key_status();
    let ready = database == "ok" && broker != "unreachable" && state.verifier.keys_loaded();
    let mut body = json!({
        "status": if ready { "ready" } else { "unavailable" },
        "database": database,
        "broker": broker,
    });
    if let Some(keys) = signing_keys {
        body["signing_keys"] = json!(keys);
    }
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    // The outbox is shared by all nodes: its depth is read at scrape time.
    if let Ok(queued) = state.db.queued_email_count().await {
        state.metrics.email_outbox_queued.set(queued);
    }
    let pool = state.db.pool_status();
    let connections = &state.metrics.db_pool_connections;
    connections
        .with_label_values(&["idle"])
        .set(pool.idle as i64);
    connections
        .with_label_values(&["in_use"])
        .set(pool.size.saturating_sub(pool.idle) as i64);
    state.metrics.db_pool_waiting.set(pool.waiting as i64);
    if let Some(up) = state.cluster.is_healthy() {
        state
            .metrics
            .broker_connected
            .with_label_values(&["redis"])
            .set(i64::from(up));
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

/// `GET /v1/openapi.json`: the HTTP API described (docs/openapi.json).
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(include_str!("../../docs/openapi.json"))
}
