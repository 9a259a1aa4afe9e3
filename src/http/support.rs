//! Support conversations: users open them; admins list them, read whole
//! logs and take over from the agent.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::extract::AuthUser;
use crate::auth::Identity;
use crate::db::messages::views::page_views;
use crate::db::support::{ConversationStatus, SupportConversationRow};
use crate::db::users::ProfileMirror;
use crate::error::AppError;
use crate::http::AppState;
use crate::support::director::TakenOver;
use crate::support::{post_notice, room_of, SupportError};

/// A conversation's whole log is read in pages of this many messages.
const LOG_PAGE: i64 = 1000;

#[derive(Serialize)]
struct ConversationView<'a> {
    id: &'a str,
    room: String,
    user_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_name: Option<&'a str>,
    status: &'a str,
    created_at: String,
    updated_at: String,
    escalated_at: Option<String>,
    escalation_reason: Option<&'a str>,
    taken_over_by: Option<&'a str>,
    taken_over_at: Option<String>,
}

impl<'a> ConversationView<'a> {
    fn new(row: &'a SupportConversationRow, user_name: Option<&'a str>) -> Self {
        ConversationView {
            id: &row.id,
            room: room_of(&row.id),
            user_id: &row.user_id,
            user_name,
            status: row.status.as_str(),
            created_at: crate::time::rfc3339_ms(row.created_at),
            updated_at: crate::time::rfc3339_ms(row.updated_at),
            escalated_at: row.escalated_at.map(crate::time::rfc3339_ms),
            escalation_reason: row.escalation_reason.as_deref(),
            taken_over_by: row.taken_over_by.as_deref(),
            taken_over_at: row.taken_over_at.map(crate::time::rfc3339_ms),
        }
    }
}

fn require_admin(who: &Identity) -> Result<(), AppError> {
    if who.is_admin() {
        Ok(())
    } else {
        Err(AppError::Forbidden(
            "support conversations are for admins only".into(),
        ))
    }
}

/// `POST /v1/support/conversations` → 201 `{"id","room"}`.
pub async fn open(
    AuthUser(who): AuthUser,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    state
        .limiters
        .check_support_conversation(&who.user_id)
        .inspect_err(|_| {
            state
                .metrics
                .rate_limited
                .with_label_values(&["support"])
                .inc()
        })?;
    // Admins see who they are helping: mirror the caller's profile as a
    // socket login would, and as there, never for an erased user.
    let mirrored = state
        .db
        .mirror_token_profile(
            &who.user_id,
            who.email.as_deref(),
            &who.name,
            who.role.as_str(),
            who.issued_at,
        )
        .await?;
    match (mirrored, mirrored.refusal()) {
        (ProfileMirror::Erased, Some(refusal)) => return Err(AppError::Gone(refusal.into())),
        (_, Some(refusal)) => return Err(AppError::Unauthorized(refusal.into())),
        (_, None) => {}
    }
    let id = uuid::Uuid::now_v7().to_string();
    let row = state
        .db
        .create_support_conversation(&id, &who.user_id)
        .await?;
    Ok(HttpResponse::Created().json(json!({
        "id": row.id,
        "room": room_of(&row.id),
        "status": row.status,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    status: Option<String>,
    before: Option<String>,
    limit: Option<i64>,
}

/// `GET /v1/admin/support/conversations?status=&before=&limit=`, newest first.
pub async fn list(
    AuthUser(who): AuthUser,
    query: web::Query<ListQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    require_admin(&who)?;
    let status = match query.status.as_deref() {
        None => None,
        Some(text) => Some(ConversationStatus::parse(text).ok_or_else(|| {
            AppError::Invalid(format!(
                "unknown status `{text}`; expected ai, escalated or human"
            ))
        })?),
    };
    let limit = crate::ws::session::history_limit(query.limit)?;
    let (rows, has_more) = state
        .db
        .list_support_conversations(status, query.before.as_deref(), limit)
        .await?;
    let conversations: Vec<ConversationView> = rows
        .iter()
        .map(|(row, name)| ConversationView::new(row, name.as_deref()))
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "conversations": conversations,
        "has_more": has_more,
    })))
}

/// `GET /v1/admin/support/conversations/{id}`: the conversation and its
/// whole log, oldest first (user, agent and team messages and notices).
pub async fn read(
    AuthUser(who): AuthUser,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    require_admin(&who)?;
    let row = state
        .db
        .find_support_conversation(&id)
        .await?
        .ok_or(SupportError::NoSuchConversation)?;
    let owner = state.db.find_user(&row.user_id).await?;
    let room = room_of(&row.id);
    let mut log = Vec::new();
    loop {
        let after = log
            .last()
            .map_or(0, |m: &crate::db::models::MessageRow| m.seq);
        let page = state
            .db
            .messages_after(&room, after, i64::MAX, LOG_PAGE)
            .await?;
        let full = page.len() as i64 == LOG_PAGE;
        log.extend(page);
        if !full {
            break;
        }
    }
    let entries = state.db.with_context(log).await?;
    let (messages, changes) = page_views(&entries);
    let user_name = owner.as_ref().and_then(|u| u.name.as_deref());
    Ok(HttpResponse::Ok().json(json!({
        "conversation": ConversationView::new(&row, user_name),
        "messages": messages,
        "changes": changes,
    })))
}

/// `POST /v1/admin/support/conversations/{id}/takeover`: the agent stops
/// (also mid-answer) and the user is told a person has joined.
pub async fn take_over(
    AuthUser(who): AuthUser,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    require_admin(&who)?;
    let (row, changed) = state
        .db
        .take_over_support_conversation(&id, &who.user_id)
        .await?
        .ok_or(SupportError::NoSuchConversation)?;
    if changed {
        state.support.do_send(TakenOver {
            conversation_id: row.id.clone(),
        });
        let notice = format!(
            "{} from the Mixroom support team has joined the conversation and will answer from now on.",
            who.name
        );
        post_notice(&state.sequencer, &room_of(&row.id), None, &notice).await?;
    }
    Ok(HttpResponse::Ok().json(json!({ "conversation": ConversationView::new(&row, None) })))
}
