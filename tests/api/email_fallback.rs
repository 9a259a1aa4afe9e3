//! Stories of the email fallback: what a user has not read reaches them by
//! email through Resend (a fake on 127.0.0.1 that checks every request),
//! once, after the contract's delays, in one digest, and never about what
//! they read, turned off, or wrote themselves.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use uuid::Uuid;

use crate::fake_resend::{Email, FakeResend, Scripted};
use crate::helpers::{Backend, TestServer, TestUser, WsClient, INTERNAL_API_KEY};

both_backends!(
    offline_recipient_gets_one_digest,
    reading_in_time_cancels_the_email,
    online_but_unread_is_emailed_after_the_unread_delay,
    notifications_and_booking_updates_are_emailed_in_one_batch,
    rate_limited_send_waits_for_retry_after,
    server_errors_are_retried_until_accepted,
    permanent_failure_is_given_up_and_counted,
    requests_stay_within_resends_rate,
    hard_kill_after_ack_emails_exactly_once,
    a_long_conversation_is_emailed_in_parts_never_twice,
    hard_kill_between_two_messages_emails_both_once,
    hard_kill_after_an_email_repeats_nothing,
    crash_during_send_is_deduplicated_by_the_idempotency_key,
    unsubscribe_link_turns_that_kind_off,
    user_content_is_html_escaped,
    preferences_are_respected,
    user_without_address_is_skipped,
    embedded_default_writes_outbox_files,
    the_email_shows_messages_as_they_stand,
    confirmations_are_emailed_at_once_and_once,
);

const FROM: &str = "Mixroom <notify@mixroom.test>";
const APP: &str = "https://app.mixroom.test";
const API: &str = "https://rt.mixroom.test";
/// Budget for an expected email (delays here are 1 to 4 s).
const EMAIL_WAIT: Duration = Duration::from_secs(20);

