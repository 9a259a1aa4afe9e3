//! TLS wherever the network is crossed: the server against a PostgreSQL and
//! a Redis that speak nothing but TLS, with a CA the test makes; plaintext
//! refused by the database, a wrong CA or host name refused by the server,
//! and production refusing a URL that might be plaintext.
//!
//! The TLS-only PostgreSQL is a cluster of the test's own (`initdb` into a
//! temp dir, `ssl=on`, only `hostssl` lines in `pg_hba.conf`), run as the
//! `postgres` user when the tests run as root. Its binaries come from
//! `MIXROOM_TEST_PG_BIN`, else `pg_config --bindir`, else the newest
//! `/usr/lib/postgresql/*/bin`; missing binaries skip these stories, or fail
//! them with `MIXROOM_TEST_REQUIRE_SERVICES=1`.

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use uuid::Uuid;

use crate::helpers::{Backend, TestServer, TestUser, WsClient};

const PRODUCTION: (&str, &str) = ("MIXROOM__SERVER__ENVIRONMENT", "production");
const REFUSAL_LIMIT: Duration = Duration::from_secs(30);

fn services_required() -> bool {
    std::env::var("MIXROOM_TEST_REQUIRE_SERVICES").as_deref() == Ok("1")
}

/// `None` (skip) when something this story needs is missing, a failure when
/// services are required.
fn missing<T>(what: &str) -> Option<T> {
    if services_required() {
        panic!("MIXROOM_TEST_REQUIRE_SERVICES=1 but {what}");
    }
    eprintln!("skipped: {what}");
    None
}

/// A temp dir removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA and a certificate it signed for the given names (PEM).
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl Pki {
    fn new(ca_name: &str, names: &[&str]) -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "mixroom test server");
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        Pki {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("find a free port")
        .port()
}

/// Who this process runs as, from `/proc/self` (no libc needed).
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

fn id_of(flag: &str, user: &str) -> Option<u32> {
    let output = Command::new("id").args([flag, user]).output().ok()?;
    String::from_utf8(output.stdout).ok()?.trim().parse().ok()
}

