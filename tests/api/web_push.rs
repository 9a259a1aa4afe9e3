//! Stories of Web Push: a user with no live session gets their
//! notifications and chat messages on their browsers at once, through a
//! fake push service on 127.0.0.1 that checks the VAPID signature and
//! decrypts every payload with the browser's own keys; never their own
//! messages, nothing while they are online or for a kind they turned off.
//! A gone subscription is removed, a rate-limited push retried and
//! delivered once; subscriptions are checked, limited, exported and erased.

use std::time::Duration;

use serde_json::{json, Value};

use crate::fake_push::{Browser, FakePushService};
use crate::helpers::{Backend, TestServer, TestUser, WsClient, INTERNAL_API_KEY};

both_backends!(
    an_offline_user_gets_notifications_and_chat_pushed,
    an_online_user_gets_nothing_pushed,
    a_kind_turned_off_is_not_pushed,
    a_gone_subscription_is_removed,
    a_rate_limited_push_is_retried_and_delivered_once,
    subscriptions_are_checked_and_limited,
    export_and_erasure_cover_subscriptions,
    production_without_a_key_turns_push_off,
    the_development_key_survives_a_restart,
    two_nodes_push_each_once,
    a_push_of_a_killed_node_is_sent_by_another,
);

const SUBJECT: &str = "mailto:push-test@mixroom.test";
const APP: &str = "https://app.mixroom.test";
/// Budget for an expected push (sent at once; retries wait about 1 s).
const PUSH_WAIT: Duration = Duration::from_secs(15);
/// How long a push that must not come is waited for.
const QUIET: Duration = Duration::from_millis(1500);
const SUPABASE_FILE: &str =
    "https://abcd1234.supabase.co/storage/v1/object/sign/stems/take3.wav?token=xyz";

fn push_env<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("MIXROOM__PUSH__VAPID_SUBJECT", SUBJECT),
        ("MIXROOM__PUSH__RETRY_BASE_MS", "200"),
        ("MIXROOM__PUSH__SWEEP_INTERVAL_MS", "500"),
        ("MIXROOM__EMAIL__APP_BASE_URL", APP),
    ];
    env.extend_from_slice(extra);
    env
}

/// A development server (its VAPID key made and stored on start) and a
/// fake push service expecting that key.
async fn start(
    backend: &Backend,
    extra: &[(&'static str, &'static str)],
) -> (TestServer, FakePushService) {
    let server = TestServer::spawn(backend, &push_env(extra));
    let fake = FakePushService::start(SUBJECT);
    fake.expect_vapid_key(&vapid_key(&server).await);
    (server, fake)
}

