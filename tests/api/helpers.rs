//! The harness: one server child process and one database per test,
//! Supabase-shaped tokens, HTTP calls of the Mixroom backend, and a WebSocket
//! client that keeps every frame it reads while waiting for another one.

use std::collections::VecDeque;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

use mixroom_testkit::database::with_database;
/// Users, their tokens and client frames come from the test kit, shared
/// with the bench; every test server is started with the kit's HS256
/// secret.
pub use mixroom_testkit::{
    claims, masked_text_frame, now_secs, sign, User as TestUser, JWT_SECRET,
};

/// The backend key every test server is started with.
pub const INTERNAL_API_KEY: &str = "mixroom-test-internal-key-91b2c3";

/// Frame-rate limits high enough that stories which pipeline many sends
/// exercise storage and ordering rather than the per-user rate limiter.
pub const NO_RATE_LIMIT: &[(&str, &str)] = &[
    ("MIXROOM__LIMITS__FRAMES_PER_SEC", "100000"),
    ("MIXROOM__LIMITS__FRAMES_BURST", "100000"),
];

/// Budget for one expected frame.
const FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// Budget for an expected close (token expiry and shutdown take a while).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(15);
/// Budget for the server to print its `listening on` line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How many lines of server output a startup failure shows.
const OUTPUT_TAIL_LINES: usize = 200;

/// Runs each named story once per storage backend:
/// `mod story { sqlite(), postgres() }` next to `async fn story(backend)`.
macro_rules! both_backends {
    ($($story:ident),+ $(,)?) => {
        $(
            mod $story {
                #[tokio::test]
                async fn sqlite() {
                    super::$story($crate::helpers::Backend::sqlite()).await
                }

                #[tokio::test]
                async fn postgres() {
                    if let Some(backend) = $crate::helpers::Backend::postgres() {
                        super::$story(backend).await
                    } else {
                        eprintln!("skipped: MIXROOM_TEST_DATABASE_URL not set");
                    }
                }
            }
        )+
    };
}

// ---------------------------------------------------------------------------
// Storage backends
// ---------------------------------------------------------------------------

/// A database of its own for one test, removed again when dropped.
pub struct Backend {
    url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    SqliteDir(PathBuf),
    PostgresDatabase { admin_url: String, name: String },
}

impl Backend {
    /// A fresh SQLite file in a temp dir of its own.
    pub fn sqlite() -> Backend {
        let dir = std::env::temp_dir().join(format!("mixroom-test-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("create the test's temp dir");
        let url = format!("sqlite://{}", dir.join("chat.db").display());
        Backend {
            url,
            cleanup: Cleanup::SqliteDir(dir),
        }
    }

    /// A fresh database on the server named by `MIXROOM_TEST_DATABASE_URL`,
    /// or `None` when that is unset (a failure with
    /// `MIXROOM_TEST_REQUIRE_SERVICES=1`, so CI cannot skip silently).
    pub fn postgres() -> Option<Backend> {
        let admin_url = match std::env::var("MIXROOM_TEST_DATABASE_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => {
                if std::env::var("MIXROOM_TEST_REQUIRE_SERVICES").as_deref() == Ok("1") {
                    panic!(
                        "MIXROOM_TEST_REQUIRE_SERVICES=1 but MIXROOM_TEST_DATABASE_URL is not set; \
                         set it to a PostgreSQL server the tests may create databases on, \
                         e.g. postgres://postgres@127.0.0.1:5432/postgres"
                    );
                }
                return None;
            }
        };
        let name = format!("mixroom_test_{}", Uuid::new_v4().simple());
        if let Err(error) = run_admin_sql(&admin_url, &format!("CREATE DATABASE {name}")) {
            panic!("could not create database {name} via MIXROOM_TEST_DATABASE_URL: {error}");
        }
        let url = with_database(&admin_url, &name);
        Some(Backend {
            url,
            cleanup: Cleanup::PostgresDatabase { admin_url, name },
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // Best effort: a leftover temp dir or database must not fail a test.
        match &self.cleanup {
            Cleanup::SqliteDir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::PostgresDatabase { admin_url, name } => {
                let _ = run_admin_sql(
                    admin_url,
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                );
            }
        }
    }
}

/// Runs SQL on a thread with its own runtime: callers are inside a test's
/// runtime (or its drop), where blocking on another future is not allowed.
fn run_admin_sql(admin_url: &str, sql: &str) -> Result<(), String> {
    let admin_url = admin_url.to_owned();
    let sql = sql.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let connect = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls);
            let (client, connection) = tokio::time::timeout(Duration::from_secs(10), connect)
                .await
                .map_err(|_| "timed out connecting".to_string())?
                .map_err(|e| e.to_string())?;
            let driver = tokio::spawn(connection);
            let result = client.batch_execute(&sql).await.map_err(|e| e.to_string());
            drop(client);
            let _ = driver.await;
            result
        })
    })
    .join()
    .map_err(|_| "the admin SQL thread panicked".to_string())?
}