fn postgres_bin_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("MIXROOM_TEST_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|dir| PathBuf::from(dir.trim()));
    if let Some(dir) = from_pg_config.filter(|dir| dir.join("initdb").exists()) {
        return Some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// A PostgreSQL cluster of the test's own that accepts TLS connections only.
struct TlsPostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    owner: Option<(u32, u32)>,
    _dir: TempDir,
}

impl TlsPostgres {
    fn start(pki: &Pki) -> Option<TlsPostgres> {
        let Some(bin) = postgres_bin_dir().filter(|bin| bin.join("pg_ctl").exists()) else {
            return missing("no PostgreSQL server binaries (initdb, pg_ctl) were found");
        };
        // PostgreSQL refuses to run as root: hand it to the `postgres` user.
        let owner = if running_as_root() {
            match (id_of("-u", "postgres"), id_of("-g", "postgres")) {
                (Some(uid), Some(gid)) => Some((uid, gid)),
                _ => return missing("running as root and there is no `postgres` user"),
            }
        } else {
            None
        };
        let dir = TempDir::new("mixroom-tls-pg");
        let data = dir.path().join("data");
        let port = free_port();
        let cluster = TlsPostgres {
            bin,
            data,
            port,
            owner,
            _dir: dir,
        };
        cluster.chown(cluster._dir.path());
        cluster.run(
            "initdb",
            &[
                "-D",
                cluster.data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        for (name, content, mode) in [
            ("server.crt", &pki.cert_pem, 0o644),
            ("server.key", &pki.key_pem, 0o600),
        ] {
            let path = cluster.data.join(name);
            std::fs::write(&path, content).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))
                .unwrap();
            cluster.chown(&path);
        }
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n\
             fsync = off\nsynchronous_commit = off\nmax_connections = 40\n",
            cluster._dir.path().display()
        );
        let conf_path = cluster.data.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path).unwrap();
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).unwrap();
        // TLS or nothing: no `host` (plaintext) and no `local` lines.
        std::fs::write(
            cluster.data.join("pg_hba.conf"),
            "hostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
        )
        .unwrap();
        let log = cluster._dir.path().join("postgres.log");
        cluster.run(
            "pg_ctl",
            &[
                "-D",
                cluster.data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        Some(cluster)
    }

    fn chown(&self, path: &Path) {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.owner {
            use std::os::unix::process::CommandExt;
            command.uid(uid).gid(gid);
        }
        command
            .current_dir(self._dir.path())
            .env_remove("PGDATA")
            .stdin(Stdio::null());
        command
    }

    fn run(&self, program: &str, args: &[&str]) {
        let output = self
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"));
        assert!(
            output.status.success(),
            "{program} {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{query}", self.port)
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Writes `pem` into `dir` as `name` and returns the path as text.
fn write_pem(dir: &TempDir, name: &str, pem: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, pem).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Ava and Sam exchange a message through `server`.
async fn chat(server: &TestServer, ava_on: Option<&TestServer>) {
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let mut ava_ws = WsClient::connect_as(ava_on.unwrap_or(server), &ava).await;
    let mut sam_ws = WsClient::connect_as(server, &sam).await;
    ava_ws.join(&room, None).await;
    sam_ws.join(&room, None).await;
    let ack = ava_ws.send_msg(&room, "ava-1", "Hi Sam, over TLS").await;
    assert_eq!(ack["seq"], 1, "stored: {ack}");
    let message = sam_ws.recv_type("message").await;
    assert_eq!(message["body"], "Hi Sam, over TLS", "{message}");
    let reply = sam_ws.send_msg(&room, "sam-1", "Encrypted, too").await;
    assert_eq!(reply["seq"], 2, "stored: {reply}");
    let message = ava_ws
        .recv_matching("Sam's reply", |f| f["type"] == "message" && f["seq"] == 2)
        .await;
    assert_eq!(message["body"], "Encrypted, too", "{message}");
}

/// A start that must fail: its status is not success and its output names `expected`.
fn assert_start_fails(env: &[(&str, &str)], expected: &[&str]) -> String {
    let (status, output) = TestServer::run_expecting_exit(env, REFUSAL_LIMIT);
    assert!(!status.success(), "expected a refused start:\n{output}");
    assert!(
        !output.contains("listening on"),
        "refused only after listening:\n{output}"
    );
    for text in expected {
        assert!(output.contains(text), "no `{text}` in:\n{output}");
    }
    output
}

/// The server in production chats through a TLS-only PostgreSQL verified
/// against the test's CA; plaintext is refused by PostgreSQL; a wrong CA or
/// a host the certificate does not name is refused by the server, unless
/// `verify-ca` says the name does not matter.
#[tokio::test]
async fn chat_through_a_tls_only_postgres() {
    // The certificate names `localhost` only, so 127.0.0.1 is a wrong name.
    let pki = Pki::new("mixroom test CA", &["localhost"]);
    let Some(postgres) = TlsPostgres::start(&pki) else {
        return;
    };
    let files = TempDir::new("mixroom-tls-ca");
    let ca = write_pem(&files, "ca.pem", &pki.ca_pem);
    let other_ca = write_pem(
        &files,
        "other-ca.pem",
        &Pki::new("another CA", &["localhost"]).ca_pem,
    );

    let verified = postgres.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let server = TestServer::spawn_with_url(&verified, &[PRODUCTION]);
    chat(&server, None).await;
    drop(server);

    let plaintext = postgres.url("127.0.0.1", "sslmode=disable");
    assert_start_fails(
        &[("MIXROOM__DATABASE__URL", &plaintext)],
        &["no pg_hba.conf entry", "no encryption"],
    );

    let wrong_ca = postgres.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={other_ca}"),
    );
    assert_start_fails(
        &[("MIXROOM__DATABASE__URL", &wrong_ca)],
        &[
            "TLS handshake with PostgreSQL failed (sslmode=verify-full",
            "invalid peer certificate: UnknownIssuer",
        ],
    );

    let wrong_name = postgres.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    assert_start_fails(
        &[("MIXROOM__DATABASE__URL", &wrong_name)],
        &[
            "TLS handshake with PostgreSQL failed",
            "not valid for name \"127.0.0.1\"",
        ],
    );

    // verify-ca checks the chain only, as libpq does.
    let chain_only = postgres.url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}"));
    let server = TestServer::spawn_with_url(&chain_only, &[]);
    let ready = server
        .http_client()
        .get(server.http("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "ready over verify-ca");
}

/// Production refuses, before connecting anywhere, a PostgreSQL URL that
/// could be plaintext, one line naming `database.url`; `sslmode=disable`
/// written out is the operator's explicit choice. A transaction pooler is
/// refused in any environment.
#[test]
fn production_refuses_a_database_url_that_may_be_plaintext() {
    for url in [
        "postgres://postgres@127.0.0.1:9/postgres",
        "postgres://postgres@db.example.com:5432/postgres?sslmode=prefer",
    ] {
        let output = assert_start_fails(
            &[PRODUCTION, ("MIXROOM__DATABASE__URL", url)],
            &["error: server.environment is production but database.url has "],
        );
        let refusals = output
            .lines()
            .filter(|line| line.starts_with("error: server.environment is production but "))
            .count();
        assert_eq!(refusals, 1, "one line, for database.url:\n{output}");
        assert!(output.contains("sslmode=disable"), "says how:\n{output}");
    }

    // Written out: no refusal by the check (the start then fails only
    // because nothing listens on port 9).
    let (_, output) = TestServer::run_expecting_exit(
        &[
            PRODUCTION,
            (
                "MIXROOM__DATABASE__URL",
                "postgres://postgres@127.0.0.1:9/postgres?sslmode=disable",
            ),
        ],
        REFUSAL_LIMIT,
    );
    assert!(
        !output.contains("server.environment is production but"),
        "sslmode=disable is allowed:\n{output}"
    );

    for url in [
        "postgres://postgres.ref:pw@aws-0-eu-central-1.pooler.supabase.com:6543/postgres?sslmode=require",
        "postgres://postgres@127.0.0.1:5432/postgres?pgbouncer=true",
    ] {
        assert_start_fails(
            &[("MIXROOM__DATABASE__URL", url)],
            &["transaction pooler", "session pooler"],
        );
    }
}

/// A Redis of the test's own that accepts TLS connections only.
struct TlsRedis {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl TlsRedis {
    fn start(pki: &Pki) -> Option<TlsRedis> {
        let found = Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|out| out.status.success());
        if !found {
            return missing("no redis-server was found");
        }
        let dir = TempDir::new("mixroom-tls-redis");
        let cert = write_pem(&dir, "server.crt", &pki.cert_pem);
        let key = write_pem(&dir, "server.key", &pki.key_pem);
        let ca = write_pem(&dir, "ca.crt", &pki.ca_pem);
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--tls-cert-file", &cert, "--tls-key-file", &key])
            .args(["--tls-ca-cert-file", &ca, "--tls-auth-clients", "no"])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", dir.path().to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let redis = TlsRedis {
            child,
            port,
            _dir: dir,
        };
        // Listening means ready: nothing is loaded from disk.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two nodes on one PostgreSQL chat through a TLS-only Redis reached with
/// `rediss://` and the test's CA in `broker.tls_ca_file`; a node that
/// trusts another CA does not start.
#[tokio::test]
async fn two_nodes_chat_through_a_tls_only_redis() {
    let pki = Pki::new("mixroom test CA", &["localhost", "127.0.0.1"]);
    let Some(redis) = TlsRedis::start(&pki) else {
        return;
    };
    let Some(backend) = Backend::postgres() else {
        eprintln!("skipped: MIXROOM_TEST_DATABASE_URL not set");
        return;
    };
    let files = TempDir::new("mixroom-tls-ca");
    let ca = write_pem(&files, "ca.pem", &pki.ca_pem);
    let other_ca = write_pem(
        &files,
        "other-ca.pem",
        &Pki::new("another CA", &["127.0.0.1"]).ca_pem,
    );
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let env = [
        ("MIXROOM__BROKER__REDIS_URL", url.as_str()),
        ("MIXROOM__BROKER__TLS_CA_FILE", ca.as_str()),
    ];
    let node_a = TestServer::spawn(&backend, &env);
    let node_b = TestServer::spawn(&backend, &env);
    // Ava on node A, Sam on node B: only Redis carries the messages across.
    chat(&node_b, Some(&node_a)).await;
    drop((node_a, node_b));

    assert_start_fails(
        &[
            ("MIXROOM__BROKER__REDIS_URL", url.as_str()),
            ("MIXROOM__BROKER__TLS_CA_FILE", other_ca.as_str()),
        ],
        &["cannot reach Redis"],
    );
    // A CA file for a plaintext URL is a mistake, not a no-op.
    assert_start_fails(
        &[
            ("MIXROOM__BROKER__REDIS_URL", "redis://127.0.0.1:6379"),
            ("MIXROOM__BROKER__TLS_CA_FILE", ca.as_str()),
        ],
        &["broker.tls_ca_file is set but broker.redis_url is not a rediss:// URL"],
    );
}
