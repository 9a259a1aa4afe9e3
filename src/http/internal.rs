//! Routes for the Mixroom backend (internal key only): the users and
//! bookings mirrors (write, read, erase), and system messages into rooms.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::extract::InternalCaller;
use crate::auth::Role;
use crate::db::bookings::{BookingOutcome, BookingUpsert};
use crate::db::messages::{Action, NewMessage};
use crate::db::users::ProfileMirror;
use crate::error::AppError;
use crate::http::AppState;
use crate::rooms::hub::CloseUserSessions;
use crate::rooms::{RoomKind, RoomName};

pub(crate) fn validate_id(what: &str, id: &str) -> Result<(), AppError> {
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

/// User ids are the `sub` of Supabase tokens: UUIDs. A user mirrored under
/// any other id could never connect, so it is refused here.
pub(crate) fn validate_user_id(what: &str, id: &str) -> Result<(), AppError> {
    uuid::Uuid::parse_str(id).map(|_| ()).map_err(|_| {
        AppError::Unprocessable(format!(
            "{what} `{}` is not a UUID (user ids are the `sub` of the user's token)",
            id.chars().take(80).collect::<String>()
        ))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserBody {
    email: Option<String>,
    name: Option<String>,
    role: String,
}

impl UserBody {
    fn validate(&self) -> Result<Role, AppError> {
        let role = Role::parse(&self.role).ok_or_else(|| {
            AppError::Unprocessable(format!(
                "unknown role `{}`; expected client, studio_owner, engineer or admin",
                self.role
            ))
        })?;
        if let Some(email) = &self.email {
            if !email.contains('@') || email.len() > 320 {
                return Err(AppError::Unprocessable(format!("invalid email `{email}`")));
            }
        }
        if self.name.as_ref().is_some_and(|name| name.len() > 200) {
            return Err(AppError::Unprocessable(
                "`name` must be at most 200 bytes".into(),
            ));
        }
        Ok(role)
    }
}

/// `PUT /v1/internal/users/{id}`
pub async fn put_user(
    _: InternalCaller,
    id: web::Path<String>,
    body: web::Json<UserBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    validate_user_id("user id", &id)?;
    let role = body.validate()?;
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
#[serde(deny_unknown_fields)]
pub struct UsersBody {
    users: Vec<BulkUser>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkUser {
    id: String,
    email: Option<String>,
    name: Option<String>,
    role: String,
}

impl BulkUser {
    fn profile(&self) -> UserBody {
        UserBody {
            email: self.email.clone(),
            name: self.name.clone(),
            role: self.role.clone(),
        }
    }
}

/// A backfill's batch: at most this many users per call.
const MAX_BULK_USERS: usize = 500;

/// `PUT /v1/internal/users`: mirrors many users at once (a backfill). All
/// are checked before any is written; erased users are skipped and named.
pub async fn put_users(
    _: InternalCaller,
    body: web::Json<UsersBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let users = body.into_inner().users;
    if users.is_empty() || users.len() > MAX_BULK_USERS {
        return Err(AppError::Unprocessable(format!(
            "`users` must hold 1 to {MAX_BULK_USERS} users"
        )));
    }
    let mut checked = Vec::with_capacity(users.len());
    for (index, user) in users.iter().enumerate() {
        let at = |error: AppError| match error {
            AppError::Unprocessable(message) => {
                AppError::Unprocessable(format!("users[{index}]: {message}"))
            }
            other => other,
        };
        validate_user_id("user id", &user.id).map_err(at)?;
        checked.push(user.profile().validate().map_err(at)?);
    }
    let mut mirrored = 0;
    let mut erased = Vec::new();
    for (user, role) in users.iter().zip(checked) {
        let outcome = state
            .db
            .upsert_user(
                &user.id,
                user.email.as_deref(),
                user.name.as_deref(),
                role.as_str(),
            )
            .await?;
        match outcome {
            ProfileMirror::Erased => erased.push(user.id.as_str()),
            _ => mirrored += 1,
        }
    }
    Ok(HttpResponse::Ok().json(json!({ "mirrored": mirrored, "erased": erased })))
}

/// `POST /v1/internal/users/{id}/disconnect`: signs the user out
/// everywhere (a ban, a role change): their sockets on every node close
/// with 4001 and their tokens issued until now are refused, so the next
/// connection needs a fresh token (which carries the new role).
pub async fn disconnect_user(
    _: InternalCaller,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    validate_user_id("user id", &id)?;
    let now = crate::time::now_ms();
    if !state.db.revoke_sessions(&id, now).await? {
        return Err(AppError::NotFound(format!(
            "no user `{}` is mirrored",
            id.as_str()
        )));
    }
    state.hub.do_send(CloseUserSessions {
        user_id: id.to_string(),
    });
    Ok(HttpResponse::Ok().json(json!({
        "disconnected": true,
        "tokens_issued_before": crate::time::rfc3339_ms(now),
    })))
}

/// `GET /v1/internal/users/{id}`: the mirrored profile.
pub async fn get_user(
    _: InternalCaller,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    validate_user_id("user id", &id)?;
    let user = state
        .db
        .find_user(&id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no user `{}` is mirrored", id.as_str())))?;
    let at = crate::time::rfc3339_ms;
    Ok(HttpResponse::Ok().json(json!({
        "id": user.id,
        "email": user.email,
        "name": user.name,
        "role": user.role,
        "updated_at": at(user.updated_at),
        "erased_at": user.erased_at.map(at),
    })))
}

/// `DELETE /v1/internal/users/{id}`: the account was deleted in the
/// backend; erased here exactly as `DELETE /v1/me` erases.
pub async fn delete_user(
    _: InternalCaller,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    validate_user_id("user id", &id)?;
    if state.db.find_user(&id).await?.is_none() {
        return Err(AppError::NotFound(format!(
            "no user `{}` is mirrored",
            id.as_str()
        )));
    }
    let erasure = super::me::erase_user(&state, &id).await?;
    Ok(HttpResponse::Ok().json(json!({ "erased": true, "details": erasure })))
}

#[derive(Deserialize)]
pub struct ListQuery {
    after: Option<String>,
    limit: Option<i64>,
}

/// `GET /v1/internal/users/{id}/bookings?after=<booking id>&limit=n`
pub async fn user_bookings(
    _: InternalCaller,
    id: web::Path<String>,
    query: web::Query<ListQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    validate_user_id("user id", &id)?;
    let limit = crate::ws::session::history_limit(query.limit)?;
    let (rows, has_more) = state
        .db
        .bookings_of_user(&id, query.after.as_deref(), limit)
        .await?;
    let at = crate::time::rfc3339_ms;
    let bookings: Vec<_> = rows
        .iter()
        .map(|b| {
            json!({
                "id": b.id,
                "client_id": b.client_id,
                "status": b.status.as_str(),
                "title": b.title,
                "starts_at": b.starts_at,
                "updated_at": at(b.updated_at),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "bookings": bookings, "has_more": has_more })))
}

/// A whole booking, as `PUT` replaces it. `provider_ids` and `title` have
/// no default: a body without them would silently empty them (and lock the
/// studio out of its booking chat), so it is refused; `PATCH` changes parts.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BookingBody {
    client_id: String,
    provider_ids: Option<Vec<String>>,
    status: String,
    title: Option<String>,
    starts_at: Option<String>,
    /// Monotonic version from the backend; older updates are ignored.
    version: Option<i64>,
    /// Alternative ordering key (RFC 3339) when there is no version.
    updated_at: Option<String>,
    reason: Option<String>,
}

/// Part of a booking, for `PATCH`: what is absent stays as stored;
/// `"starts_at": null` clears the start time.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BookingPatch {
    client_id: Option<String>,
    provider_ids: Option<Vec<String>>,
    status: Option<String>,
    title: Option<String>,
    #[serde(default, deserialize_with = "super::preferences::explicit")]
    starts_at: Option<Option<String>>,
    version: Option<i64>,
    updated_at: Option<String>,
    reason: Option<String>,
}

const MAX_PROVIDERS: usize = 20;
const MAX_TITLE_BYTES: usize = 200;

fn ordering_version(
    version: Option<i64>,
    updated_at: Option<&str>,
) -> Result<Option<i64>, AppError> {
    match (version, updated_at) {
        (Some(version), _) => Ok(Some(version)),
        (None, Some(at)) => crate::time::parse_rfc3339_ms(at)
            .map(Some)
            .ok_or_else(|| AppError::Unprocessable(format!("invalid updated_at `{at}`"))),
        (None, None) => Ok(None),
    }
}

/// Checks a whole booking and applies it (PUT and PATCH end here).
async fn apply_booking(state: &AppState, update: BookingUpsert) -> Result<HttpResponse, AppError> {
    validate_user_id("client_id", &update.client_id)?;
    if update.provider_ids.len() > MAX_PROVIDERS {
        return Err(AppError::Unprocessable(format!(
            "at most {MAX_PROVIDERS} provider_ids"
        )));
    }
    for provider in &update.provider_ids {
        validate_user_id("provider id", provider)?;
    }
    if update.title.len() > MAX_TITLE_BYTES {
        return Err(AppError::Unprocessable(format!(
            "`title` must be at most {MAX_TITLE_BYTES} bytes"
        )));
    }
    // Reminders are timed from it.
    if let Some(starts_at) = &update.starts_at {
        if crate::time::parse_rfc3339_ms(starts_at).is_none() {
            return Err(AppError::Unprocessable(format!(
                "`starts_at` must be an RFC 3339 time such as 2026-12-01T10:00:00Z, not `{starts_at}`"
            )));
        }
    }
    let outcome = state.bookings.apply(update).await?;
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

/// `PUT /v1/internal/bookings/{id}`: creates or replaces the booking.
pub async fn put_booking(
    _: InternalCaller,
    id: web::Path<String>,
    body: web::Json<BookingBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    validate_id("booking id", &id)?;
    let body = body.into_inner();
    let missing: Vec<&str> = [
        ("provider_ids", body.provider_ids.is_none()),
        ("title", body.title.is_none()),
    ]
    .into_iter()
    .filter_map(|(field, absent)| absent.then_some(field))
    .collect();
    if !missing.is_empty() {
        return Err(AppError::Unprocessable(format!(
            "PUT replaces the whole booking and this body has no {}: send them (empty if \
             need be), or PATCH the fields that change",
            missing.join(" or ")
        )));
    }
    let status = crate::bookings::parse_status(&body.status)?;
    let version = ordering_version(body.version, body.updated_at.as_deref())?;
    apply_booking(
        &state,
        BookingUpsert {
            id: id.into_inner(),
            client_id: body.client_id,
            provider_ids: body.provider_ids.unwrap_or_default(),
            status,
            title: body.title.unwrap_or_default(),
            starts_at: body.starts_at,
            version,
            reason: body.reason,
            caused_by: "backend".to_owned(),
        },
    )
    .await
}

/// `PATCH /v1/internal/bookings/{id}`: changes the fields given.
pub async fn patch_booking(
    _: InternalCaller,
    id: web::Path<String>,
    body: web::Json<BookingPatch>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    validate_id("booking id", &id)?;
    let patch = body.into_inner();
    let status = patch
        .status
        .as_deref()
        .map(crate::bookings::parse_status)
        .transpose()?;
    let version = ordering_version(patch.version, patch.updated_at.as_deref())?;
    let stored = state.db.mirrored_booking(&id).await?.ok_or_else(|| {
        AppError::NotFound(format!(
            "no booking `{}` is mirrored; PUT creates one",
            id.as_str()
        ))
    })?;
    apply_booking(
        &state,
        BookingUpsert {
            id: id.into_inner(),
            client_id: patch.client_id.unwrap_or(stored.row.client_id),
            provider_ids: patch.provider_ids.unwrap_or(stored.provider_ids),
            status: status.unwrap_or(stored.row.status),
            title: patch.title.unwrap_or(stored.row.title),
            starts_at: patch.starts_at.unwrap_or(stored.row.starts_at),
            version,
            reason: patch.reason,
            caused_by: "backend".to_owned(),
        },
    )
    .await
}

/// `GET /v1/internal/bookings/{id}`: the booking as mirrored.
pub async fn get_booking(
    _: InternalCaller,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    validate_id("booking id", &id)?;
    let booking =
        state.db.mirrored_booking(&id).await?.ok_or_else(|| {
            AppError::NotFound(format!("no booking `{}` is mirrored", id.as_str()))
        })?;
    let at = crate::time::rfc3339_ms;
    let row = booking.row;
    let reminders: Vec<Value> = state
        .db
        .booking_reminders(&row.id)
        .await?
        .iter()
        .map(|r| {
            json!({
                "lead_secs": r.lead_secs,
                "starts_at": at(r.starts_at),
                "due_at": at(r.due_at),
                "state": r.state.as_str(),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "id": row.id,
        "client_id": row.client_id,
        "provider_ids": booking.provider_ids,
        "status": row.status.as_str(),
        "title": row.title,
        "starts_at": row.starts_at,
        "version": row.version,
        "created_at": at(row.created_at),
        "updated_at": at(row.updated_at),
        "reminders": reminders,
    })))
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
    let exists = match room.kind() {
        RoomKind::Booking => state.db.find_booking(room.id()).await?.is_some(),
        RoomKind::Support => state
            .db
            .find_support_conversation(room.id())
            .await?
            .is_some(),
        RoomKind::User => false,
    };
    if !exists {
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
    if let Some(sender) = &body.sender_id {
        validate_user_id("sender_id", sender)?;
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
            action: Action::MESSAGE,
        })
        .await?;
    let row = appended.row;
    // Created once (201); the same `client_id` again answers the first
    // result (200), as every internal POST does.
    let status = if appended.duplicate {
        actix_web::http::StatusCode::OK
    } else {
        actix_web::http::StatusCode::CREATED
    };
    Ok(HttpResponse::build(status).json(json!({
        "id": row.id,
        "seq": row.seq,
        "sent_at": crate::time::rfc3339_ms(row.sent_at),
        "duplicate": appended.duplicate,
    })))
}