// ---------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------

/// The real `mixroom-realtime serve` binary, listening on a free port.
pub struct TestServer {
    child: Child,
    addr: SocketAddr,
    database_url: String,
    extra_env: Vec<(String, String)>,
    work_dir: PathBuf,
    http: reqwest::Client,
    output_tail: Arc<Mutex<VecDeque<String>>>,
}

impl TestServer {
    /// Starts the server on `backend` and waits until it listens.
    /// A server on a database URL of the test's making (e.g. through a relay).
    pub fn spawn_with_url(database_url: &str, extra_env: &[(&str, &str)]) -> TestServer {
        let extra_env = extra_env
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        TestServer::start(database_url.to_owned(), extra_env, repo_dir())
    }

    /// A server started in `dir` (an operator's empty directory, say)
    /// rather than in the source tree.
    pub fn spawn_in_dir(
        dir: &std::path::Path,
        database_url: &str,
        extra_env: &[(&str, &str)],
    ) -> TestServer {
        let extra_env = extra_env
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        TestServer::start(database_url.to_owned(), extra_env, dir.to_path_buf())
    }

    pub fn spawn(backend: &Backend, extra_env: &[(&str, &str)]) -> TestServer {
        let extra_env = extra_env
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        TestServer::start(backend.url().to_owned(), extra_env, repo_dir())
    }