/// Settings for a server that emails through `fake` after 1 s offline and
/// 30 s online, with `overrides` on top.
fn email_env(fake: &FakeResend, overrides: &[(&str, &str)]) -> Vec<(String, String)> {
    let base_url = fake.base_url();
    let mut env: Vec<(String, String)> = [
        ("MIXROOM__EMAIL__RESEND_API_KEY", "re_test_5xQ2fake"),
        ("MIXROOM__EMAIL__RESEND_BASE_URL", base_url.as_str()),
        ("MIXROOM__EMAIL__FROM", FROM),
        ("MIXROOM__EMAIL__OFFLINE_DELAY_SECS", "1"),
        ("MIXROOM__EMAIL__UNREAD_DELAY_SECS", "30"),
        ("MIXROOM__EMAIL__RETRY_BASE_MS", "300"),
        ("MIXROOM__EMAIL__APP_BASE_URL", APP),
        ("MIXROOM__EMAIL__API_BASE_URL", API),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (key, value) in overrides {
        env.retain(|(k, _)| k != key);
        env.push((key.to_string(), value.to_string()));
    }
    env
}

fn spawn(backend: &Backend, env: &[(String, String)]) -> TestServer {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    TestServer::spawn(backend, &env)
}

/// Ava (client) and Sam (studio owner), mirrored with addresses, and a
/// booking between them; Ava is connected to its room.
async fn ava_writes_to_sam(server: &TestServer) -> (TestUser, TestUser, String, WsClient) {
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let mut ava_ws = WsClient::connect_as(server, &ava).await;
    ava_ws.join(&room, None).await;
    (ava, sam, room, ava_ws)
}

/// `POST /v1/internal/notifications`; returns the notification's id.
async fn notify(
    server: &TestServer,
    user: &TestUser,
    kind: &str,
    title: &str,
    body: &str,
    link: Option<&str>,
) -> String {
    let response = server
        .http_client()
        .post(server.http("/v1/internal/notifications"))
        .bearer_auth(INTERNAL_API_KEY)
        .json(
            &json!({"user_id": user.id, "kind": kind, "title": title, "body": body, "link": link}),
        )
        .send()
        .await
        .expect("POST /v1/internal/notifications");
    assert_eq!(response.status(), 201, "creating a notification");
    let created: Value = response.json().await.unwrap();
    created["id"].as_str().unwrap().to_owned()
}

async fn preferences(server: &TestServer, user: &TestUser) -> Value {
    let response = server
        .http_client()
        .get(server.http("/v1/me/preferences"))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn put_preferences(server: &TestServer, user: &TestUser, body: Value) -> reqwest::Response {
    server
        .http_client()
        .put(server.http("/v1/me/preferences"))
        .bearer_auth(&user.token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// The value of one Prometheus sample, e.g. `mixroom_emails_sent_total`.
/// The link after `Stop emails about <label>: ` in the text part.
fn unsubscribe_url(email: &Email, label: &str) -> String {
    let prefix = format!("Stop emails about {label}: ");
    email
        .text
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{}", email.text))
        .to_owned()
}

/// Ava sends three messages to Sam, who is not connected: after the
/// offline delay Sam gets one email with all three; Ava, the sender, gets
/// nothing, and nothing is sent twice.
async fn offline_recipient_gets_one_digest(backend: Backend) {
    let fake = FakeResend::start();
    let server = spawn(&backend, &email_env(&fake, &[]));
    let (ava, sam, room, mut ava_ws) = ava_writes_to_sam(&server).await;
    let bodies = [
        "Take 1 is up",
        "Take 2 has the harmony",
        "Take 3 is the keeper",
    ];
    let started = Instant::now();
    for (n, body) in bodies.iter().enumerate() {
        ava_ws.send_msg(&room, &format!("take-{n}"), body).await;
    }
    // Ava goes offline too: were she a recipient of her own messages, her
    // offline delay would now run.
    ava_ws.disconnect().await;

    let emails = fake.wait_for_emails_to(&sam.email(), 1, EMAIL_WAIT).await;
    let email = &emails[0];
    assert!(
        email.at.duration_since(started) >= Duration::from_millis(900),
        "emailed before the offline delay: {:?}",
        email.at.duration_since(started)
    );
    assert_eq!(email.from, FROM);
    assert_eq!(email.to, vec![sam.email()]);
    assert_eq!(email.subject, "You have 3 unread updates on Mixroom");
    for body in bodies {
        assert!(
            email.text.contains(body),
            "{body} missing from {}",
            email.text
        );
        assert!(
            email.html.contains(body),
            "{body} missing from {}",
            email.html
        );
    }
    let booking_link = format!("{APP}/bookings/{}", room.trim_start_matches("booking:"));
    assert!(
        email.html.contains(&format!("href=\"{booking_link}\"")),
        "{}",
        email.html
    );
    assert!(email.text.contains(&booking_link));
    let unsubscribe = unsubscribe_url(email, "chat messages");
    assert_eq!(
        email.headers.get("List-Unsubscribe"),
        Some(&json!(format!("<{unsubscribe}>")))
    );

    // One more offline delay and a sweep: still exactly one email, none to Ava.
    fake.expect_no_more_emails(1, Instant::now() + Duration::from_secs(3))
        .await;
    assert!(fake.emails_to(&ava.email()).is_empty());
    fake.assert_no_violations();
}

/// Sam reads Ava's message on his socket and a notification over HTTP
/// before the delay: neither is emailed. A later notification is, alone.
async fn reading_in_time_cancels_the_email(backend: Backend) {
    let fake = FakeResend::start();
    let env = email_env(
        &fake,
        &[
            ("MIXROOM__EMAIL__OFFLINE_DELAY_SECS", "2"),
            ("MIXROOM__EMAIL__UNREAD_DELAY_SECS", "2"),
        ],
    );
    let server = spawn(&backend, &env);
    let (_ava, sam, room, mut ava_ws) = ava_writes_to_sam(&server).await;
    let mut sam_ws = WsClient::connect_as(&server, &sam).await;
    sam_ws.join(&room, None).await;

    let ack = ava_ws.send_msg(&room, "q1", "Are you free at noon?").await;
    let message = sam_ws.recv_type("message").await;
    assert_eq!(message["seq"], ack["seq"]);
    sam_ws
        .send_json(json!({"type": "read", "room": room, "seq": ack["seq"]}))
        .await;
    let invoice = notify(
        &server,
        &sam,
        "booking",
        "Invoice ready",
        "Invoice 42",
        None,
    )
    .await;
    let read = server
        .http_client()
        .post(server.http(&format!("/v1/notifications/{invoice}/read")))
        .bearer_auth(&sam.token)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);

    // Created after both were read: proves the earlier items were decided.
    notify(
        &server,
        &sam,
        "booking",
        "Session moved",
        "Now at 14:00",
        None,
    )
    .await;
    let emails = fake.wait_for_emails_to(&sam.email(), 1, EMAIL_WAIT).await;
    assert_eq!(emails[0].subject, "Session moved");
    for read_item in ["Are you free at noon?", "Invoice 42"] {
        assert!(!emails[0].text.contains(read_item), "{}", emails[0].text);
    }
    fake.expect_no_more_emails(1, Instant::now() + Duration::from_secs(3))
        .await;
    fake.assert_no_violations();
}

/// Sam is connected but does not read: no email at the offline delay (1 s),
/// one at the unread delay (4 s).
async fn online_but_unread_is_emailed_after_the_unread_delay(backend: Backend) {
    let fake = FakeResend::start();
    let env = email_env(&fake, &[("MIXROOM__EMAIL__UNREAD_DELAY_SECS", "4")]);
    let server = spawn(&backend, &env);
    let (_ava, sam, room, mut ava_ws) = ava_writes_to_sam(&server).await;
    let mut sam_ws = WsClient::connect_as(&server, &sam).await;
    sam_ws.ping().await;

    ava_ws.send_msg(&room, "m1", "Did you get the stems?").await;
    let acked = Instant::now();
    fake.expect_no_more_emails(0, acked + Duration::from_millis(3500))
        .await;
    let emails = fake.wait_for_emails_to(&sam.email(), 1, EMAIL_WAIT).await;
    let after = emails[0].at.duration_since(acked);
    assert!(
        after >= Duration::from_millis(3500),
        "emailed after {after:?}"
    );
    assert!(emails[0].text.contains("Did you get the stems?"));
    sam_ws.ping().await;
    fake.assert_no_violations();
}

/// A backend notification and a booking status change reach offline users
/// by email; the two status emails due together go in one batch request.
async fn notifications_and_booking_updates_are_emailed_in_one_batch(backend: Backend) {
    let fake = FakeResend::start();
    // No sweeps during the story: emails are sent when the notifier queues them.
    let env = email_env(&fake, &[("MIXROOM__EMAIL__SWEEP_INTERVAL_MS", "60000")]);
    let server = spawn(&backend, &env);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let booking_id = room.trim_start_matches("booking:").to_owned();

    notify(
        &server,
        &sam,
        "support",
        "Your ticket was answered",
        "We moved your session.",
        Some("/support/t1"),
    )
    .await;
    let emails = fake.wait_for_emails_to(&sam.email(), 1, EMAIL_WAIT).await;
    assert_eq!(emails[0].subject, "Your ticket was answered");
    assert!(emails[0].text.contains("We moved your session."));
    assert!(emails[0]
        .html
        .contains(&format!("href=\"{APP}/support/t1\"")));
    assert_eq!(emails[0].path, "/emails");

    server.put_booking(&booking_id, &ava, &[&sam], "paid").await;
    let to_sam = fake.wait_for_emails_to(&sam.email(), 2, EMAIL_WAIT).await;
    let to_ava = fake.wait_for_emails_to(&ava.email(), 1, EMAIL_WAIT).await;
    for email in [&to_sam[1], &to_ava[0]] {
        assert_eq!(email.subject, "Booking paid");
        assert!(
            email.text.contains("status changed from confirmed to paid"),
            "{}",
            email.text
        );
        assert!(email
            .html
            .contains(&format!("href=\"{APP}/bookings/{booking_id}\"")));
        assert_eq!(email.path, "/emails/batch", "due together, sent together");
    }
    assert_eq!(to_sam[1].idempotency_key, to_ava[0].idempotency_key);
    fake.expect_no_more_emails(3, Instant::now() + Duration::from_secs(2))
        .await;
    fake.assert_no_violations();
}

/// Resend answers the first request with 429 and `Retry-After: 2`: the same
/// request comes again no sooner, and the email is delivered once.
async fn rate_limited_send_waits_for_retry_after(backend: Backend) {
    let fake = FakeResend::start();
    fake.script(vec![Scripted::RateLimited {
        retry_after_secs: 2,
    }]);
    let server = spawn(&backend, &email_env(&fake, &[]));
    let (_ava, sam, room, mut ava_ws) = ava_writes_to_sam(&server).await;
    ava_ws.send_msg(&room, "m1", "Rate me").await;

    fake.wait_for_emails_to(&sam.email(), 1, EMAIL_WAIT).await;
    let requests = fake.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0].status, 429);
    assert_eq!(requests[1].status, 200);
    assert_eq!(requests[0].idempotency_key, requests[1].idempotency_key);
    let waited = requests[1].at.duration_since(requests[0].at);
    assert!(
        waited >= Duration::from_millis(1900),
        "retried after {waited:?}"
    );
    fake.expect_no_more_emails(1, Instant::now() + Duration::from_secs(2))
        .await;
    server
        .wait_for_metric(
            "mixroom_email_retries_total{reason=\"rate_limited\"}",
            1.0,
            EMAIL_WAIT,
        )
        .await;
    fake.assert_no_violations();
}

/// Two 500s, then success: three tries of the same request, spaced by the
/// backoff, one email.
async fn server_errors_are_retried_until_accepted(backend: Backend) {
    let fake = FakeResend::start();
    fake.script(vec![Scripted::ServerError, Scripted::ServerError]);
    let server = spawn(&backend, &email_env(&fake, &[]));
    let (_ava, sam, room, mut ava_ws) = ava_writes_to_sam(&server).await;
    ava_ws.send_msg(&room, "m1", "Retry me").await;

    let emails = fake.wait_for_emails_to(&sam.email(), 1, EMAIL_WAIT).await;
    assert!(emails[0].text.contains("Retry me"));
    let requests = fake.requests();
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![500, 500, 200]);
    assert!(requests
        .iter()
        .all(|r| r.idempotency_key == requests[0].idempotency_key));
    for pair in requests.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        // Backoff from 300 ms with jitter: at least half of it.
        assert!(gap >= Duration::from_millis(140), "retried after {gap:?}");
    }
    server
        .wait_for_metric(
            "mixroom_email_retries_total{reason=\"transient\"}",
            2.0,
            EMAIL_WAIT,
        )
        .await;
    server
        .wait_for_metric("mixroom_emails_sent_total", 1.0, EMAIL_WAIT)
        .await;
    fake.assert_no_violations();
}

