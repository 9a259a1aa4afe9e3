//! `fanout`: S subscribers in one booking room, one sender at R messages
//! per second. Each step uses a fresh room and fresh sockets, so a step
//! that overloads the server does not spoil the next.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use futures_util::{stream, StreamExt};
use memchr::memmem::Finder;
use serde_json::{json, Value};

use crate::measure::{cpu_report, drain, settle, Snapshot};
use crate::session::{self, is_type, two_numbers_after};
use crate::stats::{now_ns, round, Samples};
use crate::target::{Target, TargetArgs};
use crate::ws::{Event, WsReader};

#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Subscribers in the room.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Messages per second from the sender; several (`100,200,400`) run one
    /// step each.
    #[arg(long, value_delimiter = ',', default_value = "100")]
    pub rate: Vec<f64>,
    /// Find the highest rate with nothing missing and p99 < `--p99-ms`:
    /// doubling from `--sweep-start`, then bisecting.
    #[arg(long)]
    pub sweep: bool,
    #[arg(long, default_value_t = 50.0)]
    pub sweep_start: f64,
    #[arg(long, default_value_t = 20_000.0)]
    pub sweep_max: f64,
    /// Stop bisecting when the bracket is narrower than this fraction.
    #[arg(long, default_value_t = 0.1)]
    pub sweep_precision: f64,
    #[arg(long, default_value_t = 100.0)]
    pub p99_ms: f64,
    /// Seconds of sending per step.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Bytes of each message body.
    #[arg(long, default_value_t = 64)]
    pub body_bytes: usize,
    /// Sockets opened at once during setup.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Who the subscribers are: `participant` (providers of the booking:
    /// each message also stores an email item for each of them) or `admin`
    /// (admins watching the room, not participants: no email items).
    #[arg(long, default_value = "participant", value_parser = ["participant", "admin"])]
    pub subscriber_role: String,
}

#[derive(Default)]
struct Tally {
    deliveries: Cell<u64>,
    reordered: Cell<u64>,
    other_frames: Cell<u64>,
    errors: Cell<u64>,
    closed: Cell<u64>,
    last_delivery_ns: Cell<u64>,
    latency: RefCell<Samples>,
    acks: Cell<u64>,
    ack_latency: RefCell<Samples>,
}

pub struct StepResult {
    pub json: Value,
    pub pass: bool,
    pub deliveries_per_s: f64,
    pub cpu_us_per_delivery: Option<f64>,
    pub p99_ms: f64,
}

