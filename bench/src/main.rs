//! `mixroom-bench`: the load generator of BENCHMARKS.md. It speaks the real
//! protocol with real tokens to a server on a loopback address (attached
//! with `--url`/`--pid`, or started with `--spawn` and pinned to one core
//! while the generator pins itself to another), runs one bounded workload,
//! reads the server's CPU time and memory from `/proc`, and prints JSON
//! lines plus a one-line summary.
//!
//! ```sh
//! cargo build --release                   # the server, as production builds it
//! cargo build --release -p mixroom-bench  # this generator and raw-reference
//! target/release/mixroom-bench fanout --spawn target/release/mixroom-realtime --sweep
//! ```
//!
//! The generator is one thread (a current-thread runtime, one task per
//! socket) with its own minimal WebSocket client: frames are parsed in
//! place and only the fields a workload needs are read.

mod abuse;
mod announce;
mod fanout;
mod idle;
mod measure;
mod pairs;
mod procfs;
mod session;
mod stats;
mod store;
mod target;
mod ws;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::target::{Target, TargetArgs};

#[derive(Parser)]
#[command(
    name = "mixroom-bench",
    about = "Load generator for mixroom-realtime (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand)]
enum Workload {
    /// S subscribers in one booking room, one sender at R messages/s.
    Fanout(fanout::FanoutArgs),
    /// K booking rooms × 2 members, each sending r messages/s.
    Pairs(pairs::PairsArgs),
    /// C idle authenticated sockets joined to rooms: memory per connection.
    Idle(idle::IdleArgs),
    /// Authenticated connections per second.
    Connect(idle::ConnectArgs),
    /// The durable write path alone (no server): CPU per stored message.
    Store(store::StoreArgs),
    /// Transactional emails while an announcement reaches N users.
    Announce(announce::AnnounceArgs),
}

impl Workload {
    /// The server under load; `None` for `store`, which has none.
    fn target(&self) -> Option<&TargetArgs> {
        match self {
            Workload::Fanout(a) => Some(&a.target),
            Workload::Pairs(a) => Some(&a.target),
            Workload::Idle(a) => Some(&a.target),
            Workload::Connect(a) => Some(&a.target),
            // Its server is started with its fake Resend (`announce::run`).
            Workload::Store(_) | Workload::Announce(_) => None,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    stats::init_clock();
    if let Some(target) = cli.workload.target() {
        let bench_core = &target.bench_core;
        if bench_core != "none" {
            match bench_core.parse() {
                Ok(core) if procfs::pin_to_cpu(core) => {}
                _ => {
                    eprintln!("could not pin the generator to core {bench_core}; running unpinned")
                }
            }
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    match local.block_on(&runtime, run(cli.workload)) {
        Ok(summary) => {
            println!("summary: {summary}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("mixroom-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(workload: Workload) -> anyhow::Result<String> {
    let Some(target_args) = workload.target() else {
        return match &workload {
            Workload::Store(args) => store::run(args).await,
            Workload::Announce(args) => announce::run(args).await,
            _ => unreachable!("every other workload has a target"),
        };
    };
    let target = Target::open(target_args).await?;
    let result = match &workload {
        Workload::Fanout(args) => fanout::run(&target, args).await,
        Workload::Pairs(args) => pairs::run(&target, args).await,
        Workload::Idle(args) => idle::idle(&target, args).await,
        Workload::Connect(args) => idle::connect(&target, args).await,
        Workload::Store(_) | Workload::Announce(_) => unreachable!("handled above"),
    };
    target.shutdown().await;
    result
}
