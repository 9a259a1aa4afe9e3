//! `pairs`: K booking rooms of two members, each member sending r messages
//! per second to its room. Every message is stored and acked; the other
//! member receives it. Sends are spread evenly over time and members.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use futures_util::{stream, StreamExt};
use memchr::memmem::Finder;
use serde_json::json;

use crate::fanout::body_padding;
use crate::measure::{cpu_report, drain, settle, Snapshot};
use crate::session::{self, is_type, two_numbers_after};
use crate::stats::{leading_number, now_ns, round, Samples};
use crate::target::{Target, TargetArgs};
use crate::ws::{Event, WsReader, WsWriter};

#[derive(Args, Debug, Clone)]
pub struct PairsArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Booking rooms (two members each).
    #[arg(long, default_value_t = 2000)]
    pub rooms: usize,
    /// Messages per second from each member.
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    #[arg(long, default_value_t = 64)]
    pub body_bytes: usize,
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 100.0)]
    pub p99_ms: f64,
    /// Misbehaving clients beside the workload (`abuse.rs`): non-readers,
    /// replaying joins, slow bodies, flooders, junk senders.
    #[arg(long, default_value_t = 0)]
    pub attackers: usize,
    /// Only these kinds of attackers (`non-reader`, `replaying`, `slow`,
    /// `flooder`, `junk`; comma-separated; default all).
    #[arg(long, value_delimiter = ',')]
    pub attack_kinds: Vec<String>,
    /// Seconds to keep sampling the server's RSS and descriptors after the
    /// workload has drained.
    #[arg(long, default_value_t = 0.0)]
    pub watch: f64,
}

#[derive(Default)]
struct Tally {
    deliveries: Cell<u64>,
    echoes: Cell<u64>,
    reordered: Cell<u64>,
    acks: Cell<u64>,
    errors: Cell<u64>,
    closed: Cell<u64>,
    other_frames: Cell<u64>,
    last_ns: Cell<u64>,
    latency: RefCell<Samples>,
    ack_latency: RefCell<Samples>,
    /// When sending began, and the delivery latencies by 5 s window of
    /// sending (to see when a disturbance hit).
    start_ns: Cell<u64>,
    windows: RefCell<Vec<Samples>>,
}

/// The width of a latency window.
const WINDOW_NS: u64 = 5_000_000_000;

/// One member's reader: its acks, and its peer's messages (its own come
/// back too, as to every member).
async fn member(mut reader: WsReader, me: u64, tally: Rc<Tally>) {
    let body = Finder::new(b"\"body\":\"m");
    let client_id = Finder::new(b"\"client_id\":\"c");
    let k_at = Finder::new(b" k");
    let mut highest: Option<u64> = None;
    loop {
        match reader.next().await {
            Ok(Event::Text(range)) => {
                let text = reader.text(range);
                let now = now_ns();
                if is_type(text, b"ack") {
                    if let Some((_, sent_ns)) = two_numbers_after(&client_id, text) {
                        tally.ack_latency.borrow_mut().record_since(sent_ns, now);
                        tally.acks.set(tally.acks.get() + 1);
                        tally.last_ns.set(now);
                        continue;
                    }
                } else if is_type(text, b"message") {
                    // Body: `m<member> k<n> t<ns> ...`
                    let who = body
                        .find(text)
                        .and_then(|at| leading_number(&text[at + body.needle().len()..]));
                    if let Some((who, _)) = who {
                        if who == me {
                            tally.echoes.set(tally.echoes.get() + 1);
                            continue;
                        }
                        if let Some((n, sent_ns)) = two_numbers_after(&k_at, text) {
                            tally.latency.borrow_mut().record_since(sent_ns, now);
                            let window =
                                (sent_ns.saturating_sub(tally.start_ns.get()) / WINDOW_NS) as usize;
                            let mut windows = tally.windows.borrow_mut();
                            if windows.len() <= window {
                                windows.resize_with(window + 1, Samples::default);
                            }
                            windows[window].record_since(sent_ns, now);
                            tally.deliveries.set(tally.deliveries.get() + 1);
                            tally.last_ns.set(now);
                            if highest.is_some_and(|h| n <= h) {
                                tally.reordered.set(tally.reordered.get() + 1);
                            } else {
                                highest = Some(n);
                            }
                            continue;
                        }
                    }
                }
                if is_type(text, b"error") {
                    tally.errors.set(tally.errors.get() + 1);
                } else {
                    tally.other_frames.set(tally.other_frames.get() + 1);
                }
            }
            Ok(Event::Closed(_)) | Err(_) => {
                tally.closed.set(tally.closed.get() + 1);
                return;
            }
        }
    }
}

