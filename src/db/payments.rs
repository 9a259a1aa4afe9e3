//! Stripe events and payments. Each event id is applied once, even when
//! Stripe delivers it twice at the same moment: the database decides, a
//! delivery first claims the event's row and only the delivery that
//! inserted it applies it. What the events say about a booking's payment
//! is kept per payment (`booking_payments`), and the booking's status is
//! derived from all of it (`crate::payments`).

use diesel_async::AsyncConnection;

use super::bookings::{lock_booking, record_status_change, status_notification, BookingOutcome};
use super::models::{BookingRow, PaymentRow, StatusChangeRow};
use super::schema::{
    booking_participants, booking_payments, booking_status_history, bookings, notifications,
    payment_refunds, stripe_events,
};
use super::{Db, DbError};
use crate::db_run;
use crate::domain::booking::BookingStatus;
use crate::payments::{may_follow, PaymentEvent, PaymentFacts};

/// The stored payments an event's charge or payment intent names.
macro_rules! matching_payments {
    ($conn:ident, $event:expr) => {{
        let event: &PaymentEvent = $event;
        let none = String::new();
        let charge = event.charge.as_ref().unwrap_or(&none);
        let intent = event.payment_intent.as_ref().unwrap_or(&none);
        if charge.is_empty() && intent.is_empty() {
            Vec::<PaymentRow>::new()
        } else {
            booking_payments::table
                .filter(
                    booking_payments::charge_id
                        .eq(charge)
                        .or(booking_payments::payment_intent.eq(intent)),
                )
                .select(PaymentRow::as_select())
                .load::<PaymentRow>($conn)
                .await?
        }
    }};
}

/// The outcome stored while a delivery applies the event.
const APPLYING: &str = "applying";
/// A claim this old belongs to a delivery that died mid-way (a crash): the
/// next delivery may take it over. Applying an event takes milliseconds.
const STALE_CLAIM_MS: i64 = 60_000;

/// Whether this delivery is the one that applies the event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventClaim {
    Claimed,
    /// Applied already, or being applied by another delivery right now.
    Duplicate,
}

impl Db {
    /// Claims `event_id` for this delivery.
    pub async fn claim_stripe_event(
        &self,
        event_id: &str,
        event_type: &str,
        booking_id: Option<&str>,
    ) -> Result<EventClaim, DbError> {
        let now = crate::time::now_ms();
        db_run!(self, |conn| {
            let inserted = diesel::insert_into(stripe_events::table)
                .values((
                    stripe_events::id.eq(event_id),
                    stripe_events::event_type.eq(event_type),
                    stripe_events::booking_id.eq(booking_id),
                    stripe_events::outcome.eq(APPLYING),
                    stripe_events::received_at.eq(now),
                ))
                .on_conflict_do_nothing()
                .execute(conn)
                .await?;
            if inserted == 1 {
                return Ok(EventClaim::Claimed);
            }
            let stale = stripe_events::table
                .find(event_id)
                .filter(stripe_events::outcome.eq(APPLYING))
                .filter(stripe_events::received_at.lt(now - STALE_CLAIM_MS));
            let taken_over = diesel::update(stale)
                .set(stripe_events::received_at.eq(now))
                .execute(conn)
                .await?;
            Ok(if taken_over == 1 {
                EventClaim::Claimed
            } else {
                EventClaim::Duplicate
            })
        })
    }

    /// Records what applying a claimed event did.
    pub async fn finish_stripe_event(&self, event_id: &str, outcome: &str) -> Result<(), DbError> {
        db_run!(self, |conn| {
            diesel::update(stripe_events::table.find(event_id))
                .set(stripe_events::outcome.eq(outcome))
                .execute(conn)
                .await?;
            Ok(())
        })
    }

