//! Email preferences (`GET/PUT /v1/me/preferences`) and the signed
//! unsubscribe link of every email (`GET/POST /v1/unsubscribe?token=`).

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Deserializer, Serialize};

use super::extract::AuthUser;
use crate::db::email::PreferencesRow;
use crate::domain::email::EmailKind;
use crate::error::AppError;
use crate::http::AppState;
use crate::notifications::kind_names;
use crate::notify::push;
use crate::notify::templates::kind_label;
use crate::notify::unsubscribe::{UnsubscribeError, UnsubscribeSigner};

/// The longest chat delay a user may choose (a week).
const CHAT_DELAY_MAX_SECS: i64 = 7 * 24 * 3600;

#[derive(Serialize)]
struct EmailSwitches {
    chat: bool,
    booking: bool,
    support: bool,
    marketing: bool,
    reminder: bool,
}

#[derive(Serialize)]
struct ServerDelays {
    offline_delay_secs: u64,
    unread_delay_secs: u64,
}

#[derive(Serialize)]
struct PreferencesView {
    email: EmailSwitches,
    /// Web Push on/off per kind (`crate::notify::push::switch_kinds`).
    push: BTreeMap<&'static str, bool>,
    /// The user's delay before an unread chat message is emailed; `null`
    /// means the server's delays (`defaults`) apply.
    chat_delay_secs: Option<i64>,
    defaults: ServerDelays,
}

fn view(
    state: &AppState,
    row: &PreferencesRow,
    push_changed: &[(EmailKind, bool)],
) -> PreferencesView {
    PreferencesView {
        push: push::switch_kinds()
            .map(|(kind, _)| (kind.as_str(), push::push_allowed(kind, push_changed)))
            .collect(),
        email: EmailSwitches {
            chat: row.chat,
            booking: row.booking,
            support: row.support,
            marketing: row.marketing,
            reminder: row.reminder,
        },
        chat_delay_secs: row.chat_delay_secs,
        defaults: ServerDelays {
            offline_delay_secs: state.settings.email.offline_delay_secs,
            unread_delay_secs: state.settings.email.unread_delay_secs,
        },
    }
}

/// `GET /v1/me/preferences`
pub async fn get(
    AuthUser(who): AuthUser,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let row = state
        .db
        .email_preferences(&who.user_id)
        .await?
        .unwrap_or_else(|| PreferencesRow::defaults(&who.user_id));
    let push_changed = push_switches(&state, &who.user_id).await?;
    Ok(HttpResponse::Ok().json(view(&state, &row, &push_changed)))
}

