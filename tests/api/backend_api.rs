//! The Mixroom backend integrates: it changes part of a booking, reads and
//! lists what it mirrored, erases a deleted account, and gets a clear
//! answer for every mistake. And a user's reads follow them across tabs.

use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{sign, Backend, TestServer, TestUser, WsClient, INTERNAL_API_KEY, JWT_SECRET};

both_backends!(
    a_status_only_put_is_refused_and_patch_changes_only_what_it_names,
    the_backend_reads_lists_and_erases_what_it_mirrored,
    reads_reach_the_readers_other_tabs_and_cannot_run_ahead,
    one_notification_reaches_many_users_with_the_backends_data,
    disconnect_signs_a_user_out_everywhere,
    an_idempotency_key_replays_the_same_request_and_refuses_another,
);

async fn internal(
    server: &TestServer,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = server
        .http_client()
        .request(method, server.http(path))
        .bearer_auth(INTERNAL_API_KEY);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("internal request");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{status} answered with a body that is not JSON: {text:?}"));
    (status, body)
}

fn assert_error(reply: &(u16, Value), status: u16, code: &str, mentions: &str) {
    assert_eq!(reply.0, status, "{}", reply.1);
    assert_eq!(reply.1["error"]["code"], code, "{}", reply.1);
    let message = reply.1["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(mentions),
        "`{mentions}` not in {}",
        reply.1
    );
}

/// The backend sends only a new status with PUT, as an old README example
/// suggested: refused, because it would have emptied the providers and the
/// title. PATCH changes the status and keeps the rest; Sam still gets in.
async fn a_status_only_put_is_refused_and_patch_changes_only_what_it_names(backend: Backend) {
    let server = TestServer::spawn(&backend, &[]);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let booking = format!(
        "/v1/internal/bookings/{}",
        room.trim_start_matches("booking:")
    );

    let put = internal(
        &server,
        reqwest::Method::PUT,
        &booking,
        Some(json!({"client_id": ava.id, "status": "paid"})),
    )
    .await;
    assert_error(&put, 422, "invalid", "provider_ids or title");

    let patched = internal(
        &server,
        reqwest::Method::PATCH,
        &booking,
        Some(json!({"status": "paid"})),
    )
    .await;
    assert_eq!(patched.0, 200, "{}", patched.1);
    assert_eq!(patched.1["status_changed"], true, "{}", patched.1);

    let (status, stored) = internal(&server, reqwest::Method::GET, &booking, None).await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(stored["status"], "paid", "{stored}");
    assert_eq!(stored["provider_ids"], json!([sam.id]), "{stored}");
    assert_eq!(stored["client_id"], ava.id.as_str(), "{stored}");
    assert_eq!(stored["title"], "Session", "{stored}");
    assert_eq!(stored["starts_at"], "2026-12-01T10:00:00Z", "{stored}");

    let mut sam_ws = WsClient::connect_as(&server, &sam).await;
    let joined = sam_ws.join(&room, None).await;
    assert_eq!(joined["type"], "joined", "Sam was locked out: {joined}");

    // `null` clears a field; absent keeps it.
    let cleared = internal(
        &server,
        reqwest::Method::PATCH,
        &booking,
        Some(json!({"starts_at": null, "title": "Vocals, day 2"})),
    )
    .await;
    assert_eq!(cleared.0, 200, "{}", cleared.1);
    let (_, stored) = internal(&server, reqwest::Method::GET, &booking, None).await;
    assert_eq!(stored["starts_at"], Value::Null, "{stored}");
    assert_eq!(stored["title"], "Vocals, day 2", "{stored}");
    assert_eq!(stored["status"], "paid", "{stored}");

    // A typo is not silently ignored; a booking PATCH cannot create.
    let typo = internal(
        &server,
        reqwest::Method::PATCH,
        &booking,
        Some(json!({"stauts": "cancelled"})),
    )
    .await;
    assert_error(&typo, 422, "invalid", "stauts");
    let unknown = internal(
        &server,
        reqwest::Method::PATCH,
        &format!("/v1/internal/bookings/{}", Uuid::new_v4()),
        Some(json!({"status": "paid"})),
    )
    .await;
    assert_error(&unknown, 404, "not_found", "PUT creates one");
}

