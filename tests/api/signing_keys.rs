//! Supabase signs tokens with asymmetric keys published at a JWKS URL and
//! rotates them. Stories of a project that rotates from one key to another
//! while people stay connected, of a key server that fails, and of tokens
//! that are not valid yet or come from another issuer.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use uuid::Uuid;

use mixroom_testkit::tokens::Claims;

use crate::helpers::{
    claims, now_secs, sign, sign_with_pem, Backend, TestServer, WsClient, JWT_SECRET,
};

/// The test keys of `tests/fixtures/jwks/`: an ES256 and an RS256 pair, so
/// the rotation also moves from one algorithm to the other.
struct TestKey {
    kid: &'static str,
    algorithm: Algorithm,
    private_pem: &'static str,
}

const KEY_ONE: TestKey = TestKey {
    kid: "test-es256",
    algorithm: Algorithm::ES256,
    private_pem: "es256_private.pem",
};

const KEY_TWO: TestKey = TestKey {
    kid: "test-rs256",
    algorithm: Algorithm::RS256,
    private_pem: "rs256_private.pem",
};

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/jwks/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

impl TestKey {
    /// The public key as the project publishes it.
    fn jwk(&self) -> Value {
        let set: Value = serde_json::from_str(&fixture("jwks.json")).unwrap();
        set["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|key| key["kid"] == self.kid)
            .cloned()
            .unwrap_or_else(|| panic!("{} is not in jwks.json", self.kid))
    }

    /// A token for a fresh user, signed with this key.
    fn token(&self, name: &str) -> String {
        self.sign(&claims(
            &Uuid::new_v4().to_string(),
            "client",
            name,
            now_secs() + 3600,
        ))
    }

    fn sign(&self, claims: &Claims) -> String {
        let pem = fixture(self.private_pem);
        sign_with_pem(claims, self.algorithm, self.kid, pem.as_bytes())
    }
}

/// What the key server answers with: a status and a JSON body.
type Published = Arc<Mutex<(u16, Value)>>;

/// A JWKS endpoint on 127.0.0.1 that a story can rotate or break.
struct KeyServer {
    addr: SocketAddr,
    published: Published,
    requests: Arc<Mutex<usize>>,
    handle: actix_web::dev::ServerHandle,
}

impl KeyServer {
    fn start(keys: &[&TestKey]) -> KeyServer {
        let published: Published = Arc::new(Mutex::new((200, Value::Null)));
        let requests = Arc::new(Mutex::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let (shared, counter) = (published.clone(), requests.clone());
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    let (shared, counter) = (shared.clone(), counter.clone());
                    App::new().route(
                        "/auth/v1/.well-known/jwks.json",
                        web::get().to(move || {
                            let (status, body) = shared.lock().unwrap().clone();
                            *counter.lock().unwrap() += 1;
                            async move {
                                HttpResponse::build(
                                    actix_web::http::StatusCode::from_u16(status).unwrap(),
                                )
                                .json(body)
                            }
                        }),
                    )
                })
                .workers(1)
                .disable_signals()
                .bind(("127.0.0.1", 0))
                .expect("bind the key server");
                let addr = server.addrs()[0];
                let server = server.run();
                tx.send((addr, server.handle())).unwrap();
                let _ = server.await;
            });
        });
        let (addr, handle) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the key server did not start");
        let server = KeyServer {
            addr,
            published,
            requests,
            handle,
        };
        server.publish(keys);
        server
    }

    fn url(&self) -> String {
        format!("http://{}/auth/v1/.well-known/jwks.json", self.addr)
    }

    fn publish(&self, keys: &[&TestKey]) {
        let set: Vec<Value> = keys.iter().map(|key| key.jwk()).collect();
        *self.published.lock().unwrap() = (200, json!({ "keys": set }));
    }

    fn fail(&self) {
        *self.published.lock().unwrap() = (500, json!({"error": "down"}));
    }

    fn requests(&self) -> usize {
        *self.requests.lock().unwrap()
    }
}

impl Drop for KeyServer {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

async fn refused(server: &TestServer, token: &str) -> (u16, String) {
    let mut socket = WsClient::connect(server).await;
    socket
        .send_json(json!({"type": "auth", "token": token}))
        .await;
    socket.expect_close().await
}

/// The project rotates from key one to key two: people connected with key
/// one stay connected, people signing in with key two get in at once (no
/// restart), key one stops verifying once it is no longer published, and
/// the legacy HS256 secret keeps working beside the keys.
#[tokio::test]
async fn rotated_signing_keys_work_without_a_restart() {
    let keys = KeyServer::start(&[&KEY_ONE]);
    let backend = Backend::sqlite();
    let url = keys.url();
    let server = TestServer::spawn(
        &backend,
        &[
            ("MIXROOM__AUTH__JWKS_URL", &url),
            // Long enough that only an unknown key makes it fetch again.
            ("MIXROOM__AUTH__JWKS_REFRESH_SECS", "3600"),
        ],
    );
    let (status, ready) = server.readiness().await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["signing_keys"]["ok"], true, "{ready}");
    assert_eq!(ready["signing_keys"]["keys"], 1, "{ready}");

