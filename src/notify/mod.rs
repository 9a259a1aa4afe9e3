//! The email fallback (PROTOCOL.md, "Email fallback"): what a user has not
//! read is emailed through Resend after a delay, once, in a digest.
//!
//! Three stages, each stored before the next begins, so a crash or restart
//! neither loses an email nor sends one twice:
//!
//! 1. **Items** ([`notifier`]). The notifier sees every chat message this
//!    node commits (a hub watcher) and every notification created
//!    ([`crate::notifications::push`]), and stores `email_items` rows with
//!    when to look at them: one per notification, and for chat one *range*
//!    per recipient and room (the sender is never one), which later
//!    messages extend while it is pending, so a busy room costs one write
//!    per recipient a second, not one per message. After a restart it
//!    first catches up on messages and notifications stored just before the
//!    crash that no row covers yet.
//! 2. **Deciding**. When an item is due, the recipient's pending items are
//!    read under a per-recipient lock, as they are now (a range: its newest
//!    unread messages, leaving out what the recipient read, wrote, or was
//!    emailed before): read ones, kinds
//!    turned off and items of users without an address are dropped. If one
//!    is due (`offline_delay` without a live session, `unread_delay` when
//!    online), all that remain become one digest, rendered and stored in
//!    `email_outbox` in the same transaction; else they wait for their next
//!    check.
//! 3. **Sending** ([`mailer`]). Queued emails are grouped into batches (one
//!    Resend request each, `/emails` or `/emails/batch`); a batch's id is
//!    the request's `Idempotency-Key`, so any retry (timeout, 5xx, crash,
//!    a lease another node let run out) repeats the same request and Resend
//!    sends it once. A node sends a batch while it holds its lease.
//!
//! With an empty `email.resend_api_key` the same pipeline writes each email
//! as a `.eml` file into `email.outbox_dir` ([`transport`]).

pub mod mailer;
pub mod notifier;
pub mod templates;
pub mod transport;
pub mod unsubscribe;

use std::sync::Arc;

use actix::{Actor, Addr};

use crate::config::{EmailSettings, Settings};
use crate::db::{Db, DbError};
use crate::domain::email::EmailKind;
use crate::metrics::Metrics;
use crate::rooms::hub::{Hub, WatchCommitted};

pub use notifier::{NotificationsCreated, Notifier};

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("email transport: {0}")]
    Transport(String),
}

/// The two delays of the contract, as they apply to one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delays {
    pub offline_ms: i64,
    pub unread_ms: i64,
}

impl Delays {
    pub fn from_settings(email: &EmailSettings) -> Self {
        Delays {
            offline_ms: secs_to_ms(email.offline_delay_secs),
            unread_ms: secs_to_ms(email.unread_delay_secs),
        }
    }

    /// The delays for an item of `kind`: a recipient's own chat delay
    /// (preferences) replaces both for chat messages.
    pub fn for_item(self, kind: EmailKind, chat_delay_secs: Option<i64>) -> Delays {
        match (kind, chat_delay_secs) {
            (EmailKind::Chat, Some(secs)) => {
                let ms = secs.max(0).saturating_mul(1000);
                Delays {
                    offline_ms: ms,
                    unread_ms: ms,
                }
            }
            _ => self,
        }
    }

    /// When an item created at `created_at` is first looked at.
    pub fn first_check(self, created_at: i64) -> i64 {
        created_at.saturating_add(self.offline_ms.min(self.unread_ms))
    }
}

fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// Starts the mailer and the notifier and lets the notifier watch
/// committed messages. The notifier's address takes notifications.
pub fn start(
    settings: Arc<Settings>,
    db: Db,
    hub: Addr<Hub>,
    metrics: Arc<Metrics>,
) -> Result<Addr<Notifier>, NotifyError> {
    let transport = transport::Transport::from_settings(&settings.email)?;
    if !transport.is_remote() {
        tracing::info!(
            dir = %settings.email.outbox_dir.display(),
            "email.resend_api_key is empty: emails are written to the outbox folder, not sent"
        );
    }
    let mailer = mailer::Mailer::new(
        db.clone(),
        transport,
        settings.email.clone(),
        metrics.clone(),
    )
    .start();
    let notifier = Notifier::new(settings, db, hub.clone(), mailer, metrics).start();
    hub.do_send(WatchCommitted(notifier.clone().recipient()));
    Ok(notifier)
}