/// With `max_attempts = 2`, two 500s give the email up: no third request,
/// and the failure is counted.
async fn permanent_failure_is_given_up_and_counted(backend: Backend) {
    let fake = FakeResend::start();
    fake.script(vec![Scripted::ServerError; 5]);
    let env = email_env(&fake, &[("MIXROOM__EMAIL__MAX_ATTEMPTS", "2")]);
    let server = spawn(&backend, &env);
    let (_ava, _sam, room, mut ava_ws) = ava_writes_to_sam(&server).await;
    ava_ws.send_msg(&room, "m1", "Doomed").await;

    server
        .wait_for_metric("mixroom_emails_failed_total", 1.0, EMAIL_WAIT)
        .await;
    // Several backoffs later, still two requests: no retry loop.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert_eq!(fake.requests().len(), 2, "{:?}", fake.requests());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(fake.emails().is_empty());
    fake.assert_no_violations();
}

/// Four emails fall due 150 ms apart: at Resend's default 2 requests per
/// second they go out at least 500 ms apart (some together in a batch).
async fn requests_stay_within_resends_rate(backend: Backend) {
    let fake = FakeResend::start();
    let server = spawn(&backend, &email_env(&fake, &[]));
    let users: Vec<TestUser> = ["Ana", "Bea", "Cem", "Dov"]
        .iter()
        .map(|name| TestUser::client(name))
        .collect();
    for user in &users {
        server.put_user(user).await;
    }
    for user in &users {
        notify(&server, user, "booking", "Reminder", "Tomorrow 10:00", None).await;
        // Paces the input so each email falls due on its own.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    for user in &users {
        fake.wait_for_emails_to(&user.email(), 1, EMAIL_WAIT).await;
    }
    let requests = fake.requests();
    assert!(requests.len() >= 2, "{requests:?}");
    for pair in requests.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(gap >= Duration::from_millis(450), "requests {gap:?} apart");
    }
    fake.assert_no_violations();
}

