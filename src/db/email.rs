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
use diesel::upsert::DecoratableTarget;
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::models::{BookingRow, MessageRow, NotificationRow, UserRow};
use super::schema::{
    booking_participants, bookings, email_batches, email_items, email_outbox, email_preferences,
    messages, notifications, read_cursors, support_conversations, users,
};
use super::{Db, DbError};
use crate::db_run;
use crate::domain::email::{Audience, BatchState, ChatRoom, EmailKind, ItemState, OutboxState};

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

    /// Whether emails of `kind` are on.
    pub fn allows(&self, kind: EmailKind) -> bool {
        match kind {
            EmailKind::Chat => self.chat,
            EmailKind::Booking => self.booking,
            EmailKind::Support => self.support,
            EmailKind::Marketing => self.marketing,
        }
    }

    pub fn set(&mut self, kind: EmailKind, enabled: bool) {
        let flag = match kind {
            EmailKind::Chat => &mut self.chat,
            EmailKind::Booking => &mut self.booking,
            EmailKind::Support => &mut self.support,
            EmailKind::Marketing => &mut self.marketing,
        };
        *flag = enabled;
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = email_items, treat_none_as_default_value = false)]
pub struct EmailItemRow {
    pub id: String,
    pub user_id: String,
    pub kind: EmailKind,
    /// `message:<id>`, `notification:<id>` or, for a chat range,
    /// `range:<room>:<item id>`: unique per user.
    pub source: String,
    pub room: Option<String>,
    /// A chat item's first message (see `up_to_seq`).
    pub seq: Option<i64>,
    pub message_id: Option<String>,
    pub notification_id: Option<String>,
    /// When the message or notification itself was created.
    pub created_at: i64,
    pub due_at: i64,
    pub state: ItemState,
    pub outbox_id: Option<String>,
    pub updated_at: i64,
    /// A chat range's last message: the item covers the room's messages
    /// `seq ..= up_to_seq`. NULL on items stored one per message before
    /// ranges existed (their range is their one message).
    pub up_to_seq: Option<i64>,
}

impl EmailItemRow {
    /// The room and the messages a chat item covers.
    pub fn chat_range(&self) -> Option<(&str, i64, i64)> {
        let room = self.room.as_deref()?;
        let first = self.seq?;
        Some((room, first, self.up_to_seq.unwrap_or(first)))
    }
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
    pub state: OutboxState,
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
    pub state: BatchState,
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

/// An item's messages or notification as they are now.
#[derive(Debug, Clone)]
pub enum ItemSource {
    Chat {
        /// The newest unread messages of the range (at most
        /// [`DIGEST_MESSAGES_PER_ROOM`]), oldest first: not the recipient's
        /// own, not status notices, none an earlier email showed.
        messages: Vec<MessageRow>,
        /// Unread messages of the range older than those shown.
        more: i64,
        /// When the oldest unread message of the range was sent.
        oldest_unread_at: Option<i64>,
        /// The booking's title (booking rooms only).
        booking_title: Option<String>,
        /// Whether the recipient read the whole range.
        read: bool,
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
    /// Item id and its final state.
    pub dropped: Vec<(String, ItemState)>,
    /// Item id and when to look at it again.
    pub rescheduled: Vec<(String, i64)>,
}

/// A digest shows at most this many messages of one room (the newest);
/// it counts the older ones.
pub const DIGEST_MESSAGES_PER_ROOM: usize = 20;

/// Messages of a range read to find those shown: a few more than shown,
/// for the ones left out (status notices, shown by an earlier email).
const DIGEST_MESSAGES_READ: i64 = 100;

/// A booking status change posted into its room: each one is also a
/// `booking` notification, which is what gets emailed.
pub fn is_status_notice(message: &MessageRow) -> bool {
    message.sender_role == "system"
        && message
            .client_id
            .as_deref()
            .is_some_and(|c| c.starts_with("status:"))
}

/// Serialises the deciding of one recipient's items across nodes.
pub(crate) trait LockRecipient {
    async fn lock_email_recipient(&mut self, user_id: &str) -> QueryResult<()>;
    /// The recipient's pending items, oldest first, locked until the
    /// transaction ends where the backend locks rows: a chat range the
    /// notifier would extend meanwhile is extended after this decision (or,
    /// if it was emailed, a new range begins), never silently covered.
    async fn pending_email_items(&mut self, user_id: &str) -> QueryResult<Vec<EmailItemRow>>;
}

/// How [`Db::write_email_items`] stores rows.
#[derive(Debug, Clone, Copy)]
enum ItemWrite {
    /// New rows; one already stored for the same user and source stays.
    InsertNew,
    /// Chat ranges, growing the recipient's pending range in the room.
    GrowRanges,
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

