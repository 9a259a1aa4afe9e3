//! A stand-in for Resend's HTTP API on 127.0.0.1 (an actix-web server on a
//! thread of its own). It checks every request against Resend's documented
//! format and records what it finds wrong as a violation:
//! - `POST /emails` with one email object, `POST /emails/batch` with an
//!   array of 1 to 100 (no `attachments` or `scheduled_at` in a batch);
//! - `Authorization: Bearer re_...`, `Content-Type: application/json`, an
//!   `Idempotency-Key` of 1 to 256 characters (the server promises one);
//! - each email: `from`, `to` (a string or an array of 1 to 50 addresses),
//!   `subject`, and both `html` and `text` (the server promises both);
//!   `headers` an object of strings; no fields Resend does not know;
//! - at most 2 requests in any second (Resend's default rate limit).
//!
//! It answers like Resend: `{"id"}` or `{"data":[{"id"}..]}`; the same
//! Idempotency-Key with the same body gets the first answer again and sends
//! nothing; errors are `{"statusCode","name","message"}`. Scripted answers
//! come first: a 429 with `Retry-After` (and Resend's `ratelimit-*`
//! headers), a 500, or an accept whose answer is slow.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Map, Value};

const API_KEY_PREFIX: &str = "re_";
/// Resend's default limit; a little slack for timer jitter.
const MAX_REQUESTS_PER_SECOND: usize = 2;
const RATE_WINDOW: Duration = Duration::from_millis(900);
const EMAIL_FIELDS: &[&str] = &[
    "from",
    "to",
    "subject",
    "html",
    "text",
    "bcc",
    "cc",
    "reply_to",
    "headers",
    "attachments",
    "tags",
    "scheduled_at",
    "template",
    "topic_id",
];

/// How the next request is answered, before any checks of its content.
#[derive(Debug, Clone)]
pub enum Scripted {
    /// 429 `rate_limit_exceeded` with `Retry-After: secs`.
    RateLimited { retry_after_secs: u64 },
    /// 500 `internal_server_error`; nothing is sent.
    ServerError,
    /// Accepted and recorded at once, answered only after this long.
    SlowAccept(Duration),
}

/// One request, whatever came of it.
#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    pub at: Instant,
    pub path: String,
    pub idempotency_key: Option<String>,
    pub status: u16,
    /// Answered from the idempotency store: nothing new was sent.
    pub replayed: bool,
}

/// One email Resend would have delivered.
#[derive(Debug, Clone)]
pub struct Email {
    pub at: Instant,
    pub idempotency_key: String,
    /// `/emails` or `/emails/batch`.
    pub path: String,
    pub from: String,
    pub to: Vec<String>,
    pub subject: String,
    pub html: String,
    pub text: String,
    pub headers: Map<String, Value>,
}

#[derive(Default)]
struct State {
    script: VecDeque<Scripted>,
    requests: Vec<ReceivedRequest>,
    emails: Vec<Email>,
    violations: Vec<String>,
    /// Idempotency-Key → (request body, status, answer).
    answered: HashMap<String, (Value, u16, Value)>,
}

type Shared = Arc<Mutex<State>>;

pub struct FakeResend {
    addr: SocketAddr,
    state: Shared,
    server: actix_web::dev::ServerHandle,
}

