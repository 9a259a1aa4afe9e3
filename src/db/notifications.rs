//! The in-app notification inbox and unread counts.

use super::models::NotificationRow;
use super::schema::{booking_participants, messages, notifications, read_cursors};
use super::{Db, DbError};
use crate::db_run;
use crate::domain::chat::EntryKind;

impl Db {
    /// Stores a notification; with a `source` already used for this user,
    /// returns the stored one instead (idempotent creation).
    pub async fn create_notification(
        &self,
        row: NotificationRow,
    ) -> Result<(NotificationRow, bool), DbError> {
        db_run!(self, |conn| {
            let inserted = diesel::insert_into(notifications::table)
                .values(&row)
                .on_conflict_do_nothing()
                .execute(conn)
                .await?;
            if inserted == 1 {
                return Ok((row, true));
            }
            let existing = notifications::table
                .filter(notifications::user_id.eq(&row.user_id))
                .filter(notifications::source.eq(&row.source))
                .select(NotificationRow::as_select())
                .first(conn)
                .await?;
            Ok((existing, false))
        })
    }

    /// Newest first; `before` is a notification id to page from.
    pub async fn list_notifications(
        &self,
        user_id: &str,
        unread_only: bool,
        before: Option<&str>,
        limit: i64,
    ) -> Result<(Vec<NotificationRow>, bool), DbError> {
        let mut rows: Vec<NotificationRow> = db_run!(self, |conn| {
            let mut query = notifications::table
                .filter(notifications::user_id.eq(user_id))
                .into_boxed();
            if unread_only {
                query = query.filter(notifications::read_at.is_null());
            }
            if let Some(before) = before {
                query = query.filter(notifications::id.lt(before));
            }
            query
                .order(notifications::id.desc())
                .limit(limit + 1)
                .select(NotificationRow::as_select())
                .load(conn)
                .await?
        });
        let has_more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        Ok((rows, has_more))
    }

    pub async fn unread_notification_count(&self, user_id: &str) -> Result<i64, DbError> {
        db_run!(self, |conn| {
            Ok(notifications::table
                .filter(notifications::user_id.eq(user_id))
                .filter(notifications::read_at.is_null())
                .count()
                .get_result(conn)
                .await?)
        })
    }

    /// Marks one of the user's notifications read; `None` when the user has
    /// no such notification.
    pub async fn mark_notification_read(
        &self,
        user_id: &str,
        id: &str,
    ) -> Result<Option<NotificationRow>, DbError> {
        let now = crate::time::now_ms();
        db_run!(self, |conn| {
            diesel::update(
                notifications::table
                    .filter(notifications::id.eq(id))
                    .filter(notifications::user_id.eq(user_id))
                    .filter(notifications::read_at.is_null()),
            )
            .set(notifications::read_at.eq(now))
            .execute(conn)
            .await?;
            Ok(notifications::table
                .filter(notifications::id.eq(id))
                .filter(notifications::user_id.eq(user_id))
                .select(NotificationRow::as_select())
                .first(conn)
                .await
                .optional()?)
        })
    }

    pub async fn mark_all_notifications_read(&self, user_id: &str) -> Result<usize, DbError> {
        let now = crate::time::now_ms();
        db_run!(self, |conn| {
            Ok(diesel::update(
                notifications::table
                    .filter(notifications::user_id.eq(user_id))
                    .filter(notifications::read_at.is_null()),
            )
            .set(notifications::read_at.eq(now))
            .execute(conn)
            .await?)
        })
    }

    /// Unread chat messages (from others, past the read cursor, not
    /// deleted; changes to messages are not counted) per booking
    /// room of the user; rooms with none are left out.
    pub async fn unread_room_counts(&self, user_id: &str) -> Result<Vec<(String, i64)>, DbError> {
        db_run!(self, |conn| {
            let bookings: Vec<String> = booking_participants::table
                .filter(booking_participants::user_id.eq(user_id))
                .select(booking_participants::booking_id)
                .load(conn)
                .await?;
            let rooms: Vec<String> = bookings.iter().map(|b| format!("booking:{b}")).collect();
            let cursors: Vec<(String, i64)> = read_cursors::table
                .filter(read_cursors::user_id.eq(user_id))
                .filter(read_cursors::room.eq_any(&rooms))
                .select((read_cursors::room, read_cursors::seq))
                .load(conn)
                .await?;
            let mut counts = Vec::new();
            for room in rooms {
                let cursor = cursors
                    .iter()
                    .find(|(r, _)| *r == room)
                    .map_or(0, |(_, seq)| *seq);
                let unread: i64 = messages::table
                    .filter(messages::room.eq(&room))
                    .filter(messages::seq.gt(cursor))
                    .filter(messages::kind.eq(EntryKind::Message))
                    .filter(messages::deleted_at.is_null())
                    .filter(
                        messages::sender_id
                            .is_null()
                            .or(messages::sender_id.ne(user_id)),
                    )
                    .count()
                    .get_result(conn)
                    .await?;
                if unread > 0 {
                    counts.push((room, unread));
                }
            }
            Ok(counts)
        })
    }
}