/// The push switches the user changed.
async fn push_switches(
    state: &AppState,
    user_id: &str,
) -> Result<Vec<(EmailKind, bool)>, AppError> {
    Ok(state
        .db
        .push_switches_of(&[user_id.to_owned()])
        .await?
        .into_iter()
        .map(|(_, kind, on)| (kind, on))
        .collect())
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
pub(super) fn explicit<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreferencesUpdate {
    /// Kinds to turn on or off; kinds not named keep their setting.
    #[serde(default)]
    email: BTreeMap<String, bool>,
    /// Web Push kinds to turn on or off, the same way.
    #[serde(default)]
    push: BTreeMap<String, bool>,
    /// A number of seconds, or `null` for the server's delays.
    #[serde(default, deserialize_with = "explicit")]
    chat_delay_secs: Option<Option<i64>>,
}

/// `PUT /v1/me/preferences` — a partial update; answers the result.
pub async fn put(
    AuthUser(who): AuthUser,
    body: web::Json<PreferencesUpdate>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let update = body.into_inner();
    let mut row = state
        .db
        .email_preferences(&who.user_id)
        .await?
        .unwrap_or_else(|| PreferencesRow::defaults(&who.user_id));
    for (kind, enabled) in &update.email {
        let Some(kind) = EmailKind::parse(kind) else {
            return Err(AppError::Unprocessable(format!(
                "unknown email kind `{kind}`; expected one of {}",
                kind_names()
            )));
        };
        if !kind.is_optional() {
            return Err(AppError::Unprocessable(format!(
                "`{}` emails cannot be turned off: they tell everyone of a material change",
                kind.as_str()
            )));
        }
        row.set(kind, *enabled);
    }
    if let Some(delay) = update.chat_delay_secs {
        if delay.is_some_and(|secs| !(0..=CHAT_DELAY_MAX_SECS).contains(&secs)) {
            return Err(AppError::Unprocessable(format!(
                "`chat_delay_secs` must be 0 to {CHAT_DELAY_MAX_SECS}, or null"
            )));
        }
        row.chat_delay_secs = delay;
    }
    let mut push_changes = Vec::with_capacity(update.push.len());
    for (name, enabled) in &update.push {
        match push::switch_kinds().find(|(kind, _)| kind.as_str() == name) {
            Some((kind, _)) => push_changes.push((kind, *enabled)),
            None if EmailKind::parse(name).is_some() => {
                return Err(AppError::Unprocessable(format!(
                    "`{name}` pushes cannot be turned off: they tell everyone of a material change"
                )))
            }
            None => {
                return Err(AppError::Unprocessable(format!(
                    "unknown push kind `{name}`; expected one of {}",
                    push::switch_kinds()
                        .map(|(kind, _)| kind.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        }
    }
    row.updated_at = crate::time::now_ms();
    state.db.save_email_preferences(&row).await?;
    state
        .db
        .set_push_switches(&who.user_id, &push_changes)
        .await?;
    let push_changed = push_switches(&state, &who.user_id).await?;
    Ok(HttpResponse::Ok().json(view(&state, &row, &push_changed)))
}

#[derive(Deserialize)]
pub struct UnsubscribeQuery {
    #[serde(default)]
    token: String,
}

/// A small page a person can read; `form` adds a button that posts back.
fn page(
    status: actix_web::http::StatusCode,
    title: &str,
    message: &str,
    form: Option<&str>,
) -> HttpResponse {
    let button = form.map_or_else(String::new, |action| {
        format!(
            "<form method=\"post\" action=\"{}\">\
             <button type=\"submit\" style=\"font-size:16px;padding:10px 18px\">Unsubscribe</button>\
             </form>\n",
            html_escape::encode_double_quoted_attribute(action)
        )
    });
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"robots\" content=\"noindex\">\
         <title>{title}</title></head>\n\
         <body style=\"font-family:Helvetica,Arial,sans-serif;max-width:480px;margin:48px auto;padding:0 16px;color:#1d1d1f\">\n\
         <h1 style=\"font-size:22px\">{title}</h1>\n<p>{message}</p>\n{button}</body></html>\n",
        title = html_escape::encode_text(title),
        message = html_escape::encode_text(message),
    );
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        // The page carries a token: no caching, no referrer to other sites.
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .body(html)
}

fn what_unsubscribing_does(kind: EmailKind) -> String {
    format!(
        "You will no longer get emails about {} from Mixroom. You can turn them \
         back on at any time in your Mixroom settings.",
        kind_label(kind.as_str())
    )
}

/// The page for a link that does not verify.
fn refusal(error: UnsubscribeError) -> HttpResponse {
    tracing::debug!(%error, "unsubscribe link refused");
    page(
        actix_web::http::StatusCode::BAD_REQUEST,
        "This link does not work",
        &format!(
            "{}. Open the link from the email again, or change your email \
             preferences in your Mixroom settings.",
            capitalized(&error.to_string())
        ),
        None,
    )
}

/// `GET /v1/unsubscribe?token=` (the link in every email): a page that
/// asks to confirm with a button. It changes nothing itself, so a mail
/// scanner or link preview that follows the link unsubscribes nobody.
pub async fn confirm_unsubscribe(
    query: web::Query<UnsubscribeQuery>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let target = match UnsubscribeSigner::from_settings(&state.settings).verify(&query.token) {
        Ok(target) => target,
        Err(error) => return refusal(error),
    };
    let action = format!("/v1/unsubscribe?token={}", query.token);
    page(
        actix_web::http::StatusCode::OK,
        "Unsubscribe from these emails?",
        &what_unsubscribing_does(target.kind),
        Some(&action),
    )
}

/// `POST /v1/unsubscribe?token=` — the confirmation page's button, or the
/// RFC 8058 one-click `List-Unsubscribe-Post` of mail providers: turns that
/// kind of email off for that user, without signing in.
pub async fn unsubscribe(
    query: web::Query<UnsubscribeQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let target = match UnsubscribeSigner::from_settings(&state.settings).verify(&query.token) {
        Ok(target) => target,
        Err(error) => return Ok(refusal(error)),
    };
    state
        .db
        .set_email_kind(&target.user_id, target.kind, false)
        .await?;
    tracing::info!(user = %target.user_id, kind = %target.kind, "unsubscribed by link");
    Ok(page(
        actix_web::http::StatusCode::OK,
        "You are unsubscribed",
        &what_unsubscribing_does(target.kind),
        None,
    ))
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}
