//! Several nodes as one server: separate processes on one PostgreSQL
//! database, sharing Redis, with users spread over nodes as a load balancer
//! without sticky sessions would spread them.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::helpers::{Backend, TestServer, TestUser, WsClient, INTERNAL_API_KEY, NO_RATE_LIMIT};

/// The shared Redis of the test run (`MIXROOM_TEST_REDIS_URL`), or `None`
/// (a failure with `MIXROOM_TEST_REQUIRE_SERVICES=1`).
pub fn shared_redis() -> Option<String> {
    match std::env::var("MIXROOM_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("MIXROOM_TEST_REQUIRE_SERVICES").as_deref() == Ok("1") => {
            panic!("MIXROOM_TEST_REQUIRE_SERVICES=1 but MIXROOM_TEST_REDIS_URL is not set")
        }
        _ => None,
    }
}

/// PostgreSQL and Redis, or `None` when either is not configured.
fn services() -> Option<(Backend, String)> {
    let redis = shared_redis();
    let backend = Backend::postgres();
    match (backend, redis) {
        (Some(backend), Some(redis)) => Some((backend, redis)),
        _ => {
            eprintln!("skipped: needs MIXROOM_TEST_DATABASE_URL and MIXROOM_TEST_REDIS_URL");
            None
        }
    }
}

fn node_env(redis_url: &str) -> Vec<(&str, String)> {
    let mut env: Vec<(&str, String)> = NO_RATE_LIMIT
        .iter()
        .map(|(k, v)| (*k, v.to_string()))
        .collect();
    env.push(("MIXROOM__BROKER__REDIS_URL", redis_url.to_owned()));
    env.push(("MIXROOM__BROKER__PRESENCE_LEASE_MS", "1500".to_owned()));
    env
}

fn spawn_node(backend: &Backend, redis_url: &str) -> TestServer {
    let env = node_env(redis_url);
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    TestServer::spawn(backend, &pairs)
}

/// Every `message` frame's seq and id until `count` have arrived.
async fn collect_messages(ws: &mut WsClient, count: usize) -> Vec<(i64, String)> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let message = ws.recv_type("message").await;
        seen.push((
            message["seq"].as_i64().unwrap(),
            message["id"].as_str().unwrap().to_owned(),
        ));
    }
    seen
}

