//! Stories of clients and callers that get things wrong: each gets the
//! contract's answer, and nobody else's session or stored history suffers.

use serde_json::{json, Value};

use crate::helpers::{
    claims, now_secs, seqs, sign, Backend, TestServer, TestUser, WsClient, INTERNAL_API_KEY,
};

both_backends!(
    malformed_json,
    unknown_frame_type,
    send_without_body,
    oversized_body,
    invalid_room_name,
    oversized_frame,
);

/// Ava in her booking room with one acknowledged message: every bad frame
/// below must leave this session and the stored history intact.
struct Session {
    server: TestServer,
    ava: TestUser,
    ws: WsClient,
    room: String,
    acked: Vec<Value>,
}

impl Session {
    async fn start(backend: &Backend, extra_env: &[(&str, &str)]) -> Session {
        let server = TestServer::spawn(backend, extra_env);
        let ava = TestUser::client("Ava");
        let sam = TestUser::studio_owner("Sam");
        let room = server.open_booking(&ava, &[&sam]).await;
        let mut ws = WsClient::connect_as(&server, &ava).await;
        ws.join(&room, None).await;
        let first = ws.send_msg(&room, "before", "All good so far").await;
        Session {
            server,
            ava,
            ws,
            room,
            acked: vec![first],
        }
    }

    /// Sends a valid message and records its ack.
    async fn send_valid(&mut self, body: &str) -> Value {
        let client_id = format!("valid-{}", self.acked.len() + 1);
        let ack = self.ws.send_msg(&self.room, &client_id, body).await;
        assert_eq!(ack["seq"], self.acked.len() + 1, "{ack}");
        self.acked.push(ack.clone());
        ack
    }

