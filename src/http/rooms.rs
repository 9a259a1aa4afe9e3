use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::extract::AuthUser;
use crate::db::messages::views::page_views;
use crate::error::AppError;
use crate::http::AppState;
use crate::rooms::{authorize_read, RoomName};
use crate::ws::session::history_limit;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    before: Option<i64>,
    limit: Option<i64>,
}

/// `GET /v1/rooms/{room}/messages`: the history frame over HTTP (the
/// page's changes to earlier messages in `changes`).
pub async fn history(
    AuthUser(who): AuthUser,
    room: web::Path<String>,
    query: web::Query<HistoryQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let room = RoomName::parse(&room)?;
    let limit = history_limit(query.limit)?;
    authorize_read(&state.db, &who, &room).await?;
    let (entries, has_more) = state
        .client_reads
        .before(room.as_str(), query.before, limit)
        .await?;
    let (messages, changes) = page_views(&entries);
    Ok(HttpResponse::Ok().json(json!({
        "messages": messages,
        "changes": changes,
        "has_more": has_more,
    })))
}
