//! Reminders before a booking's session: scheduled in the booking's own
//! transaction, and taken when due in one transaction that also stores
//! their notifications, so several nodes and restarts send each once.

use diesel::prelude::{Insertable, Queryable, Selectable};
use diesel_async::AsyncConnection;

use super::models::NotificationRow;
use super::schema::{booking_participants, booking_reminders, bookings, notifications};
use super::{Db, DbError};
use crate::db_write;
use crate::domain::booking::BookingStatus;
use crate::domain::email::EmailKind;
use crate::domain::reminder::{on_due, ReminderSlot, ReminderState};

/// Due reminders taken per transaction.
const TAKE_PAGE: i64 = 50;

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = booking_reminders, treat_none_as_default_value = false)]
pub struct ReminderRow {
    pub id: String,
    pub booking_id: String,
    pub lead_secs: i64,
    pub starts_at: i64,
    pub due_at: i64,
    pub state: ReminderState,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What taking the due reminders did.
#[derive(Debug, Default)]
pub struct TakenReminders {
    /// The notifications of the reminders sent (one per participant).
    pub notifications: Vec<NotificationRow>,
    pub sent: usize,
    /// Due while every node was down until the session began.
    pub missed: usize,
    pub cancelled: usize,
    /// More may be due: take again.
    pub more: bool,
}

/// Brings a booking's pending reminders in line with `slots` (its current
/// start and lead times), in the caller's transaction: pending reminders of
/// another start or lead time go; a slot not yet due is added unless it is
/// already there (sent, for a start the booking moved back to, stays sent).
/// A slot already due when first seen is skipped, but one stored earlier
/// that came due while every node was down is kept, to be taken late.
macro_rules! sync_reminders {
    ($conn:ident, $booking_id:expr, $slots:expr, $now:expr) => {{
        let booking_id: &str = $booking_id;
        let slots: &[$crate::domain::reminder::ReminderSlot] = $slots;
        let now: i64 = $now;
        let pending: Vec<(String, i64, i64)> = booking_reminders::table
            .filter(booking_reminders::booking_id.eq(booking_id))
            .filter(booking_reminders::state.eq($crate::domain::reminder::ReminderState::Pending))
            .select((
                booking_reminders::id,
                booking_reminders::lead_secs,
                booking_reminders::starts_at,
            ))
            .load(&mut *$conn)
            .await?;
        let stale: Vec<String> = pending
            .into_iter()
            .filter(|(_, lead, starts)| {
                !slots
                    .iter()
                    .any(|s| s.lead_secs == *lead && s.starts_at == *starts)
            })
            .map(|(id, _, _)| id)
            .collect();
        if !stale.is_empty() {
            diesel::delete(booking_reminders::table.filter(booking_reminders::id.eq_any(&stale)))
                .execute(&mut *$conn)
                .await?;
        }
        let fresh: Vec<$crate::db::reminders::ReminderRow> = slots
            .iter()
            .filter(|slot| slot.due_at > now)
            .map(|slot| $crate::db::reminders::ReminderRow::pending(booking_id, slot, now))
            .collect();
        for row in &fresh {
            diesel::insert_into(booking_reminders::table)
                .values(row)
                .on_conflict_do_nothing()
                .execute(&mut *$conn)
                .await?;
        }
    }};
}

pub(super) use sync_reminders;

impl ReminderRow {
    pub fn pending(booking_id: &str, slot: &ReminderSlot, now: i64) -> Self {
        ReminderRow {
            id: uuid::Uuid::now_v7().to_string(),
            booking_id: booking_id.to_owned(),
            lead_secs: slot.lead_secs,
            starts_at: slot.starts_at,
            due_at: slot.due_at,
            state: ReminderState::Pending,
            created_at: now,
            updated_at: now,
        }
    }
}

/// "in 1 hour", "in 1 day", "in 90 minutes": how far off the session is.
fn lead_words(lead_secs: i64) -> String {
    let (count, unit) = if lead_secs % 86_400 == 0 {
        (lead_secs / 86_400, "day")
    } else if lead_secs % 3_600 == 0 {
        (lead_secs / 3_600, "hour")
    } else if lead_secs % 60 == 0 {
        (lead_secs / 60, "minute")
    } else {
        (lead_secs, "second")
    };
    let plural = if count == 1 { "" } else { "s" };
    format!("in {count} {unit}{plural}")
}

fn reminder_notification(
    reminder: &ReminderRow,
    title: &str,
    user_id: &str,
    now: i64,
) -> NotificationRow {
    let what = if title.trim().is_empty() {
        "Your session".to_owned()
    } else {
        title.to_owned()
    };
    NotificationRow {
        id: uuid::Uuid::now_v7().to_string(),
        user_id: user_id.to_owned(),
        kind: EmailKind::Reminder,
        title: format!("Reminder: {what} starts {}", lead_words(reminder.lead_secs)),
        body: format!(
            "{what} starts at {}.",
            crate::time::rfc3339_ms(reminder.starts_at)
                .trim_end_matches(".000Z")
                .replace('T', " ")
                + " UTC"
        ),
        link: Some(format!("/bookings/{}", reminder.booking_id)),
        // One per participant and reminder, however often it is taken.
        source: Some(format!("reminder:{}", reminder.id)),
        created_at: now,
        read_at: None,
        data: Some(
            serde_json::json!({
                "booking_id": reminder.booking_id,
                "starts_at": crate::time::rfc3339_ms(reminder.starts_at),
                "lead_secs": reminder.lead_secs,
            })
            .to_string(),
        ),
        // A reminder is worth nothing late: emailed at once, read or not.
        transactional: true,
    }
}

impl Db {
    /// Takes the reminders due by `now`: each becomes `sent` (with a
    /// notification per participant, stored in the same transaction),
    /// `missed` (the session began meanwhile) or `cancelled` (the booking
    /// is off). A reminder another node took first is skipped.
    pub async fn take_due_reminders(&self, now: i64) -> Result<TakenReminders, DbError> {
        db_write!(self, |conn| {
            conn.transaction::<_, DbError, _>(async |conn| {
                // A write first: SQLite takes its write lock now (not when
                // a read turns into a write, which can fail), and PostgreSQL
                // locks the due rows, so a second node waits and then finds
                // them taken.
                diesel::update(
                    booking_reminders::table
                        .filter(booking_reminders::state.eq(ReminderState::Pending))
                        .filter(booking_reminders::due_at.le(now)),
                )
                .set(booking_reminders::updated_at.eq(booking_reminders::updated_at))
                .execute(conn)
                .await?;
                let due: Vec<ReminderRow> = booking_reminders::table
                    .filter(booking_reminders::state.eq(ReminderState::Pending))
                    .filter(booking_reminders::due_at.le(now))
                    .order(booking_reminders::due_at.asc())
                    .limit(TAKE_PAGE + 1)
                    .select(ReminderRow::as_select())
                    .load(conn)
                    .await?;
                let mut taken = TakenReminders {
                    more: due.len() as i64 > TAKE_PAGE,
                    ..TakenReminders::default()
                };
                for reminder in due.into_iter().take(TAKE_PAGE as usize) {
                    let booking: Option<(BookingStatus, String)> = bookings::table
                        .find(&reminder.booking_id)
                        .select((bookings::status, bookings::title))
                        .first(conn)
                        .await
                        .optional()?;
                    let state = on_due(booking.as_ref().map(|b| b.0), reminder.starts_at, now);
                    let claimed = diesel::update(
                        booking_reminders::table
                            .find(&reminder.id)
                            .filter(booking_reminders::state.eq(ReminderState::Pending)),
                    )
                    .set((
                        booking_reminders::state.eq(state),
                        booking_reminders::updated_at.eq(now),
                    ))
                    .execute(conn)
                    .await?;
                    if claimed == 0 {
                        continue;
                    }
                    match state {
                        ReminderState::Sent => taken.sent += 1,
                        ReminderState::Missed => {
                            taken.missed += 1;
                            continue;
                        }
                        _ => {
                            taken.cancelled += 1;
                            continue;
                        }
                    }
                    let title = booking.map(|b| b.1).unwrap_or_default();
                    let participants: Vec<String> = booking_participants::table
                        .filter(booking_participants::booking_id.eq(&reminder.booking_id))
                        .order(booking_participants::user_id.asc())
                        .select(booking_participants::user_id)
                        .load(conn)
                        .await?;
                    for user_id in participants {
                        let row = reminder_notification(&reminder, &title, &user_id, now);
                        let inserted = diesel::insert_into(notifications::table)
                            .values(&row)
                            .on_conflict_do_nothing()
                            .execute(conn)
                            .await?;
                        if inserted == 1 {
                            taken.notifications.push(row);
                        }
                    }
                }
                Ok(taken)
            })
            .await
        })
    }

