//! An operator deploys and rolls the server: the binary needs nothing
//! beside it, shows its effective configuration without secrets, accepts
//! an old and a new backend key during a rotation, and on SIGTERM fails
//! readiness first, then closes its sockets spread over a window.

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;
use uuid::Uuid;

use crate::helpers::{Backend, TestServer, TestUser, WsClient};

/// A directory of its own, removed afterwards.
struct EmptyDir(std::path::PathBuf);

impl EmptyDir {
    fn new() -> EmptyDir {
        let dir = std::env::temp_dir().join(format!("mixroom-empty-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("create an empty directory");
        EmptyDir(dir)
    }
}

impl Drop for EmptyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Started in an empty directory, with the defaults as shipped: it creates
/// its SQLite database there and serves chat and the support agent from
/// what is compiled into it.
#[tokio::test]
async fn the_binary_runs_from_an_empty_directory() {
    let dir = EmptyDir::new();
    let server = TestServer::spawn_in_dir(&dir.0, "sqlite://data/mixroom.db", &[]);
    assert!(
        dir.0.join("data/mixroom.db").exists(),
        "the database is made where the server runs"
    );
    assert_eq!(server.readiness().await.0, 200);

    let ava = TestUser::client("Ava");
    let room = server.open_support_conversation(&ava).await;
    let mut ws = WsClient::connect_as(&server, &ava).await;
    ws.join(&room, None).await;
    ws.send_msg(&room, "q1", "How do I cancel a booking?").await;
    let answer = ws
        .recv_matching("the built-in agent's answer", |f| {
            f["type"] == "message" && f["sender"]["role"] == "agent"
        })
        .await;
    assert!(
        answer["body"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("cancel"),
        "{answer}"
    );
}

/// `mixroom-realtime config` prints what the server would run with:
/// defaults, file and environment layered, and no secret in the clear.
#[test]
fn config_prints_the_effective_configuration_without_secrets() {
    let dir = EmptyDir::new();
    let secrets = [
        (
            "MIXROOM__AUTH__JWT_SECRET",
            "jwt-secret-that-must-not-show-0123456789",
        ),
        (
            "MIXROOM__AUTH__INTERNAL_API_KEY",
            "internal-key-that-must-not-show-012345",
        ),
        (
            "MIXROOM__EMAIL__RESEND_API_KEY",
            "re_key_that_must_not_show",
        ),
        (
            "MIXROOM__STRIPE__WEBHOOK_SECRET",
            "whsec_that_must_not_show",
        ),
    ];
    let output = Command::new(env!("CARGO_BIN_EXE_mixroom-realtime"))
        .arg("config")
        .current_dir(&dir.0)
        .env(
            "MIXROOM__DATABASE__URL",
            "postgres://app:db-password-not-shown@db.internal:5432/mixroom?sslmode=require",
        )
        .env("MIXROOM__SERVER__LISTEN", "0.0.0.0:9000")
        .envs(secrets)
        .output()
        .expect("run mixroom-realtime config");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("listen = \"0.0.0.0:9000\""), "{text}");
    assert!(
        text.contains("url = \"postgres://app:redacted@db.internal:5432/mixroom?sslmode=require\""),
        "{text}"
    );
    assert!(text.contains("jwt_secret = \"[redacted]\""), "{text}");
    assert!(
        text.contains("anthropic_api_key = \"\""),
        "an unset secret shows empty: {text}"
    );
    for secret in secrets
        .iter()
        .map(|(_, value)| *value)
        .chain(["db-password-not-shown"])
    {
        assert!(!text.contains(secret), "{secret} shown:\n{text}");
    }
}

/// During a key rotation the backend's old and new keys both work; any
/// other key does not.
#[tokio::test]
async fn internal_keys_rotate_without_downtime() {
    const NEW_KEY: &str = "backend-key-2026-12-new-0123456789ab";
    const OLD_KEY: &str = "backend-key-2026-06-old-0123456789ab";
    let backend = Backend::sqlite();
    let both = format!("{NEW_KEY},{OLD_KEY}");
    let server = TestServer::spawn(&backend, &[("MIXROOM__AUTH__INTERNAL_API_KEY", &both)]);
    let user = TestUser::client("Ava");
    for (key, expected) in [
        (NEW_KEY, 200),
        (OLD_KEY, 200),
        (both.as_str(), 401),
        ("nope", 401),
    ] {
        let status = server
            .http_client()
            .put(server.http(&format!("/v1/internal/users/{}", user.id)))
            .bearer_auth(key)
            .json(&json!({"email": user.email(), "name": "Ava", "role": "client"}))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, expected, "key {key}");
    }
}

/// A rolling deploy: on SIGTERM readiness fails at once while every socket
/// keeps working through the drain; then the sockets are closed with 1001,
/// spread over the window rather than all at once; then the process exits.
#[tokio::test]
async fn sigterm_drains_then_closes_sockets_spread_over_a_window() {
    const DRAIN_MS: u64 = 1500;
    const SPREAD_MS: u64 = 1500;
    let backend = Backend::sqlite();
    let mut server = TestServer::spawn(
        &backend,
        &[
            ("MIXROOM__SERVER__DRAIN_MS", &DRAIN_MS.to_string()),
            ("MIXROOM__SERVER__CLOSE_SPREAD_MS", &SPREAD_MS.to_string()),
        ],
    );
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let mut sockets = Vec::new();
    for _ in 0..10 {
        sockets.push(WsClient::connect_as(&server, &TestUser::client("Guest")).await);
    }
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&room, None).await;

    server.send_sigterm();
    let signalled = Instant::now();
    let readiness = loop {
        let (status, body) = server.readiness().await;
        if status == 503 {
            break body;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(1),
            "readiness did not fail"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(readiness["status"], "draining", "{readiness}");
    let readiness_failed = signalled.elapsed();
    // Still served during the drain: a message is stored and acked.
    let ack = ava_ws.send_msg(&room, "d1", "still here").await;
    assert_eq!(ack["type"], "ack", "{ack}");

    let closes = futures_util::future::join_all(sockets.iter_mut().map(|socket| async {
        let close = socket.expect_close().await;
        (close, signalled.elapsed())
    }))
    .await;
    let mut times: Vec<Duration> = closes
        .iter()
        .map(|((code, reason), at)| {
            assert_eq!(*code, 1001, "{reason}");
            *at
        })
        .collect();
    times.sort();
    let (first, last) = (times[0], times[times.len() - 1]);
    assert!(
        readiness_failed < first && first >= Duration::from_millis(DRAIN_MS),
        "readiness failed at {readiness_failed:?}; the first socket closed at {first:?}"
    );
    assert!(
        last - first >= Duration::from_millis(SPREAD_MS * 2 / 5),
        "closes bunched together: {times:?}"
    );
    let status = server.wait_for_exit(Duration::from_secs(15)).await;
    assert!(status.success(), "{status}");
}
