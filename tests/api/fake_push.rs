//! A stand-in for a browser vendor's push service on 127.0.0.1 (an
//! actix-web server on a thread of its own), and the browsers subscribed
//! to it. Each browser is a P-256 key pair and a 16-byte auth secret made
//! here, with an endpoint `http://127.0.0.1:<port>/push/<name>`.
//!
//! Every request is checked against the RFCs, and what is wrong recorded
//! as a violation:
//! - RFC 8030: `POST` to a known endpoint, a `TTL` header (seconds);
//! - RFC 8291: `Content-Encoding: aes128gcm`, and a body that decrypts with
//!   the browser's private key and auth secret;
//! - RFC 8292: `Authorization: vapid t=<JWT>, k=<key>`, the JWT ES256-signed
//!   by `k`, `k` the server's published VAPID key, `aud` the endpoint's
//!   origin, `exp` in the future and within 24 hours, `sub` the configured
//!   subject.
//!
//! A push that passes is recorded with its decrypted JSON. Scripted
//! answers per browser: 410 for good, or 429 (`Retry-After: 1`) or 500
//! the first N times, or a 500 held for 5 s; and a delay for every answer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64ct::{Base64UrlUnpadded, Encoding};
use serde_json::Value;
use web_push_native::p256;
use web_push_native::p256::elliptic_curve::sec1::ToEncodedPoint;

/// A browser's subscription, as `PushSubscription.toJSON()` gives it.
#[derive(Clone)]
pub struct Browser {
    pub name: String,
    pub endpoint: String,
    pub p256dh: String,
    pub auth: String,
}

impl Browser {
    /// A browser of no push service: keys of its own, any endpoint.
    pub fn detached(endpoint: &str) -> Browser {
        let (_, _, browser) = new_browser("detached", endpoint.to_owned());
        browser
    }

    /// The body of `POST /v1/me/push-subscriptions`.
    pub fn subscription(&self) -> Value {
        serde_json::json!({
            "endpoint": self.endpoint,
            "expirationTime": null,
            "keys": {"p256dh": self.p256dh, "auth": self.auth},
        })
    }
}

/// One push that passed every check.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub browser: String,
    pub at: Instant,
    pub ttl: u64,
    pub payload: Value,
}

/// How a browser's endpoint answers.
#[derive(Debug, Clone, Copy)]
enum Script {
    Accept,
    /// 410 Gone: the browser unsubscribed.
    Gone,
    /// 429 with `Retry-After: 1` for the next N requests, then accept.
    RateLimited(usize),
    /// 500 for the next N requests, then accept.
    Failing(usize),
    /// Held for 5 s, then 500, for the next N requests (a sender that dies
    /// meanwhile never learns the outcome); then accept.
    Stalling(usize),
}

struct BrowserKeys {
    secret: p256::SecretKey,
    auth: [u8; 16],
    script: Script,
}

#[derive(Default)]
struct State {
    browsers: HashMap<String, BrowserKeys>,
    /// The VAPID key and subject pushes must carry (once known).
    vapid_key: Option<String>,
    subject: String,
    /// Requests per browser, whatever came of them.
    requests: HashMap<String, usize>,
    delivered: Vec<Delivered>,
    violations: Vec<String>,
    /// Every answer is held this long (a slow push service).
    answer_delay: Duration,
}

type Shared = Arc<Mutex<State>>;

pub struct FakePushService {
    addr: SocketAddr,
    state: Shared,
    server: actix_web::dev::ServerHandle,
}

