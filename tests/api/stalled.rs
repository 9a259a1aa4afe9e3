//! Stories of sockets that misbehave: clients that stop reading, flood, or
//! send junk. Each holds nothing for long (a deadline frees its slots),
//! and every close is clean: the frames queued before it (acks, errors)
//! arrive, then the close frame with its code, then an orderly end of the
//! connection, never a 1006. Non-readers are raw TCP clients with a tiny
//! receive window (`raw::RawWs`).

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::helpers::{now_secs, Backend, TestServer, TestUser, WsClient, NO_RATE_LIMIT};
use crate::raw::{Ending, RawWs};

/// A receive buffer so small that the server's writes stall at once.
const TINY_WINDOW: u32 = 4096;

/// Waits until the metric `sample` satisfies `ok` (panics after `within`).
async fn wait_for(server: &TestServer, sample: &str, ok: impl Fn(f64) -> bool, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let value = server.metric(sample).await;
        if ok(value) {
            return;
        }
        assert!(Instant::now() < deadline, "{sample} stayed {value}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stores `count` messages of `size` bytes from `user` into `room`.
async fn store_backlog(
    server: &TestServer,
    user: &TestUser,
    room: &str,
    count: usize,
    size: usize,
) {
    let mut ws = WsClient::connect_as(server, user).await;
    let body = "b".repeat(size);
    for i in 0..count {
        ws.send_msg(room, &format!("backlog-{i}"), &body).await;
    }
    ws.disconnect().await;
}

/// `history` requests whose answers (the whole backlog each) pile up.
fn history_asks(room: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| json!({"type": "history", "room": room, "limit": 100, "ref": format!("h{i}")}))
        .map(|frame| frame.to_string())
        .collect()
}

fn env_with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = NO_RATE_LIMIT.to_vec();
    env.push(("MIXROOM__SERVER__MAX_MESSAGE_BYTES", "60000"));
    env.extend_from_slice(extra);
    env
}

/// Sam's tab stops reading while megabytes are on their way to it. The
/// socket makes no progress for `server.write_timeout_ms`, so it is closed
/// and its session ended: Sam's one socket slot is free again.
#[tokio::test]
async fn a_socket_that_stops_reading_is_closed_and_its_slots_freed() {
    let backend = Backend::sqlite();
    let server = TestServer::spawn(
        &backend,
        &env_with(&[
            ("MIXROOM__SERVER__WRITE_TIMEOUT_MS", "1000"),
            ("MIXROOM__LIMITS__SESSION_QUEUE_BYTES", "100000000"),
            ("MIXROOM__LIMITS__MAX_CONNECTIONS_PER_USER", "1"),
        ]),
    );
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    store_backlog(&server, &ava, &room, 30, 50_000).await;

    let mut stalled = RawWs::connect(&server, TINY_WINDOW).await;
    stalled
        .send(&json!({"type": "auth", "token": sam.token}))
        .await;
    stalled
        .recv_until("welcome", |f| f["type"] == "welcome")
        .await;
    stalled.send_all(&history_asks(&room, 8)).await;

    let timed_out = r#"mixroom_connections_refused_total{reason="write_timeout"}"#;
    wait_for(&server, timed_out, |n| n >= 1.0, Duration::from_secs(30)).await;
    wait_for(
        &server,
        "mixroom_ws_sessions",
        |n| n == 0.0,
        Duration::from_secs(10),
    )
    .await;
    // Sam may have one socket: the stalled one no longer holds it.
    WsClient::connect_as(&server, &sam).await.ping().await;
}