/// The server is killed with SIGKILL right after Ava's message is acked,
/// before its delay is over: after a restart Sam gets exactly one email.
async fn hard_kill_after_ack_emails_exactly_once(backend: Backend) {
    let fake = FakeResend::start();
    let mut server = spawn(&backend, &email_env(&fake, &[]));
    let (_ava, sam, room, mut ava_ws) = ava_writes_to_sam(&server).await;
    ava_ws
        .send_msg(&room, "m1", "Sent just before the crash")
        .await;
    server.kill_hard();
    drop(ava_ws);
    assert!(fake.emails().is_empty());
    server.restart();

    let emails = fake.wait_for_emails_to(&sam.email(), 1, EMAIL_WAIT).await;
    assert!(emails[0].text.contains("Sent just before the crash"));
    fake.expect_no_more_emails(1, Instant::now() + Duration::from_secs(3))
        .await;
    fake.assert_no_violations();
}

/// Ava writes 25 messages while Sam is away: one email shows the newest 20
/// and counts the 5 before them. Her next message comes in an email of its
/// own. Sam drops by and reads the first of her next three: the third
/// email has only the other two. No message is in two emails.
async fn a_long_conversation_is_emailed_in_parts_never_twice(backend: Backend) {
    let fake = FakeResend::start();
    let server = spawn(
        &backend,
        &email_env(&fake, &[("MIXROOM__EMAIL__OFFLINE_DELAY_SECS", "3")]),
    );
    let (_ava, sam, room, mut ava_ws) = ava_writes_to_sam(&server).await;
    let part = |n: u32| format!("Part {n:02} of the mix notes");
    let in_email = |email: &Email, n: u32| email.text.contains(&part(n));
    for n in 1..=25 {
        ava_ws.send_msg(&room, &format!("p{n}"), &part(n)).await;
    }
    let first = fake.wait_for_emails_to(&sam.email(), 1, EMAIL_WAIT).await[0].clone();
    for n in 1..=25 {
        assert_eq!(in_email(&first, n), n > 5, "part {n}: {}", first.text);
    }
    assert!(
        first.text.contains("5 earlier unread messages"),
        "{}",
        first.text
    );

    ava_ws.send_msg(&room, "p26", &part(26)).await;
    let second = fake.wait_for_emails_to(&sam.email(), 2, EMAIL_WAIT).await[1].clone();
    assert!(
        second.subject.starts_with("New message"),
        "{}",
        second.subject
    );
    for n in 1..=26 {
        assert_eq!(in_email(&second, n), n == 26, "part {n}: {}", second.text);
    }

    let read_up_to = ava_ws.send_msg(&room, "p27", &part(27)).await["seq"].clone();
    ava_ws.send_msg(&room, "p28", &part(28)).await;
    ava_ws.send_msg(&room, "p29", &part(29)).await;
    let mut sam_ws = WsClient::connect_as(&server, &sam).await;
    sam_ws.join(&room, None).await;
    sam_ws
        .send_json(json!({"type": "read", "room": room, "seq": read_up_to}))
        .await;
    // Ava sees the read: the session has handled it.
    let seen = ava_ws.recv_type("read").await;
    assert_eq!(seen["seq"], read_up_to);
    sam_ws.ping().await;
    sam_ws.disconnect().await;

    let third = fake.wait_for_emails_to(&sam.email(), 3, EMAIL_WAIT).await[2].clone();
    for n in 1..=29 {
        assert_eq!(in_email(&third, n), n >= 28, "part {n}: {}", third.text);
    }
    fake.expect_no_more_emails(3, Instant::now() + Duration::from_secs(4))
        .await;
    fake.assert_no_violations();
}

/// Ava's first message is already in Sam's stored range when the server is
/// killed right after her second is acked (before it joins the range):
/// after a restart one email has both, each once.
async fn hard_kill_between_two_messages_emails_both_once(backend: Backend) {
    let fake = FakeResend::start();
    let mut server = spawn(
        &backend,
        &email_env(&fake, &[("MIXROOM__EMAIL__OFFLINE_DELAY_SECS", "4")]),
    );
    let (_ava, sam, room, mut ava_ws) = ava_writes_to_sam(&server).await;
    ava_ws
        .send_msg(&room, "m1", "Stored well before the crash")
        .await;
    // The notifier stores what is unread every 400 ms here (a tenth of the
    // offline delay).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    ava_ws
        .send_msg(&room, "m2", "Sent just before the crash")
        .await;
    server.kill_hard();
    drop(ava_ws);
    server.restart();

    let emails = fake.wait_for_emails_to(&sam.email(), 1, EMAIL_WAIT).await;
    for body in ["Stored well before the crash", "Sent just before the crash"] {
        assert_eq!(
            emails[0].text.matches(body).count(),
            1,
            "{}",
            emails[0].text
        );
    }
    fake.expect_no_more_emails(1, Instant::now() + Duration::from_secs(5))
        .await;
    fake.assert_no_violations();
}

