//! Web Push routes: the VAPID public key browsers subscribe with, and the
//! caller's push subscriptions (`/v1/me/push-subscriptions`).

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::extract::AuthUser;
use crate::db::push::{PushSubscriptionRow, SubscriptionSaved};
use crate::error::AppError;
use crate::http::AppState;
use crate::notify::push::subscription::check;
use crate::notify::push::PushError;

/// `GET /v1/push/vapid-public-key`: `{"public_key"}`, the uncompressed
/// P-256 point in base64url (the browser's `applicationServerKey`); 503
/// `push_disabled` when push is off. Public: it is what every browser
/// of the web app gets.
pub async fn vapid_public_key(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    let key = state.web_push.public_key()?;
    Ok(HttpResponse::Ok().json(json!({ "public_key": key })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionKeys {
    p256dh: String,
    auth: String,
}

/// A browser's `PushSubscription.toJSON()` (its `expirationTime` is
/// accepted and ignored).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSubscription {
    endpoint: String,
    keys: SubscriptionKeys,
    #[serde(default, rename = "expirationTime")]
    _expiration_time: Option<serde_json::Value>,
}

fn view(row: &PushSubscriptionRow) -> serde_json::Value {
    json!({
        "endpoint": row.endpoint,
        "created_at": crate::time::rfc3339_ms(row.created_at),
    })
}

/// `POST /v1/me/push-subscriptions`: 201 `{"endpoint","created_at"}`, 200
/// when the endpoint already is the caller's, 422 for a malformed
/// subscription, 409 over `push.max_subscriptions_per_user`.
pub async fn subscribe(
    AuthUser(who): AuthUser,
    body: web::Json<NewSubscription>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let push = &state.web_push;
    if !push.is_enabled() {
        return Err(PushError::Disabled.into());
    }
    let body = body.into_inner();
    let checked = check(
        &body.endpoint,
        &body.keys.p256dh,
        &body.keys.auth,
        push.environment(),
        &state.settings.push.endpoint_hosts,
    )?;
    let row = PushSubscriptionRow {
        endpoint: checked.endpoint,
        user_id: who.user_id.clone(),
        p256dh: checked.p256dh,
        auth: checked.auth,
        created_at: crate::time::now_ms(),
        last_success_at: None,
    };
    let max = push.settings().max_subscriptions_per_user;
    match state.db.save_push_subscription(&row, max).await? {
        SubscriptionSaved::Created(row) => Ok(HttpResponse::Created().json(view(&row))),
        SubscriptionSaved::Existing(row) => Ok(HttpResponse::Ok().json(view(&row))),
        SubscriptionSaved::LimitReached { max } => {
            Err(PushError::TooManySubscriptions { max }.into())
        }
    }
}

#[derive(Deserialize)]
pub struct EndpointQuery {
    endpoint: String,
}

/// `DELETE /v1/me/push-subscriptions?endpoint=<url-encoded>`: 204, or 404
/// when the caller has no such subscription.
pub async fn unsubscribe(
    AuthUser(who): AuthUser,
    query: web::Query<EndpointQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    // Stored endpoints are normalised URLs: look up the same form.
    let endpoint = reqwest::Url::parse(&query.endpoint)
        .map(|url| url.to_string())
        .unwrap_or_else(|_| query.endpoint.clone());
    if state
        .db
        .delete_push_subscription(&who.user_id, &endpoint)
        .await?
    {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(AppError::NotFound(
            "no push subscription of yours has this endpoint".into(),
        ))
    }
}

/// `GET /v1/me/push-subscriptions`: the caller's subscriptions (endpoint
/// and when it was added), for a settings page listing their browsers.
pub async fn list(
    AuthUser(who): AuthUser,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let rows = state.db.push_subscriptions_of(&who.user_id).await?;
    let subscriptions: Vec<serde_json::Value> = rows.iter().map(view).collect();
    Ok(HttpResponse::Ok().json(json!({ "subscriptions": subscriptions })))
}
