//! Row-level access as a table: every HTTP route and every room frame,
//! for every kind of caller, allowed or refused. A new route or frame
//! belongs here.

use serde_json::{json, Value};

use crate::helpers::{Backend, TestServer, TestUser, WsClient, INTERNAL_API_KEY};

both_backends!(every_route_and_frame_for_every_caller);

/// Who calls.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Caller {
    Anonymous,
    /// A client with no part in the booking.
    WrongUser,
    Client,
    StudioOwner,
    Engineer,
    Admin,
    InternalKey,
}

const CALLERS: [Caller; 7] = [
    Caller::Anonymous,
    Caller::WrongUser,
    Caller::Client,
    Caller::StudioOwner,
    Caller::Engineer,
    Caller::Admin,
    Caller::InternalKey,
];

struct World {
    eve: TestUser,
    ava: TestUser,
    sam: TestUser,
    eli: TestUser,
    nia: TestUser,
    booking_room: String,
    support_room: String,
    ava_notification: String,
}

impl World {
    fn bearer(&self, caller: Caller) -> Option<String> {
        match caller {
            Caller::Anonymous => None,
            Caller::WrongUser => Some(self.eve.token.clone()),
            Caller::Client => Some(self.ava.token.clone()),
            Caller::StudioOwner => Some(self.sam.token.clone()),
            Caller::Engineer => Some(self.eli.token.clone()),
            Caller::Admin => Some(self.nia.token.clone()),
            Caller::InternalKey => Some(INTERNAL_API_KEY.to_owned()),
        }
    }
}

/// How a route answers each caller, in the order of `CALLERS`.
type Expected = [u16; 7];