/// The backend reads back a user and a booking it mirrored, lists the
/// user's bookings, and erases the user when their account is deleted:
/// their socket closes, their profile is blanked, the booking stays.
async fn the_backend_reads_lists_and_erases_what_it_mirrored(backend: Backend) {
    let server = TestServer::spawn(&backend, &[]);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let first = server.open_booking(&ava, &[&sam]).await;
    let second = server.open_booking(&ava, &[&sam]).await;

    let user_path = format!("/v1/internal/users/{}", ava.id);
    let (status, user) = internal(&server, reqwest::Method::GET, &user_path, None).await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["name"], "Ava", "{user}");
    assert_eq!(user["email"], ava.email(), "{user}");
    assert_eq!(user["role"], "client", "{user}");
    assert_eq!(user["erased_at"], Value::Null, "{user}");

    let (status, page) = internal(
        &server,
        reqwest::Method::GET,
        &format!("{user_path}/bookings?limit=1"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["bookings"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["has_more"], true, "{page}");
    let after = page["bookings"][0]["id"].as_str().unwrap().to_owned();
    let (_, rest) = internal(
        &server,
        reqwest::Method::GET,
        &format!("{user_path}/bookings?after={after}"),
        None,
    )
    .await;
    let mut ids: Vec<String> = [&page, &rest]
        .iter()
        .flat_map(|p| p["bookings"].as_array().unwrap().clone())
        .map(|b| format!("booking:{}", b["id"].as_str().unwrap()))
        .collect();
    ids.sort();
    let mut expected = vec![first.clone(), second];
    expected.sort();
    assert_eq!(ids, expected, "{page} {rest}");
    assert_eq!(rest["has_more"], false, "{rest}");

    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&first, None).await;
    let erased = internal(&server, reqwest::Method::DELETE, &user_path, None).await;
    assert_eq!(erased.0, 200, "{}", erased.1);
    assert_eq!(erased.1["erased"], true, "{}", erased.1);
    let (code, _) = ava_ws.expect_close().await;
    assert_eq!(code, 4001, "Ava's session outlived her account");

    let (_, user) = internal(&server, reqwest::Method::GET, &user_path, None).await;
    assert_eq!(user["name"], Value::Null, "{user}");
    assert_eq!(user["email"], Value::Null, "{user}");
    assert!(user["erased_at"].is_string(), "{user}");
    let (status, booking) = internal(
        &server,
        reqwest::Method::GET,
        &format!(
            "/v1/internal/bookings/{}",
            first.trim_start_matches("booking:")
        ),
        None,
    )
    .await;
    assert_eq!(status, 200, "the booking record went with her: {booking}");
    assert_eq!(booking["client_id"], ava.id.as_str(), "{booking}");

    let nobody = format!("/v1/internal/users/{}", Uuid::new_v4());
    let missing = internal(&server, reqwest::Method::DELETE, &nobody, None).await;
    assert_error(&missing, 404, "not_found", "no user");
    let missing = internal(&server, reqwest::Method::GET, &nobody, None).await;
    assert_error(&missing, 404, "not_found", "no user");
}

