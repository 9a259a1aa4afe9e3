//! Stripe events already applied: each event id is applied once.

use super::schema::stripe_events;
use super::{Db, DbError};
use crate::db_run;

impl Db {
    pub async fn stripe_event_seen(&self, event_id: &str) -> Result<bool, DbError> {
        db_run!(self, |conn| {
            let found: Option<String> = stripe_events::table
                .find(event_id)
                .select(stripe_events::id)
                .first(conn)
                .await
                .optional()?;
            Ok(found.is_some())
        })
    }

    /// Records an applied event; false when it was recorded already.
    pub async fn record_stripe_event(
        &self,
        event_id: &str,
        event_type: &str,
        booking_id: Option<&str>,
        outcome: &str,
    ) -> Result<bool, DbError> {
        let now = crate::time::now_ms();
        db_run!(self, |conn| {
            let inserted = diesel::insert_into(stripe_events::table)
                .values((
                    stripe_events::id.eq(event_id),
                    stripe_events::event_type.eq(event_type),
                    stripe_events::booking_id.eq(booking_id),
                    stripe_events::outcome.eq(outcome),
                    stripe_events::received_at.eq(now),
                ))
                .on_conflict_do_nothing()
                .execute(conn)
                .await?;
            Ok(inserted == 1)
        })
    }
}