    /// When the next pending reminder is due, if any.
    pub async fn next_reminder_due(&self) -> Result<Option<i64>, DbError> {
        crate::db_run!(self, |conn| {
            Ok(booking_reminders::table
                .filter(booking_reminders::state.eq(ReminderState::Pending))
                .select(diesel::dsl::min(booking_reminders::due_at))
                .first::<Option<i64>>(conn)
                .await?)
        })
    }

    /// A booking's reminders, by due time (for the internal API and tests).
    pub async fn booking_reminders(&self, booking_id: &str) -> Result<Vec<ReminderRow>, DbError> {
        crate::db_run!(self, |conn| {
            Ok(booking_reminders::table
                .filter(booking_reminders::booking_id.eq(booking_id))
                .order((booking_reminders::due_at.asc(), booking_reminders::id.asc()))
                .select(ReminderRow::as_select())
                .load(conn)
                .await?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::lead_words;

    #[test]
    fn lead_times_read_as_people_say_them() {
        assert_eq!(lead_words(86_400), "in 1 day");
        assert_eq!(lead_words(3_600), "in 1 hour");
        assert_eq!(lead_words(7_200), "in 2 hours");
        assert_eq!(lead_words(5_400), "in 90 minutes");
        assert_eq!(lead_words(5), "in 5 seconds");
    }
}
