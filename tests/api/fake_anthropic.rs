//! A stand-in for the Anthropic Messages API on 127.0.0.1: it records each
//! request (headers and JSON body) and answers with the next scripted
//! reply — a server-sent event stream shaped like the real API's (chunked,
//! `event:` + `data:` lines, pings included), an error status, a stream
//! cut off mid-answer, or no answer at all.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the server sent it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// Lower-cased names.
    pub headers: HashMap<String, String>,
    pub body: Value,
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub name: &'static str,
    pub data: Value,
}

fn event(name: &'static str, data: Value) -> SseEvent {
    SseEvent { name, data }
}

#[derive(Debug, Clone)]
pub enum FakeReply {
    /// 200 and these events, then the end of the body.
    Stream(Vec<SseEvent>),
    /// 200 and these events, then the connection drops mid-body.
    Cut(Vec<SseEvent>),
    /// An error status with the API's error body.
    Status(u16, Value),
    /// Reads the request and never answers.
    Hang,
}

pub struct FakeAnthropic {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
    accepting: tokio::task::JoinHandle<()>,
}

impl FakeAnthropic {
    pub async fn start(replies: Vec<FakeReply>) -> FakeAnthropic {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Anthropic server");
        let addr = listener.local_addr().expect("its address");
        let replies = Arc::new(Mutex::new(VecDeque::from(replies)));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (queue, log) = (replies, requests.clone());
        let accepting = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, queue.clone(), log.clone()));
            }
        });
        FakeAnthropic {
            addr,
            requests,
            accepting,
        }
    }

    /// What `ai.anthropic_base_url` must be.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeAnthropic {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn serve(
    mut socket: TcpStream,
    replies: Arc<Mutex<VecDeque<FakeReply>>>,
    requests: Arc<Mutex<Vec<RecordedRequest>>>,
) {
    let Some(request) = read_request(&mut socket).await else {
        return;
    };
    requests.lock().unwrap().push(request);
    let reply = replies.lock().unwrap().pop_front().unwrap_or_else(|| {
        FakeReply::Status(
            500,
            json!({"type": "error", "error": {"type": "api_error", "message": "no reply scripted"}}),
        )
    });
    let _ = write_reply(&mut socket, reply).await;
}

async fn read_request(socket: &mut TcpStream) -> Option<RecordedRequest> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let read = socket.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let path = request_line.next()?.to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_lowercase(), value.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let read = socket.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..read]);
    }
    Some(RecordedRequest {
        method,
        path,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}

async fn write_reply(socket: &mut TcpStream, reply: FakeReply) -> std::io::Result<()> {
    let (events, complete) = match reply {
        FakeReply::Status(status, body) => {
            let body = body.to_string();
            let head = format!(
                "HTTP/1.1 {status} Error\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            socket.write_all(head.as_bytes()).await?;
            socket.write_all(body.as_bytes()).await?;
            return socket.shutdown().await;
        }
        FakeReply::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            return Ok(());
        }
        FakeReply::Stream(events) => (events, true),
        FakeReply::Cut(events) => (events, false),
    };
    socket
        .write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n\
              cache-control: no-cache\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        )
        .await?;
    for event in events {
        let text = format!("event: {}\ndata: {}\n\n", event.name, event.data);
        socket
            .write_all(format!("{:x}\r\n{text}\r\n", text.len()).as_bytes())
            .await?;
        socket.flush().await?;
        // Separate writes, as a model produces them.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if complete {
        socket.write_all(b"0\r\n\r\n").await?;
        socket.shutdown().await
    } else {
        // The connection dies in the middle of the body.
        Ok(())
    }
}

fn message_start(input_tokens: u64) -> SseEvent {
    event(
        "message_start",
        json!({"type": "message_start", "message": {
            "id": "msg_fake", "type": "message", "role": "assistant", "content": [],
            "model": "claude-test", "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1}
        }}),
    )
}

fn ping() -> SseEvent {
    event("ping", json!({"type": "ping"}))
}

fn text_block(index: usize, pieces: &[&str]) -> Vec<SseEvent> {
    let mut events = vec![event(
        "content_block_start",
        json!({"type": "content_block_start", "index": index,
               "content_block": {"type": "text", "text": ""}}),
    )];
    for (n, piece) in pieces.iter().enumerate() {
        events.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index,
                   "delta": {"type": "text_delta", "text": piece}}),
        ));
        if n == 0 {
            events.push(ping());
        }
    }
    events.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": index}),
    ));
    events
}

fn message_end(stop_reason: &str, output_tokens: u64) -> Vec<SseEvent> {
    vec![
        event(
            "message_delta",
            json!({"type": "message_delta",
                   "delta": {"stop_reason": stop_reason, "stop_sequence": null},
                   "usage": {"output_tokens": output_tokens}}),
        ),
        event("message_stop", json!({"type": "message_stop"})),
    ]
}

/// A complete text answer streamed in `pieces`.
pub fn text_answer(pieces: &[&str], input_tokens: u64, output_tokens: u64) -> FakeReply {
    let mut events = vec![message_start(input_tokens), ping()];
    events.extend(text_block(0, pieces));
    events.extend(message_end("end_turn", output_tokens));
    FakeReply::Stream(events)
}

/// Some text, then a call of `tool` with `input` (sent in two JSON pieces).
pub fn tool_call(text: &str, tool_use_id: &str, tool: &str, input: Value) -> FakeReply {
    let mut events = vec![message_start(50), ping()];
    events.extend(text_block(0, &[text]));
    let input = input.to_string();
    let (first, second) = input.split_at(input.len() / 2);
    events.push(event(
        "content_block_start",
        json!({"type": "content_block_start", "index": 1,
               "content_block": {"type": "tool_use", "id": tool_use_id, "name": tool, "input": {}}}),
    ));
    for part in [first, second] {
        events.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 1,
                   "delta": {"type": "input_json_delta", "partial_json": part}}),
        ));
    }
    events.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 1}),
    ));
    events.extend(message_end("tool_use", 20));
    FakeReply::Stream(events)
}

/// The start of an answer (`pieces`), then the connection drops.
pub fn cut_answer(pieces: &[&str]) -> FakeReply {
    let mut events = vec![message_start(30), ping()];
    let mut block = text_block(0, pieces);
    block.pop(); // no content_block_stop, no message_stop
    events.extend(block);
    FakeReply::Cut(events)
}

/// The API's answer when it is overloaded.
pub fn overloaded() -> FakeReply {
    FakeReply::Status(
        529,
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    )
}
