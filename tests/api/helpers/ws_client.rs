//! One WebSocket connection as the web app holds it: frames it reads while
//! waiting for another one are kept, never lost, and every wait has a
//! budget whose failure says what was expected and what came instead.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{masked_text_frame, TestServer, TestUser};

/// Budget for one expected frame.
const FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// Budget for an expected close (token expiry and shutdown take a while).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(15);

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What ended a wait for a frame.
enum Interrupt {
    Timeout,
    Closed(Option<(u16, String)>),
    Ended,
    Failed(String),
}

impl fmt::Display for Interrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Interrupt::Timeout => write!(f, "nothing arrived in time"),
            Interrupt::Closed(Some((code, reason))) => {
                write!(f, "the server closed the socket with {code} {reason:?}")
            }
            Interrupt::Closed(None) => write!(f, "the server closed the socket without a code"),
            Interrupt::Ended => write!(f, "the connection ended without a close frame"),
            Interrupt::Failed(error) => write!(f, "the connection failed: {error}"),
        }
    }
}

/// One WebSocket connection, as the web app holds it.
pub struct WsClient {
    socket: Socket,
    /// Frames read while waiting for another one; `recv*` serve these first,
    /// so nothing the server sent is lost.
    pending: VecDeque<Value>,
    /// Who this is, for failure messages.
    label: String,
    next_ref: u32,
}

impl WsClient {
    /// Opens the socket without authenticating.
    pub async fn connect(server: &TestServer) -> WsClient {
        let (socket, _) = tokio::time::timeout(
            FRAME_TIMEOUT,
            tokio_tungstenite::connect_async(server.ws_url()),
        )
        .await
        .expect("timed out opening the WebSocket")
        .expect("open the WebSocket");
        WsClient {
            socket,
            pending: VecDeque::new(),
            label: "unauthenticated socket".to_owned(),
            next_ref: 0,
        }
    }

    /// Opens the socket as an impatient client does: the upgrade request
    /// and the `auth` frame leave in one write, before any answer, so the
    /// server reads the frame together with the request. Returns the
    /// `welcome`.
    pub async fn connect_pipelined(server: &TestServer, user: &TestUser) -> (WsClient, Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = TcpStream::connect(server.addr()).await.expect("connect");
        let mut bytes = format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            server.addr()
        )
        .into_bytes();
        let auth = json!({"type": "auth", "token": user.token}).to_string();
        bytes.extend(masked_text_frame(auth.as_bytes()));
        tcp.write_all(&bytes).await.expect("send upgrade and auth");

