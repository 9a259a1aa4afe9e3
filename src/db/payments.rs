//! Stripe events: each event id is applied once, even when Stripe delivers
//! it twice at the same moment. The database decides: a delivery first
//! claims the event's row, and only the delivery that inserted it applies it.

use super::schema::stripe_events;
use super::{Db, DbError};
use crate::db_run;

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
