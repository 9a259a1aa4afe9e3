//! Who is calling: a user with a bearer token, or the Mixroom backend with
//! the internal key.

use std::future::{ready, Ready};

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;

use crate::auth::{internal_key_matches, Identity};
use crate::error::AppError;
use crate::http::AppState;

fn bearer(req: &HttpRequest) -> Result<&str, AppError> {
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| AppError::Unauthorized("missing bearer token".into()))
}

fn state(req: &HttpRequest) -> Result<&web::Data<AppState>, AppError> {
    req.app_data::<web::Data<AppState>>()
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("application state missing")))
}

/// A user authenticated by a valid access token.
pub struct AuthUser(pub Identity);

impl FromRequest for AuthUser {
    type Error = AppError;
    type Future = LocalBoxFuture<'static, Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let found = bearer(req).and_then(|token| Ok((token.to_owned(), state(req)?.clone())));
        Box::pin(async move {
            let (token, state) = found?;
            // Usually answered at once; awaits only a rotated signing key.
            let identity = state.verifier.verify_fresh(&token).await?;
            // Signed out everywhere by the backend: older tokens are void.
            if let Some(revoked_at) = state.db.sessions_revoked_at(&identity.user_id).await? {
                if identity
                    .issued_at
                    .is_none_or(|iat| iat * 1000 <= revoked_at)
                {
                    return Err(AppError::Unauthorized(
                        crate::db::users::REVOKED_TOKEN.into(),
                    ));
                }
            }
            Ok(AuthUser(identity))
        })
    }
}

/// The Mixroom backend, proven by the static internal key. A user token is
/// never accepted here.
pub struct InternalCaller;

impl FromRequest for InternalCaller {
    type Error = AppError;
    type Future = Ready<Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready((|| {
            let key = bearer(req)?;
            let state = state(req)?;
            if internal_key_matches(&state.settings.auth.internal_api_key, key) {
                state.limiters.check_internal().inspect_err(|_| {
                    state
                        .metrics
                        .rate_limited
                        .with_label_values(&["internal"])
                        .inc();
                })?;
                Ok(InternalCaller)
            } else {
                Err(AppError::Unauthorized("invalid internal API key".into()))
            }
        })())
    }
}
