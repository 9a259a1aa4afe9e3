//! `idle`: C authenticated sockets, each joined to a booking room (two per
//! room, as in a booking chat); the server's resident memory per
//! connection. And `connect`: authenticated connections per second.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use futures_util::{stream, StreamExt};
use serde_json::json;

use crate::measure::{cpu_report, settle, settle_server, Snapshot};
use crate::procfs;
use crate::session;
use crate::stats::{now_ns, round, Samples};
use crate::target::{Target, TargetArgs};
use crate::ws::{Event, WsReader};

#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Connections to hold (two per booking room).
    #[arg(long, default_value_t = 19_000)]
    pub connections: usize,
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seconds to hold the connections after they settled (memory is read
    /// again at the end).
    #[arg(long, default_value_t = 5.0)]
    pub hold: f64,
    /// Connections opened first; the marginal figure is the growth from
    /// there (one-time costs such as database caches excluded).
    #[arg(long, default_value_t = 1000)]
    pub warmup: usize,
    /// Authenticate only, join no room.
    #[arg(long)]
    pub no_join: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Connections to open (each a distinct user); all stay open until the
    /// last one is welcomed.
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

#[derive(Default)]
struct Idle {
    frames: Cell<u64>,
    closed: Cell<u64>,
}

async fn idle_reader(mut reader: WsReader, tally: Rc<Idle>) {
    loop {
        match reader.next().await {
            Ok(Event::Text(_)) => tally.frames.set(tally.frames.get() + 1),
            Ok(Event::Closed(_)) | Err(_) => {
                tally.closed.set(tally.closed.get() + 1);
                return;
            }
        }
    }
}

fn check_file_limit(connections: usize) -> anyhow::Result<()> {
    let limit = procfs::open_file_limit();
    if (connections as u64) + 200 > limit {
        bail!(
            "{connections} connections need more open files than this process may have ({limit}); \
             lower --connections or raise `ulimit -n`"
        );
    }
    Ok(())
}

pub async fn idle(target: &Target, args: &IdleArgs) -> anyhow::Result<String> {
    check_file_limit(args.connections)?;
    let Some(pid) = target.pid else {
        bail!("idle needs the server's pid (--pid, or --spawn)");
    };
    let connections = args.connections;
    let rooms = connections.div_ceil(2);
    let setup_started = now_ns();
    let bookings = target.put_pair_bookings(rooms).await?;
    let mirror_s = (now_ns() - setup_started) as f64 / 1e9;
    // The work of mirroring settles before the baseline is read.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = procfs::status_bytes(pid, "VmRSS").unwrap_or(0);

    let tally = Rc::new(Idle::default());
    let before = Snapshot::take(target);
    let connect_started = now_ns();
    let warmup = args.warmup.min(connections / 2);
    let mut tasks = Vec::with_capacity(connections);
    let mut failures = 0;
    let mut first_error = None;
    let mut rss_after_warmup = rss_before;
    for phase in [0..warmup, warmup..connections] {
        let starts_at = phase.start;
        let opened: Vec<anyhow::Result<tokio::task::JoinHandle<()>>> = stream::iter(phase)
            .map(|i| {
                let (booking, users) = &bookings[i / 2];
                let role = if i % 2 == 0 { "client" } else { "engineer" };
                let token = target.token(&users[i % 2], role, &format!("Idle {i}"));
                let room = (!args.no_join).then(|| format!("booking:{booking}"));
                let tally = tally.clone();
                async move {
                    let opened =
                        session::open(target, &token, room.as_deref(), 1024, i as u32).await?;
                    Ok(tokio::task::spawn_local(idle_reader(opened.reader, tally)))
                }
            })
            .buffer_unordered(args.concurrency)
            .collect()
            .await;
        for result in opened {
            match result {
                Ok(task) => tasks.push(task),
                Err(error) => {
                    failures += 1;
                    first_error.get_or_insert(error);
                }
            }
        }
        if starts_at == 0 {
            let counter = tally.clone();
            settle(
                move || counter.frames.get(),
                Duration::from_secs(1),
                Duration::from_secs(60),
            )
            .await;
            rss_after_warmup = procfs::status_bytes(pid, "VmRSS").unwrap_or(0);
        }
    }
    let after_connect = Snapshot::take(target);
    let connect_s = (now_ns() - connect_started) as f64 / 1e9;
    let counter = tally.clone();
    settle(
        move || counter.frames.get(),
        Duration::from_secs(2),
        Duration::from_secs(120),
    )
    .await;
    let rss_settled = procfs::status_bytes(pid, "VmRSS").unwrap_or(0);
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    let rss_held = procfs::status_bytes(pid, "VmRSS").unwrap_or(0);
    let hwm = procfs::status_bytes(pid, "VmHWM").unwrap_or(0);
    let held = tasks.iter().filter(|t| !t.is_finished()).count();
    for task in &tasks {
        task.abort();
    }
    let open = tasks.len().max(1) as f64;
    let per_conn = rss_held.saturating_sub(rss_before) as f64 / open;
    let per_conn_settled = rss_settled.saturating_sub(rss_before) as f64 / open;
    let marginal = rss_held.saturating_sub(rss_after_warmup) as f64
        / (tasks.len().saturating_sub(warmup)).max(1) as f64;
    let line = json!({
        "workload": "idle",
        "target": target.backend,
        "connections": connections,
        "opened": tasks.len(),
        "failed": failures,
        "first_error": first_error.map(|e| format!("{e:#}")),
        "still_open_at_end": held,
        "closed_by_server": tally.closed.get(),
        "mirror_s": round(mirror_s, 2),
        "connect_join_s": round(connect_s, 2),
        "joined": !args.no_join,
        "warmup": warmup,
        "rss_before_bytes": rss_before,
        "rss_after_warmup_bytes": rss_after_warmup,
        "rss_settled_bytes": rss_settled,
        "rss_end_bytes": rss_held,
        "vm_hwm_bytes": hwm,
        "bytes_per_connection": round(per_conn, 0),
        "bytes_per_connection_settled": round(per_conn_settled, 0),
        "kb_per_connection": round(per_conn / 1000.0, 2),
        "marginal_bytes_per_connection": round(marginal, 0),
        "cpu_connect_and_join": cpu_report(&before, &after_connect, "connection", tasks.len() as u64),
    });
    println!("{line}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(format!(
        "idle {} {} connections{}: {:.2} KB (1000 B) per connection (RSS {:.1} MB → {:.1} MB; {:.2} KB each beyond the first {warmup}), {} failed",
        target.backend,
        tasks.len(),
        if args.no_join { ", not joined" } else { " joined" },
        per_conn / 1000.0,
        rss_before as f64 / 1e6,
        rss_held as f64 / 1e6,
        marginal / 1000.0,
        failures,
    ))
}

