//! The bookings mirror: who takes part in a booking (room membership) and
//! its status history.

use diesel_async::AsyncConnection;

use super::models::{BookingRow, NewRoom, NotificationRow, ParticipantRow, StatusChangeRow};
use super::reminders::sync_reminders;
use super::schema::{
    booking_participants, booking_reminders, booking_status_history, bookings, notifications,
    rooms, users,
};
use super::{Db, DbError};
use crate::db_run;
use crate::domain::booking::BookingStatus;
use crate::domain::reminder::reminder_slots;

/// What the backend says a booking is now.
#[derive(Debug, Clone)]
pub struct BookingUpsert {
    pub id: String,
    pub client_id: String,
    pub provider_ids: Vec<String>,
    pub status: BookingStatus,
    pub title: String,
    pub starts_at: Option<String>,
    /// Ordering of updates; `None` means "apply as the newest".
    pub version: Option<i64>,
    pub reason: Option<String>,
    pub caused_by: String,
}

/// What an upsert changed.
#[derive(Debug, Clone)]
pub enum BookingOutcome {
    /// The update was older than the stored version: nothing changed.
    Stale { stored_version: i64 },
    Applied {
        created: bool,
        /// Set when the status changed (or the booking is new).
        status_change: Option<StatusChangeRow>,
        participants: Vec<String>,
        /// In-app notifications created for the change (none for a new booking).
        notifications: Vec<NotificationRow>,
    },
}

/// Who may read a booking room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BookingAccess {
    Missing,
    Outsider,
    Participant,
}

/// A booking participant as shown in `joined.members`.
#[derive(Debug, Clone)]
pub struct Participant {
    pub user_id: String,
    pub name: String,
    pub role: String,
}

/// Opens a booking transaction with a write: PostgreSQL locks the booking's
/// row, so concurrent updates of one booking apply in turn (the version
/// check stays right); SQLite takes its write lock at once, waiting on the
/// busy timeout, instead of failing with "database is locked" when a
/// transaction that began by reading tries to write.
macro_rules! lock_booking {
    ($conn:ident, $id:expr) => {
        diesel::update(bookings::table.find($id))
            .set(bookings::version.eq(bookings::version))
            .execute($conn)
            .await?;
    };
}

/// Stores a status change and, unless the booking is new, one in-app
/// notification per participant, in the caller's transaction.
macro_rules! record_status_change {
    ($conn:ident, $booking:expr, $previous:expr, $reason:expr, $caused_by:expr, $participants:expr, $now:expr) => {{
        let booking: &BookingRow = $booking;
        let change = StatusChangeRow {
            id: uuid::Uuid::now_v7().to_string(),
            booking_id: booking.id.clone(),
            status: booking.status.clone(),
            previous_status: $previous,
            reason: $reason,
            caused_by: $caused_by,
            at: $now,
        };
        diesel::insert_into(booking_status_history::table)
            .values(&change)
            .execute($conn)
            .await?;
        let mut created = Vec::new();
        if let Some(previous) = &change.previous_status {
            for user_id in $participants.iter() {
                let row = status_notification(booking, *previous, &change, user_id);
                diesel::insert_into(notifications::table)
                    .values(&row)
                    .execute($conn)
                    .await?;
                created.push(row);
            }
        }
        (Some(change), created)
    }};
}

pub(super) use lock_booking;
pub(super) use record_status_change;

pub(super) fn status_notification(
    booking: &BookingRow,
    previous: BookingStatus,
    change: &StatusChangeRow,
    user_id: &str,
) -> NotificationRow {
    let what = if booking.title.is_empty() {
        "Your booking"
    } else {
        booking.title.as_str()
    };
    NotificationRow {
        id: uuid::Uuid::now_v7().to_string(),
        user_id: user_id.to_owned(),
        kind: crate::domain::email::EmailKind::Booking,
        title: format!("Booking {}", change.status.words()),
        body: match change
            .reason
            .as_deref()
            .and_then(|r| r.strip_prefix("Stripe: "))
        {
            // A payment's change says how much (another partial refund
            // keeps the status).
            Some(money) if previous == change.status => format!("{what}: {money}."),
            Some(money) => format!(
                "{what}: status changed from {} to {} ({money}).",
                previous.words(),
                change.status.words()
            ),
            None => format!(
                "{what}: status changed from {} to {}.",
                previous.words(),
                change.status.words()
            ),
        },
        link: Some(format!("/bookings/{}", booking.id)),
        source: Some(format!("status:{}", change.id)),
        created_at: change.at,
        read_at: None,
        data: None,
        // Confirmed or paid: the confirmation is emailed at once.
        transactional: previous != change.status
            && matches!(
                change.status,
                BookingStatus::Confirmed | BookingStatus::Paid
            ),
    }
}