    let mut ava = WsClient::connect(&server).await;
    ava.authenticate(&KEY_ONE.token("Ava")).await;
    let mut legacy = WsClient::connect(&server).await;
    let legacy_user = Uuid::new_v4().to_string();
    legacy
        .authenticate(&sign(
            &claims(&legacy_user, "client", "Lee", now_secs() + 3600),
            JWT_SECRET,
        ))
        .await;

    keys.publish(&[&KEY_TWO]);
    let fetched_before = keys.requests();
    let mut sam = WsClient::connect(&server).await;
    sam.authenticate(&KEY_TWO.token("Sam")).await;
    assert_eq!(
        keys.requests(),
        fetched_before + 1,
        "an unknown key is fetched at once, once"
    );
    // An HTTP route takes the new key as well.
    let me = server
        .http_client()
        .get(server.http("/v1/me/preferences"))
        .bearer_auth(KEY_TWO.token("Kim"))
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);

    // Ava's socket, opened with key one, is still served.
    let pong = ava.ping().await;
    assert_eq!(pong["type"], "pong", "{pong}");
    // Key one is no longer published: a new token signed with it fails.
    let (code, reason) = refused(&server, &KEY_ONE.token("Mallory")).await;
    assert_eq!(code, 4001, "{reason}");
    // Unknown keys do not make the server fetch again and again.
    for _ in 0..3 {
        let (code, _) = refused(&server, &KEY_ONE.token("Mallory")).await;
        assert_eq!(code, 4001);
    }
    assert_eq!(
        keys.requests(),
        fetched_before + 1,
        "refetches for unknown keys are at most one per 10 s"
    );
    legacy.ping().await;
}

/// The key server fails: the last good set keeps verifying and readiness
/// says what is wrong; a server that never got a set is not ready, while
/// HS256 tokens still work.
#[tokio::test]
async fn a_failing_key_server_keeps_the_last_good_keys() {
    let keys = KeyServer::start(&[&KEY_ONE]);
    let backend = Backend::sqlite();
    let url = keys.url();
    let server = TestServer::spawn(
        &backend,
        &[
            ("MIXROOM__AUTH__JWKS_URL", &url),
            ("MIXROOM__AUTH__JWKS_REFRESH_SECS", "1"),
        ],
    );
    keys.fail();
    let failed_at = keys.requests();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let ready = loop {
        let (status, ready) = server.readiness().await;
        if ready["signing_keys"]["last_error"].is_string() {
            assert_eq!(status, 200, "a stale set is still served: {ready}");
            break ready;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no failed refresh: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(keys.requests() > failed_at);
    assert_eq!(ready["signing_keys"]["ok"], false, "{ready}");
    assert_eq!(ready["signing_keys"]["keys"], 1, "{ready}");
    let mut ava = WsClient::connect(&server).await;
    ava.authenticate(&KEY_ONE.token("Ava")).await;

    // A node whose key URL never answered cannot verify asymmetric tokens.
    drop(keys);
    let unreachable = "http://127.0.0.1:9/auth/v1/.well-known/jwks.json";
    let backend = Backend::sqlite();
    let server = TestServer::spawn(&backend, &[("MIXROOM__AUTH__JWKS_URL", unreachable)]);
    let (status, ready) = server.readiness().await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["signing_keys"]["keys"], 0, "{ready}");
    let mut lee = WsClient::connect(&server).await;
    lee.authenticate(&sign(
        &claims(
            &Uuid::new_v4().to_string(),
            "client",
            "Lee",
            now_secs() + 3600,
        ),
        JWT_SECRET,
    ))
    .await;
}

/// `nbf` is honoured (with a small leeway for clocks), and with
/// `auth.issuer` set only tokens of that issuer get in.
#[tokio::test]
async fn tokens_not_yet_valid_or_from_another_issuer_are_refused() {
    const ISSUER: &str = "https://project.supabase.co/auth/v1";
    let backend = Backend::sqlite();
    let server = TestServer::spawn(&backend, &[("MIXROOM__AUTH__ISSUER", ISSUER)]);
    let token = |change: &dyn Fn(&mut Claims)| {
        let mut claims = claims(
            &Uuid::new_v4().to_string(),
            "client",
            "Ava",
            now_secs() + 3600,
        );
        claims.iss = Some(ISSUER.to_owned());
        change(&mut claims);
        sign(&claims, JWT_SECRET)
    };

    let mut ava = WsClient::connect(&server).await;
    ava.authenticate(&token(&|_| {})).await;
    let mut skewed = WsClient::connect(&server).await;
    skewed
        .authenticate(&token(&|c| c.nbf = Some(now_secs() + 5)))
        .await;

    for (what, bad) in [
        (
            "nbf a day ahead",
            token(&|c| c.nbf = Some(now_secs() + 86_400)),
        ),
        (
            "another issuer",
            token(&|c| c.iss = Some("https://other.supabase.co/auth/v1".to_owned())),
        ),
        ("no issuer", token(&|c| c.iss = None)),
    ] {
        let (code, reason) = refused(&server, &bad).await;
        assert_eq!(code, 4001, "{what}: {reason}");
        let status = server
            .http_client()
            .get(server.http("/v1/me/preferences"))
            .bearer_auth(&bad)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401, "{what} over HTTP");
    }
}