/// Sam was emailed Ava's first message; the server is killed right after
/// her second is acked: after a restart Sam's next email has only the
/// second.
async fn hard_kill_after_an_email_repeats_nothing(backend: Backend) {
    let fake = FakeResend::start();
    let mut server = spawn(&backend, &email_env(&fake, &[]));
    let (_ava, sam, room, mut ava_ws) = ava_writes_to_sam(&server).await;
    ava_ws
        .send_msg(&room, "m1", "Emailed before the crash")
        .await;
    let first = fake.wait_for_emails_to(&sam.email(), 1, EMAIL_WAIT).await;
    assert!(first[0].text.contains("Emailed before the crash"));
    ava_ws
        .send_msg(&room, "m2", "Sent just before the crash")
        .await;
    server.kill_hard();
    drop(ava_ws);
    server.restart();

    let emails = fake.wait_for_emails_to(&sam.email(), 2, EMAIL_WAIT).await;
    assert!(emails[1].text.contains("Sent just before the crash"));
    assert!(
        !emails[1].text.contains("Emailed before the crash"),
        "{}",
        emails[1].text
    );
    fake.expect_no_more_emails(2, Instant::now() + Duration::from_secs(3))
        .await;
    fake.assert_no_violations();
}

/// Resend has accepted the email but the server dies before it hears so:
/// after a restart the same request is sent again once the dead process's
/// lease is over, Resend recognises its Idempotency-Key, and Sam gets one
/// email; the new process records it as sent.
async fn crash_during_send_is_deduplicated_by_the_idempotency_key(backend: Backend) {
    let fake = FakeResend::start();
    fake.script(vec![Scripted::SlowAccept(Duration::from_secs(5))]);
    let env = email_env(&fake, &[("MIXROOM__EMAIL__REQUEST_TIMEOUT_SECS", "1")]);
    let mut server = spawn(&backend, &env);
    let (_ava, sam, room, mut ava_ws) = ava_writes_to_sam(&server).await;
    ava_ws
        .send_msg(&room, "m1", "Accepted, then the crash")
        .await;

    fake.wait_for_emails_to(&sam.email(), 1, EMAIL_WAIT).await;
    server.kill_hard();
    drop(ava_ws);
    server.restart();

    server
        .wait_for_metric("mixroom_emails_sent_total", 1.0, EMAIL_WAIT)
        .await;
    let requests = fake.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0].idempotency_key, requests[1].idempotency_key);
    assert!(
        requests[1].replayed,
        "the retry was a new request: {requests:?}"
    );
    fake.expect_no_more_emails(1, Instant::now() + Duration::from_secs(2))
        .await;
    fake.assert_no_violations();
}

