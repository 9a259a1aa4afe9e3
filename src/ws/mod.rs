//! The WebSocket endpoint `GET /v1/ws`: one [`session::WsSession`] actor per
//! socket.
//!
//! A WebSocket upgrade never reaches the actix-web app: actix-http hands
//! the request and the connection to [`serve_upgrade`] (the server's
//! upgrade service, see `app::serve`), which answers the handshake and
//! then runs the socket itself ([`socket`]). The session actor keeps
//! actix-web-actors' context for its mailbox and frame encoding. A plain
//! `GET /v1/ws` without an upgrade goes through the app to [`not_upgraded`].

mod joined;
pub mod session;
pub mod socket;

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use actix_codec::{Framed, FramedParts};
use actix_http::body::{BodySize, BoxBody, MessageBody};
use actix_http::header::HeaderMap;
use actix_http::{h1, Request, RequestHead, Response};
use actix_rt::net::TcpStream;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use actix_web_actors::ws::WebsocketContext;
use futures_util::SinkExt;

use actix::Addr;
use tokio_util::task::TaskTracker;

use crate::auth::TokenVerifier;
use crate::config::{LimitSettings, ServerSettings};
use crate::db::client_reads::ClientReads;
use crate::db::Db;
use crate::error::AppError;
use crate::limits::Limiters;
use crate::metrics::Metrics;
use crate::rooms::hub::Hub;
use crate::rooms::sequencer::Sequencer;

/// Bytes the kernel may hold for one socket on its way out (it doubles the
/// figure for its bookkeeping): plenty for any reader that keeps up.
const SEND_BUFFER: usize = 128 * 1024;

/// The path of the WebSocket endpoint (PROTOCOL.md).
pub const PATH: &str = "/v1/ws";

/// Browsers send `Origin`; with an allow-list configured, only the web
/// app's pages may open a socket with the user's token (no cross-site
/// WebSocket hijacking). Clients without `Origin` (servers, CLIs) pass.
fn check_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), AppError> {
    let Some(origin) = headers.get(actix_http::header::ORIGIN) else {
        return Ok(());
    };
    if allowed.is_empty() || allowed.iter().any(|a| a.as_bytes() == origin.as_bytes()) {
        Ok(())
    } else {
        Err(AppError::Forbidden("origin not allowed".into()))
    }
}

/// Admits an upgrade request (returning the client's address, for the
/// per-address limits) or refuses it with the HTTP response it gets.
fn admit(state: &SessionServices, head: &RequestHead) -> Result<Option<IpAddr>, Response<BoxBody>> {
    if head.uri.path() != PATH {
        let error = AppError::NotFound(format!("no WebSocket endpoint at {}", head.uri.path()));
        return Err(error.error_response().into());
    }
    actix_http::ws::verify_handshake(head)?;
    let client_ip = state.limiters.client_ip(head);
    if let Some(ip) = client_ip {
        state.limiters.check_connect(ip).map_err(|error| {
            state
                .metrics
                .rate_limited
                .with_label_values(&["connects"])
                .inc();
            error.error_response()
        })?;
    }
    check_origin(&head.headers, &state.server.allowed_origins)
        .map_err(|error| error.error_response())?;
    Ok(client_ip)
}

/// What sockets and their sessions use of the server: these handles,
/// not the whole application state (made once, in `app`).
pub struct SessionServices {
    pub server: ServerSettings,
    pub limits: LimitSettings,
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
pub async fn serve_upgrade(
    state: Arc<SessionServices>,
    request: Request,
    mut framed: Framed<TcpStream, h1::Codec>,
) -> Result<(), actix_web::Error> {
    let head = request.head();
    let client_ip = match admit(&state, head) {
        Ok(client_ip) => client_ip,
        // The connection closes after the refusal: the client asked for a
        // protocol switch, not for keep-alive.
        Err(refusal) => return send_response(&mut framed, refusal).await,
    };
    let accepted = actix_http::ws::handshake_response(head).finish();
    // The request's headers point into the dispatcher's 8 KiB read buffer
    // and sit in a pooled head: neither may outlive the handshake.
    drop(request);
    let (accepted, _) = accepted.into_parts();
    framed
        .send(h1::Message::Item((accepted, BodySize::None)))
        .await?;

    // Only the socket and any bytes read past the request go on; the
    // dispatcher's write buffer is dropped here.
    let FramedParts {
        io,
        read_buf: received,
        ..
    } = framed.into_parts();
    // A fixed kernel send buffer: the kernel would otherwise grow it up to
    // `tcp_wmem`'s maximum (4 MiB here) for a client that stopped reading,
    // and the write deadline would only start once all that had filled.
    let _ = socket2::SockRef::from(&io).set_send_buffer_size(SEND_BUFFER);
    let socket = Rc::new(io);
    let reader = socket::FrameReader::new(socket.clone(), received, state.server.max_frame_bytes);
    let sockets = state.sockets.clone();
    let limits = socket::WriteLimits {
        timeout: std::time::Duration::from_millis(state.server.write_timeout_ms),
        max_queued_bytes: state.limits.session_queue_bytes,
    };
    let metrics = state.metrics.clone();
    let session = session::WsSession::new(state, client_ip);
    // actix-web-actors reads frames from a byte stream it buffers without
    // a bound; it gets none, and the session reads from `reader` instead.
    let outgoing = WebsocketContext::with_factory(
        futures_util::stream::pending::<Result<bytes::Bytes, actix_http::error::PayloadError>>(),
        move |ctx| {
            use actix::AsyncContext;
            ctx.add_stream(reader);
            session
        },
    );
    // The socket runs as a task of its own so that the dispatcher's task
    // (9 KiB: the HTTP service's futures are laid out inline) ends here.
    actix_rt::spawn(
        sockets.track_future(socket::SocketWriter::new(socket, outgoing, limits, metrics)),
    );
    Ok(())
}

/// Writes a whole response on a connection that then closes.
async fn send_response(
    framed: &mut Framed<TcpStream, h1::Codec>,
    response: Response<BoxBody>,
) -> Result<(), actix_web::Error> {
    let (head, body) = response.into_parts();
    let body = body.try_into_bytes().unwrap_or_default();
    framed
        .feed(h1::Message::Item((
            head,
            BodySize::Sized(body.len() as u64),
        )))
        .await?;
    framed.feed(h1::Message::Chunk(Some(body))).await?;
    framed.send(h1::Message::Chunk(None)).await?;
    Ok(())
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