impl FakePushService {
    /// Started, expecting VAPID tokens with `subject` as their `sub`.
    pub fn start(subject: &str) -> FakePushService {
        let state: Shared = Arc::new(Mutex::new(State {
            subject: subject.to_owned(),
            ..State::default()
        }));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let server_state = state.clone();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let data = web::Data::new(server_state);
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .default_service(web::to(receive))
                })
                .workers(1)
                .disable_signals()
                .bind(("127.0.0.1", 0))
                .expect("bind the fake push service");
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
            .expect("the fake push service did not start");
        FakePushService {
            addr,
            state,
            server,
        }
    }

    /// The key every push's `k=` must be (from `GET /v1/push/vapid-public-key`).
    pub fn expect_vapid_key(&self, key: &str) {
        self.state.lock().unwrap().vapid_key = Some(key.to_owned());
    }

    /// A new browser with keys of its own, subscribed to this service.
    pub fn browser(&self, name: &str) -> Browser {
        let endpoint = format!("http://{}/push/{name}", self.addr);
        let (secret, auth, browser) = new_browser(name, endpoint);
        self.state.lock().unwrap().browsers.insert(
            name.to_owned(),
            BrowserKeys {
                secret,
                auth,
                script: Script::Accept,
            },
        );
        browser
    }

    fn script(&self, name: &str, script: Script) {
        let mut state = self.state.lock().unwrap();
        state
            .browsers
            .get_mut(name)
            .expect("a known browser")
            .script = script;
    }

    /// The browser's endpoint answers 410 from now on.
    pub fn answer_gone(&self, name: &str) {
        self.script(name, Script::Gone);
    }

    /// The browser's endpoint answers 429 (`Retry-After: 1`) `times` times.
    pub fn rate_limit(&self, name: &str, times: usize) {
        self.script(name, Script::RateLimited(times));
    }

    /// The browser's endpoint holds the next `times` requests for 5 s,
    /// then answers 500.
    pub fn stall(&self, name: &str, times: usize) {
        self.script(name, Script::Stalling(times));
    }

    /// Every answer is held `delay` (checks and records happen at arrival).
    pub fn delay_answers(&self, delay: Duration) {
        self.state.lock().unwrap().answer_delay = delay;
    }

    /// The browser's endpoint answers 500 `times` times.
    pub fn fail(&self, name: &str, times: usize) {
        self.script(name, Script::Failing(times));
    }

    pub fn delivered_to(&self, name: &str) -> Vec<Delivered> {
        let state = self.state.lock().unwrap();
        state
            .delivered
            .iter()
            .filter(|d| d.browser == name)
            .cloned()
            .collect()
    }

    pub fn requests_to(&self, name: &str) -> usize {
        let state = self.state.lock().unwrap();
        state.requests.get(name).copied().unwrap_or(0)
    }

    fn report(&self) -> String {
        let state = self.state.lock().unwrap();
        let delivered: Vec<String> = state
            .delivered
            .iter()
            .map(|d| format!("{}: {}", d.browser, d.payload))
            .collect();
        format!(
            "requests: {:?}\ndelivered: {delivered:#?}\nviolations: {:#?}",
            state.requests, state.violations
        )
    }

    /// Waits for a push to `name` whose payload `matches`; returns it.
    pub async fn wait_for(
        &self,
        name: &str,
        within: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(found) = self
                .delivered_to(name)
                .into_iter()
                .find(|d| matches(&d.payload))
            {
                return found.payload;
            }
            if Instant::now() > deadline {
                panic!(
                    "no matching push to {name} within {within:?}\n{}",
                    self.report()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Asserts that no push to `name` arrives for `during`.
    pub async fn expect_none_to(&self, name: &str, during: Duration) {
        tokio::time::sleep(during).await;
        let delivered = self.delivered_to(name);
        assert!(
            delivered.is_empty(),
            "expected no push to {name}\n{}",
            self.report()
        );
    }

    pub fn assert_no_violations(&self) {
        let violations = self.state.lock().unwrap().violations.clone();
        assert!(
            violations.is_empty(),
            "pushes did not follow RFC 8030/8291/8292:\n{}",
            self.report()
        );
    }
}

impl Drop for FakePushService {
    fn drop(&mut self) {
        drop(self.server.stop(false));
    }
}

/// A browser's private key and auth secret, and its subscription.
fn new_browser(name: &str, endpoint: String) -> (p256::SecretKey, [u8; 16], Browser) {
    let secret = loop {
        let bytes: [u8; 32] = rand::random();
        if let Ok(secret) = p256::SecretKey::from_slice(&bytes) {
            break secret;
        }
    };
    let auth: [u8; 16] = rand::random();
    let public = secret.public_key().to_encoded_point(false);
    let browser = Browser {
        name: name.to_owned(),
        endpoint,
        p256dh: Base64UrlUnpadded::encode_string(public.as_bytes()),
        auth: Base64UrlUnpadded::encode_string(&auth),
    };
    (secret, auth, browser)
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// How long a stalled request is held before its 500.
const STALL: Duration = Duration::from_secs(5);

async fn receive(req: HttpRequest, body: web::Bytes, state: web::Data<Shared>) -> HttpResponse {
    let (delay, response) = answer(&req, &body, &state);
    if !delay.is_zero() {
        actix_web::rt::time::sleep(delay).await;
    }
    response
}

/// The answer to one request, and how long to hold it first.
fn answer(req: &HttpRequest, body: &[u8], state: &Shared) -> (Duration, HttpResponse) {
    let mut state = state.lock().unwrap();
    let delay = state.answer_delay;
    match answer_now(req, body, &mut state) {
        Some(response) => (delay, response),
        None => (STALL, HttpResponse::InternalServerError().finish()),
    }
}

/// `None` for a stalled request (a 500 after [`STALL`]).
fn answer_now(req: &HttpRequest, body: &[u8], state: &mut State) -> Option<HttpResponse> {
    let Some(name) = req.path().strip_prefix("/push/").map(str::to_owned) else {
        return Some(HttpResponse::NotFound().finish());
    };
    *state.requests.entry(name.clone()).or_default() += 1;
    let Some(browser) = state.browsers.get_mut(&name) else {
        state
            .violations
            .push(format!("push to unknown endpoint {name}"));
        return Some(HttpResponse::NotFound().finish());
    };
    // Scripted answers come before any checks, as a real service's would.
    match &mut browser.script {
        Script::Gone => return Some(HttpResponse::Gone().finish()),
        Script::RateLimited(left) if *left > 0 => {
            *left -= 1;
            return Some(
                HttpResponse::TooManyRequests()
                    .insert_header(("Retry-After", "1"))
                    .finish(),
            );
        }
        Script::Failing(left) if *left > 0 => {
            *left -= 1;
            return Some(HttpResponse::InternalServerError().finish());
        }
        Script::Stalling(left) if *left > 0 => {
            *left -= 1;
            return None;
        }
        _ => {}
    }
    let secret = browser.secret.clone();
    let auth = browser.auth;
    let origin = format!("http://{}", req.connection_info().host().to_owned());
    let checked = check(req, body, &secret, &auth, &origin, state);
    match checked {
        Ok((ttl, payload)) => {
            state.delivered.push(Delivered {
                browser: name,
                at: Instant::now(),
                ttl,
                payload,
            });
            Some(HttpResponse::Created().finish())
        }
        Err(violation) => {
            state.violations.push(format!("{name}: {violation}"));
            Some(HttpResponse::BadRequest().body(violation))
        }
    }
}

/// Every check of one push; its TTL and decrypted JSON.
fn check(
    req: &HttpRequest,
    body: &[u8],
    secret: &p256::SecretKey,
    auth: &[u8; 16],
    origin: &str,
    state: &State,
) -> Result<(u64, Value), String> {
    if req.method() != actix_web::http::Method::POST {
        return Err(format!("method {}", req.method()));
    }
    let ttl: u64 = header(req, "TTL")
        .ok_or("no TTL header")?
        .parse()
        .map_err(|_| "TTL is not a number of seconds")?;
    if header(req, "Content-Encoding") != Some("aes128gcm") {
        return Err(format!(
            "Content-Encoding {:?}, not aes128gcm",
            header(req, "Content-Encoding")
        ));
    }
    let authorization = header(req, "Authorization").ok_or("no Authorization header")?;
    let (token, key) = authorization
        .strip_prefix("vapid t=")
        .and_then(|rest| rest.split_once(", k="))
        .ok_or_else(|| format!("Authorization is not `vapid t=…, k=…`: {authorization}"))?;
    if let Some(expected) = &state.vapid_key {
        if key != expected {
            return Err(format!("k={key} is not the server's VAPID key {expected}"));
        }
    }
    check_vapid_token(token, key, origin, &state.subject)?;
    let auth = web_push_native::Auth::from(*auth);
    let plain = web_push_native::decrypt(body.to_vec(), secret, &auth)
        .map_err(|e| format!("the body does not decrypt with the browser's keys: {e}"))?;
    let payload: Value =
        serde_json::from_slice(&plain).map_err(|e| format!("the payload is not JSON: {e}"))?;
    Ok((ttl, payload))
}

/// The VAPID JWT: ES256 by `key`, `aud` = `origin`, `exp` within 24 h,
/// `sub` = `subject`.
fn check_vapid_token(token: &str, key: &str, origin: &str, subject: &str) -> Result<(), String> {
    use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
    let point = Base64UrlUnpadded::decode_vec(key).map_err(|_| "k is not base64url")?;
    if point.len() != 65 || point[0] != 4 {
        return Err("k is not an uncompressed P-256 point".into());
    }
    let header = decode_header(token).map_err(|e| format!("JWT header: {e}"))?;
    if header.alg != Algorithm::ES256 {
        return Err(format!("JWT alg {:?}, not ES256", header.alg));
    }
    let decoding = DecodingKey::from_ec_components(
        &Base64UrlUnpadded::encode_string(&point[1..33]),
        &Base64UrlUnpadded::encode_string(&point[33..]),
    )
    .map_err(|e| format!("k as a key: {e}"))?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[origin]);
    validation.set_required_spec_claims(&["exp", "aud", "sub"]);
    validation.leeway = 0;
    let claims = decode::<Value>(token, &decoding, &validation)
        .map_err(|e| format!("JWT does not verify with k (aud {origin}): {e}"))?
        .claims;
    let exp = claims["exp"].as_u64().ok_or("exp is not a number")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if exp > now + 24 * 3600 {
        return Err(format!("exp is {} s away, more than 24 h", exp - now));
    }
    if claims["sub"] != subject {
        return Err(format!("sub {}, expected {subject}", claims["sub"]));
    }
    Ok(())
}