/// Ava reads in one tab: her other tab and Sam are told, the reading tab
/// is not told what it did. A read past the last message is refused, so
/// the next message still counts as unread.
async fn reads_reach_the_readers_other_tabs_and_cannot_run_ahead(backend: Backend) {
    let server = TestServer::spawn(&backend, &[]);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let mut laptop = WsClient::connect_as(&server, &ava).await;
    laptop.join(&room, None).await;
    let mut phone = WsClient::connect_as(&server, &ava).await;
    phone.join(&room, None).await;
    let mut sam_ws = WsClient::connect_as(&server, &sam).await;
    sam_ws.join(&room, None).await;
    sam_ws.send_msg(&room, "s1", "Are you free at ten?").await;
    sam_ws.send_msg(&room, "s2", "Or at noon?").await;

    laptop
        .send_json(json!({"type": "read", "room": room, "seq": 2}))
        .await;
    for (who, ws) in [("Ava's phone", &mut phone), ("Sam", &mut sam_ws)] {
        let read = ws.recv_type("read").await;
        assert_eq!(read["user_id"], ava.id.as_str(), "{who}: {read}");
        assert_eq!(read["seq"], 2, "{who}: {read}");
    }
    laptop.expect_silence(300, &["read"]).await;

    let ahead = laptop
        .request(
            json!({"type": "read", "room": room, "seq": 99, "ref": "ahead"}),
            "error",
        )
        .await;
    assert_eq!(ahead["code"], "invalid", "{ahead}");
    assert!(
        ahead["message"]
            .as_str()
            .unwrap()
            .contains("last message (2)"),
        "{ahead}"
    );
    phone.expect_silence(300, &["read"]).await;

    sam_ws.send_msg(&room, "s3", "Noon it is.").await;
    let unread = server.get_as(&ava, "/v1/me/unread").await;
    assert_eq!(unread["rooms"][&room], 1, "{unread}");

    // Reading a notification on the laptop clears it on the phone too.
    let notice = internal(
        &server,
        reqwest::Method::POST,
        "/v1/internal/notifications",
        Some(json!({"user_id": ava.id, "kind": "booking", "title": "Paid"})),
    )
    .await;
    let id = notice.1["id"].as_str().unwrap().to_owned();
    phone.recv_type("notification").await;
    let status = server
        .http_client()
        .post(server.http(&format!("/v1/notifications/{id}/read")))
        .bearer_auth(&ava.token)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let read = phone.recv_type("notifications.read").await;
    assert_eq!(read["ids"], json!([id]), "{read}");
    // (The counts sent at `welcome` had no unread message yet.)
    phone
        .recv_matching("fresh unread counts", |f| {
            f["type"] == "unread" && f["notifications"] == 0 && f["rooms"][&room] == 1
        })
        .await;
}

/// Mistakes get a JSON error that names them: user ids that no token could
/// carry, a support conversation that does not exist, a route or method
/// that does not exist. A repeated room message answers 200, the first 201.
#[tokio::test]
async fn the_backends_mistakes_get_clear_json_errors() {
    let server = TestServer::spawn(&Backend::sqlite(), &[]);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");

    let not_uuid = internal(
        &server,
        reqwest::Method::PUT,
        "/v1/internal/users/ava-1",
        Some(json!({"name": "Ava", "role": "client"})),
    )
    .await;
    assert_error(&not_uuid, 422, "invalid", "not a UUID");
    server.put_user(&ava).await;
    let client_not_uuid = internal(
        &server,
        reqwest::Method::PUT,
        "/v1/internal/bookings/b1",
        Some(json!({"client_id": "ava", "provider_ids": [], "status": "confirmed", "title": ""})),
    )
    .await;
    assert_error(&client_not_uuid, 422, "invalid", "client_id");

    let no_conversation = internal(
        &server,
        reqwest::Method::POST,
        &format!("/v1/internal/rooms/support:{}/messages", Uuid::new_v4()),
        Some(json!({"body": "Hello"})),
    )
    .await;
    assert_error(&no_conversation, 404, "not_found", "no such room");

    for (method, path) in [
        (reqwest::Method::GET, "/v1/nothing-here"),
        (reqwest::Method::GET, "/v1/internal/nothing-here"),
        (reqwest::Method::DELETE, "/healthz"),
    ] {
        let reply = internal(&server, method.clone(), path, None).await;
        assert_error(
            &reply,
            404,
            "not_found",
            &format!("no route for {method} {path}"),
        );
    }

    let room = server.open_booking(&ava, &[&sam]).await;
    let path = format!("/v1/internal/rooms/{room}/messages");
    let message = json!({"body": "Your session is confirmed.", "client_id": "confirm-1"});
    let first = internal(&server, reqwest::Method::POST, &path, Some(message.clone())).await;
    assert_eq!(first.0, 201, "{}", first.1);
    let again = internal(&server, reqwest::Method::POST, &path, Some(message)).await;
    assert_eq!(again.0, 200, "{}", again.1);
    assert_eq!(again.1["seq"], first.1["seq"], "{}", again.1);
    assert_eq!(again.1["duplicate"], true, "{}", again.1);
}

