//! Stories of abuse and overload: floods, slow readers, too many sockets,
//! foreign origins. The server stays up, limited requests change nothing,
//! and well-behaved users are not disturbed.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{Backend, TestServer, TestUser, WsClient, INTERNAL_API_KEY, NO_RATE_LIMIT};

/// A client that keeps sending after `rate_limited` is closed with 4029;
/// frames over the budget are refused and nothing of them is stored.
#[tokio::test]
async fn a_flooding_client_is_limited_then_closed() {
    let backend = Backend::sqlite();
    let server = TestServer::spawn(
        &backend,
        &[
            ("MIXROOM__LIMITS__FRAMES_PER_SEC", "1"),
            ("MIXROOM__LIMITS__FRAMES_BURST", "5"),
            ("MIXROOM__LIMITS__FLOOD_STRIKES", "10"),
        ],
    );
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&room, None).await; // one frame of the burst

    for i in 0..30 {
        ava_ws
            .send_message_frame(&room, &format!("flood-{i}"), "spam")
            .await;
    }
    let mut acked = 0;
    let mut limited = 0;
    let (code, _) = loop {
        let deadline = Instant::now() + Duration::from_secs(5);
        let frame = tokio::select! {
            frame = ava_ws.recv_any_or_close() => frame,
            _ = tokio::time::sleep_until(deadline) => panic!("neither frames nor a close"),
        };
        match frame {
            Ok(frame) if frame["type"] == "ack" => acked += 1,
            Ok(frame) if frame["type"] == "error" => {
                assert_eq!(frame["code"], "rate_limited", "{frame}");
                assert!(frame["retry_after_ms"].as_u64().unwrap_or(0) > 0, "{frame}");
                limited += 1;
            }
            Ok(_) => {}
            Err(close) => break close,
        }
    };
    assert_eq!(code, 4029, "closed for flooding");
    assert!(acked <= 4, "only the burst went through: {acked}");
    assert!(
        limited >= 9,
        "told to slow down before being closed: {limited}"
    );

    // Nothing over the budget was stored (what was within it is stored
    // even when the close overtook its ack), and the server is fine.
    let history = server.history_over_http(&sam, &room, None, Some(100)).await;
    let stored = history["messages"].as_array().unwrap().len();
    assert!(
        stored >= acked && stored <= 4,
        "{stored} stored, {acked} acked (burst 5, one spent on join): {history}"
    );
    let mut sam_ws = WsClient::connect_as(&server, &sam).await;
    sam_ws.ping().await;
}

/// Per address: HTTP requests beyond the budget get 429 with Retry-After,
/// probes never do; the backend's key has a budget of its own.
#[tokio::test]
async fn http_and_internal_api_are_rate_limited() {
    let backend = Backend::sqlite();
    let server = TestServer::spawn(
        &backend,
        &[
            ("MIXROOM__LIMITS__HTTP_PER_SEC_PER_IP", "1"),
            ("MIXROOM__LIMITS__HTTP_BURST_PER_IP", "6"),
            ("MIXROOM__LIMITS__INTERNAL_PER_SEC", "1"),
            ("MIXROOM__LIMITS__INTERNAL_BURST", "2"),
        ],
    );
    let ava = TestUser::client("Ava");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = server
            .http_client()
            .put(server.http(&format!("/v1/internal/users/{}", ava.id)))
            .bearer_auth(INTERNAL_API_KEY)
            .json(&json!({"email": ava.email(), "name": "Ava", "role": "client"}))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(
        statuses,
        vec![200, 200, 429],
        "the internal key's burst is 2"
    );

    let mut limited = None;
    for _ in 0..10 {
        let response = server
            .http_client()
            .get(server.http("/v1/notifications"))
            .bearer_auth(&ava.token)
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
        assert_eq!(response.status(), 200);
    }
    let limited = limited.expect("the per-address budget runs out");
    assert!(limited.headers().contains_key("retry-after"));
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    for _ in 0..20 {
        let probe = server
            .http_client()
            .get(server.http("/healthz"))
            .send()
            .await
            .unwrap();
        assert_eq!(probe.status(), 200, "probes are never limited");
    }
}