impl FakeResend {
    pub fn start() -> FakeResend {
        let state: Shared = Arc::new(Mutex::new(State::default()));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let server_state = state.clone();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let data = web::Data::new(server_state);
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
                        .default_service(web::to(answer))
                })
                .workers(1)
                .disable_signals()
                .bind(("127.0.0.1", 0))
                .expect("bind the fake Resend server");
                let addr = server.addrs()[0];
                let server = server.run();
                started_tx
                    .send((addr, server.handle()))
                    .expect("report the fake's address");
                let _ = server.await;
            });
        });
        let (addr, server) = started_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the fake Resend server did not start");
        FakeResend {
            addr,
            state,
            server,
        }
    }

    /// What `email.resend_base_url` must be.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers for the next requests, in order.
    pub fn script(&self, answers: Vec<Scripted>) {
        self.state.lock().unwrap().script.extend(answers);
    }

    pub fn emails(&self) -> Vec<Email> {
        self.state.lock().unwrap().emails.clone()
    }

    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn emails_to(&self, address: &str) -> Vec<Email> {
        self.emails()
            .into_iter()
            .filter(|e| e.to.iter().any(|to| to == address))
            .collect()
    }

    fn report(&self) -> String {
        let state = self.state.lock().unwrap();
        let requests: Vec<String> = state
            .requests
            .iter()
            .map(|r| format!("{} {} key={:?}", r.path, r.status, r.idempotency_key))
            .collect();
        let emails: Vec<String> = state
            .emails
            .iter()
            .map(|e| format!("to {:?}: {}", e.to, e.subject))
            .collect();
        format!(
            "requests: {requests:#?}\nemails: {emails:#?}\nviolations: {:#?}",
            state.violations
        )
    }

    /// Waits until at least `count` emails went to `address`; returns them.
    pub async fn wait_for_emails_to(
        &self,
        address: &str,
        count: usize,
        within: Duration,
    ) -> Vec<Email> {
        let deadline = Instant::now() + within;
        loop {
            let emails = self.emails_to(address);
            if emails.len() >= count {
                return emails;
            }
            if Instant::now() > deadline {
                panic!(
                    "expected {count} email(s) to {address} within {within:?}, got {}\n{}",
                    emails.len(),
                    self.report()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asserts that no more than `count` emails in all arrive until `until`.
    pub async fn expect_no_more_emails(&self, count: usize, until: Instant) {
        loop {
            let sent = self.emails().len();
            assert!(
                sent <= count,
                "expected no more than {count} email(s), got {sent}\n{}",
                self.report()
            );
            if Instant::now() >= until {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn assert_no_violations(&self) {
        let violations = self.state.lock().unwrap().violations.clone();
        assert!(
            violations.is_empty(),
            "requests did not follow Resend's API:\n{}",
            self.report()
        );
    }
}

impl Drop for FakeResend {
    fn drop(&mut self) {
        // The command is sent at once; nobody needs to wait for the stop.
        drop(self.server.stop(false));
    }
}

fn error_body(status: u16, name: &str, message: &str) -> Value {
    json!({"statusCode": status, "name": name, "message": message})
}

fn respond(status: u16, body: &Value) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .content_type("application/json")
        .body(body.to_string())
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// What is wrong with one email object, by Resend's rules.
fn check_email(email: &Value, in_batch: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(object) = email.as_object() else {
        return vec![format!("an email must be an object, got {email}")];
    };
    for field in object.keys() {
        if !EMAIL_FIELDS.contains(&field.as_str()) {
            problems.push(format!("unknown field `{field}`"));
        }
    }
    if in_batch {
        for field in ["attachments", "scheduled_at"] {
            if object.contains_key(field) {
                problems.push(format!("`{field}` is not supported in batch emails"));
            }
        }
    }
    for field in ["from", "subject", "html", "text"] {
        match object.get(field) {
            Some(Value::String(s)) if !s.trim().is_empty() => {}
            other => problems.push(format!(
                "`{field}` must be a non-empty string, got {other:?}"
            )),
        }
    }
    if let Some(Value::String(from)) = object.get("from") {
        if !from.contains('@') {
            problems.push(format!("`from` is not an address: {from}"));
        }
    }
    let to: Vec<&Value> = match object.get("to") {
        Some(Value::String(_)) => vec![&object["to"]],
        Some(Value::Array(list)) => list.iter().collect(),
        other => {
            problems.push(format!("`to` must be a string or an array, got {other:?}"));
            Vec::new()
        }
    };
    if object.contains_key("to") && !(1..=50).contains(&to.len()) {
        problems.push(format!(
            "`to` must have 1 to 50 addresses, has {}",
            to.len()
        ));
    }
    for address in to {
        if !address.as_str().is_some_and(|a| a.contains('@')) {
            problems.push(format!(
                "`to` holds something that is not an address: {address}"
            ));
        }
    }
    if let Some(headers) = object.get("headers") {
        match headers.as_object() {
            Some(map) if map.values().all(Value::is_string) => {}
            _ => problems.push(format!(
                "`headers` must map names to strings, got {headers}"
            )),
        }
    }
    problems
}

fn recipients(email: &Value) -> Vec<String> {
    match &email["to"] {
        Value::String(one) => vec![one.clone()],
        Value::Array(list) => list
            .iter()
            .filter_map(|a| a.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

fn text(email: &Value, field: &str) -> String {
    email[field].as_str().unwrap_or_default().to_owned()
}

async fn answer(req: HttpRequest, body: web::Bytes, state: web::Data<Shared>) -> HttpResponse {
    let now = Instant::now();
    let path = req.path().to_owned();
    let key = header(&req, "idempotency-key").map(str::to_owned);
    let (status, response, slow) = {
        let mut state = state.lock().unwrap();
        let (status, response, slow) = judge(&mut state, &req, &path, key.as_deref(), &body, now);
        state.requests.push(ReceivedRequest {
            at: now,
            path: path.clone(),
            idempotency_key: key.clone(),
            status: status.0,
            replayed: status.1,
        });
        let recent = state
            .requests
            .iter()
            .filter(|r| now.duration_since(r.at) < RATE_WINDOW)
            .count();
        if recent > MAX_REQUESTS_PER_SECOND {
            state.violations.push(format!(
                "{recent} requests within {RATE_WINDOW:?}: over Resend's {MAX_REQUESTS_PER_SECOND} per second"
            ));
        }
        (status.0, response, slow)
    };
    if let Some(delay) = slow {
        actix_web::rt::time::sleep(delay).await;
    }
    let mut reply = respond(status, &response.0);
    for (name, value) in response.1 {
        reply.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static(name),
            actix_web::http::header::HeaderValue::from_str(&value).unwrap(),
        );
    }
    reply
}

type Answer = (
    (u16, bool),
    (Value, Vec<(&'static str, String)>),
    Option<Duration>,
);

/// Decides the answer to one request and records what it sends.
fn judge(
    state: &mut State,
    req: &HttpRequest,
    path: &str,
    key: Option<&str>,
    body: &[u8],
    now: Instant,
) -> Answer {
    let plain = |status: u16, body: Value| ((status, false), (body, Vec::new()), None);
    let batch = match (req.method().as_str(), path) {
        ("POST", "/emails") => false,
        ("POST", "/emails/batch") => true,
        (method, _) => {
            state
                .violations
                .push(format!("{method} {path} is not an email endpoint"));
            return plain(
                404,
                error_body(404, "not_found", "The requested endpoint does not exist."),
            );
        }
    };
    match header(req, "authorization").and_then(|a| a.strip_prefix("Bearer ")) {
        Some(token) if token.starts_with(API_KEY_PREFIX) => {}
        other => {
            state
                .violations
                .push(format!("Authorization is not `Bearer re_...`: {other:?}"));
            return plain(
                401,
                error_body(
                    401,
                    "missing_api_key",
                    "Missing API key in the authorization header.",
                ),
            );
        }
    }
    if !header(req, "content-type").is_some_and(|c| c.starts_with("application/json")) {
        state
            .violations
            .push(format!("Content-Type is {:?}", header(req, "content-type")));
    }
    let Some(key) = key.filter(|k| (1..=256).contains(&k.len())) else {
        state.violations.push(format!(
            "Idempotency-Key missing or not 1 to 256 characters: {key:?}"
        ));
        return plain(
            400,
            error_body(
                400,
                "invalid_idempotency_key",
                "The key must be between 1-256 chars.",
            ),
        );
    };
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(error) => {
            state.violations.push(format!("body is not JSON: {error}"));
            return plain(422, error_body(422, "validation_error", "Invalid JSON"));
        }
    };
    let emails: Vec<Value> = match (&parsed, batch) {
        (Value::Array(list), true) if (1..=100).contains(&list.len()) => list.clone(),
        (Value::Object(_), false) => vec![parsed.clone()],
        _ => {
            state
                .violations
                .push(format!("{path} body has the wrong shape: {parsed}"));
            return plain(
                422,
                error_body(422, "validation_error", "Invalid body shape"),
            );
        }
    };
    let problems: Vec<String> = emails.iter().flat_map(|e| check_email(e, batch)).collect();
    if !problems.is_empty() {
        state.violations.extend(problems.iter().cloned());
        return plain(
            422,
            error_body(422, "validation_error", &problems.join("; ")),
        );
    }
    if let Some((first_body, status, first_answer)) = state.answered.get(key) {
        if *first_body == parsed {
            return ((*status, true), (first_answer.clone(), Vec::new()), None);
        }
        state
            .violations
            .push(format!("Idempotency-Key {key} reused with another body"));
        return plain(
            409,
            error_body(
                409,
                "invalid_idempotent_request",
                "Same idempotency key used with a different request payload.",
            ),
        );
    }
    let slow = match state.script.pop_front() {
        Some(Scripted::RateLimited { retry_after_secs }) => {
            let secs = retry_after_secs.to_string();
            return (
                (429, false),
                (
                    error_body(
                        429,
                        "rate_limit_exceeded",
                        "Too many requests. You can only make 2 requests per second.",
                    ),
                    vec![
                        ("retry-after", secs.clone()),
                        ("ratelimit-limit", MAX_REQUESTS_PER_SECOND.to_string()),
                        ("ratelimit-remaining", "0".to_owned()),
                        ("ratelimit-reset", secs),
                    ],
                ),
                None,
            );
        }
        Some(Scripted::ServerError) => {
            return plain(
                500,
                error_body(
                    500,
                    "internal_server_error",
                    "An unexpected error occurred.",
                ),
            );
        }
        Some(Scripted::SlowAccept(delay)) => Some(delay),
        None => None,
    };
    let mut ids = Vec::new();
    for email in &emails {
        let id = uuid::Uuid::new_v4().to_string();
        state.emails.push(Email {
            at: now,
            idempotency_key: key.to_owned(),
            path: path.to_owned(),
            from: text(email, "from"),
            to: recipients(email),
            subject: text(email, "subject"),
            html: text(email, "html"),
            text: text(email, "text"),
            headers: email["headers"].as_object().cloned().unwrap_or_default(),
        });
        ids.push(id);
    }
    let answer = if batch {
        json!({"data": ids.iter().map(|id| json!({"id": id})).collect::<Vec<_>>()})
    } else {
        json!({"id": ids[0]})
    };
    state
        .answered
        .insert(key.to_owned(), (parsed, 200, answer.clone()));
    ((200, false), (answer, Vec::new()), slow)
}
