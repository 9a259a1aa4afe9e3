//! HTTP routes. Handlers extract, call the capability, and return JSON;
//! errors become responses in `crate::error`.

pub mod announcements;
pub mod demo;
pub mod extract;
pub mod health;
pub mod idempotency;
pub mod internal;
pub mod me;
pub mod middleware;
pub mod notifications;
pub mod preferences;
pub mod push;
pub mod request_log;
pub mod rooms;
mod state;
pub mod stripe;
pub mod support;

pub use state::AppState;

use actix_web::web;

use crate::config::Settings;

/// CORS for the web app's origins (configured in `server.cors_origins`).
pub fn cors(origins: &[String]) -> actix_cors::Cors {
    use actix_web::http::header;
    origins.iter().fold(
        actix_cors::Cors::default()
            .allowed_methods(["GET", "POST", "PUT", "DELETE"])
            .allowed_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
            .max_age(3600),
        |cors, origin| cors.allowed_origin(origin),
    )
}

/// Every request no route takes (an unknown path, or a method a path does
/// not have): a JSON error like every other refusal, not an empty body.
pub async fn no_route(
    req: actix_web::HttpRequest,
) -> Result<actix_web::HttpResponse, crate::error::AppError> {
    Err(crate::error::AppError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.path().chars().take(200).collect::<String>()
    )))
}

pub fn routes(cfg: &mut web::ServiceConfig, settings: &Settings) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(settings.server.max_http_body_bytes)
            .error_handler(crate::error::json_error_handler),
    )
    .app_data(web::QueryConfig::default().error_handler(crate::error::query_error_handler))
    .app_data(web::PayloadConfig::default().limit(settings.server.max_http_body_bytes))
    .route("/healthz", web::get().to(health::healthz))
    .route("/readyz", web::get().to(health::readyz))
    .route("/v1/openapi.json", web::get().to(health::openapi))
    .route(crate::ws::PATH, web::get().to(crate::ws::not_upgraded))
    .route("/v1/rooms/{room}/messages", web::get().to(rooms::history))
    .route("/v1/notifications", web::get().to(notifications::list))
    .route(
        "/v1/notifications/read-all",
        web::post().to(notifications::mark_all_read),
    )
    .route(
        "/v1/notifications/{id}/read",
        web::post().to(notifications::mark_read),
    )
    .route("/v1/me/unread", web::get().to(notifications::unread))
    .route("/v1/me/export", web::get().to(me::export))
    .route("/v1/me", web::delete().to(me::erase))
    .route("/v1/me/preferences", web::get().to(preferences::get))
    .route("/v1/me/preferences", web::put().to(preferences::put))
    .route(
        "/v1/push/vapid-public-key",
        web::get().to(push::vapid_public_key),
    )
    .route("/v1/me/push-subscriptions", web::get().to(push::list))
    .route("/v1/me/push-subscriptions", web::post().to(push::subscribe))
    .route(
        "/v1/me/push-subscriptions",
        web::delete().to(push::unsubscribe),
    )
    .route(
        "/v1/unsubscribe",
        web::get().to(preferences::confirm_unsubscribe),
    )
    .route("/v1/unsubscribe", web::post().to(preferences::unsubscribe))
    .route("/v1/webhooks/stripe", web::post().to(stripe::webhook))
    .route("/v1/support/conversations", web::post().to(support::open))
    .service(
        web::scope("/v1/admin/support/conversations")
            .route("", web::get().to(support::list))
            .route("/{id}", web::get().to(support::read))
            .route("/{id}/takeover", web::post().to(support::take_over)),
    )
    .service(
        web::scope("/v1/internal")
            .wrap(actix_web::middleware::from_fn(
                idempotency::idempotent_posts,
            ))
            .route("/users", web::put().to(internal::put_users))
            .route("/users/{id}", web::put().to(internal::put_user))
            .route("/users/{id}", web::get().to(internal::get_user))
            .route("/users/{id}", web::delete().to(internal::delete_user))
            .route(
                "/users/{id}/bookings",
                web::get().to(internal::user_bookings),
            )
            .route(
                "/users/{id}/disconnect",
                web::post().to(internal::disconnect_user),
            )
            .route("/bookings/{id}", web::put().to(internal::put_booking))
            .route("/bookings/{id}", web::patch().to(internal::patch_booking))
            .route("/bookings/{id}", web::get().to(internal::get_booking))
            .route(
                "/rooms/{room}/messages",
                web::post().to(internal::post_room_message),
            )
            .route("/notifications", web::post().to(notifications::create))
            .route("/announcements", web::post().to(announcements::create))
            .route(
                "/announcements/{id}",
                web::get().to(announcements::progress),
            ),
    );
    if settings.server.metrics_listen.is_none() {
        cfg.route("/metrics", web::get().to(health::metrics));
    }
    if settings.demo_enabled() {
        cfg.configure(demo::routes);
    }
}
