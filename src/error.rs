//! Errors as callers see them. Each layer has its own error type
//! (`DbError`, `AuthError`, `ConfigError`, ...); they become an [`AppError`]
//! at the edge, and this is the one place where an [`AppError`] turns into
//! an HTTP response or a WebSocket `error` frame, with the contract's codes.
//!
//! Policy: internal details (SQL, paths, secrets) are logged, never sent.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::auth::AuthError;
use crate::db::DbError;
use crate::domain::chat::ChatRefusal;
pub use crate::domain::wire::ErrorCode;
use crate::domain::{room::RoomNameError, wire::FrameError};
use crate::notify::push::PushError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Conflict(String),
    /// A capability turned off on this server (503 with its own code).
    #[error("{message}")]
    Unavailable { code: ErrorCode, message: String },
    #[error("rate limited, retry in {retry_after_ms} ms")]
    RateLimited { retry_after_ms: u64 },
    /// Logged where it is converted; the caller sees a generic message.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl AppError {
    pub fn code(&self) -> ErrorCode {
        match self {
            AppError::Invalid(_) | AppError::Unprocessable(_) => ErrorCode::Invalid,
            AppError::Unauthorized(_) => ErrorCode::Unauthorized,
            AppError::Forbidden(_) => ErrorCode::Forbidden,
            AppError::NotFound(_) => ErrorCode::NotFound,
            AppError::Gone(_) => ErrorCode::Gone,
            AppError::TooLarge(_) => ErrorCode::TooLarge,
            AppError::Timeout(_) => ErrorCode::Timeout,
            AppError::Conflict(_) => ErrorCode::Conflict,
            AppError::RateLimited { .. } => ErrorCode::RateLimited,
            AppError::Unavailable { code, .. } => *code,
            AppError::Internal(_) => ErrorCode::Internal,
        }
    }

    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            AppError::RateLimited { retry_after_ms } => Some(*retry_after_ms),
            // A storage outage is worth retrying shortly.
            AppError::Internal(_) => Some(1000),
            _ => None,
        }
    }

    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        AppError::Internal(error.into())
    }
}

impl From<DbError> for AppError {
    fn from(error: DbError) -> Self {
        AppError::Internal(error.into())
    }
}

impl From<PushError> for AppError {
    fn from(error: PushError) -> Self {
        match error {
            PushError::Disabled => AppError::Unavailable {
                code: ErrorCode::PushDisabled,
                message: error.to_string(),
            },
            PushError::InvalidSubscription(message) => AppError::Unprocessable(message),
            PushError::TooManySubscriptions { .. } => AppError::Conflict(error.to_string()),
            PushError::Db(error) => error.into(),
            PushError::Key(_) | PushError::Client(_) => AppError::internal(error),
        }
    }
}

impl From<ChatRefusal> for AppError {
    fn from(refusal: ChatRefusal) -> Self {
        match refusal {
            ChatRefusal::NotFound(message) => AppError::NotFound(message),
            ChatRefusal::Forbidden(message) => AppError::Forbidden(message),
            ChatRefusal::Invalid(message) => AppError::Invalid(message),
        }
    }
}

impl From<RoomNameError> for AppError {
    fn from(error: RoomNameError) -> Self {
        AppError::Invalid(error.to_string())
    }
}

impl From<FrameError> for AppError {
    fn from(error: FrameError) -> Self {
        AppError::Invalid(error.to_string())
    }
}

impl From<AuthError> for AppError {
    fn from(error: AuthError) -> Self {
        AppError::Unauthorized(error.to_string())
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: ErrorCode,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

impl ResponseError for AppError {
    fn status_code(&self) -> StatusCode {
        match self {
            AppError::Invalid(_) => StatusCode::BAD_REQUEST,
            AppError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Gone(_) => StatusCode::GONE,
            AppError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::Unavailable { .. } | AppError::Internal(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let AppError::Internal(source) = self {
            tracing::error!(error = %format!("{source:#}"), "request failed");
        }
        let message = self.to_string();
        let mut response = HttpResponse::build(self.status_code());
        if let Some(ms) = self.retry_after_ms() {
            response.insert_header(("Retry-After", ms.div_ceil(1000).to_string()));
        }
        response.json(ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: &message,
                retry_after_ms: self.retry_after_ms(),
            },
        })
    }
}

/// Turns actix's own JSON/path/query extraction failures into our shape.
pub fn json_error_handler(
    err: actix_web::error::JsonPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    use actix_web::error::JsonPayloadError;
    match err {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
            AppError::TooLarge("request body too large".into()).into()
        }
        JsonPayloadError::Deserialize(e) if e.is_data() => {
            AppError::Unprocessable(format!("invalid field: {e}")).into()
        }
        other => AppError::Invalid(format!("invalid JSON body: {other}")).into(),
    }
}

pub fn query_error_handler(
    err: actix_web::error::QueryPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    AppError::Invalid(format!("invalid query: {err}")).into()
}
