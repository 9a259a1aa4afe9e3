//! Black-box tests of the `mixroom-realtime` binary: each test starts the real
//! server as a child process and talks to it like the Mixroom web app and
//! backend do (WebSocket frames and HTTP), following `PROTOCOL.md`.
//!
//! PostgreSQL stories run when `MIXROOM_TEST_DATABASE_URL` names a server the
//! tests may create databases on; `MIXROOM_TEST_REQUIRE_SERVICES=1` turns a
//! missing URL into a failure instead of a skip.

#[macro_use]
mod helpers;

mod abuse;
mod access_matrix;
mod announcements;
mod backend_api;
mod bad_input;
mod booking_updates;
mod chat;
mod cluster;
mod data_rights;
mod demo;
mod deployment;
mod email_fallback;
mod fake_anthropic;
mod fake_push;
mod fake_resend;
mod going_to_production;
mod http_limits;
mod lifecycle;
mod message_changes;
mod operations;
mod payments;
mod raw;
mod reminders;
mod restart;
mod signing_keys;
mod soak;
mod stalled;
mod stripe_kit;
mod support;
mod tls;
mod web_push;