    async fn pending_email_items(&mut self, user_id: &str) -> QueryResult<Vec<EmailItemRow>> {
        email_items::table
            .filter(email_items::user_id.eq(user_id))
            .filter(email_items::state.eq(ItemState::Pending))
            .order(email_items::created_at.asc())
            .select(EmailItemRow::as_select())
            .for_update()
            .load(self)
            .await
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
                .filter(email_items::state.eq(ItemState::Pending)),
        )
        .set(email_items::updated_at.eq(email_items::updated_at))
        .execute(self)
        .await?;
        Ok(())
    }

    /// SQLite's write lock, taken above, already keeps every writer out.
    async fn pending_email_items(&mut self, user_id: &str) -> QueryResult<Vec<EmailItemRow>> {
        email_items::table
            .filter(email_items::user_id.eq(user_id))
            .filter(email_items::state.eq(ItemState::Pending))
            .order(email_items::created_at.asc())
            .select(EmailItemRow::as_select())
            .load(self)
            .await
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
        kind: EmailKind,
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
                    EmailKind::Chat => diesel::update(row)
                        .set((
                            email_preferences::chat.eq(enabled),
                            email_preferences::updated_at.eq(now),
                        ))
                        .execute(conn),
                    EmailKind::Booking => diesel::update(row)
                        .set((
                            email_preferences::booking.eq(enabled),
                            email_preferences::updated_at.eq(now),
                        ))
                        .execute(conn),
                    EmailKind::Support => diesel::update(row)
                        .set((
                            email_preferences::support.eq(enabled),
                            email_preferences::updated_at.eq(now),
                        ))
                        .execute(conn),
                    EmailKind::Marketing => diesel::update(row)
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
        self.write_email_items(rows, ItemWrite::InsertNew).await
    }

    /// Stores chat ranges, at most one per recipient and room: where the
    /// recipient already has a pending range in the room, that one grows to
    /// cover the new one (first and last message, earliest time) instead of
    /// a row being added. Answers how many ranges were stored or grown.
    pub async fn upsert_chat_ranges(&self, rows: &[EmailItemRow]) -> Result<usize, DbError> {
        self.write_email_items(rows, ItemWrite::GrowRanges).await
    }

    async fn write_email_items(
        &self,
        rows: &[EmailItemRow],
        write: ItemWrite,
    ) -> Result<usize, DbError> {
        if rows.is_empty() {
            return Ok(0);
        }
        match self {
            // One blocking call per chunk, not one thread hop per row; a
            // transaction per chunk, so chat appends waiting at the write
            // gate wait for one chunk, not for all of a busy room's items.
            Db::Sqlite(pool, gate) => {
                let mut pooled = pool.get().await?;
                let mut written = 0;
                for chunk in rows.chunks(SQLITE_ITEMS_PER_TRANSACTION) {
                    let chunk = chunk.to_vec();
                    let _turn = gate.lock().await;
                    written += pooled
                        .spawn_blocking(move |conn| match write {
                            ItemWrite::InsertNew => sqlite_items::insert(conn, &chunk),
                            ItemWrite::GrowRanges => sqlite_items::upsert_ranges(conn, &chunk),
                        })
                        .await?;
                }
                Ok(written)
            }
            // Multi-row statements, not one round trip per row.
            Db::Postgres(pool) => {
                let mut pooled = pool.get().await?;
                let mut written = 0;
                for chunk in rows.chunks(1000) {
                    let statement = diesel::insert_into(email_items::table).values(chunk);
                    written += match write {
                        ItemWrite::InsertNew => {
                            statement
                                .on_conflict_do_nothing()
                                .execute(&mut *pooled)
                                .await?
                        }
                        ItemWrite::GrowRanges => {
                            statement
                                .on_conflict((email_items::user_id, email_items::room))
                                .filter_target(pending_range())
                                .do_update()
                                .set(range_growth())
                                .execute(&mut *pooled)
                                .await?
                        }
                    };
                }
                Ok(written)
            }
        }
    }

