//! Inbound frames: the client's bytes decoded into WebSocket messages,
//! each frame within the size limit, and text messages sent in
//! continuation frames put back together (`Fragments`).
//!
//! Frames are read into a buffer that exists only while a frame is
//! incomplete: an idle connection holds none. (Inside actix-http's
//! dispatcher each connection kept two 8 KiB buffers for its whole life,
//! two thirds of the memory of an idle session; see BENCHMARKS.md.)

use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use actix_codec::Decoder;
use actix_http::ws::{Codec, Frame, Item, Message, ProtocolError};
use actix_rt::net::TcpStream;
use bytes::BytesMut;
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
                    // A text frame that is not UTF-8 ends the stream
                    // like any other protocol error.
                    return match message(frame) {
                        Ok(message) => Poll::Ready(Some(Ok(message))),
                        Err(error) => this.fail(error),
                    };
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
        Frame::Text(data) => {
            Message::Text(ByteString::try_from(data).map_err(|_| {
                ProtocolError::Io(io::Error::new(io::ErrorKind::InvalidData, NotUtf8))
            })?)
        }
        Frame::Binary(data) => Message::Binary(data),
        Frame::Ping(data) => Message::Ping(data),
        Frame::Pong(data) => Message::Pong(data),
        Frame::Close(reason) => Message::Close(reason),
        Frame::Continuation(item) => Message::Continuation(item),
    })
}

/// A text frame whose payload is not UTF-8 (actix-http's codec does not
/// check): carried inside `ProtocolError::Io`, whose other errors are the
/// socket's own.
#[derive(Debug)]
struct NotUtf8;

impl std::fmt::Display for NotUtf8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("text frame is not UTF-8")
    }
}

impl std::error::Error for NotUtf8 {}

/// The close code and reason a reading error ends the socket with
/// (RFC 6455 7.4.1).
pub fn close_for(error: &ProtocolError) -> (u16, &'static str) {
    match error {
        ProtocolError::Overflow => (1009, "frame larger than the limit"),
        ProtocolError::Io(error) if error.get_ref().is_some_and(|inner| inner.is::<NotUtf8>()) => {
            (1007, "text frame is not UTF-8")
        }
        _ => (1002, "protocol error"),
    }
}

/// A text message sent in continuation frames, being put back together
/// within the same size limit as a single frame. (The codec already
/// refuses a continuation that was not started, or a new message inside
/// one: those are protocol errors.)
#[derive(Default)]
pub struct Fragments {
    buffer: Option<Vec<u8>>,
}

/// What one continuation frame completes.
#[derive(Debug, PartialEq, Eq)]
pub enum Assembled {
    /// Nothing yet (or the rest of a message already refused).
    Incomplete,
    /// A whole text message.
    Text(String),
    /// The first fragment of a binary message: refused, its other
    /// fragments are skipped.
    Binary,
    /// The message grew past the limit: the socket closes with 1009.
    TooLarge,
    /// The whole message is not UTF-8.
    NotUtf8,
}

impl Fragments {
    pub fn push(&mut self, item: Item, max_bytes: usize) -> Assembled {
        let (bytes, last) = match item {
            Item::FirstText(bytes) => {
                self.buffer = Some(Vec::new());
                (bytes, false)
            }
            Item::FirstBinary(_) => {
                self.buffer = None;
                return Assembled::Binary;
            }
            Item::Continue(bytes) => (bytes, false),
            Item::Last(bytes) => (bytes, true),
        };
        let Some(buffer) = self.buffer.as_mut() else {
            return Assembled::Incomplete;
        };
        buffer.extend_from_slice(&bytes);
        if buffer.len() > max_bytes {
            self.buffer = None;
            return Assembled::TooLarge;
        }
        if !last {
            return Assembled::Incomplete;
        }
        match String::from_utf8(self.buffer.take().unwrap_or_default()) {
            Ok(text) => Assembled::Text(text),
            Err(_) => Assembled::NotUtf8,
        }
    }
}
