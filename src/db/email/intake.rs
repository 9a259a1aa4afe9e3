//! What is owed: the unread items stored when messages and notifications
//! are committed (one per notification, one growing range per recipient
//! and chat room), and the reads of the catch-up after a restart.

use diesel::prelude::*;
use diesel::upsert::DecoratableTarget;
use diesel_async::RunQueryDsl;

use crate::db::models::{MessageRow, NotificationRow};
use crate::db::schema::{
    booking_participants, email_items, messages, notifications, support_conversations,
};
use crate::db::{Db, DbError};
use crate::db_run;
use crate::domain::email::{Audience, EmailKind, ItemState};

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
    /// Emailed at once and alone, read or not (its notification is).
    pub transactional: bool,
}

impl EmailItemRow {
    /// The room and the messages a chat item covers.
    pub fn chat_range(&self) -> Option<(&str, i64, i64)> {
        let room = self.room.as_deref()?;
        let first = self.seq?;
        Some((room, first, self.up_to_seq.unwrap_or(first)))
    }
}

/// A booking status change posted into its room: each one is also a
/// `booking` notification, which is what gets emailed.
pub fn is_status_notice(message: &MessageRow) -> bool {
    message.sender_role == "system"
        && message
            .client_id
            .as_deref()
            .is_some_and(|c| c.starts_with("status:"))
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

impl Db {
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

    /// Unread notifications (and transactional ones, read or not) created
    /// since `since`, in id order after `after_id`, for the catch-up after
    /// a restart.
    pub async fn unread_notifications_since(
        &self,
        since: i64,
        after_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<NotificationRow>, DbError> {
        db_run!(self, |conn| {
            let mut query = notifications::table
                .filter(notifications::created_at.ge(since))
                .filter(
                    notifications::read_at
                        .is_null()
                        .or(notifications::transactional.eq(true)),
                )
                // An announcement's emails are the announcer's.
                .filter(
                    notifications::source
                        .is_null()
                        .or(notifications::source.not_like(format!(
                            "{}%",
                            crate::domain::announcement::ANNOUNCEMENT_SOURCE_PREFIX
                        ))),
                )
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
}

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

/// Item inserts on SQLite's synchronous connection (inside one
/// `spawn_blocking` call).
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
