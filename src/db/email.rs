//! The email fallback's storage: preferences, the unread items waiting out
//! their delay, the outbox of rendered emails and the batches they are sent
//! in (see `crate::notify` for the design).
//!
//! Work is shared between nodes through the database alone:
//! - a recipient's pending items are decided under a per-recipient lock
//!   (a PostgreSQL advisory transaction lock; SQLite's single write lock),
//!   so one digest takes each item exactly once;
//! - a batch is sent by the node holding its lease (`claimed_until`), taken
//!   with one atomic `UPDATE ... WHERE` that a second node cannot also win.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::models::{BookingRow, MessageRow, NotificationRow, UserRow};
use super::schema::{
    booking_participants, bookings, email_batches, email_items, email_outbox, email_preferences,
    messages, notifications, read_cursors, support_conversations, users,
};
use super::{Db, DbError};
use crate::db_run;

/// States of an unread item.
pub mod item_state {
    pub const PENDING: &str = "pending";
    pub const EMAILED: &str = "emailed";
    /// Read before it was due.
    pub const READ: &str = "read";
    /// The recipient turned this kind of email off.
    pub const DISABLED: &str = "disabled";
    /// The recipient has no email address (or was erased).
    pub const NO_ADDRESS: &str = "no_address";
    /// The message or notification is gone, or the recipient left the room.
    pub const GONE: &str = "gone";
}

/// States of an outbox email.
pub mod outbox_state {
    pub const QUEUED: &str = "queued";
    pub const SENT: &str = "sent";
    pub const FAILED: &str = "failed";
}

/// States of a batch (one request to Resend).
pub mod batch_state {
    pub const PENDING: &str = "pending";
    pub const SENT: &str = "sent";
    pub const FAILED: &str = "failed";
    /// Refused as a whole: its emails went back to the outbox to go alone.
    pub const SPLIT: &str = "split";
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = email_preferences, treat_none_as_default_value = false)]
pub struct PreferencesRow {
    pub user_id: String,
    pub chat: bool,
    pub booking: bool,
    pub support: bool,
    pub marketing: bool,
    pub chat_delay_secs: Option<i64>,
    pub updated_at: i64,
}

impl PreferencesRow {
    /// What a user who never chose gets: everything but marketing.
    pub fn defaults(user_id: &str) -> Self {
        PreferencesRow {
            user_id: user_id.to_owned(),
            chat: true,
            booking: true,
            support: true,
            marketing: false,
            chat_delay_secs: None,
            updated_at: 0,
        }
    }

    /// Whether emails of `kind` are on; unknown kinds are off.
    pub fn allows(&self, kind: &str) -> bool {
        match kind {
            "chat" => self.chat,
            "booking" => self.booking,
            "support" => self.support,
            "marketing" => self.marketing,
            _ => false,
        }
    }

    pub fn set(&mut self, kind: &str, enabled: bool) -> bool {
        let flag = match kind {
            "chat" => &mut self.chat,
            "booking" => &mut self.booking,
            "support" => &mut self.support,
            "marketing" => &mut self.marketing,
            _ => return false,
        };
        *flag = enabled;
        true
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = email_items, treat_none_as_default_value = false)]
pub struct EmailItemRow {
    pub id: String,
    pub user_id: String,
    pub kind: String,
    /// `message:<id>` or `notification:<id>`: unique per user.
    pub source: String,
    pub room: Option<String>,
    pub seq: Option<i64>,
    pub message_id: Option<String>,
    pub notification_id: Option<String>,
    /// When the message or notification itself was created.
    pub created_at: i64,
    pub due_at: i64,
    pub state: String,
    pub outbox_id: Option<String>,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = email_outbox, treat_none_as_default_value = false)]
pub struct OutboxRow {
    pub id: String,
    pub user_id: String,
    pub to_address: String,
    pub subject: String,
    pub html: String,
    pub text: String,
    /// For the `List-Unsubscribe` header, when the email is of one kind.
    pub unsubscribe_url: Option<String>,
    pub item_count: i64,
    pub state: String,
    pub solo: bool,
    pub batch_id: Option<String>,
    pub provider_id: Option<String>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub sent_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = email_batches, treat_none_as_default_value = false)]
