//! Routes for the Mixroom backend (internal key only): the users and
//! bookings mirrors, and system messages into rooms.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::extract::InternalCaller;
use crate::auth::Role;
use crate::db::bookings::{BookingOutcome, BookingUpsert};
use crate::db::messages::NewMessage;
use crate::db::users::ProfileMirror;
use crate::error::AppError;
use crate::http::AppState;
use crate::rooms::{RoomKind, RoomName};

fn validate_id(what: &str, id: &str) -> Result<(), AppError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(AppError::Invalid(format!(
            "invalid {what} `{}`",
            id.chars().take(80).collect::<String>()
        )))
    }
}

#[derive(Deserialize)]
pub struct UserBody {
    email: Option<String>,
    name: Option<String>,
    role: String,
}

/// `PUT /v1/internal/users/{id}`
pub async fn put_user(
    _: InternalCaller,
    id: web::Path<String>,
    body: web::Json<UserBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    validate_id("user id", &id)?;
    let role = Role::parse(&body.role).ok_or_else(|| {
        AppError::Unprocessable(format!(
            "unknown role `{}`; expected client, studio_owner, engineer or admin",
            body.role
        ))
    })?;
    if let Some(email) = &body.email {
        if !email.contains('@') || email.len() > 320 {
            return Err(AppError::Unprocessable(format!("invalid email `{email}`")));
        }
    }
    let mirrored = state
        .db
        .upsert_user(
            &id,
            body.email.as_deref(),
            body.name.as_deref(),
            role.as_str(),
        )
        .await?;
    if mirrored == ProfileMirror::Erased {
        return Err(AppError::Gone(format!(
            "user {} erased their personal data; their profile is not written again",
            id.as_str()
        )));
    }
    Ok(HttpResponse::Ok().json(json!({ "id": id.as_str() })))
}

#[derive(Deserialize)]
pub struct BookingBody {
    client_id: String,
    #[serde(default)]
    provider_ids: Vec<String>,
    status: String,
    #[serde(default)]
    title: String,
    starts_at: Option<String>,
    /// Monotonic version from the backend; older updates are ignored.
    version: Option<i64>,
    /// Alternative ordering key (RFC 3339) when there is no version.
    updated_at: Option<String>,
    reason: Option<String>,
}

/// `PUT /v1/internal/bookings/{id}`
pub async fn put_booking(
    _: InternalCaller,
    id: web::Path<String>,
    body: web::Json<BookingBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    validate_id("booking id", &id)?;
    validate_id("client_id", &body.client_id)?;
    for provider in &body.provider_ids {
        validate_id("provider id", provider)?;
    }
    let status = crate::bookings::parse_status(&body.status)?;
    let version = match (body.version, &body.updated_at) {
        (Some(version), _) => Some(version),
        (None, Some(at)) => {
            let parsed =
                time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| AppError::Unprocessable(format!("invalid updated_at `{at}`")))?;
            Some((parsed.unix_timestamp_nanos() / 1_000_000) as i64)
        }
        (None, None) => None,
    };
    let body = body.into_inner();
    let outcome = state
        .bookings
        .apply(BookingUpsert {
            id: id.into_inner(),
            client_id: body.client_id,
            provider_ids: body.provider_ids,
            status,
            title: body.title,
            starts_at: body.starts_at,
            version,
            reason: body.reason,
            caused_by: "backend".to_owned(),
        })
        .await?;
    Ok(match outcome {
        BookingOutcome::Stale { stored_version } => HttpResponse::Ok().json(json!({
            "applied": false,
            "reason": "stale",
            "stored_version": stored_version,
        })),
        BookingOutcome::Applied {
            created,
            status_change,
            ..
        } => HttpResponse::Ok().json(json!({
            "applied": true,
            "created": created,
            "status_changed": status_change.is_some(),
        })),
    })
}

#[derive(Deserialize)]
pub struct RoomMessageBody {
    body: String,
    sender_id: Option<String>,
    /// Lets the backend retry without storing twice.
    client_id: Option<String>,
}

/// `POST /v1/internal/rooms/{room}/messages`: a `system` message.
pub async fn post_room_message(
    _: InternalCaller,
    room: web::Path<String>,
    body: web::Json<RoomMessageBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let room = RoomName::parse(&room)?;
    if room.kind() == RoomKind::User {
        return Err(AppError::Invalid(
            "user channels carry notifications, not messages".into(),
        ));
    }
    if room.kind() == RoomKind::Booking && state.db.find_booking(room.id()).await?.is_none() {
        return Err(AppError::NotFound(format!("no such room `{room}`")));
    }
    let body = body.into_inner();
    if body.body.trim().is_empty() {
        return Err(AppError::Unprocessable("`body` must not be empty".into()));
    }
    if body.body.len() > state.settings.server.max_message_bytes {
        return Err(AppError::TooLarge(
            "`body` is over the message limit".into(),
        ));
    }
    let sender_name = match &body.sender_id {
        Some(id) => state
            .db
            .find_user(id)
            .await?
            .and_then(|u| u.name)
            .unwrap_or_else(|| "Mixroom".to_owned()),
        None => "Mixroom".to_owned(),
    };
    let appended = state
        .sequencer
        .append(NewMessage {
            id: None,
            room: room.to_string(),
            sender_id: body.sender_id,
            sender_name,
            sender_role: "system".to_owned(),
            client_id: body.client_id,
            body: body.body,
        })
        .await?;
    let row = appended.row;
    Ok(HttpResponse::Created().json(json!({
        "id": row.id,
        "seq": row.seq,
        "sent_at": crate::time::rfc3339_ms(row.sent_at),
        "duplicate": appended.duplicate,
    })))
}
