//! `raw-reference`: the smallest tokio + tungstenite broadcast server that
//! speaks the frames `mixroom-bench` sends — `auth` → `welcome`, `join` →
//! `joined`, `send` → a `message` to every member of the room (serialised
//! once, shared by all) and an `ack` to the sender. No auth check, no
//! storage, no limits: the practical limit the real server is measured
//! against (BENCHMARKS.md).
//!
//! One thread (current-thread runtime), one task per socket. A socket's
//! queued frames are written together: one write per wakeup, not one per
//! frame.
//!
//! ```sh
//! raw-reference --listen 127.0.0.1:0 [--read-buffer 4096]
//! ```

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::Write;
use std::rc::Rc;

use futures_util::{SinkExt, StreamExt};
use mixroom_realtime::domain::wire::{MessageView, SenderView, ServerFrame};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default, borrow)]
    room: Option<&'a str>,
    #[serde(default, borrow)]
    client_id: Option<&'a str>,
    #[serde(default)]
    body: Option<String>,
}

struct Member {
    id: u64,
    queue: mpsc::UnboundedSender<Message>,
}

#[derive(Default)]
struct Room {
    members: Vec<Member>,
    seq: u64,
}

#[derive(Default)]
struct State {
    rooms: RefCell<HashMap<String, Room>>,
    next_id: Cell<u64>,
}

fn main() -> std::io::Result<()> {
    let mut listen = "127.0.0.1:0".to_owned();
    let mut read_buffer = 4096usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().unwrap_or(listen),
            "--read-buffer" => {
                read_buffer = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(read_buffer)
            }
            other => {
                eprintln!(
                    "usage: raw-reference [--listen ADDR] [--read-buffer BYTES]; got {other}"
                );
                std::process::exit(2);
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = TcpListener::bind(&listen).await?;
        println!("listening on {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        let state = Rc::new(State::default());
        let config = WebSocketConfig::default()
            .read_buffer_size(read_buffer)
            .max_message_size(Some(64 << 10));
        loop {
            let (stream, _) = listener.accept().await?;
            let state = state.clone();
            tokio::task::spawn_local(async move {
                let _ = serve(stream, state, config).await;
            });
        }
    })
}

async fn serve(
    stream: TcpStream,
    state: Rc<State>,
    config: WebSocketConfig,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    stream.set_nodelay(true)?;
    let mut ws = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await?;
    let id = state.next_id.get();
    state.next_id.set(id + 1);
    let (queue, mut inbox) = mpsc::unbounded_channel::<Message>();
    let mut user_id: Rc<str> = Rc::from(format!("user-{id}"));
    let mut joined: Vec<String> = Vec::new();
    let result = loop {
        tokio::select! {
            incoming = ws.next() => {
                let text = match incoming {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) | None => break Ok(()),
                    Some(Ok(_)) => continue,
                    Some(Err(error)) => break Err(error),
                };
                let Ok(frame) = serde_json::from_str::<Frame>(&text) else {
                    continue;
                };
                let reply = match frame.kind {
                    "auth" => {
                        user_id = Rc::from(format!("00000000-0000-4000-8000-{id:012}"));
                        format!(
                            r#"{{"type":"welcome","user_id":"{user_id}","session_id":"{id}","server_time":"2026-01-01T00:00:00.000Z","heartbeat_ms":15000}}"#
                        )
                    }
                    "join" => {
                        let room = frame.room.unwrap_or_default().to_owned();
                        let mut rooms = state.rooms.borrow_mut();
                        let entry = rooms.entry(room.clone()).or_default();
                        entry.members.push(Member {
                            id,
                            queue: queue.clone(),
                        });
                        let last_seq = entry.seq;
                        joined.push(room.clone());
                        format!(r#"{{"type":"joined","room":"{room}","last_seq":{last_seq},"members":[]}}"#)
                    }
                    "send" => {
                        let room_name = frame.room.unwrap_or_default();
                        let client_id = frame.client_id.unwrap_or_default();
                        let mut rooms = state.rooms.borrow_mut();
                        let Some(room) = rooms.get_mut(room_name) else {
                            continue;
                        };
                        room.seq += 1;
                        let seq = room.seq;
                        let message_id = format!("01900000-0000-7000-8000-{seq:012}");
                        // The real server's frame type: the same bytes go out.
                        let message = ServerFrame::Message(MessageView {
                            room: room_name,
                            seq: seq as i64,
                            id: &message_id,
                            client_id: Some(client_id),
                            sender: SenderView { user_id: Some(&user_id), name: "Sender", role: "client" },
                            body: frame.body.as_deref().unwrap_or_default(),
                            sent_at: "2026-01-01T00:00:00.000Z".to_owned(),
                            reply_to: None,
                            attachments: Vec::new(),
                            edited_at: None,
                            deleted_at: None,
                            reactions: Vec::new(),
                        });
                        // Serialised once; every member gets the same bytes.
                        let text = serde_json::to_string(&message).unwrap_or_default();
                        let shared = Message::Text(Utf8Bytes::from(text));
                        room.members.retain(|m| m.queue.send(shared.clone()).is_ok());
                        format!(
                            r#"{{"type":"ack","client_id":"{client_id}","id":"{message_id}","seq":{seq},"sent_at":"2026-01-01T00:00:00.000Z"}}"#
                        )
                    }
                    "ping" => r#"{"type":"pong","server_time":"2026-01-01T00:00:00.000Z"}"#.to_owned(),
                    _ => continue,
                };
                if let Err(error) = ws.send(Message::text(reply)).await {
                    break Err(error);
                }
            }
            Some(first) = inbox.recv() => {
                // Everything queued goes out in one write.
                if let Err(error) = ws.feed(first).await {
                    break Err(error);
                }
                let mut failed = None;
                while let Ok(next) = inbox.try_recv() {
                    if let Err(error) = ws.feed(next).await {
                        failed = Some(error);
                        break;
                    }
                }
                if let Some(error) = failed {
                    break Err(error);
                }
                if let Err(error) = ws.flush().await {
                    break Err(error);
                }
            }
        }
    };
    let mut rooms = state.rooms.borrow_mut();
    for room in joined {
        if let Some(entry) = rooms.get_mut(&room) {
            entry.members.retain(|m| m.id != id);
            if entry.members.is_empty() {
                rooms.remove(&room);
            }
        }
    }
    result
}
