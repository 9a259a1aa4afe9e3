//! Outbound bytes: what the session's context encodes, written to the
//! socket in order, bounded in bytes and by a write deadline.
//!
//! Bytes are written straight from the chunks the context produced: an
//! idle socket holds no buffer and no timer.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use actix_codec::Encoder;
use actix_http::ws::{CloseCode, CloseReason, Codec, Message};
use actix_rt::net::TcpStream;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

use crate::metrics::Metrics;

/// The bounds of one socket's outgoing side.
#[derive(Clone, Copy, Debug)]
pub struct WriteLimits {
    /// Queued bytes that make no progress for this long: the peer is gone
    /// or stopped reading, and the socket is closed.
    pub timeout: Duration,
    /// Bytes waiting for the peer; more closes the socket with 1013.
    pub max_queued_bytes: usize,
}

/// After the close frame: how long the peer's unread input is drained
/// while waiting for it to close its side. Closing a socket with unread
/// input makes the kernel send RST, and the peer may then lose the close
/// frame it had not read yet (it sees 1006).
const LINGER: Duration = Duration::from_secs(2);

/// At most this many queued chunks go into one `writev`.
const MAX_SLICES: usize = 32;

pin_project_lite::pin_project! {
    /// Runs one socket's session and writes what it encodes, in order.
    ///
    /// The session is polled whether or not a write is waiting, so its
    /// timers (heartbeat, auth deadline, token expiry) and its mailbox
    /// (a room's 1013) keep working while the client does not read; what
    /// it produces meanwhile waits here, bounded in bytes. Writes that
    /// make no progress for `WriteLimits::timeout` end the socket.
    ///
    /// Once the session has ended (its close frame being the last thing it
    /// wrote), the queue is flushed, the write side shut down, and the
    /// peer's input drained until it closes too or `LINGER` passes.
    ///
    /// A hand-written future rather than an `async fn`: an async fn keeps
    /// its argument and the pinned local it moves into side by side, and
    /// the session's context is most of an idle connection's memory.
    pub struct SocketWriter<S> {
        #[pin]
        outgoing: Option<S>,
        socket: Rc<TcpStream>,
        queue: VecDeque<Bytes>,
        queued: usize,
        // When the queue last made progress (or became non-empty).
        progress: Instant,
        // Armed only while bytes wait or while lingering: an idle socket
        // holds no timer.
        deadline: Option<Pin<Box<Sleep>>>,
        // The write side is shut down; the peer's input is being drained.
        shut_down: bool,
        limits: WriteLimits,
        metrics: Arc<Metrics>,
    }
}

impl<S> SocketWriter<S> {
    pub fn new(
        socket: Rc<TcpStream>,
        outgoing: S,
        limits: WriteLimits,
        metrics: Arc<Metrics>,
    ) -> Self {
        SocketWriter {
            outgoing: Some(outgoing),
            socket,
            queue: VecDeque::new(),
            queued: 0,
            progress: Instant::now(),
            deadline: None,
            shut_down: false,
            limits,
            metrics,
        }
    }
}

/// A close frame as the server writes it (unmasked).
fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut buffer = BytesMut::new();
    let close = Message::Close(Some(CloseReason {
        code: CloseCode::from(code),
        description: Some(reason.to_owned()),
    }));
    // Encoding a close frame into a buffer cannot fail.
    let _ = Codec::new().encode(close, &mut buffer);
    buffer.freeze()
}

/// Whether `deadline` (re-armed at `at`) has passed.
fn expired(deadline: &mut Option<Pin<Box<Sleep>>>, at: Instant, cx: &mut Context<'_>) -> bool {
    let sleep = deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
    if sleep.deadline() != at {
        sleep.as_mut().reset(at);
    }
    sleep.as_mut().poll(cx).is_ready()
}

enum Progress {
    /// Everything queued was written.
    Flushed,
    /// The socket takes no more for now (a wake-up is registered).
    Blocked,
    /// The peer is gone.
    Gone,
}