pub struct BatchRow {
    pub id: String,
    pub state: String,
    pub email_count: i64,
    /// Counted when a batch is claimed, so a send that crashes the process
    /// still counts and a poison email cannot be retried for ever.
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub claimed_by: Option<String>,
    pub claimed_until: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Everything needed to decide about one recipient's pending items, read
/// under the recipient's lock.
#[derive(Debug, Clone)]
pub struct RecipientSnapshot {
    pub user: Option<UserRow>,
    pub preferences: Option<PreferencesRow>,
    pub items: Vec<PendingItem>,
}

#[derive(Debug, Clone)]
pub struct PendingItem {
    pub row: EmailItemRow,
    pub source: ItemSource,
}

/// An item's message or notification as it is now.
#[derive(Debug, Clone)]
pub enum ItemSource {
    Chat {
        message: MessageRow,
        /// The booking's title (booking rooms only).
        booking_title: Option<String>,
        /// The recipient's read cursor in the room (0 when none).
        read_up_to: i64,
        /// Whether the recipient still belongs to the room.
        member: bool,
    },
    Notification(NotificationRow),
    /// Deleted, or never found.
    Gone,
}

/// What to do with a recipient's pending items, decided by the caller.
#[derive(Debug, Clone, Default)]
pub struct DispatchPlan {
    /// The digest to store; `emailed` items point at it.
    pub email: Option<OutboxRow>,
    pub emailed: Vec<String>,
    /// Item id and its final state (one of `item_state`).
    pub dropped: Vec<(String, &'static str)>,
    /// Item id and when to look at it again.
    pub rescheduled: Vec<(String, i64)>,
}

/// Serialises the deciding of one recipient's items across nodes.
pub(crate) trait LockRecipient {
    async fn lock_email_recipient(&mut self, user_id: &str) -> QueryResult<()>;
}

/// SQLite: email items stored per transaction (see [`crate::db::WriteGate`]).
const SQLITE_ITEMS_PER_TRANSACTION: usize = 500;

/// Advisory lock namespace of the email recipients (two-key form, so it
/// cannot meet the migration lock's one-key id).
const RECIPIENT_LOCK_NAMESPACE: i32 = 0x6d61_696c;

impl LockRecipient for diesel_async::AsyncPgConnection {
    async fn lock_email_recipient(&mut self, user_id: &str) -> QueryResult<()> {
        diesel::sql_query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind::<diesel::sql_types::Integer, _>(RECIPIENT_LOCK_NAMESPACE)
            .bind::<diesel::sql_types::Text, _>(user_id)
            .execute(self)
            .await?;
        Ok(())
    }
}

impl LockRecipient for super::SqliteConn {
    /// A write as the transaction's first statement takes SQLite's one write
    /// lock at once (waiting on the busy timeout), instead of failing later
    /// when a transaction that began by reading wants to write.
    async fn lock_email_recipient(&mut self, user_id: &str) -> QueryResult<()> {
        diesel::update(
            email_items::table
                .filter(email_items::user_id.eq(user_id))
                .filter(email_items::state.eq(item_state::PENDING)),
        )
        .set(email_items::updated_at.eq(email_items::updated_at))
        .execute(self)
        .await?;
        Ok(())
    }
}

impl Db {
    pub async fn email_preferences(
        &self,
        user_id: &str,
    ) -> Result<Option<PreferencesRow>, DbError> {
        db_run!(self, |conn| {
            Ok(email_preferences::table
                .find(user_id)
                .select(PreferencesRow::as_select())
                .first(conn)
                .await
                .optional()?)
        })
    }

    pub async fn email_preferences_of(
        &self,
        user_ids: &[String],
    ) -> Result<Vec<PreferencesRow>, DbError> {
        db_run!(self, |conn| {
            Ok(email_preferences::table
                .filter(email_preferences::user_id.eq_any(user_ids))
                .select(PreferencesRow::as_select())
                .load(conn)
                .await?)
        })
    }

    /// Stores a user's whole preferences row.
    pub async fn save_email_preferences(&self, row: &PreferencesRow) -> Result<(), DbError> {
        use diesel::upsert::excluded;
        db_run!(self, |conn| {
            diesel::insert_into(email_preferences::table)
                .values(row)
                .on_conflict(email_preferences::user_id)
                .do_update()
                .set((
                    email_preferences::chat.eq(excluded(email_preferences::chat)),
                    email_preferences::booking.eq(excluded(email_preferences::booking)),
                    email_preferences::support.eq(excluded(email_preferences::support)),
                    email_preferences::marketing.eq(excluded(email_preferences::marketing)),
                    email_preferences::chat_delay_secs
                        .eq(excluded(email_preferences::chat_delay_secs)),
                    email_preferences::updated_at.eq(excluded(email_preferences::updated_at)),
                ))
                .execute(conn)
                .await?;
            Ok(())
        })
    }

