//! The server under load: attached to (`--url`, `--pid`) or started by the
//! generator (`--spawn`, pinned to one core), always on a loopback address;
//! and what the Mixroom backend would do for it: mirror bookings through
//! the internal API and sign users' Supabase-shaped tokens.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use futures_util::StreamExt;
use mixroom_testkit::database::with_database;
use mixroom_testkit::now_secs;
use serde_json::json;

/// The embedded defaults of `config/default.toml` (development only).
const DEV_JWT_SECRET: &str = "mixroom-dev-secret-change-me-0123456789abcdef";
const DEV_INTERNAL_KEY: &str = "mixroom-dev-internal-key";

#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    /// Attach to a running server: `ws://127.0.0.1:PORT` (loopback only).
    #[arg(long, conflicts_with = "spawn")]
    pub url: Option<String>,
    /// The attached server's process id (for its CPU time and memory).
    #[arg(long, requires = "url")]
    pub pid: Option<u32>,
    /// Start this server binary (`target/release/mixroom-realtime`, or
    /// `target/release/raw-reference` with `--raw`) on a free port.
    #[arg(long)]
    pub spawn: Option<PathBuf>,
    /// The target is the raw reference server (no auth, no storage, no
    /// internal API): bookings are not mirrored.
    #[arg(long)]
    pub raw: bool,
    /// With `--spawn`: a PostgreSQL server URL (`postgres://postgres@127.0.0.1:5432/postgres`);
    /// a fresh database is created on it for the run and dropped after.
    /// Without it the spawned server uses a fresh SQLite file.
    #[arg(long)]
    pub database_url: Option<String>,
    /// The server's `auth.jwt_secret` (HS256).
    #[arg(long, env = "MIXROOM_BENCH_JWT_SECRET", default_value = DEV_JWT_SECRET, hide_default_value = true)]
    pub jwt_secret: String,
    /// The server's `auth.internal_api_key`.
    #[arg(long, env = "MIXROOM_BENCH_INTERNAL_KEY", default_value = DEV_INTERNAL_KEY, hide_default_value = true)]
    pub internal_key: String,
    /// Core the spawned server is pinned to (`taskset -c`); `none` to not pin.
    #[arg(long, default_value = "0")]
    pub server_core: String,
    /// Core the generator pins itself to; `none` to not pin.
    #[arg(long, default_value = "1")]
    pub bench_core: String,
    /// Extra `KEY=VALUE` environment for a spawned server (repeatable).
    #[arg(long = "server-env")]
    pub server_env: Vec<String>,
    /// Keep the spawned server's log and data directory.
    #[arg(long)]
    pub keep: bool,
}

pub struct Target {
    pub addr: SocketAddr,
    pub pid: Option<u32>,
    pub raw: bool,
    /// `sqlite`, `postgres`, `raw` or `attached`.
    pub backend: &'static str,
    http: reqwest::Client,
    jwt_secret: String,
    internal_key: String,
    child: Option<Child>,
    dir: Option<PathBuf>,
    keep: bool,
    fresh_pg: Option<(String, String)>,
}

/// Limits the spawned server gets: the generator is one address and one
/// process doing the work of thousands of users.
const UNLIMITED: &[(&str, &str)] = &[
    ("MIXROOM__LIMITS__FRAMES_PER_SEC", "1000000"),
    ("MIXROOM__LIMITS__FRAMES_BURST", "1000000"),
    ("MIXROOM__LIMITS__HTTP_PER_SEC_PER_IP", "1000000"),
    ("MIXROOM__LIMITS__HTTP_BURST_PER_IP", "1000000"),
    ("MIXROOM__LIMITS__CONNECTS_PER_SEC_PER_IP", "1000000"),
    ("MIXROOM__LIMITS__CONNECTS_BURST_PER_IP", "1000000"),
    ("MIXROOM__LIMITS__INTERNAL_PER_SEC", "1000000"),
    ("MIXROOM__LIMITS__INTERNAL_BURST", "1000000"),
    ("MIXROOM__LIMITS__MAX_CONNECTIONS_PER_IP", "1000000"),
    ("MIXROOM__LIMITS__MAX_CONNECTIONS_PER_USER", "1000000"),
    ("MIXROOM__LIMITS__SESSION_QUEUE", "16384"),
];