async fn call(
    server: &TestServer,
    world: &World,
    caller: Caller,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> u16 {
    let url = server.http(path);
    let client = server.http_client();
    let mut request = match method {
        "GET" => client.get(url),
        "POST" => client.post(url),
        "PUT" => client.put(url),
        "PATCH" => client.patch(url),
        "DELETE" => client.delete(url),
        other => panic!("method {other}"),
    };
    if let Some(bearer) = world.bearer(caller) {
        request = request.bearer_auth(bearer);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    request.send().await.unwrap().status().as_u16()
}

async fn setup(server: &TestServer) -> World {
    let eve = TestUser::client("Eve");
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let eli = TestUser::engineer("Eli");
    let nia = TestUser::admin("Nia");
    for user in [&eve, &nia] {
        server.put_user(user).await;
    }
    let booking_room = server.open_booking(&ava, &[&sam, &eli]).await;
    let booking_id = booking_room.trim_start_matches("booking:").to_owned();
    server
        .put_booking(&booking_id, &ava, &[&sam, &eli], "paid")
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
    let inbox: Value = server
        .http_client()
        .get(server.http("/v1/notifications"))
        .bearer_auth(&ava.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    World {
        eve,
        ava,
        sam,
        eli,
        nia,
        booking_room,
        support_room: format!("support:{}", support["id"].as_str().unwrap()),
        ava_notification: inbox["notifications"][0]["id"].as_str().unwrap().to_owned(),
    }
}

async fn every_route_and_frame_for_every_caller(backend: Backend) {
    let server = TestServer::spawn(&backend, &[]);
    let world = setup(&server).await;
    let support_id = world.support_room.trim_start_matches("support:");
    let user_body = json!({"email": "x@example.com", "name": "X", "role": "client"});
    let booking_body = json!({
        "client_id": world.ava.id, "provider_ids": [world.sam.id, world.eli.id], "status": "paid",
        "title": "Session",
    });
    let notification_body = json!({"user_id": world.ava.id, "kind": "booking", "title": "Hi"});
    // A browser's subscription; nothing listens there (pushes to it fail
    // in the background). Each caller takes it over in turn, the last
    // being the admin.
    let browser = crate::fake_push::Browser::detached("http://127.0.0.1:9/push/matrix");
    let unsubscribe = format!(
        "/v1/me/push-subscriptions?endpoint={}",
        url_encode(&browser.endpoint)
    );

    //        anonymous, wrong user, client, studio owner, engineer, admin, internal key
    let routes: Vec<(&str, String, Option<Value>, Expected)> = vec![
        (
            "GET",
            format!("/v1/rooms/{}/messages", world.booking_room),
            None,
            [401, 403, 200, 200, 200, 200, 401],
        ),
        (
            "GET",
            format!("/v1/rooms/{}/messages", world.support_room),
            None,
            [401, 403, 200, 403, 403, 200, 401],
        ),
        (
            "GET",
            format!("/v1/rooms/user:{}/messages", world.ava.id),
            None,
            [401, 403, 200, 403, 403, 403, 401],
        ),
        (
            "GET",
            "/v1/notifications".into(),
            None,
            [401, 200, 200, 200, 200, 200, 401],
        ),
        (
            "POST",
            format!("/v1/notifications/{}/read", world.ava_notification),
            None,
            [401, 404, 200, 404, 404, 404, 401],
        ),
        (
            "POST",
            "/v1/notifications/read-all".into(),
            None,
            [401, 200, 200, 200, 200, 200, 401],
        ),
        (
            "GET",
            "/v1/me/unread".into(),
            None,
            [401, 200, 200, 200, 200, 200, 401],
        ),
        (
            "GET",
            "/v1/me/export".into(),
            None,
            [401, 200, 200, 200, 200, 200, 401],
        ),
        (
            "GET",
            "/v1/me/preferences".into(),
            None,
            [401, 200, 200, 200, 200, 200, 401],
        ),
        (
            "GET",
            "/v1/push/vapid-public-key".into(),
            None,
            [200, 200, 200, 200, 200, 200, 200],
        ),
        (
            "POST",
            "/v1/me/push-subscriptions".into(),
            Some(browser.subscription()),
            [401, 201, 201, 201, 201, 201, 401],
        ),
        (
            "GET",
            "/v1/me/push-subscriptions".into(),
            None,
            [401, 200, 200, 200, 200, 200, 401],
        ),
        (
            "DELETE",
            unsubscribe,
            None,
            [401, 404, 404, 404, 404, 204, 401],
        ),
        (
            "POST",
            "/v1/support/conversations".into(),
            None,
            [401, 201, 201, 201, 201, 201, 401],
        ),
        (
            "GET",
            "/v1/admin/support/conversations".into(),
            None,
            [401, 403, 403, 403, 403, 200, 401],
        ),
        (
            "GET",
            format!("/v1/admin/support/conversations/{support_id}"),
            None,
            [401, 403, 403, 403, 403, 200, 401],
        ),
        (
            "PUT",
            format!("/v1/internal/users/{}", world.eve.id),
            Some(user_body),
            [401, 401, 401, 401, 401, 401, 200],
        ),
        (
            "PUT",
            format!(
                "/v1/internal/bookings/{}",
                world.booking_room.trim_start_matches("booking:")
            ),
            Some(booking_body),
            [401, 401, 401, 401, 401, 401, 200],
        ),
        (
            "POST",
            "/v1/internal/notifications".into(),
            Some(notification_body),
            [401, 401, 401, 401, 401, 401, 201],
        ),
        (
            "POST",
            "/v1/internal/announcements".into(),
            Some(json!({
                "id": "matrix-1", "title": "Terms", "body": "Changed.", "kind": "policy",
                "audience": "all",
            })),
            [401, 401, 401, 401, 401, 401, 202],
        ),
        (
            "GET",
            "/v1/internal/announcements/matrix-1".into(),
            None,
            [401, 401, 401, 401, 401, 401, 200],
        ),
        (
            "POST",
            format!("/v1/internal/rooms/{}/messages", world.booking_room),
            Some(json!({"body": "notice"})),
            [401, 401, 401, 401, 401, 401, 201],
        ),
        (
            "GET",
            format!("/v1/internal/users/{}", world.ava.id),
            None,
            [401, 401, 401, 401, 401, 401, 200],
        ),
        (
            "GET",
            format!("/v1/internal/users/{}/bookings", world.ava.id),
            None,
            [401, 401, 401, 401, 401, 401, 200],
        ),
        (
            "GET",
            format!(
                "/v1/internal/bookings/{}",
                world.booking_room.trim_start_matches("booking:")
            ),
            None,
            [401, 401, 401, 401, 401, 401, 200],
        ),
        (
            "PATCH",
            format!(
                "/v1/internal/bookings/{}",
                world.booking_room.trim_start_matches("booking:")
            ),
            Some(json!({"title": "Session"})),
            [401, 401, 401, 401, 401, 401, 200],
        ),
        // Erasing someone nobody mirrored: only the backend gets as far as 404.
        (
            "DELETE",
            format!("/v1/internal/users/{}", uuid::Uuid::new_v4()),
            None,
            [401, 401, 401, 401, 401, 401, 404],
        ),
        // Taking over changes the conversation: last among the admin routes.
        (
            "POST",
            format!("/v1/admin/support/conversations/{support_id}/takeover"),
            None,
            [401, 403, 403, 403, 403, 200, 401],
        ),
    ];
    let mut wrong = Vec::new();
    for (method, path, body, expected) in &routes {
        for (caller, want) in CALLERS.iter().zip(expected) {
            let got = call(&server, &world, *caller, method, path, body.clone()).await;
            // Creating twice is 200 for the same idempotent notification.
            let got = if *want == 201 && got == 200 && path.ends_with("/notifications") {
                201
            } else {
                got
            };
            if got != *want {
                wrong.push(format!(
                    "{method} {path} as {caller:?}: {got}, expected {want}"
                ));
            }
        }
    }

    // Frames: what each caller may do in each room.
    let rooms = [
        (
            world.booking_room.clone(),
            [false, false, true, true, true, true, false],
        ),
        (
            world.support_room.clone(),
            [false, false, true, false, false, true, false],
        ),
        (
            format!("user:{}", world.ava.id),
            [false, false, true, false, false, false, false],
        ),
    ];
    for (caller, index) in CALLERS.iter().zip(0..) {
        let Some(token) = world.bearer(*caller) else {
            // Anonymous: nothing but `auth` is accepted.
            let mut ws = WsClient::connect(&server).await;
            let reply = ws
                .request(
                    json!({"type": "join", "room": world.booking_room}),
                    "joined",
                )
                .await;
            if reply["code"] != "unauthorized" {
                wrong.push(format!("join as anonymous: {reply}"));
            }
            continue;
        };
        let mut ws = WsClient::connect(&server).await;
        ws.send_json(json!({"type": "auth", "token": token})).await;
        if *caller == Caller::InternalKey {
            // The backend's key is not a user token.
            let (code, _) = ws.expect_close().await;
            if code != 4001 {
                wrong.push(format!("auth with the internal key: close {code}"));
            }
            continue;
        }
        ws.recv_type("welcome").await;
        for (room, allowed) in &rooms {
            let may = allowed[index];
            let checks = [
                (json!({"type": "join", "room": room}), "joined"),
                (json!({"type": "history", "room": room}), "history"),
                (
                    json!({"type": "send", "room": room, "client_id": format!("c-{index}"), "body": "hi"}),
                    "ack",
                ),
                // The room's first message is there by now where one may write.
                (
                    json!({"type": "react", "room": room, "seq": 1, "emoji": "👍", "on": true}),
                    "ack",
                ),
            ];
            for (frame, reply_type) in checks {
                let is_send = frame["type"] == "send" || frame["type"] == "react";
                let reply = ws.request(frame.clone(), reply_type).await;
                // Nobody writes into a user channel, not even its owner.
                let may = may && !(is_send && room.starts_with("user:"));
                let allowed_now = reply["type"] == reply_type;
                if allowed_now != may {
                    wrong.push(format!("{frame} as {caller:?}: {reply}"));
                } else if !may
                    && !["forbidden", "not_found"].contains(&reply["code"].as_str().unwrap_or(""))
                {
                    wrong.push(format!("{frame} as {caller:?}: refused with {reply}"));
                }
            }
            // Typing and read receipts need a joined room.
            if !may {
                for frame in [
                    json!({"type": "typing", "room": room}),
                    json!({"type": "read", "room": room, "seq": 1}),
                ] {
                    let reply = ws.request(frame.clone(), "never").await;
                    if reply["code"] != "forbidden" {
                        wrong.push(format!("{frame} as {caller:?}: {reply}"));
                    }
                }
                // Nor may an outsider change what others wrote.
                for frame in [
                    json!({"type": "edit", "room": room, "seq": 1, "body": "x"}),
                    json!({"type": "delete", "room": room, "seq": 1}),
                ] {
                    let reply = ws.request(frame.clone(), "ack").await;
                    if !["forbidden", "not_found"].contains(&reply["code"].as_str().unwrap_or("")) {
                        wrong.push(format!("{frame} as {caller:?}: {reply}"));
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "access matrix violations:\n{}",
        wrong.join("\n")
    );
}

/// A query value, percent-encoded.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}