    /// Turns one kind of email on or off, leaving the others as they are;
    /// returns the stored preferences.
    pub async fn set_email_kind(
        &self,
        user_id: &str,
        kind: &str,
        enabled: bool,
    ) -> Result<PreferencesRow, DbError> {
        let now = crate::time::now_ms();
        let mut defaults = PreferencesRow::defaults(user_id);
        defaults.updated_at = now;
        db_run!(self, |conn| {
            conn.transaction::<_, DbError, _>(async |conn| {
                diesel::insert_into(email_preferences::table)
                    .values(&defaults)
                    .on_conflict_do_nothing()
                    .execute(conn)
                    .await?;
                let row = email_preferences::table.find(user_id);
                let updated = match kind {
                    "chat" => diesel::update(row)
                        .set((
                            email_preferences::chat.eq(enabled),
                            email_preferences::updated_at.eq(now),
                        ))
                        .execute(conn),
                    "booking" => diesel::update(row)
                        .set((
                            email_preferences::booking.eq(enabled),
                            email_preferences::updated_at.eq(now),
                        ))
                        .execute(conn),
                    "support" => diesel::update(row)
                        .set((
                            email_preferences::support.eq(enabled),
                            email_preferences::updated_at.eq(now),
                        ))
                        .execute(conn),
                    _ => diesel::update(row)
                        .set((
                            email_preferences::marketing.eq(enabled),
                            email_preferences::updated_at.eq(now),
                        ))
                        .execute(conn),
                };
                updated.await?;
                Ok(email_preferences::table
                    .find(user_id)
                    .select(PreferencesRow::as_select())
                    .first(conn)
                    .await?)
            })
            .await
        })
    }

    /// Stores unread items; one already stored for the same user and
    /// source is left as it is. Answers how many were new.
    pub async fn insert_email_items(&self, rows: &[EmailItemRow]) -> Result<usize, DbError> {
        if rows.is_empty() {
            return Ok(0);
        }
        match self {
            // One blocking call per chunk, not one thread hop per row; a
            // transaction per chunk, so chat appends waiting at the write
            // gate wait for one chunk, not for all of a busy room's items.
            Db::Sqlite(pool, gate) => {
                let mut pooled = pool.get().await?;
                let mut inserted = 0;
                for chunk in rows.chunks(SQLITE_ITEMS_PER_TRANSACTION) {
                    let chunk = chunk.to_vec();
                    let _turn = gate.lock().await;
                    inserted += pooled
                        .spawn_blocking(move |conn| sqlite_items::insert(conn, &chunk))
                        .await?;
                }
                Ok(inserted)
            }
            // Multi-row statements, not one round trip per row.
            Db::Postgres(pool) => {
                let mut pooled = pool.get().await?;
                let mut inserted = 0;
                for chunk in rows.chunks(1000) {
                    inserted += diesel::insert_into(email_items::table)
                        .values(chunk)
                        .on_conflict_do_nothing()
                        .execute(&mut *pooled)
                        .await?;
                }
                Ok(inserted)
            }
        }
    }

    /// Recipients with a pending item due by `now`.
    pub async fn due_email_recipients(&self, now: i64, limit: i64) -> Result<Vec<String>, DbError> {
        db_run!(self, |conn| {
            Ok(email_items::table
                .filter(email_items::state.eq(item_state::PENDING))
                .filter(email_items::due_at.le(now))
                .select(email_items::user_id)
                .distinct()
                .limit(limit)
                .load(conn)
                .await?)
        })
    }

    /// When the earliest pending item is due.
    pub async fn next_email_item_due(&self) -> Result<Option<i64>, DbError> {
        db_run!(self, |conn| {
            Ok(email_items::table
                .filter(email_items::state.eq(item_state::PENDING))
                .select(diesel::dsl::min(email_items::due_at))
                .first(conn)
                .await?)
        })
    }

    /// The newest item's creation time: the catch-up after a restart starts
    /// a little before it.
    pub async fn latest_email_item_created(&self) -> Result<Option<i64>, DbError> {
        db_run!(self, |conn| {
            Ok(email_items::table
                .select(diesel::dsl::max(email_items::created_at))
                .first(conn)
                .await?)
        })
    }