async fn subscriber(mut reader: WsReader, tally: Rc<Tally>) {
    let body = Finder::new(b"\"body\":\"k");
    let mut highest: Option<u64> = None;
    loop {
        match reader.next().await {
            Ok(Event::Text(range)) => {
                let text = reader.text(range);
                if is_type(text, b"message") {
                    if let Some((n, sent_ns)) = two_numbers_after(&body, text) {
                        let now = now_ns();
                        tally.latency.borrow_mut().record_since(sent_ns, now);
                        tally.deliveries.set(tally.deliveries.get() + 1);
                        tally.last_delivery_ns.set(now);
                        if highest.is_some_and(|h| n <= h) {
                            tally.reordered.set(tally.reordered.get() + 1);
                        } else {
                            highest = Some(n);
                        }
                        continue;
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

async fn sender_reader(mut reader: WsReader, tally: Rc<Tally>) {
    let client_id = Finder::new(b"\"client_id\":\"c");
    loop {
        match reader.next().await {
            Ok(Event::Text(range)) => {
                let text = reader.text(range);
                if is_type(text, b"ack") {
                    if let Some((_, sent_ns)) = two_numbers_after(&client_id, text) {
                        tally
                            .ack_latency
                            .borrow_mut()
                            .record_since(sent_ns, now_ns());
                        tally.acks.set(tally.acks.get() + 1);
                    }
                } else if is_type(text, b"error") {
                    tally.errors.set(tally.errors.get() + 1);
                }
            }
            Ok(Event::Closed(_)) | Err(_) => {
                tally.closed.set(tally.closed.get() + 1);
                return;
            }
        }
    }
}

pub fn body_padding(body_bytes: usize, used: usize) -> String {
    "x".repeat(body_bytes.saturating_sub(used))
}

pub async fn step(
    target: &Target,
    args: &FanoutArgs,
    rate: f64,
    step: usize,
) -> anyhow::Result<StepResult> {
    let subscribers = args.subscribers;
    let booking = uuid::Uuid::new_v4().to_string();
    let room = format!("booking:{booking}");
    let sender_id = uuid::Uuid::new_v4().to_string();
    let subscriber_ids: Vec<String> = (0..subscribers)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let admins = args.subscriber_role == "admin";
    let providers: &[String] = if admins { &[] } else { &subscriber_ids };
    target.put_booking(&booking, &sender_id, providers).await?;
    let subscriber_role = if admins { "admin" } else { "engineer" };

    let tally = Rc::new(Tally::default());
    let setup_started = now_ns();
    // Each socket is read from the moment it joined (presence frames of
    // later joins must not pile up unread).
    let opened: Vec<anyhow::Result<tokio::task::JoinHandle<()>>> =
        stream::iter(subscriber_ids.iter().enumerate())
            .map(|(i, id)| {
                let token = target.token(id, subscriber_role, &format!("Sub {i}"));
                let room = room.clone();
                let tally = tally.clone();
                async move {
                    let opened =
                        session::open(target, &token, Some(&room), 16 * 1024, i as u32).await?;
                    Ok(tokio::task::spawn_local(subscriber(opened.reader, tally)))
                }
            })
            .buffer_unordered(args.concurrency)
            .collect()
            .await;
    let mut tasks = Vec::with_capacity(subscribers + 1);
    let mut failures = 0;
    let mut first_error = None;
    for result in opened {
        match result {
            Ok(task) => tasks.push(task),
            Err(error) => {
                failures += 1;
                first_error.get_or_insert(error);
            }
        }
    }
    if let Some(error) = first_error {
        for task in &tasks {
            task.abort();
        }
        bail!("{failures} of {subscribers} subscribers could not join: {error:#}");
    }
    let sender_token = target.token(&sender_id, "client", "Sender");
    let sender = session::open(target, &sender_token, Some(&room), 64 * 1024, u32::MAX).await?;
    let writer = sender.writer;
    tasks.push(tokio::task::spawn_local(sender_reader(
        sender.reader,
        tally.clone(),
    )));
    // Presence and unread frames of the joins settle first.
    let counter = tally.clone();
    settle(
        move || counter.other_frames.get(),
        Duration::from_millis(500),
        Duration::from_secs(60),
    )
    .await;
    let setup_s = (now_ns() - setup_started) as f64 / 1e9;

    let total = (rate * args.duration).round().max(1.0) as u64;
    let interval_ns = 1e9 / rate;
    let before = Snapshot::take(target);
    let started = tokio::time::Instant::now();
    let start_ns = now_ns();
    let mut frame = String::with_capacity(args.body_bytes + 256);
    for n in 0..total {
        let due = started + Duration::from_nanos((n as f64 * interval_ns) as u64);
        if tokio::time::Instant::now() < due {
            tokio::time::sleep_until(due).await;
        }
        let sent_ns = now_ns();
        let head = format!("k{n} t{sent_ns} ");
        frame.clear();
        frame.push_str(r#"{"type":"send","room":""#);
        frame.push_str(&room);
        frame.push_str(&format!(r#"","client_id":"c{n}_{sent_ns}","body":""#));
        frame.push_str(&head);
        frame.push_str(&body_padding(args.body_bytes, head.len()));
        frame.push_str("\"}");
        writer.send_text(frame.as_bytes()).await?;
    }
    let send_s = (now_ns() - start_ns) as f64 / 1e9;
    let expected = total * subscribers as u64;
    // Drain: until everything arrived, or nothing more arrives for 2 s.
    drain(
        || tally.deliveries.get() >= expected && tally.acks.get() >= total,
        || tally.deliveries.get() + tally.acks.get(),
        Duration::from_secs(2),
        Duration::from_secs(30),
    )
    .await;
    let after = Snapshot::take(target);
    for task in &tasks {
        task.abort();
    }
    drop(writer);

    let deliveries = tally.deliveries.get();
    let missing = expected.saturating_sub(deliveries);
    let active_s = (tally.last_delivery_ns.get().max(start_ns) - start_ns) as f64 / 1e9;
    let deliveries_per_s = deliveries as f64 / active_s.max(1e-9);
    let latency = tally.latency.borrow_mut().summary();
    let ack_latency = tally.ack_latency.borrow_mut().summary();
    let closed = tally.closed.get();
    let errors = tally.errors.get();
    let reordered = tally.reordered.get();
    let pass = missing == 0
        && closed == 0
        && errors == 0
        && reordered == 0
        && latency.p99 < args.p99_ms
        && send_s <= args.duration * 1.1 + 0.1;
    let cpu = cpu_report(&before, &after, "delivery", deliveries);
    let cpu_us_per_delivery = cpu["server_cpu_us_per_delivery"].as_f64();
    let json = json!({
        "workload": "fanout",
        "target": target.backend,
        "step": step,
        "subscribers": subscribers,
        "subscriber_role": args.subscriber_role,
        "rate": rate,
        "duration_s": args.duration,
        "body_bytes": args.body_bytes,
        "setup_s": round(setup_s, 2),
        "send_s": round(send_s, 3),
        "sent": total,
        "acked": tally.acks.get(),
        "expected": expected,
        "deliveries": deliveries,
        "missing": missing,
        "reordered": reordered,
        "errors": errors,
        "closed": closed,
        "deliveries_per_s": round(deliveries_per_s, 0),
        "latency_ms": latency.json(),
        "ack_ms": ack_latency.json(),
        "cpu": cpu,
        "pass": pass,
    });
    // Let the server tear the old sockets down before the next step.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(StepResult {
        json,
        pass,
        deliveries_per_s,
        cpu_us_per_delivery,
        p99_ms: latency.p99,
    })
}

pub async fn run(target: &Target, args: &FanoutArgs) -> anyhow::Result<String> {
    if !args.sweep {
        let mut parts = Vec::new();
        for (i, &rate) in args.rate.iter().enumerate() {
            let result = step(target, args, rate, i).await?;
            println!("{}", result.json);
            parts.push(format!(
                "R={rate}/s: {:.0} deliveries/s, p99 {:.1} ms, {} µs CPU/delivery{}",
                result.deliveries_per_s,
                result.p99_ms,
                result
                    .cpu_us_per_delivery
                    .map_or("?".into(), |c| format!("{c:.2}")),
                if result.pass { "" } else { " (FAIL)" }
            ));
        }
        return Ok(format!(
            "fanout {} S={}: {}",
            target.backend,
            args.subscribers,
            parts.join("; ")
        ));
    }
    let mut good: Option<(f64, StepResult)> = None;
    let mut bad: Option<f64> = None;
    let mut rate = args.sweep_start;
    for i in 0..16 {
        let result = step(target, args, rate, i).await?;
        println!("{}", result.json);
        if result.pass {
            good = Some((rate, result));
        } else {
            bad = Some(rate);
        }
        let good_rate = good.as_ref().map(|(r, _)| *r);
        rate = match (good_rate, bad) {
            (Some(g), None) => g * 2.0,
            (Some(g), Some(b)) => {
                if (b - g) / g <= args.sweep_precision {
                    break;
                }
                ((g + b) / 2.0).round()
            }
            (None, Some(b)) => {
                if b <= 1.0 {
                    break;
                }
                (b / 2.0).round()
            }
            (None, None) => unreachable!("each step passes or fails"),
        };
        if rate > args.sweep_max {
            break;
        }
    }
    let summary = match good {
        Some((rate, result)) => {
            let line = json!({
                "workload": "fanout",
                "target": target.backend,
                "sweep": true,
                "subscribers": args.subscribers,
                "best_rate": rate,
                "first_failing_rate": bad,
                "deliveries_per_s": round(result.deliveries_per_s, 0),
                "p99_ms": round(result.p99_ms, 3),
                "server_cpu_us_per_delivery": result.cpu_us_per_delivery,
            });
            println!("{line}");
            format!(
                "fanout sweep {} S={}: best R={rate}/s = {:.0} deliveries/s at p99 {:.1} ms, {} µs server CPU/delivery (first failing R: {})",
                target.backend,
                args.subscribers,
                result.deliveries_per_s,
                result.p99_ms,
                result.cpu_us_per_delivery.map_or("?".into(), |c| format!("{c:.2}")),
                bad.map_or("none".into(), |b| format!("{b}/s")),
            )
        }
        None => format!(
            "fanout sweep {} S={}: no rate passed (lowest tried {})",
            target.backend,
            args.subscribers,
            bad.unwrap_or(args.sweep_start)
        ),
    };
    Ok(summary)
}
