//! Misbehaving clients beside the `pairs` workload (`pairs --attackers N`):
//! sockets that never read in a busy room, joins that replay its whole
//! backlog and never read, floods of sends, floods of junk, and HTTP
//! requests whose bodies trickle in. Each kind is told apart by how the
//! server ended it; a sampler records the server's RSS and open
//! descriptors once a second, with and without attackers.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use mixroom_testkit::frames::{encode_client_frame, OP_TEXT};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;

use crate::procfs;
use crate::stats::now_ns;
use crate::target::Target;

/// The receive buffer of a client that does not read: the server's writes
/// stall at once.
const TINY_WINDOW: u32 = 4096;
/// Messages stored in the busy room before the run, and their size.
const BACKLOG: usize = 600;
const BUSY_BODY: usize = 4000;
/// Messages per second into the busy room during the run.
const BUSY_RATE: u64 = 40;

/// How each attacker's connection ended, by kind: `closed <code>`,
/// `reset` (ended without a close frame), `http <status>`, `open`.
pub type Outcomes = Rc<RefCell<BTreeMap<String, u64>>>;

fn record(outcomes: &Outcomes, kind: &str, ending: String) {
    *outcomes
        .borrow_mut()
        .entry(format!("{kind}: {ending}"))
        .or_default() += 1;
}

/// The server's RSS (MB) and open descriptors, once a second.
pub struct Sampler {
    samples: Rc<RefCell<Vec<(f64, f64, u64)>>>,
    task: JoinHandle<()>,
}

impl Sampler {
    pub fn start(target: &Target, start_ns: u64) -> Option<Sampler> {
        let pid = target.pid?;
        let samples: Rc<RefCell<Vec<(f64, f64, u64)>>> = Rc::default();
        let into = samples.clone();
        let task = tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let rss = procfs::status_bytes(pid, "VmRSS").unwrap_or(0) as f64 / 1e6;
                let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
                    .map(|dir| dir.count() as u64)
                    .unwrap_or(0);
                let at = (now_ns().saturating_sub(start_ns)) as f64 / 1e9;
                into.borrow_mut()
                    .push((at.round(), (rss * 10.0).round() / 10.0, fds));
            }
        });
        Some(Sampler { samples, task })
    }

    /// `[[second, rss_mb, fds], ...]`.
    pub fn finish(self) -> Value {
        self.task.abort();
        json!(*self.samples.borrow())
    }
}

/// What the attackers are given: the busy room and its members' tokens.
pub struct Attack {
    tasks: Vec<JoinHandle<()>>,
    pub outcomes: Outcomes,
}

impl Attack {
    pub fn stop(self) -> Value {
        for task in &self.tasks {
            task.abort();
        }
        json!(*self.outcomes.borrow())
    }
}

/// Sets up the busy room (a booking of the attackers, with a backlog) and
/// starts `count` attackers: 1/3 non-readers, 1/6 replaying joins, 1/6
/// slow bodies, 1/6 flooders, 1/6 junk senders. The busy room gets
/// `BUSY_RATE` messages a second for `duration`.
pub async fn start(
    target: &Target,
    count: usize,
    kinds: &[String],
    duration: Duration,
) -> anyhow::Result<Attack> {
    let new_id = || uuid::Uuid::new_v4().to_string();
    let booking = new_id();
    let owner = new_id();
    let users: Vec<String> = (0..count).map(|_| new_id()).collect();
    target.put_booking(&booking, &owner, &users).await?;
    let room = format!("booking:{booking}");
    let body = "b".repeat(BUSY_BODY);
    let poster = target.poster();
    for _ in 0..BACKLOG {
        poster.post(&room, &body).await?;
    }

    let outcomes: Outcomes = Rc::default();
    let mut tasks = Vec::new();
    let addr = target.addr;
    for (i, user) in users.iter().enumerate() {
        let token = target.token(user, "studio_owner", &format!("Attacker {i}"));
        let room = room.clone();
        let outcomes = outcomes.clone();
        let kind = match i % 6 {
            0 | 1 => "non-reader",
            2 => "replaying join",
            3 => "slow body",
            4 => "flooder",
            _ => "junk sender",
        };
        // `--attack-kinds`: only these (to see what each costs).
        if !kinds.is_empty() && !kinds.iter().any(|k| kind.starts_with(k.as_str())) {
            continue;
        }
        tasks.push(tokio::task::spawn_local(async move {
            let ending = match kind {
                "non-reader" => stall(addr, &token, &room, None).await,
                "replaying join" => stall(addr, &token, &room, Some(0)).await,
                "slow body" => slow_body(addr).await,
                "flooder" => flood(addr, &token, &room, false).await,
                _ => flood(addr, &token, &room, true).await,
            };
            record(
                &outcomes,
                kind,
                ending.unwrap_or_else(|e| format!("error {e:#}")),
            );
        }));
    }
    let busy_target = target.poster();
    tasks.push(tokio::task::spawn_local(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1000 / BUSY_RATE));
        let until = tokio::time::Instant::now() + duration;
        while tokio::time::Instant::now() < until {
            tick.tick().await;
            let _ = busy_target.post(&room, &body).await;
        }
    }));
    Ok(Attack { tasks, outcomes })
}

