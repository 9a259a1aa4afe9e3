//! The email fallback (PROTOCOL.md, "Email fallback"): what a user has not
//! read is emailed through Resend after a delay, once, in a digest.
//!
//! Three stages, each stored before the next begins, so a crash or restart
//! neither loses an email nor sends one twice:
//!
//! 1. **Items** ([`intake`]). The [`notifier`] actor sees every chat message this
//!    node commits (a hub watcher) and every notification created
//!    ([`crate::notifications::push`]), and stores `email_items` rows with
//!    when to look at them: one per notification, and for chat one *range*
//!    per recipient and room (the sender is never one), which later
//!    messages extend while it is pending, so a busy room costs one write
//!    per recipient a second, not one per message. After a restart it
//!    first catches up on messages and notifications stored just before the
//!    crash that no row covers yet.
//! 2. **Deciding** ([`policy`], [`digest`]). When an item is due, the
//!    recipient's pending items are read under a per-recipient lock, as
//!    they are now (a range: its newest unread messages, leaving out what
//!    the recipient read, wrote, or was emailed before): read ones, kinds
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
//!
//! Each job's storage is the module of the same name under
//! [`crate::db::email`]; kinds and states are [`crate::domain::email`]'s.

pub mod announcer;
pub mod digest;
pub mod intake;
pub mod mailer;
pub mod notifier;
pub mod policy;
pub mod push;
pub mod reminders;
pub mod templates;
pub mod transport;
pub mod unsubscribe;

use std::sync::Arc;

use actix::{Actor, Addr};

use crate::config::Settings;
use crate::db::{Db, DbError};
use crate::metrics::Metrics;
use crate::rooms::hub::{Hub, WatchCommitted};

pub use notifier::{NotificationsCreated, Notifier};
pub use policy::Delays;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("email transport: {0}")]
    Transport(String),
}

/// The running email actors.
pub struct Started {
    /// Takes notifications.
    pub notifier: Addr<Notifier>,
    /// Takes kicks when emails are queued elsewhere (announcements).
    pub mailer: Addr<mailer::Mailer>,
}

/// Starts the mailer and the notifier and lets the notifier watch
/// committed messages.
pub fn start(
    settings: Arc<Settings>,
    db: Db,
    hub: Addr<Hub>,
    metrics: Arc<Metrics>,
) -> Result<Started, NotifyError> {
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
    let notifier = Notifier::new(settings, db, hub.clone(), mailer.clone(), metrics).start();
    hub.do_send(WatchCommitted(notifier.clone().recipient()));
    Ok(Started { notifier, mailer })
}
