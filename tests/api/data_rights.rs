//! The privacy policy's data rights as stories: Ava downloads everything
//! stored about her, then erases her account; the booking record stays.

use serde_json::{json, Value};

use crate::fake_anthropic::{text_answer, FakeAnthropic};
use crate::helpers::{Backend, TestServer, TestUser, WsClient, INTERNAL_API_KEY};

both_backends!(
    export_holds_everything_about_the_caller,
    export_names_email_items_token_usage_and_takeovers,
    erasure_keeps_booking_records_only,
    erasure_stays_done_on_every_route,
    retention_deletes_old_support_logs,
);

async fn export(server: &TestServer, user: &TestUser) -> Value {
    server.export(user).await
}

/// No member of a `joined` frame goes by `name` any more.
fn assert_no_member_named(joined: &Value, name: &str) {
    assert!(
        joined["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["name"] != name),
        "{joined}"
    );
}

async fn pay(server: &TestServer, booking_id: &str, client: &TestUser, provider: &TestUser) {
    let response = server
        .http_client()
        .put(server.http(&format!("/v1/internal/bookings/{booking_id}")))
        .bearer_auth(INTERNAL_API_KEY)
        .json(&json!({
            "client_id": client.id, "provider_ids": [provider.id], "status": "paid", "title": "Mix",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// Ava and Sam chat, the booking is paid, Ava reads and asks support a
/// question: her export holds her profile, her bookings with their status
/// history, what she wrote, her read cursor, her notifications and her
/// support conversation — and nothing Sam wrote.
async fn export_holds_everything_about_the_caller(backend: Backend) {
    let server = TestServer::spawn(&backend, &[]);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let booking_id = room.trim_start_matches("booking:").to_owned();
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&room, None).await;
    let mut sam_ws = WsClient::connect_as(&server, &sam).await;
    sam_ws.join(&room, None).await;
    ava_ws
        .send_msg(&room, "a1", "Can we book the big room?")
        .await;
    sam_ws.send_msg(&room, "s1", "Yes, it is yours.").await;
    pay(&server, &booking_id, &ava, &sam).await;
    ava_ws
        .send_json(json!({"type": "read", "room": room, "seq": 2}))
        .await;

    let support_room = server.open_support_conversation(&ava).await;
    ava_ws.join(&support_room, None).await;
    ava_ws
        .send_msg(&support_room, "q1", "How do I cancel a booking?")
        .await;
    let answer = ava_ws
        .recv_matching("the agent's answer", |f| {
            f["type"] == "message"
                && f["room"] == support_room.as_str()
                && f["sender"]["role"] == "agent"
        })
        .await;
    ava_ws.ping().await; // the read cursor is stored by now

    let document = export(&server, &ava).await;
    assert_eq!(document["user_id"], ava.id.as_str());
    assert_eq!(
        document["profile"]["email"],
        ava.email().as_str(),
        "{document}"
    );
    assert_eq!(document["profile"]["name"], "Ava");
    let bookings = document["bookings"].as_array().unwrap();
    assert_eq!(bookings.len(), 1, "{document}");
    assert_eq!(bookings[0]["booking"]["status"], "paid");
    let history: Vec<&str> = bookings[0]["status_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"].as_str().unwrap())
        .collect();
    assert_eq!(history, vec!["confirmed", "paid"]);
    let bodies: Vec<&str> = document["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert!(bodies.contains(&"Can we book the big room?"), "{bodies:?}");
    assert!(
        !bodies.contains(&"Yes, it is yours."),
        "Sam's words are not Ava's data"
    );
    assert_eq!(document["read_cursors"][0]["seq"], 2, "{document}");
    assert_eq!(
        document["notifications"].as_array().unwrap().len(),
        1,
        "{document}"
    );
    let conversation = &document["support_conversations"][0];
    let turns: Vec<&str> = conversation["turns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["body"].as_str().unwrap())
        .collect();
    assert!(turns.contains(&"How do I cancel a booking?"), "{turns:?}");
    assert!(
        turns.contains(&answer["body"].as_str().unwrap()),
        "{turns:?}"
    );

    let anonymous = server
        .http_client()
        .get(server.http("/v1/me/export"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

/// Ava erases her data: her open socket is closed, what she wrote reads
/// `[deleted]` everywhere, her name and address are gone (an old token does
/// not bring them back), her inbox is empty — and the booking's status
/// history is still there for the legal retention period.
async fn erasure_keeps_booking_records_only(backend: Backend) {
    let server = TestServer::spawn(&backend, &[]);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let booking_id = room.trim_start_matches("booking:").to_owned();
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&room, None).await;
    ava_ws.send_msg(&room, "a1", "My phone is 555-0100").await;
    let mut sam_ws = WsClient::connect_as(&server, &sam).await;
    sam_ws.join(&room, None).await;
    sam_ws.send_msg(&room, "s1", "Noted.").await;
    pay(&server, &booking_id, &ava, &sam).await;

    let response = server
        .http_client()
        .delete(server.http("/v1/me"))
        .bearer_auth(&ava.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (code, _) = ava_ws.expect_close().await;
    assert_eq!(code, 4001, "Ava's live session ends with her data");

    let history = server.history_over_http(&sam, &room, None, None).await;
    let messages = history["messages"].as_array().unwrap();
    let ava_message = messages.iter().find(|m| m["client_id"] == "a1").unwrap();
    assert_eq!(ava_message["body"], "[deleted]", "{ava_message}");
    assert_ne!(ava_message["sender"]["name"], "Ava");
    let sam_message = messages.iter().find(|m| m["client_id"] == "s1").unwrap();
    assert_eq!(sam_message["body"], "Noted.", "Sam's words are his");
    assert!(
        messages
            .iter()
            .all(|m| !m["body"].as_str().unwrap().contains("555-0100")),
        "{history}"
    );

    let document = export(&server, &ava).await;
    assert!(document["profile"]["name"].is_null(), "{document}");
    assert!(document["profile"]["email"].is_null(), "{document}");
    assert!(document["profile"]["erased_at"].is_string(), "{document}");
    assert_eq!(document["notifications"].as_array().unwrap().len(), 0);
    let joined = sam_ws.join(&room, None).await;
    assert_no_member_named(&joined, "Ava");

    // The booking record and its status history stay.
    let statuses: Vec<String> = export(&server, &sam).await["bookings"][0]["status_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses, vec!["confirmed", "paid"]);
    assert_eq!(
        document["bookings"][0]["status_history"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

/// Ava erased her data but her token has not expired yet. Nothing she or
/// the backend does afterwards writes her name or address back: her socket
/// is refused, opening a support conversation is refused, the backend's
/// profile mirror is refused with 410, and her export stays empty of both.
async fn erasure_stays_done_on_every_route(backend: Backend) {
    let server = TestServer::spawn(&backend, &[]);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let http = server.http_client();
    let erased = http
        .delete(server.http("/v1/me"))
        .bearer_auth(&ava.token)
        .send()
        .await
        .unwrap();
    assert_eq!(erased.status(), 200);

    let mut socket = WsClient::connect(&server).await;
    socket
        .send_json(json!({"type": "auth", "token": ava.token}))
        .await;
    let (code, reason) = socket.expect_close().await;
    assert_eq!(code, 4001, "{reason}");
    assert!(reason.contains("erased"), "{reason}");

    let support = http
        .post(server.http("/v1/support/conversations"))
        .bearer_auth(&ava.token)
        .send()
        .await
        .unwrap();
    assert_eq!(support.status(), 410);

    let mirror = http
        .put(server.http(&format!("/v1/internal/users/{}", ava.id)))
        .bearer_auth(INTERNAL_API_KEY)
        .json(&json!({"email": ava.email(), "name": "Ava", "role": "client"}))
        .send()
        .await
        .unwrap();
    assert_eq!(mirror.status(), 410);
    let body: Value = mirror.json().await.unwrap();
    assert_eq!(body["error"]["code"], "gone", "{body}");

    // Routes that only read or switch things off still answer.
    for path in ["/v1/me/preferences", "/v1/notifications", "/v1/me/unread"] {
        let status = http
            .get(server.http(path))
            .bearer_auth(&ava.token)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "GET {path}");
    }
    let document = export(&server, &ava).await;
    assert!(document["profile"]["name"].is_null(), "{document}");
    assert!(document["profile"]["email"].is_null(), "{document}");
    let text = document.to_string();
    assert!(!text.contains(&ava.email()), "{document}");

    // Sam still sees the booking, with no name for Ava.
    let mut sam_ws = WsClient::connect_as(&server, &sam).await;
    let joined = sam_ws.join(&room, None).await;
    assert_no_member_named(&joined, "Ava");
}

/// The export also names what waits to be emailed, what the support agent
/// spent on the user, and whose conversations an admin took over.
async fn export_names_email_items_token_usage_and_takeovers(backend: Backend) {
    let model = FakeAnthropic::start(vec![text_answer(&["Happy ", "to help."], 40, 20)]).await;
    let model_url = model.base_url();
    let server = TestServer::spawn(
        &backend,
        &[
            ("MIXROOM__AI__ANTHROPIC_API_KEY", "sk-ant-test"),
            ("MIXROOM__AI__ANTHROPIC_BASE_URL", &model_url),
        ],
    );
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let admin = TestUser::admin("Ada");
    let room = server.open_booking(&ava, &[&sam]).await;
    server.put_user(&admin).await;
    // Sam writes while Ava is away: an email item waits for her.
    let mut sam_ws = WsClient::connect_as(&server, &sam).await;
    sam_ws.join(&room, None).await;
    sam_ws.send_msg(&room, "s1", "Are you there?").await;

    let support_room = server.open_support_conversation(&ava).await;
    let conversation = support_room.trim_start_matches("support:").to_owned();
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&support_room, None).await;
    ava_ws
        .send_msg(&support_room, "q1", "Can I move my session?")
        .await;
    ava_ws
        .recv_matching("the agent's answer", |f| {
            f["type"] == "message" && f["sender"]["role"] == "agent"
        })
        .await;
    ava_ws.disconnect().await;
    let takeover = server
        .http_client()
        .post(server.http(&format!(
            "/v1/admin/support/conversations/{conversation}/takeover"
        )))
        .bearer_auth(&admin.token)
        .send()
        .await
        .unwrap();
    assert_eq!(takeover.status(), 200);

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let document = loop {
        let document = export(&server, &ava).await;
        if !document["email_items"].as_array().unwrap().is_empty() {
            break document;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no email item: {document}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let item = &document["email_items"][0];
    assert_eq!(item["kind"], "chat", "{document}");
    assert_eq!(item["room"], room.as_str(), "{document}");
    assert_eq!(item["state"], "pending", "{document}");
    assert_eq!(
        document["support_token_usage"][0]["tokens"], 60,
        "40 in and 20 out: {document}"
    );
    let own = &document["support_conversations"][0];
    assert_eq!(own["id"], conversation.as_str());
    assert!(own["taken_over_at"].is_string(), "{document}");

    let admin_document = export(&server, &admin).await;
    assert_eq!(
        admin_document["support_takeovers"][0]["conversation_id"],
        conversation.as_str(),
        "{admin_document}"
    );
}

/// With a retention of zero days, the periodic job deletes a finished
/// support conversation and its log; the booking chat stays.
async fn retention_deletes_old_support_logs(backend: Backend) {
    let server = TestServer::spawn(
        &backend,
        &[
            ("MIXROOM__RETENTION__SUPPORT_LOG_DAYS", "0"),
            ("MIXROOM__RETENTION__INTERVAL_SECS", "1"),
        ],
    );
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let nia = TestUser::admin("Nia");
    let room = server.open_booking(&ava, &[&sam]).await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&room, None).await;
    ava_ws
        .send_msg(&room, "keep", "booking chat is not a support log")
        .await;
    let support: Value = server
        .http_client()
        .post(server.http("/v1/support/conversations"))
        .bearer_auth(&ava.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = support["id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let status = server
            .http_client()
            .get(server.http(&format!("/v1/admin/support/conversations/{id}")))
            .bearer_auth(&nia.token)
            .send()
            .await
            .unwrap()
            .status();
        if status == 404 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the support log was never pruned"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_eq!(
        export(&server, &ava).await["support_conversations"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let history = server.history_over_http(&sam, &room, None, None).await;
    assert_eq!(
        history["messages"].as_array().unwrap().len(),
        1,
        "{history}"
    );
}