/// A text frame with a zero mask: the payload goes as it is.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    encode_client_frame(&mut out, OP_TEXT, payload, [0; 4]);
    out
}

async fn upgrade(
    addr: std::net::SocketAddr,
    receive_buffer: Option<u32>,
) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(size) = receive_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    let mut tcp = socket.connect(addr).await?;
    let request = format!(
        "GET /v1/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await?;
    Ok(tcp)
}

/// Reads (and discards) until the connection ends: `closed <code>` when a
/// close frame came, else `reset`. The close code is found by searching
/// for the close frame's header in what was read last.
async fn read_to_end(tcp: &mut TcpStream, limit: Duration) -> String {
    let mut tail: Vec<u8> = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut chunk = vec![0u8; 65536];
        match tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await {
            Err(_) => return "open".into(),
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => {
                tail.extend_from_slice(&chunk[..n]);
                let keep = tail.len().saturating_sub(256);
                tail.drain(..keep);
            }
            Ok(Err(_)) => return "reset".into(),
        }
    }
    // The close frame is the last frame: 0x88, length, code.
    match tail
        .windows(2)
        .rposition(|w| w[0] == 0x88 && (w[1] as usize) < 126)
    {
        Some(at) if at + 4 <= tail.len() => {
            format!(
                "closed {}",
                u16::from_be_bytes([tail[at + 2], tail[at + 3]])
            )
        }
        _ => "reset".into(),
    }
}

/// Authenticates, joins the busy room (replaying from `since`), and never
/// reads again; the connection's end is seen when the server drops it.
async fn stall(
    addr: std::net::SocketAddr,
    token: &str,
    room: &str,
    since: Option<u64>,
) -> anyhow::Result<String> {
    let mut tcp = upgrade(addr, Some(TINY_WINDOW)).await?;
    let mut frames = frame(format!(r#"{{"type":"auth","token":"{token}"}}"#).as_bytes());
    let join = match since {
        Some(since) => format!(r#"{{"type":"join","room":"{room}","since":{since}}}"#),
        None => format!(r#"{{"type":"join","room":"{room}"}}"#),
    };
    frames.extend(frame(join.as_bytes()));
    tcp.write_all(&frames).await?;
    // Not reading: watch for the server giving up (its FIN or reset
    // shows as the read side closing) without taking any of its data.
    let started = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ready = tcp.ready(Interest::READABLE).await?;
        if ready.is_read_closed() {
            return Ok(format!("dropped after ~{}s", bucket(started.elapsed())));
        }
        if started.elapsed() > Duration::from_secs(600) {
            return Ok("open".into());
        }
    }
}

/// Seconds rounded to 5, so outcomes group.
fn bucket(elapsed: Duration) -> u64 {
    elapsed.as_secs().div_ceil(5) * 5
}

/// Writes 400 sends (or 3,000 junk frames) at once, then reads to the end.
async fn flood(
    addr: std::net::SocketAddr,
    token: &str,
    room: &str,
    junk: bool,
) -> anyhow::Result<String> {
    let mut tcp = upgrade(addr, None).await?;
    let mut frames = frame(format!(r#"{{"type":"auth","token":"{token}"}}"#).as_bytes());
    if junk {
        for i in 0..3000 {
            frames.extend(frame(format!("{{not json {i}").as_bytes()));
        }
    } else {
        for i in 0..400 {
            let send = format!(
                r#"{{"type":"send","room":"{room}","client_id":"f{i}","body":"flood {i}"}}"#
            );
            frames.extend(frame(send.as_bytes()));
        }
    }
    tcp.write_all(&frames).await?;
    Ok(read_to_end(&mut tcp, Duration::from_secs(120)).await)
}

/// A webhook request declaring 200 KB and sending a byte a second.
async fn slow_body(addr: std::net::SocketAddr) -> anyhow::Result<String> {
    let mut tcp = TcpStream::connect(addr).await?;
    let head = format!(
        "POST /v1/webhooks/stripe HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Stripe-Signature: t=1,v1=00\r\nContent-Length: 200000\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await?;
    let started = tokio::time::Instant::now();
    let mut answer = Vec::new();
    loop {
        let mut chunk = [0u8; 1024];
        tokio::select! {
            read = tcp.read(&mut chunk) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            },
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if tcp.write_all(b" ").await.is_err() {
                    break;
                }
            }
        }
        if started.elapsed() > Duration::from_secs(600) {
            return Ok("open".into());
        }
    }
    let status = String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .unwrap_or("none")
        .to_owned();
    Ok(format!(
        "http {status} after ~{}s",
        bucket(started.elapsed())
    ))
}
