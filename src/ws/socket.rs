//! The upgraded socket once the HTTP/1 dispatcher has let go of it.
//!
//! Frames are read into a buffer that exists only while a frame is
//! incomplete, and written straight from the bytes the session encoded:
//! an idle connection holds no buffer at all. (Inside actix-http's
//! dispatcher each connection kept two 8 KiB buffers for its whole life,
//! two thirds of the memory of an idle session; see BENCHMARKS.md.)

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use actix_codec::Decoder;
use actix_http::ws::{Codec, Frame, Message, ProtocolError};
use actix_rt::net::TcpStream;
use bytes::{Buf, Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::Stream;

/// How much one read asks for. Larger frames take several reads; what
/// matters is that nothing is held between frames.
const READ_CHUNK: usize = 8192;

/// The client's frames, decoded as they complete. Reads only when no whole
/// frame is buffered, so a client that sends faster than its session
/// handles frames meets TCP flow control instead of growing a buffer.
pub struct FrameReader {
    socket: Rc<TcpStream>,
    buffer: BytesMut,
    codec: Codec,
    closed: bool,
}

impl FrameReader {
    /// `received` is what the dispatcher had already read past the
    /// upgrade request (a client may send its first frame without waiting
    /// for the 101).
    pub fn new(socket: Rc<TcpStream>, received: BytesMut, max_frame_bytes: usize) -> Self {
        FrameReader {
            socket,
            // Copied so that the dispatcher's 8 KiB buffer is freed.
            buffer: BytesMut::from(&received[..]),
            codec: Codec::new().max_size(max_frame_bytes),
            closed: false,
        }
    }

    fn fail(&mut self, error: ProtocolError) -> Poll<Option<Result<Message, ProtocolError>>> {
        self.closed = true;
        self.buffer = BytesMut::new();
        Poll::Ready(Some(Err(error)))
    }
}

impl Stream for FrameReader {
    type Item = Result<Message, ProtocolError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match this.codec.decode(&mut this.buffer) {
                Ok(Some(frame)) => {
                    if this.buffer.is_empty() {
                        // Let go of the read buffer: the frame keeps what
                        // it needs and the allocation goes with it.
                        this.buffer = BytesMut::new();
                    }
                    return Poll::Ready(Some(message(frame)));
                }
                Ok(None) => {}
                Err(error) => return this.fail(error),
            }
            if this.closed {
                return Poll::Ready(None);
            }
            if let Err(error) = ready!(this.socket.poll_read_ready(cx)) {
                return this.fail(ProtocolError::Io(error));
            }
            let read = if this.buffer.is_empty() {
                // Between frames: read onto the stack and keep only what
                // arrived, so a wake-up that finds nothing allocates nothing.
                let mut chunk = [0u8; READ_CHUNK];
                this.socket.try_read(&mut chunk).inspect(|&n| {
                    this.buffer = BytesMut::from(&chunk[..n]);
                })
            } else {
                this.buffer.reserve(READ_CHUNK);
                this.socket.try_read_buf(&mut this.buffer)
            };
            match read {
                Ok(0) => this.closed = true,
                Ok(_) => {}
                // Readiness was stale; the next `poll_read_ready` waits.
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return this.fail(ProtocolError::Io(error)),
            }
        }
    }
}

fn message(frame: Frame) -> Result<Message, ProtocolError> {
    Ok(match frame {
        Frame::Text(data) => Message::Text(ByteString::try_from(data).map_err(|_| {
            ProtocolError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                "text frame is not UTF-8",
            ))
        })?),
        Frame::Binary(data) => Message::Binary(data),
        Frame::Ping(data) => Message::Ping(data),
        Frame::Pong(data) => Message::Pong(data),
        Frame::Close(reason) => Message::Close(reason),
        Frame::Continuation(item) => Message::Continuation(item),
    })
}

pin_project_lite::pin_project! {
    /// Writes what the session encodes, in order, until the session ends
    /// or the peer goes away. While a write waits for the client to read,
    /// the session is not polled: its mailbox fills and the rooms drop it
    /// as a slow consumer (see `session::offer`).
    ///
    /// A hand-written future rather than an `async fn`: an async fn keeps
    /// its argument and the pinned local it moves into side by side, and
    /// the session's context is most of an idle connection's memory.
    pub struct SocketWriter<S> {
        #[pin]
        outgoing: S,
        socket: Rc<TcpStream>,
        unsent: Bytes,
    }
}

impl<S> SocketWriter<S> {
    pub fn new(socket: Rc<TcpStream>, outgoing: S) -> Self {
        SocketWriter {
            outgoing,
            socket,
            unsent: Bytes::new(),
        }
    }
}

impl<S, E> Future for SocketWriter<S>
where
    S: Stream<Item = Result<Bytes, E>>,
    E: std::fmt::Display,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            while !this.unsent.is_empty() {
                if let Err(error) = ready!(this.socket.poll_write_ready(cx)) {
                    tracing::debug!(%error, "websocket peer gone");
                    return Poll::Ready(());
                }
                match this.socket.try_write(this.unsent) {
                    Ok(written) if written == this.unsent.len() => {
                        // Not `advance`: an empty `Bytes` would still hold
                        // the frames' allocation while the socket idles.
                        *this.unsent = Bytes::new();
                    }
                    Ok(written) => this.unsent.advance(written),
                    // Readiness was stale; the next `poll_write_ready` waits.
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(error) => {
                        tracing::debug!(%error, "websocket peer gone");
                        return Poll::Ready(());
                    }
                }
            }
            match ready!(this.outgoing.as_mut().poll_next(cx)) {
                Some(Ok(chunk)) => *this.unsent = chunk,
                Some(Err(error)) => {
                    tracing::warn!(%error, "websocket frame could not be encoded");
                    return Poll::Ready(());
                }
                None => return Poll::Ready(()),
            }
        }
    }
}