/// `POST /v1/internal/rooms/{room}/messages`, from any task.
#[derive(Clone)]
pub struct Poster {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Poster {
    pub async fn post(&self, room: &str, body: &str) -> anyhow::Result<()> {
        let response = self
            .http
            .post(format!("{}/{room}/messages", self.base))
            .bearer_auth(&self.key)
            .json(&json!({ "body": body }))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("POST a message into {room}: {}", response.status());
        }
        Ok(())
    }
}

pub fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}_{}", std::process::id(), nanos % 1_000_000_000)
}

/// `ws://host:port[/...]` to a socket address, refusing non-loopback ones.
async fn loopback_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| anyhow!("--url must be ws://127.0.0.1:PORT"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(authority)
        .await
        .with_context(|| format!("cannot resolve {authority}"))?
        .collect();
    let first = *addrs
        .first()
        .ok_or_else(|| anyhow!("{authority} resolves to nothing"))?;
    if addrs.iter().any(|a| !a.ip().is_loopback()) {
        bail!("refusing {authority}: the generator only loads loopback servers (127.0.0.1)");
    }
    Ok(first)
}

/// Connects as the server does (the URL's `sslmode`/`sslrootcert` apply).
pub async fn admin_sql(admin_url: &str, sql: &str) -> anyhow::Result<()> {
    use diesel_async::SimpleAsyncConnection;
    let target = mixroom_realtime::db::tls::PgTarget::from_url(admin_url)?;
    let mut conn = tokio::time::timeout(Duration::from_secs(10), target.connect())
        .await
        .map_err(|_| anyhow!("timed out connecting to PostgreSQL"))??;
    Ok(conn.batch_execute(sql).await?)
}

