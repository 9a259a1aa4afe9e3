//! `store`: the durable write path alone, without sockets. It calls the
//! server's own `Db::append_messages` with batches shaped as the sequencer
//! forms them under the `pairs` load (one commit in flight, each carrying
//! `--batch` messages spread over `--rooms` rooms), and optionally stores
//! the email items as the notifier does (one range per recipient and room
//! per second of messages). CPU per message is the
//! floor the store puts under every durable chat message: what is left of
//! a core for sockets, frames and fan-out.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use mixroom_realtime::db::email::EmailItemRow;
use mixroom_realtime::db::messages::{Action, NewMessage};
use mixroom_realtime::db::Db;
use mixroom_realtime::domain::email::{EmailKind, ItemState};
use secrecy::SecretString;
use serde_json::json;

use crate::procfs::{self, Cpu};
use crate::stats::{now_ns, round, Samples};
use mixroom_testkit::database::with_database;

use crate::target::{admin_sql, unique_suffix};

#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// A PostgreSQL server URL; a fresh database is made for the run and
    /// dropped after. Without it a fresh SQLite file is used.
    #[arg(long)]
    pub database_url: Option<String>,
    /// Rooms the messages are spread over (two senders each).
    #[arg(long, default_value_t = 2000)]
    pub rooms: usize,
    /// Messages per commit (at 20,000 messages/s the sequencer's 5 ms
    /// commit interval gives 100).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Commits measured, after `--warmup` unmeasured ones.
    #[arg(long, default_value_t = 1000)]
    pub commits: usize,
    #[arg(long, default_value_t = 200)]
    pub warmup: usize,
    /// Also store the email items for the other member as the notifier
    /// does: one range per recipient and room for each `--items-every`
    /// commits.
    #[arg(long)]
    pub with_items: bool,
    /// Commits per group of email items (the notifier's 1 s at the
    /// sequencer's 5 ms per commit).
    #[arg(long, default_value_t = 200)]
    pub items_every: usize,
    #[arg(long, default_value_t = 64)]
    pub body_bytes: usize,
    /// Core this process pins itself to (where the server would run).
    #[arg(long, default_value = "0")]
    pub core: String,
}

/// A small deterministic generator: the rooms of a batch are spread as
/// the independent senders of `pairs` spread them.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % bound as u64) as usize
    }
}

struct Member {
    user_id: String,
    peer_id: String,
    room: String,
}

fn members(rooms: usize) -> Vec<Member> {
    let mut members = Vec::with_capacity(rooms * 2);
    for _ in 0..rooms {
        let room = format!("booking:{}", uuid::Uuid::new_v4());
        let a = uuid::Uuid::new_v4().to_string();
        let b = uuid::Uuid::new_v4().to_string();
        members.push(Member {
            user_id: a.clone(),
            peer_id: b.clone(),
            room: room.clone(),
        });
        members.push(Member {
            user_id: b,
            peer_id: a,
            room,
        });
    }
    members
}