async fn vapid_key(server: &TestServer) -> String {
    let response = server
        .http_client()
        .get(server.http("/v1/push/vapid-public-key"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["public_key"].as_str().unwrap().to_owned()
}

async fn subscribe_with(server: &TestServer, user: &TestUser, body: &Value) -> reqwest::Response {
    server
        .http_client()
        .post(server.http("/v1/me/push-subscriptions"))
        .bearer_auth(&user.token)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn subscribe(server: &TestServer, user: &TestUser, browser: &Browser) {
    let response = subscribe_with(server, user, &browser.subscription()).await;
    assert_eq!(response.status(), 201, "subscribing {}", browser.name);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["endpoint"], browser.endpoint);
    assert!(body["created_at"].is_string(), "{body}");
}

async fn endpoints(server: &TestServer, user: &TestUser) -> Vec<String> {
    let listed = server.get_as(user, "/v1/me/push-subscriptions").await;
    listed["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["endpoint"].as_str().unwrap().to_owned())
        .collect()
}

/// `POST /v1/internal/notifications` for `user`.
async fn notify(server: &TestServer, user: &TestUser, kind: &str, title: &str, link: &str) {
    let response = server
        .http_client()
        .post(server.http("/v1/internal/notifications"))
        .bearer_auth(INTERNAL_API_KEY)
        .json(&json!({"user_id": user.id, "kind": kind, "title": title,
                      "body": format!("{title}: details inside"), "link": link}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "creating a notification");
}

/// Ava and Sam with a booking; the booking's own notifications have had
/// time to be handled before anyone subscribes.
async fn booking(server: &TestServer) -> (TestUser, TestUser, String) {
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    (ava, sam, room)
}

fn titled(title: &'static str) -> impl Fn(&Value) -> bool {
    move |payload| payload["title"] == title
}

/// Sam is away: a notification and Ava's messages reach his laptop,
/// decrypted with its keys, with a short title, body and link; a message
/// sent in Ava's name while she is away reaches Sam, not Ava's phone.
async fn an_offline_user_gets_notifications_and_chat_pushed(backend: Backend) {
    let (server, fake) = start(&backend, &[]).await;
    let (ava, sam, room) = booking(&server).await;
    let booking_id = room.trim_start_matches("booking:");
    let laptop = fake.browser("sam-laptop");
    let phone = fake.browser("ava-phone");
    subscribe(&server, &sam, &laptop).await;
    subscribe(&server, &ava, &phone).await;

    notify(&server, &sam, "booking", "Session moved", "/bookings/b42").await;
    let pushed = fake
        .wait_for("sam-laptop", PUSH_WAIT, titled("Session moved"))
        .await;
    assert_eq!(pushed["body"], "Session moved: details inside");
    assert_eq!(pushed["link"], format!("{APP}/bookings/b42"));
    assert_eq!(pushed["kind"], "booking");
    assert!(
        pushed["tag"].as_str().unwrap().starts_with("notification:"),
        "{pushed}"
    );

    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&room, None).await;
    let long = format!("Hi Sam! {}", "Are we still on for five? ".repeat(10));
    ava_ws.send_msg(&room, "ava-1", &long).await;
    let chat = fake
        .wait_for("sam-laptop", PUSH_WAIT, |p| p["kind"] == "chat")
        .await;
    assert_eq!(chat["title"], "Session");
    assert_eq!(chat["link"], format!("{APP}/bookings/{booking_id}"));
    assert_eq!(chat["tag"], room);
    let body = chat["body"].as_str().unwrap();
    assert!(body.starts_with("Ava: Hi Sam! Are we still on"), "{body}");
    assert!(body.chars().count() <= 140 && body.ends_with('…'), "{body}");

    // A shared file is named.
    let stems = json!({"url": SUPABASE_FILE, "name": "take3.wav", "size": 1024,
                       "content_type": "audio/wav"});
    ava_ws
        .send_json(
            json!({"type": "send", "room": room, "client_id": "ava-2", "ref": "ava-2",
                          "body": "Stems", "attachments": [stems]}),
        )
        .await;
    ava_ws.wait_ack("ava-2").await;
    fake.wait_for("sam-laptop", PUSH_WAIT, |p| {
        p["body"] == "Ava: Stems 📎 take3.wav"
    })
    .await;
    ava_ws.disconnect().await;

    // Posted in Ava's name while she is away: pushed to Sam only.
    let response = server
        .http_client()
        .post(server.http(&format!("/v1/internal/rooms/{room}/messages")))
        .bearer_auth(INTERNAL_API_KEY)
        .json(&json!({"body": "Ava's reply from the app", "sender_id": ava.id}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    fake.wait_for("sam-laptop", PUSH_WAIT, |p| {
        p["body"] == "Ava: Ava's reply from the app"
    })
    .await;
    tokio::time::sleep(QUIET).await;
    let to_ava: Vec<Value> = fake
        .delivered_to("ava-phone")
        .into_iter()
        .map(|d| d.payload)
        .filter(|p| p["tag"] == room)
        .collect();
    assert!(to_ava.is_empty(), "Ava got her own messages: {to_ava:?}");
    for delivered in fake.delivered_to("sam-laptop") {
        assert_eq!(delivered.ttl, 43200);
    }
    fake.assert_no_violations();
    assert!(server.metric("mixroom_pushes_sent_total").await >= 4.0);
}

/// Sam is connected: neither a notification nor a message is pushed;
/// once he is gone, the next one is.
async fn an_online_user_gets_nothing_pushed(backend: Backend) {
    let (server, fake) = start(&backend, &[]).await;
    let (ava, sam, room) = booking(&server).await;
    subscribe(&server, &sam, &fake.browser("sam-laptop")).await;
    let sam_ws = WsClient::connect_as(&server, &sam).await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&room, None).await;

    notify(&server, &sam, "booking", "While online", "/bookings/b1").await;
    ava_ws.send_msg(&room, "ava-1", "You there?").await;
    fake.expect_none_to("sam-laptop", QUIET).await;

    sam_ws.disconnect().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    notify(&server, &sam, "booking", "After leaving", "/bookings/b1").await;
    fake.wait_for("sam-laptop", PUSH_WAIT, titled("After leaving"))
        .await;
    assert_eq!(fake.delivered_to("sam-laptop").len(), 1);
    fake.assert_no_violations();
}

/// Sam turns booking and chat pushes off: neither is pushed, while
/// support notifications (still on) are; the switches show in his
/// preferences beside the email ones.
async fn a_kind_turned_off_is_not_pushed(backend: Backend) {
    let (server, fake) = start(&backend, &[]).await;
    let (ava, sam, room) = booking(&server).await;
    subscribe(&server, &sam, &fake.browser("sam-laptop")).await;
    let before = server.get_as(&sam, "/v1/me/preferences").await;
    assert_eq!(
        before["push"],
        json!({"chat": true, "booking": true, "support": true, "marketing": false,
               "reminder": true})
    );
    let response = server
        .http_client()
        .put(server.http("/v1/me/preferences"))
        .bearer_auth(&sam.token)
        .json(&json!({"push": {"booking": false, "chat": false}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let after: Value = response.json().await.unwrap();
    assert_eq!(
        after["push"],
        json!({"chat": false, "booking": false, "support": true, "marketing": false,
               "reminder": true})
    );
    assert_eq!(after["email"]["booking"], true, "email switches unchanged");
    let unknown = server
        .http_client()
        .put(server.http("/v1/me/preferences"))
        .bearer_auth(&sam.token)
        .json(&json!({"push": {"newsletter": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 422);
    let policy = server
        .http_client()
        .put(server.http("/v1/me/preferences"))
        .bearer_auth(&sam.token)
        .json(&json!({"push": {"policy": false}}))
        .send()
        .await
        .unwrap();
    assert_eq!(policy.status(), 422, "policy news is not a switch");

    notify(&server, &sam, "booking", "Booking news", "/bookings/b1").await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&room, None).await;
    ava_ws.send_msg(&room, "ava-1", "Hello?").await;
    fake.expect_none_to("sam-laptop", QUIET).await;

    notify(&server, &sam, "support", "Support answered", "/support/s1").await;
    fake.wait_for("sam-laptop", PUSH_WAIT, titled("Support answered"))
        .await;
    assert_eq!(fake.delivered_to("sam-laptop").len(), 1);
    fake.assert_no_violations();
}

/// Sam's old browser unsubscribed (its service answers 410): the
/// subscription is removed and no longer listed or exported; his other
/// browser still gets the push.
async fn a_gone_subscription_is_removed(backend: Backend) {
    let (server, fake) = start(&backend, &[]).await;
    let (_ava, sam, _room) = booking(&server).await;
    let old = fake.browser("sam-old");
    let new = fake.browser("sam-new");
    subscribe(&server, &sam, &old).await;
    subscribe(&server, &sam, &new).await;
    fake.answer_gone("sam-old");

    notify(&server, &sam, "booking", "Paid", "/bookings/b1").await;
    fake.wait_for("sam-new", PUSH_WAIT, titled("Paid")).await;
    server
        .wait_for_metric("mixroom_push_subscriptions_removed_total", 1.0, PUSH_WAIT)
        .await;
    assert_eq!(endpoints(&server, &sam).await, vec![new.endpoint.clone()]);
    let export = server.export(&sam).await;
    let exported: Vec<&str> = export["push_subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["endpoint"].as_str().unwrap())
        .collect();
    assert_eq!(exported, vec![new.endpoint.as_str()]);

    // Nothing more is sent to it.
    notify(&server, &sam, "booking", "Again", "/bookings/b1").await;
    fake.wait_for("sam-new", PUSH_WAIT, titled("Again")).await;
    assert_eq!(fake.requests_to("sam-old"), 1);
    fake.assert_no_violations();
}

/// Sam's push service answers 429 with `Retry-After: 1` twice: the push
/// waits and is delivered once, about two seconds later.
async fn a_rate_limited_push_is_retried_and_delivered_once(backend: Backend) {
    let (server, fake) = start(&backend, &[]).await;
    let (_ava, sam, _room) = booking(&server).await;
    subscribe(&server, &sam, &fake.browser("sam-laptop")).await;
    fake.rate_limit("sam-laptop", 2);

    let asked = std::time::Instant::now();
    notify(&server, &sam, "booking", "Rate limited", "/bookings/b1").await;
    fake.wait_for("sam-laptop", PUSH_WAIT, titled("Rate limited"))
        .await;
    let waited = fake.delivered_to("sam-laptop")[0].at - asked;
    assert!(
        waited >= Duration::from_millis(1900),
        "Retry-After not honoured: delivered after {waited:?}"
    );
    tokio::time::sleep(QUIET).await;
    assert_eq!(fake.delivered_to("sam-laptop").len(), 1, "delivered once");
    assert_eq!(fake.requests_to("sam-laptop"), 3);
    assert_eq!(
        server
            .metric("mixroom_push_retries_total{reason=\"rate_limited\"}")
            .await,
        2.0
    );
    fake.assert_no_violations();
}

/// Malformed subscriptions get 422 naming what is wrong, a sixth browser
/// (over `max_subscriptions_per_user`) 409; posting the same one again is
/// 200; only its owner can delete it.
async fn subscriptions_are_checked_and_limited(backend: Backend) {
    let (server, fake) = start(
        &backend,
        &[("MIXROOM__PUSH__MAX_SUBSCRIPTIONS_PER_USER", "2")],
    )
    .await;
    let ava = TestUser::client("Ava");
    let eve = TestUser::client("Eve");
    let key = vapid_key(&server).await;
    assert_eq!(base64_len(&key), 65, "an uncompressed P-256 point: {key}");
    let browser = fake.browser("ava-1");
    let good = browser.subscription();
    let with = |field: &str, value: Value| {
        let mut body = good.clone();
        match field {
            "endpoint" => body["endpoint"] = value,
            key => body["keys"][key] = value,
        }
        body
    };
    let short_key = "BAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for (body, says) in [
        (with("endpoint", json!("ftp://push.example/x")), "https://"),
        (with("endpoint", json!("http://push.example/x")), "https://"),
        (with("endpoint", json!("not a url")), "https://"),
        // Not a push service: the server would POST into its own network.
        (
            with("endpoint", json!("https://10.0.0.5/admin")),
            "push service",
        ),
        (
            with("endpoint", json!("https://fcm.googleapis.com:8443/x")),
            "default port",
        ),
        (with("p256dh", json!(short_key)), "65 bytes"),
        (with("p256dh", json!("***")), "base64url"),
        (with("auth", json!("AAAA")), "16 bytes"),
    ] {
        let response = subscribe_with(&server, &ava, &body).await;
        assert_eq!(response.status(), 422, "{body}");
        let error: Value = response.json().await.unwrap();
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
    }
    let missing_keys = subscribe_with(&server, &ava, &json!({"endpoint": browser.endpoint})).await;
    assert!(matches!(missing_keys.status().as_u16(), 400 | 422));
    let anonymous = server
        .http_client()
        .post(server.http("/v1/me/push-subscriptions"))
        .json(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    subscribe(&server, &ava, &browser).await;
    let again = subscribe_with(&server, &ava, &good).await;
    assert_eq!(again.status(), 200, "the same browser again");
    subscribe(&server, &ava, &fake.browser("ava-2")).await;
    let third = subscribe_with(&server, &ava, &fake.browser("ava-3").subscription()).await;
    assert_eq!(third.status(), 409);
    let error: Value = third.json().await.unwrap();
    assert_eq!(error["error"]["code"], "conflict");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 2"),
        "{error}"
    );

    let delete = |user: &TestUser, endpoint: &str| {
        server
            .http_client()
            .delete(server.http("/v1/me/push-subscriptions"))
            .query(&[("endpoint", endpoint)])
            .bearer_auth(&user.token)
            .send()
    };
    assert_eq!(delete(&eve, &browser.endpoint).await.unwrap().status(), 404);
    assert_eq!(delete(&ava, &browser.endpoint).await.unwrap().status(), 204);
    assert_eq!(delete(&ava, &browser.endpoint).await.unwrap().status(), 404);
    assert_eq!(endpoints(&server, &ava).await.len(), 1);
    // Room again for another browser.
    subscribe(&server, &ava, &fake.browser("ava-3")).await;
}

/// The export lists Sam's browsers (endpoint, when added), not their
/// keys; erasing him removes them and the pushes still queued for them.
async fn export_and_erasure_cover_subscriptions(backend: Backend) {
    let (server, fake) = start(&backend, &[]).await;
    let (_ava, sam, _room) = booking(&server).await;
    let laptop = fake.browser("sam-laptop");
    subscribe(&server, &sam, &laptop).await;
    let export = server.export(&sam).await;
    let exported = &export["push_subscriptions"];
    assert_eq!(exported.as_array().unwrap().len(), 1, "{export}");
    assert_eq!(exported[0]["endpoint"], laptop.endpoint);
    assert!(exported[0]["created_at"].is_string());
    assert!(!export.to_string().contains(&laptop.auth), "keys exported");

    // A push that keeps failing stays queued, retried ...
    fake.fail("sam-laptop", usize::MAX);
    notify(&server, &sam, "booking", "Stuck", "/bookings/b1").await;
    let deadline = std::time::Instant::now() + PUSH_WAIT;
    while fake.requests_to("sam-laptop") < 2 {
        assert!(std::time::Instant::now() < deadline, "no retry");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ... until Sam is erased: then nothing is tried again.
    let erased = server
        .http_client()
        .delete(server.http("/v1/me"))
        .bearer_auth(&sam.token)
        .send()
        .await
        .unwrap();
    assert_eq!(erased.status(), 200);
    let details: Value = erased.json().await.unwrap();
    assert_eq!(details["details"]["push_subscriptions_deleted"], 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tried = fake.requests_to("sam-laptop");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        fake.requests_to("sam-laptop"),
        tried,
        "retried after erasure"
    );
    assert!(endpoints(&server, &sam).await.is_empty());

    // The backend's erasure of a deleted account does the same.
    let eli = TestUser::engineer("Eli");
    server.put_user(&eli).await;
    subscribe(&server, &eli, &fake.browser("eli-phone")).await;
    let response = server
        .http_client()
        .delete(server.http(&format!("/v1/internal/users/{}", eli.id)))
        .bearer_auth(INTERNAL_API_KEY)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    assert!(endpoints(&server, &eli).await.is_empty());
}

/// The PostgreSQL URL production accepts (plaintext said out loud).
fn production_url(backend: &Backend) -> String {
    let url = backend.url();
    if url.starts_with("sqlite:") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&sslmode=disable")
    } else {
        format!("{url}?sslmode=disable")
    }
}

/// Production without `push.vapid_private_key` starts with a warning and
/// push off (503 `push_disabled`); with a key it serves that key.
async fn production_without_a_key_turns_push_off(backend: Backend) {
    let url = production_url(&backend);
    let production = ("MIXROOM__SERVER__ENVIRONMENT", "production");
    let server = TestServer::spawn_with_url(&url, &[production]);
    let output = server.output();
    assert!(
        output
            .lines()
            .any(|l| l.contains("WARN") && l.contains("push.vapid_private_key is empty")),
        "{output}"
    );
    let response = server
        .http_client()
        .get(server.http("/v1/push/vapid-public-key"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "push_disabled");
    let fake = FakePushService::start(SUBJECT);
    let ava = TestUser::client("Ava");
    let refused = subscribe_with(&server, &ava, &fake.browser("ava").subscription()).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(server.readiness().await.0, 200, "the rest serves");
    drop(server);

    // A key of the operator's, configured: its public half is served.
    let (private, public) = key_pair();
    let server = TestServer::spawn_with_url(
        &url,
        &[production, ("MIXROOM__PUSH__VAPID_PRIVATE_KEY", &private)],
    );
    assert_eq!(vapid_key(&server).await, public);
    assert!(!server.output().contains("push.vapid_private_key is empty"));
    // Production takes https endpoints only.
    let local = subscribe_with(&server, &ava, &fake.browser("ava-2").subscription()).await;
    assert_eq!(local.status(), 422);
}

/// In development the key made on the first start is the one after a
/// restart: browsers' subscriptions stay valid.
async fn the_development_key_survives_a_restart(backend: Backend) {
    let (mut server, _fake) = start(&backend, &[]).await;
    let first = vapid_key(&server).await;
    server.restart();
    assert_eq!(vapid_key(&server).await, first);
}

/// Two nodes on one database and Redis. Sam is connected to node B, so a
/// notification posted on node A is not pushed (presence is the
/// cluster's); once he has gone, notifications posted on both nodes reach
/// his browser once each, both senders working the one queue.
async fn two_nodes_push_each_once(backend: Backend) {
    let Some(redis) = crate::cluster::shared_redis() else {
        eprintln!("skipped: needs MIXROOM_TEST_REDIS_URL");
        return;
    };
    let env = push_env(&[
        ("MIXROOM__BROKER__REDIS_URL", redis.as_str()),
        ("MIXROOM__BROKER__PRESENCE_LEASE_MS", "1500"),
        ("MIXROOM__PUSH__SWEEP_INTERVAL_MS", "100"),
        ("MIXROOM__PUSH__CONCURRENCY", "2"),
    ]);
    let node_a = TestServer::spawn(&backend, &env);
    let node_b = TestServer::spawn(&backend, &env);
    let key = vapid_key(&node_a).await;
    assert_eq!(vapid_key(&node_b).await, key, "one development key");
    let fake = FakePushService::start(SUBJECT);
    fake.expect_vapid_key(&key);
    let (_ava, sam, _room) = booking(&node_a).await;
    subscribe(&node_a, &sam, &fake.browser("sam-laptop")).await;

    let sam_ws = WsClient::connect_as(&node_b, &sam).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    notify(&node_a, &sam, "booking", "Seen on node B", "/bookings/b1").await;
    fake.expect_none_to("sam-laptop", QUIET).await;
    sam_ws.disconnect().await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    fake.delay_answers(Duration::from_millis(300));
    let count = 12;
    for i in 0..count {
        let node = if i % 2 == 0 { &node_a } else { &node_b };
        notify(node, &sam, "booking", &format!("News {i}"), "/bookings/b1").await;
    }
    let deadline = std::time::Instant::now() + PUSH_WAIT;
    while fake.delivered_to("sam-laptop").len() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {count} pushes arrived",
            fake.delivered_to("sam-laptop").len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(QUIET).await;
    let mut titles: Vec<String> = fake
        .delivered_to("sam-laptop")
        .iter()
        .map(|d| d.payload["title"].as_str().unwrap().to_owned())
        .collect();
    titles.sort();
    titles.dedup();
    assert_eq!(titles.len(), count, "each once: {titles:?}");
    assert_eq!(fake.requests_to("sam-laptop"), count);
    let sent = node_a.metric("mixroom_pushes_sent_total").await
        + node_b.metric("mixroom_pushes_sent_total").await;
    assert_eq!(sent, count as f64);
    fake.assert_no_violations();
}

/// Node A dies while its push is held by the push service: the push is not
/// lost. Once A's lease runs out (request timeout + 5 s), node B sends it,
/// and it is delivered once.
async fn a_push_of_a_killed_node_is_sent_by_another(backend: Backend) {
    let env = push_env(&[
        ("MIXROOM__PUSH__REQUEST_TIMEOUT_SECS", "1"),
        ("MIXROOM__PUSH__SWEEP_INTERVAL_MS", "200"),
    ]);
    let mut node_a = TestServer::spawn(&backend, &env);
    let node_b = TestServer::spawn(&backend, &env);
    let fake = FakePushService::start(SUBJECT);
    fake.expect_vapid_key(&vapid_key(&node_a).await);
    let (_ava, sam, _room) = booking(&node_a).await;
    subscribe(&node_a, &sam, &fake.browser("sam-laptop")).await;
    fake.stall("sam-laptop", 1);

    notify(&node_a, &sam, "booking", "Survives a crash", "/bookings/b1").await;
    let deadline = std::time::Instant::now() + PUSH_WAIT;
    while fake.requests_to("sam-laptop") == 0 {
        assert!(std::time::Instant::now() < deadline, "never sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node_a.kill_hard();
    let killed = std::time::Instant::now();
    fake.wait_for(
        "sam-laptop",
        Duration::from_secs(20),
        titled("Survives a crash"),
    )
    .await;
    let after = fake.delivered_to("sam-laptop")[0].at - killed;
    assert!(
        after >= Duration::from_secs(4),
        "sent again before the lease ran out: {after:?}"
    );
    tokio::time::sleep(QUIET).await;
    assert_eq!(fake.delivered_to("sam-laptop").len(), 1);
    assert_eq!(fake.requests_to("sam-laptop"), 2);
    assert_eq!(node_b.metric("mixroom_pushes_sent_total").await, 1.0);
    fake.assert_no_violations();
}

/// A VAPID key pair as an operator makes one: the private scalar and the
/// uncompressed public point, both base64url.
fn key_pair() -> (String, String) {
    use base64ct::{Base64UrlUnpadded, Encoding};
    use web_push_native::jwt_simple::prelude::{ECDSAP256PublicKeyLike, ES256KeyPair};
    let key = ES256KeyPair::generate();
    (
        Base64UrlUnpadded::encode_string(&key.to_bytes()),
        Base64UrlUnpadded::encode_string(&key.public_key().public_key().to_bytes_uncompressed()),
    )
}

fn base64_len(text: &str) -> usize {
    use base64ct::{Base64UrlUnpadded, Encoding};
    Base64UrlUnpadded::decode_vec(text).unwrap().len()
}
