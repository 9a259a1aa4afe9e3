use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::app::AppState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready when the database answers (and, with a broker configured, it too).
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match state.db.ping().await {
        Ok(()) => HttpResponse::Ok().json(json!({"status": "ready", "database": "ok"})),
        Err(error) => {
            tracing::warn!(%error, "readiness: database unreachable");
            HttpResponse::ServiceUnavailable()
                .json(json!({"status": "unavailable", "database": "unreachable"}))
        }
    }
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
