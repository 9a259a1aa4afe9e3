//! The harness, by concern: a database of its own per test
//! (`database.rs`), the real server as a child process (`server.rs`), the
//! HTTP calls of the Mixroom backend and web app (`http.rs`), and a
//! WebSocket client that keeps every frame it reads while waiting for
//! another one (`ws_client.rs`). Users, their Supabase-shaped tokens and
//! raw client frames come from the test kit (`testkit/`), shared with the
//! bench; every test server is started with the kit's HS256 secret.

mod database;
mod http;
mod server;
mod ws_client;

pub use database::Backend;
pub use mixroom_testkit::{
    claims, masked_text_frame, now_secs, sign, sign_with_pem, User as TestUser, JWT_SECRET,
};
pub use server::TestServer;
pub use ws_client::{seqs, WsClient};

/// The backend key every test server is started with.
pub const INTERNAL_API_KEY: &str = "mixroom-test-internal-key-91b2c3";

/// Frame-rate limits high enough that stories which pipeline many sends
/// exercise storage and ordering rather than the per-user rate limiter.
pub const NO_RATE_LIMIT: &[(&str, &str)] = &[
    ("MIXROOM__LIMITS__FRAMES_PER_SEC", "100000"),
    ("MIXROOM__LIMITS__FRAMES_BURST", "100000"),
];

/// Runs each named story once per storage backend:
/// `mod story { sqlite(), postgres() }` next to `async fn story(backend)`.
macro_rules! both_backends {
    ($($story:ident),+ $(,)?) => {
        $(
            mod $story {
                #[tokio::test]
                async fn sqlite() {
                    super::$story($crate::helpers::Backend::sqlite()).await
                }

                #[tokio::test]
                async fn postgres() {
                    if let Some(backend) = $crate::helpers::Backend::postgres() {
                        super::$story(backend).await
                    } else {
                        eprintln!("skipped: MIXROOM_TEST_DATABASE_URL not set");
                    }
                }
            }
        )+
    };
}