impl Target {
    pub async fn open(args: &TargetArgs) -> anyhow::Result<Target> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build()?;
        let mut target = Target {
            addr: "127.0.0.1:0".parse()?,
            pid: None,
            raw: args.raw,
            backend: if args.raw { "raw" } else { "attached" },
            http,
            jwt_secret: args.jwt_secret.clone(),
            internal_key: args.internal_key.clone(),
            child: None,
            dir: None,
            keep: args.keep,
            fresh_pg: None,
        };
        if let Some(url) = &args.url {
            target.addr = loopback_addr(url).await?;
            target.pid = args.pid;
            return Ok(target);
        }
        let Some(binary) = &args.spawn else {
            bail!("give --spawn <server binary> or --url ws://127.0.0.1:PORT");
        };
        let dir = std::env::temp_dir().join(format!("mixroom-bench-{}", unique_suffix()));
        std::fs::create_dir_all(&dir)?;
        target.dir = Some(dir.clone());
        let mut command = if args.server_core == "none" {
            Command::new(binary)
        } else {
            let mut taskset = Command::new("taskset");
            taskset.arg("-c").arg(&args.server_core).arg(binary);
            taskset
        };
        if args.raw {
            command.args(["--listen", "127.0.0.1:0"]);
        } else {
            let database_url = match &args.database_url {
                Some(admin_url) => {
                    let name = format!("mixroom_bench_{}", unique_suffix());
                    admin_sql(admin_url, &format!("CREATE DATABASE {name}")).await?;
                    target.fresh_pg = Some((admin_url.clone(), name.clone()));
                    target.backend = "postgres";
                    with_database(admin_url, &name)
                }
                None => {
                    target.backend = "sqlite";
                    format!("sqlite://{}", dir.join("bench.db").display())
                }
            };
            command
                .arg("serve")
                .env("MIXROOM__SERVER__LISTEN", "127.0.0.1:0")
                .env("MIXROOM__SERVER__DEMO", "false")
                .env("MIXROOM__DATABASE__URL", database_url)
                .env("MIXROOM__AUTH__JWT_SECRET", &args.jwt_secret)
                .env("MIXROOM__AUTH__INTERNAL_API_KEY", &args.internal_key)
                .env("MIXROOM__EMAIL__OUTBOX_DIR", dir.join("outbox"))
                .env("MIXROOM__LOG__LEVEL", "warn")
                // Measured runs stop at once, without a rolling deploy's drain.
                .env("MIXROOM__SERVER__DRAIN_MS", "0")
                .env("MIXROOM__SERVER__CLOSE_SPREAD_MS", "0");
            for (key, value) in UNLIMITED {
                command.env(key, value);
            }
        }
        for pair in &args.server_env {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| anyhow!("--server-env wants KEY=VALUE, got {pair}"))?;
            command.env(key, value);
        }
        let log = std::fs::File::create(dir.join("server.log"))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        target.pid = Some(child.id());
        target.child = Some(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        let _ = tx.send(addr.trim().to_owned());
                        sent = true;
                    }
                }
            }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let addr = loop {
            match rx.try_recv() {
                Ok(addr) => break addr,
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                    bail!("the server exited before listening:\n{log}");
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the server printed no `listening on` line in 120 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        target.addr = loopback_addr(&format!("ws://{addr}")).await?;
        Ok(target)
    }

    /// A request to the internal API (`path` from `/v1/internal/`).
    pub fn internal(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("http://{}/v1/internal/{path}", self.addr))
            .bearer_auth(&self.internal_key)
    }

    /// A Supabase-shaped access token for a user, valid for two hours.
    pub fn token(&self, user_id: &str, role: &str, name: &str) -> String {
        let claims = mixroom_testkit::claims(user_id, role, name, now_secs() + 7200);
        mixroom_testkit::sign(&claims, &self.jwt_secret)
    }

    /// Mirrors a confirmed booking (as the Mixroom backend does); nothing
    /// for the raw reference server.
    pub async fn put_booking(
        &self,
        booking_id: &str,
        client_id: &str,
        provider_ids: &[String],
    ) -> anyhow::Result<()> {
        if self.raw {
            return Ok(());
        }
        let url = format!("http://{}/v1/internal/bookings/{booking_id}", self.addr);
        let response = self
            .http
            .put(url)
            .bearer_auth(&self.internal_key)
            .json(&json!({
                "client_id": client_id,
                "provider_ids": provider_ids,
                "status": "confirmed",
                "title": "Bench session",
            }))
            .send()
            .await?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            bail!("PUT booking {booking_id}: {status} {body}");
        }
        Ok(())
    }

    /// Posts system messages into rooms through the internal API.
    pub fn poster(&self) -> Poster {
        Poster {
            http: self.http.clone(),
            base: format!("http://{}/v1/internal/rooms", self.addr),
            key: self.internal_key.clone(),
        }
    }

    /// Mirrors `rooms` confirmed bookings of a client and a provider each,
    /// all new users: `(booking, [client, provider])`.
    pub async fn put_pair_bookings(
        &self,
        rooms: usize,
    ) -> anyhow::Result<Vec<(String, [String; 2])>> {
        let new_id = || uuid::Uuid::new_v4().to_string();
        let bookings: Vec<(String, [String; 2])> = (0..rooms)
            .map(|_| (new_id(), [new_id(), new_id()]))
            .collect();
        let created: Vec<anyhow::Result<()>> = futures_util::stream::iter(&bookings)
            .map(|(booking, [client, provider])| {
                self.put_booking(booking, client, std::slice::from_ref(provider))
            })
            .buffer_unordered(16)
            .collect()
            .await;
        if let Some(error) = created.into_iter().find_map(Result::err) {
            bail!("cannot mirror the bookings: {error:#}");
        }
        Ok(bookings)
    }

    /// Stops a spawned server (SIGTERM, then SIGKILL) and removes its data.
    pub async fn shutdown(mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill with a pid we started and have not reaped.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if std::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        if let Some((admin_url, name)) = self.fresh_pg.take() {
            if !self.keep {
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                if let Err(error) = admin_sql(&admin_url, &sql).await {
                    eprintln!("could not drop database {name}: {error}");
                }
            }
        }
        if let Some(dir) = self.dir.take() {
            if self.keep {
                eprintln!("kept {}", dir.display());
            } else {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}
