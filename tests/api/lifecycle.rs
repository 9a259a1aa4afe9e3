//! Sessions and rooms over their whole life: asymmetric tokens through a
//! JWKS document, and the server letting go of what is gone (closed or
//! silent sockets, idle rooms), so nothing leaks.

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::json;
use tokio::time::Instant;

use crate::helpers::{claims, now_secs, sign_with_pem, Backend, TestServer, TestUser, WsClient};

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/jwks/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn sign_asymmetric(user: &TestUser, algorithm: Algorithm, kid: &str, pem_file: &str) -> String {
    let pem = std::fs::read(fixture(pem_file)).expect("test key");
    let claims = claims(&user.id, &user.role, &user.name, now_secs() + 600);
    sign_with_pem(&claims, algorithm, kid, &pem)
}

/// A Supabase project that signs with asymmetric keys: ES256 and RS256
/// tokens are verified against the JWKS document; a token whose `kid` is
/// not there, or whose signature does not match it, is refused with 4001.
#[tokio::test]
async fn asymmetric_tokens_are_verified_through_jwks() {
    let backend = Backend::sqlite();
    let jwks = fixture("jwks.json");
    let server = TestServer::spawn(&backend, &[("MIXROOM__AUTH__JWKS", jwks.as_str())]);
    let ava = TestUser::client("Ava");

    for (algorithm, kid, pem) in [
        (Algorithm::ES256, "test-es256", "es256_private.pem"),
        (Algorithm::RS256, "test-rs256", "rs256_private.pem"),
    ] {
        let token = sign_asymmetric(&ava, algorithm, kid, pem);
        let mut ws = WsClient::connect(&server).await;
        let welcome = ws.authenticate(&token).await;
        assert_eq!(
            welcome["user_id"],
            ava.id.as_str(),
            "{algorithm:?}: {welcome}"
        );

        let inbox = server
            .http_client()
            .get(server.http("/v1/notifications"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(inbox.status(), 200, "{algorithm:?} over HTTP");
    }

    // The HS256 secret still works beside the JWKS.
    WsClient::connect_as(&server, &ava).await;

    let unknown_kid = sign_asymmetric(&ava, Algorithm::ES256, "rotated-away", "es256_private.pem");
    // Signed by the RSA key but claiming to be the EC key's kid.
    let wrong_key = sign_asymmetric(&ava, Algorithm::RS256, "test-es256", "rs256_private.pem");
    for token in [unknown_kid, wrong_key] {
        let mut ws = WsClient::connect(&server).await;
        ws.send_json(json!({"type": "auth", "token": token})).await;
        let (code, reason) = ws.expect_close().await;
        assert_eq!(code, 4001, "refused with 4001: {reason}");
    }
}

/// A tab closed politely, a laptop that went to sleep mid-session (its
/// socket never answers pings again), and the room they were in: the
/// server drops all three, and the room comes back on the next join.
#[tokio::test]
async fn closed_and_silent_sessions_and_idle_rooms_are_dropped() {
    let backend = Backend::sqlite();
    let server = TestServer::spawn(
        &backend,
        &[
            ("MIXROOM__SERVER__HEARTBEAT_MS", "250"),
            ("MIXROOM__SERVER__CLIENT_TIMEOUT_MS", "2000"),
            ("MIXROOM__SERVER__ROOM_IDLE_MS", "300"),
        ],
    );
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;

    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&room, None).await;
    let mut sam_ws = WsClient::connect_as(&server, &sam).await;
    sam_ws.join(&room, None).await;
    // From here on Sam's socket stays open but is never read again: the
    // server's pings go unanswered.
    let silent_since = Instant::now();
    server
        .wait_for_metric("mixroom_ws_sessions", 2.0, Duration::from_secs(10))
        .await;
    server
        .wait_for_metric("mixroom_rooms_active", 1.0, Duration::from_secs(10))
        .await;

    // Ava closes her tab; Sam's socket goes silent. (Sam may already be
    // dropped by the time Ava's close is seen when the machine is busy, so
    // only the end state and the silence timing are checked.)
    ava_ws.disconnect().await;

    server
        .wait_for_metric("mixroom_ws_sessions", 0.0, Duration::from_secs(10))
        .await;
    assert!(
        silent_since.elapsed() >= Duration::from_millis(1900),
        "dropped after the client timeout (2 s), not before: {:?}",
        silent_since.elapsed()
    );
    server
        .wait_for_metric("mixroom_users_online", 0.0, Duration::from_secs(10))
        .await;
    server
        .wait_for_metric("mixroom_rooms_active", 0.0, Duration::from_secs(10))
        .await;
    drop(sam_ws);

    // The room is started again on demand, where its sequence left off.
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&room, None).await;
    let ack = ava_ws.send_msg(&room, "after-idle", "still here").await;
    assert_eq!(ack["seq"], 1, "{ack}");
    server
        .wait_for_metric("mixroom_rooms_active", 1.0, Duration::from_secs(10))
        .await;
}

/// Ava's app does not wait for the 101: her upgrade request and her `auth`
/// frame leave in one packet. The server reads the frame that arrived with
/// the request, welcomes her, and she chats with Sam as usual.
#[tokio::test]
async fn auth_sent_with_the_upgrade_request_is_not_lost() {
    let backend = Backend::sqlite();
    let server = TestServer::spawn(&backend, &[]);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;

    let (mut ava_ws, welcome) = WsClient::connect_pipelined(&server, &ava).await;
    assert_eq!(welcome["user_id"], ava.id.as_str(), "{welcome}");
    ava_ws.join(&room, None).await;
    let mut sam_ws = WsClient::connect_as(&server, &sam).await;
    sam_ws.join(&room, None).await;
    let ack = ava_ws
        .send_msg(&room, "first", "Booked you for Friday")
        .await;
    let message = sam_ws.recv_type("message").await;
    assert_eq!(message["seq"], ack["seq"]);
    assert_eq!(message["body"], "Booked you for Friday");
}

/// A WebSocket upgrade aimed anywhere but `/v1/ws` (404), a plain GET of
/// `/v1/ws` (400), and an upgrade with a WebSocket version the server does
/// not speak (426) each get an HTTP error; the server goes on serving
/// sockets.
#[tokio::test]
async fn upgrades_that_cannot_be_served_get_http_errors() {
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Error};
    let backend = Backend::sqlite();
    let server = TestServer::spawn(&backend, &[]);

    let elsewhere = format!("ws://{}/v1/chat", server.addr());
    match tokio_tungstenite::connect_async(elsewhere).await {
        Err(Error::Http(response)) => {
            assert_eq!(response.status(), 404);
            let body: serde_json::Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default())
                    .expect("a JSON error body");
            assert_eq!(body["error"]["code"], "not_found", "{body}");
        }
        other => panic!("an upgrade to /v1/chat must get 404, got {other:?}"),
    }

    let plain = server
        .http_client()
        .get(server.http("/v1/ws"))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 400, "a GET without an upgrade");

    let mut old_version = server.ws_url().into_client_request().unwrap();
    old_version
        .headers_mut()
        .insert("Sec-WebSocket-Version", "8".parse().unwrap());
    match tokio_tungstenite::connect_async(old_version).await {
        // RFC 6455 §4.4: 426 Upgrade Required, naming the version spoken.
        Err(Error::Http(response)) => assert_eq!(response.status(), 426),
        other => panic!("WebSocket version 8 must be refused, got {other:?}"),
    }

    let ava = TestUser::client("Ava");
    let mut ws = WsClient::connect_as(&server, &ava).await;
    ws.ping().await;
}
