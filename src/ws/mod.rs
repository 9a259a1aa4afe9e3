//! The WebSocket endpoint `GET /v1/ws`: one [`session::WsSession`] actor per
//! socket. actix-web-actors is confined to this module, so moving to
//! actix-ws later touches nothing else.

pub mod frames;
pub mod session;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;

use crate::app::AppState;
use crate::error::AppError;

/// Browsers send `Origin`; with an allow-list configured, only the web
/// app's pages may open a socket with the user's token (no cross-site
/// WebSocket hijacking). Clients without `Origin` (servers, CLIs) pass.
fn check_origin(req: &HttpRequest, allowed: &[String]) -> Result<(), AppError> {
    let Some(origin) = req.headers().get(actix_web::http::header::ORIGIN) else {
        return Ok(());
    };
    if allowed.is_empty() || allowed.iter().any(|a| a.as_bytes() == origin.as_bytes()) {
        Ok(())
    } else {
        Err(AppError::Forbidden("origin not allowed".into()))
    }
}

pub async fn connect(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let client_ip = state.limiters.client_ip(&req);
    if let Some(ip) = client_ip {
        state.limiters.check_connect(ip).inspect_err(|_| {
            state
                .metrics
                .rate_limited
                .with_label_values(&["connects"])
                .inc();
        })?;
    }
    check_origin(&req, &state.settings.server.allowed_origins)?;
    let max_frame = state.settings.server.max_frame_bytes;
    let session = session::WsSession::new(state.into_inner(), client_ip);
    ws::WsResponseBuilder::new(session, &req, stream)
        .frame_size(max_frame)
        .start()
}