    /// Decides about one recipient's pending items under the recipient's
    /// lock: `decide` sees them as they are now and says what becomes of
    /// them; the plan is stored in the same transaction and returned.
    pub async fn dispatch_email_items<F>(
        &self,
        user_id: &str,
        decide: F,
    ) -> Result<DispatchPlan, DbError>
    where
        F: FnOnce(RecipientSnapshot) -> DispatchPlan + Send,
    {
        let now = crate::time::now_ms();
        db_run!(self, |conn| {
            conn.transaction::<_, DbError, _>(async |conn| {
                conn.lock_email_recipient(user_id).await?;
                let rows: Vec<EmailItemRow> = email_items::table
                    .filter(email_items::user_id.eq(user_id))
                    .filter(email_items::state.eq(item_state::PENDING))
                    .order(email_items::created_at.asc())
                    .select(EmailItemRow::as_select())
                    .load(conn)
                    .await?;
                if rows.is_empty() {
                    return Ok(DispatchPlan::default());
                }
                let message_ids: Vec<&str> = rows
                    .iter()
                    .filter_map(|r| r.message_id.as_deref())
                    .collect();
                let notification_ids: Vec<&str> = rows
                    .iter()
                    .filter_map(|r| r.notification_id.as_deref())
                    .collect();
                let rooms: Vec<&str> = rows.iter().filter_map(|r| r.room.as_deref()).collect();
                let booking_ids: Vec<&str> = rooms
                    .iter()
                    .filter_map(|room| room.strip_prefix("booking:"))
                    .collect();
                let conversation_ids: Vec<&str> = rooms
                    .iter()
                    .filter_map(|room| room.strip_prefix("support:"))
                    .collect();
                let found_messages: Vec<MessageRow> = if message_ids.is_empty() {
                    Vec::new()
                } else {
                    messages::table
                        .filter(messages::id.eq_any(&message_ids))
                        .select(MessageRow::as_select())
                        .load(conn)
                        .await?
                };
                let cursors: Vec<(String, i64)> = if rooms.is_empty() {
                    Vec::new()
                } else {
                    read_cursors::table
                        .filter(read_cursors::user_id.eq(user_id))
                        .filter(read_cursors::room.eq_any(&rooms))
                        .select((read_cursors::room, read_cursors::seq))
                        .load(conn)
                        .await?
                };
                let (member_bookings, booking_rows): (Vec<String>, Vec<BookingRow>) =
                    if booking_ids.is_empty() {
                        (Vec::new(), Vec::new())
                    } else {
                        (
                            booking_participants::table
                                .filter(booking_participants::user_id.eq(user_id))
                                .filter(booking_participants::booking_id.eq_any(&booking_ids))
                                .select(booking_participants::booking_id)
                                .load(conn)
                                .await?,
                            bookings::table
                                .filter(bookings::id.eq_any(&booking_ids))
                                .select(BookingRow::as_select())
                                .load(conn)
                                .await?,
                        )
                    };
                let own_conversations: Vec<String> = if conversation_ids.is_empty() {
                    Vec::new()
                } else {
                    support_conversations::table
                        .filter(support_conversations::user_id.eq(user_id))
                        .filter(support_conversations::id.eq_any(&conversation_ids))
                        .select(support_conversations::id)
                        .load(conn)
                        .await?
                };
                let found_notifications: Vec<NotificationRow> = if notification_ids.is_empty() {
                    Vec::new()
                } else {
                    notifications::table
                        .filter(notifications::id.eq_any(&notification_ids))
                        .filter(notifications::user_id.eq(user_id))
                        .select(NotificationRow::as_select())
                        .load(conn)
                        .await?
                };
                let user: Option<UserRow> = users::table
                    .find(user_id)
                    .select(UserRow::as_select())
                    .first(conn)
                    .await
                    .optional()?;
                let preferences: Option<PreferencesRow> = email_preferences::table
                    .find(user_id)
                    .select(PreferencesRow::as_select())
                    .first(conn)
                    .await
                    .optional()?;

                let items = rows
                    .into_iter()
                    .map(|row| {
                        let source = if let Some(id) = &row.message_id {
                            match found_messages.iter().find(|m| &m.id == id) {
                                Some(message) => {
                                    let room = message.room.as_str();
                                    let read_up_to = cursors
                                        .iter()
                                        .find(|(r, _)| r == room)
                                        .map_or(0, |(_, seq)| *seq);
                                    let (member, booking_title) = if let Some(booking) =
                                        room.strip_prefix("booking:")
                                    {
                                        (
                                            member_bookings.iter().any(|b| b == booking),
                                            booking_rows
                                                .iter()
                                                .find(|b| b.id == booking)
                                                .map(|b| b.title.clone()),
                                        )
                                    } else if let Some(conversation) = room.strip_prefix("support:")
                                    {
                                        (own_conversations.iter().any(|c| c == conversation), None)
                                    } else {
                                        (false, None)
                                    };
                                    ItemSource::Chat {
                                        message: message.clone(),
                                        booking_title,
                                        read_up_to,
                                        member,
                                    }
                                }
                                None => ItemSource::Gone,
                            }
                        } else if let Some(id) = &row.notification_id {
                            found_notifications
                                .iter()
                                .find(|n| &n.id == id)
                                .cloned()
                                .map_or(ItemSource::Gone, ItemSource::Notification)
                        } else {
                            ItemSource::Gone
                        };
                        PendingItem { row, source }
                    })
                    .collect();

                let plan = decide(RecipientSnapshot {
                    user,
                    preferences,
                    items,
                });

                if let Some(email) = &plan.email {
                    diesel::insert_into(email_outbox::table)
                        .values(email)
                        .execute(conn)
                        .await?;
                    diesel::update(
                        email_items::table.filter(email_items::id.eq_any(&plan.emailed)),
                    )
                    .set((
                        email_items::state.eq(item_state::EMAILED),
                        email_items::outbox_id.eq(&email.id),
                        email_items::updated_at.eq(now),
                    ))
                    .execute(conn)
                    .await?;
                }
                for (id, state) in &plan.dropped {
                    diesel::update(email_items::table.find(id))
                        .set((
                            email_items::state.eq(*state),
                            email_items::updated_at.eq(now),
                        ))
                        .execute(conn)
                        .await?;
                }
                for (id, due_at) in &plan.rescheduled {
                    diesel::update(email_items::table.find(id))
                        .set((
                            email_items::due_at.eq(*due_at),
                            email_items::updated_at.eq(now),
                        ))
                        .execute(conn)
                        .await?;
                }
                Ok(plan)
            })
            .await
        })
    }

