//! The caller's notification inbox and unread counts.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::extract::{AuthUser, InternalCaller};
use crate::db::models::NotificationRow;
use crate::error::AppError;
use crate::http::AppState;
use crate::notifications::{NotificationView, KINDS};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    unread: bool,
    before: Option<String>,
    limit: Option<i64>,
}

/// `GET /v1/notifications?unread=true&before=<id>&limit=n`
pub async fn list(
    AuthUser(who): AuthUser,
    query: web::Query<ListQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let limit = crate::ws::session::history_limit(query.limit)?;
    let (rows, has_more) = state
        .db
        .list_notifications(&who.user_id, query.unread, query.before.as_deref(), limit)
        .await?;
    let unread_count = state.db.unread_notification_count(&who.user_id).await?;
    let items: Vec<NotificationView> = rows.iter().map(NotificationView::from).collect();
    Ok(HttpResponse::Ok().json(json!({
        "notifications": items,
        "has_more": has_more,
        "unread_count": unread_count,
    })))
}

/// `POST /v1/notifications/{id}/read`
pub async fn mark_read(
    AuthUser(who): AuthUser,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let row = state
        .db
        .mark_notification_read(&who.user_id, &id)
        .await?
        .ok_or_else(|| AppError::NotFound("no such notification".into()))?;
    Ok(HttpResponse::Ok().json(NotificationView::from(&row)))
}

/// `POST /v1/notifications/read-all`
pub async fn mark_all_read(
    AuthUser(who): AuthUser,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let marked = state.db.mark_all_notifications_read(&who.user_id).await?;
    Ok(HttpResponse::Ok().json(json!({ "marked": marked })))
}

/// `GET /v1/me/unread`: unread notifications and unread chat messages per
/// booking room (also sent as an `unread` frame after `welcome`).
pub async fn unread(
    AuthUser(who): AuthUser,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    Ok(HttpResponse::Ok()
        .json(crate::notifications::unread_summary(&state.db, &who.user_id).await?))
}

#[derive(Deserialize)]
pub struct NewNotification {
    user_id: String,
    kind: String,
    title: String,
    #[serde(default)]
    body: String,
    link: Option<String>,
    /// Idempotency key of the backend: the same key creates one notification.
    source: Option<String>,
}

/// `POST /v1/internal/notifications` (backend only).
pub async fn create(
    _: InternalCaller,
    body: web::Json<NewNotification>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let body = body.into_inner();
    if !KINDS.contains(&body.kind.as_str()) {
        return Err(AppError::Unprocessable(format!(
            "unknown kind `{}`; expected one of {}",
            body.kind,
            KINDS.join(", ")
        )));
    }
    if body.title.trim().is_empty() || body.title.len() > 200 {
        return Err(AppError::Unprocessable(
            "`title` must be 1 to 200 bytes".into(),
        ));
    }
    if body.body.len() > state.settings.server.max_message_bytes {
        return Err(AppError::TooLarge(
            "`body` is over the message limit".into(),
        ));
    }
    uuid::Uuid::parse_str(&body.user_id)
        .map_err(|_| AppError::Unprocessable("`user_id` must be a uuid".into()))?;
    let row = NotificationRow {
        id: uuid::Uuid::now_v7().to_string(),
        user_id: body.user_id,
        kind: body.kind,
        title: body.title,
        body: body.body,
        link: body.link,
        source: body.source,
        created_at: crate::time::now_ms(),
        read_at: None,
    };
    let (row, created) = state.db.create_notification(row).await?;
    if created {
        state.inbox.push(std::slice::from_ref(&row));
    }
    let status = if created {
        actix_web::http::StatusCode::CREATED
    } else {
        actix_web::http::StatusCode::OK
    };
    Ok(HttpResponse::build(status).json(json!({ "id": row.id, "created": created })))
}