    fn start(
        database_url: String,
        extra_env: Vec<(String, String)>,
        work_dir: PathBuf,
    ) -> TestServer {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mixroom-realtime"));
        command.arg("serve").current_dir(&work_dir);
        // Only what the test sets may configure the server.
        for (key, _) in std::env::vars().filter(|(key, _)| key.starts_with("MIXROOM__")) {
            command.env_remove(key);
        }
        command
            .env("MIXROOM__SERVER__LISTEN", "127.0.0.1:0")
            .env("MIXROOM__DATABASE__URL", &database_url)
            .env("MIXROOM__AUTH__JWT_SECRET", JWT_SECRET)
            .env("MIXROOM__AUTH__INTERNAL_API_KEY", INTERNAL_API_KEY)
            .env("MIXROOM__LOG__LEVEL", "warn")
            // Stories about shutdown set their own drain; the rest stop at once.
            .env("MIXROOM__SERVER__DRAIN_MS", "0")
            .env("MIXROOM__SERVER__CLOSE_SPREAD_MS", "0")
            // Every test talks from 127.0.0.1: per-address limits stay out
            // of the way unless a story sets them (tests/api/abuse.rs).
            .env("MIXROOM__LIMITS__HTTP_PER_SEC_PER_IP", "100000")
            .env("MIXROOM__LIMITS__HTTP_BURST_PER_IP", "100000")
            .env("MIXROOM__LIMITS__CONNECTS_PER_SEC_PER_IP", "100000")
            .env("MIXROOM__LIMITS__CONNECTS_BURST_PER_IP", "100000")
            .env("MIXROOM__LIMITS__MAX_CONNECTIONS_PER_IP", "100000")
            .env("MIXROOM__LIMITS__MAX_HTTP_CONNECTIONS_PER_IP", "100000")
            .envs(extra_env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start the mixroom-realtime binary");

        let output_tail = Arc::new(Mutex::new(VecDeque::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let stdout_pump = pump_output(stdout, "stdout", output_tail.clone(), Some(addr_tx));
        let stderr_pump = pump_output(stderr, "stderr", output_tail.clone(), None);

        let deadline = std::time::Instant::now() + STARTUP_TIMEOUT;
        let addr = loop {
            match addr_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(addr) => break addr,
                // A closed stdout means the process is ending: the exit
                // check below reports it.
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
            }
            if let Some(status) = child.try_wait().expect("poll the server process") {
                // Let the pumps read everything the server wrote before dying.
                let _ = stdout_pump.join();
                let _ = stderr_pump.join();
                panic!(
                    "the server exited with {status} before printing `listening on`; its output:\n{}",
                    tail_text(&output_tail)
                );
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the server printed no `listening on` line within {STARTUP_TIMEOUT:?}; its output:\n{}",
                    tail_text(&output_tail)
                );
            }
        };

        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("build the HTTP client");
        TestServer {
            child,
            addr,
            database_url,
            extra_env,
            work_dir,
            http,
            output_tail,
        }
    }

    /// The rest of the first output line starting with `prefix` (e.g. the
    /// address after `metrics listening on `), from the kept tail.
    pub fn output_line(&self, prefix: &str) -> Option<String> {
        let tail = self.output_tail.lock().unwrap();
        tail.iter().find_map(|line| {
            let line = line
                .split_once("] ")
                .map_or(line.as_str(), |(_, rest)| rest);
            line.strip_prefix(prefix).map(|rest| rest.trim().to_owned())
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The last lines the server wrote (stdout and stderr), for stories
    /// about what it logs.
    pub fn output(&self) -> String {
        tail_text(&self.output_tail)
    }

    /// Runs `serve` with the harness's settings and `extra_env` on a fresh
    /// SQLite file, for a start that is expected to be refused: waits for
    /// the exit (at most `limit`) and returns its status and output.
    pub fn run_expecting_exit(extra_env: &[(&str, &str)], limit: Duration) -> (ExitStatus, String) {
        let backend = Backend::sqlite();
        let mut command = Command::new(env!("CARGO_BIN_EXE_mixroom-realtime"));
        command.arg("serve").current_dir(env!("CARGO_MANIFEST_DIR"));
        for (key, _) in std::env::vars().filter(|(key, _)| key.starts_with("MIXROOM__")) {
            command.env_remove(key);
        }
        command
            .env("MIXROOM__SERVER__LISTEN", "127.0.0.1:0")
            .env("MIXROOM__DATABASE__URL", backend.url())
            .env("MIXROOM__AUTH__JWT_SECRET", JWT_SECRET)
            .env("MIXROOM__AUTH__INTERNAL_API_KEY", INTERNAL_API_KEY)
            .envs(extra_env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start the mixroom-realtime binary");
        let deadline = std::time::Instant::now() + limit;
        while child.try_wait().expect("poll the server").is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let output = child.wait_with_output().expect("collect the output");
                panic!(
                    "the server was expected to exit but kept running; its output:\n{}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let output = child.wait_with_output().expect("collect the output");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status, text)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// For requests the helpers below do not cover (bad keys, bad bodies).
    pub fn http_client(&self) -> &reqwest::Client {
        &self.http
    }

    /// SIGKILL: no chance to flush anything that was not durably stored.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM without waiting, so a test can watch its sockets close.
    pub fn send_sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits for the process to exit; kills it and panics after `limit`.
    /// Polls with an async sleep so the test's sockets can keep running.
    pub async fn wait_for_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the server process") {
                return status;
            }
            if Instant::now() > deadline {
                self.kill_hard();
                panic!(
                    "the server did not exit within {limit:?}; its output:\n{}",
                    tail_text(&self.output_tail)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then the exit status (within 10 s).
    pub async fn terminate(&mut self) -> ExitStatus {
        self.send_sigterm();
        self.wait_for_exit(Duration::from_secs(10)).await
    }

    /// Starts the server again on the same database and settings (the old
    /// process is killed if still running); the port changes.
    pub fn restart(&mut self) {
        self.kill_hard();
        let next = TestServer::start(
            self.database_url.clone(),
            self.extra_env.clone(),
            self.work_dir.clone(),
        );
        *self = next;
    }

    /// A sample of `/metrics` by its full name (labels included, e.g.
    /// `mixroom_rate_limited_total{limit="http"}`); 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self
            .http
            .get(self.http("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
            .map_or(0.0, |value| value.trim().parse().expect("a metric value"))
    }

    /// Polls `/metrics` until `sample` equals `expected`.
    pub async fn wait_for_metric(&self, sample: &str, expected: f64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let value = self.metric(sample).await;
            if value == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{sample} stayed {value}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `PUT /v1/internal/users/{id}`, as the Mixroom backend mirrors a profile.
    pub async fn put_user(&self, user: &TestUser) {
        let response = self
            .http
            .put(self.http(&format!("/v1/internal/users/{}", user.id)))
            .bearer_auth(INTERNAL_API_KEY)
            .json(&json!({"email": user.email(), "name": user.name, "role": user.role}))
            .send()
            .await
            .expect("PUT /v1/internal/users/{id}");
        assert_success(response, "PUT /v1/internal/users/{id}").await;
    }

    /// `PUT /v1/internal/bookings/{id}`, as the Mixroom backend mirrors a booking.
    pub async fn put_booking(
        &self,
        booking_id: &str,
        client: &TestUser,
        providers: &[&TestUser],
        status: &str,
    ) {
        let provider_ids: Vec<&str> = providers.iter().map(|p| p.id.as_str()).collect();
        let response = self
            .http
            .put(self.http(&format!("/v1/internal/bookings/{booking_id}")))
            .bearer_auth(INTERNAL_API_KEY)
            .json(&json!({
                "client_id": client.id,
                "provider_ids": provider_ids,
                "status": status,
                "title": "Session",
                "starts_at": "2026-12-01T10:00:00Z",
            }))
            .send()
            .await
            .expect("PUT /v1/internal/bookings/{id}");
        assert_success(response, "PUT /v1/internal/bookings/{id}").await;
    }

    /// Mirrors the users and a confirmed booking between them; returns its room.
    pub async fn open_booking(&self, client: &TestUser, providers: &[&TestUser]) -> String {
        self.put_user(client).await;
        for provider in providers {
            self.put_user(provider).await;
        }
        let booking_id = Uuid::new_v4().to_string();
        self.put_booking(&booking_id, client, providers, "confirmed")
            .await;
        format!("booking:{booking_id}")
    }

    /// `POST /v1/support/conversations` as `user`; returns its room
    /// (`support:<id>`).
    pub async fn open_support_conversation(&self, user: &TestUser) -> String {
        let response = self
            .http
            .post(self.http("/v1/support/conversations"))
            .bearer_auth(&user.token)
            .send()
            .await
            .expect("POST /v1/support/conversations");
        assert_eq!(response.status(), 201, "opening a support conversation");
        let body: Value = response.json().await.expect("JSON");
        let id = body["id"].as_str().expect("an id");
        assert_eq!(body["room"], format!("support:{id}"));
        format!("support:{id}")
    }

    /// `GET /v1/me/export` as `user`, asserting it answered 200.
    pub async fn export(&self, user: &TestUser) -> Value {
        let response = self
            .http
            .get(self.http("/v1/me/export"))
            .bearer_auth(&user.token)
            .send()
            .await
            .expect("GET /v1/me/export");
        assert_eq!(response.status(), 200, "GET /v1/me/export");
        response.json().await.expect("the export is JSON")
    }

    /// `GET /readyz`: its status and body.
    pub async fn readiness(&self) -> (u16, Value) {
        let response = self
            .http
            .get(self.http("/readyz"))
            .send()
            .await
            .expect("GET /readyz");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    /// `GET /v1/rooms/{room}/messages` as `user`, whatever the answer.
    pub async fn get_messages(
        &self,
        user: &TestUser,
        room: &str,
        before: Option<i64>,
        limit: Option<u32>,
    ) -> reqwest::Response {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(before) = before {
            query.push(("before", before.to_string()));
        }
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        self.http
            .get(self.http(&format!("/v1/rooms/{room}/messages")))
            .bearer_auth(&user.token)
            .query(&query)
            .send()
            .await
            .expect("GET /v1/rooms/{room}/messages")
    }

    /// The history route's JSON, asserting it answered 200.
    pub async fn history_over_http(
        &self,
        user: &TestUser,
        room: &str,
        before: Option<i64>,
        limit: Option<u32>,
    ) -> Value {
        let response = self.get_messages(user, room, before, limit).await;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(
            status, 200,
            "GET /v1/rooms/{room}/messages as {}: {body}",
            user.name
        );
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("history is not JSON ({e}): {body}"))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Forwards a server output stream to the test's stderr (shown when a test
/// fails), keeps its tail for startup failures, and on stdout reports the
/// `listening on <addr>` line. Keeps draining so the server never blocks.
fn pump_output(
    stream: impl Read + Send + 'static,
    label: &'static str,
    tail: Arc<Mutex<VecDeque<String>>>,
    addr_tx: Option<mpsc::Sender<SocketAddr>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let (Some(tx), Some(rest)) = (&addr_tx, line.strip_prefix("listening on ")) {
                match rest.trim().parse() {
                    Ok(addr) => {
                        let _ = tx.send(addr);
                    }
                    Err(e) => eprintln!("[server] unparsable address in `{line}`: {e}"),
                }
            }
            eprintln!("[server {label}] {line}");
            let mut tail = tail.lock().unwrap();
            if tail.len() == OUTPUT_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(format!("[{label}] {line}"));
        }
    })
}

fn tail_text(tail: &Mutex<VecDeque<String>>) -> String {
    let tail = tail.lock().unwrap();
    tail.iter().cloned().collect::<Vec<_>>().join("\n")
}

async fn assert_success(response: reqwest::Response, what: &str) {
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        panic!("{what} answered {status}: {body}");
    }
}

// ---------------------------------------------------------------------------
// The WebSocket client
// ---------------------------------------------------------------------------

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What ended a wait for a frame.
enum Interrupt {
    Timeout,
    Closed(Option<(u16, String)>),
    Ended,
    Failed(String),
}

impl fmt::Display for Interrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Interrupt::Timeout => write!(f, "nothing arrived in time"),
            Interrupt::Closed(Some((code, reason))) => {
                write!(f, "the server closed the socket with {code} {reason:?}")
            }
            Interrupt::Closed(None) => write!(f, "the server closed the socket without a code"),
            Interrupt::Ended => write!(f, "the connection ended without a close frame"),
            Interrupt::Failed(error) => write!(f, "the connection failed: {error}"),
        }
    }
}

/// One WebSocket connection, as the web app holds it.
pub struct WsClient {
    socket: Socket,
    /// Frames read while waiting for another one; `recv*` serve these first,
    /// so nothing the server sent is lost.
    pending: VecDeque<Value>,
    /// Who this is, for failure messages.
    label: String,
    next_ref: u32,
}

impl WsClient {
    /// Opens the socket without authenticating.
    pub async fn connect(server: &TestServer) -> WsClient {
        let (socket, _) = tokio::time::timeout(
            FRAME_TIMEOUT,
            tokio_tungstenite::connect_async(server.ws_url()),
        )
        .await
        .expect("timed out opening the WebSocket")
        .expect("open the WebSocket");
        WsClient {
            socket,
            pending: VecDeque::new(),
            label: "unauthenticated socket".to_owned(),
            next_ref: 0,
        }
    }

    /// Opens the socket as an impatient client does: the upgrade request
    /// and the `auth` frame leave in one write, before any answer, so the
    /// server reads the frame together with the request. Returns the
    /// `welcome`.
    pub async fn connect_pipelined(server: &TestServer, user: &TestUser) -> (WsClient, Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = TcpStream::connect(server.addr()).await.expect("connect");
        let mut bytes = format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
            server.addr()
        )
        .into_bytes();
        let auth = json!({"type": "auth", "token": user.token}).to_string();
        bytes.extend(masked_text_frame(auth.as_bytes()));
        tcp.write_all(&bytes).await.expect("send upgrade and auth");

        let mut received = Vec::new();
        let head_end = loop {
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(FRAME_TIMEOUT, tcp.read(&mut chunk))
                .await
                .expect("timed out waiting for the 101")
                .expect("read the 101");
            assert!(
                n > 0,
                "the server closed the connection instead of upgrading"
            );
            received.extend_from_slice(&chunk[..n]);
            if let Some(at) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
        };
        let head = String::from_utf8_lossy(&received[..head_end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade answered {head}");
        let socket = WebSocketStream::from_partially_read(
            MaybeTlsStream::Plain(tcp),
            received[head_end..].to_vec(),
            tokio_tungstenite::tungstenite::protocol::Role::Client,
            None,
        )
        .await;
        let mut ws = WsClient {
            socket,
            pending: VecDeque::new(),
            label: format!("{}'s pipelined socket", user.name),
            next_ref: 0,
        };
        let welcome = ws.recv_type("welcome").await;
        (ws, welcome)
    }

    /// Opens the socket and authenticates as `user`.
    pub async fn connect_as(server: &TestServer, user: &TestUser) -> WsClient {
        let mut ws = WsClient::connect(server).await;
        ws.label = format!("{}'s socket", user.name);
        let welcome = ws.authenticate(&user.token).await;
        assert_eq!(welcome["user_id"], user.id.as_str(), "welcome: {welcome}");
        ws
    }

    /// Sends the `auth` frame and returns the `welcome`.
    pub async fn authenticate(&mut self, token: &str) -> Value {
        self.send_json(json!({"type": "auth", "token": token}))
            .await;
        self.recv_type("welcome").await
    }

    pub async fn send_json(&mut self, frame: Value) {
        self.send_text(&frame.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        tokio::time::timeout(
            FRAME_TIMEOUT,
            self.socket.send(Message::text(text.to_owned())),
        )
        .await
        .unwrap_or_else(|_| panic!("{}: timed out sending a frame", self.label))
        .unwrap_or_else(|e| panic!("{}: sending a frame failed: {e}", self.label));
    }

    /// The next text frame as JSON.
    pub async fn recv(&mut self) -> Value {
        if let Some(frame) = self.pending.pop_front() {
            return frame;
        }
        let deadline = Instant::now() + FRAME_TIMEOUT;
        match self.read_frame(deadline).await {
            Ok(frame) => frame,
            Err(interrupt) => panic!("{}: waiting for any frame, {interrupt}", self.label),
        }
    }

    /// The next frame of type `frame_type`; other frames stay queued.
    pub async fn recv_type(&mut self, frame_type: &str) -> Value {
        self.recv_matching(&format!("a `{frame_type}` frame"), |frame| {
            frame["type"] == frame_type
        })
        .await
    }

    /// The next frame `matches` accepts (`what` describes it for failures);
    /// other frames stay queued for later calls.
    pub async fn recv_matching(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        if let Some(index) = self.pending.iter().position(&matches) {
            return self.pending.remove(index).expect("index from position");
        }
        let deadline = Instant::now() + FRAME_TIMEOUT;
        loop {
            match self.read_frame(deadline).await {
                Ok(frame) if matches(&frame) => return frame,
                Ok(frame) => self.pending.push_back(frame),
                Err(interrupt) => panic!(
                    "{}: waiting {FRAME_TIMEOUT:?} for {what}, {interrupt}; other frames received: {:?}",
                    self.label, self.pending
                ),
            }
        }
    }

    /// Asserts that no frame of the given types arrives within `ms`.
    pub async fn expect_silence(&mut self, ms: u64, frame_types: &[&str]) {
        let unwanted = |frame: &Value| frame_types.iter().any(|t| frame["type"] == *t);
        if let Some(frame) = self.pending.iter().find(|frame| unwanted(frame)) {
            panic!(
                "{}: expected no {frame_types:?} frame, got {frame}",
                self.label
            );
        }
        let deadline = Instant::now() + Duration::from_millis(ms);
        loop {
            match self.read_frame(deadline).await {
                Ok(frame) if unwanted(&frame) => {
                    panic!(
                        "{}: expected no {frame_types:?} frame, got {frame}",
                        self.label
                    )
                }
                Ok(frame) => self.pending.push_back(frame),
                Err(Interrupt::Timeout) => return,
                Err(interrupt) => panic!(
                    "{}: expected the socket to stay open and quiet, but {interrupt}",
                    self.label
                ),
            }
        }
    }

    /// The next frame, or the close (code and reason) that ended the socket.
    pub async fn recv_any_or_close(&mut self) -> Result<Value, (u16, String)> {
        if let Some(frame) = self.pending.pop_front() {
            return Ok(frame);
        }
        match self.read_frame(Instant::now() + CLOSE_TIMEOUT).await {
            Ok(frame) => Ok(frame),
            Err(Interrupt::Closed(Some(close))) => Err(close),
            Err(interrupt) => panic!(
                "{}: waiting for a frame or a close, {interrupt}",
                self.label
            ),
        }
    }

    /// Forgets frames kept while waiting for others (for long floods).
    pub fn drain_pending(&mut self) {
        self.pending.clear();
    }

    /// Waits for the server's close frame and returns its code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        let deadline = Instant::now() + CLOSE_TIMEOUT;
        loop {
            match self.read_frame(deadline).await {
                // Frames sent before the close are fine; keep them.
                Ok(frame) => self.pending.push_back(frame),
                Err(Interrupt::Closed(Some(close))) => return close,
                Err(interrupt) => panic!(
                    "{}: waiting {CLOSE_TIMEOUT:?} for a close frame with a code, {interrupt}; frames received: {:?}",
                    self.label, self.pending
                ),
            }
        }
    }

    /// The next text frame from the socket itself (not from `pending`),
    /// answering the server's pings on the way.
    async fn read_frame(&mut self, deadline: Instant) -> Result<Value, Interrupt> {
        loop {
            let Ok(next) = tokio::time::timeout_at(deadline, self.socket.next()).await else {
                return Err(Interrupt::Timeout);
            };
            match next {
                None => return Err(Interrupt::Ended),
                Some(Err(error)) => return Err(Interrupt::Failed(error.to_string())),
                Some(Ok(Message::Text(text))) => {
                    return Ok(serde_json::from_str(&text).unwrap_or_else(|e| {
                        panic!(
                            "{}: a text frame that is not JSON ({e}): {text}",
                            self.label
                        )
                    }))
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(Interrupt::Closed(
                        frame.map(|frame| (frame.code.into(), frame.reason.to_string())),
                    ))
                }
                Some(Ok(Message::Binary(bytes))) => {
                    panic!("{}: unexpected binary frame: {bytes:?}", self.label)
                }
                // Pings are answered by tungstenite itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            }
        }
    }

    /// Closes the socket the polite way, as a browser tab does.
    pub async fn disconnect(mut self) {
        let _ = tokio::time::timeout(FRAME_TIMEOUT, self.socket.close(None)).await;
        // Read until the server's close reply so the close is complete.
        let deadline = Instant::now() + FRAME_TIMEOUT;
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, self.socket.next()).await {}
    }

    /// Sends `frame` with a `ref` (its own, or a fresh one) and returns the
    /// reply: the next `reply_type` frame (carrying that ref, or none) or an
    /// `error` frame echoing that ref.
    pub async fn request(&mut self, mut frame: Value, reply_type: &str) -> Value {
        let reference = match frame.get("ref").and_then(Value::as_str) {
            Some(reference) => reference.to_owned(),
            None => {
                self.next_ref += 1;
                let reference = format!("ref-{}", self.next_ref);
                frame["ref"] = json!(reference);
                reference
            }
        };
        let what = format!("the reply to {frame}");
        self.send_json(frame).await;
        self.recv_matching(&what, |reply| {
            let ref_matches = reply["ref"] == reference.as_str();
            (reply["type"] == reply_type && (ref_matches || reply["ref"].is_null()))
                || (reply["type"] == "error" && ref_matches)
        })
        .await
    }

    /// `ping` → `pong`.
    pub async fn ping(&mut self) -> Value {
        let pong = self.request(json!({"type": "ping"}), "pong").await;
        assert_eq!(
            pong["type"], "pong",
            "{}: ping answered with {pong}",
            self.label
        );
        assert!(
            !pong["server_time"].is_null(),
            "pong without server_time: {pong}"
        );
        pong
    }

    /// Joins `room` and returns the `joined` frame.
    pub async fn join(&mut self, room: &str, since: Option<i64>) -> Value {
        let mut frame = json!({"type": "join", "room": room});
        if let Some(since) = since {
            frame["since"] = json!(since);
        }
        let joined = self.request(frame, "joined").await;
        assert_eq!(
            joined["type"], "joined",
            "{}: join {room}: {joined}",
            self.label
        );
        assert_eq!(joined["room"], room, "joined: {joined}");
        joined
    }

    /// A `history` frame request; returns the reply (`history` or `error`).
    pub async fn history(&mut self, room: &str, before: Option<i64>, limit: Option<u32>) -> Value {
        let mut frame = json!({"type": "history", "room": room});
        if let Some(before) = before {
            frame["before"] = json!(before);
        }
        if let Some(limit) = limit {
            frame["limit"] = json!(limit);
        }
        self.request(frame, "history").await
    }

    /// Sends a message without waiting (for pipelining); `ref` is the client_id.
    pub async fn send_message_frame(&mut self, room: &str, client_id: &str, body: &str) {
        self.send_json(json!({
            "type": "send",
            "room": room,
            "client_id": client_id,
            "body": body,
            "ref": client_id,
        }))
        .await;
    }

    /// The `ack` for `client_id`; panics on an error frame for it.
    pub async fn wait_ack(&mut self, client_id: &str) -> Value {
        let reply = self
            .recv_matching(&format!("the ack for {client_id}"), |frame| {
                (frame["type"] == "ack" && frame["client_id"] == client_id)
                    || (frame["type"] == "error" && frame["ref"] == client_id)
            })
            .await;
        assert_eq!(
            reply["type"], "ack",
            "{}: send {client_id} answered {reply}",
            self.label
        );
        reply
    }

    /// Sends a message and returns its `ack`.
    pub async fn send_msg(&mut self, room: &str, client_id: &str, body: &str) -> Value {
        self.send_message_frame(room, client_id, body).await;
        self.wait_ack(client_id).await
    }
}

/// The `seq`s of a history reply's messages, in the order given.
pub fn seqs(history: &Value) -> Vec<i64> {
    history["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("history without a messages array: {history}"))
        .iter()
        .map(|message| {
            message["seq"]
                .as_i64()
                .unwrap_or_else(|| panic!("message without seq: {message}"))
        })
        .collect()
}