impl<S, E> SocketWriter<S>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    /// Takes everything the session has produced, running its handlers and
    /// timers on the way. Returns whether the session is still running.
    fn pull(self: Pin<&mut Self>, cx: &mut Context<'_>) -> bool {
        let mut this = self.project();
        let ended = loop {
            let Some(outgoing) = this.outgoing.as_mut().as_pin_mut() else {
                return false;
            };
            match outgoing.poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    if this.queue.is_empty() {
                        *this.progress = Instant::now();
                    }
                    *this.queued += chunk.len();
                    this.queue.push_back(chunk);
                    if *this.queued > this.limits.max_queued_bytes {
                        // The client stopped reading: the session ends
                        // now (its slots are freed), the close goes last.
                        this.metrics.slow_consumers_dropped.inc();
                        let close = close_frame(
                            crate::domain::close::SLOW_CONSUMER,
                            "not reading; reconnect and resume with since",
                        );
                        *this.queued += close.len();
                        this.queue.push_back(close);
                        break None;
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    break Some(format!("websocket frame could not be encoded: {error}"))
                }
                Poll::Ready(None) => break None,
                Poll::Pending => return true,
            }
        };
        if let Some(error) = ended {
            tracing::warn!(%error);
        }
        // Dropping the context stops the session actor.
        this.outgoing.set(None);
        false
    }

    /// Writes as much of the queue as the socket takes.
    fn flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Progress {
        let this = self.project();
        while !this.queue.is_empty() {
            match this.socket.poll_write_ready(cx) {
                Poll::Pending => return Progress::Blocked,
                Poll::Ready(Err(error)) => {
                    tracing::debug!(%error, "websocket peer gone");
                    return Progress::Gone;
                }
                Poll::Ready(Ok(())) => {}
            }
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            for (slice, chunk) in slices.iter_mut().zip(this.queue.iter()) {
                *slice = IoSlice::new(chunk);
                count += 1;
            }
            match this.socket.try_write_vectored(&slices[..count]) {
                Ok(mut written) => {
                    *this.progress = Instant::now();
                    *this.queued -= written;
                    while written > 0 {
                        let Some(front) = this.queue.front_mut() else {
                            break;
                        };
                        if written >= front.len() {
                            written -= front.len();
                            this.queue.pop_front();
                        } else {
                            front.advance(written);
                            written = 0;
                        }
                    }
                }
                // Readiness was stale; the next `poll_write_ready` waits.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => {
                    tracing::debug!(%error, "websocket peer gone");
                    return Progress::Gone;
                }
            }
        }
        // Not kept: an empty queue would still hold its allocation while
        // the socket idles.
        *this.queue = VecDeque::new();
        Progress::Flushed
    }

    /// After the write side is shut down: reads and discards until the
    /// peer closes. Ready when it did (or the socket failed).
    fn drain_input(&self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if ready!(self.socket.poll_read_ready(cx)).is_err() {
                return Poll::Ready(());
            }
            let mut sink = [0u8; 4096];
            match self.socket.try_read(&mut sink) {
                Ok(0) => return Poll::Ready(()),
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Poll::Ready(()),
            }
        }
    }
}

impl<S, E> Future for SocketWriter<S>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let running = self.as_mut().pull(cx);
        let progress = self.as_mut().flush(cx);
        let this = self.as_mut().project();
        match progress {
            Progress::Gone => Poll::Ready(()),
            Progress::Blocked => {
                let at = *this.progress + this.limits.timeout;
                if expired(this.deadline, at, cx) {
                    this.metrics
                        .connections_refused
                        .with_label_values(&["write_timeout"])
                        .inc();
                    tracing::debug!("websocket writes made no progress; closing");
                    // Abortive close: the kernel drops the unsent bytes
                    // at once instead of keeping them for a peer that
                    // does not read.
                    let _ = socket2::SockRef::from(&**this.socket).set_linger(Some(Duration::ZERO));
                    return Poll::Ready(());
                }
                Poll::Pending
            }
            Progress::Flushed if running => {
                *this.deadline = None;
                Poll::Pending
            }
            Progress::Flushed => {
                if !*this.shut_down {
                    *this.shut_down = true;
                    *this.deadline = None;
                    *this.progress = Instant::now();
                    let _ =
                        socket2::SockRef::from(&**this.socket).shutdown(std::net::Shutdown::Write);
                }
                let at = *this.progress + LINGER.min(this.limits.timeout);
                if expired(this.deadline, at, cx) {
                    return Poll::Ready(());
                }
                self.drain_input(cx)
            }
        }
    }
}
