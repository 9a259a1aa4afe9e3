//! Reminders before a booking's session: which are owed, and their states.

use super::booking::BookingStatus;

text_enum! {
    /// States of a stored reminder.
    pub enum ReminderState {
        Pending = "pending",
        Sent = "sent",
        /// Every node was down from when it was due until the session
        /// began: too late to remind anyone.
        Missed = "missed",
        /// The booking was cancelled (or otherwise off) when it came due.
        Cancelled = "cancelled",
    }
}

/// One reminder a booking is owed: `lead_secs` before `starts_at` (unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReminderSlot {
    pub lead_secs: i64,
    pub starts_at: i64,
    pub due_at: i64,
}

/// The reminders a booking is owed for its current start: one per lead
/// time, none when it has no start or does not await its session.
pub fn reminder_slots(
    status: BookingStatus,
    starts_at: Option<i64>,
    lead_secs: &[i64],
) -> Vec<ReminderSlot> {
    let Some(starts_at) = starts_at.filter(|_| status.awaits_session()) else {
        return Vec::new();
    };
    let mut leads: Vec<i64> = lead_secs.iter().copied().filter(|l| *l > 0).collect();
    leads.sort_unstable();
    leads.dedup();
    leads
        .into_iter()
        .map(|lead_secs| ReminderSlot {
            lead_secs,
            starts_at,
            due_at: starts_at.saturating_sub(lead_secs.saturating_mul(1000)),
        })
        .collect()
}

/// What a due reminder becomes when it is taken, `now`.
pub fn on_due(status: Option<BookingStatus>, starts_at: i64, now: i64) -> ReminderState {
    match status {
        Some(status) if status.awaits_session() => {
            if now >= starts_at {
                ReminderState::Missed
            } else {
                ReminderState::Sent
            }
        }
        // Cancelled, or the booking is gone (erased).
        _ => ReminderState::Cancelled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;

    #[test]
    fn a_confirmed_booking_is_owed_one_reminder_per_lead_time() {
        let slots = reminder_slots(
            BookingStatus::Paid,
            Some(100 * HOUR),
            &[86_400, 3_600, 3_600, 0],
        );
        assert_eq!(
            slots,
            [
                ReminderSlot {
                    lead_secs: 3_600,
                    starts_at: 100 * HOUR,
                    due_at: 99 * HOUR
                },
                ReminderSlot {
                    lead_secs: 86_400,
                    starts_at: 100 * HOUR,
                    due_at: 76 * HOUR
                },
            ]
        );
    }

    #[test]
    fn no_reminders_without_a_start_or_a_session_to_await() {
        assert!(reminder_slots(BookingStatus::Confirmed, None, &[3_600]).is_empty());
        for status in [
            BookingStatus::Requested,
            BookingStatus::Cancelled,
            BookingStatus::Refunded,
            BookingStatus::InSession,
            BookingStatus::Completed,
        ] {
            assert!(
                reminder_slots(status, Some(HOUR), &[60]).is_empty(),
                "{status:?}"
            );
        }
    }

    #[test]
    fn a_due_reminder_is_sent_before_the_session_missed_after_and_cancelled_when_off() {
        let starts = 10 * HOUR;
        assert_eq!(
            on_due(Some(BookingStatus::Confirmed), starts, starts - 1),
            ReminderState::Sent
        );
        assert_eq!(
            on_due(Some(BookingStatus::Confirmed), starts, starts),
            ReminderState::Missed
        );
        assert_eq!(
            on_due(Some(BookingStatus::Cancelled), starts, 0),
            ReminderState::Cancelled
        );
        assert_eq!(on_due(None, starts, 0), ReminderState::Cancelled);
    }
}
