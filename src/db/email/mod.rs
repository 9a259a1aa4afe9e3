//! The email fallback's storage (see `crate::notify` for the design), one
//! module per job of the pipeline:
//! - [`preferences`]: who wants which kinds of email;
//! - [`intake`]: the unread items owed when messages and notifications are
//!   committed;
//! - [`digest`]: a recipient's pending items read and decided under a
//!   per-recipient lock (a PostgreSQL advisory transaction lock; SQLite's
//!   single write lock), so one digest takes each item exactly once;
//! - [`outbox`]: rendered emails and the leased batches they are sent in.

pub mod digest;
pub mod intake;
pub mod outbox;
pub mod preferences;

use diesel_async::AsyncConnection;

pub use digest::{
    DispatchPlan, ItemSource, PendingItem, RecipientSnapshot, DIGEST_MESSAGES_PER_ROOM,
};
pub use intake::{is_status_notice, EmailItemRow};
pub use outbox::{BatchRow, OutboxRow};
pub use preferences::PreferencesRow;

use crate::db::schema::{email_batches, email_items, email_outbox};
use crate::db::{Db, DbError};
use crate::db_run;
use crate::domain::email::{BatchState, ItemState, OutboxState};

impl Db {
    /// Forgets decided items and sent emails last changed before `before`
    /// (they hold message content; pending work is never pruned). Failed
    /// emails are kept for inspection.
    pub async fn prune_email_history(&self, before: i64) -> Result<usize, DbError> {
        db_run!(self, |conn| {
            conn.transaction::<_, DbError, _>(async |conn| {
                let items = diesel::delete(
                    email_items::table
                        .filter(email_items::state.ne(ItemState::Pending))
                        .filter(email_items::updated_at.lt(before)),
                )
                .execute(conn)
                .await?;
                let emails = diesel::delete(
                    email_outbox::table
                        .filter(email_outbox::state.eq(OutboxState::Sent))
                        .filter(email_outbox::sent_at.lt(before)),
                )
                .execute(conn)
                .await?;
                let batches = diesel::delete(
                    email_batches::table
                        .filter(email_batches::state.ne(BatchState::Pending))
                        .filter(email_batches::updated_at.lt(before)),
                )
                .execute(conn)
                .await?;
                Ok(items + emails + batches)
            })
            .await
        })
    }
}
