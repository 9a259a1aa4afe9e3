use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::db::Db;
use crate::http::AppState;
use crate::metrics::Metrics;

/// How often the probes' state is refreshed. Probes are not rate limited,
/// so they answer from this state rather than querying the store each.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// What `/readyz` and `/metrics` report, refreshed in the background.
pub struct ProbeCache {
    database_ok: AtomicBool,
}

impl ProbeCache {
    /// The database answered at start.
    pub fn new() -> Arc<ProbeCache> {
        Arc::new(ProbeCache {
            database_ok: AtomicBool::new(true),
        })
    }

    /// Refreshes the cache every `PROBE_INTERVAL`: one ping and one outbox
    /// count per interval, whatever the number of scrapes.
    pub fn start(self: &Arc<Self>, db: Db, metrics: Arc<Metrics>) {
        let cache = self.clone();
        actix_rt::spawn(async move {
            let mut tick = tokio::time::interval(PROBE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let ping = tokio::time::timeout(PROBE_INTERVAL * 5, db.ping()).await;
                let ok = match ping {
                    Ok(Ok(())) => true,
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "readiness: database unreachable");
                        false
                    }
                    Err(_) => {
                        tracing::warn!("readiness: database ping timed out");
                        false
                    }
                };
                cache.database_ok.store(ok, Ordering::Relaxed);
                metrics.database_up.set(i64::from(ok));
                // The outbox is shared by all nodes: its depth is read here.
                if ok {
                    if let Ok(queued) = db.queued_email_count().await {
                        metrics.email_outbox_queued.set(queued);
                    }
                }
            }
        });
    }
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready when the database answers and, with a broker configured, Redis
/// does too (a node without Redis still serves its own sockets, but an
/// operator should know cross-node delivery is paused).
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    // Shutting down: the load balancer must stop sending new clients here
    // while the sockets already here are still served.
    if state.draining.load(Ordering::Relaxed) {
        return HttpResponse::ServiceUnavailable().json(json!({"status": "draining"}));
    }
    let database = if state.probes.database_ok.load(Ordering::Relaxed) {
        "ok"
    } else {
        "unreachable"
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
    // In-memory readings only: probes query nothing (the cache above does).
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