    /// The socket still answers, a valid send still works, and every
    /// message acked so far is still in the history.
    async fn assert_still_serving(&mut self) {
        self.ws.ping().await;
        self.send_valid("Still here").await;
        let history = self
            .server
            .history_over_http(&self.ava, &self.room, None, None)
            .await;
        let expected: Vec<i64> = (1..=self.acked.len() as i64).rev().collect();
        assert_eq!(seqs(&history), expected, "{history}");
        for (message, ack) in history["messages"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .zip(&self.acked)
        {
            assert_eq!(message["id"], ack["id"], "{message}");
        }
    }
}

/// The error frame a bad frame got, with its code.
fn assert_error(reply: &Value, code: &str) {
    assert_eq!(reply["type"], "error", "expected a `{code}` error: {reply}");
    assert_eq!(reply["code"], code, "{reply}");
}

async fn malformed_json(backend: Backend) {
    let mut session = Session::start(&backend, &[]).await;
    session.ws.send_text(r#"{"type":"#).await;
    let error = session.ws.recv_type("error").await;
    assert_error(&error, "invalid");
    session.assert_still_serving().await;
}

async fn unknown_frame_type(backend: Backend) {
    let mut session = Session::start(&backend, &[]).await;
    let reply = session
        .ws
        .request(json!({"type": "dance", "room": session.room}), "dance")
        .await;
    assert_error(&reply, "invalid");
    session.assert_still_serving().await;
}

async fn send_without_body(backend: Backend) {
    let mut session = Session::start(&backend, &[]).await;
    let frame = json!({"type": "send", "room": session.room, "client_id": "no-body"});
    let reply = session.ws.request(frame, "ack").await;
    assert_error(&reply, "invalid");
    session.assert_still_serving().await;
}

/// `max_message_bytes` counts UTF-8 bytes: 1000 bytes pass, 600 two-byte
/// characters (1200 bytes) do not.
async fn oversized_body(backend: Backend) {
    let limits = [("MIXROOM__SERVER__MAX_MESSAGE_BYTES", "1000")];
    let mut session = Session::start(&backend, &limits).await;
    session.send_valid(&"x".repeat(1000)).await;

    let frame = json!({
        "type": "send", "room": session.room, "client_id": "too-long", "body": "é".repeat(600),
    });
    let reply = session.ws.request(frame, "ack").await;
    assert_error(&reply, "too_large");
    session.assert_still_serving().await;
}

async fn invalid_room_name(backend: Backend) {
    let mut session = Session::start(&backend, &[]).await;
    let reply = session
        .ws
        .request(json!({"type": "join", "room": "nonsense"}), "joined")
        .await;
    assert_error(&reply, "invalid");
    session.assert_still_serving().await;
}

/// A frame over `max_frame_bytes` closes that socket with 1009; the server
/// and the history are fine, and Ava can reconnect.
async fn oversized_frame(backend: Backend) {
    let limits = [
        ("MIXROOM__SERVER__MAX_FRAME_BYTES", "4096"),
        ("MIXROOM__SERVER__MAX_MESSAGE_BYTES", "1000"),
    ];
    let mut session = Session::start(&backend, &limits).await;
    let frame = json!({
        "type": "send", "room": session.room, "client_id": "huge", "body": "x".repeat(10 * 1024),
    });
    session.ws.send_text(&frame.to_string()).await;
    let (code, reason) = session.ws.expect_close().await;
    assert_eq!(code, 1009, "closed with {code} {reason:?}");

    session.ws = WsClient::connect_as(&session.server, &session.ava).await;
    let joined = session.ws.join(&session.room, None).await;
    assert_eq!(joined["last_seq"], 1, "the huge frame was stored: {joined}");
    session.assert_still_serving().await;
}

/// A socket that never authenticates is closed with 4008.
#[tokio::test]
async fn no_auth_frame_in_time() {
    let backend = Backend::sqlite();
    let server = TestServer::spawn(&backend, &[("MIXROOM__SERVER__AUTH_TIMEOUT_MS", "500")]);
    let mut ws = WsClient::connect(&server).await;
    let (code, reason) = ws.expect_close().await;
    assert_eq!(code, 4008, "closed with {code} {reason:?}");
}

/// Garbage, a foreign signature, an expired token and a token for another
/// audience are each refused with close 4001.
#[tokio::test]
async fn bad_tokens_close_with_4001() {
    let backend = Backend::sqlite();
    let server = TestServer::spawn(&backend, &[]);
    let mallory = TestUser::client("Mallory");
    let mut wrong_audience = claims(&mallory.id, "client", "Mallory", now_secs() + 3600);
    wrong_audience.aud = "anon".to_owned();
    let bad_tokens = [
        ("garbage", "not-a-jwt".to_owned()),
        (
            "signed with another secret",
            sign(
                &claims(&mallory.id, "client", "Mallory", now_secs() + 3600),
                "some-other-projects-secret-0123456789abcdef",
            ),
        ),
        (
            "expired an hour ago",
            mallory.token_expiring_at(now_secs() - 3600),
        ),
        (
            "for another audience",
            sign(&wrong_audience, crate::helpers::JWT_SECRET),
        ),
    ];
    for (what, token) in bad_tokens {
        let mut ws = WsClient::connect(&server).await;
        ws.send_json(json!({"type": "auth", "token": token})).await;
        let (code, reason) = ws.expect_close().await;
        assert_eq!(code, 4001, "token {what}: closed with {code} {reason:?}");
    }
}

/// Before `auth`, anything else (a valid frame or junk) is answered
/// `unauthorized` and closes the socket with 4001: an anonymous socket
/// cannot make the server work until the auth deadline.
#[tokio::test]
async fn frame_before_auth_closes_the_socket() {
    let backend = Backend::sqlite();
    let server = TestServer::spawn(&backend, &[]);
    let ava = TestUser::client("Ava");
    server.put_user(&ava).await;

    for early in [
        json!({"type": "ping", "ref": "early"}).to_string(),
        "{junk".to_owned(),
    ] {
        let mut ws = WsClient::connect(&server).await;
        ws.send_text(&early).await;
        for _ in 0..50 {
            ws.send_text(&early).await;
        }
        let reply = ws.recv().await;
        assert_error(&reply, "unauthorized");
        if early.starts_with('{') && early.contains("ref") {
            assert_eq!(reply["ref"], "early", "{reply}");
        }
        let (code, reason) = ws.expect_close().await;
        assert_eq!(code, 4001, "{early}: closed with {code} {reason:?}");
    }
    WsClient::connect_as(&server, &ava).await.ping().await;
}

/// Only the backend's key opens the internal routes: no key, a wrong key
/// and even an admin's user token get 401.
#[tokio::test]
async fn internal_routes_need_the_internal_key() {
    let backend = Backend::sqlite();
    let server = TestServer::spawn(&backend, &[]);
    let ava = TestUser::client("Ava");
    let nia = TestUser::admin("Nia");
    let user_body = json!({"email": ava.email(), "name": ava.name, "role": ava.role});
    let booking_body = json!({
        "client_id": ava.id, "provider_ids": [], "status": "confirmed",
        "title": "Session", "starts_at": "2026-12-01T10:00:00Z",
    });
    let routes = [
        (format!("/v1/internal/users/{}", ava.id), user_body),
        (
            format!("/v1/internal/bookings/{}", uuid::Uuid::new_v4()),
            booking_body,
        ),
    ];
    let credentials = [
        ("no key", None),
        ("a wrong key", Some("not-the-internal-key")),
        ("an admin's user token", Some(nia.token.as_str())),
    ];
    for (path, body) in &routes {
        for (what, bearer) in credentials {
            let mut request = server.http_client().put(server.http(path)).json(body);
            if let Some(bearer) = bearer {
                request = request.bearer_auth(bearer);
            }
            let status = request.send().await.expect("PUT internal route").status();
            assert_eq!(status, 401, "PUT {path} with {what}");
        }
    }
}

/// A booking mirror that is not JSON is invalid input (400 or 422).
#[tokio::test]
async fn booking_mirror_rejects_non_json() {
    let backend = Backend::sqlite();
    let server = TestServer::spawn(&backend, &[]);
    let path = format!("/v1/internal/bookings/{}", uuid::Uuid::new_v4());
    let response = server
        .http_client()
        .put(server.http(&path))
        .bearer_auth(INTERNAL_API_KEY)
        .header("content-type", "application/json")
        .body("this is not json")
        .send()
        .await
        .expect("PUT booking");
    let status = response.status();
    assert!(
        status == 400 || status == 422,
        "non-JSON booking answered {status}"
    );
}

/// The history route wants a valid user token.
#[tokio::test]
async fn history_route_needs_a_token() {
    let backend = Backend::sqlite();
    let session = Session::start(&backend, &[]).await;
    let url = session
        .server
        .http(&format!("/v1/rooms/{}/messages", session.room));
    let client = session.server.http_client();

    let anonymous = client.get(&url).send().await.expect("GET history");
    assert_eq!(anonymous.status(), 401, "history without a token");
    let garbage = client
        .get(&url)
        .bearer_auth("not-a-jwt")
        .send()
        .await
        .expect("GET history");
    assert_eq!(garbage.status(), 401, "history with a garbage token");
}
