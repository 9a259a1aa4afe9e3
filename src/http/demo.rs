//! The demo page, for trying the server in a browser (`server.demo`,
//! the embedded default; production sets it false and none of these routes
//! exist, so they answer 404).
//!
//! - `GET /` — `demo/index.html`; `/demo/app.js` (the TypeScript client and
//!   the page, built by `npm run build:demo` in `clients/js` and committed)
//!   and `/demo/style.css`. The files are compiled into the binary, so
//!   `cargo run --release` serves the page without npm.
//! - `POST /demo/session {"user":"ava"|"sam"|"eli"}` — stands in for the
//!   Mixroom backend and Supabase: mirrors the demo users and one booking
//!   between them (idempotently) and returns a token for the chosen user,
//!   signed with `auth.jwt_secret`.
//! - `POST /demo/booking {"status"}` — changes the demo booking's status
//!   the way the backend would, to show the live badge and notifications.
//! - `POST /demo/payment {"event":"partial_refund"}` — plays Stripe: a
//!   €100.00 payment, refunded €25.00 more at each call, through the same
//!   payment machine as the webhook (`crate::payments`).

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;

use crate::auth::{mint_token, Role};
use crate::db::bookings::{booking_room, BookingUpsert};
use crate::db::payments::PaymentOutcome;
use crate::db::users::ProfileMirror;
use crate::domain::booking::BookingStatus;
use crate::error::AppError;
use crate::http::AppState;
use crate::payments::{EventKind, PaymentEvent};

const INDEX_HTML: &str = include_str!("../../demo/index.html");
const APP_JS: &str = include_str!("../../demo/app.js");
const STYLE_CSS: &str = include_str!("../../demo/style.css");
const SERVICE_WORKER_JS: &str = include_str!("../../demo/sw.js");

/// Demo tokens live ten minutes, so the page shows the client refreshing
/// its token on the live socket.
const TOKEN_TTL_SECS: i64 = 600;

struct DemoUser {
    key: &'static str,
    id: &'static str,
    name: &'static str,
    role: Role,
    email: &'static str,
}

/// The same ids as the README's two-terminal walkthrough.
const DEMO_USERS: &[DemoUser] = &[
    DemoUser {
        key: "ava",
        id: "6f1c1a52-0000-4000-8000-000000000001",
        name: "Ava",
        role: Role::Client,
        email: "ava@example.com",
    },
    DemoUser {
        key: "sam",
        id: "6f1c1a52-0000-4000-8000-000000000002",
        name: "Sam",
        role: Role::StudioOwner,
        email: "sam@example.com",
    },
    DemoUser {
        key: "eli",
        id: "6f1c1a52-0000-4000-8000-000000000003",
        name: "Eli",
        role: Role::Engineer,
        email: "eli@example.com",
    },
];

const DEMO_BOOKING_ID: &str = "demo-vocals";
const DEMO_BOOKING_TITLE: &str = "Vocal tracking at Studio Nova";

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index))
        .route("/demo/app.js", web::get().to(app_js))
        .route("/demo/style.css", web::get().to(style_css))
        .route("/demo-sw.js", web::get().to(service_worker_js))
        .route("/demo/session", web::post().to(session))
        .route("/demo/booking", web::post().to(set_booking_status))
        .route("/demo/payment", web::post().to(play_payment));
}

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, content_type))
        // The files change with the binary; never serve a stale bundle.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

