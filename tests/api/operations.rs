//! What operators and integrators read: the OpenAPI document matches the
//! routes the server really has, and /metrics exposes the promised series.

use serde_json::Value;

use crate::helpers::{Backend, TestServer, TestUser, WsClient, INTERNAL_API_KEY};

/// Every route of the server, with sample path values.
const ROUTES: &[(&str, &str, &str)] = &[
    ("get", "/healthz", "/healthz"),
    ("get", "/readyz", "/readyz"),
    ("get", "/metrics", "/metrics"),
    ("get", "/v1/openapi.json", "/v1/openapi.json"),
    (
        "get",
        "/v1/rooms/{room}/messages",
        "/v1/rooms/booking:x/messages",
    ),
    ("get", "/v1/notifications", "/v1/notifications"),
    (
        "post",
        "/v1/notifications/{id}/read",
        "/v1/notifications/x/read",
    ),
    (
        "post",
        "/v1/notifications/read-all",
        "/v1/notifications/read-all",
    ),
    ("get", "/v1/me/unread", "/v1/me/unread"),
    ("get", "/v1/me/preferences", "/v1/me/preferences"),
    ("put", "/v1/me/preferences", "/v1/me/preferences"),
    (
        "get",
        "/v1/push/vapid-public-key",
        "/v1/push/vapid-public-key",
    ),
    (
        "get",
        "/v1/me/push-subscriptions",
        "/v1/me/push-subscriptions",
    ),
    (
        "post",
        "/v1/me/push-subscriptions",
        "/v1/me/push-subscriptions",
    ),
    (
        "delete",
        "/v1/me/push-subscriptions",
        "/v1/me/push-subscriptions?endpoint=x",
    ),
    ("get", "/v1/me/export", "/v1/me/export"),
    ("delete", "/v1/me", "/v1/me"),
    ("get", "/v1/unsubscribe", "/v1/unsubscribe?token=x"),
    ("post", "/v1/unsubscribe", "/v1/unsubscribe?token=x"),
    (
        "post",
        "/v1/support/conversations",
        "/v1/support/conversations",
    ),
    (
        "get",
        "/v1/admin/support/conversations",
        "/v1/admin/support/conversations",
    ),
    (
        "get",
        "/v1/admin/support/conversations/{id}",
        "/v1/admin/support/conversations/x",
    ),
    (
        "post",
        "/v1/admin/support/conversations/{id}/takeover",
        "/v1/admin/support/conversations/x/takeover",
    ),
    ("put", "/v1/internal/users", "/v1/internal/users"),
    (
        "post",
        "/v1/internal/announcements",
        "/v1/internal/announcements",
    ),
    (
        "get",
        "/v1/internal/announcements/{id}",
        "/v1/internal/announcements/x",
    ),
    ("put", "/v1/internal/users/{id}", "/v1/internal/users/x"),
    (
        "post",
        "/v1/internal/users/{id}/disconnect",
        "/v1/internal/users/x/disconnect",
    ),
    ("get", "/v1/internal/users/{id}", "/v1/internal/users/x"),
    ("delete", "/v1/internal/users/{id}", "/v1/internal/users/x"),
    (
        "get",
        "/v1/internal/users/{id}/bookings",
        "/v1/internal/users/x/bookings",
    ),
    (
        "put",
        "/v1/internal/bookings/{id}",
        "/v1/internal/bookings/x",
    ),
    (
        "patch",
        "/v1/internal/bookings/{id}",
        "/v1/internal/bookings/x",
    ),
    (
        "get",
        "/v1/internal/bookings/{id}",
        "/v1/internal/bookings/x",
    ),
    (
        "post",
        "/v1/internal/notifications",
        "/v1/internal/notifications",
    ),
    (
        "post",
        "/v1/internal/rooms/{room}/messages",
        "/v1/internal/rooms/booking:x/messages",
    ),
    ("post", "/v1/webhooks/stripe", "/v1/webhooks/stripe"),
];

/// The document lists every route, and every listed route exists (a route
/// the server lacks answers 404 "no route for ...").
#[tokio::test]
async fn the_openapi_document_matches_the_routes() {
    let backend = Backend::sqlite();
    let server = TestServer::spawn(&backend, &[]);
    let doc: Value = server
        .http_client()
        .get(server.http("/v1/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let documented: Vec<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.clone(), path.clone()))
        })
        .filter(|(_, path)| path != "/v1/ws")
        .collect();
    for (method, template, _) in ROUTES {
        assert!(
            documented.contains(&(method.to_string(), template.to_string())),
            "{method} {template} is not in docs/openapi.json"
        );
    }
    assert_eq!(
        documented.len(),
        ROUTES.len(),
        "the document lists routes the server lacks: {documented:?}"
    );

    let ava = TestUser::client("Ava");
    for (method, template, sample) in ROUTES {
        let url = server.http(sample);
        let client = server.http_client();
        let request = match *method {
            "get" => client.get(url),
            "post" => client.post(url),
            "put" => client.put(url),
            "patch" => client.patch(url),
            _ => client.delete(url),
        };
        let bearer = if sample.starts_with("/v1/internal") {
            INTERNAL_API_KEY
        } else {
            &ava.token
        };
        let response = request.bearer_auth(bearer).send().await.unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert!(
            !(status == 404 && body.contains("no route for")),
            "{method} {template}: the server has no such route"
        );
    }
}

/// The series an operator's dashboard is built on.
#[tokio::test]
async fn metrics_expose_connections_rooms_frames_and_latencies() {
    let backend = Backend::sqlite();
    let server = TestServer::spawn(&backend, &[]);
    let ava = TestUser::client("Ava");
    let sam = TestUser::studio_owner("Sam");
    let room = server.open_booking(&ava, &[&sam]).await;
    let mut ava_ws = WsClient::connect_as(&server, &ava).await;
    ava_ws.join(&room, None).await;
    ava_ws.send_msg(&room, "m1", "hello").await;
    // The ack goes out before the store's counters move (and the fan-out
    // is timed after it): wait for them rather than race them.
    server
        .wait_for_metric(
            "mixroom_messages_stored_total",
            1.0,
            std::time::Duration::from_secs(5),
        )
        .await;
    server
        .wait_for_metric(
            "mixroom_fanout_seconds_count",
            1.0,
            std::time::Duration::from_secs(5),
        )
        .await;
    let text = server
        .http_client()
        .get(server.http("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "mixroom_ws_sessions 1",
        "mixroom_rooms_active 1",
        "mixroom_ws_frames_in_total",
        "mixroom_ws_frames_out_total",
        "mixroom_messages_stored_total 1",
        "mixroom_store_commit_seconds_bucket",
        "mixroom_fanout_seconds_count 1",
        "mixroom_email_outbox_queued",
        "mixroom_emails_sent_total",
        "mixroom_emails_failed_total",
        "mixroom_agent_answer_seconds",
        "mixroom_agent_tokens_total",
        "mixroom_rate_limited_total",
        // What an operator needs beside the product's own series.
        "mixroom_build_info{version=\"",
        "mixroom_http_requests_total{method=\"PUT\",route=\"/v1/internal/bookings/{id}\",status=\"200\"} 1",
        "mixroom_http_request_seconds_bucket{route=\"/v1/internal/users/{id}\"",
        "mixroom_db_pool_connections{state=\"idle\"}",
        "mixroom_db_pool_waiting 0",
        "mixroom_database_up 1",
        "process_open_fds",
        "process_max_fds",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(text.contains(series), "/metrics lacks `{series}`:\n{text}");
    }
    assert!(
        !text.contains("mixroom_broker_connected"),
        "one node has no Redis link to report"
    );
}
