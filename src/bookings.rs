//! Booking status changes, wherever they come from (the Mixroom backend or
//! a Stripe webhook): stored with their cause, pushed to everyone concerned
//! and written into the booking room's history as a `system` message.

use std::sync::Arc;

use actix::Addr;
use serde::Serialize;

use crate::db::bookings::{booking_room, BookingOutcome, BookingUpsert};
use crate::db::messages::{Action, NewMessage};
use crate::db::models::{NotificationRow, StatusChangeRow};
use crate::db::Db;
use crate::domain::booking::BookingStatus;
use crate::error::AppError;
use crate::notifications::Inbox;
use crate::notify::reminders::{Reminders, RemindersChanged};
use crate::rooms::hub::{BookingUpdated, Hub, RoomChanged};
use crate::rooms::sequencer::Sequencer;

/// A status as a client of the API wrote it (422 with the statuses known).
pub fn parse_status(text: &str) -> Result<BookingStatus, AppError> {
    BookingStatus::parse(text).ok_or_else(|| {
        let known: Vec<&str> = BookingStatus::ALL.iter().map(|s| s.as_str()).collect();
        AppError::Unprocessable(format!(
            "unknown status `{text}`; expected one of {}",
            known.join(", ")
        ))
    })
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

/// Booking changes and what follows them: the store, the rooms' live
/// frames, the inbox and the rooms' history. Cheap to clone.
#[derive(Clone)]
pub struct Bookings {
    db: Db,
    hub: Addr<Hub>,
    sequencer: Sequencer,
    inbox: Inbox,
    reminders: BookingReminders,
}

/// What a booking's reminders need: the lead times, and this node's
/// reminder actor to wake when they change.
#[derive(Clone)]
pub struct BookingReminders {
    pub lead_secs: Arc<[i64]>,
    pub actor: Addr<Reminders>,
}

impl Bookings {
    pub fn new(
        db: Db,
        hub: Addr<Hub>,
        sequencer: Sequencer,
        inbox: Inbox,
        reminders: BookingReminders,
    ) -> Self {
        Bookings {
            db,
            hub,
            sequencer,
            inbox,
            reminders,
        }
    }

    /// Applies the backend's view of a booking and announces a status change.
    pub async fn apply(&self, update: BookingUpsert) -> Result<BookingOutcome, AppError> {
        let booking_id = update.id.clone();
        let outcome = self
            .db
            .upsert_booking(update, &self.reminders.lead_secs)
            .await?;
        self.reminders.actor.do_send(RemindersChanged);
        self.after_change(&booking_id, &outcome).await?;
        Ok(outcome)
    }

    /// Announces what a payment event did to its booking; a payment becoming
    /// disputed is also told to every admin.
    pub async fn announce_payment(
        &self,
        booking_id: &str,
        outcome: &BookingOutcome,
    ) -> Result<(), AppError> {
        self.after_change(booking_id, outcome).await?;
        let BookingOutcome::Applied {
            status_change: Some(change),
            ..
        } = outcome
        else {
            return Ok(());
        };
        if change.status != BookingStatus::Disputed {
            return Ok(());
        }
        let mut created = Vec::new();
        for admin_id in self.db.admin_user_ids().await? {
            let row = NotificationRow {
                id: uuid::Uuid::now_v7().to_string(),
                user_id: admin_id,
                kind: crate::domain::email::EmailKind::Booking,
                title: "A booking payment is disputed".to_owned(),
                body: change
                    .reason
                    .clone()
                    .unwrap_or_else(|| "A payment is disputed.".to_owned()),
                link: Some(format!("/bookings/{booking_id}")),
                // One per admin and change, even if retried.
                source: Some(format!("dispute:{}", change.id)),
                created_at: change.at,
                read_at: None,
                data: None,
                transactional: false,
            };
            let (row, is_new) = self.db.create_notification(row).await?;
            if is_new {
                created.push(row);
            }
        }
        self.inbox.push(&created);
        Ok(())
    }

    async fn after_change(
        &self,
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
        self.hub.do_send(RoomChanged { room: room.clone() });
        self.inbox.push(notifications);
        // A new booking is not a change: its first status is only recorded.
        if let Some(change) = status_change
            .as_ref()
            .filter(|c| c.previous_status.is_some())
        {
            self.announce(&room, change, participants).await?;
        }
        Ok(())
    }

    async fn announce(
        &self,
        room: &str,
        change: &StatusChangeRow,
        participants: &[String],
    ) -> Result<(), AppError> {
        let frame = serde_json::to_string(&BookingUpdatedFrame {
            kind: "booking.updated",
            booking_id: &change.booking_id,
            status: change.status.as_str(),
            previous_status: change.previous_status.map(BookingStatus::as_str),
            reason: change.reason.as_deref(),
            at: crate::time::rfc3339_ms(change.at),
        })
        .map_err(AppError::internal)?;
        self.hub.do_send(BookingUpdated {
            room: room.to_owned(),
            participants: participants.to_vec(),
            frame: frame.into(),
        });
        let mut body = match &change.previous_status {
            Some(previous) if *previous == change.status => {
                format!("Booking still {}.", change.status.words())
            }
            Some(previous) => format!(
                "Booking status changed from {} to {}.",
                previous.words(),
                change.status.words()
            ),
            None => format!("Booking created with status {}.", change.status.words()),
        };
        // A payment's change says how much (`Stripe: $25.00 of $100.00 refunded`).
        if let Some(money) = change
            .reason
            .as_deref()
            .and_then(|r| r.strip_prefix("Stripe: "))
        {
            body.push(' ');
            body.push_str(&capitalized(money));
            body.push('.');
        }
        // Keyed by the change, so a retried announcement is stored once.
        self.sequencer
            .append(NewMessage {
                id: None,
                room: room.to_owned(),
                sender_id: None,
                sender_name: "Mixroom".to_owned(),
                sender_role: "system".to_owned(),
                client_id: Some(format!("status:{}", change.id)),
                body,
                action: Action::MESSAGE,
            })
            .await?;
        Ok(())
    }
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}
