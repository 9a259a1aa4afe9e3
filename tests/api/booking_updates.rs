//! Stories of a booking's status: the Mixroom backend and Stripe change it,
//! and everyone concerned sees it at once, in the room and in the inbox.

use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{now_secs, Backend, TestServer, TestUser, WsClient, INTERNAL_API_KEY};
use crate::stripe_kit::{
    deliver, post_webhook, stripe_env, stripe_event, stripe_signature, STRIPE_SECRET,
};

both_backends!(
    status_change_reaches_both_participants,
    stale_update_is_ignored,
    stripe_payment_events_move_the_booking,
    stripe_refuses_forged_tampered_stale_and_unsigned,
    stripe_event_delivered_twice_at_once_is_applied_once,
    notifications_are_listed_and_marked_read,
    backend_notification_is_pushed_and_listed,
    bad_booking_input_changes_nothing,
);

/// Ava (client), Sam (studio owner) and a confirmed booking between them.
async fn booking_of_ava_and_sam(server: &TestServer) -> (TestUser, TestUser, String) {
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let booking_id = room.trim_start_matches("booking:").to_owned();
    (ava, sam, booking_id)
}

async fn put_booking_json(server: &TestServer, booking_id: &str, body: Value) -> reqwest::Response {
    server
        .http_client()
        .put(server.http(&format!("/v1/internal/bookings/{booking_id}")))
        .bearer_auth(INTERNAL_API_KEY)
        .json(&body)
        .send()
        .await
        .expect("PUT booking")
}

fn booking_body(client: &TestUser, provider: &TestUser, status: &str) -> Value {
    json!({
        "client_id": client.id,
        "provider_ids": [provider.id],
        "status": status,
        "title": "Vocal session",
        "starts_at": "2026-12-01T10:00:00Z",
    })
}

fn assert_booking_updated(frame: &Value, booking_id: &str, status: &str, previous: &str) {
    assert_eq!(frame["type"], "booking.updated", "{frame}");
    assert_eq!(frame["booking_id"], booking_id, "{frame}");
    assert_eq!(frame["status"], status, "{frame}");
    assert_eq!(frame["previous_status"], previous, "{frame}");
    assert!(
        frame["at"].is_string(),
        "booking.updated without at: {frame}"
    );
}

/// The studio confirms payment on the backend: Ava and Sam, each on their
/// own socket without joining anything, see the new status at once; a
/// later visitor of the room finds it in the history.
async fn status_change_reaches_both_participants(backend: Backend) {
    let server = TestServer::spawn(&backend, &[]);
    let (ava, sam, booking_id) = booking_of_ava_and_sam(&server).await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    let mut sam_ws = WsClient::connect_as(&server, &sam).await;

    let response =
        put_booking_json(&server, &booking_id, booking_body(&ava, &sam, "in_session")).await;
    assert_eq!(response.status(), 200);

    for ws in [&mut ava_ws, &mut sam_ws] {
        let update = ws.recv_type("booking.updated").await;
        assert_booking_updated(&update, &booking_id, "in_session", "confirmed");
        let notification = ws.recv_type("notification").await;
        assert_eq!(notification["kind"], "booking", "{notification}");
        assert_eq!(notification["link"], format!("/bookings/{booking_id}"));
        // Exactly once per session.
        ws.expect_silence(300, &["booking.updated"]).await;
    }

    let room = format!("booking:{booking_id}");
    let mut late = WsClient::connect_as(&server, &sam).await;
    late.join(&room, Some(0)).await;
    let notice = late.recv_type("message").await;
    assert_eq!(notice["sender"]["role"], "system", "{notice}");
    assert_eq!(notice["seq"], 1, "{notice}");
    let body = notice["body"].as_str().unwrap_or_default();
    assert!(body.contains("in session"), "system message: {body}");
}

