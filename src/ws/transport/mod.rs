//! The socket transport of `/v1/ws`: everything between the TCP
//! connection and the session actor.
//!
//! A WebSocket upgrade never reaches the actix-web app: actix-http hands
//! the request and the connection to the server's upgrade service (see
//! `app::serve`), which lands in [`upgrade`]. From there the socket runs
//! outside the HTTP/1 dispatcher, as a task of its own. The interface:
//!
//! - admission ([`admit()`]): path, handshake, connect limit, Origin, in
//!   one list of checks (the place to add a policy for `/v1/ws`);
//! - inbound frames ([`reader::FrameReader`], added to the session as a
//!   stream of decoded messages, each frame within `max_frame_bytes`;
//!   [`Fragments`] puts continuation frames back together; [`close_for`]
//!   names the close a reading error ends the socket with);
//! - outbound bytes ([`writer::SocketWriter`]): what the session writes
//!   on its [`WebsocketContext`], bounded in bytes and by a deadline;
//!   [`close`] ends the session with a close frame.
//!
//! The session actor uses these names only; actix-web-actors stays
//! behind this module.

pub mod admit;
pub mod reader;
pub mod writer;

#[cfg(test)]
mod tests;

use std::rc::Rc;
use std::sync::Arc;

use actix::{Actor, AsyncContext, StreamHandler};
use actix_codec::{Framed, FramedParts};
use actix_http::body::{BodySize, BoxBody, MessageBody};
use actix_http::{h1, Request, Response};
use actix_rt::net::TcpStream;
use bytes::BytesMut;
use futures_util::SinkExt;
use tokio_util::task::TaskTracker;

pub use actix_http::ws::Item;
pub use actix_web_actors::ws::{CloseCode, CloseReason, Message, ProtocolError, WebsocketContext};
pub use admit::{admit, Admitted, Policy};
pub use reader::{close_for, Assembled, Fragments};
pub use writer::WriteLimits;

use super::SessionServices;
use crate::metrics::Metrics;

/// Bytes the kernel may hold for one socket on its way out (it doubles the
/// figure for its bookkeeping): plenty for any reader that keeps up.
const SEND_BUFFER: usize = 128 * 1024;

/// The bounds of one socket.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// A frame's payload (and a message put together from fragments)
    /// above this closes the socket with 1009.
    pub max_frame_bytes: usize,
    pub write: WriteLimits,
}

/// The frames a session actor takes from the client.
pub trait Session:
    Actor<Context = WebsocketContext<Self>> + StreamHandler<Result<Message, ProtocolError>>
{
}

impl<A> Session for A where
    A: Actor<Context = WebsocketContext<A>> + StreamHandler<Result<Message, ProtocolError>>
{
}

/// The upgrade service: admits the request (or answers the refusal and
/// lets the connection close), answers the handshake, and runs the socket
/// with the session `start` makes.
pub async fn upgrade<A: Session>(
    services: Arc<SessionServices>,
    request: Request,
    mut framed: Framed<TcpStream, h1::Codec>,
    start: impl FnOnce(Arc<SessionServices>, Admitted) -> A + 'static,
) -> Result<(), actix_web::Error> {
    let head = request.head();
    let policy = Policy {
        limiters: &services.limiters,
        metrics: &services.metrics,
        allowed_origins: &services.server.allowed_origins,
    };
    let admitted = match admit(&policy, head) {
        Ok(admitted) => admitted,
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
    let limits = Limits {
        max_frame_bytes: services.server.max_frame_bytes,
        write: WriteLimits {
            timeout: std::time::Duration::from_millis(services.server.write_timeout_ms),
            max_queued_bytes: services.limits.session_queue_bytes,
        },
    };
    let metrics = services.metrics.clone();
    let sockets = services.sockets.clone();
    let session = start(services, admitted);
    run(io, received, limits, metrics, &sockets, session);
    Ok(())
}

/// Runs an upgraded socket with `session` as a task of its own (tracked
/// by `sockets`): frames from `io` (after the bytes already `received`)
/// go to the session, what it writes goes out.
pub fn run<A: Session>(
    io: TcpStream,
    received: BytesMut,
    limits: Limits,
    metrics: Arc<Metrics>,
    sockets: &TaskTracker,
    session: A,
) {
    let socket = Rc::new(io);
    let reader = reader::FrameReader::new(socket.clone(), received, limits.max_frame_bytes);
    // The one place actix-web-actors meets the socket. Its context is
    // what the session needs (mailbox, timers, frame encoding into the
    // byte stream the writer takes), but it reads frames from a byte
    // stream it buffers without a bound. It is given a stream that never
    // yields, and the session gets its frames from `reader` instead,
    // which reads only when no whole frame is buffered.
    let outgoing = WebsocketContext::with_factory(
        futures_util::stream::pending::<Result<bytes::Bytes, actix_http::error::PayloadError>>(),
        move |ctx| {
            ctx.add_stream(reader);
            session
        },
    );
    // The socket runs as a task of its own so that the dispatcher's task
    // (9 KiB: the HTTP service's futures are laid out inline) ends here.
    actix_rt::spawn(sockets.track_future(writer::SocketWriter::new(
        socket,
        outgoing,
        limits.write,
        metrics,
    )));
}

/// Ends the session with a close frame (`None`: without a code). What it
/// wrote before goes first; the writer then shuts the socket down.
pub fn close<A: Session>(ctx: &mut WebsocketContext<A>, reason: Option<CloseReason>) {
    ctx.close(reason);
    actix::ActorContext::stop(ctx);
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
