//! Stories of booking reminders: each participant is reminded before the
//! session, once, whichever node and whatever crash; a moved booking moves
//! its reminders and a cancelled one has none.
//!
//! Lead times here are seconds (`MIXROOM__NOTIFY__REMINDER_LEAD_SECS`) and
//! the sweep is fast, so a story runs in seconds of real time.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;
use uuid::Uuid;

use crate::fake_resend::FakeResend;
use crate::helpers::{Backend, TestServer, TestUser, WsClient, INTERNAL_API_KEY};

both_backends!(
    three_nodes_remind_each_participant_once,
    reminders_survive_a_hard_kill_and_late_ones_are_dropped_once_the_session_began,
    moving_or_cancelling_a_booking_moves_or_cancels_its_reminders,
);

const EMAIL_WAIT: Duration = Duration::from_secs(20);

fn reminder_env(fake: &FakeResend, leads: &str) -> Vec<(String, String)> {
    [
        (
            "MIXROOM__EMAIL__RESEND_API_KEY",
            "re_test_5xQ2fake".to_owned(),
        ),
        ("MIXROOM__EMAIL__RESEND_BASE_URL", fake.base_url()),
        (
            "MIXROOM__EMAIL__FROM",
            "Mixroom <notify@mixroom.test>".to_owned(),
        ),
        // Long: only a reminder's own (immediate) email can arrive in time.
        ("MIXROOM__EMAIL__OFFLINE_DELAY_SECS", "600".to_owned()),
        ("MIXROOM__EMAIL__UNREAD_DELAY_SECS", "600".to_owned()),
        ("MIXROOM__EMAIL__SWEEP_INTERVAL_MS", "200".to_owned()),
        ("MIXROOM__EMAIL__RATE_PER_SEC", "50".to_owned()),
        ("MIXROOM__NOTIFY__REMINDER_LEAD_SECS", leads.to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn spawn(backend: &Backend, env: &[(String, String)]) -> TestServer {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    TestServer::spawn(backend, &env)
}

/// RFC 3339 of `ms` from now.
fn from_now(ms: i64) -> String {
    mixroom_realtime::time::rfc3339_ms(mixroom_realtime::time::now_ms() + ms)
}

/// Mirrors a booking of `client` with `provider` (the backend's PUT).
async fn put_booking(
    server: &TestServer,
    id: &str,
    client: &TestUser,
    provider: &TestUser,
    status: &str,
    starts_at: Option<String>,
) {
    let response = server
        .http_client()
        .put(server.http(&format!("/v1/internal/bookings/{id}")))
        .bearer_auth(INTERNAL_API_KEY)
        .json(&json!({
            "client_id": client.id,
            "provider_ids": [provider.id],
            "status": status,
            "title": format!("Session {id}"),
            "starts_at": starts_at,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

async fn patch_booking(server: &TestServer, id: &str, patch: Value) {
    let response = server
        .http_client()
        .patch(server.http(&format!("/v1/internal/bookings/{id}")))
        .bearer_auth(INTERNAL_API_KEY)
        .json(&patch)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

async fn booking(server: &TestServer, id: &str) -> Value {
    server
        .http_client()
        .get(server.http(&format!("/v1/internal/bookings/{id}")))
        .bearer_auth(INTERNAL_API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The user's reminder notifications, oldest first.
async fn reminders_of(server: &TestServer, user: &TestUser) -> Vec<Value> {
    let list = server.get_as(user, "/v1/notifications?limit=100").await;
    let mut reminders: Vec<Value> = list["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"] == "reminder")
        .cloned()
        .collect();
    reminders.reverse();
    reminders
}

async fn wait_for_reminders(server: &TestServer, user: &TestUser, count: usize) -> Vec<Value> {
    let deadline = Instant::now() + EMAIL_WAIT;
    loop {
        let reminders = reminders_of(server, user).await;
        if reminders.len() >= count {
            return reminders;
        }
        assert!(
            Instant::now() < deadline,
            "{} has {} of {count} reminders",
            user.name,
            reminders.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Three nodes share the database (and Redis, which carries a frame to the
/// node a user is connected to) and each looks for due reminders five
/// times a second. Twelve bookings come due together: every participant
/// gets one reminder per booking (in the app, live where connected, and
/// one email), never two, and the nodes' counts add up to twelve.
async fn three_nodes_remind_each_participant_once(backend: Backend) {
    let Some(redis_url) = crate::cluster::shared_redis() else {
        eprintln!("skipped: needs MIXROOM_TEST_REDIS_URL");
        return;
    };
    let fake = FakeResend::start();
    let mut env = reminder_env(&fake, "3");
    env.push(("MIXROOM__BROKER__REDIS_URL".to_owned(), redis_url));
    let nodes: Vec<TestServer> = (0..3).map(|_| spawn(&backend, &env)).collect();
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    nodes[0].put_user(&ava).await;
    nodes[0].put_user(&sam).await;
    let mut ava_ws = WsClient::connect_as(&nodes[2], &ava).await;
    const BOOKINGS: usize = 12;
    let starts_at = from_now(6_000);
    for n in 0..BOOKINGS {
        let node = &nodes[n % 3];
        let id = format!("rem-{}-{n}", Uuid::new_v4());
        put_booking(node, &id, &ava, &sam, "confirmed", Some(starts_at.clone())).await;
        let stored = booking(node, &id).await;
        assert_eq!(stored["reminders"][0]["state"], "pending", "{stored}");
        assert_eq!(stored["reminders"][0]["lead_secs"], 3, "{stored}");
    }

    let frame = ava_ws
        .recv_matching("a live reminder", |f| {
            f["type"] == "notification" && f["kind"] == "reminder"
        })
        .await;
    assert!(
        frame["title"]
            .as_str()
            .unwrap()
            .ends_with("starts in 3 seconds"),
        "{frame}"
    );
    for user in [&ava, &sam] {
        let reminders = wait_for_reminders(&nodes[1], user, BOOKINGS).await;
        assert!(reminders[0]["link"]
            .as_str()
            .unwrap()
            .contains("/bookings/rem-"));
        let emails = fake
            .wait_for_emails_to(&user.email(), BOOKINGS, EMAIL_WAIT)
            .await;
        assert!(
            emails[0].subject.starts_with("Reminder: Session rem-"),
            "{}",
            emails[0].subject
        );
    }
    // Time for any second sending to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for user in [&ava, &sam] {
        assert_eq!(reminders_of(&nodes[0], user).await.len(), BOOKINGS);
        assert_eq!(fake.emails_to(&user.email()).len(), BOOKINGS);
    }
    let mut sent = 0.0;
    for node in &nodes {
        sent += node
            .metric("mixroom_reminders_total{outcome=\"sent\"}")
            .await;
    }
    assert_eq!(sent, BOOKINGS as f64, "each reminder taken by one node");
    fake.assert_no_violations();
}

/// The only node is killed before any reminder is due and comes back
/// after some are: a reminder whose session is still ahead goes out late,
/// once (another kill after it changes nothing); one whose session began
/// while the node was down is dropped and counted.
async fn reminders_survive_a_hard_kill_and_late_ones_are_dropped_once_the_session_began(
    backend: Backend,
) {
    let fake = FakeResend::start();
    let env = reminder_env(&fake, "5");
    let mut server = spawn(&backend, &env);
    let ava = TestUser::client("Ava");
    let sam = TestUser::engineer("Sam");
    server.put_user(&ava).await;
    server.put_user(&sam).await;
    let late = format!("late-{}", Uuid::new_v4());
    let begun = format!("begun-{}", Uuid::new_v4());
    // Due at +7 s, starts at +12 s / due at +1 s, starts at +6 s; the
    // node is down from now until +8 s.
    let started = Instant::now();
    put_booking(&server, &late, &ava, &sam, "paid", Some(from_now(12_000))).await;
    put_booking(&server, &begun, &ava, &sam, "paid", Some(from_now(6_000))).await;
    server.kill_hard();

    tokio::time::sleep_until(started + Duration::from_millis(8_000)).await;
    server.restart();
    for user in [&ava, &sam] {
        let reminders = wait_for_reminders(&server, user, 1).await;
        assert!(
            reminders[0]["link"].as_str().unwrap().ends_with(&late),
            "{reminders:?}"
        );
        fake.wait_for_emails_to(&user.email(), 1, EMAIL_WAIT).await;
    }
    server
        .wait_for_metric(
            "mixroom_reminders_total{outcome=\"missed\"}",
            1.0,
            Duration::from_secs(5),
        )
        .await;
    let dropped = booking(&server, &begun).await;
    assert_eq!(dropped["reminders"][0]["state"], "missed", "{dropped}");
    assert_eq!(
        booking(&server, &late).await["reminders"][0]["state"],
        "sent"
    );

    server.kill_hard();
    server.restart();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for user in [&ava, &sam] {
        assert_eq!(reminders_of(&server, user).await.len(), 1);
        assert_eq!(fake.emails_to(&user.email()).len(), 1);
    }
    fake.assert_no_violations();
}

/// A booking moved later is reminded before its new start, not its old
/// one; a cancelled booking, one whose lead time had already passed when
/// it was mirrored, a requested one and one without a start are reminded
/// of nothing. Sam turned reminder emails off: he is reminded in the app.
async fn moving_or_cancelling_a_booking_moves_or_cancels_its_reminders(backend: Backend) {
    let fake = FakeResend::start();
    let env = reminder_env(&fake, "3");
    let server = spawn(&backend, &env);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    server.put_user(&ava).await;
    server.put_user(&sam).await;
    let response = server
        .http_client()
        .put(server.http("/v1/me/preferences"))
        .bearer_auth(&sam.token)
        .json(&json!({"email": {"reminder": false}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let preferences: Value = response.json().await.unwrap();
    assert_eq!(preferences["email"]["reminder"], false, "{preferences}");

    let moved = format!("moved-{}", Uuid::new_v4());
    let cancelled = format!("cancelled-{}", Uuid::new_v4());
    let too_soon = format!("soon-{}", Uuid::new_v4());
    let requested = format!("requested-{}", Uuid::new_v4());
    let undated = format!("undated-{}", Uuid::new_v4());
    let started = Instant::now();
    // Each would be due at +2 s.
    for id in [&moved, &cancelled] {
        put_booking(&server, id, &ava, &sam, "confirmed", Some(from_now(5_000))).await;
    }
    put_booking(
        &server,
        &too_soon,
        &ava,
        &sam,
        "confirmed",
        Some(from_now(2_000)),
    )
    .await;
    put_booking(
        &server,
        &requested,
        &ava,
        &sam,
        "requested",
        Some(from_now(5_000)),
    )
    .await;
    put_booking(&server, &undated, &ava, &sam, "confirmed", None).await;
    let new_start = from_now(9_000);
    patch_booking(&server, &moved, json!({"starts_at": new_start})).await;
    patch_booking(&server, &cancelled, json!({"status": "cancelled"})).await;
    let stored = booking(&server, &moved).await;
    assert_eq!(stored["reminders"].as_array().unwrap().len(), 1, "{stored}");
    assert_eq!(stored["reminders"][0]["starts_at"], new_start, "{stored}");
    for id in [&cancelled, &too_soon, &requested, &undated] {
        let stored = booking(&server, id).await;
        assert_eq!(stored["reminders"], json!([]), "{stored}");
    }

    // The old time passes with nothing; the new one brings one reminder.
    tokio::time::sleep_until(started + Duration::from_millis(4_500)).await;
    assert!(reminders_of(&server, &ava).await.is_empty());
    let reminders = wait_for_reminders(&server, &ava, 1).await;
    assert!(
        started.elapsed() >= Duration::from_millis(5_500),
        "{:?}",
        started.elapsed()
    );
    assert!(reminders[0]["link"].as_str().unwrap().ends_with(&moved));
    assert_eq!(wait_for_reminders(&server, &sam, 1).await.len(), 1);
    fake.wait_for_emails_to(&ava.email(), 1, EMAIL_WAIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(reminders_of(&server, &ava).await.len(), 1);
    assert_eq!(fake.emails_to(&ava.email()).len(), 1);
    assert!(
        fake.emails_to(&sam.email()).is_empty(),
        "Sam turned reminder emails off"
    );
    fake.assert_no_violations();
}