/// Updates can arrive out of order: one older than the stored version
/// changes nothing and is reported as stale.
async fn stale_update_is_ignored(backend: Backend) {
    let server = TestServer::spawn(&backend, &[]);
    let (ava, sam, booking_id) = booking_of_ava_and_sam(&server).await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;

    let mut newer = booking_body(&ava, &sam, "paid");
    newer["version"] = json!(7);
    let applied: Value = put_booking_json(&server, &booking_id, newer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(applied["applied"], true, "{applied}");
    let update = ava_ws.recv_type("booking.updated").await;
    assert_booking_updated(&update, &booking_id, "paid", "confirmed");

    let mut older = booking_body(&ava, &sam, "cancelled");
    older["version"] = json!(5);
    let response = put_booking_json(&server, &booking_id, older).await;
    assert_eq!(response.status(), 200);
    let stale: Value = response.json().await.unwrap();
    assert_eq!(stale["applied"], false, "{stale}");
    ava_ws.expect_silence(500, &["booking.updated"]).await;

    let history = server
        .history_over_http(&ava, &format!("booking:{booking_id}"), None, None)
        .await;
    let bodies: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(
        bodies.len(),
        1,
        "only the paid change is in history: {bodies:?}"
    );
    assert!(!bodies[0].contains("cancelled"), "{bodies:?}");
}

/// A payment goes through, a later one fails, a refund comes in; each is
/// pushed to both participants once, and a replayed event changes nothing.
async fn stripe_payment_events_move_the_booking(backend: Backend) {
    let server = TestServer::spawn(&backend, &stripe_env());
    let (ava, sam, booking_id) = booking_of_ava_and_sam(&server).await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    let mut sam_ws = WsClient::connect_as(&server, &sam).await;

    let (_, succeeded) = stripe_event("payment_intent.succeeded", &booking_id);
    let answer = deliver(&server, &succeeded).await;
    assert_eq!(answer["outcome"], "applied", "{answer}");
    for ws in [&mut ava_ws, &mut sam_ws] {
        let update = ws.recv_type("booking.updated").await;
        assert_booking_updated(&update, &booking_id, "paid", "confirmed");
    }

    // Stripe retries: the same event (a fresh signature) is applied once.
    let replay = deliver(&server, &succeeded).await;
    assert_eq!(replay["duplicate"], true, "{replay}");
    ava_ws.expect_silence(300, &["booking.updated"]).await;

    // A failure reported after the payment succeeded does not undo it.
    let (_, failed) = stripe_event("payment_intent.payment_failed", &booking_id);
    let answer = deliver(&server, &failed).await;
    assert_eq!(answer["outcome"], "unchanged", "{answer}");
    ava_ws.expect_silence(300, &["booking.updated"]).await;

    let (_, refunded) = stripe_event("charge.refunded", &booking_id);
    deliver(&server, &refunded).await;
    for ws in [&mut ava_ws, &mut sam_ws] {
        let update = ws.recv_type("booking.updated").await;
        assert_booking_updated(&update, &booking_id, "refunded", "paid");
    }

    // A failed payment on a booking that is not paid yet.
    let other = Uuid::new_v4().to_string();
    server.put_booking(&other, &ava, &[&sam], "confirmed").await;
    let (_, failed) = stripe_event("payment_intent.payment_failed", &other);
    deliver(&server, &failed).await;
    let update = ava_ws.recv_type("booking.updated").await;
    assert_booking_updated(&update, &other, "payment_failed", "confirmed");

    // Unknown event types and unknown bookings are acknowledged (a 4xx
    // would make Stripe retry for days) and change nothing.
    let (_, unknown_type) = stripe_event("customer.created", &booking_id);
    deliver(&server, &unknown_type).await;
    let (_, unknown_booking) = stripe_event("payment_intent.succeeded", "no-such-booking");
    let answer = deliver(&server, &unknown_booking).await;
    assert_eq!(answer["outcome"], "unknown_booking", "{answer}");
    ava_ws.expect_silence(300, &["booking.updated"]).await;

    let history = server
        .history_over_http(&ava, &format!("booking:{booking_id}"), None, None)
        .await;
    assert_eq!(
        history["messages"].as_array().unwrap().len(),
        2,
        "paid and refunded, once each: {history}"
    );
}

/// Stripe delivers one event several times at the same moment (retries
/// overlapping, two endpoints): the database lets one delivery apply it and
/// answers the others as duplicates, so there is one status change, one
/// `booking.updated`, one history line and one notification.
async fn stripe_event_delivered_twice_at_once_is_applied_once(backend: Backend) {
    let server = TestServer::spawn(&backend, &stripe_env());
    let (ava, _sam, booking_id) = booking_of_ava_and_sam(&server).await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    let (_, succeeded) = stripe_event("payment_intent.succeeded", &booking_id);
    let notified = |inbox: Value| inbox["notifications"].as_array().unwrap().len();
    let before = notified(list_notifications(&server, &ava, false).await);

    let deliveries = (0..8).map(|_| deliver(&server, &succeeded));
    let answers = futures_util::future::join_all(deliveries).await;
    let applied = answers.iter().filter(|a| a["outcome"] == "applied").count();
    let duplicates = answers.iter().filter(|a| a["duplicate"] == true).count();
    assert_eq!((applied, duplicates), (1, 7), "{answers:?}");

    let update = ava_ws.recv_type("booking.updated").await;
    assert_eq!(update["status"], "paid");
    ava_ws.expect_silence(300, &["booking.updated"]).await;
    let history = server
        .history_over_http(&ava, &format!("booking:{booking_id}"), None, None)
        .await;
    assert_eq!(
        history["messages"].as_array().unwrap().len(),
        1,
        "{history}"
    );
    let after = notified(list_notifications(&server, &ava, false).await);
    assert_eq!(after, before + 1, "one notification for the payment");
}

/// Only Stripe, with the endpoint secret, within five minutes, can move a
/// booking: anything else is a 400 and changes nothing.
async fn stripe_refuses_forged_tampered_stale_and_unsigned(backend: Backend) {
    let server = TestServer::spawn(&backend, &stripe_env());
    let (ava, _sam, booking_id) = booking_of_ava_and_sam(&server).await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    let (_, payload) = stripe_event("payment_intent.succeeded", &booking_id);

    let forged = stripe_signature(&payload, "whsec_not_the_secret", now_secs());
    assert_eq!(
        post_webhook(&server, &payload, Some(&forged))
            .await
            .status(),
        400
    );

    let signed = stripe_signature(&payload, STRIPE_SECRET, now_secs());
    let tampered = payload.replace("\"livemode\":false", "\"livemode\":true");
    assert_ne!(tampered, payload);
    assert_eq!(
        post_webhook(&server, &tampered, Some(&signed))
            .await
            .status(),
        400
    );

    let stale = stripe_signature(&payload, STRIPE_SECRET, now_secs() - 600);
    assert_eq!(
        post_webhook(&server, &payload, Some(&stale)).await.status(),
        400
    );

    assert_eq!(post_webhook(&server, &payload, None).await.status(), 400);
    assert_eq!(
        post_webhook(&server, &payload, Some("garbage"))
            .await
            .status(),
        400
    );

    ava_ws
        .expect_silence(500, &["booking.updated", "notification"])
        .await;
    let inbox = list_notifications(&server, &ava, false).await;
    assert_eq!(
        inbox["notifications"].as_array().unwrap().len(),
        0,
        "{inbox}"
    );

    // The genuine event still goes through afterwards: nothing was consumed.
    deliver(&server, &payload).await;
    let update = ava_ws.recv_type("booking.updated").await;
    assert_booking_updated(&update, &booking_id, "paid", "confirmed");
}

async fn list_notifications(server: &TestServer, user: &TestUser, unread: bool) -> Value {
    let mut request = server
        .http_client()
        .get(server.http("/v1/notifications"))
        .bearer_auth(&user.token);
    if unread {
        request = request.query(&[("unread", "true")]);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn post_as(server: &TestServer, user: &TestUser, path: &str) -> reqwest::Response {
    server
        .http_client()
        .post(server.http(path))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap()
}

/// Ava reads her inbox, marks one notification read, then all of them;
/// Sam cannot touch Ava's notifications; the unread counts follow.
async fn notifications_are_listed_and_marked_read(backend: Backend) {
    let server = TestServer::spawn(&backend, &[]);
    let (ava, sam, booking_id) = booking_of_ava_and_sam(&server).await;
    for status in ["paid", "in_session", "completed"] {
        let response =
            put_booking_json(&server, &booking_id, booking_body(&ava, &sam, status)).await;
        assert_eq!(response.status(), 200);
    }

    let inbox = list_notifications(&server, &ava, false).await;
    let items = inbox["notifications"].as_array().unwrap().clone();
    assert_eq!(items.len(), 3, "{inbox}");
    assert_eq!(inbox["unread_count"], 3, "{inbox}");
    assert_eq!(
        items[0]["title"], "Booking completed",
        "newest first: {inbox}"
    );
    assert!(items.iter().all(|n| n["read_at"].is_null()));

    let first = items[2]["id"].as_str().unwrap();
    let foreign = post_as(&server, &sam, &format!("/v1/notifications/{first}/read")).await;
    assert_eq!(
        foreign.status(),
        404,
        "Sam must not mark Ava's notification"
    );
    let marked = post_as(&server, &ava, &format!("/v1/notifications/{first}/read")).await;
    assert_eq!(marked.status(), 200);
    let marked: Value = marked.json().await.unwrap();
    assert!(marked["read_at"].is_string(), "{marked}");

    let unread = list_notifications(&server, &ava, true).await;
    assert_eq!(
        unread["notifications"].as_array().unwrap().len(),
        2,
        "{unread}"
    );
    assert_eq!(unread["unread_count"], 2);
    // Sam's inbox is untouched by Ava's reading.
    assert_eq!(
        list_notifications(&server, &sam, true).await["unread_count"],
        3
    );

    // The unread counts also arrive right after `welcome`.
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    let counts = ava_ws.recv_type("unread").await;
    assert_eq!(counts["notifications"], 2, "{counts}");
    assert_eq!(
        counts["rooms"][format!("booking:{booking_id}")],
        3,
        "{counts}"
    );

    let all = post_as(&server, &ava, "/v1/notifications/read-all").await;
    assert_eq!(all.status(), 200);
    assert_eq!(all.json::<Value>().await.unwrap()["marked"], 2);
    assert_eq!(
        list_notifications(&server, &ava, true).await["unread_count"],
        0
    );

    let anonymous = server
        .http_client()
        .get(server.http("/v1/notifications"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

/// The backend notifies Ava directly: it is pushed to her open page and
/// kept in her inbox; the same `source` twice creates it once.
async fn backend_notification_is_pushed_and_listed(backend: Backend) {
    let server = TestServer::spawn(&backend, &[]);
    let ava = TestUser::client("Ava");
    server.put_user(&ava).await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    let body = json!({
        "user_id": ava.id,
        "kind": "booking",
        "title": "Reminder",
        "body": "Your session starts tomorrow at 10:00.",
        "link": "/bookings/x",
        "source": "reminder-1",
    });
    for expected_status in [201, 200] {
        let response = server
            .http_client()
            .post(server.http("/v1/internal/notifications"))
            .bearer_auth(INTERNAL_API_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected_status);
    }
    let pushed = ava_ws.recv_type("notification").await;
    assert_eq!(pushed["title"], "Reminder", "{pushed}");
    assert_eq!(pushed["body"], "Your session starts tomorrow at 10:00.");
    ava_ws.expect_silence(300, &["notification"]).await;
    let inbox = list_notifications(&server, &ava, true).await;
    assert_eq!(
        inbox["notifications"].as_array().unwrap().len(),
        1,
        "{inbox}"
    );
    assert_eq!(inbox["notifications"][0]["id"], pushed["id"]);

    let user_token = server
        .http_client()
        .post(server.http("/v1/internal/notifications"))
        .bearer_auth(&ava.token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        user_token.status(),
        401,
        "a user token is not the internal key"
    );
    let mut bad_kind = body.clone();
    bad_kind["kind"] = json!("gossip");
    let response = server
        .http_client()
        .post(server.http("/v1/internal/notifications"))
        .bearer_auth(INTERNAL_API_KEY)
        .json(&bad_kind)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
}

/// A status outside the set, a body that is not JSON, a user token on the
/// internal route, a system message to a booking that does not exist:
/// each is refused with a clear 4xx and nothing changes.
async fn bad_booking_input_changes_nothing(backend: Backend) {
    let server = TestServer::spawn(&backend, &[]);
    let (ava, sam, booking_id) = booking_of_ava_and_sam(&server).await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;

    let response =
        put_booking_json(&server, &booking_id, booking_body(&ava, &sam, "teleported")).await;
    assert_eq!(response.status(), 422);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["code"], "invalid", "{error}");

    let response = server
        .http_client()
        .put(server.http(&format!("/v1/internal/bookings/{booking_id}")))
        .bearer_auth(INTERNAL_API_KEY)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    let response = server
        .http_client()
        .put(server.http(&format!("/v1/internal/bookings/{booking_id}")))
        .bearer_auth(&ava.token)
        .json(&booking_body(&ava, &sam, "cancelled"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    let response = server
        .http_client()
        .post(server.http("/v1/internal/rooms/booking:no-such-booking/messages"))
        .bearer_auth(INTERNAL_API_KEY)
        .json(&json!({"body": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    ava_ws
        .expect_silence(300, &["booking.updated", "notification"])
        .await;
    let history = server
        .history_over_http(&ava, &format!("booking:{booking_id}"), None, None)
        .await;
    assert_eq!(
        history["messages"].as_array().unwrap().len(),
        0,
        "{history}"
    );
}