pub async fn connect(target: &Target, args: &ConnectArgs) -> anyhow::Result<String> {
    check_file_limit(args.connections)?;
    let connections = args.connections;
    let tokens: Vec<String> = (0..connections)
        .map(|i| {
            let id = uuid::Uuid::new_v4().to_string();
            target.token(&id, "client", &format!("Conn {i}"))
        })
        .collect();
    let before = Snapshot::take(target);
    let started = now_ns();
    let results: Vec<(u64, anyhow::Result<session::Opened>)> = stream::iter(tokens.iter())
        .enumerate()
        .map(|(i, token)| async move {
            let t0 = now_ns();
            let result = session::open(target, token, None, 1024, i as u32).await;
            (t0, result)
        })
        .buffer_unordered(args.concurrency)
        .map(|(t0, result)| {
            let done = now_ns();
            (done - t0, result)
        })
        .collect()
        .await;
    let wall = (now_ns() - started) as f64 / 1e9;
    let after = Snapshot::take(target);
    // And including what the server does after each `welcome`.
    settle_server(target).await;
    let settled = Snapshot::take(target);
    let mut latency = Samples::with_capacity(connections);
    let mut ok = 0u64;
    let mut first_error = None;
    let mut held = Vec::with_capacity(connections);
    for (took_ns, result) in results {
        match result {
            Ok(opened) => {
                ok += 1;
                latency.record_since(0, took_ns);
                held.push(opened);
            }
            Err(error) => {
                first_error.get_or_insert(format!("{error:#}"));
            }
        }
    }
    drop(held);
    let summary = latency.summary();
    let rate = ok as f64 / wall.max(1e-9);
    let line = json!({
        "workload": "connect",
        "target": target.backend,
        "connections": connections,
        "concurrency": args.concurrency,
        "welcomed": ok,
        "failed": connections as u64 - ok,
        "first_error": first_error,
        "wall_s": round(wall, 3),
        "connects_per_s": round(rate, 0),
        "connect_ms": summary.json(),
        "cpu": cpu_report(&before, &after, "connection", ok),
        "cpu_until_settled": cpu_report(&before, &settled, "connection", ok),
    });
    println!("{line}");
    // Let the server close them before it is stopped.
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(format!(
        "connect {} {ok}/{connections}: {rate:.0} authenticated connections/s, p50/p99 {:.1}/{:.1} ms",
        target.backend, summary.p50, summary.p99
    ))
}
