//! Stories of HTTP clients that misbehave, and of the limits that are
//! per key or per user rather than per address: the backend's internal
//! API, slow bodies, too many open connections, forwarded addresses
//! behind proxies, the metrics address, the support budgets.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::helpers::{Backend, TestServer, TestUser, INTERNAL_API_KEY};

/// Reads until the server closes the connection (or `within` passes);
/// returns what it sent and whether it closed.
async fn read_until_closed(tcp: &mut TcpStream, within: Duration) -> (String, bool) {
    let deadline = Instant::now() + within;
    let mut received = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, tcp.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&received).into(), true),
            Ok(Ok(n)) => received.extend_from_slice(&chunk[..n]),
            Err(_) => return (String::from_utf8_lossy(&received).into(), false),
        }
    }
}

/// The backend calls the internal API far beyond the per-address budget:
/// only its key's budget applies. Anyone else on those routes (a wrong
/// key) is limited as an address.
#[tokio::test]
async fn the_backend_is_not_throttled_as_an_address() {
    let backend = Backend::sqlite();
    let server = TestServer::spawn(
        &backend,
        &[
            ("MIXROOM__LIMITS__HTTP_PER_SEC_PER_IP", "1"),
            ("MIXROOM__LIMITS__HTTP_BURST_PER_IP", "2"),
        ],
    );
    for i in 0..20 {
        let user = TestUser::client(&format!("User{i}"));
        let response = server
            .http_client()
            .put(server.http(&format!("/v1/internal/users/{}", user.id)))
            .bearer_auth(INTERNAL_API_KEY)
            .json(&json!({"email": user.email(), "name": user.name, "role": "client"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "internal call {i}");
    }
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = server
            .http_client()
            .put(server.http("/v1/internal/users/x"))
            .bearer_auth("not-the-key")
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, vec![401, 401, 429], "a guesser is an address");
}

/// A webhook body trickling in is cut off at `server.body_timeout_ms` with
/// 408 and its connection closed; a request without the signature header is
/// refused before its body is read.
#[tokio::test]
async fn slow_request_bodies_are_cut_off() {
    let backend = Backend::sqlite();
    let server = TestServer::spawn(
        &backend,
        &[
            ("MIXROOM__SERVER__BODY_TIMEOUT_MS", "1000"),
            ("MIXROOM__STRIPE__WEBHOOK_SECRET", "whsec_test_secret"),
        ],
    );
    let head =
        |signed: bool| {
            format!(
            "POST /v1/webhooks/stripe HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: 200000\r\n{}\r\n",
            server.addr(),
            if signed { "Stripe-Signature: t=1,v1=00\r\n" } else { "" }
        )
        };

    let mut unsigned = TcpStream::connect(server.addr()).await.unwrap();
    unsigned.write_all(head(false).as_bytes()).await.unwrap();
    let (answer, closed) = read_until_closed(&mut unsigned, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(closed, "the unread body does not keep the connection");

    let mut trickle = TcpStream::connect(server.addr()).await.unwrap();
    trickle.write_all(head(true).as_bytes()).await.unwrap();
    trickle.write_all(b"{").await.unwrap();
    let started = Instant::now();
    let (answer, closed) = read_until_closed(&mut trickle, Duration::from_secs(20)).await;
    assert!(
        closed,
        "a slow body is cut off (after {:?})",
        started.elapsed()
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"timeout""#), "{answer}");
}

/// One address may hold `limits.max_http_connections_per_ip` connections;
/// one more is closed on accept, and closing one frees a place.
#[tokio::test]
async fn open_http_connections_are_capped_per_address() {
    let backend = Backend::sqlite();
    let server = TestServer::spawn(
        &backend,
        &[("MIXROOM__LIMITS__MAX_HTTP_CONNECTIONS_PER_IP", "3")],
    );
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut tcp = TcpStream::connect(server.addr()).await.unwrap();
        // A request in progress: its headers never finish.
        tcp.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        held.push(tcp);
    }
    // The server accepts the three before the fourth arrives.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut extra = TcpStream::connect(server.addr()).await.unwrap();
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let (answer, closed) = read_until_closed(&mut extra, Duration::from_secs(10)).await;
    assert!(
        closed && answer.is_empty(),
        "a fourth connection: {answer:?}"
    );

    held.pop();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = TcpStream::connect(server.addr()).await.unwrap();
        let _ = again
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let (answer, _) = read_until_closed(&mut again, Duration::from_secs(5)).await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "no place freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every place given back (the server sees the closes in its own time),
    // the refusal is counted.
    drop((held, extra));
    let refused = r#"mixroom_connections_refused_total{reason="http_per_ip"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        match server
            .http_client()
            .get(server.http("/metrics"))
            .send()
            .await
        {
            Ok(response) => break response.text().await.unwrap(),
            Err(error) => assert!(Instant::now() < deadline, "no place for /metrics: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let count: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix(refused)?.trim().parse().ok())
        .unwrap_or(0.0);
    assert!(count >= 1.0, "{metrics}");
}

/// Behind one trusted proxy the client is the rightmost X-Forwarded-For
/// entry over all header lines: what a client writes further left does
/// not give it a new budget.
#[tokio::test]
async fn forwarded_addresses_follow_the_trusted_proxies() {
    let backend = Backend::sqlite();
    let server = TestServer::spawn(
        &backend,
        &[
            ("MIXROOM__LIMITS__TRUSTED_PROXIES", "1"),
            ("MIXROOM__LIMITS__HTTP_PER_SEC_PER_IP", "1"),
            ("MIXROOM__LIMITS__HTTP_BURST_PER_IP", "2"),
        ],
    );
    let get = |lines: Vec<&'static str>| {
        let mut request = server.http_client().get(server.http("/v1/openapi.json"));
        for line in lines {
            request = request.header("X-Forwarded-For", line);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get(vec!["1.1.1.1, 10.0.0.9"]).await, 200);
    assert_eq!(get(vec!["2.2.2.2, 10.0.0.9"]).await, 200);
    assert_eq!(get(vec!["3.3.3.3, 10.0.0.9"]).await, 429, "same client");
    assert_eq!(get(vec!["10.0.0.50", "10.0.0.9"]).await, 429, "all lines");
    assert_eq!(
        get(vec!["10.0.0.9, 10.0.0.10"]).await,
        200,
        "another client"
    );
}

/// With `server.metrics_listen`, `/metrics` is served there and no longer
/// on the public address; probes answer from cached state.
#[tokio::test]
async fn metrics_can_be_served_on_a_separate_address() {
    let backend = Backend::sqlite();
    let server = TestServer::spawn(
        &backend,
        &[("MIXROOM__SERVER__METRICS_LISTEN", "127.0.0.1:0")],
    );
    let metrics_addr = server
        .output_line("metrics listening on ")
        .expect("the metrics address is printed");
    let public = server
        .http_client()
        .get(server.http("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 404);
    let scraped = server
        .http_client()
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(scraped.status(), 200);
    assert!(scraped
        .text()
        .await
        .unwrap()
        .contains("mixroom_ws_sessions"));
    for _ in 0..50 {
        let ready = server
            .http_client()
            .get(server.http("/readyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200);
    }
}

/// New support conversations have a per-user budget: beyond it, 429 with
/// `rate_limited`, and nothing is created.
#[tokio::test]
async fn support_conversations_have_a_per_user_budget() {
    let backend = Backend::sqlite();
    let server = TestServer::spawn(
        &backend,
        &[("MIXROOM__LIMITS__SUPPORT_CONVERSATIONS_PER_HOUR", "2")],
    );
    let ava = TestUser::client("Ava");
    server.put_user(&ava).await;
    let mut statuses = Vec::new();
    let mut last = Value::Null;
    for _ in 0..3 {
        let response = server
            .http_client()
            .post(server.http("/v1/support/conversations"))
            .bearer_auth(&ava.token)
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        last = response.json().await.unwrap_or_default();
    }
    assert_eq!(statuses, vec![201, 201, 429]);
    assert_eq!(last["error"]["code"], "rate_limited", "{last}");
    // Another user has a budget of their own.
    let sam = TestUser::studio_owner("Sam");
    let response = server
        .http_client()
        .post(server.http("/v1/support/conversations"))
        .bearer_auth(&sam.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
}