/// One call tells Ava and Sam their session moved, with the backend's own
/// object for the app; the same call again creates nothing.
async fn one_notification_reaches_many_users_with_the_backends_data(backend: Backend) {
    let server = TestServer::spawn(&backend, &[]);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    server.put_user(&ava).await;
    server.put_user(&sam).await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    let notice = json!({
        "user_ids": [ava.id, sam.id],
        "kind": "booking",
        "title": "Your session moved",
        "body": "Now at 11:00.",
        "source": "moved-1",
        "data": {"booking_id": "b1", "starts_at": "2026-12-08T11:00:00Z"},
    });
    let created = internal(
        &server,
        reqwest::Method::POST,
        "/v1/internal/notifications",
        Some(notice.clone()),
    )
    .await;
    assert_eq!(created.0, 201, "{}", created.1);
    assert_eq!(created.1["created"], 2, "{}", created.1);

    let pushed = ava_ws.recv_type("notification").await;
    assert_eq!(pushed["data"]["booking_id"], "b1", "{pushed}");
    let inbox = server.get_as(&sam, "/v1/notifications").await;
    assert_eq!(
        inbox["notifications"][0]["title"], "Your session moved",
        "{inbox}"
    );
    assert_eq!(
        inbox["notifications"][0]["data"]["starts_at"], "2026-12-08T11:00:00Z",
        "{inbox}"
    );

    let again = internal(
        &server,
        reqwest::Method::POST,
        "/v1/internal/notifications",
        Some(notice.clone()),
    )
    .await;
    assert_eq!(again.0, 200, "{}", again.1);
    assert_eq!(again.1["created"], 0, "{}", again.1);
    ava_ws.expect_silence(300, &["notification"]).await;

    for (body, status, mentions) in [
        (json!({"data": [1, 2]}), 422, "`data` must be an object"),
        (
            json!({"data": {"blob": "x".repeat(5000)}}),
            413,
            "`data` must be at most",
        ),
        (json!({"user_id": ava.id}), 422, "exactly one of"),
        (json!({"user_ids": ["not-a-uuid"]}), 422, "not a UUID"),
    ] {
        let mut wrong = notice.clone();
        for (key, value) in body.as_object().unwrap() {
            wrong[key] = value.clone();
        }
        wrong["source"] = json!("moved-2");
        let reply = internal(
            &server,
            reqwest::Method::POST,
            "/v1/internal/notifications",
            Some(wrong),
        )
        .await;
        let code = if status == 413 {
            "too_large"
        } else {
            "invalid"
        };
        assert_error(&reply, status, code, mentions);
    }
}

/// The backend bans Ava: both her tabs close on the spot, and her tokens
/// from before are refused on the socket and over HTTP. A token issued
/// after it works (she was let back in).
async fn disconnect_signs_a_user_out_everywhere(backend: Backend) {
    let server = TestServer::spawn(&backend, &[]);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let mut laptop = WsClient::connect_as(&server, &ava).await;
    laptop.join(&room, None).await;
    let mut phone = WsClient::connect_as(&server, &ava).await;
    let mut sam_ws = WsClient::connect_as(&server, &sam).await;

    let path = format!("/v1/internal/users/{}/disconnect", ava.id);
    let reply = internal(&server, reqwest::Method::POST, &path, None).await;
    assert_eq!(reply.0, 200, "{}", reply.1);
    for tab in [&mut laptop, &mut phone] {
        let (code, _) = tab.expect_close().await;
        assert_eq!(code, 4001);
    }
    sam_ws.ping().await;

    let mut again = WsClient::connect(&server).await;
    again
        .send_json(json!({"type": "auth", "token": ava.token}))
        .await;
    let (code, reason) = again.expect_close().await;
    assert_eq!(code, 4001, "{reason}");
    assert!(reason.contains("signed out everywhere"), "{reason}");
    let status = server
        .http_client()
        .get(server.http("/v1/notifications"))
        .bearer_auth(&ava.token)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 401, "an old token still reads the inbox");

    let mut fresh = ava.claims(crate::helpers::now_secs() + 3600);
    fresh.iat = Some(crate::helpers::now_secs() + 2);
    let fresh = sign(&fresh, JWT_SECRET);
    let mut back = WsClient::connect(&server).await;
    let welcome = back.authenticate(&fresh).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let status = server
        .http_client()
        .get(server.http("/v1/notifications"))
        .bearer_auth(&fresh)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);

    let nobody = format!("/v1/internal/users/{}/disconnect", Uuid::new_v4());
    let missing = internal(&server, reqwest::Method::POST, &nobody, None).await;
    assert_error(&missing, 404, "not_found", "no user");
}

