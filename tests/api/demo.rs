//! The demo page (`server.demo`): served with its helper routes by the
//! embedded default, absent (404) when turned off as in production.

use serde_json::{json, Value};

use crate::helpers::{Backend, TestServer, WsClient};

async fn post_json(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let response = server
        .http_client()
        .post(server.http(path))
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// The page and its bundle are served; a demo session's token logs in as
/// the demo user, who may join the demo booking; sessions are idempotent
/// and the booking keeps the status the page gave it.
#[tokio::test]
async fn demo_page_and_sessions_when_on() {
    let backend = Backend::sqlite();
    let server = TestServer::spawn(&backend, &[("MIXROOM__SERVER__DEMO", "true")]);
    let http = server.http_client();

    let page = http.get(server.http("/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("/demo/app.js"));
    let bundle = http.get(server.http("/demo/app.js")).send().await.unwrap();
    assert_eq!(bundle.status(), 200);
    assert!(bundle.text().await.unwrap().contains("MixroomClient"));
    let worker = http.get(server.http("/demo-sw.js")).send().await.unwrap();
    assert_eq!(worker.status(), 200);
    assert!(worker.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert!(worker.text().await.unwrap().contains("notificationclick"));

    let (status, ava) = post_json(&server, "/demo/session", json!({"user": "ava"})).await;
    assert_eq!(status, 200, "{ava}");
    assert_eq!(ava["user"]["name"], "Ava");
    assert_eq!(ava["booking"]["status"], "confirmed");
    let room = ava["booking"]["room"].as_str().unwrap().to_owned();

    let mut socket = WsClient::connect(&server).await;
    let welcome = socket.authenticate(ava["token"].as_str().unwrap()).await;
    assert_eq!(welcome["user_id"], ava["user"]["id"]);
    let joined = socket.join(&room, None).await;
    assert_eq!(joined["members"].as_array().unwrap().len(), 3, "{joined}");

    let (status, _) = post_json(&server, "/demo/booking", json!({"status": "paid"})).await;
    assert_eq!(status, 200);
    let update = socket.recv_type("booking.updated").await;
    assert_eq!(update["status"], "paid");
    let (_, sam) = post_json(&server, "/demo/session", json!({"user": "sam"})).await;
    assert_eq!(
        sam["booking"]["status"], "paid",
        "a new session keeps the status"
    );

    // The backend panel plays Stripe: a partial refund, then another.
    for refunded in ["€25.00", "€50.00"] {
        let (status, body) =
            post_json(&server, "/demo/payment", json!({"event": "partial_refund"})).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "partially_refunded");
        let update = socket.recv_type("booking.updated").await;
        assert_eq!(update["status"], "partially_refunded", "{update}");
        assert_eq!(
            update["reason"],
            format!("Stripe: {refunded} of €100.00 refunded"),
            "{update}"
        );
    }

    let (status, _) = post_json(&server, "/demo/session", json!({"user": "mallory"})).await;
    assert_eq!(status, 422);
    let (status, _) = post_json(&server, "/demo/booking", json!({"status": "lost"})).await;
    assert_eq!(status, 422);
}

/// Production turns the demo off: no page, and above all no token minting.
#[tokio::test]
async fn demo_routes_are_absent_when_off() {
    let backend = Backend::sqlite();
    let server = TestServer::spawn(&backend, &[("MIXROOM__SERVER__DEMO", "false")]);
    let http = server.http_client();
    assert_eq!(
        http.get(server.http("/")).send().await.unwrap().status(),
        404
    );
    assert_eq!(
        http.get(server.http("/demo/app.js"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let (status, _) = post_json(&server, "/demo/session", json!({"user": "ava"})).await;
    assert_eq!(status, 404);
    let (status, _) = post_json(&server, "/demo/booking", json!({"status": "paid"})).await;
    assert_eq!(status, 404);
    let (status, _) = post_json(&server, "/demo/payment", json!({"event": "partial_refund"})).await;
    assert_eq!(status, 404);
}