pub async fn run(target: &Target, args: &PairsArgs) -> anyhow::Result<String> {
    let rooms = args.rooms;
    let members = rooms * 2;
    let setup_started = now_ns();
    let bookings = target.put_pair_bookings(rooms).await?;
    let tally = Rc::new(Tally::default());
    let opened: Vec<(usize, anyhow::Result<session::Opened>)> = stream::iter(0..members)
        .map(|i| {
            let (booking, users) = &bookings[i / 2];
            let role = if i % 2 == 0 { "client" } else { "studio_owner" };
            let token = target.token(&users[i % 2], role, &format!("Member {i}"));
            let room = format!("booking:{booking}");
            async move {
                (
                    i,
                    session::open(target, &token, Some(&room), 8 * 1024, i as u32).await,
                )
            }
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    let mut writers: Vec<Option<Rc<WsWriter>>> = vec![None; members];
    let mut tasks = Vec::with_capacity(members);
    let mut first_error = None;
    for (i, result) in opened {
        match result {
            Ok(opened) => {
                writers[i] = Some(opened.writer);
                tasks.push(tokio::task::spawn_local(member(
                    opened.reader,
                    (i % 2) as u64,
                    tally.clone(),
                )));
            }
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    if let Some(error) = first_error {
        for task in &tasks {
            task.abort();
        }
        bail!("not every member could join: {error:#}");
    }
    let writers: Vec<Rc<WsWriter>> = writers.into_iter().map(Option::unwrap).collect();
    let counter = tally.clone();
    settle(
        move || counter.other_frames.get(),
        Duration::from_millis(500),
        Duration::from_secs(120),
    )
    .await;
    let setup_s = (now_ns() - setup_started) as f64 / 1e9;

    // Send `index` = member `index % members`'s message `index / members`.
    let total_rate = args.rate * members as f64;
    let total = (total_rate * args.duration).round() as u64;
    let start_ns = now_ns();
    let sampler = crate::abuse::Sampler::start(target, start_ns);
    let attack = match args.attackers {
        0 => None,
        n => Some(
            crate::abuse::start(
                target,
                n,
                &args.attack_kinds,
                Duration::from_secs_f64(args.duration),
            )
            .await?,
        ),
    };
    // The series' second at which the workload (and the attack) began.
    let workload_at = round((now_ns() - start_ns) as f64 / 1e9, 1);
    let before = Snapshot::take(target);
    let start_ns = now_ns();
    tally.start_ns.set(start_ns);
    let started = tokio::time::Instant::now();
    let mut sent: u64 = 0;
    let mut frame = String::with_capacity(args.body_bytes + 256);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while sent < total {
        tick.tick().await;
        let elapsed = started.elapsed().as_secs_f64();
        let due = ((elapsed * total_rate) as u64 + 1).min(total);
        while sent < due {
            let member = (sent % members as u64) as usize;
            let n = sent / members as u64;
            let (booking, _) = &bookings[member / 2];
            let sent_ns = now_ns();
            let head = format!("m{} k{n} t{sent_ns} ", member % 2);
            frame.clear();
            frame.push_str(&format!(
                r#"{{"type":"send","room":"booking:{booking}","client_id":"c{n}_{sent_ns}","body":"{head}"#
            ));
            frame.push_str(&body_padding(args.body_bytes, head.len()));
            frame.push_str("\"}");
            writers[member].send_text(frame.as_bytes()).await?;
            sent += 1;
        }
    }
    let send_s = (now_ns() - start_ns) as f64 / 1e9;
    drain(
        || tally.deliveries.get() >= total && tally.acks.get() >= total,
        || tally.deliveries.get() + tally.acks.get(),
        Duration::from_secs(3),
        Duration::from_secs(60),
    )
    .await;
    let after = Snapshot::take(target);
    tokio::time::sleep(Duration::from_secs_f64(args.watch)).await;
    let outcomes = attack.map(crate::abuse::Attack::stop);
    let series = sampler.map(crate::abuse::Sampler::finish);
    for task in &tasks {
        task.abort();
    }
    drop(writers);

    let deliveries = tally.deliveries.get();
    let acks = tally.acks.get();
    let active_s = (tally.last_ns.get().max(start_ns) - start_ns) as f64 / 1e9;
    let latency = tally.latency.borrow_mut().summary();
    let ack_latency = tally.ack_latency.borrow_mut().summary();
    let missing = total.saturating_sub(deliveries);
    let unacked = total.saturating_sub(acks);
    let pass = missing == 0
        && unacked == 0
        && tally.closed.get() == 0
        && tally.errors.get() == 0
        && tally.reordered.get() == 0
        && ack_latency.p99 < args.p99_ms
        && send_s <= args.duration * 1.1 + 0.1;
    let mut cpu = cpu_report(&before, &after, "message", total);
    if let Some(server) = cpu["server_cpu_s"].as_f64() {
        // Each message is one stored row, one ack and two deliveries.
        cpu["server_cpu_us_per_delivery"] =
            json!(round(server * 1e6 / (2 * deliveries).max(1) as f64, 3));
    }
    let line = json!({
        "workload": "pairs",
        "target": target.backend,
        "rooms": rooms,
        "rate_per_member": args.rate,
        "duration_s": args.duration,
        "body_bytes": args.body_bytes,
        "setup_s": round(setup_s, 2),
        "send_s": round(send_s, 3),
        "sent": total,
        "acks": acks,
        "acks_per_s": round(acks as f64 / active_s.max(1e-9), 0),
        "deliveries": deliveries,
        "deliveries_per_s": round(deliveries as f64 / active_s.max(1e-9), 0),
        "missing": missing,
        "unacked": unacked,
        "reordered": tally.reordered.get(),
        "echoes": tally.echoes.get(),
        "errors": tally.errors.get(),
        "closed": tally.closed.get(),
        "ack_ms": ack_latency.json(),
        "latency_ms": latency.json(),
        "latency_p99_ms_by_5s": tally
            .windows
            .borrow_mut()
            .iter_mut()
            .map(|w| round(w.summary().p99, 1))
            .collect::<Vec<_>>(),
        "cpu": cpu,
        "attackers": args.attackers,
        "workload_started_at_s": workload_at,
        "attacker_outcomes": outcomes,
        "server_rss_mb_fds": series,
        "pass": pass,
    });
    println!("{line}");
    Ok(format!(
        "pairs {} {rooms} rooms × 2 × {}/s: {:.0} acks/s, ack p50/p99 {:.1}/{:.1} ms, delivery p50/p99 {:.1}/{:.1} ms, missing {missing}, {} µs server CPU/message{}",
        target.backend,
        args.rate,
        acks as f64 / active_s.max(1e-9),
        ack_latency.p50,
        ack_latency.p99,
        latency.p50,
        latency.p99,
        cpu["server_cpu_us_per_message"]
            .as_f64()
            .map_or("?".into(), |c| format!("{c:.1}")),
        if pass { "" } else { " (FAIL)" }
    ))
}