pub fn booking_room(booking_id: &str) -> String {
    format!("booking:{booking_id}")
}

impl Db {
    /// Stores the backend's view of a booking, with its status change and
    /// its reminders (one per `reminder_leads`, in seconds) for its start.
    pub async fn upsert_booking(
        &self,
        update: BookingUpsert,
        reminder_leads: &[i64],
    ) -> Result<BookingOutcome, DbError> {
        let now = crate::time::now_ms();
        db_run!(self, |conn| {
            conn.transaction::<_, DbError, _>(async |conn| {
                lock_booking!(conn, &update.id);
                let stored: Option<BookingRow> = bookings::table
                    .find(&update.id)
                    .select(BookingRow::as_select())
                    .first(conn)
                    .await
                    .optional()?;
                if let (Some(stored), Some(version)) = (&stored, update.version) {
                    if version < stored.version {
                        return Ok(BookingOutcome::Stale {
                            stored_version: stored.version,
                        });
                    }
                }
                let version = update
                    .version
                    .or(stored.as_ref().map(|s| s.version))
                    .unwrap_or(0);
                let row = BookingRow {
                    id: update.id.clone(),
                    client_id: update.client_id.clone(),
                    status: update.status,
                    title: update.title.clone(),
                    starts_at: update.starts_at.clone(),
                    version,
                    created_at: stored.as_ref().map_or(now, |s| s.created_at),
                    updated_at: now,
                };
                diesel::delete(
                    booking_participants::table
                        .filter(booking_participants::booking_id.eq(&update.id)),
                )
                .execute(conn)
                .await?;
                if stored.is_some() {
                    diesel::update(bookings::table.find(&update.id))
                        .set((
                            bookings::client_id.eq(&row.client_id),
                            bookings::status.eq(&row.status),
                            bookings::title.eq(&row.title),
                            bookings::starts_at.eq(&row.starts_at),
                            bookings::version.eq(row.version),
                            bookings::updated_at.eq(row.updated_at),
                        ))
                        .execute(conn)
                        .await?;
                } else {
                    diesel::insert_into(bookings::table)
                        .values(&row)
                        .execute(conn)
                        .await?;
                    let room = booking_room(&update.id);
                    diesel::insert_into(rooms::table)
                        .values(&NewRoom {
                            id: &room,
                            last_seq: 0,
                            created_at: now,
                        })
                        .on_conflict_do_nothing()
                        .execute(conn)
                        .await?;
                }
                let mut participants = vec![ParticipantRow {
                    booking_id: update.id.clone(),
                    user_id: update.client_id.clone(),
                    kind: "client".to_owned(),
                }];
                for provider in &update.provider_ids {
                    if participants.iter().all(|p| &p.user_id != provider) {
                        participants.push(ParticipantRow {
                            booking_id: update.id.clone(),
                            user_id: provider.clone(),
                            kind: "provider".to_owned(),
                        });
                    }
                }
                for participant in &participants {
                    diesel::insert_into(booking_participants::table)
                        .values(participant)
                        .execute(conn)
                        .await?;
                }
                let previous_status = stored.as_ref().map(|s| s.status);
                let participant_ids: Vec<String> =
                    participants.iter().map(|p| p.user_id.clone()).collect();
                let (status_change, notifications) = if previous_status != Some(update.status) {
                    record_status_change!(
                        conn,
                        &row,
                        previous_status,
                        update.reason.clone(),
                        update.caused_by.clone(),
                        &participant_ids,
                        now
                    )
                } else {
                    (None, Vec::new())
                };
                let slots = reminder_slots(
                    row.status,
                    row.starts_at
                        .as_deref()
                        .and_then(crate::time::parse_rfc3339_ms),
                    reminder_leads,
                );
                sync_reminders!(conn, &update.id, &slots, now);
                Ok(BookingOutcome::Applied {
                    created: stored.is_none(),
                    status_change,
                    participants: participant_ids,
                    notifications,
                })
            })
            .await
        })
    }

