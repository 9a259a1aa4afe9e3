//! CPU time of the server, the generator and PostgreSQL around a measured
//! window, turned into per-delivery figures.

use std::time::Duration;

use serde_json::{json, Value};

use crate::procfs::{self, Cpu};
use crate::stats::{now_ns, round};
use crate::target::Target;

/// Waits until the server's CPU time stops growing (work queued behind
/// the measured window, such as database writes after a `welcome`, is
/// then done): at most 1 tick per 250 ms twice in a row, at most 30 s.
pub async fn settle_server(target: &Target) {
    let Some(pid) = target.pid else { return };
    let mut last = procfs::process_cpu(pid).map(|c| c.total()).unwrap_or(0.0);
    let mut quiet = 0;
    for _ in 0..120 {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let now = procfs::process_cpu(pid).map(|c| c.total()).unwrap_or(0.0);
        if now - last <= 0.0101 {
            quiet += 1;
            if quiet >= 2 {
                return;
            }
        } else {
            quiet = 0;
        }
        last = now;
    }
}

/// Waits until `counter` stops moving for `quiet` (at most `limit`).
pub async fn settle(counter: impl Fn() -> u64, quiet: Duration, limit: Duration) {
    drain(|| false, counter, quiet, limit).await;
}

/// Waits until `done()`, or until `progress` stops moving for `quiet`, at
/// most `limit`: the end of a workload, when what is still on its way
/// arrives or never will.
pub async fn drain(
    done: impl Fn() -> bool,
    progress: impl Fn() -> u64,
    quiet: Duration,
    limit: Duration,
) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = progress();
    let mut still_since = tokio::time::Instant::now();
    while !done() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = progress();
        if now != last {
            last = now;
            still_since = tokio::time::Instant::now();
        } else if still_since.elapsed() >= quiet {
            return;
        }
    }
}

pub struct Snapshot {
    at_ns: u64,
    server: Option<Cpu>,
    bench: Cpu,
    postgres: Option<Cpu>,
}

impl Snapshot {
    pub fn take(target: &Target) -> Snapshot {
        Snapshot {
            at_ns: now_ns(),
            server: target.pid.and_then(procfs::process_cpu),
            bench: procfs::self_cpu(),
            postgres: (target.backend == "postgres").then(procfs::postgres_cpu),
        }
    }
}

/// The window's CPU figures; `per` is what one unit is (deliveries,
/// connections) and `count` how many there were.
pub fn cpu_report(before: &Snapshot, after: &Snapshot, per: &str, count: u64) -> Value {
    let wall = (after.at_ns - before.at_ns) as f64 / 1e9;
    let count_f = count.max(1) as f64;
    let mut report = json!({
        "window_s": round(wall, 3),
        "bench_cpu_s": round(after.bench.since(&before.bench).total(), 3),
        format!("bench_cpu_us_per_{per}"):
            round(after.bench.since(&before.bench).total() * 1e6 / count_f, 3),
    });
    if let (Some(b), Some(a)) = (before.server, after.server) {
        let used = a.since(&b);
        report["server_cpu_s"] = json!(round(used.total(), 3));
        report["server_cpu_util"] = json!(round(used.total() / wall.max(1e-9), 3));
        report["server_sys_share"] = json!(round(used.system / used.total().max(1e-9), 3));
        report[format!("server_cpu_us_per_{per}")] = json!(round(used.total() * 1e6 / count_f, 3));
    }
    if let (Some(b), Some(a)) = (before.postgres, after.postgres) {
        let used = a.since(&b);
        report["postgres_cpu_s"] = json!(round(used.total(), 3));
        report[format!("postgres_cpu_us_per_{per}")] =
            json!(round(used.total() * 1e6 / count_f, 3));
    }
    report
}
