//! Rows as stored. Times are unix milliseconds.

use diesel::prelude::*;

use crate::domain::booking::BookingStatus;
use crate::domain::chat::{Attachment, EntryKind};
use crate::domain::email::EmailKind;

use super::schema::{
    booking_participants, bookings, message_reactions, messages, read_cursors, rooms, users,
};

#[derive(
    Debug,
    Clone,
    Queryable,
    QueryableByName,
    Selectable,
    Insertable,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
)]
#[diesel(table_name = messages, treat_none_as_default_value = false)]
pub struct MessageRow {
    pub id: String,
    pub room: String,
    pub seq: i64,
    pub sender_id: Option<String>,
    pub sender_name: String,
    pub sender_role: String,
    pub client_id: Option<String>,
    pub body: String,
    pub sent_at: i64,
    // Defaults: a row from a node of an earlier release is a plain message.
    #[serde(default)]
    pub kind: EntryKind,
    /// For a change, the message it changes; for a reply, the one it answers.
    #[serde(default)]
    pub target_seq: Option<i64>,
    /// A message's attachment references, a JSON array.
    #[serde(default)]
    pub attachments: Option<String>,
    #[serde(default)]
    pub edited_at: Option<i64>,
    #[serde(default)]
    pub deleted_at: Option<i64>,
    /// How many reactions the message carries.
    #[serde(default)]
    pub reactions: i64,
}

impl MessageRow {
    /// Something people read (not a change to another message).
    pub fn is_message(&self) -> bool {
        self.kind == EntryKind::Message
    }

    /// A message that is neither a change nor deleted.
    pub fn is_live_message(&self) -> bool {
        self.is_message() && self.deleted_at.is_none()
    }

    /// The attachments of a message (none for a malformed column, which
    /// only this server writes).
    pub fn attachment_list(&self) -> Vec<Attachment> {
        self.attachments
            .as_deref()
            .and_then(|json| serde_json::from_str(json).ok())
            .unwrap_or_default()
    }
}

/// A reaction that is on: one per (message, user, emoji).
#[derive(
    Debug,
    Clone,
    Queryable,
    Selectable,
    Insertable,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
)]
#[diesel(table_name = message_reactions)]
pub struct ReactionRow {
    pub room: String,
    pub seq: i64,
    pub user_id: String,
    pub emoji: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = rooms)]
pub struct NewRoom<'a> {
    pub id: &'a str,
    pub last_seq: i64,
    pub created_at: i64,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = users, treat_none_as_default_value = false)]
pub struct UserRow {
    pub id: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub role: String,
    pub updated_at: i64,
    pub erased_at: Option<i64>,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = bookings, treat_none_as_default_value = false)]
pub struct BookingRow {
    pub id: String,
    pub client_id: String,
    pub status: BookingStatus,
    pub title: String,
    pub starts_at: Option<String>,
    pub version: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = booking_participants)]
pub struct ParticipantRow {
    pub booking_id: String,
    pub user_id: String,
    pub kind: String,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = read_cursors)]
pub struct ReadCursorRow {
    pub room: String,
    pub user_id: String,
    pub seq: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = super::schema::booking_status_history, treat_none_as_default_value = false)]
pub struct StatusChangeRow {
    pub id: String,
    pub booking_id: String,
    pub status: BookingStatus,
    pub previous_status: Option<BookingStatus>,
    pub reason: Option<String>,
    pub caused_by: String,
    pub at: i64,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable, serde::Serialize)]
#[diesel(table_name = super::schema::notifications, treat_none_as_default_value = false)]
pub struct NotificationRow {
    pub id: String,
    pub user_id: String,
    pub kind: EmailKind,
    pub title: String,
    pub body: String,
    pub link: Option<String>,
    pub source: Option<String>,
    pub created_at: i64,
    pub read_at: Option<i64>,
    /// The backend's `data` object, as JSON text.
    pub data: Option<String>,
    /// Emailed at once and alone, read or not (a booking confirmed or paid).
    pub transactional: bool,
}

/// What Stripe's events said about one booking's payment (`src/payments.rs`).
#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = super::schema::booking_payments, treat_none_as_null = true)]
pub struct PaymentRow {
    pub id: String,
    pub booking_id: Option<String>,
    pub payment_intent: Option<String>,
    pub charge_id: Option<String>,
    pub amount: Option<i64>,
    pub currency: Option<String>,
    pub amount_refunded: i64,
    pub paid: bool,
    pub failed: bool,
    pub pending: bool,
    pub dispute: Option<String>,
    pub updated_at: i64,
}

impl PaymentRow {
    pub fn facts(&self) -> crate::payments::PaymentFacts {
        crate::payments::PaymentFacts {
            amount: self.amount,
            currency: self.currency.clone(),
            amount_refunded: self.amount_refunded,
            paid: self.paid,
            failed: self.failed,
            pending: self.pending,
            dispute: self
                .dispute
                .as_deref()
                .and_then(crate::payments::DisputeState::parse),
        }
    }

    pub fn set_facts(&mut self, facts: &crate::payments::PaymentFacts) {
        self.amount = facts.amount;
        self.currency = facts.currency.clone();
        self.amount_refunded = facts.amount_refunded;
        self.paid = facts.paid;
        self.failed = facts.failed;
        self.pending = facts.pending;
        self.dispute = facts.dispute.map(|d| d.as_str().to_owned());
    }
}