        let mut received = Vec::new();
        let head_end = loop {
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(FRAME_TIMEOUT, tcp.read(&mut chunk))
                .await
                .expect("timed out waiting for the 101")
                .expect("read the 101");
            assert!(
                n > 0,
                "the server closed the connection instead of upgrading"
            );
            received.extend_from_slice(&chunk[..n]);
            if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
        };
        let head = String::from_utf8_lossy(&received[..head_end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade answered {head}");
        let socket = WebSocketStream::from_partially_read(
            MaybeTlsStream::Plain(tcp),
            received[head_end..].to_vec(),
            tokio_tungstenite::tungstenite::protocol::Role::Client,
            None,
        )
        .await;
        let mut ws = WsClient {
            socket,
            pending: VecDeque::new(),
            label: format!("{}'s pipelined socket", user.name),
            next_ref: 0,
        };
        let welcome = ws.recv_type("welcome").await;
        (ws, welcome)
    }

    /// Opens the socket and authenticates as `user`.
    pub async fn connect_as(server: &TestServer, user: &TestUser) -> WsClient {
        let mut ws = WsClient::connect(server).await;
        ws.label = format!("{}'s socket", user.name);
        let welcome = ws.authenticate(&user.token).await;
        assert_eq!(welcome["user_id"], user.id.as_str(), "welcome: {welcome}");
        ws
    }

    /// Sends the `auth` frame and returns the `welcome`.
    pub async fn authenticate(&mut self, token: &str) -> Value {
        self.send_json(json!({"type": "auth", "token": token}))
            .await;
        self.recv_type("welcome").await
    }

    pub async fn send_json(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        tokio::time::timeout(
            FRAME_TIMEOUT,
            self.socket.send(Message::text(text.to_owned())),
        )
        .await
        .unwrap_or_else(|_| panic!("{}: timed out sending a frame", self.label))
        .unwrap_or_else(|e| panic!("{}: sending a frame failed: {e}", self.label));
    }

    /// The next text frame as JSON.
    pub async fn recv(&mut self) -> Value {
        if let Some(frame) = self.pending.pop_front() {
            return frame;
        }
        let deadline = Instant::now() + FRAME_TIMEOUT;
        match self.read_frame(deadline).await {
            Ok(frame) => frame,
            Err(interrupt) => panic!("{}: waiting for any frame, {interrupt}", self.label),
        }
    }

    /// The next frame of type `frame_type`; other frames stay queued.
    pub async fn recv_type(&mut self, frame_type: &str) -> Value {
        self.recv_matching(&format!("a `{frame_type}` frame"), |frame| {
            frame["type"] == frame_type
        })
        .await
    }

    /// The next frame `matches` accepts (`what` describes it for failures);
    /// other frames stay queued for later calls.
    pub async fn recv_matching(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        if let Some(index) = self.pending.iter().position(&matches) {
            return self.pending.remove(index).expect("index from position");
        }
        let deadline = Instant::now() + FRAME_TIMEOUT;
        loop {
            match self.read_frame(deadline).await {
                Ok(frame) if matches(&frame) => return frame,
                Ok(frame) => self.pending.push_back(frame),
                Err(interrupt) => panic!(
                    "{}: waiting {FRAME_TIMEOUT:?} for {what}, {interrupt}; other frames received: {:?}",
                    self.label, self.pending
                ),
            }
        }
    }

    /// Asserts that no frame of the given types arrives within `ms`.
    pub async fn expect_silence(&mut self, ms: u64, frame_types: &[&str]) {
        let unwanted = |frame: &Value| frame_types.iter().any(|t| frame["type"] == *t);
        if let Some(frame) = self.pending.iter().find(|frame| unwanted(frame)) {
            panic!(
                "{}: expected no {frame_types:?} frame, got {frame}",
                self.label
            );
        }
        let deadline = Instant::now() + Duration::from_millis(ms);
        loop {
            match self.read_frame(deadline).await {
                Ok(frame) if unwanted(&frame) => {
                    panic!(
                        "{}: expected no {frame_types:?} frame, got {frame}",
                        self.label
                    )
                }
                Ok(frame) => self.pending.push_back(frame),
                Err(Interrupt::Timeout) => return,
                Err(interrupt) => panic!(
                    "{}: expected the socket to stay open and quiet, but {interrupt}",
                    self.label
                ),
            }
        }
    }

    /// The next frame, or the close (code and reason) that ended the socket.
    pub async fn recv_any_or_close(&mut self) -> Result<Value, (u16, String)> {
        if let Some(frame) = self.pending.pop_front() {
            return Ok(frame);
        }
        match self.read_frame(Instant::now() + CLOSE_TIMEOUT).await {
            Ok(frame) => Ok(frame),
            Err(Interrupt::Closed(Some(close))) => Err(close),
            Err(interrupt) => panic!(
                "{}: waiting for a frame or a close, {interrupt}",
                self.label
            ),
        }
    }

    /// Forgets frames kept while waiting for others (for long floods).
    pub fn drain_pending(&mut self) {
        self.pending.clear();
    }

    /// Waits for the server's close frame and returns its code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        loop {
            match self.read_frame(deadline).await {
                // Frames sent before the close are fine; keep them.
                Ok(frame) => self.pending.push_back(frame),
                Err(Interrupt::Closed(Some(close))) => return close,
                Err(interrupt) => panic!(
                    "{}: waiting {CLOSE_TIMEOUT:?} for a close frame with a code, {interrupt}; frames received: {:?}",
                    self.label, self.pending
                ),
            }
        }
    }

    /// The next text frame from the socket itself (not from `pending`),
    /// answering the server's pings on the way.
    async fn read_frame(&mut self, deadline: Instant) -> Result<Value, Interrupt> {
        loop {
            let Ok(next) = tokio::time::timeout_at(deadline, self.socket.next()).await else {
                return Err(Interrupt::Timeout);
            };
            match next {
                None => return Err(Interrupt::Ended),
                Some(Err(error)) => return Err(Interrupt::Failed(error.to_string())),
                Some(Ok(Message::Text(text))) => {
                    return Ok(serde_json::from_str(&text).unwrap_or_else(|e| {
                        panic!(
                            "{}: a text frame that is not JSON ({e}): {text}",
                            self.label
                        )
                    }))
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(Interrupt::Closed(
                        frame.map(|frame| (frame.code.into(), frame.reason.to_string())),
                    ))
                }
                Some(Ok(Message::Binary(bytes))) => {
                    panic!("{}: unexpected binary frame: {bytes:?}", self.label)
                }
                // Pings are answered by tungstenite itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            }
        }
    }

    /// Closes the socket the polite way, as a browser tab does.
    pub async fn disconnect(mut self) {
        let _ = tokio::time::timeout(FRAME_TIMEOUT, self.socket.close(None)).await;
        // Read until the server's close reply so the close is complete.
        let deadline = Instant::now() + FRAME_TIMEOUT;
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, self.socket.next()).await {}
    }

    /// Sends `frame` with a `ref` (its own, or a fresh one) and returns the
    /// reply: the next `reply_type` frame (carrying that ref, or none) or an
    /// `error` frame echoing that ref.
    pub async fn request(&mut self, mut frame: Value, reply_type: &str) -> Value {
        let reference = match frame.get("ref").and_then(Value::as_str) {
            Some(reference) => reference.to_owned(),
            None => {
                self.next_ref += 1;
                let reference = format!("ref-{}", self.next_ref);
                frame["ref"] = json!(reference);
                reference
            }
        };
        let what = format!("the reply to {frame}");
        self.send_json(frame).await;
        self.recv_matching(&what, |reply| {
            let ref_matches = reply["ref"] == reference.as_str();
            (reply["type"] == reply_type && (ref_matches || reply["ref"].is_null()))
                || (reply["type"] == "error" && ref_matches)
        })
        .await
    }

    /// `ping` → `pong`.
    pub async fn ping(&mut self) -> Value {
        let pong = self.request(json!({"type": "ping"}), "pong").await;
        assert_eq!(
            pong["type"], "pong",
            "{}: ping answered with {pong}",
            self.label
        );
        assert!(
            !pong["server_time"].is_null(),
            "pong without server_time: {pong}"
        );
        pong
    }

    /// Joins `room` and returns the `joined` frame.
    pub async fn join(&mut self, room: &str, since: Option<i64>) -> Value {
        let mut frame = json!({"type": "join", "room": room});
        if let Some(since) = since {
            frame["since"] = json!(since);
        }
        let joined = self.request(frame, "joined").await;
        assert_eq!(
            joined["type"], "joined",
            "{}: join {room}: {joined}",
            self.label
        );
        assert_eq!(joined["room"], room, "joined: {joined}");
        joined
    }

    /// A `history` frame request; returns the reply (`history` or `error`).
    pub async fn history(&mut self, room: &str, before: Option<i64>, limit: Option<u32>) -> Value {
        let mut frame = json!({"type": "history", "room": room});
        if let Some(before) = before {
            frame["before"] = json!(before);
        }
        if let Some(limit) = limit {
            frame["limit"] = json!(limit);
        }
        self.request(frame, "history").await
    }

    /// Sends a message without waiting (for pipelining); `ref` is the client_id.
    pub async fn send_message_frame(&mut self, room: &str, client_id: &str, body: &str) {
        self.send_json(json!({
            "type": "send",
            "room": room,
            "client_id": client_id,
            "body": body,
            "ref": client_id,
        }))
        .await;
    }

    /// The `ack` for `client_id`; panics on an error frame for it.
    pub async fn wait_ack(&mut self, client_id: &str) -> Value {
        let reply = self
            .recv_matching(&format!("the ack for {client_id}"), |frame| {
                (frame["type"] == "ack" && frame["client_id"] == client_id)
                    || (frame["type"] == "error" && frame["ref"] == client_id)
            })
            .await;
        assert_eq!(
            reply["type"], "ack",
            "{}: send {client_id} answered {reply}",
            self.label
        );
        reply
    }

    /// Sends a message and returns its `ack`.
    pub async fn send_msg(&mut self, room: &str, client_id: &str, body: &str) -> Value {
        self.send_message_frame(room, client_id, body).await;
        self.wait_ack(client_id).await
    }
}

/// The `seq`s of a history reply's messages, in the order given.
pub fn seqs(history: &Value) -> Vec<i64> {
    history["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("history without a messages array: {history}"))
        .iter()
        .map(|message| {
            message["seq"]
                .as_i64()
                .unwrap_or_else(|| panic!("message without seq: {message}"))
        })
        .collect()
}
