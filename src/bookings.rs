//! Booking status changes, wherever they come from (the Mixroom backend or
//! a Stripe webhook): stored with their cause, pushed to everyone concerned
//! and written into the booking room's history as a `system` message.

use serde::Serialize;

use crate::app::AppState;
use crate::db::bookings::{booking_room, BookingOutcome, BookingUpsert};
use crate::db::messages::NewMessage;
use crate::db::models::StatusChangeRow;
use crate::error::AppError;
use crate::rooms::hub::{BookingUpdated, RoomChanged};

/// The statuses a booking can have.
pub const STATUSES: &[&str] = &[
    "requested",
    "confirmed",
    "paid",
    "payment_failed",
    "in_session",
    "completed",
    "cancelled",
    "refunded",
];

pub fn validate_status(status: &str) -> Result<(), AppError> {
    if STATUSES.contains(&status) {
        Ok(())
    } else {
        Err(AppError::Unprocessable(format!(
            "unknown status `{status}`; expected one of {}",
            STATUSES.join(", ")
        )))
    }
}

#[derive(Serialize)]
struct BookingUpdatedFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    booking_id: &'a str,
    status: &'a str,
    previous_status: Option<&'a str>,
    reason: Option<&'a str>,
    at: String,
}

/// Applies the backend's view of a booking and announces a status change.
pub async fn apply(state: &AppState, update: BookingUpsert) -> Result<BookingOutcome, AppError> {
    validate_status(&update.status)?;
    let booking_id = update.id.clone();
    let outcome = state.db.upsert_booking(update).await?;
    after_change(state, &booking_id, &outcome).await?;
    Ok(outcome)
}

/// Changes only the status (payment events); `None` for an unknown booking.
pub async fn set_status(
    state: &AppState,
    booking_id: &str,
    status: &str,
    reason: Option<String>,
    caused_by: String,
    allowed: fn(&str) -> bool,
) -> Result<Option<BookingOutcome>, AppError> {
    validate_status(status)?;
    let outcome = state
        .db
        .set_booking_status(booking_id, status, reason, caused_by, allowed)
        .await?;
    if let Some(outcome) = &outcome {
        after_change(state, booking_id, outcome).await?;
    }
    Ok(outcome)
}

async fn after_change(
    state: &AppState,
    booking_id: &str,
    outcome: &BookingOutcome,
) -> Result<(), AppError> {
    let BookingOutcome::Applied {
        status_change,
        participants,
        notifications,
        ..
    } = outcome
    else {
        return Ok(());
    };
    let room = booking_room(booking_id);
    state.hub.do_send(RoomChanged { room: room.clone() });
    crate::notifications::push(state, notifications);
    // A new booking is not a change: its first status is only recorded.
    if let Some(change) = status_change
        .as_ref()
        .filter(|c| c.previous_status.is_some())
    {
        announce(state, &room, change, participants).await?;
    }
    Ok(())
}

async fn announce(
    state: &AppState,
    room: &str,
    change: &StatusChangeRow,
    participants: &[String],
) -> Result<(), AppError> {
    let frame = serde_json::to_string(&BookingUpdatedFrame {
        kind: "booking.updated",
        booking_id: &change.booking_id,
        status: &change.status,
        previous_status: change.previous_status.as_deref(),
        reason: change.reason.as_deref(),
        at: crate::time::rfc3339_ms(change.at),
    })
    .map_err(AppError::internal)?;
    state.hub.do_send(BookingUpdated {
        room: room.to_owned(),
        participants: participants.to_vec(),
        frame: frame.into(),
    });
    let human = |status: &str| status.replace('_', " ");
    let body = match &change.previous_status {
        Some(previous) => format!(
            "Booking status changed from {} to {}.",
            human(previous),
            human(&change.status)
        ),
        None => format!("Booking created with status {}.", human(&change.status)),
    };
    // Keyed by the change, so a retried announcement is stored once.
    state
        .sequencer
        .append(NewMessage {
            id: None,
            room: room.to_owned(),
            sender_id: None,
            sender_name: "Mixroom".to_owned(),
            sender_role: "system".to_owned(),
            client_id: Some(format!("status:{}", change.id)),
            body,
        })
        .await?;
    Ok(())
}