/// Too many sockets for one user, or from one address: the extra one is
/// closed with 1008; the others keep working.
#[tokio::test]
async fn connections_are_limited_per_user_and_per_address() {
    let backend = Backend::sqlite();
    let server = TestServer::spawn(
        &backend,
        &[
            ("MIXROOM__LIMITS__MAX_CONNECTIONS_PER_USER", "2"),
            ("MIXROOM__LIMITS__MAX_CONNECTIONS_PER_IP", "4"),
        ],
    );
    let ava = TestUser::client("Ava");
    let mut first = WsClient::connect_as(&server, &ava).await;
    let _second = WsClient::connect_as(&server, &ava).await;
    let mut third = WsClient::connect(&server).await;
    third
        .send_json(json!({"type": "auth", "token": ava.token}))
        .await;
    assert_eq!(third.expect_close().await.0, 1008, "a third socket for Ava");
    first.ping().await;

    // Two sockets are open from this address; two more fit, a fifth not.
    let sam = TestUser::studio_owner("Sam");
    let _sam_ws = WsClient::connect_as(&server, &sam).await;
    let eli = TestUser::engineer("Eli");
    let _eli_ws = WsClient::connect_as(&server, &eli).await;
    let mut fifth = WsClient::connect(&server).await;
    assert_eq!(
        fifth.expect_close().await.0,
        1008,
        "a fifth socket from one address"
    );

    // Closing one frees a place.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut ws = WsClient::connect(&server).await;
        ws.send_json(json!({"type": "auth", "token": ava.token}))
            .await;
        match ws.recv_any_or_close().await {
            Ok(frame) if frame["type"] == "welcome" => break,
            other => assert!(Instant::now() < deadline, "no place freed: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A script opening sockets in a loop from one address: past the burst,
/// each upgrade is answered 429 with Retry-After (counted); the sockets
/// already open carry on, and a second later the address may connect again.
#[tokio::test]
async fn socket_opening_is_rate_limited_per_address() {
    let backend = Backend::sqlite();
    let server = TestServer::spawn(
        &backend,
        &[
            ("MIXROOM__LIMITS__CONNECTS_PER_SEC_PER_IP", "1"),
            ("MIXROOM__LIMITS__CONNECTS_BURST_PER_IP", "2"),
        ],
    );
    let ava = TestUser::client("Ava");
    let mut first = WsClient::connect_as(&server, &ava).await;
    let _second = WsClient::connect(&server).await;
    match tokio_tungstenite::connect_async(server.ws_url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429);
            assert!(
                response.headers().contains_key("retry-after"),
                "{response:?}"
            );
        }
        other => panic!("the third socket within the burst must get 429, got {other:?}"),
    }
    assert_eq!(
        server
            .metric(r#"mixroom_rate_limited_total{limit="connects"}"#)
            .await,
        1.0
    );
    first.ping().await;

    tokio::time::sleep(Duration::from_millis(1100)).await;
    WsClient::connect_as(&server, &ava).await.ping().await;
}

/// Only the web app's pages may open a socket from a browser; other sites
/// are refused at the handshake. Clients without an Origin are allowed.
/// The HTTP API answers CORS preflights for the configured origins.
#[tokio::test]
async fn browser_origins_are_checked() {
    let backend = Backend::sqlite();
    let server = TestServer::spawn(
        &backend,
        &[
            (
                "MIXROOM__SERVER__ALLOWED_ORIGINS",
                "https://app.mixroom.test,https://mixroom.test",
            ),
            ("MIXROOM__SERVER__CORS_ORIGINS", "https://app.mixroom.test"),
        ],
    );
    let with_origin = |origin: &str| {
        let mut request = server.ws_url().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Origin", origin.parse().unwrap());
        request
    };
    let refused = tokio_tungstenite::connect_async(with_origin("https://evil.test")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("a foreign origin must be refused, got {other:?}"),
    }
    let allowed = tokio_tungstenite::connect_async(with_origin("https://mixroom.test")).await;
    assert!(allowed.is_ok(), "a listed origin is allowed");
    WsClient::connect(&server).await; // no Origin header

    let preflight = server
        .http_client()
        .request(reqwest::Method::OPTIONS, server.http("/v1/notifications"))
        .header("Origin", "https://app.mixroom.test")
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "authorization")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://app.mixroom.test"
    );
}

