//! Announcements to every user (or every user of a role), for the backend:
//! `POST /v1/internal/announcements` and `GET /v1/internal/announcements/{id}`.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::extract::InternalCaller;
use super::internal::validate_id;
use crate::db::announcements::{AnnouncementRow, Created, Progress};
use crate::domain::announcement::{AnnouncementKind, AnnouncementState};
use crate::domain::role::Role;
use crate::error::AppError;
use crate::http::AppState;

const MAX_TITLE_BYTES: usize = 200;
const MAX_BODY_BYTES: usize = 10_000;
const MAX_LINK_BYTES: usize = 2048;

#[derive(Deserialize)]
#[serde(untagged)]
pub enum AudienceBody {
    /// `"all"`
    Everyone(String),
    /// `{"role": "engineer"}`
    Role { role: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnouncementBody {
    id: String,
    title: String,
    body: String,
    link: Option<String>,
    kind: String,
    audience: AudienceBody,
}

impl AnnouncementBody {
    /// The checked announcement, not yet counted or stored.
    fn into_row(self) -> Result<AnnouncementRow, AppError> {
        validate_id("announcement id", &self.id)?;
        let kind = AnnouncementKind::parse(&self.kind).ok_or_else(|| {
            AppError::Unprocessable(format!(
                "unknown kind `{}`; expected policy (a material change, emailed to everyone) \
                 or marketing (emailed to users who opted in)",
                self.kind
            ))
        })?;
        if self.title.trim().is_empty() || self.title.len() > MAX_TITLE_BYTES {
            return Err(AppError::Unprocessable(format!(
                "`title` must be 1 to {MAX_TITLE_BYTES} bytes"
            )));
        }
        if self.body.trim().is_empty() || self.body.len() > MAX_BODY_BYTES {
            return Err(AppError::Unprocessable(format!(
                "`body` must be 1 to {MAX_BODY_BYTES} bytes"
            )));
        }
        if let Some(link) = &self.link {
            let web = link.starts_with("https://") || link.starts_with("http://");
            let path = link.starts_with('/') && !link.starts_with("//");
            if link.len() > MAX_LINK_BYTES || !(web || path) {
                return Err(AppError::Unprocessable(format!(
                    "`link` must be a path of the web app (`/terms`) or an http(s) URL, at \
                     most {MAX_LINK_BYTES} bytes"
                )));
            }
        }
        let audience_role = match &self.audience {
            AudienceBody::Everyone(all) if all == "all" => None,
            AudienceBody::Role { role } => Some(
                Role::parse(role)
                    .ok_or_else(|| {
                        AppError::Unprocessable(format!(
                            "unknown role `{role}`; expected client, studio_owner, engineer or \
                             admin"
                        ))
                    })?
                    .as_str()
                    .to_owned(),
            ),
            AudienceBody::Everyone(other) => {
                return Err(AppError::Unprocessable(format!(
                    "`audience` must be \"all\" or {{\"role\": \"…\"}}, not `{other}`"
                )))
            }
        };
        // What makes a repeat the same request.
        let request_hash = hex::encode(Sha256::digest(
            json!([
                kind.as_str(),
                self.title,
                self.body,
                self.link,
                audience_role
            ])
            .to_string(),
        ));
        let now = crate::time::now_ms();
        Ok(AnnouncementRow {
            id: self.id,
            kind,
            title: self.title,
            body: self.body,
            link: self.link,
            audience_role,
            request_hash,
            state: AnnouncementState::Running,
            users: 0,
            notified: 0,
            email_queued: 0,
            cursor: Some(String::new()),
            claimed_by: None,
            claimed_until: None,
            created_at: now,
            updated_at: now,
        })
    }
}

fn progress_view(row: &AnnouncementRow, emailed: i64, failed: i64) -> Value {
    let at = crate::time::rfc3339_ms;
    json!({
        "id": row.id,
        "kind": row.kind.as_str(),
        "title": row.title,
        "audience": match &row.audience_role {
            Some(role) => json!({ "role": role }),
            None => json!("all"),
        },
        "state": row.state.as_str(),
        "users": row.users,
        "notified": row.notified,
        "email_queued": row.email_queued,
        "emailed": emailed,
        "failed": failed,
        "created_at": at(row.created_at),
        "completed_at": (row.state == AnnouncementState::Done).then(|| at(row.updated_at)),
    })
}

/// `POST /v1/internal/announcements`: 202 with its progress; the same
/// request again is 200 with the progress so far, another under the same
/// id 409.
pub async fn create(
    _: InternalCaller,
    body: web::Json<AnnouncementBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let row = body.into_inner().into_row()?;
    let id = row.id.clone();
    match state.announcements.create(row).await? {
        Created::New(row) => Ok(HttpResponse::Accepted().json(progress_view(&row, 0, 0))),
        Created::Repeated(_) => {
            let Progress {
                row,
                emailed,
                failed,
            } = state
                .announcements
                .progress(&id)
                .await?
                .ok_or_else(|| AppError::NotFound(format!("no announcement `{id}`")))?;
            Ok(HttpResponse::Ok().json(progress_view(&row, emailed, failed)))
        }
        Created::Conflict => Err(AppError::Conflict(format!(
            "announcement `{id}` exists with other contents; use a new id for a new announcement"
        ))),
    }
}

/// `GET /v1/internal/announcements/{id}`
pub async fn progress(
    _: InternalCaller,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    validate_id("announcement id", &id)?;
    let Progress {
        row,
        emailed,
        failed,
    } = state
        .announcements
        .progress(&id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("no announcement `{}`", id.as_str())))?;
    Ok(HttpResponse::Ok().json(progress_view(&row, emailed, failed)))
}