/// The backend retries a call whose answer it lost: the same key and body
/// get the first answer and create nothing; the same key with another body
/// (or on another route) is a mistake, refused with 409.
async fn an_idempotency_key_replays_the_same_request_and_refuses_another(backend: Backend) {
    let server = TestServer::spawn(&backend, &[]);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let post = |path: String, key: &str, body: Value| {
        server
            .http_client()
            .post(server.http(&path))
            .bearer_auth(INTERNAL_API_KEY)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let notice = json!({"user_id": ava.id, "kind": "booking", "title": "Session tomorrow"});
    let first = post("/v1/internal/notifications".into(), "k-1", notice.clone())
        .await
        .unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();

    let again = post("/v1/internal/notifications".into(), "k-1", notice.clone())
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers().get("idempotent-replayed").unwrap(), "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"], "{again}");
    let inbox = server.get_as(&ava, "/v1/notifications").await;
    let told = inbox["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["title"] == "Session tomorrow")
        .count();
    assert_eq!(told, 1, "the retry created another notification: {inbox}");

    let mut other = notice.clone();
    other["title"] = json!("Session moved");
    for (path, body) in [
        ("/v1/internal/notifications".to_owned(), other),
        (
            format!("/v1/internal/rooms/{room}/messages"),
            json!({"body": "Session tomorrow"}),
        ),
    ] {
        let response = post(path.clone(), "k-1", body).await.unwrap();
        assert_eq!(response.status(), 409, "{path}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], "conflict", "{error}");
    }

    // A refused request leaves its key free for the corrected retry.
    let mut bad = notice.clone();
    bad["kind"] = json!("party");
    let refused = post("/v1/internal/notifications".into(), "k-2", bad)
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    let retried = post("/v1/internal/notifications".into(), "k-2", notice.clone())
        .await
        .unwrap();
    assert_eq!(retried.status(), 201);

    // Only the backend's calls use keys: a user's call is refused first.
    let user_call = server
        .http_client()
        .post(server.http("/v1/internal/notifications"))
        .bearer_auth(&ava.token)
        .header("Idempotency-Key", "k-3")
        .json(&notice)
        .send()
        .await
        .unwrap();
    assert_eq!(user_call.status(), 401);
    let long = "k".repeat(300);
    let too_long = post("/v1/internal/notifications".into(), &long, notice)
        .await
        .unwrap();
    assert_eq!(too_long.status(), 400);
}

/// A backfill mirrors many users in one call; one bad entry refuses the
/// whole call, naming it, and writes nothing.
#[tokio::test]
async fn a_backfill_mirrors_many_users_in_one_call() {
    let server = TestServer::spawn(&Backend::sqlite(), &[]);
    let users: Vec<TestUser> = ["Ava", "Bo", "Cy"]
        .iter()
        .map(|n| TestUser::client(n))
        .collect();
    let body = |ids: Vec<String>| {
        json!({"users": ids.iter().zip(&users).map(|(id, u)| json!({
            "id": id, "name": u.name, "email": u.email(), "role": "client",
        })).collect::<Vec<_>>()})
    };
    let mut ids: Vec<String> = users.iter().map(|u| u.id.clone()).collect();
    ids[1] = "bo".into();
    let refused = internal(
        &server,
        reqwest::Method::PUT,
        "/v1/internal/users",
        Some(body(ids)),
    )
    .await;
    assert_error(&refused, 422, "invalid", "users[1]");
    let (status, _) = internal(
        &server,
        reqwest::Method::GET,
        &format!("/v1/internal/users/{}", users[0].id),
        None,
    )
    .await;
    assert_eq!(status, 404, "a refused backfill wrote Ava");

    let ids = users.iter().map(|u| u.id.clone()).collect();
    let done = internal(
        &server,
        reqwest::Method::PUT,
        "/v1/internal/users",
        Some(body(ids)),
    )
    .await;
    assert_eq!(done.0, 200, "{}", done.1);
    assert_eq!(done.1["mirrored"], 3, "{}", done.1);
    for user in &users {
        let (_, mirrored) = internal(
            &server,
            reqwest::Method::GET,
            &format!("/v1/internal/users/{}", user.id),
            None,
        )
        .await;
        assert_eq!(mirrored["name"], user.name.as_str(), "{mirrored}");
    }
}