    /// Forgets decided items and sent emails last changed before `before`
    /// (they hold message content; pending work is never pruned). Failed
    /// emails are kept for inspection.
    pub async fn prune_email_history(&self, before: i64) -> Result<usize, DbError> {
        db_run!(self, |conn| {
            conn.transaction::<_, DbError, _>(async |conn| {
                let items = diesel::delete(
                    email_items::table
                        .filter(email_items::state.ne(item_state::PENDING))
                        .filter(email_items::updated_at.lt(before)),
                )
                .execute(conn)
                .await?;
                let emails = diesel::delete(
                    email_outbox::table
                        .filter(email_outbox::state.eq(outbox_state::SENT))
                        .filter(email_outbox::sent_at.lt(before)),
                )
                .execute(conn)
                .await?;
                let batches = diesel::delete(
                    email_batches::table
                        .filter(email_batches::state.ne(batch_state::PENDING))
                        .filter(email_batches::updated_at.lt(before)),
                )
                .execute(conn)
                .await?;
                Ok(items + emails + batches)
            })
            .await
        })
    }

    /// Messages of booking and support rooms stored since `since` (unix
    /// ms), in id order after `after_id`, for the catch-up after a restart.
    pub async fn chat_messages_since(
        &self,
        since: i64,
        after_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<MessageRow>, DbError> {
        db_run!(self, |conn| {
            let mut query = messages::table
                .filter(messages::sent_at.ge(since))
                .filter(
                    messages::room
                        .like("booking:%")
                        .or(messages::room.like("support:%")),
                )
                .into_boxed();
            if let Some(after_id) = after_id {
                query = query.filter(messages::id.gt(after_id));
            }
            Ok(query
                .order(messages::id.asc())
                .limit(limit)
                .select(MessageRow::as_select())
                .load(conn)
                .await?)
        })
    }

    /// Unread notifications created since `since`, in id order after
    /// `after_id`, for the catch-up after a restart.
    pub async fn unread_notifications_since(
        &self,
        since: i64,
        after_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<NotificationRow>, DbError> {
        db_run!(self, |conn| {
            let mut query = notifications::table
                .filter(notifications::created_at.ge(since))
                .filter(notifications::read_at.is_null())
                .into_boxed();
            if let Some(after_id) = after_id {
                query = query.filter(notifications::id.gt(after_id));
            }
            Ok(query
                .order(notifications::id.asc())
                .limit(limit)
                .select(NotificationRow::as_select())
                .load(conn)
                .await?)
        })
    }

    /// `(booking_id, user_id)` of every participant of these bookings.
    pub async fn participants_of_bookings(
        &self,
        booking_ids: &[&str],
    ) -> Result<Vec<(String, String)>, DbError> {
        db_run!(self, |conn| {
            Ok(booking_participants::table
                .filter(booking_participants::booking_id.eq_any(booking_ids))
                .select((
                    booking_participants::booking_id,
                    booking_participants::user_id,
                ))
                .load(conn)
                .await?)
        })
    }

    /// `(conversation_id, user_id)`: who opened these support conversations.
    pub async fn support_conversation_owners(
        &self,
        conversation_ids: &[&str],
    ) -> Result<Vec<(String, String)>, DbError> {
        db_run!(self, |conn| {
            Ok(support_conversations::table
                .filter(support_conversations::id.eq_any(conversation_ids))
                .select((support_conversations::id, support_conversations::user_id))
                .load(conn)
                .await?)
        })
    }

    /// Puts up to `max` queued emails without a batch into a new batch
    /// (emails marked `solo` go one per batch); `None` when there are none.
    /// The assignment is one atomic UPDATE, so two nodes never batch the
    /// same email.
    pub async fn form_email_batch(&self, max: i64) -> Result<Option<BatchRow>, DbError> {
        let now = crate::time::now_ms();
        let batch_id = uuid::Uuid::now_v7().to_string();
        db_run!(self, |conn| {
            conn.transaction::<_, DbError, _>(async |conn| {
                let mut assigned = 0;
                for solo in [true, false] {
                    let unbatched = email_outbox::table
                        .filter(email_outbox::state.eq(outbox_state::QUEUED))
                        .filter(email_outbox::batch_id.is_null())
                        .filter(email_outbox::solo.eq(solo));
                    let candidates: Vec<String> = unbatched
                        .order(email_outbox::created_at.asc())
                        .limit(if solo { 1 } else { max })
                        .select(email_outbox::id)
                        .load(conn)
                        .await?;
                    if candidates.is_empty() {
                        continue;
                    }
                    // `batch_id IS NULL` again: PostgreSQL re-checks it on a
                    // row another node batched meanwhile, and skips that row.
                    assigned = diesel::update(
                        email_outbox::table
                            .filter(email_outbox::id.eq_any(&candidates))
                            .filter(email_outbox::batch_id.is_null()),
                    )
                    .set(email_outbox::batch_id.eq(&batch_id))
                    .execute(conn)
                    .await?;
                    if assigned > 0 {
                        break;
                    }
                }
                if assigned == 0 {
                    return Ok(None);
                }
                let batch = BatchRow {
                    id: batch_id.clone(),
                    state: batch_state::PENDING.to_owned(),
                    email_count: assigned as i64,
                    attempts: 0,
                    next_attempt_at: now,
                    claimed_by: None,
                    claimed_until: None,
                    last_error: None,
                    created_at: now,
                    updated_at: now,
                };
                diesel::insert_into(email_batches::table)
                    .values(&batch)
                    .execute(conn)
                    .await?;
                Ok(Some(batch))
            })
            .await
        })
    }

    /// Takes the lease of the batch due first, if any, counting an attempt;
    /// returns it with its emails. A batch whose lease ran out (its node
    /// died mid-send) is due again.
    pub async fn claim_email_batch(
        &self,
        node: &str,
        lease_until: i64,
    ) -> Result<Option<(BatchRow, Vec<OutboxRow>)>, DbError> {
        let now = crate::time::now_ms();
        db_run!(self, |conn| {
            let claimable = email_batches::state
                .eq(batch_state::PENDING)
                .and(email_batches::next_attempt_at.le(now))
                .and(
                    email_batches::claimed_until
                        .is_null()
                        .or(email_batches::claimed_until.lt(now)),
                );
            let first_due: Option<String> = email_batches::table
                .filter(claimable)
                .order(email_batches::next_attempt_at.asc())
                .select(email_batches::id)
                .first(conn)
                .await
                .optional()?;
            let Some(first_due) = first_due else {
                return Ok(None);
            };
            // The conditions are repeated in the UPDATE: a concurrent
            // claimer that waited for this row's lock re-checks them on the
            // updated row and takes nothing.
            let claimed: Vec<BatchRow> = diesel::update(
                email_batches::table
                    .filter(email_batches::id.eq(&first_due))
                    .filter(claimable),
            )
            .set((
                email_batches::claimed_by.eq(node),
                email_batches::claimed_until.eq(lease_until),
                email_batches::attempts.eq(email_batches::attempts + 1),
                email_batches::updated_at.eq(now),
            ))
            .returning(BatchRow::as_returning())
            .get_results(conn)
            .await?;
            let Some(batch) = claimed.into_iter().next() else {
                return Ok(None);
            };
            let emails: Vec<OutboxRow> = email_outbox::table
                .filter(email_outbox::batch_id.eq(&batch.id))
                .order(email_outbox::id.asc())
                .select(OutboxRow::as_select())
                .load(conn)
                .await?;
            Ok(Some((batch, emails)))
        })
    }

    /// Resend accepted the batch: `provider_ids` pairs outbox ids with the
    /// ids Resend gave them.
    ///
    /// This and the other outcomes below apply only while `node` holds the
    /// batch's lease, and answer whether it did: a node whose lease ran out
    /// leaves the batch to the node that took it over (which repeats the
    /// request under the same Idempotency-Key).
    pub async fn email_batch_sent(
        &self,
        node: &str,
        batch_id: &str,
        provider_ids: &[(String, String)],
    ) -> Result<bool, DbError> {
        let now = crate::time::now_ms();
        db_run!(self, |conn| {
            conn.transaction::<_, DbError, _>(async |conn| {
                let held = diesel::update(
                    email_batches::table
                        .find(batch_id)
                        .filter(email_batches::claimed_by.eq(node)),
                )
                .set((
                    email_batches::state.eq(batch_state::SENT),
                    email_batches::claimed_by.eq(None::<String>),
                    email_batches::claimed_until.eq(None::<i64>),
                    email_batches::last_error.eq(None::<String>),
                    email_batches::updated_at.eq(now),
                ))
                .execute(conn)
                .await?;
                if held == 0 {
                    return Ok(false);
                }
                diesel::update(email_outbox::table.filter(email_outbox::batch_id.eq(batch_id)))
                    .set((
                        email_outbox::state.eq(outbox_state::SENT),
                        email_outbox::sent_at.eq(now),
                    ))
                    .execute(conn)
                    .await?;
                for (outbox_id, provider_id) in provider_ids {
                    diesel::update(email_outbox::table.find(outbox_id))
                        .set(email_outbox::provider_id.eq(provider_id))
                        .execute(conn)
                        .await?;
                }
                Ok(true)
            })
            .await
        })
    }

    /// The batch is tried again at `next_attempt_at`; a rate-limited try is
    /// not counted as an attempt.
    pub async fn email_batch_retry(
        &self,
        node: &str,
        batch_id: &str,
        next_attempt_at: i64,
        error: &str,
        counts_as_attempt: bool,
    ) -> Result<bool, DbError> {
        let now = crate::time::now_ms();
        let uncount = if counts_as_attempt { 0 } else { 1 };
        db_run!(self, |conn| {
            let held = diesel::update(
                email_batches::table
                    .find(batch_id)
                    .filter(email_batches::claimed_by.eq(node)),
            )
            .set((
                email_batches::next_attempt_at.eq(next_attempt_at),
                email_batches::attempts.eq(email_batches::attempts - uncount),
                email_batches::claimed_by.eq(None::<String>),
                email_batches::claimed_until.eq(None::<i64>),
                email_batches::last_error.eq(error),
                email_batches::updated_at.eq(now),
            ))
            .execute(conn)
            .await?;
            Ok(held == 1)
        })
    }

    /// The batch is given up: it and its emails are marked failed.
    pub async fn email_batch_failed(
        &self,
        node: &str,
        batch_id: &str,
        error: &str,
    ) -> Result<bool, DbError> {
        let now = crate::time::now_ms();
        db_run!(self, |conn| {
            conn.transaction::<_, DbError, _>(async |conn| {
                let held = diesel::update(
                    email_batches::table
                        .find(batch_id)
                        .filter(email_batches::claimed_by.eq(node)),
                )
                .set((
                    email_batches::state.eq(batch_state::FAILED),
                    email_batches::claimed_by.eq(None::<String>),
                    email_batches::claimed_until.eq(None::<i64>),
                    email_batches::last_error.eq(error),
                    email_batches::updated_at.eq(now),
                ))
                .execute(conn)
                .await?;
                if held == 0 {
                    return Ok(false);
                }
                diesel::update(email_outbox::table.filter(email_outbox::batch_id.eq(batch_id)))
                    .set((
                        email_outbox::state.eq(outbox_state::FAILED),
                        email_outbox::last_error.eq(error),
                    ))
                    .execute(conn)
                    .await?;
                Ok(true)
            })
            .await
        })
    }

    /// Resend refused the batch as a whole (nothing of it was sent): its
    /// emails go back to the outbox, each to be sent on its own.
    pub async fn split_email_batch(
        &self,
        node: &str,
        batch_id: &str,
        error: &str,
    ) -> Result<bool, DbError> {
        let now = crate::time::now_ms();
        db_run!(self, |conn| {
            conn.transaction::<_, DbError, _>(async |conn| {
                let held = diesel::update(
                    email_batches::table
                        .find(batch_id)
                        .filter(email_batches::claimed_by.eq(node)),
                )
                .set((
                    email_batches::state.eq(batch_state::SPLIT),
                    email_batches::claimed_by.eq(None::<String>),
                    email_batches::claimed_until.eq(None::<i64>),
                    email_batches::last_error.eq(error),
                    email_batches::updated_at.eq(now),
                ))
                .execute(conn)
                .await?;
                if held == 0 {
                    return Ok(false);
                }
                diesel::update(email_outbox::table.filter(email_outbox::batch_id.eq(batch_id)))
                    .set((
                        email_outbox::batch_id.eq(None::<String>),
                        email_outbox::solo.eq(true),
                        email_outbox::last_error.eq(error),
                    ))
                    .execute(conn)
                    .await?;
                Ok(true)
            })
            .await
        })
    }

    /// When the mailer has work next: now when emails wait for a batch,
    /// else the earliest moment a pending batch may be claimed (its next
    /// attempt, or the end of a lease a dead node left).
    pub async fn next_email_send(&self) -> Result<Option<i64>, DbError> {
        let now = crate::time::now_ms();
        db_run!(self, |conn| {
            let unbatched: i64 = email_outbox::table
                .filter(email_outbox::state.eq(outbox_state::QUEUED))
                .filter(email_outbox::batch_id.is_null())
                .count()
                .get_result(conn)
                .await?;
            if unbatched > 0 {
                return Ok(Some(now));
            }
            let pending: Vec<(i64, Option<i64>)> = email_batches::table
                .filter(email_batches::state.eq(batch_state::PENDING))
                .order(email_batches::next_attempt_at.asc())
                .limit(100)
                .select((email_batches::next_attempt_at, email_batches::claimed_until))
                .load(conn)
                .await?;
            Ok(pending
                .into_iter()
                .map(|(next, lease)| next.max(lease.unwrap_or(0)))
                .min())
        })
    }
}

impl Db {
    /// Emails waiting in the outbox (queued, sent or not yet batched).
    pub async fn queued_email_count(&self) -> Result<i64, DbError> {
        db_run!(self, |conn| {
            Ok(email_outbox::table
                .filter(email_outbox::state.eq(outbox_state::QUEUED))
                .count()
                .get_result(conn)
                .await?)
        })
    }
}

/// Item inserts on SQLite's synchronous connection (inside one
/// `spawn_blocking` call).
mod sqlite_items {
    use diesel::prelude::*;
    use diesel::RunQueryDsl;

    use super::EmailItemRow;
    use crate::db::schema::email_items;

    pub(super) fn insert(conn: &mut SqliteConnection, rows: &[EmailItemRow]) -> QueryResult<usize> {
        conn.immediate_transaction(|conn| {
            let mut inserted = 0;
            for row in rows {
                inserted += diesel::insert_into(email_items::table)
                    .values(row)
                    .on_conflict_do_nothing()
                    .execute(conn)?;
            }
            Ok(inserted)
        })
    }
}