pub async fn run(args: &StoreArgs) -> anyhow::Result<String> {
    if args.core != "none" {
        match args.core.parse() {
            Ok(core) if procfs::pin_to_cpu(core) => {}
            _ => eprintln!("could not pin to core {}; running unpinned", args.core),
        }
    }
    let dir = std::env::temp_dir().join(format!("mixroom-bench-store-{}", unique_suffix()));
    let fresh_pg = match &args.database_url {
        Some(admin_url) => {
            let name = format!("mixroom_bench_{}", unique_suffix());
            admin_sql(admin_url, &format!("CREATE DATABASE {name}")).await?;
            Some((admin_url.clone(), name))
        }
        None => None,
    };
    let url = match &fresh_pg {
        Some((admin_url, name)) => with_database(admin_url, name),
        None => {
            std::fs::create_dir_all(&dir)?;
            format!("sqlite://{}", dir.join("store.db").display())
        }
    };
    let result = measure(args, &SecretString::from(url)).await;
    if let Some((admin_url, name)) = fresh_pg {
        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        if let Err(error) = admin_sql(&admin_url, &sql).await {
            eprintln!("could not drop database {name}: {error}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn measure(args: &StoreArgs, url: &SecretString) -> anyhow::Result<String> {
    Db::migrate(url).await.context("migrating")?;
    let db = Db::connect(url, 4).await.context("connecting")?;
    let backend = db.backend_name();
    let members = members(args.rooms.max(1));
    let mut pick = Lcg(7);
    let body = "x".repeat(args.body_bytes);
    let mut counter = 0u64;
    // (recipient, room) -> its range since the last group was stored.
    let mut pending_items: HashMap<(String, String), EmailItemRow> = HashMap::new();
    let mut items_stored = 0usize;
    let mut commit_latency = Samples::with_capacity(args.commits);
    let mut start: Option<(Instant, Cpu, Cpu)> = None;

    for commit in 0..args.warmup + args.commits {
        if commit == args.warmup {
            start = Some((Instant::now(), procfs::self_cpu(), procfs::postgres_cpu()));
        }
        let mut peers = Vec::with_capacity(args.batch);
        let batch: Vec<NewMessage> = (0..args.batch)
            .map(|_| {
                let member = &members[pick.next(members.len())];
                counter += 1;
                peers.push(member.peer_id.clone());
                NewMessage {
                    id: None,
                    room: member.room.clone(),
                    sender_id: Some(member.user_id.clone()),
                    sender_name: "Bench".into(),
                    sender_role: "client".into(),
                    client_id: Some(format!("c{counter}")),
                    body: body.clone(),
                    action: Action::MESSAGE,
                }
            })
            .collect();
        let began = now_ns();
        let sent = batch.len();
        let appended: Vec<_> = db
            .append_messages(batch)
            .await?
            .into_iter()
            .collect::<Result<_, _>>()?;
        // Every message is new: anything else means the figures are not
        // about storing `--batch` messages per commit.
        anyhow::ensure!(
            appended.len() == sent && appended.iter().all(|a| !a.duplicate),
            "commit {commit}: {} of {sent} messages stored as new",
            appended.iter().filter(|a| !a.duplicate).count()
        );
        if commit >= args.warmup {
            commit_latency.record_since(began, now_ns());
        }
        if args.with_items {
            for (appended, peer) in appended.iter().zip(peers) {
                let row = &appended.row;
                pending_items
                    .entry((peer.clone(), row.room.clone()))
                    .and_modify(|range| range.up_to_seq = Some(row.seq))
                    .or_insert_with(|| {
                        let id = uuid::Uuid::now_v7().to_string();
                        EmailItemRow {
                            source: format!("range:{}:{id}", row.room),
                            id,
                            user_id: peer,
                            kind: EmailKind::Chat,
                            room: Some(row.room.clone()),
                            seq: Some(row.seq),
                            message_id: None,
                            notification_id: None,
                            created_at: row.sent_at,
                            due_at: row.sent_at + 600_000,
                            state: ItemState::Pending,
                            outbox_id: None,
                            updated_at: row.sent_at,
                            up_to_seq: Some(row.seq),
                            transactional: false,
                        }
                    });
            }
            if (commit + 1) % args.items_every.max(1) == 0 {
                let group: Vec<EmailItemRow> = pending_items.drain().map(|(_, r)| r).collect();
                items_stored += db.upsert_chat_ranges(&group).await?;
            }
        }
    }
    if !pending_items.is_empty() {
        let group: Vec<EmailItemRow> = pending_items.drain().map(|(_, r)| r).collect();
        items_stored += db.upsert_chat_ranges(&group).await?;
    }
    let (began, cpu_before, pg_before) = start.context("no measured commits")?;
    let wall = began.elapsed().as_secs_f64();
    let used = procfs::self_cpu().since(&cpu_before);
    let cpu = used.total();
    let messages = (args.commits * args.batch) as f64;
    let mut report = json!({
        "workload": "store",
        "backend": backend,
        "rooms": args.rooms,
        "batch": args.batch,
        "commits": args.commits,
        "with_items": args.with_items,
        "item_upserts": items_stored,
        "messages": messages,
        "wall_s": round(wall, 3),
        "messages_per_s_one_writer": round(messages / wall, 0),
        "commit_ms": commit_latency.summary().json(),
        "cpu_us_per_message": round(cpu * 1e6 / messages, 2),
        "sys_share": round(used.system / cpu.max(1e-9), 3),
    });
    if backend == "postgres" {
        let pg = procfs::postgres_cpu().since(&pg_before).total();
        report["postgres_cpu_us_per_message"] = json!(round(pg * 1e6 / messages, 2));
    }
    println!("{report}");
    Ok(format!(
        "store {backend}: {} messages in commits of {}: {:.1} µs CPU per message in this process, {:.0} messages/s with one commit in flight",
        messages,
        args.batch,
        cpu * 1e6 / messages,
        messages / wall
    ))
}
