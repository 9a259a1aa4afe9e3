//! Stories of announcements: the backend tells every user (or every user
//! of a role) something at once; each is notified in the app and emailed
//! once as their preferences allow, while chat emails keep flowing.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;
use uuid::Uuid;

use crate::fake_resend::FakeResend;
use crate::helpers::{Backend, TestServer, TestUser, WsClient, INTERNAL_API_KEY};

both_backends!(
    a_policy_change_reaches_every_user_once_without_holding_up_chat_email,
    marketing_reaches_only_those_who_opted_in,
    announcement_requests_are_checked,
);

/// Users mirrored besides the story's own.
const CROWD: usize = 3000;
/// Every tenth of the crowd has no address.
const WITHOUT_ADDRESS_EVERY: usize = 10;

fn env(fake: &FakeResend, rate_per_sec: &str) -> Vec<(String, String)> {
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
        ("MIXROOM__EMAIL__OFFLINE_DELAY_SECS", "1".to_owned()),
        ("MIXROOM__EMAIL__UNREAD_DELAY_SECS", "30".to_owned()),
        ("MIXROOM__EMAIL__RATE_PER_SEC", rate_per_sec.to_owned()),
        ("MIXROOM__EMAIL__SWEEP_INTERVAL_MS", "500".to_owned()),
        ("MIXROOM__LIMITS__INTERNAL_PER_SEC", "1000".to_owned()),
        ("MIXROOM__LIMITS__INTERNAL_BURST", "1000".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

fn spawn(backend: &Backend, env: &[(String, String)]) -> TestServer {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    TestServer::spawn(backend, &env)
}

/// Mirrors `count` users in backfill batches, half clients and half
/// engineers, every tenth without an address; returns (id, email, role).
async fn mirror_crowd(server: &TestServer, count: usize) -> Vec<(String, Option<String>, &str)> {
    let crowd: Vec<(String, Option<String>, &str)> = (0..count)
        .map(|n| {
            let id = format!("00000000-0000-4000-8000-{n:012}");
            let email = (n % WITHOUT_ADDRESS_EVERY != 0).then(|| format!("crowd-{n}@crowd.test"));
            let role = if n % 2 == 0 { "client" } else { "engineer" };
            (id, email, role)
        })
        .collect();
    for batch in crowd.chunks(500) {
        let users: Vec<Value> = batch
            .iter()
            .map(|(id, email, role)| json!({"id": id, "email": email, "name": id, "role": role}))
            .collect();
        let response = server
            .http_client()
            .put(server.http("/v1/internal/users"))
            .bearer_auth(INTERNAL_API_KEY)
            .json(&json!({ "users": users }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    }
    crowd
}

async fn announce(server: &TestServer, body: &Value) -> (u16, Value) {
    let response = server
        .http_client()
        .post(server.http("/v1/internal/announcements"))
        .bearer_auth(INTERNAL_API_KEY)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn progress(server: &TestServer, id: &str) -> Value {
    let response = server
        .http_client()
        .get(server.http(&format!("/v1/internal/announcements/{id}")))
        .bearer_auth(INTERNAL_API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Polls the progress until every queued email is sent.
async fn wait_until_emailed(server: &TestServer, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let now = progress(server, id).await;
        if now["state"] == "done" && now["emailed"] == now["email_queued"] {
            return now;
        }
        assert!(Instant::now() < deadline, "not done in time: {now}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The terms change: every one of 3,002 users is told in the app (Ava,
/// online, at once) and everyone with an address is emailed once, in
/// batches, within Resend's rate. Ava writes to Sam (offline) meanwhile:
/// his chat email goes out after its 1 s delay while the announcement's
/// emails are still being sent, not after them. Asking again changes
/// nothing; another announcement under the same id is refused.
async fn a_policy_change_reaches_every_user_once_without_holding_up_chat_email(backend: Backend) {
    let fake = FakeResend::start();
    // 2,702 addressed users in batches of 100 at Resend's 2 requests a
    // second (which the fake holds us to): about fourteen seconds of sending.
    let server = spawn(&backend, &env(&fake, "2"));
    let crowd = mirror_crowd(&server, CROWD).await;
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    server.put_user(&ava).await;
    server.put_user(&sam).await;
    let room = server.open_booking(&ava, &[&sam]).await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&room, None).await;

    let id = format!("terms-{}", Uuid::new_v4());
    let request = json!({
        "id": id,
        "title": "We updated our Terms of Service",
        "body": "From 1 January 2027 the cancellation window is 48 hours.",
        "link": "/legal/terms",
        "kind": "policy",
        "audience": "all",
    });
    let (status, created) = announce(&server, &request).await;
    assert_eq!(status, 202, "{created}");
    assert_eq!(created["users"], CROWD + 2, "{created}");
    assert_eq!(created["state"], "running", "{created}");
    let frame = ava_ws
        .recv_matching("the announcement", |f| {
            f["type"] == "notification" && f["kind"] == "policy"
        })
        .await;
    assert_eq!(frame["title"], "We updated our Terms of Service");

    // Queued with the announcement under way.
    ava_ws.send_msg(&room, "a-1", "See you Friday").await;
    let written = std::time::Instant::now();
    let chat = fake
        .wait_for_emails_to(&sam.email(), 2, Duration::from_secs(30))
        .await;
    let chat_email = chat
        .iter()
        .find(|e| e.text.contains("See you Friday"))
        .expect("Sam's chat email");
    let chat_latency = chat_email.at - written;
    let bulk_before_chat = fake
        .emails()
        .iter()
        .filter(|e| e.to[0].ends_with("@crowd.test") && e.at <= chat_email.at)
        .count();
    eprintln!(
        "chat email {chat_latency:?} after its message, with {bulk_before_chat} of {} \
         announcement emails sent before it",
        CROWD - CROWD / WITHOUT_ADDRESS_EVERY
    );
    assert!(
        bulk_before_chat < CROWD - CROWD / WITHOUT_ADDRESS_EVERY,
        "the chat email waited for the whole announcement"
    );
    assert!(chat_latency < Duration::from_secs(6), "{chat_latency:?}");

    let (status, again) = announce(&server, &request).await;
    assert_eq!(status, 200, "{again}");
    let mut other = request.clone();
    other["body"] = json!("Something else");
    let (status, refused) = announce(&server, &other).await;
    assert_eq!(status, 409, "{refused}");

    let done = wait_until_emailed(&server, &id, Duration::from_secs(60)).await;
    let addressed = CROWD - CROWD / WITHOUT_ADDRESS_EVERY + 2;
    assert_eq!(done["notified"], CROWD + 2, "{done}");
    assert_eq!(done["email_queued"], addressed, "{done}");
    assert_eq!(done["failed"], 0, "{done}");
    assert!(done["completed_at"].is_string(), "{done}");

    let emails = fake.emails();
    let announcement_emails: Vec<_> = emails
        .iter()
        .filter(|e| e.subject == "We updated our Terms of Service")
        .collect();
    assert_eq!(announcement_emails.len(), addressed);
    let mut recipients: Vec<&str> = announcement_emails
        .iter()
        .map(|e| e.to[0].as_str())
        .collect();
    recipients.sort_unstable();
    recipients.dedup();
    assert_eq!(recipients.len(), addressed, "one email each");
    let policy = announcement_emails[0];
    assert!(policy.text.contains("/legal/terms"), "{}", policy.text);
    assert!(
        !policy.text.contains("Stop emails about"),
        "a material change has no unsubscribe link: {}",
        policy.text
    );
    assert!(policy.headers.get("List-Unsubscribe").is_none());
    let (_, Some(address), _) = &crowd[1] else {
        unreachable!("every tenth has no address")
    };
    assert_eq!(fake.emails_to(address).len(), 1);
    assert!(fake.emails_to("crowd-0@crowd.test").is_empty());
    fake.assert_no_violations();
}

/// Engineers hear of a new feature; only those who opted in to marketing
/// are emailed; clients hear nothing.
async fn marketing_reaches_only_those_who_opted_in(backend: Backend) {
    let fake = FakeResend::start();
    let server = spawn(&backend, &env(&fake, "2"));
    let crowd = mirror_crowd(&server, 400).await;
    let eli = TestUser::engineer("Eli");
    let ava = TestUser::client("Ava");
    server.put_user(&eli).await;
    server.put_user(&ava).await;
    let response = server
        .http_client()
        .put(server.http("/v1/me/preferences"))
        .bearer_auth(&eli.token)
        .json(&json!({"email": {"marketing": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let id = format!("feature-{}", Uuid::new_v4());
    let (status, created) = announce(
        &server,
        &json!({
            "id": id,
            "title": "Stem exports are here",
            "body": "Send your engineer every track at once.",
            "kind": "marketing",
            "audience": {"role": "engineer"},
        }),
    )
    .await;
    assert_eq!(status, 202, "{created}");
    let engineers = crowd.iter().filter(|(_, _, r)| *r == "engineer").count() + 1;
    assert_eq!(created["users"], engineers, "{created}");
    let done = wait_until_emailed(&server, &id, Duration::from_secs(30)).await;
    assert_eq!(done["notified"], engineers, "{done}");
    assert_eq!(done["email_queued"], 1, "only Eli opted in: {done}");
    let emails = fake
        .wait_for_emails_to(&eli.email(), 1, Duration::from_secs(10))
        .await;
    assert!(
        emails[0].text.contains("Stop emails about news and offers"),
        "{}",
        emails[0].text
    );
    assert_eq!(fake.emails().len(), 1);
    let ava_inbox = server.get_as(&ava, "/v1/notifications").await;
    assert_eq!(ava_inbox["notifications"], json!([]), "{ava_inbox}");
    let eli_inbox = server.get_as(&eli, "/v1/notifications").await;
    assert_eq!(eli_inbox["notifications"][0]["kind"], "marketing");
    fake.assert_no_violations();
}

/// Bad requests get clear 422s; an unknown id is 404; only the backend
/// may announce.
async fn announcement_requests_are_checked(backend: Backend) {
    let fake = FakeResend::start();
    let server = spawn(&backend, &env(&fake, "2"));
    let good = json!({
        "id": "a-1", "title": "T", "body": "B", "kind": "policy", "audience": "all",
    });
    for (field, value, says) in [
        ("kind", json!("newsletter"), "unknown kind"),
        ("audience", json!("everyone"), "audience"),
        ("audience", json!({"role": "pirate"}), "unknown role"),
        ("title", json!(""), "title"),
        ("link", json!("javascript:alert(1)"), "link"),
        ("id", json!("has space"), "announcement id"),
    ] {
        let mut body = good.clone();
        body[field] = value;
        let (status, error) = announce(&server, &body).await;
        let expected = if field == "id" { 400 } else { 422 };
        assert_eq!(status, expected, "{field}: {error}");
        assert!(
            error["error"]["message"].as_str().unwrap().contains(says),
            "{field}: {error}"
        );
    }
    let missing = server
        .http_client()
        .get(server.http("/v1/internal/announcements/nope"))
        .bearer_auth(INTERNAL_API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let user = TestUser::admin("Ada");
    let forbidden = server
        .http_client()
        .post(server.http("/v1/internal/announcements"))
        .bearer_auth(&user.token)
        .json(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), 401);
}