async fn index() -> HttpResponse {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> HttpResponse {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// The demo's service worker (Web Push): at the root, so its scope (`/`)
/// covers the page at `/`.
async fn service_worker_js() -> HttpResponse {
    asset("text/javascript; charset=utf-8", SERVICE_WORKER_JS)
}

async fn style_css() -> HttpResponse {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionBody {
    user: String,
}

/// `POST /demo/session`
async fn session(
    body: web::Json<SessionBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let user = DEMO_USERS
        .iter()
        .find(|u| u.key == body.user)
        .ok_or_else(|| {
            AppError::Unprocessable(format!(
                "unknown demo user `{}`; expected ava, sam or eli",
                body.user
            ))
        })?;
    let secret = &state.settings.auth.jwt_secret;
    if secret.expose_secret().is_empty() {
        return Err(AppError::NotFound(
            "the demo needs auth.jwt_secret to sign its tokens".into(),
        ));
    }
    let status = ensure_demo_world(&state).await?;
    let token = mint_token(
        secret,
        user.id,
        user.role,
        Some(user.name),
        Some(user.email),
        TOKEN_TTL_SECS,
    )
    .map_err(AppError::internal)?;
    let person = |u: &DemoUser| json!({"key": u.key, "id": u.id, "name": u.name, "role": u.role});
    Ok(HttpResponse::Ok().json(json!({
        "token": token,
        "expires_in": TOKEN_TTL_SECS,
        "user": person(user),
        "people": DEMO_USERS.iter().map(person).collect::<Vec<_>>(),
        "booking": {
            "id": DEMO_BOOKING_ID,
            "room": booking_room(DEMO_BOOKING_ID),
            "title": DEMO_BOOKING_TITLE,
            "status": status,
        },
    })))
}

/// Mirrors the demo users and creates the demo booking if it is missing
/// (an existing one keeps its status); returns the booking's status.
async fn ensure_demo_world(state: &AppState) -> Result<BookingStatus, AppError> {
    for user in DEMO_USERS {
        let mirrored = state
            .db
            .upsert_user(
                user.id,
                Some(user.email),
                Some(user.name),
                user.role.as_str(),
            )
            .await?;
        if mirrored == ProfileMirror::Erased {
            return Err(AppError::Gone(format!(
                "demo user {} was erased; start with a fresh database",
                user.name
            )));
        }
    }
    if let Some(booking) = state.db.find_booking(DEMO_BOOKING_ID).await? {
        return Ok(booking.status);
    }
    apply_demo_booking(state, BookingStatus::Confirmed, None).await?;
    Ok(BookingStatus::Confirmed)
}

async fn apply_demo_booking(
    state: &AppState,
    status: BookingStatus,
    reason: Option<&str>,
) -> Result<(), AppError> {
    let [client, providers @ ..] = DEMO_USERS else {
        unreachable!("the demo has users")
    };
    state
        .bookings
        .apply(BookingUpsert {
            id: DEMO_BOOKING_ID.to_owned(),
            client_id: client.id.to_owned(),
            provider_ids: providers.iter().map(|p| p.id.to_owned()).collect(),
            status,
            title: DEMO_BOOKING_TITLE.to_owned(),
            starts_at: None,
            version: None,
            reason: reason.map(str::to_owned),
            caused_by: "demo".to_owned(),
        })
        .await?;
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusBody {
    status: String,
}

/// `POST /demo/booking`
async fn set_booking_status(
    body: web::Json<StatusBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let status = crate::bookings::parse_status(&body.status)?;
    ensure_demo_world(&state).await?;
    apply_demo_booking(&state, status, Some("changed on the demo page")).await?;
    Ok(HttpResponse::Ok().json(json!({ "id": DEMO_BOOKING_ID, "status": status })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentBody {
    event: String,
}

/// The demo booking's payment, in euro cents.
const DEMO_PAYMENT: i64 = 10_000;
/// What each "partial refund" gives back.
const DEMO_REFUND_STEP: i64 = 2_500;

/// `POST /demo/payment`: what Stripe would report, without Stripe.
async fn play_payment(
    body: web::Json<PaymentBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    if body.event != "partial_refund" {
        return Err(AppError::Unprocessable(format!(
            "unknown demo payment event `{}`; expected partial_refund",
            body.event
        )));
    }
    ensure_demo_world(&state).await?;
    let refunded = state
        .db
        .payment_of_booking(DEMO_BOOKING_ID)
        .await?
        .map_or(0, |payment| payment.amount_refunded);
    let event = |kind| PaymentEvent {
        kind,
        booking_id: Some(DEMO_BOOKING_ID.to_owned()),
        payment_intent: Some("pi_demo".to_owned()),
        charge: Some("ch_demo".to_owned()),
        amount: Some(DEMO_PAYMENT),
        currency: Some("eur".to_owned()),
        refund: None,
    };
    let refund = EventKind::Refunded {
        amount_refunded: (refunded + DEMO_REFUND_STEP).min(DEMO_PAYMENT),
    };
    for kind in [EventKind::Succeeded, refund] {
        let outcome = state
            .db
            .apply_payment_event(&event(kind), "demo".to_owned())
            .await?;
        if let PaymentOutcome::Applied {
            booking_id,
            outcome,
        } = outcome
        {
            state
                .bookings
                .announce_payment(&booking_id, &outcome)
                .await?;
        }
    }
    let status = state
        .db
        .find_booking(DEMO_BOOKING_ID)
        .await?
        .map(|booking| booking.status.as_str())
        .unwrap_or_default();
    Ok(HttpResponse::Ok().json(json!({ "id": DEMO_BOOKING_ID, "status": status })))
}