/// Sam's laptop stops reading mid-conversation while Ava keeps talking:
/// Sam's socket is dropped when its queue is full (1013), Ava is not
/// slowed down, and Sam resumes with `since` and misses nothing.
#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_resumes() {
    let backend = Backend::sqlite();
    let mut env = NO_RATE_LIMIT.to_vec();
    env.push(("MIXROOM__LIMITS__SESSION_QUEUE", "32"));
    env.push(("MIXROOM__SERVER__MAX_MESSAGE_BYTES", "60000"));
    let server = TestServer::spawn(&backend, &env);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&room, None).await;
    let mut sam_ws = WsClient::connect_as(&server, &sam).await;
    sam_ws.join(&room, None).await;

    // Large messages fill the socket buffers quickly; Sam reads none.
    let body = "x".repeat(50_000);
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for _ in 0..20 {
            sent += 1;
            ava_ws
                .send_message_frame(&room, &format!("m{sent}"), &body)
                .await;
        }
        ava_ws.wait_ack(&format!("m{sent}")).await;
        ava_ws.drain_pending();
        if server.metric("mixroom_slow_consumers_dropped_total").await >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Sam was never dropped after {sent} messages"
        );
    }

    // When Sam reads again: what was queued, then the close.
    let mut last_seen = 0;
    let code = loop {
        match sam_ws.recv_any_or_close().await {
            Ok(frame) if frame["type"] == "message" => last_seen = frame["seq"].as_i64().unwrap(),
            Ok(_) => {}
            Err((code, _)) => break code,
        }
    };
    assert_eq!(code, 1013, "dropped as a slow consumer");
    // The replay of that backlog comes in pages (`has_more`).
    let mut sam_ws = WsClient::connect_as(&server, &sam).await;
    let mut expected = last_seen + 1;
    loop {
        let joined = sam_ws.join(&room, Some(expected - 1)).await;
        assert_eq!(joined["last_seq"].as_i64().unwrap(), sent as i64);
        let until = joined["replay_until"].as_i64().unwrap();
        while expected <= until {
            let message = sam_ws.recv_type("message").await;
            assert_eq!(message["seq"], expected);
            expected += 1;
        }
        if joined["has_more"] == false {
            break;
        }
    }
    assert_eq!(expected - 1, sent as i64, "everything missed was replayed");
}

/// Thousands of random frames — garbage bytes, broken JSON, known frame
/// types with random fields — from one client: each gets an answer or is
/// ignored, the socket and the server live on, and what was stored before
/// is intact. (The coverage-guided counterpart is fuzz/client_frames.)
#[tokio::test]
async fn random_frames_never_break_the_server() {
    use rand::{Rng, SeedableRng};

    let backend = Backend::sqlite();
    let server = TestServer::spawn(&backend, NO_RATE_LIMIT);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&room, None).await;
    let before = ava_ws
        .send_msg(&room, "kept", "stored before the noise")
        .await;

    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6d69_7872);
    let types = [
        "auth", "join", "leave", "send", "typing", "read", "history", "ping", "x",
    ];
    let values = [
        json!(null),
        json!(-1),
        json!(i64::MAX),
        json!(1.5),
        json!(""),
        json!("booking:"),
        json!(room),
        json!("user:../../etc"),
        json!("\u{0000}\u{202e}"),
        json!([1, 2]),
        json!({"a": {}}),
        json!("x".repeat(5000)),
    ];
    let fields = [
        "room",
        "since",
        "client_id",
        "body",
        "seq",
        "before",
        "limit",
        "token",
        "ref",
    ];
    for i in 0..2000 {
        let text = match rng.random_range(0..3) {
            0 => {
                let len = rng.random_range(0..64);
                (0..len)
                    .map(|_| rng.random_range(32u8..127) as char)
                    .collect::<String>()
            }
            1 => {
                let mut frame = json!({"type": types[rng.random_range(0..types.len())]});
                for _ in 0..rng.random_range(0..5) {
                    let field = fields[rng.random_range(0..fields.len())];
                    frame[field] = values[rng.random_range(0..values.len())].clone();
                }
                frame.to_string()
            }
            _ => {
                let valid = json!({"type": "history", "room": room, "limit": 5}).to_string();
                let cut = rng.random_range(0..valid.len());
                valid[..cut].to_owned()
            }
        };
        ava_ws.send_text(&text).await;
        if i % 200 == 0 {
            ava_ws.ping().await;
            ava_ws.drain_pending();
        }
    }
    ava_ws.ping().await;
    ava_ws.drain_pending();

    let history = server.history_over_http(&sam, &room, None, Some(100)).await;
    let kept = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["client_id"] == "kept")
        .cloned()
        .expect("the message stored before is still there");
    assert_eq!(kept["id"], before["id"]);
    assert_eq!(kept["body"], "stored before the noise");
    let mut fresh = WsClient::connect_as(&server, &sam).await;
    fresh.ping().await;
}