/// The link in the email turns chat emails off without signing in; a
/// tampered link does nothing; other kinds still arrive.
async fn unsubscribe_link_turns_that_kind_off(backend: Backend) {
    let fake = FakeResend::start();
    let server = spawn(
        &backend,
        &email_env(&fake, &[("MIXROOM__LOG__LEVEL", "info")]),
    );
    let (_ava, sam, room, mut ava_ws) = ava_writes_to_sam(&server).await;
    ava_ws.send_msg(&room, "m1", "Mix v2 is ready").await;
    let emails = fake.wait_for_emails_to(&sam.email(), 1, EMAIL_WAIT).await;
    let link = unsubscribe_url(&emails[0], "chat messages");
    let token = link
        .strip_prefix(&format!("{API}/v1/unsubscribe?token="))
        .unwrap_or_else(|| panic!("unsubscribe link not under {API}: {link}"))
        .to_owned();

    let mut tampered = token.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == '0' { '1' } else { '0' });
    for bad in [
        tampered,
        token.replacen(".chat.", ".booking.", 1),
        "garbage".to_owned(),
    ] {
        let response = server
            .http_client()
            .get(server.http("/v1/unsubscribe"))
            .query(&[("token", bad.as_str())])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "token {bad}");
    }
    assert_eq!(preferences(&server, &sam).await["email"]["chat"], true);

    // Following the link (as a mail scanner does) only shows a page that
    // asks to confirm; it changes nothing.
    let response = server
        .http_client()
        .get(server.http("/v1/unsubscribe"))
        .query(&[("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let page = response.text().await.unwrap();
    assert!(
        page.contains("<form method=\"post\"") && page.contains("chat messages"),
        "{page}"
    );
    assert_eq!(preferences(&server, &sam).await["email"]["chat"], true);

    // The page's button posts back to the same URL: now it is off. (The
    // forwarded address is a client's claim: forwarding is not trusted.)
    let response = server
        .http_client()
        .post(server.http("/v1/unsubscribe"))
        .query(&[("token", token.as_str())])
        .header("X-Forwarded-For", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let page = response.text().await.unwrap();
    assert!(
        page.contains("unsubscribed") && page.contains("chat messages"),
        "{page}"
    );
    let stored = preferences(&server, &sam).await;
    assert_eq!(stored["email"]["chat"], false, "{stored}");
    assert_eq!(stored["email"]["booking"], true, "{stored}");

    // The one-click POST of mail providers (RFC 8058) answers too.
    let one_click = server
        .http_client()
        .post(server.http("/v1/unsubscribe"))
        .query(&[("token", token.as_str())])
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(one_click.status(), 200);
    // The token authorizes the change: the server's log never holds it.
    let logs = server.output();
    assert!(logs.contains("unsubscribed by link"), "{logs}");
    assert!(!logs.contains(&token), "{logs}");
    assert!(logs.contains("token=[redacted]"), "{logs}");
    assert!(logs.contains("http.client_ip=127.0.0.1"), "{logs}");
    assert!(!logs.contains("203.0.113.9"), "{logs}");

    ava_ws.send_msg(&room, "m2", "Mix v3 is ready").await;
    notify(
        &server,
        &sam,
        "booking",
        "Session confirmed",
        "See you Friday",
        None,
    )
    .await;
    let emails = fake.wait_for_emails_to(&sam.email(), 2, EMAIL_WAIT).await;
    assert_eq!(emails[1].subject, "Session confirmed");
    assert!(!emails[1].text.contains("Mix v3"), "{}", emails[1].text);
    fake.expect_no_more_emails(2, Instant::now() + Duration::from_secs(2))
        .await;
    fake.assert_no_violations();
}

/// Markup in a chat body, a booking title and a notification reaches the
/// HTML part only escaped, and a `javascript:` link not at all.
async fn user_content_is_html_escaped(backend: Backend) {
    let fake = FakeResend::start();
    let server = spawn(&backend, &email_env(&fake, &[]));
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    server.put_user(&ava).await;
    server.put_user(&sam).await;
    let booking_id = Uuid::new_v4().to_string();
    let response = server
        .http_client()
        .put(server.http(&format!("/v1/internal/bookings/{booking_id}")))
        .bearer_auth(INTERNAL_API_KEY)
        .json(&json!({
            "client_id": ava.id,
            "provider_ids": [sam.id],
            "status": "confirmed",
            "title": "<i>Mix & Master</i>",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let room = format!("booking:{booking_id}");
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&room, None).await;

    let body = "<script>alert(\"pwned\")</script> & <b>not bold</b>";
    ava_ws.send_msg(&room, "m1", body).await;
    notify(
        &server,
        &sam,
        "booking",
        "\"><img src=x onerror=alert(1)>",
        "<iframe src=\"https://evil.example\"></iframe>",
        Some("javascript:alert(1)"),
    )
    .await;

    let emails = fake.wait_for_emails_to(&sam.email(), 1, EMAIL_WAIT).await;
    let html = &emails[0].html;
    for raw in [
        "<script",
        "<b>not",
        "<i>Mix",
        "<img",
        "<iframe",
        "javascript:",
    ] {
        assert!(!html.contains(raw), "`{raw}` reached the HTML:\n{html}");
    }
    assert!(
        html.contains(
            "&lt;script&gt;alert(\"pwned\")&lt;/script&gt; &amp; &lt;b&gt;not bold&lt;/b&gt;"
        ),
        "{html}"
    );
    assert!(
        html.contains("&lt;i&gt;Mix &amp; Master&lt;/i&gt;"),
        "{html}"
    );
    assert!(
        html.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{html}"
    );
    // The text part is plain text: shown as written.
    assert!(emails[0].text.contains(body), "{}", emails[0].text);
    fake.assert_no_violations();
}

/// Preferences are read, validated and obeyed: chat off means no chat
/// email; marketing is off until turned on.
async fn preferences_are_respected(backend: Backend) {
    let fake = FakeResend::start();
    let server = spawn(&backend, &email_env(&fake, &[]));
    let (_ava, sam, room, mut ava_ws) = ava_writes_to_sam(&server).await;

    let defaults = preferences(&server, &sam).await;
    assert_eq!(
        defaults["email"],
        json!({"chat": true, "booking": true, "support": true, "marketing": false, "reminder": true})
    );
    assert_eq!(defaults["chat_delay_secs"], Value::Null);
    // A material change is told to everyone: not a switch.
    let policy = put_preferences(&server, &sam, json!({"email": {"policy": false}})).await;
    assert_eq!(policy.status(), 422);
    let refusal: Value = policy.json().await.unwrap();
    assert!(
        refusal["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot be turned off"),
        "{refusal}"
    );
    assert_eq!(defaults["defaults"]["offline_delay_secs"], 1);
    assert_eq!(defaults["defaults"]["unread_delay_secs"], 30);

    for bad in [
        json!({"email": {"gossip": true}}),
        json!({"chat_delay_secs": -1}),
        json!({"email": {"chat": "no"}}),
        json!({"surprise": 1}),
    ] {
        let response = put_preferences(&server, &sam, bad.clone()).await;
        assert_eq!(response.status(), 422, "{bad}");
    }
    let anonymous = server
        .http_client()
        .get(server.http("/v1/me/preferences"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    let response = put_preferences(
        &server,
        &sam,
        json!({"email": {"chat": false}, "chat_delay_secs": 120}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let changed: Value = response.json().await.unwrap();
    assert_eq!(changed["email"]["chat"], false, "{changed}");
    assert_eq!(changed["chat_delay_secs"], 120, "{changed}");
    assert_eq!(preferences(&server, &sam).await, changed);

    ava_ws
        .send_msg(&room, "m1", "Chat nobody should email")
        .await;
    notify(
        &server,
        &sam,
        "marketing",
        "Winter sale",
        "Studio time -20%",
        None,
    )
    .await;
    notify(
        &server,
        &sam,
        "booking",
        "Session confirmed",
        "Friday 10:00",
        None,
    )
    .await;
    let emails = fake.wait_for_emails_to(&sam.email(), 1, EMAIL_WAIT).await;
    assert_eq!(emails[0].subject, "Session confirmed");
    for unwanted in ["Chat nobody should email", "Winter sale"] {
        assert!(!emails[0].text.contains(unwanted), "{}", emails[0].text);
    }

    let response = put_preferences(
        &server,
        &sam,
        json!({"email": {"marketing": true}, "chat_delay_secs": null}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let changed: Value = response.json().await.unwrap();
    assert_eq!(changed["email"]["marketing"], true);
    assert_eq!(
        changed["email"]["chat"], false,
        "other kinds are kept: {changed}"
    );
    assert_eq!(changed["chat_delay_secs"], Value::Null);
    notify(
        &server,
        &sam,
        "marketing",
        "Spring sale",
        "Studio time -10%",
        None,
    )
    .await;
    let emails = fake.wait_for_emails_to(&sam.email(), 2, EMAIL_WAIT).await;
    assert_eq!(emails[1].subject, "Spring sale");
    fake.expect_no_more_emails(2, Instant::now() + Duration::from_secs(2))
        .await;
    fake.assert_no_violations();
}

/// Sam has no address in the mirror (and never signs in): his item is
/// dropped and counted, once; Eli in the same booking is emailed.
async fn user_without_address_is_skipped(backend: Backend) {
    let fake = FakeResend::start();
    let server = spawn(&backend, &email_env(&fake, &[]));
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let eli = TestUser::engineer("Eli");
    server.put_user(&ava).await;
    server.put_user(&eli).await;
    let response = server
        .http_client()
        .put(server.http(&format!("/v1/internal/users/{}", sam.id)))
        .bearer_auth(INTERNAL_API_KEY)
        .json(&json!({"email": null, "name": "Sam", "role": "studio_owner"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let booking_id = Uuid::new_v4().to_string();
    server
        .put_booking(&booking_id, &ava, &[&sam, &eli], "confirmed")
        .await;
    let room = format!("booking:{booking_id}");
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&room, None).await;
    ava_ws.send_msg(&room, "m1", "Hello both").await;

    let emails = fake.wait_for_emails_to(&eli.email(), 1, EMAIL_WAIT).await;
    assert!(emails[0].text.contains("Hello both"));
    server
        .wait_for_metric(
            "mixroom_email_items_dropped_total{reason=\"no_address\"}",
            1.0,
            EMAIL_WAIT,
        )
        .await;
    fake.expect_no_more_emails(1, Instant::now() + Duration::from_secs(2))
        .await;
    assert_eq!(
        server
            .metric("mixroom_email_items_dropped_total{reason=\"no_address\"}")
            .await,
        1.0,
        "decided once, not retried"
    );
    fake.assert_no_violations();
}

/// Without an API key nothing is sent: each email is written as an `.eml`
/// file into `email.outbox_dir`, with both parts.
async fn embedded_default_writes_outbox_files(backend: Backend) {
    let dir: PathBuf = std::env::temp_dir().join(format!("mixroom-outbox-{}", Uuid::new_v4()));
    let dir_text = dir.display().to_string();
    let env: Vec<(String, String)> = [
        ("MIXROOM__EMAIL__OUTBOX_DIR", dir_text.as_str()),
        ("MIXROOM__EMAIL__OFFLINE_DELAY_SECS", "1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let server = spawn(&backend, &env);
    let (_ava, sam, room, mut ava_ws) = ava_writes_to_sam(&server).await;
    ava_ws
        .send_msg(&room, "m1", "<hello> from the outbox")
        .await;

    let deadline = Instant::now() + EMAIL_WAIT;
    let files = loop {
        let files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                    .collect()
            })
            .unwrap_or_default();
        if !files.is_empty() || Instant::now() > deadline {
            break files;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(files.len(), 1, "outbox files: {files:?}");
    let written = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        written.contains(&format!("To: {}\r\n", sam.email())),
        "{written}"
    );
    assert!(
        written.contains("Subject: New message: Ava · Session\r\n"),
        "{written}"
    );
    assert!(written.contains("Content-Type: text/plain; charset=utf-8"));
    assert!(written.contains("Content-Type: text/html; charset=utf-8"));
    assert!(
        written.contains("<hello> from the outbox"),
        "text part: {written}"
    );
    assert!(
        written.contains("&lt;hello&gt; from the outbox"),
        "html part: {written}"
    );
    server
        .wait_for_metric("mixroom_emails_sent_total", 1.0, EMAIL_WAIT)
        .await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Before Sam's email goes out, Ava fixes one message and takes another
/// back: the email shows the fixed text, never the deleted one, and names
/// the file she shared. A conversation whose every message was taken back
/// is not emailed at all.
async fn the_email_shows_messages_as_they_stand(backend: Backend) {
    let fake = FakeResend::start();
    let server = spawn(
        &backend,
        &email_env(&fake, &[("MIXROOM__EMAIL__OFFLINE_DELAY_SECS", "3")]),
    );
    let (ava, sam, room, mut ava_ws) = ava_writes_to_sam(&server).await;
    ava_ws
        .send_msg(&room, "a-1", "Session moved to Fridya")
        .await;
    ava_ws
        .send_msg(&room, "a-2", "My home address is 1 Secret Lane")
        .await;
    ava_ws
        .send_json(json!({
            "type": "send", "room": room, "client_id": "a-3", "ref": "a-3",
            "body": "Reference track",
            "attachments": [{"url": "https://abcd.supabase.co/storage/v1/object/sign/ref.mp3?token=t",
                             "name": "reference-track.mp3", "size": 4_000_000,
                             "content_type": "audio/mpeg"}],
        }))
        .await;
    ava_ws.wait_ack("a-3").await;
    let edited = ava_ws
        .request(
            json!({"type": "edit", "room": room, "seq": 1, "body": "Session moved to Friday"}),
            "ack",
        )
        .await;
    assert_eq!(edited["type"], "ack", "{edited}");
    let deleted = ava_ws
        .request(json!({"type": "delete", "room": room, "seq": 2}), "ack")
        .await;
    assert_eq!(deleted["type"], "ack", "{deleted}");

    let emails = fake.wait_for_emails_to(&sam.email(), 1, EMAIL_WAIT).await;
    let email = &emails[0];
    assert_eq!(
        email.subject, "You have 2 unread updates on Mixroom",
        "{}",
        email.text
    );
    assert!(
        email.text.contains("Session moved to Friday"),
        "{}",
        email.text
    );
    assert!(!email.text.contains("Fridya"), "{}", email.text);
    assert!(!email.text.contains("Secret Lane"), "{}", email.text);
    assert!(!email.html.contains("Secret Lane"), "{}", email.html);
    assert!(email.text.contains("reference-track.mp3"), "{}", email.text);
    assert!(
        !email.text.contains("supabase.co"),
        "links stay in the app: {}",
        email.text
    );

    // Taken back before the delay: nothing to tell Ava about.
    let mut sam_ws = WsClient::connect_as(&server, &sam).await;
    sam_ws.join(&room, None).await;
    sam_ws.send_msg(&room, "s-1", "Wrong booking, sorry").await;
    sam_ws.send_msg(&room, "s-2", "Ignore that").await;
    sam_ws.disconnect().await;
    ava_ws.disconnect().await;
    let mut sam_ws = WsClient::connect_as(&server, &sam).await;
    for seq in [6, 7] {
        let gone = sam_ws
            .request(json!({"type": "delete", "room": room, "seq": seq}), "ack")
            .await;
        assert_eq!(gone["type"], "ack", "{gone}");
    }
    sam_ws.disconnect().await;
    fake.expect_no_more_emails(1, Instant::now() + Duration::from_secs(6))
        .await;
    assert!(fake.emails_to(&ava.email()).is_empty());
    fake.assert_no_violations();
}

/// The status of a booking, moved the way the backend moves it.
async fn patch_status(server: &TestServer, booking_id: &str, status: &str) {
    let response = server
        .http_client()
        .patch(server.http(&format!("/v1/internal/bookings/{booking_id}")))
        .bearer_auth(INTERNAL_API_KEY)
        .json(&json!({ "status": status }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "PATCH status {status}");
}

/// Ava's booking with Sam is confirmed, then paid: each of them gets each
/// confirmation by email at once, though both are online and the chat
/// delays are long, though Sam already read it in the app, and in an email
/// of its own. Other changes wait for the usual delays; the same status
/// sent again is no change and emails nothing.
async fn confirmations_are_emailed_at_once_and_once(backend: Backend) {
    let fake = FakeResend::start();
    let env = email_env(
        &fake,
        &[
            ("MIXROOM__EMAIL__OFFLINE_DELAY_SECS", "60"),
            ("MIXROOM__EMAIL__UNREAD_DELAY_SECS", "120"),
        ],
    );
    let server = spawn(&backend, &env);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    server.put_user(&ava).await;
    server.put_user(&sam).await;
    let booking_id = Uuid::new_v4().to_string();
    server
        .put_booking(&booking_id, &ava, &[&sam], "requested")
        .await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    let mut sam_ws = WsClient::connect_as(&server, &sam).await;
    let room = format!("booking:{booking_id}");
    ava_ws.join(&room, None).await;
    ava_ws.send_msg(&room, "a-1", "Looking forward to it").await;

    let started = Instant::now();
    patch_status(&server, &booking_id, "confirmed").await;
    sam_ws.recv_type("notification").await;
    let read_all = server
        .http_client()
        .post(server.http("/v1/notifications/read-all"))
        .bearer_auth(&sam.token)
        .send()
        .await
        .unwrap();
    assert_eq!(read_all.status(), 200);
    for user in [&ava, &sam] {
        let emails = fake.wait_for_emails_to(&user.email(), 1, EMAIL_WAIT).await;
        let email = &emails[0];
        assert_eq!(email.subject, "Booking confirmed", "{}", email.text);
        assert!(
            email
                .text
                .contains("status changed from requested to confirmed"),
            "{}",
            email.text
        );
        assert!(
            !email.text.contains("Looking forward"),
            "a confirmation is not a digest: {}",
            email.text
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "not held for the delays: {:?}",
        started.elapsed()
    );

    // Not a confirmation: waits. The same status again: no change.
    patch_status(&server, &booking_id, "in_session").await;
    patch_status(&server, &booking_id, "in_session").await;
    fake.expect_no_more_emails(2, Instant::now() + Duration::from_secs(3))
        .await;
    patch_status(&server, &booking_id, "paid").await;
    for user in [&ava, &sam] {
        let emails = fake.wait_for_emails_to(&user.email(), 2, EMAIL_WAIT).await;
        assert_eq!(emails[1].subject, "Booking paid", "{}", emails[1].text);
    }
    fake.expect_no_more_emails(4, Instant::now() + Duration::from_secs(3))
        .await;
    fake.assert_no_violations();
}
