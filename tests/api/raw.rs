//! A raw WebSocket client over a plain TCP socket, for clients that
//! misbehave: one with a tiny receive window that does not read (the
//! honest non-reader), one that writes hundreds of frames in one go, one
//! that sees exactly how the connection ended (a close code, or 1006).

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::helpers::{masked_text_frame, TestServer};

pub struct RawWs {
    tcp: TcpStream,
    /// Bytes read but not yet parsed into frames.
    buffer: Vec<u8>,
}

/// How a raw socket's reading ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// A close frame with this code, then the end of the stream.
    Closed(u16),
    /// The stream ended (or was reset) without a close frame: a browser's 1006.
    Abnormal,
    /// Nothing ended within the wait.
    StillOpen,
}

impl RawWs {
    /// Opens `/v1/ws` with a receive buffer of `receive_buffer` bytes (set
    /// before connecting, so the advertised window stays that small).
    pub async fn connect(server: &TestServer, receive_buffer: u32) -> RawWs {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(receive_buffer).unwrap();
        let mut tcp = socket.connect(server.addr()).await.expect("connect");
        let request = format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            server.addr()
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut buffer = Vec::new();
        let head_end = loop {
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut chunk))
                .await
                .expect("timed out waiting for the 101")
                .expect("read the 101");
            assert!(n > 0, "closed instead of upgrading");
            buffer.extend_from_slice(&chunk[..n]);
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade answered {head}");
        buffer.drain(..head_end);
        RawWs { tcp, buffer }
    }

    /// Writes `frames` as masked text frames in one write.
    pub async fn send_all(&mut self, frames: &[String]) {
        let bytes: Vec<u8> = frames
            .iter()
            .flat_map(|frame| masked_text_frame(frame.as_bytes()))
            .collect();
        self.tcp.write_all(&bytes).await.expect("write frames");
    }

    pub async fn send(&mut self, frame: &Value) {
        self.send_all(&[frame.to_string()]).await;
    }

    /// Reads text frames until the next one `matches`, which is returned.
    pub async fn recv_until(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.next_frame(deadline).await {
                Some(Frame::Text(frame)) if matches(&frame) => return frame,
                Some(Frame::Text(_)) => {}
                Some(Frame::Close(code)) => panic!("closed ({code}) while waiting for {what}"),
                None => panic!("no {what} in time"),
            }
        }
    }

    /// Reads everything until the connection ends (or `within` passes):
    /// the text frames, and how it ended.
    pub async fn read_to_end(&mut self, within: Duration) -> (Vec<Value>, Ending) {
        let deadline = Instant::now() + within;
        let mut frames = Vec::new();
        loop {
            match self.next_frame(deadline).await {
                Some(Frame::Text(frame)) => frames.push(frame),
                Some(Frame::Close(code)) => {
                    // A clean close: the server's FIN follows, not a reset.
                    let mut rest = [0u8; 1024];
                    let after = tokio::time::timeout_at(deadline, self.tcp.read(&mut rest)).await;
                    let ending = match after {
                        Ok(Ok(0)) => Ending::Closed(code),
                        other => panic!("after close {code}: {other:?} instead of an orderly end"),
                    };
                    return (frames, ending);
                }
                None if Instant::now() >= deadline => return (frames, Ending::StillOpen),
                None => return (frames, Ending::Abnormal),
            }
        }
    }

    /// The next data frame (pings and pongs skipped); `None` when the
    /// stream ended, failed, or `deadline` passed.
    async fn next_frame(&mut self, deadline: Instant) -> Option<Frame> {
        loop {
            if let Some((frame, used)) = parse_frame(&self.buffer) {
                self.buffer.drain(..used);
                match frame {
                    Some(frame) => return Some(frame),
                    None => continue,
                }
            }
            let mut chunk = vec![0u8; 65536];
            match tokio::time::timeout_at(deadline, self.tcp.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

enum Frame {
    Text(Value),
    Close(u16),
}

/// One unmasked server frame from the front of `bytes`: the frame (`None`
/// for control frames skipped) and the bytes it used; `None` when
/// incomplete.
fn parse_frame(bytes: &[u8]) -> Option<(Option<Frame>, usize)> {
    if bytes.len() < 2 {
        return None;
    }
    let opcode = bytes[0] & 0x0f;
    let (len, header) = match bytes[1] & 0x7f {
        126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
        127 if bytes.len() >= 10 => (
            u64::from_be_bytes(bytes[2..10].try_into().unwrap()) as usize,
            10,
        ),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if bytes.len() < header + len {
        return None;
    }
    let payload = &bytes[header..header + len];
    let frame = match opcode {
        1 => Some(Frame::Text(
            serde_json::from_slice(payload).expect("text frames are JSON"),
        )),
        8 => Some(Frame::Close(if payload.len() >= 2 {
            u16::from_be_bytes([payload[0], payload[1]])
        } else {
            1005
        })),
        _ => None,
    };
    Some((frame, header + len))
}