    /// Gives a claim back after applying failed, so Stripe's retry applies it.
    pub async fn release_stripe_event(&self, event_id: &str) -> Result<(), DbError> {
        db_run!(self, |conn| {
            diesel::delete(
                stripe_events::table
                    .find(event_id)
                    .filter(stripe_events::outcome.eq(APPLYING)),
            )
            .execute(conn)
            .await?;
            Ok(())
        })
    }
}

/// What applying one payment event did.
#[derive(Debug)]
pub enum PaymentOutcome {
    /// No booking is known for the payment yet: its facts are kept until
    /// an event names the booking.
    Unassigned,
    /// The booking the payment names is not mirrored here.
    UnknownBooking { booking_id: String },
    /// The booking's status after the event (changed or not).
    Applied {
        booking_id: String,
        outcome: Box<BookingOutcome>,
    },
}

impl Db {
    /// What is recorded of a booking's payment.
    pub async fn payment_of_booking(
        &self,
        booking_id: &str,
    ) -> Result<Option<PaymentRow>, DbError> {
        db_run!(self, |conn| {
            Ok(booking_payments::table
                .filter(booking_payments::booking_id.eq(booking_id))
                .select(PaymentRow::as_select())
                .first(conn)
                .await
                .optional()?)
        })
    }

    /// Adds what `event` says to its payment's facts and moves the booking
    /// to the status all the facts lead to, in one transaction under the
    /// booking's lock: concurrent events of one payment take turns, and
    /// each decides from everything stored before it.
    pub async fn apply_payment_event(
        &self,
        event: &PaymentEvent,
        caused_by: String,
    ) -> Result<PaymentOutcome, DbError> {
        let now = crate::time::now_ms();
        // Which booking, before locking it: the event's own, or the one
        // recorded with its charge or payment intent.
        let known = match &event.booking_id {
            Some(id) => Some(id.clone()),
            None => {
                let rows = db_run!(self, |conn| {
                    Ok::<_, DbError>(matching_payments!(conn, event))
                })?;
                rows.into_iter().find_map(|row| row.booking_id)
            }
        };
        db_run!(self, |conn| {
            conn.transaction::<_, DbError, _>(async |conn| {
                let booking: Option<BookingRow> = match &known {
                    Some(id) => {
                        lock_booking!(conn, id);
                        bookings::table
                            .find(id)
                            .select(BookingRow::as_select())
                            .first(conn)
                            .await
                            .optional()?
                    }
                    None => None,
                };
                let mut rows = matching_payments!(conn, event);
                // Ids are Stripe's, unique per payment; a row of another
                // booking is never merged into this one.
                rows.retain(|row| row.booking_id.is_none() || row.booking_id == known);
                if let Some(id) = &known {
                    let more: Vec<PaymentRow> = booking_payments::table
                        .filter(booking_payments::booking_id.eq(id))
                        .select(PaymentRow::as_select())
                        .load(conn)
                        .await?;
                    for row in more {
                        if !rows.iter().any(|r| r.id == row.id) {
                            rows.push(row);
                        }
                    }
                }
                // Everything known about this payment becomes one row.
                let mut facts = PaymentFacts::default();
                for row in &rows {
                    facts.merge(&row.facts());
                }
                let refunded_before = facts.amount_refunded;
                facts.absorb(event);
                if let Some(refund) = &event.refund {
                    // Each refund counts once, by its id; a later report of
                    // it (failed, canceled) replaces the earlier one.
                    let row = (
                        payment_refunds::id.eq(&refund.id),
                        payment_refunds::charge_id.eq(&event.charge),
                        payment_refunds::payment_intent.eq(&event.payment_intent),
                        payment_refunds::amount.eq(refund.amount),
                        payment_refunds::status.eq(if refund.succeeded {
                            "succeeded"
                        } else {
                            "other"
                        }),
                        payment_refunds::updated_at.eq(now),
                    );
                    diesel::insert_into(payment_refunds::table)
                        .values(row)
                        .on_conflict(payment_refunds::id)
                        .do_update()
                        .set(row)
                        .execute(conn)
                        .await?;
                }
                let mut merged =
                    <[PaymentRow]>::first(&rows)
                        .cloned()
                        .unwrap_or_else(|| PaymentRow {
                            id: uuid::Uuid::now_v7().to_string(),
                            booking_id: None,
                            payment_intent: None,
                            charge_id: None,
                            amount: None,
                            currency: None,
                            amount_refunded: 0,
                            paid: false,
                            failed: false,
                            pending: false,
                            dispute: None,
                            updated_at: now,
                        });
                let first_of = |pick: fn(&PaymentRow) -> &Option<String>| {
                    rows.iter().find_map(|row| pick(row).clone())
                };
                merged.booking_id = known.clone().or_else(|| first_of(|r| &r.booking_id));
                merged.payment_intent = event
                    .payment_intent
                    .clone()
                    .or_else(|| first_of(|r| &r.payment_intent));
                merged.charge_id = event.charge.clone().or_else(|| first_of(|r| &r.charge_id));
                // Refunds told one by one add up to what went back.
                let none = String::new();
                let refunds: Vec<i64> = payment_refunds::table
                    .filter(payment_refunds::status.eq("succeeded"))
                    .filter(
                        payment_refunds::charge_id
                            .eq(merged.charge_id.as_ref().unwrap_or(&none))
                            .or(payment_refunds::payment_intent
                                .eq(merged.payment_intent.as_ref().unwrap_or(&none))),
                    )
                    .select(payment_refunds::amount)
                    .load(conn)
                    .await?;
                facts.amount_refunded = facts.amount_refunded.max(refunds.iter().sum());
                merged.set_facts(&facts);
                merged.updated_at = now;
                let others: Vec<&str> = rows.iter().skip(1).map(|r| r.id.as_str()).collect();
                if !others.is_empty() {
                    diesel::delete(
                        booking_payments::table.filter(booking_payments::id.eq_any(others)),
                    )
                    .execute(conn)
                    .await?;
                }
                diesel::insert_into(booking_payments::table)
                    .values(&merged)
                    .on_conflict(booking_payments::id)
                    .do_update()
                    .set(&merged)
                    .execute(conn)
                    .await?;

                let (Some(booking_id), Some(mut row)) = (known.clone(), booking) else {
                    return Ok(match known {
                        Some(booking_id) => PaymentOutcome::UnknownBooking { booking_id },
                        None => PaymentOutcome::Unassigned,
                    });
                };
                let participants: Vec<String> = booking_participants::table
                    .filter(booking_participants::booking_id.eq(&booking_id))
                    .select(booking_participants::user_id)
                    .load(conn)
                    .await?;
                // Another partial refund keeps the status but is news too.
                let more_refunded = facts.amount_refunded > refunded_before;
                let target = facts.status().filter(|target| {
                    may_follow(row.status, *target)
                        && (*target != row.status
                            || (*target == BookingStatus::PartiallyRefunded && more_refunded))
                });
                let Some(target) = target else {
                    return Ok(PaymentOutcome::Applied {
                        booking_id,
                        outcome: Box::new(BookingOutcome::Applied {
                            created: false,
                            status_change: None,
                            participants,
                            notifications: Vec::new(),
                        }),
                    });
                };
                let reason = Some(match facts.describe(target) {
                    Some(money) => format!("Stripe: {money}"),
                    None => "Stripe".to_owned(),
                });
                let previous = std::mem::replace(&mut row.status, target);
                diesel::update(bookings::table.find(&booking_id))
                    .set((bookings::status.eq(target), bookings::updated_at.eq(now)))
                    .execute(conn)
                    .await?;
                let (status_change, notifications) = record_status_change!(
                    conn,
                    &row,
                    Some(previous),
                    reason,
                    caused_by,
                    &participants,
                    now
                );
                Ok(PaymentOutcome::Applied {
                    booking_id,
                    outcome: Box::new(BookingOutcome::Applied {
                        created: false,
                        status_change,
                        participants,
                        notifications,
                    }),
                })
            })
            .await
        })
    }
}
