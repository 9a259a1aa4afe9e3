//! What the Mixroom backend and the web app do over HTTP: mirror users and
//! bookings through the internal API, open support conversations, export
//! data, read history; and what an operator reads (`/metrics`, `/readyz`).

use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;
use uuid::Uuid;

use super::{TestServer, TestUser, INTERNAL_API_KEY};

impl TestServer {
    /// A sample of `/metrics` by its full name (labels included, e.g.
    /// `mixroom_rate_limited_total{limit="http"}`); 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self
            .http
            .get(self.http("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
            .map_or(0.0, |value| value.trim().parse().expect("a metric value"))
    }

    /// Polls `/metrics` until `sample` equals `expected`.
    pub async fn wait_for_metric(&self, sample: &str, expected: f64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let value = self.metric(sample).await;
            if value == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{sample} stayed {value}, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET path` as `user` (their bearer token); the JSON answer.
    pub async fn get_as(&self, user: &TestUser, path: &str) -> Value {
        self.http
            .get(self.http(path))
            .bearer_auth(&user.token)
            .send()
            .await
            .unwrap_or_else(|error| panic!("GET {path}: {error}"))
            .json()
            .await
            .unwrap_or_else(|error| panic!("GET {path}: not JSON: {error}"))
    }

    /// `PUT /v1/internal/users/{id}`, as the Mixroom backend mirrors a profile.
    pub async fn put_user(&self, user: &TestUser) {
        let response = self
            .http
            .put(self.http(&format!("/v1/internal/users/{}", user.id)))
            .bearer_auth(INTERNAL_API_KEY)
            .json(&json!({"email": user.email(), "name": user.name, "role": user.role}))
            .send()
            .await
            .expect("PUT /v1/internal/users/{id}");
        assert_success(response, "PUT /v1/internal/users/{id}").await;
    }

    /// `PUT /v1/internal/bookings/{id}`, as the Mixroom backend mirrors a booking.
    pub async fn put_booking(
        &self,
        booking_id: &str,
        client: &TestUser,
        providers: &[&TestUser],
        status: &str,
    ) {
        let provider_ids: Vec<&str> = providers.iter().map(|p| p.id.as_str()).collect();
        let response = self
            .http
            .put(self.http(&format!("/v1/internal/bookings/{booking_id}")))
            .bearer_auth(INTERNAL_API_KEY)
            .json(&json!({
                "client_id": client.id,
                "provider_ids": provider_ids,
                "status": status,
                "title": "Session",
                "starts_at": "2026-12-01T10:00:00Z",
            }))
            .send()
            .await
            .expect("PUT /v1/internal/bookings/{id}");
        assert_success(response, "PUT /v1/internal/bookings/{id}").await;
    }

    /// Mirrors the users and a confirmed booking between them; returns its room.
    pub async fn open_booking(&self, client: &TestUser, providers: &[&TestUser]) -> String {
        self.put_user(client).await;
        for provider in providers {
            self.put_user(provider).await;
        }
        let booking_id = Uuid::new_v4().to_string();
        self.put_booking(&booking_id, client, providers, "confirmed")
            .await;
        format!("booking:{booking_id}")
    }

    /// `POST /v1/support/conversations` as `user`; returns its room
    /// (`support:<id>`).
    pub async fn open_support_conversation(&self, user: &TestUser) -> String {
        let response = self
            .http
            .post(self.http("/v1/support/conversations"))
            .bearer_auth(&user.token)
            .send()
            .await
            .expect("POST /v1/support/conversations");
        assert_eq!(response.status(), 201, "opening a support conversation");
        let body: Value = response.json().await.expect("JSON");
        let id = body["id"].as_str().expect("an id");
        assert_eq!(body["room"], format!("support:{id}"));
        format!("support:{id}")
    }

    /// `GET /v1/me/export` as `user`, asserting it answered 200.
    pub async fn export(&self, user: &TestUser) -> Value {
        let response = self
            .http
            .get(self.http("/v1/me/export"))
            .bearer_auth(&user.token)
            .send()
            .await
            .expect("GET /v1/me/export");
        assert_eq!(response.status(), 200, "GET /v1/me/export");
        response.json().await.expect("the export is JSON")
    }

    /// `GET /readyz`: its status and body.
    pub async fn readiness(&self) -> (u16, Value) {
        let response = self
            .http
            .get(self.http("/readyz"))
            .send()
            .await
            .expect("GET /readyz");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    /// `GET /v1/rooms/{room}/messages` as `user`, whatever the answer.
    pub async fn get_messages(
        &self,
        user: &TestUser,
        room: &str,
        before: Option<i64>,
        limit: Option<u32>,
    ) -> reqwest::Response {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(before) = before {
            query.push(("before", before.to_string()));
        }
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        self.http
            .get(self.http(&format!("/v1/rooms/{room}/messages")))
            .bearer_auth(&user.token)
            .query(&query)
            .send()
            .await
            .expect("GET /v1/rooms/{room}/messages")
    }

    /// The history route's JSON, asserting it answered 200.
    pub async fn history_over_http(
        &self,
        user: &TestUser,
        room: &str,
        before: Option<i64>,
        limit: Option<u32>,
    ) -> Value {
        let response = self.get_messages(user, room, before, limit).await;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(
            status, 200,
            "GET /v1/rooms/{room}/messages as {}: {body}",
            user.name
        );
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("history is not JSON ({e}): {body}"))
    }
}

async fn assert_success(response: reqwest::Response, what: &str) {
    let status = response.status();
    if !status.is_success() {
        let body = response.text().await.unwrap_or_default();
        panic!("{what} answered {status}: {body}");
    }
}
