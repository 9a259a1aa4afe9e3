//! Web Push (issue 18): a notification or chat message for a user with no
//! live session is pushed at once to each browser they subscribed, per
//! their push switches; the email fallback still follows if it stays
//! unread. RFC 8030 delivery, RFC 8291 `aes128gcm` payloads and RFC 8292
//! VAPID, built with `web-push-native` and sent with reqwest.
//!
//! Two stages, the first stored before the second begins:
//!
//! 1. **Intake** ([`intake`]). An actor sees every chat message this node
//!    commits (a hub watcher, like the email notifier) and every
//!    notification created ([`crate::notifications::Inbox::push`]). Over a
//!    short window it gathers them, asks the hub (cluster-wide) who of the
//!    recipients has no live session, and stores one `push_queue` row per
//!    subscription of each of those whose switch for the kind is on. The
//!    chat path only hands the actor a message; nothing waits for it.
//! 2. **Sending** ([`sender`]). An actor claims due rows with a lease
//!    (`claimed_by`, `claimed_until`, one UPDATE that repeats its
//!    conditions, as the mailer claims batches), encrypts and signs each
//!    push and sends it: accepted → deleted; 404/410 → the subscription and
//!    its pushes deleted; 429, 5xx and network errors → retried with
//!    exponential backoff, a longer `Retry-After` winning, until
//!    `push.max_attempts`; another 4xx → failed, logged, kept a week.
//!
//! Keys ([`vapid`]) come from `push.vapid_private_key`, or in development
//! from the database (generated once); in production without a key push is
//! off and its routes answer 503 `push_disabled`.

pub mod intake;
pub mod payload;
pub mod sender;
pub mod subscription;
pub mod vapid;

use std::sync::Arc;

use actix::{Actor, Addr};

use crate::config::{Environment, PushSettings, Settings};
use crate::db::{Db, DbError};
use crate::domain::email::EmailKind;
use crate::metrics::Metrics;
use crate::rooms::hub::{Hub, WatchCommitted};

pub use intake::{PushIntake, PushNotifications};
pub use vapid::VapidKey;

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("push notifications are turned off on this server")]
    Disabled,
    #[error("{0}")]
    InvalidSubscription(String),
    #[error(
        "at most {max} push subscriptions per user: remove one (DELETE /v1/me/push-subscriptions) \
         before adding another"
    )]
    TooManySubscriptions { max: usize },
    #[error("push.vapid_private_key: {0}")]
    Key(String),
    #[error("push HTTP client: {0}")]
    Client(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Whether push is on, and what the routes and the inbox need of it.
/// Cheap to clone.
#[derive(Clone)]
pub struct Push {
    key: Option<Arc<VapidKey>>,
    intake: Option<Addr<PushIntake>>,
    settings: Arc<PushSettings>,
    environment: Environment,
}

impl Push {
    /// Push turned off (no key in production).
    pub fn disabled(settings: &Settings) -> Self {
        Push {
            key: None,
            intake: None,
            settings: Arc::new(settings.push.clone()),
            environment: settings.server.environment,
        }
    }

    /// The VAPID public key browsers subscribe with, or `Disabled`.
    pub fn public_key(&self) -> Result<&str, PushError> {
        self.key
            .as_deref()
            .map(VapidKey::public_key)
            .ok_or(PushError::Disabled)
    }

    pub fn is_enabled(&self) -> bool {
        self.key.is_some()
    }

    pub fn settings(&self) -> &PushSettings {
        &self.settings
    }

    pub fn environment(&self) -> Environment {
        self.environment
    }

    /// Hands stored notifications to the intake (nothing when push is off).
    pub fn notifications_created(&self, rows: &[crate::db::models::NotificationRow]) {
        if let (Some(intake), false) = (&self.intake, rows.is_empty()) {
            intake.do_send(PushNotifications(rows.to_vec()));
        }
    }
}

/// Loads the key and, when push is on, starts the sender and the intake
/// and lets the intake watch committed messages.
pub async fn start(
    settings: Arc<Settings>,
    db: Db,
    hub: Addr<Hub>,
    metrics: Arc<Metrics>,
) -> Result<Push, PushError> {
    let Some(key) = vapid::load(&settings, &db).await? else {
        return Ok(Push::disabled(&settings));
    };
    let key = Arc::new(key);
    let sender = sender::PushSender::new(
        db.clone(),
        key.clone(),
        settings.push.clone(),
        metrics.clone(),
    )?
    .start();
    let intake = PushIntake::new(db, hub.clone(), sender, &settings, metrics).start();
    hub.do_send(WatchCommitted(intake.clone().recipient()));
    Ok(Push {
        key: Some(key),
        intake: Some(intake),
        settings: Arc::new(settings.push.clone()),
        environment: settings.server.environment,
    })
}

/// Kinds a user can turn push on or off for, and whether each is on for
/// someone who never chose: everything but marketing, as for email.
/// Policy news is not a switch (it is always pushed).
pub fn switch_kinds() -> impl Iterator<Item = (EmailKind, bool)> {
    EmailKind::ALL
        .iter()
        .filter(|kind| kind.is_optional())
        .map(|kind| (*kind, *kind != EmailKind::Marketing))
}

/// Whether pushes of `kind` are on for a user with these changed switches
/// (a kind that is not a switch always is).
pub fn push_allowed(kind: EmailKind, changed: &[(EmailKind, bool)]) -> bool {
    if !kind.is_optional() {
        return true;
    }
    changed
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, on)| *on)
        .unwrap_or_else(|| {
            switch_kinds()
                .find(|(k, _)| *k == kind)
                .is_none_or(|(_, default)| default)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_on_by_default_but_marketing() {
        assert!(push_allowed(EmailKind::Chat, &[]));
        assert!(push_allowed(EmailKind::Booking, &[]));
        assert!(!push_allowed(EmailKind::Marketing, &[]));
        assert!(!push_allowed(
            EmailKind::Chat,
            &[(EmailKind::Chat, false), (EmailKind::Booking, true)]
        ));
        assert!(push_allowed(
            EmailKind::Marketing,
            &[(EmailKind::Marketing, true)]
        ));
        assert!(push_allowed(EmailKind::Reminder, &[]));
        assert!(push_allowed(
            EmailKind::Policy,
            &[(EmailKind::Policy, false)]
        ));
        assert!(switch_kinds().all(|(kind, _)| kind != EmailKind::Policy));
    }
}