/// Ava on node A and Sam on node B send at the same time: both see one
/// sequence, gap-free, identical on both nodes; a booking update made
/// through node C reaches them both.
#[tokio::test]
async fn users_on_different_nodes_share_one_sequence() {
    let Some((backend, redis)) = services() else {
        return;
    };
    let node_a = spawn_node(&backend, &redis);
    let node_b = spawn_node(&backend, &redis);
    let node_c = spawn_node(&backend, &redis);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = node_a.open_booking(&ava, &[&sam]).await;

    let mut ava_ws = WsClient::connect_as(&node_a, &ava).await;
    let mut sam_ws = WsClient::connect_as(&node_b, &sam).await;
    ava_ws.join(&room, None).await;
    sam_ws.join(&room, None).await;

    const EACH: usize = 40;
    for i in 0..EACH {
        ava_ws
            .send_message_frame(&room, &format!("ava-{i}"), &format!("from Ava {i}"))
            .await;
        sam_ws
            .send_message_frame(&room, &format!("sam-{i}"), &format!("from Sam {i}"))
            .await;
    }
    let mut acked = Vec::new();
    for i in 0..EACH {
        acked.push(
            ava_ws.wait_ack(&format!("ava-{i}")).await["seq"]
                .as_i64()
                .unwrap(),
        );
        acked.push(
            sam_ws.wait_ack(&format!("sam-{i}")).await["seq"]
                .as_i64()
                .unwrap(),
        );
    }
    acked.sort_unstable();
    let expected: Vec<i64> = (1..=2 * EACH as i64).collect();
    assert_eq!(
        acked, expected,
        "concurrent senders on two nodes: one gap-free sequence"
    );

    let on_a = collect_messages(&mut ava_ws, 2 * EACH).await;
    let on_b = collect_messages(&mut sam_ws, 2 * EACH).await;
    let seqs: Vec<i64> = on_a.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, expected, "node A delivers every seq once, in order");
    assert_eq!(
        on_a, on_b,
        "both nodes deliver the same messages in the same order"
    );

    let booking_id = room.trim_start_matches("booking:");
    let response = node_c
        .http_client()
        .put(node_c.http(&format!("/v1/internal/bookings/{booking_id}")))
        .bearer_auth(INTERNAL_API_KEY)
        .json(&json!({
            "client_id": ava.id, "provider_ids": [sam.id], "status": "paid", "title": "Session",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    for ws in [&mut ava_ws, &mut sam_ws] {
        let update = ws.recv_type("booking.updated").await;
        assert_eq!(update["status"], "paid", "{update}");
        ws.expect_silence(300, &["booking.updated"]).await;
        // The system notice is one more message in the same sequence.
        let notice = ws.recv_type("message").await;
        assert_eq!(notice["seq"], 2 * EACH as i64 + 1, "{notice}");
    }
}

/// Ava writes on node A and fixes her message from her phone on node B;
/// Sam, on node A, sees the fix, Eli's reaction from node C and the
/// deletion, each at its own seq, and they read the same in history.
#[tokio::test]
async fn changes_made_on_another_node_reach_everyone() {
    let Some((backend, redis)) = services() else {
        return;
    };
    let node_a = spawn_node(&backend, &redis);
    let node_b = spawn_node(&backend, &redis);
    let node_c = spawn_node(&backend, &redis);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let eli = TestUser::engineer("Eli");
    let room = node_a.open_booking(&ava, &[&sam, &eli]).await;
    let mut ava_laptop = WsClient::connect_as(&node_a, &ava).await;
    let mut sam_ws = WsClient::connect_as(&node_a, &sam).await;
    sam_ws.join(&room, None).await;
    ava_laptop.send_msg(&room, "ava-1", "Lets do 10am").await;
    ava_laptop.send_msg(&room, "ava-2", "wrong room").await;

    let mut ava_phone = WsClient::connect_as(&node_b, &ava).await;
    let edited = ava_phone
        .request(
            json!({"type": "edit", "room": room, "seq": 1, "body": "Let's do 10am"}),
            "ack",
        )
        .await;
    assert_eq!(edited["seq"], 3, "{edited}");
    let mut eli_ws = WsClient::connect_as(&node_c, &eli).await;
    let reacted = eli_ws
        .request(
            json!({"type": "react", "room": room, "seq": 1, "emoji": "👍", "on": true}),
            "ack",
        )
        .await;
    assert_eq!(reacted["seq"], 4, "{reacted}");
    let deleted = ava_phone
        .request(json!({"type": "delete", "room": room, "seq": 2}), "ack")
        .await;
    assert_eq!(deleted["seq"], 5, "{deleted}");

    let mut changes = Vec::new();
    while changes.len() < 3 {
        let frame = sam_ws
            .recv_matching("a change", |f| {
                f["type"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("message."))
            })
            .await;
        changes.push(frame);
    }
    let seen: Vec<(&str, i64)> = changes
        .iter()
        .map(|f| (f["type"].as_str().unwrap(), f["seq"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        seen,
        [
            ("message.edited", 3),
            ("message.reacted", 4),
            ("message.deleted", 5)
        ]
    );
    assert_eq!(changes[0]["body"], "Let's do 10am");
    assert_eq!(changes[1]["reactions"][0]["user_ids"], json!([eli.id]));

    for node in [&node_a, &node_b, &node_c] {
        let history = node.history_over_http(&sam, &room, None, None).await;
        let messages = history["messages"].as_array().unwrap();
        let first = messages.iter().find(|m| m["seq"] == 1).unwrap();
        assert_eq!(first["body"], "Let's do 10am", "{history}");
        assert_eq!(first["reactions"][0]["count"], 1, "{history}");
        let second = messages.iter().find(|m| m["seq"] == 2).unwrap();
        assert!(second["deleted_at"].is_string(), "{history}");
    }
}

/// Presence crosses nodes, and a node that dies takes its users offline
/// once their lease runs out.
#[tokio::test]
async fn presence_across_nodes_and_after_a_node_dies() {
    let Some((backend, redis)) = services() else {
        return;
    };
    let node_a = spawn_node(&backend, &redis);
    let mut node_b = spawn_node(&backend, &redis);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = node_a.open_booking(&ava, &[&sam]).await;

    let mut ava_ws = WsClient::connect_as(&node_a, &ava).await;
    ava_ws.join(&room, None).await;
    let mut sam_ws = WsClient::connect_as(&node_b, &sam).await;
    let joined = sam_ws.join(&room, None).await;
    let ava_member = joined["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["user_id"] == ava.id.as_str())
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        ava_member["online"], true,
        "Ava is online on node A: {joined}"
    );

    let online = ava_ws
        .recv_matching("Sam online", |f| {
            f["type"] == "presence" && f["user_id"] == sam.id.as_str()
        })
        .await;
    assert_eq!(online["online"], true, "{online}");

    sam_ws.disconnect().await;
    let offline = ava_ws
        .recv_matching("Sam offline", |f| {
            f["type"] == "presence" && f["user_id"] == sam.id.as_str()
        })
        .await;
    assert_eq!(offline["online"], false, "{offline}");

    // Sam again on node B, which then dies without a word.
    let mut sam_ws = WsClient::connect_as(&node_b, &sam).await;
    sam_ws.join(&room, None).await;
    let online = ava_ws
        .recv_matching("Sam online again", |f| {
            f["type"] == "presence" && f["user_id"] == sam.id.as_str()
        })
        .await;
    assert_eq!(online["online"], true, "{online}");
    node_b.kill_hard();
    let started = Instant::now();
    let offline = ava_ws
        .recv_matching("Sam offline after node B died", |f| {
            f["type"] == "presence" && f["user_id"] == sam.id.as_str()
        })
        .await;
    assert_eq!(offline["online"], false, "{offline}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "offline within the lease and a refresh"
    );
    drop(sam_ws);
}

/// A node dies under its user; the user reconnects to another node and
/// resumes with `since`: every acked message arrives once, in order.
#[tokio::test]
async fn a_killed_nodes_user_resumes_on_another_node() {
    let Some((backend, redis)) = services() else {
        return;
    };
    let node_a = spawn_node(&backend, &redis);
    let mut node_b = spawn_node(&backend, &redis);
    let node_c = spawn_node(&backend, &redis);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = node_a.open_booking(&ava, &[&sam]).await;

    let mut ava_ws = WsClient::connect_as(&node_a, &ava).await;
    ava_ws.join(&room, None).await;
    let mut sam_ws = WsClient::connect_as(&node_b, &sam).await;
    sam_ws.join(&room, None).await;
    for i in 0..10 {
        ava_ws
            .send_msg(&room, &format!("before-{i}"), "before the crash")
            .await;
    }
    let seen = collect_messages(&mut sam_ws, 10).await;
    let last_seen = seen.last().unwrap().0;
    node_b.kill_hard();
    drop(sam_ws);

    let mut acked = Vec::new();
    for i in 0..15 {
        let ack = ava_ws
            .send_msg(&room, &format!("after-{i}"), "while Sam is away")
            .await;
        acked.push((
            ack["seq"].as_i64().unwrap(),
            ack["id"].as_str().unwrap().to_owned(),
        ));
    }
    let mut sam_ws = WsClient::connect_as(&node_c, &sam).await;
    let joined = sam_ws.join(&room, Some(last_seen)).await;
    assert_eq!(joined["last_seq"], 25, "{joined}");
    let replayed = collect_messages(&mut sam_ws, 15).await;
    assert_eq!(replayed, acked, "exactly the missed messages, in order");
    sam_ws.expect_silence(300, &["message"]).await;
}

/// Redis of its own, so restarting it disturbs no other test.
struct OwnRedis {
    child: Child,
    port: u16,
}

impl OwnRedis {
    fn start_on(port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        OwnRedis { child, port }
    }

    fn start() -> OwnRedis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        OwnRedis::start_on(port)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn wait_for_readyz(server: &TestServer, status: u16) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (now, body) = server.readiness().await;
        if now == status {
            return body;
        }
        assert!(Instant::now() < deadline, "/readyz stayed {now}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Redis goes away during traffic: each node keeps serving its own users,
/// `/readyz` says so, and when Redis is back the nodes reconnect by
/// themselves and cross-node delivery resumes with nothing lost.
#[tokio::test]
async fn redis_restart_during_traffic() {
    // Only PostgreSQL comes from the environment; Redis is this test's own.
    let Some(backend) = Backend::postgres() else {
        eprintln!("skipped: MIXROOM_TEST_DATABASE_URL not set");
        return;
    };
    let mut redis = OwnRedis::start();
    let node_a = spawn_node(&backend, &redis.url());
    let node_b = spawn_node(&backend, &redis.url());
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let eli = TestUser::engineer("Eli");
    let room = node_a.open_booking(&ava, &[&sam, &eli]).await;

    let mut ava_ws = WsClient::connect_as(&node_a, &ava).await;
    let mut eli_ws = WsClient::connect_as(&node_a, &eli).await;
    let mut sam_ws = WsClient::connect_as(&node_b, &sam).await;
    for ws in [&mut ava_ws, &mut eli_ws, &mut sam_ws] {
        ws.join(&room, None).await;
    }
    ava_ws.send_msg(&room, "m1", "before the outage").await;
    assert_eq!(collect_messages(&mut sam_ws, 1).await[0].0, 1);
    assert_eq!(
        node_a
            .metric("mixroom_broker_connected{broker=\"redis\"}")
            .await,
        1.0
    );

    redis.kill();
    let body = wait_for_readyz(&node_a, 503).await;
    assert_eq!(body["broker"], "unreachable", "{body}");
    assert_eq!(
        node_a
            .metric("mixroom_broker_connected{broker=\"redis\"}")
            .await,
        0.0
    );

    // Local delivery goes on: Eli, on Ava's node, still gets her messages.
    ava_ws.send_msg(&room, "m2", "during the outage").await;
    let on_a = collect_messages(&mut eli_ws, 2).await;
    assert_eq!(on_a.iter().map(|m| m.0).collect::<Vec<_>>(), vec![1, 2]);

    let _redis_again = OwnRedis::start_on(redis.port);
    wait_for_readyz(&node_a, 200).await;
    wait_for_readyz(&node_b, 200).await;
    // What was published during the outage reaches Sam after the resync,
    // and new messages flow across nodes again.
    ava_ws.send_msg(&room, "m3", "after the outage").await;
    let on_b = collect_messages(&mut sam_ws, 2).await;
    assert_eq!(on_b.iter().map(|m| m.0).collect::<Vec<_>>(), vec![2, 3]);
}

/// A TCP relay to PostgreSQL that the test can cut and restore, to play a
/// database outage without touching the shared server.
struct DatabaseRelay {
    addr: std::net::SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    generation: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Relayed connections still open.
    open: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl DatabaseRelay {
    /// Runs on a thread of its own: starting a test server blocks the
    /// test's runtime while the server connects through the relay.
    async fn start(target: String) -> DatabaseRelay {
        use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
        use std::sync::Arc;
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicU64::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (cut_flag, generation_now, open_now) = (cut.clone(), generation.clone(), open.clone());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        std::thread::spawn(move || {
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else {
                        return;
                    };
                    // Counted before the flag is read: `cut` either waits
                    // for this connection or the flag refuses it.
                    let guard = OpenGuard::new(open_now.clone());
                    let born = generation_now.load(Ordering::SeqCst);
                    if cut_flag.load(Ordering::SeqCst) {
                        continue; // dropped: the database is "down"
                    }
                    let target = target.clone();
                    let generation_now = generation_now.clone();
                    tokio::spawn(async move {
                        let _guard = guard;
                        let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                            return;
                        };
                        // Relay until the connection ends or the relay is cut.
                        let relay = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                        let severed = async {
                            while generation_now.load(Ordering::SeqCst) == born {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                            }
                        };
                        tokio::select! { _ = relay => {}, _ = severed => {} }
                    });
                }
            })
        });
        DatabaseRelay {
            addr,
            cut,
            generation,
            open,
        }
    }

    /// Returns once every relayed connection is closed.
    async fn cut(&self) {
        use std::sync::atomic::Ordering;
        self.cut.store(true, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.open.load(Ordering::SeqCst) > 0 {
            assert!(
                Instant::now() < deadline,
                "the relay did not close its connections"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// PostgreSQL goes away for a moment: a message sent meanwhile gets a clear
/// `internal` error with a retry hint and no ack (it is not stored),
/// `/readyz` reports the database, and the same send succeeds once the
/// database is back.
#[tokio::test]
async fn a_database_outage_refuses_acks_until_it_is_over() {
    let Some(backend) = Backend::postgres() else {
        eprintln!("skipped: MIXROOM_TEST_DATABASE_URL not set");
        return;
    };
    let url = backend.url().to_owned();
    let authority = url.split("://").nth(1).unwrap().split('/').next().unwrap();
    let host_port = authority.rsplit('@').next().unwrap().to_owned();
    let relay = DatabaseRelay::start(host_port.clone()).await;
    let relayed = url.replacen(&host_port, &relay.addr.to_string(), 1);
    let relayed_backend = RelayedBackend(relayed);
    let server = TestServer::spawn_with_url(&relayed_backend.0, &[]);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&room, None).await;
    ava_ws.send_msg(&room, "before", "before the outage").await;

    relay.cut().await;
    let reply = ava_ws
        .request(
            json!({"type": "send", "room": room, "client_id": "during", "body": "during", "ref": "during"}),
            "ack",
        )
        .await;
    assert_eq!(
        reply["type"], "error",
        "no ack while the database is down: {reply}"
    );
    assert_eq!(reply["code"], "internal", "{reply}");
    assert!(reply["retry_after_ms"].as_u64().is_some(), "{reply}");
    let body = wait_for_readyz(&server, 503).await;
    assert_eq!(body["database"], "unreachable", "{body}");
    // What the ops kit's MixroomDatabaseDown alert watches.
    let within = std::time::Duration::from_secs(5);
    server
        .wait_for_metric("mixroom_database_up", 0.0, within)
        .await;

    relay.restore();
    wait_for_readyz(&server, 200).await;
    server
        .wait_for_metric("mixroom_database_up", 1.0, within)
        .await;
    let history = server.history_over_http(&sam, &room, None, None).await;
    assert!(
        history["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["client_id"] != "during"),
        "a refused message is not stored: {history}"
    );
    let ack = ava_ws.send_msg(&room, "during", "during").await;
    assert_eq!(ack["seq"], 2, "{ack}");
}

/// The relayed URL stands in for the backend's own (which stays alive so
/// its database is dropped at the end).
struct RelayedBackend(String);

/// Counts a relayed connection until it ends.
struct OpenGuard(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl OpenGuard {
    fn new(open: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> OpenGuard {
        open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        OpenGuard(open)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Three nodes share the outbox: Sam, offline, gets exactly one email for
/// Ava's messages, sent by one node.
#[tokio::test]
async fn each_email_goes_out_once_with_three_nodes() {
    use crate::fake_resend::FakeResend;

    let Some((backend, redis)) = services() else {
        return;
    };
    let fake = FakeResend::start();
    let base_url = fake.base_url();
    let mut env = node_env(&redis);
    env.extend([
        (
            "MIXROOM__EMAIL__RESEND_API_KEY",
            "re_test_cluster".to_owned(),
        ),
        ("MIXROOM__EMAIL__RESEND_BASE_URL", base_url),
        ("MIXROOM__EMAIL__OFFLINE_DELAY_SECS", "1".to_owned()),
        ("MIXROOM__EMAIL__SWEEP_INTERVAL_MS", "200".to_owned()),
    ]);
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let nodes: Vec<TestServer> = (0..3)
        .map(|_| TestServer::spawn(&backend, &pairs))
        .collect();
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = nodes[0].open_booking(&ava, &[&sam]).await;
    let mut ava_ws = WsClient::connect_as(&nodes[1], &ava).await;
    ava_ws.join(&room, None).await;
    for i in 0..3 {
        ava_ws
            .send_msg(&room, &format!("m{i}"), &format!("Take {i} is up"))
            .await;
    }
    let emails = fake
        .wait_for_emails_to(&sam.email(), 1, Duration::from_secs(20))
        .await;
    assert!(
        emails[0].text.contains("Take 2 is up"),
        "one digest of all three"
    );
    // Every node sweeps the outbox every 200 ms: none sends it again.
    fake.expect_no_more_emails(1, std::time::Instant::now() + Duration::from_secs(3))
        .await;
    fake.assert_no_violations();
}

/// A support question asked through one node is answered once, however
/// many nodes run; an admin on another node watches the answer stream in.
#[tokio::test]
async fn the_support_agent_answers_once_across_nodes() {
    let Some((backend, redis)) = services() else {
        return;
    };
    let nodes: Vec<TestServer> = (0..3).map(|_| spawn_node(&backend, &redis)).collect();
    let ava = TestUser::client("Ava");
    let nia = TestUser::admin("Nia");
    nodes[0].put_user(&ava).await;
    nodes[0].put_user(&nia).await;
    let room = nodes[0].open_support_conversation(&ava).await;
    let mut nia_ws = WsClient::connect_as(&nodes[2], &nia).await;
    nia_ws.join(&room, None).await;
    let mut ava_ws = WsClient::connect_as(&nodes[1], &ava).await;
    ava_ws.join(&room, None).await;
    ava_ws
        .send_msg(&room, "q1", "How do I cancel a booking?")
        .await;

    let delta = nia_ws.recv_type("message.delta").await;
    let answer = nia_ws
        .recv_matching("the agent's answer", |f| {
            f["type"] == "message" && f["sender"]["role"] == "agent"
        })
        .await;
    assert_eq!(delta["id"], answer["id"], "the deltas belong to the answer");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let history = nodes[0].history_over_http(&nia, &room, None, None).await;
    let agent_turns = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["sender"]["role"] == "agent")
        .count();
    assert_eq!(agent_turns, 1, "answered once: {history}");
}