/// The session's timers run while a write waits: Sam's token expires with
/// megabytes still queued for a socket that does not read; the session
/// ends at once (its slot is freed), and when Sam reads again everything
/// queued arrives, then the close 4001, then an orderly end.
#[tokio::test]
async fn timers_fire_while_a_write_waits_and_the_close_comes_last() {
    let backend = Backend::sqlite();
    let server = TestServer::spawn(
        &backend,
        &env_with(&[
            ("MIXROOM__SERVER__WRITE_TIMEOUT_MS", "60000"),
            ("MIXROOM__LIMITS__SESSION_QUEUE_BYTES", "100000000"),
            ("MIXROOM__LIMITS__MAX_CONNECTIONS_PER_USER", "1"),
        ]),
    );
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    store_backlog(&server, &ava, &room, 30, 50_000).await;

    let mut stalled = RawWs::connect(&server, TINY_WINDOW).await;
    let short_lived = sam.token_expiring_at(now_secs() + 3);
    stalled
        .send(&json!({"type": "auth", "token": short_lived}))
        .await;
    stalled
        .recv_until("welcome", |f| f["type"] == "welcome")
        .await;
    stalled.send_all(&history_asks(&room, 8)).await;

    wait_for(
        &server,
        "mixroom_ws_sessions",
        |n| n == 0.0,
        Duration::from_secs(20),
    )
    .await;
    WsClient::connect_as(&server, &sam).await.ping().await;

    let (frames, ending) = stalled.read_to_end(Duration::from_secs(30)).await;
    let answered: BTreeSet<_> = frames
        .iter()
        .filter(|f| f["type"] == "history")
        .map(|f| f["ref"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(answered.len(), 8, "every answer queued before the close");
    assert_eq!(ending, Ending::Closed(4001), "token expired");
}

/// Sam stops reading in a busy room: when Sam's queue passes
/// `limits.session_queue_bytes` the session ends at once (1013, slot
/// freed) although nothing was read; reading later, Sam gets what was
/// queued, then the close 1013, and resumes with `since`.
#[tokio::test]
async fn a_slow_consumer_is_dropped_at_once_and_resumes() {
    let backend = Backend::sqlite();
    let server = TestServer::spawn(
        &backend,
        &env_with(&[("MIXROOM__LIMITS__SESSION_QUEUE_BYTES", "300000")]),
    );
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&room, None).await;

    let mut stalled = RawWs::connect(&server, TINY_WINDOW).await;
    stalled
        .send(&json!({"type": "auth", "token": sam.token}))
        .await;
    stalled
        .recv_until("welcome", |f| f["type"] == "welcome")
        .await;
    stalled.send(&json!({"type": "join", "room": room})).await;
    stalled
        .recv_until("joined", |f| f["type"] == "joined")
        .await;

    let body = "x".repeat(50_000);
    let mut sent = 0;
    while server.metric("mixroom_slow_consumers_dropped_total").await < 1.0 {
        assert!(sent < 500, "Sam was never dropped");
        sent += 1;
        ava_ws.send_msg(&room, &format!("m{sent}"), &body).await;
    }
    // Dropped while still not reading: only Ava's session is left.
    wait_for(
        &server,
        "mixroom_ws_sessions",
        |n| n == 1.0,
        Duration::from_secs(5),
    )
    .await;

    let (frames, ending) = stalled.read_to_end(Duration::from_secs(20)).await;
    assert_eq!(ending, Ending::Closed(1013));
    let seqs: Vec<i64> = frames
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| f["seq"].as_i64().unwrap())
        .collect();
    let last_seen = seqs.last().copied().unwrap_or(0);
    assert_eq!(
        seqs,
        (1..=last_seen).collect::<Vec<_>>(),
        "in order, no gap"
    );

    let mut sam_ws = WsClient::connect_as(&server, &sam).await;
    let mut next = last_seen + 1;
    loop {
        let joined = sam_ws.join(&room, Some(next - 1)).await;
        let until = joined["replay_until"].as_i64().unwrap();
        while next <= until {
            assert_eq!(sam_ws.recv_type("message").await["seq"], next);
            next += 1;
        }
        if joined["has_more"] == false {
            break;
        }
    }
    assert_eq!(next - 1, sent, "Sam missed nothing");
}

/// The acks, errors and close code a raw socket got, and the client ids
/// acked.
fn tally(frames: &[Value]) -> (BTreeSet<String>, usize, usize) {
    let acked = frames
        .iter()
        .filter(|f| f["type"] == "ack")
        .map(|f| f["client_id"].as_str().unwrap().to_owned())
        .collect();
    let count = |code: &str| {
        frames
            .iter()
            .filter(|f| f["type"] == "error" && f["code"] == code)
            .count()
    };
    (acked, count("rate_limited"), count("invalid"))
}

async fn stored_client_ids(server: &TestServer, reader: &TestUser, room: &str) -> BTreeSet<String> {
    let mut stored = BTreeSet::new();
    let mut before = None;
    loop {
        let history = server
            .history_over_http(reader, room, before, Some(100))
            .await;
        let messages = history["messages"].as_array().unwrap();
        for message in messages {
            stored.insert(message["client_id"].as_str().unwrap().to_owned());
            before = message["seq"].as_i64();
        }
        if history["has_more"] != true {
            return stored;
        }
    }
}

/// 400 sends written at once with the default budget (20/s, burst 40):
/// every message stored is acked, the rest is refused `rate_limited`, and
/// the socket closes with 4029, cleanly.
#[tokio::test]
async fn a_flood_gets_an_ack_for_everything_stored_then_4029() {
    let backend = Backend::sqlite();
    let server = TestServer::spawn(&backend, &[]);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let mut ws = RawWs::connect(&server, 1 << 20).await;
    ws.send(&json!({"type": "auth", "token": ava.token})).await;
    ws.recv_until("welcome", |f| f["type"] == "welcome").await;
    ws.send(&json!({"type": "join", "room": room})).await;
    ws.recv_until("joined", |f| f["type"] == "joined").await;

    let flood: Vec<String> = (0..400)
        .map(
            |i| json!({"type": "send", "room": room, "client_id": format!("f{i}"), "body": "spam"}),
        )
        .map(|frame| frame.to_string())
        .collect();
    ws.send_all(&flood).await;
    let (frames, ending) = ws.read_to_end(Duration::from_secs(30)).await;
    assert_eq!(ending, Ending::Closed(4029), "frames: {}", frames.len());
    let (acked, limited, _) = tally(&frames);
    assert!(limited >= 1, "told to slow down first");
    assert!(
        !acked.is_empty() && acked.len() <= 40,
        "{} acked",
        acked.len()
    );
    assert_eq!(
        stored_client_ids(&server, &sam, &room).await,
        acked,
        "every stored message acked"
    );
}

