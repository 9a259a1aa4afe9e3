//! The caller's data rights: export everything stored about them, erase
//! their personal data.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::extract::AuthUser;
use crate::db::privacy::Erasure;
use crate::error::AppError;
use crate::http::AppState;
use crate::notifications::NotificationView;
use crate::rooms::hub::{CloseUserSessions, RoomChanged};

/// `GET /v1/me/export`: one JSON document with every row about the caller.
pub async fn export(
    AuthUser(who): AuthUser,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let data = state.db.user_data(&who.user_id).await?;
    let push_subscriptions = state.db.push_subscriptions_of(&who.user_id).await?;
    let push_switches = state
        .db
        .push_switches_of(std::slice::from_ref(&who.user_id))
        .await?;
    let at = crate::time::rfc3339_ms;
    let document = json!({
        "exported_at": at(crate::time::now_ms()),
        "user_id": who.user_id,
        "profile": data.profile.map(|p| json!({
            "email": p.email,
            "name": p.name,
            "role": p.role,
            "updated_at": at(p.updated_at),
            "erased_at": p.erased_at.map(at),
        })),
        "bookings": data.bookings,
        "messages": data.messages.iter().map(|m| json!({
            "room": m.room, "seq": m.seq, "id": m.id, "body": m.body, "sent_at": at(m.sent_at),
            "reply_to": m.reply_to,
            "attachments": m.attachments,
            "edited_at": m.edited_at.map(at),
            "deleted_at": m.deleted_at.map(at),
        })).collect::<Vec<_>>(),
        "message_changes": data.message_changes.iter().map(|c| json!({
            "room": c.room, "seq": c.seq, "kind": c.kind, "message_seq": c.message_seq,
            "emoji": c.emoji, "at": at(c.at),
        })).collect::<Vec<_>>(),
        "reactions": data.reactions.iter().map(|r| json!({
            "room": r.room, "seq": r.seq, "emoji": r.emoji, "at": at(r.created_at),
        })).collect::<Vec<_>>(),
        "read_cursors": data.read_cursors.iter().map(|c| json!({
            "room": c.room, "seq": c.seq, "updated_at": at(c.updated_at),
        })).collect::<Vec<_>>(),
        "notifications": data.notifications.iter().map(NotificationView::from).collect::<Vec<_>>(),
        "email_preferences": data.email_preferences.map(|p| json!({
            "chat": p.chat,
            "booking": p.booking,
            "support": p.support,
            "marketing": p.marketing,
            "chat_delay_secs": p.chat_delay_secs,
        })),
        // The browsers' keys are theirs and say nothing about the user.
        "push_subscriptions": push_subscriptions.iter().map(|s| json!({
            "endpoint": s.endpoint,
            "created_at": at(s.created_at),
            "last_success_at": s.last_success_at.map(at),
        })).collect::<Vec<_>>(),
        "push_preferences": push_switches.iter().map(|(_, kind, on)| (kind.as_str().to_owned(), json!(on)))
            .collect::<serde_json::Map<String, serde_json::Value>>(),
        "emails": data.emails.iter().map(|e| json!({
            "to": e.to_address,
            "subject": e.subject,
            "text": e.text,
            "state": e.state,
            "created_at": at(e.created_at),
            "sent_at": e.sent_at.map(at),
        })).collect::<Vec<_>>(),
        "email_items": data.email_items.iter().map(|i| json!({
            "kind": i.kind,
            "source": i.source,
            "room": i.room,
            "seq": i.seq,
            "up_to_seq": i.up_to_seq,
            "state": i.state,
            "created_at": at(i.created_at),
            "due_at": at(i.due_at),
        })).collect::<Vec<_>>(),
        "support_token_usage": data.token_usage.iter().map(|u| json!({
            "day": at(u.day * 86_400_000)[..10].to_owned(),
            "tokens": u.tokens,
        })).collect::<Vec<_>>(),
        "support_takeovers": data.takeovers.iter().map(|t| json!({
            "conversation_id": t.conversation_id,
            "taken_over_at": t.taken_over_at.map(at),
        })).collect::<Vec<_>>(),
        "support_conversations": data.support.iter().map(|c| json!({
            "id": c.id,
            "status": c.status,
            "created_at": at(c.created_at),
            "escalated_at": c.escalated_at.map(at),
            "escalation_reason": c.escalation_reason,
            "taken_over_at": c.taken_over_at.map(at),
            "turns": c.turns.iter().map(|t| json!({
                "seq": t.seq, "sender_role": t.sender_role, "body": t.body, "sent_at": at(t.sent_at),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    Ok(HttpResponse::Ok()
        .insert_header((
            "Content-Disposition",
            "attachment; filename=\"mixroom-export.json\"",
        ))
        .json(document))
}

/// `DELETE /v1/me`: message bodies become `[deleted]`, name and email are
/// removed, the inbox and read cursors go, live sessions are closed; the
/// booking status history stays for the legal retention period.
pub async fn erase(
    AuthUser(who): AuthUser,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let erasure = erase_user(&state, &who.user_id).await?;
    Ok(HttpResponse::Ok().json(json!({ "erased": true, "details": erasure })))
}

/// Erases a user's personal data and closes their sessions on every node
/// (for `DELETE /v1/me` and the backend's `DELETE /v1/internal/users/{id}`).
pub(crate) async fn erase_user(state: &AppState, user_id: &str) -> Result<Erasure, AppError> {
    let erasure = state.db.erase_user(user_id).await?;
    state.hub.do_send(CloseUserSessions {
        user_id: user_id.to_owned(),
    });
    for room in &erasure.booking_rooms {
        state.hub.do_send(RoomChanged { room: room.clone() });
    }
    tracing::info!(user = %user_id, ?erasure, "personal data erased");
    Ok(erasure)
}