    /// The messages the items of `rooms` cover, as (recipient, room, first,
    /// last), for items stored or changed since `since`: an item covering a
    /// message sent since then was stored or grown after it was sent.
    pub async fn chat_ranges_of_rooms(
        &self,
        rooms: &[String],
        since: i64,
    ) -> Result<Vec<(String, String, i64, i64)>, DbError> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<EmailItemRow> = db_run!(self, |conn| {
            Ok::<_, DbError>(
                email_items::table
                    .filter(email_items::room.eq_any(rooms))
                    .filter(email_items::updated_at.ge(since))
                    .select(EmailItemRow::as_select())
                    .load(conn)
                    .await?,
            )
        })?;
        Ok(rows
            .iter()
            .filter_map(|row| {
                let (room, first, last) = row.chat_range()?;
                Some((row.user_id.clone(), room.to_owned(), first, last))
            })
            .collect())
    }

    /// Recipients with a pending item due by `now`.
    pub async fn due_email_recipients(&self, now: i64, limit: i64) -> Result<Vec<String>, DbError> {
        db_run!(self, |conn| {
            Ok(email_items::table
                .filter(email_items::state.eq(ItemState::Pending))
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
                .filter(email_items::state.eq(ItemState::Pending))
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
                let rows = conn.pending_email_items(user_id).await?;
                if rows.is_empty() {
                    return Ok(DispatchPlan::default());
                }
                let notification_ids: Vec<&str> = rows
                    .iter()
                    .filter_map(|r| r.notification_id.as_deref())
                    .collect();
                let rooms: Vec<&str> = rows
                    .iter()
                    .filter_map(|r| r.chat_range().map(|(room, _, _)| room))
                    .collect();
                let (booking_ids, conversation_ids) =
                    ChatRoom::ids(rooms.iter().filter_map(|room| ChatRoom::parse(room)));
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
                // Loaded here; who of them is owed an email is the domain's
                // rule (`Audience`).
                let (participants, booking_rows): (Vec<(String, String)>, Vec<BookingRow>) =
                    if booking_ids.is_empty() {
                        (Vec::new(), Vec::new())
                    } else {
                        (
                            booking_participants::table
                                .filter(booking_participants::booking_id.eq_any(&booking_ids))
                                .select((
                                    booking_participants::booking_id,
                                    booking_participants::user_id,
                                ))
                                .load(conn)
                                .await?,
                            bookings::table
                                .filter(bookings::id.eq_any(&booking_ids))
                                .select(BookingRow::as_select())
                                .load(conn)
                                .await?,
                        )
                    };
                let owners: Vec<(String, String)> = if conversation_ids.is_empty() {
                    Vec::new()
                } else {
                    support_conversations::table
                        .filter(support_conversations::id.eq_any(&conversation_ids))
                        .select((support_conversations::id, support_conversations::user_id))
                        .load(conn)
                        .await?
                };
                let audience = Audience::new(participants, owners);
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

                let mut items = Vec::with_capacity(rows.len());
                for row in rows {
                    let source = if let Some((room, first, last)) = row.chat_range() {
                        let read_up_to = cursors
                            .iter()
                            .find(|(r, _)| r == room)
                            .map_or(0, |(_, seq)| *seq);
                        let chat_room = ChatRoom::parse(room);
                        let member = chat_room.is_some_and(|r| audience.owes(r, user_id));
                        let booking_title = match chat_room {
                            Some(ChatRoom::Booking(id)) => booking_rows
                                .iter()
                                .find(|b| b.id == id)
                                .map(|b| b.title.clone()),
                            _ => None,
                        };
                        let (shown, more, oldest_unread_at) = if member && read_up_to < last {
                            let from = first.max(read_up_to + 1);
                            // What earlier emails showed is not shown again
                            // (ranges can meet when nodes store a room's
                            // messages out of order).
                            let shown_before: Vec<(Option<i64>, Option<i64>)> = email_items::table
                                .filter(email_items::user_id.eq(user_id))
                                .filter(email_items::room.eq(room))
                                .filter(email_items::state.eq(ItemState::Emailed))
                                .filter(email_items::seq.le(last))
                                .filter(
                                    diesel::dsl::sql::<diesel::sql_types::Bool>(
                                        "COALESCE(up_to_seq, seq) >= ",
                                    )
                                    .bind::<diesel::sql_types::BigInt, _>(from),
                                )
                                .select((email_items::seq, email_items::up_to_seq))
                                .load(conn)
                                .await?;
                            let unread = messages::table
                                .filter(messages::room.eq(room))
                                .filter(messages::seq.ge(from))
                                .filter(messages::seq.le(last))
                                .filter(
                                    messages::sender_id
                                        .is_null()
                                        .or(messages::sender_id.ne(user_id)),
                                );
                            let (count, oldest_at): (i64, Option<i64>) = unread
                                .select((
                                    diesel::dsl::count_star(),
                                    diesel::dsl::min(messages::sent_at),
                                ))
                                .first(conn)
                                .await?;
                            let newest: Vec<MessageRow> = unread
                                .order(messages::seq.desc())
                                .limit(DIGEST_MESSAGES_READ)
                                .select(MessageRow::as_select())
                                .load(conn)
                                .await?;
                            let mut looked_at = 0;
                            let mut shown = Vec::new();
                            for message in newest {
                                if shown.len() == DIGEST_MESSAGES_PER_ROOM {
                                    break;
                                }
                                looked_at += 1;
                                let emailed = shown_before.iter().any(|(first, last)| {
                                    let first = first.unwrap_or(i64::MAX);
                                    first <= message.seq && message.seq <= last.unwrap_or(first)
                                });
                                if !emailed && !is_status_notice(&message) {
                                    shown.push(message);
                                }
                            }
                            shown.reverse();
                            (shown, (count - looked_at).max(0), oldest_at)
                        } else {
                            (Vec::new(), 0, None)
                        };
                        ItemSource::Chat {
                            messages: shown,
                            more,
                            oldest_unread_at,
                            booking_title,
                            read: read_up_to >= last,
                            member,
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
                    items.push(PendingItem { row, source });
                }

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
                        email_items::state.eq(ItemState::Emailed),
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

    /// The people of these bookings and support conversations (who of them
    /// is owed an email is the [`Audience`]'s rule).
    pub async fn chat_audience(
        &self,
        booking_ids: &[&str],
        conversation_ids: &[&str],
    ) -> Result<Audience, DbError> {
        db_run!(self, |conn| {
            let participants: Vec<(String, String)> = if booking_ids.is_empty() {
                Vec::new()
            } else {
                booking_participants::table
                    .filter(booking_participants::booking_id.eq_any(booking_ids))
                    .select((
                        booking_participants::booking_id,
                        booking_participants::user_id,
                    ))
                    .load(conn)
                    .await?
            };
            let owners: Vec<(String, String)> = if conversation_ids.is_empty() {
                Vec::new()
            } else {
                support_conversations::table
                    .filter(support_conversations::id.eq_any(conversation_ids))
                    .select((support_conversations::id, support_conversations::user_id))
                    .load(conn)
                    .await?
            };
            Ok(Audience::new(participants, owners))
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
                        .filter(email_outbox::state.eq(OutboxState::Queued))
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
                    state: BatchState::Pending,
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
                .eq(BatchState::Pending)
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
                    email_batches::state.eq(BatchState::Sent),
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
                        email_outbox::state.eq(OutboxState::Sent),
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
                    email_batches::state.eq(BatchState::Failed),
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
                        email_outbox::state.eq(OutboxState::Failed),
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
                    email_batches::state.eq(BatchState::Split),
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
                .filter(email_outbox::state.eq(OutboxState::Queued))
                .filter(email_outbox::batch_id.is_null())
                .count()
                .get_result(conn)
                .await?;
            if unbatched > 0 {
                return Ok(Some(now));
            }
            let pending: Vec<(i64, Option<i64>)> = email_batches::table
                .filter(email_batches::state.eq(BatchState::Pending))
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
                .filter(email_outbox::state.eq(OutboxState::Queued))
                .count()
                .get_result(conn)
                .await?)
        })
    }
}

/// Item inserts on SQLite's synchronous connection (inside one
/// `spawn_blocking` call).
/// The predicate of the partial unique index `email_items_pending_range`,
/// repeated word for word as the upsert's conflict target (written out,
/// not bound, so both databases can match it to the index).
const PENDING_RANGE: &str = "state = 'pending' AND source LIKE 'range:%'";

/// How a pending range grows to take in a new one, column by column.
/// Portable SQL (`CASE`, not `GREATEST`/`max`); the indexed `created_at`
/// and `due_at` change only when the new range is earlier, which keeps
/// PostgreSQL's update HOT.
const GROW_SEQ: &str =
    "CASE WHEN excluded.seq < email_items.seq THEN excluded.seq ELSE email_items.seq END";
const GROW_UP_TO_SEQ: &str = "CASE WHEN excluded.up_to_seq > email_items.up_to_seq \
     THEN excluded.up_to_seq ELSE email_items.up_to_seq END";
const GROW_CREATED_AT: &str = "CASE WHEN excluded.created_at < email_items.created_at \
     THEN excluded.created_at ELSE email_items.created_at END";
const GROW_DUE_AT: &str = "CASE WHEN excluded.due_at < email_items.due_at \
     THEN excluded.due_at ELSE email_items.due_at END";
const GROW_UPDATED_AT: &str = "excluded.updated_at";

fn pending_range() -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    diesel::dsl::sql(PENDING_RANGE)
}

type Grow<Column, Type> = diesel::dsl::Eq<Column, diesel::expression::SqlLiteral<Type>>;

#[allow(clippy::type_complexity)]
fn range_growth() -> (
    Grow<email_items::seq, diesel::sql_types::Nullable<diesel::sql_types::BigInt>>,
    Grow<email_items::up_to_seq, diesel::sql_types::Nullable<diesel::sql_types::BigInt>>,
    Grow<email_items::created_at, diesel::sql_types::BigInt>,
    Grow<email_items::due_at, diesel::sql_types::BigInt>,
    Grow<email_items::updated_at, diesel::sql_types::BigInt>,
) {
    use diesel::dsl::sql;
    (
        email_items::seq.eq(sql(GROW_SEQ)),
        email_items::up_to_seq.eq(sql(GROW_UP_TO_SEQ)),
        email_items::created_at.eq(sql(GROW_CREATED_AT)),
        email_items::due_at.eq(sql(GROW_DUE_AT)),
        email_items::updated_at.eq(sql(GROW_UPDATED_AT)),
    )
}

mod sqlite_items {
    use diesel::prelude::*;
    use diesel::sql_types::{BigInt, Nullable, Text};
    use diesel::sqlite::Sqlite;
    use diesel::RunQueryDsl;

    use super::{
        EmailItemRow, GROW_CREATED_AT, GROW_DUE_AT, GROW_SEQ, GROW_UPDATED_AT, GROW_UP_TO_SEQ,
        PENDING_RANGE,
    };
    use crate::db::schema::email_items;

    /// Ranges per statement: one prepare for many rows (a raw statement is
    /// not in Diesel's statement cache), within SQLite's bind limit.
    const RANGES_PER_STATEMENT: usize = 64;

    /// Diesel has no partial-index conflict target for SQLite: the same
    /// upsert as PostgreSQL's, written out.
    pub(super) fn upsert_ranges(
        conn: &mut SqliteConnection,
        rows: &[EmailItemRow],
    ) -> QueryResult<usize> {
        conn.immediate_transaction(|conn| {
            let mut stored = 0;
            for chunk in rows.chunks(RANGES_PER_STATEMENT) {
                let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()];
                let statement = format!(
                    "INSERT INTO email_items (id, user_id, kind, source, room, seq, message_id, \
                     notification_id, created_at, due_at, state, outbox_id, updated_at, \
                     up_to_seq) VALUES {} \
                     ON CONFLICT (user_id, room) WHERE {PENDING_RANGE} DO UPDATE SET \
                     seq = {GROW_SEQ}, up_to_seq = {GROW_UP_TO_SEQ}, \
                     created_at = {GROW_CREATED_AT}, due_at = {GROW_DUE_AT}, \
                     updated_at = {GROW_UPDATED_AT}",
                    values.join(", ")
                );
                let mut query = diesel::sql_query(statement).into_boxed::<Sqlite>();
                for row in chunk {
                    query = query
                        .bind::<Text, _>(&row.id)
                        .bind::<Text, _>(&row.user_id)
                        .bind::<Text, _>(row.kind)
                        .bind::<Text, _>(&row.source)
                        .bind::<Nullable<Text>, _>(&row.room)
                        .bind::<Nullable<BigInt>, _>(row.seq)
                        .bind::<Nullable<Text>, _>(&row.message_id)
                        .bind::<Nullable<Text>, _>(&row.notification_id)
                        .bind::<BigInt, _>(row.created_at)
                        .bind::<BigInt, _>(row.due_at)
                        .bind::<Text, _>(row.state)
                        .bind::<Nullable<Text>, _>(&row.outbox_id)
                        .bind::<BigInt, _>(row.updated_at)
                        .bind::<Nullable<BigInt>, _>(row.up_to_seq);
                }
                stored += query.execute(conn)?;
            }
            Ok(stored)
        })
    }

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
