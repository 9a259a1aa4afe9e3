//! An operator takes the server to production: it refuses to start with any
//! development-only value, one line per key; with real secrets it serves
//! without the demo. A newcomer in development sees the dev secrets named,
//! and the demo only while the built-in dev secret signs its tokens.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{Backend, TestServer, WsClient};

/// The values `config/default.toml` ships (kept equal to the server's by a
/// unit test of `src/config.rs`).
const DEV_JWT_SECRET: &str = "mixroom-dev-secret-change-me-0123456789abcdef";
const DEV_INTERNAL_API_KEY: &str = "mixroom-dev-internal-key";

const PRODUCTION: (&str, &str) = ("MIXROOM__SERVER__ENVIRONMENT", "production");

/// Starts the server in production with `env` over the harness's real
/// secrets; asserts it refused before listening, naming exactly `keys`.
fn assert_refused(env: &[(&str, &str)], keys: &[&str]) {
    let mut all = vec![PRODUCTION];
    all.extend_from_slice(env);
    let (status, output) = TestServer::run_expecting_exit(&all, Duration::from_secs(30));
    assert_eq!(status.code(), Some(2), "exit status for {env:?}:\n{output}");
    assert!(
        !output.contains("listening on"),
        "refused only after listening:\n{output}"
    );
    let refusals: Vec<&str> = output
        .lines()
        .filter(|line| line.starts_with("error: server.environment is production but "))
        .collect();
    assert_eq!(
        refusals.len(),
        keys.len(),
        "one line per offending key {keys:?}:\n{output}"
    );
    for key in keys {
        assert!(
            refusals
                .iter()
                .any(|line| line.contains(&format!("but {key} "))),
            "no line for {key}:\n{output}"
        );
    }
}

#[test]
fn production_refuses_every_development_value() {
    // Everything as shipped: every dev value is named at once.
    assert_refused(
        &[
            ("MIXROOM__AUTH__JWT_SECRET", DEV_JWT_SECRET),
            ("MIXROOM__AUTH__INTERNAL_API_KEY", DEV_INTERNAL_API_KEY),
            ("MIXROOM__SERVER__DEMO", "true"),
        ],
        &[
            "auth.jwt_secret",
            "auth.internal_api_key",
            "email.unsubscribe_secret",
            "server.demo",
        ],
    );
    // Each key on its own, beside otherwise real secrets.
    assert_refused(
        &[("MIXROOM__AUTH__JWT_SECRET", "short-but-not-the-dev-one")],
        &["auth.jwt_secret"],
    );
    assert_refused(
        &[("MIXROOM__AUTH__INTERNAL_API_KEY", DEV_INTERNAL_API_KEY)],
        &["auth.internal_api_key"],
    );
    assert_refused(
        &[("MIXROOM__AUTH__INTERNAL_API_KEY", "backend-key-too-short")],
        &["auth.internal_api_key"],
    );
    assert_refused(
        &[("MIXROOM__EMAIL__UNSUBSCRIBE_SECRET", "too-short")],
        &["email.unsubscribe_secret"],
    );
    assert_refused(&[("MIXROOM__SERVER__DEMO", "true")], &["server.demo"]);
}

/// With real secrets production starts, and nothing of the demo exists:
/// nobody can ask it for a token.
#[tokio::test]
async fn production_with_real_secrets_serves_without_the_demo() {
    let backend = Backend::sqlite();
    let server = TestServer::spawn(&backend, &[PRODUCTION]);
    let http = server.http_client();
    for path in ["/", "/demo/app.js", "/demo-sw.js"] {
        let status = http.get(server.http(path)).send().await.unwrap().status();
        assert_eq!(status, 404, "GET {path}");
    }
    for (path, body) in [
        ("/demo/session", json!({"user": "ava"})),
        ("/demo/booking", json!({"status": "paid"})),
    ] {
        let status = http
            .post(server.http(path))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 404, "POST {path}");
    }
    assert_eq!(server.readiness().await.0, 200);
    assert!(
        !server.output().contains("development only"),
        "{}",
        server.output()
    );
}

/// Development with the shipped secrets: the start log names each dev
/// value as a warning, and the demo (auto) is served and mints tokens.
#[tokio::test]
async fn development_names_its_dev_secrets_and_serves_the_demo() {
    let backend = Backend::sqlite();
    let server = TestServer::spawn(
        &backend,
        &[
            ("MIXROOM__AUTH__JWT_SECRET", DEV_JWT_SECRET),
            ("MIXROOM__AUTH__INTERNAL_API_KEY", DEV_INTERNAL_API_KEY),
        ],
    );
    let output = server.output();
    for named in [
        "auth.jwt_secret is the built-in development secret",
        "auth.internal_api_key is the built-in development key",
        "email.unsubscribe_secret is empty",
        "server.demo is on",
    ] {
        assert!(
            output
                .lines()
                .any(|line| line.contains("WARN") && line.contains(named)),
            "no warning naming `{named}`:\n{output}"
        );
    }
    let session = server
        .http_client()
        .post(server.http("/demo/session"))
        .json(&json!({"user": "sam"}))
        .send()
        .await
        .unwrap();
    assert_eq!(session.status(), 200);
    let token = session.json::<serde_json::Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut socket = WsClient::connect(&server).await;
    socket.authenticate(&token).await;
}

/// A real secret in development: the demo stays off unless asked for, so
/// nothing signs demo tokens with a secret the real app trusts.
#[tokio::test]
async fn the_demo_stays_off_with_a_real_secret() {
    let backend = Backend::sqlite();
    let server = TestServer::spawn(&backend, &[]);
    let http = server.http_client();
    let session = http
        .post(server.http("/demo/session"))
        .json(&json!({"user": "ava"}))
        .send()
        .await
        .unwrap();
    assert_eq!(session.status(), 404);
    let booking = http
        .post(server.http("/demo/booking"))
        .json(&json!({"status": "paid"}))
        .send()
        .await
        .unwrap();
    assert_eq!(booking.status(), 404);
}

/// `migrate` is a production connection too: it refuses what `serve` does.
#[test]
fn migrate_refuses_development_values_in_production() {
    let backend = Backend::sqlite();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_mixroom-realtime"))
        .arg("migrate")
        .env("MIXROOM__SERVER__ENVIRONMENT", "production")
        .env("MIXROOM__DATABASE__URL", backend.url())
        .env("MIXROOM__AUTH__JWT_SECRET", DEV_JWT_SECRET)
        .output()
        .expect("run mixroom-realtime migrate");
    let text = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("but auth.jwt_secret "), "{text}");
    assert!(!text.contains("applied"), "{text}");
}
