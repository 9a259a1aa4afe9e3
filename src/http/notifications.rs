//! The caller's notification inbox and unread counts.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::extract::{AuthUser, InternalCaller};
use crate::db::models::NotificationRow;
use crate::error::AppError;
use crate::http::AppState;
use crate::notifications::{kind_names, NotificationKind, NotificationView};

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
    state
        .inbox
        .read_elsewhere(state.db.clone(), &who.user_id, Some(vec![row.id.clone()]));
    Ok(HttpResponse::Ok().json(NotificationView::from(&row)))
}

/// `POST /v1/notifications/read-all`
pub async fn mark_all_read(
    AuthUser(who): AuthUser,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let marked = state.db.mark_all_notifications_read(&who.user_id).await?;
    if marked > 0 {
        state
            .inbox
            .read_elsewhere(state.db.clone(), &who.user_id, None);
    }
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

/// Recipients of one backend call, and the size of its `data`.
const MAX_RECIPIENTS: usize = 1000;
const MAX_DATA_BYTES: usize = 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewNotification {
    /// One recipient, or several in `user_ids` (exactly one of the two).
    user_id: Option<String>,
    user_ids: Option<Vec<String>>,
    kind: String,
    title: String,
    #[serde(default)]
    body: String,
    link: Option<String>,
    /// Idempotency key of the backend: the same key creates one
    /// notification per recipient.
    source: Option<String>,
    /// An object of the backend's for the app (ids to open, say), delivered
    /// as is in the frame and the inbox.
    data: Option<serde_json::Value>,
    /// Email it at once and alone, even when read in the app (a receipt, a
    /// confirmation); still subject to the recipient's switch for `kind`.
    #[serde(default)]
    transactional: bool,
}

impl NewNotification {
    fn recipients(&mut self) -> Result<Vec<String>, AppError> {
        let recipients = match (self.user_id.take(), self.user_ids.take()) {
            (Some(one), None) => vec![one],
            (None, Some(many)) if !many.is_empty() && many.len() <= MAX_RECIPIENTS => {
                let mut many = many;
                many.sort();
                many.dedup();
                many
            }
            (None, Some(_)) => {
                return Err(AppError::Unprocessable(format!(
                    "`user_ids` must hold 1 to {MAX_RECIPIENTS} ids"
                )))
            }
            _ => {
                return Err(AppError::Unprocessable(
                    "give exactly one of `user_id` and `user_ids`".into(),
                ))
            }
        };
        for id in &recipients {
            super::internal::validate_user_id("user id", id)?;
        }
        Ok(recipients)
    }

    fn data_text(&self) -> Result<Option<String>, AppError> {
        let Some(data) = &self.data else {
            return Ok(None);
        };
        if !data.is_object() {
            return Err(AppError::Unprocessable("`data` must be an object".into()));
        }
        let text = data.to_string();
        if text.len() > MAX_DATA_BYTES {
            return Err(AppError::TooLarge(format!(
                "`data` must be at most {MAX_DATA_BYTES} bytes of JSON"
            )));
        }
        Ok(Some(text))
    }
}

/// `POST /v1/internal/notifications` (backend only): one notification per
/// recipient, pushed to their live sessions and emailed if left unread.
pub async fn create(
    _: InternalCaller,
    body: web::Json<NewNotification>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let mut body = body.into_inner();
    let single = body.user_id.is_some();
    let recipients = body.recipients()?;
    let kind = NotificationKind::parse(&body.kind).ok_or_else(|| {
        AppError::Unprocessable(format!(
            "unknown kind `{}`; expected one of {}",
            body.kind,
            kind_names()
        ))
    })?;
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
    if body.link.as_ref().is_some_and(|link| link.len() > 2048) {
        return Err(AppError::Unprocessable(
            "`link` must be at most 2048 bytes".into(),
        ));
    }
    let data = body.data_text()?;
    let now = crate::time::now_ms();
    let mut outcomes = Vec::with_capacity(recipients.len());
    let mut fresh = Vec::new();
    for user_id in recipients {
        let row = NotificationRow {
            id: uuid::Uuid::now_v7().to_string(),
            user_id,
            kind,
            title: body.title.clone(),
            body: body.body.clone(),
            link: body.link.clone(),
            source: body.source.clone(),
            created_at: now,
            read_at: None,
            data: data.clone(),
            transactional: body.transactional,
        };
        let (row, created) = state.db.create_notification(row).await?;
        outcomes.push(json!({ "user_id": row.user_id, "id": row.id, "created": created }));
        if created {
            fresh.push(row);
        }
    }
    if !fresh.is_empty() {
        state.inbox.push(&fresh);
    }
    // 201 when anything was created; the same request again is 200.
    let status = if fresh.is_empty() {
        actix_web::http::StatusCode::OK
    } else {
        actix_web::http::StatusCode::CREATED
    };
    let reply = if single {
        outcomes.swap_remove(0)
    } else {
        json!({ "created": fresh.len(), "notifications": outcomes })
    };
    Ok(HttpResponse::build(status).json(reply))
}
