//! A minimal RFC 6455 client for the load generator: the upgrade request,
//! masked client frames, unmasked server frames parsed in place from one
//! growing read buffer (no allocation per frame, many frames per read).
//!
//! The read half and the write half live in different tasks: a reader loop
//! per connection, and a pacer that writes sends for many connections.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::rc::Rc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use mixroom_testkit::frames::{encode_client_frame, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};

/// What the reader got.
pub enum Event {
    /// A text frame; its bytes are `reader.text(range)` until the next read.
    Text(Range<usize>),
    /// The server closed the socket with this code (0: none given).
    Closed(u16),
}

pub struct WsReader {
    half: OwnedReadHalf,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    writer: Rc<WsWriter>,
}

pub struct WsWriter {
    half: OwnedWriteHalf,
    /// Frames waiting while another task's write is in progress.
    pending: RefCell<Vec<u8>>,
    busy: Cell<bool>,
    mask_state: Cell<u32>,
}

/// Opens a WebSocket to `path` on a loopback address. `buf_size` is the
/// initial read buffer (it grows for larger frames).
pub async fn connect(
    addr: SocketAddr,
    path: &str,
    buf_size: usize,
    seed: u32,
) -> io::Result<(WsReader, Rc<WsWriter>)> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let key = websocket_key(seed);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = vec![0u8; buf_size.max(512)];
    let mut end = 0;
    let head_len = loop {
        if end == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = stream.read(&mut buf[end..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during the upgrade",
            ));
        }
        end += n;
        if let Some(i) = memchr::memmem::find(&buf[..end], b"\r\n\r\n") {
            break i + 4;
        }
        if end > 16 * 1024 {
            return Err(io::Error::other("upgrade response too long"));
        }
    };
    if !buf.starts_with(b"HTTP/1.1 101") {
        let status = String::from_utf8_lossy(&buf[..head_len.min(200)]).into_owned();
        return Err(io::Error::other(format!("upgrade refused: {status}")));
    }
    let (read_half, write_half) = stream.into_split();
    let writer = Rc::new(WsWriter {
        half: write_half,
        pending: RefCell::new(Vec::new()),
        busy: Cell::new(false),
        mask_state: Cell::new(seed | 1),
    });
    let reader = WsReader {
        half: read_half,
        buf,
        start: head_len,
        end,
        writer: writer.clone(),
    };
    Ok((reader, writer))
}

/// 16 bytes from a seed, base64: the server only checks it is there.
fn websocket_key(seed: u32) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut state = seed.wrapping_mul(2_654_435_761) | 1;
    let mut key = String::with_capacity(24);
    for _ in 0..21 {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        key.push(ALPHABET[(state % 64) as usize] as char);
    }
    // 16 bytes encode to 22 characters and "==": the last character carries
    // 2 bits, so it must be one of A, Q, g, w.
    key.push(b"AQgw"[(state % 4) as usize] as char);
    key.push_str("==");
    key
}

impl WsReader {
    pub fn text(&self, range: Range<usize>) -> &[u8] {
        &self.buf[range]
    }

    /// The next text frame. Pings are answered here; pongs and binary
    /// frames are skipped.
    pub async fn next(&mut self) -> io::Result<Event> {
        loop {
            if let Some((opcode, header, len)) = parse_header(&self.buf[self.start..self.end]) {
                let total = header + len;
                if self.end - self.start >= total {
                    let payload = self.start + header..self.start + total;
                    self.start += total;
                    match opcode {
                        OP_TEXT => return Ok(Event::Text(payload)),
                        OP_CLOSE => {
                            let p = &self.buf[payload];
                            let code = if p.len() >= 2 {
                                u16::from_be_bytes([p[0], p[1]])
                            } else {
                                0
                            };
                            return Ok(Event::Closed(code));
                        }
                        OP_PING => {
                            let body = self.buf[payload].to_vec();
                            self.writer.send(OP_PONG, &body).await?;
                        }
                        _ => {}
                    }
                    continue;
                }
                // Make room for the whole frame.
                if self.buf.len() - self.start < total {
                    self.compact();
                    if self.buf.len() < total {
                        self.buf.resize(total.next_power_of_two(), 0);
                    }
                }
            }
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            } else if self.end == self.buf.len() {
                self.compact();
                if self.end == self.buf.len() {
                    self.buf.resize(self.buf.len() * 2, 0);
                }
            }
            let n = self.half.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return Ok(Event::Closed(0));
            }
            self.end += n;
        }
    }

    fn compact(&mut self) {
        self.buf.copy_within(self.start..self.end, 0);
        self.end -= self.start;
        self.start = 0;
    }
}

/// (opcode, header length, payload length) once the header is complete.
fn parse_header(data: &[u8]) -> Option<(u8, usize, usize)> {
    if data.len() < 2 {
        return None;
    }
    let opcode = data[0] & 0x0F;
    let masked = data[1] & 0x80 != 0;
    let mask_len = if masked { 4 } else { 0 };
    let (header, len) = match data[1] & 0x7F {
        126 => {
            if data.len() < 4 {
                return None;
            }
            (4, u16::from_be_bytes([data[2], data[3]]) as usize)
        }
        127 => {
            if data.len() < 10 {
                return None;
            }
            let mut n = [0u8; 8];
            n.copy_from_slice(&data[2..10]);
            (10, u64::from_be_bytes(n) as usize)
        }
        n => (2, n as usize),
    };
    Some((opcode, header + mask_len, len))
}

impl WsWriter {
    pub async fn send_text(&self, payload: &[u8]) -> io::Result<()> {
        self.send(OP_TEXT, payload).await
    }

    /// Appends one masked frame; the task that finds no write in progress
    /// writes everything pending (so frames of two tasks never interleave).
    async fn send(&self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        {
            let mut state = self.mask_state.get();
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            self.mask_state.set(state);
            let mut out = self.pending.borrow_mut();
            encode_client_frame(&mut out, opcode, payload, state.to_be_bytes());
        }
        if self.busy.get() {
            return Ok(());
        }
        self.busy.set(true);
        let result = self.write_pending().await;
        self.busy.set(false);
        result
    }

    async fn write_pending(&self) -> io::Result<()> {
        let mut data = Vec::new();
        loop {
            std::mem::swap(&mut data, &mut *self.pending.borrow_mut());
            if data.is_empty() {
                // Keep the allocation for the next frames.
                std::mem::swap(&mut data, &mut *self.pending.borrow_mut());
                return Ok(());
            }
            let mut written = 0;
            while written < data.len() {
                match self.half.try_write(&data[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.half.writable().await?;
                    }
                    Err(e) => return Err(e),
                }
            }
            data.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers() {
        assert_eq!(parse_header(&[0x81, 5]), Some((1, 2, 5)));
        assert_eq!(parse_header(&[0x81, 126, 1, 0]), Some((1, 4, 256)));
        assert_eq!(parse_header(&[0x81, 126, 1]), None);
        assert_eq!(parse_header(&[0x88, 0x82]), Some((8, 6, 2)));
    }

    #[test]
    fn keys_are_base64_of_16_bytes() {
        let key = websocket_key(7);
        assert_eq!(key.len(), 24);
        assert!(key.ends_with("=="));
    }
}