    /// Every status a booking went through, oldest first.
    pub async fn booking_history(&self, booking_id: &str) -> Result<Vec<StatusChangeRow>, DbError> {
        db_run!(self, |conn| {
            Ok(booking_status_history::table
                .filter(booking_status_history::booking_id.eq(booking_id))
                .order(booking_status_history::at.asc())
                .select(StatusChangeRow::as_select())
                .load(conn)
                .await?)
        })
    }

    pub async fn find_booking(&self, id: &str) -> Result<Option<BookingRow>, DbError> {
        db_run!(self, |conn| {
            Ok(bookings::table
                .find(id)
                .select(BookingRow::as_select())
                .first(conn)
                .await
                .optional()?)
        })
    }

    pub async fn booking_access(
        &self,
        booking_id: &str,
        user_id: &str,
    ) -> Result<BookingAccess, DbError> {
        db_run!(self, |conn| {
            let exists: Option<String> = bookings::table
                .find(booking_id)
                .select(bookings::id)
                .first(conn)
                .await
                .optional()?;
            if exists.is_none() {
                return Ok(BookingAccess::Missing);
            }
            let participant: Option<String> = booking_participants::table
                .find((booking_id, user_id))
                .select(booking_participants::user_id)
                .first(conn)
                .await
                .optional()?;
            Ok(if participant.is_some() {
                BookingAccess::Participant
            } else {
                BookingAccess::Outsider
            })
        })
    }

    /// The booking's participants with their mirrored names and roles.
    pub async fn booking_participants(
        &self,
        booking_id: &str,
    ) -> Result<Vec<Participant>, DbError> {
        let rows: Vec<(String, String, Option<String>, Option<String>)> = db_run!(self, |conn| {
            booking_participants::table
                .left_join(users::table.on(users::id.eq(booking_participants::user_id)))
                .filter(booking_participants::booking_id.eq(booking_id))
                .select((
                    booking_participants::user_id,
                    booking_participants::kind,
                    users::name.nullable(),
                    users::role.nullable(),
                ))
                .load(conn)
                .await?
        });
        Ok(rows
            .into_iter()
            .map(|(user_id, kind, name, role)| Participant {
                user_id,
                name: name.unwrap_or_else(|| "Mixroom user".to_owned()),
                role: role.unwrap_or_else(|| {
                    if kind == "client" {
                        "client"
                    } else {
                        "studio_owner"
                    }
                    .to_owned()
                }),
            })
            .collect())
    }
}

/// A mirrored booking as the backend sent it (for the internal API).
#[derive(Debug, Clone)]
pub struct MirroredBooking {
    pub row: BookingRow,
    pub provider_ids: Vec<String>,
}

impl Db {
    /// A booking with its provider ids, as last mirrored.
    pub async fn mirrored_booking(&self, id: &str) -> Result<Option<MirroredBooking>, DbError> {
        let Some(row) = self.find_booking(id).await? else {
            return Ok(None);
        };
        let provider_ids = db_run!(self, |conn| {
            booking_participants::table
                .filter(booking_participants::booking_id.eq(id))
                .filter(booking_participants::kind.eq("provider"))
                .order(booking_participants::user_id.asc())
                .select(booking_participants::user_id)
                .load::<String>(conn)
                .await?
        });
        Ok(Some(MirroredBooking { row, provider_ids }))
    }

    /// The bookings a user takes part in, by id, after `after` (a page).
    pub async fn bookings_of_user(
        &self,
        user_id: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<(Vec<BookingRow>, bool), DbError> {
        let after = after.unwrap_or("");
        let mut rows: Vec<BookingRow> = db_run!(self, |conn| {
            bookings::table
                .inner_join(
                    booking_participants::table
                        .on(booking_participants::booking_id.eq(bookings::id)),
                )
                .filter(booking_participants::user_id.eq(user_id))
                .filter(bookings::id.gt(after))
                .order(bookings::id.asc())
                .limit(limit + 1)
                .select(BookingRow::as_select())
                .load(conn)
                .await?
        });
        let has_more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        Ok((rows, has_more))
    }
}