/// Junk counts: 3,000 malformed frames after `auth` are answered
/// `invalid` only within the budget, then `rate_limited`, then 4029.
#[tokio::test]
async fn junk_frames_count_toward_the_budget() {
    let backend = Backend::sqlite();
    let server = TestServer::spawn(&backend, &[]);
    let ava = TestUser::client("Ava");
    server.put_user(&ava).await;
    let mut ws = RawWs::connect(&server, 1 << 20).await;
    ws.send(&json!({"type": "auth", "token": ava.token})).await;
    ws.recv_until("welcome", |f| f["type"] == "welcome").await;

    let junk: Vec<String> = (0..3000).map(|i| format!("{{not json {i}")).collect();
    ws.send_all(&junk).await;
    let (frames, ending) = ws.read_to_end(Duration::from_secs(30)).await;
    assert_eq!(ending, Ending::Closed(4029));
    let (_, limited, invalid) = tally(&frames);
    assert!(invalid <= 40, "only the burst is handled: {invalid}");
    assert!(limited >= 1, "{limited}");
}

/// SIGTERM while a client's sends are in flight: it gets the ack of every
/// message stored, then 1001, and nothing acked is missing after a
/// restart.
#[tokio::test]
async fn shutdown_acks_what_was_stored_then_closes_with_1001() {
    let backend = Backend::sqlite();
    let mut server = TestServer::spawn(&backend, NO_RATE_LIMIT);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let mut ws = RawWs::connect(&server, 1 << 20).await;
    ws.send(&json!({"type": "auth", "token": ava.token})).await;
    ws.recv_until("welcome", |f| f["type"] == "welcome").await;
    ws.send(&json!({"type": "join", "room": room})).await;
    ws.recv_until("joined", |f| f["type"] == "joined").await;

    let sends: Vec<String> = (0..200)
        .map(|i| json!({"type": "send", "room": room, "client_id": format!("s{i}"), "body": "hi"}))
        .map(|frame| frame.to_string())
        .collect();
    ws.send_all(&sends).await;
    ws.recv_until("a first ack", |f| f["type"] == "ack").await;
    server.send_sigterm();
    let (frames, ending) = ws.read_to_end(Duration::from_secs(20)).await;
    assert_eq!(ending, Ending::Closed(1001));
    server.wait_for_exit(Duration::from_secs(20)).await;

    let (mut acked, _, _) = tally(&frames);
    acked.insert("s0".to_owned()); // the ack awaited above
    server.restart();
    let stored = stored_client_ids(&server, &sam, &room).await;
    assert!(
        acked.is_subset(&stored),
        "every ack is for a stored message"
    );
}

/// A long backlog is replayed in pages: `joined` says `has_more` and where
/// the page ends (`replay_until`); joining again with that `since` brings
/// the next page, in order, until `has_more` is false.
#[tokio::test]
async fn join_with_since_replays_in_pages() {
    let backend = Backend::sqlite();
    let mut env = NO_RATE_LIMIT.to_vec();
    env.push(("MIXROOM__SERVER__REPLAY_MAX_MESSAGES", "10"));
    let server = TestServer::spawn(&backend, &env);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    store_backlog(&server, &ava, &room, 25, 10).await;

    let mut sam_ws = WsClient::connect_as(&server, &sam).await;
    let mut pages = Vec::new();
    let mut since = 0;
    loop {
        let joined = sam_ws.join(&room, Some(since)).await;
        assert_eq!(joined["last_seq"], 25);
        let until = joined["replay_until"].as_i64().unwrap();
        while since < until {
            since += 1;
            assert_eq!(sam_ws.recv_type("message").await["seq"], since);
        }
        pages.push((until, joined["has_more"].as_bool().unwrap()));
        if joined["has_more"] == false {
            break;
        }
    }
    assert_eq!(pages, vec![(10, true), (20, true), (25, false)]);
    let caught_up = sam_ws.join(&room, Some(25)).await;
    assert_eq!(caught_up["has_more"], false, "{caught_up}");
    sam_ws.expect_silence(300, &["message"]).await;
}
