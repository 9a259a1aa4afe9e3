//! The WebSocket endpoint `GET /v1/ws`: one [`session::WsSession`] actor per
//! socket, over the socket transport ([`transport`]: admission, inbound
//! frames, outbound bytes). A plain `GET /v1/ws` without an upgrade goes
//! through the app to [`not_upgraded`].

mod joined;
pub mod session;
pub mod transport;

use std::future::Future;
use std::sync::Arc;

use actix_codec::Framed;
use actix_http::{h1, Request};
use actix_rt::net::TcpStream;
use actix_web::{HttpRequest, HttpResponse, ResponseError};

use actix::Addr;
use tokio_util::task::TaskTracker;

use crate::auth::TokenVerifier;
use crate::config::{LimitSettings, ServerSettings};
use crate::db::client_reads::ClientReads;
use crate::db::Db;
use crate::domain::chat::ChatRules;
use crate::error::AppError;
use crate::limits::Limiters;
use crate::metrics::Metrics;
use crate::rooms::hub::Hub;
use crate::rooms::sequencer::Sequencer;

/// The path of the WebSocket endpoint (PROTOCOL.md).
pub const PATH: &str = "/v1/ws";

/// What sockets and their sessions use of the server: these handles,
/// not the whole application state (made once, in `app`).
pub struct SessionServices {
    pub server: ServerSettings,
    pub limits: LimitSettings,
    pub chat: ChatRules,
    pub db: Db,
    /// Replays and history pages.
    pub client_reads: ClientReads,
    pub verifier: Arc<TokenVerifier>,
    pub hub: Addr<Hub>,
    pub sequencer: Sequencer,
    pub limiters: Arc<Limiters>,
    pub metrics: Arc<Metrics>,
    /// Every socket's task: shutdown waits for their close frames.
    pub sockets: TaskTracker,
}

/// The server's upgrade service: every request carrying
/// `Upgrade: websocket` comes here with its connection.
pub fn serve_upgrade(
    state: Arc<SessionServices>,
    request: Request,
    framed: Framed<TcpStream, h1::Codec>,
) -> impl Future<Output = Result<(), actix_web::Error>> {
    transport::upgrade(state, request, framed, |state, admitted| {
        session::WsSession::new(state, admitted.client_ip)
    })
}

/// `GET /v1/ws` without `Upgrade: websocket`: the handshake's own error.
pub async fn not_upgraded(req: HttpRequest) -> HttpResponse {
    match actix_http::ws::verify_handshake(req.head()) {
        Err(error) => error.error_response(),
        // Unreachable in practice: such a request goes to `serve_upgrade`.
        Ok(()) => AppError::Invalid("expected a WebSocket upgrade".into()).error_response(),
    }
}

/// The `error` frame of an error (the WebSocket side of `error.rs`'s one
/// conversion: internal details are logged, never sent).
pub fn error_frame(reference: Option<&str>, error: &AppError) -> bytestring::ByteString {
    if let AppError::Internal(source) = error {
        tracing::error!(error = %format!("{source:#}"), "frame failed");
    }
    crate::domain::wire::ServerFrame::Error {
        reference,
        code: error.code(),
        message: error.to_string(),
        retry_after_ms: error.retry_after_ms(),
    }
    .encode()
}
