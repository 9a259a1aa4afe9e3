//! The real `mixroom-realtime serve` binary as a child process: started
//! on port 0 with the harness's settings, watched through its output,
//! stopped (politely or not) and restarted.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::time::Instant;

use super::{Backend, INTERNAL_API_KEY, JWT_SECRET};

/// Budget for the server to print its `listening on` line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How many lines of server output a startup failure shows.
const OUTPUT_TAIL_LINES: usize = 200;

/// The real `mixroom-realtime serve` binary, listening on a free port.
pub struct TestServer {
    child: Child,
    addr: SocketAddr,
    database_url: String,
    extra_env: Vec<(String, String)>,
    work_dir: PathBuf,
    /// Also for the HTTP calls of `http.rs`.
    pub(super) http: reqwest::Client,
    output_tail: Arc<Mutex<VecDeque<String>>>,
}

impl TestServer {
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

    /// Starts the server on `backend` and waits until it listens.
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

    /// For requests the calls of `http.rs` do not cover (bad keys, bad bodies).
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
