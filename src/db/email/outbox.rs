//! The outbox of rendered emails and the batches they are sent in: a batch
//! is sent by the node holding its lease (`claimed_until`), taken with one
//! atomic `UPDATE ... WHERE` that a second node cannot also win.

use diesel::prelude::{Insertable, Queryable, Selectable};
use diesel_async::AsyncConnection;

use crate::db::schema::{email_batches, email_outbox};
use crate::db::{Db, DbError};
use crate::db_run;
use crate::domain::email::{BatchState, OutboxState};

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = email_outbox, treat_none_as_default_value = false)]
pub struct OutboxRow {
    pub id: String,
    pub user_id: String,
    pub to_address: String,
    pub subject: String,
    pub html: String,
    pub text: String,
    /// For the `List-Unsubscribe` header, when the email is of one kind.
    pub unsubscribe_url: Option<String>,
    pub item_count: i64,
    pub state: OutboxState,
    pub solo: bool,
    pub batch_id: Option<String>,
    pub provider_id: Option<String>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub sent_at: Option<i64>,
    /// An announcement's: a bulk email, sent after every other email.
    pub announcement_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = email_batches, treat_none_as_default_value = false)]
pub struct BatchRow {
    pub id: String,
    pub state: BatchState,
    pub email_count: i64,
    /// Counted when a batch is claimed, so a send that crashes the process
    /// still counts and a poison email cannot be retried for ever.
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub claimed_by: Option<String>,
    pub claimed_until: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Holds bulk emails: claimed only when no other batch is due.
    pub bulk: bool,
}

impl Db {
    /// Puts up to `max` queued emails without a batch into a new batch
    /// (emails marked `solo` go one per batch, bulk emails only with bulk
    /// ones and after all others); `None` when there are none. The
    /// assignment is one atomic UPDATE, so two nodes never batch the same
    /// email.
    pub async fn form_email_batch(&self, max: i64) -> Result<Option<BatchRow>, DbError> {
        let now = crate::time::now_ms();
        let batch_id = uuid::Uuid::now_v7().to_string();
        db_run!(self, |conn| {
            conn.transaction::<_, DbError, _>(async |conn| {
                // A write first: on SQLite the transaction takes the write
                // lock now, waiting its turn, instead of reading and then
                // failing at once ("database is locked") when another
                // connection committed since its read (as an announcement's
                // pages do, back to back).
                diesel::update(email_batches::table.filter(email_batches::id.eq(&batch_id)))
                    .set(email_batches::updated_at.eq(now))
                    .execute(conn)
                    .await?;
                let mut assigned = 0;
                let mut bulk = false;
                for (solo, of_bulk) in [(true, false), (false, false), (true, true), (false, true)]
                {
                    let unbatched = email_outbox::table
                        .filter(email_outbox::state.eq(OutboxState::Queued))
                        .filter(email_outbox::batch_id.is_null())
                        .filter(email_outbox::solo.eq(solo))
                        .filter(email_outbox::announcement_id.is_not_null().eq(of_bulk));
                    let candidates: Vec<String> = unbatched
                        .order(email_outbox::created_at.asc())
                        .limit(if solo { 1 } else { max })
                        .select(email_outbox::id)
                        .load(conn)
                        .await?;
                    if candidates.is_empty() {
                        continue;
                    }
                    // `batch_id IS NULL` again: PostgreSQL re-checks it on a
                    // row another node batched meanwhile, and skips that row.
                    assigned = diesel::update(
                        email_outbox::table
                            .filter(email_outbox::id.eq_any(&candidates))
                            .filter(email_outbox::batch_id.is_null()),
                    )
                    .set(email_outbox::batch_id.eq(&batch_id))
                    .execute(conn)
                    .await?;
                    if assigned > 0 {
                        bulk = of_bulk;
                        break;
                    }
                }
                if assigned == 0 {
                    return Ok(None);
                }
                let batch = BatchRow {
                    id: batch_id.clone(),
                    state: BatchState::Pending,
                    email_count: assigned as i64,
                    attempts: 0,
                    next_attempt_at: now,
                    claimed_by: None,
                    claimed_until: None,
                    last_error: None,
                    created_at: now,
                    updated_at: now,
                    bulk,
                };
                diesel::insert_into(email_batches::table)
                    .values(&batch)
                    .execute(conn)
                    .await?;
                Ok(Some(batch))
            })
            .await
        })
    }

    /// Takes the lease of the batch due first, if any, counting an attempt;
    /// returns it with its emails. A batch whose lease ran out (its node
    /// died mid-send) is due again.
    pub async fn claim_email_batch(
        &self,
        node: &str,
        lease_until: i64,
    ) -> Result<Option<(BatchRow, Vec<OutboxRow>)>, DbError> {
        let now = crate::time::now_ms();
        db_run!(self, |conn| {
            let claimable = email_batches::state
                .eq(BatchState::Pending)
                .and(email_batches::next_attempt_at.le(now))
                .and(
                    email_batches::claimed_until
                        .is_null()
                        .or(email_batches::claimed_until.lt(now)),
                );
            // Bulk batches (`false` sorts first) wait for every other.
            let first_due: Option<String> = email_batches::table
                .filter(claimable)
                .order((
                    email_batches::bulk.asc(),
                    email_batches::next_attempt_at.asc(),
                ))
                .select(email_batches::id)
                .first(conn)
                .await
                .optional()?;
            let Some(first_due) = first_due else {
                return Ok(None);
            };
            // The conditions are repeated in the UPDATE: a concurrent
            // claimer that waited for this row's lock re-checks them on the
            // updated row and takes nothing.
            let claimed: Vec<BatchRow> = diesel::update(
                email_batches::table
                    .filter(email_batches::id.eq(&first_due))
                    .filter(claimable),
            )
            .set((
                email_batches::claimed_by.eq(node),
                email_batches::claimed_until.eq(lease_until),
                email_batches::attempts.eq(email_batches::attempts + 1),
                email_batches::updated_at.eq(now),
            ))
            .returning(BatchRow::as_returning())
            .get_results(conn)
            .await?;
            let Some(batch) = claimed.into_iter().next() else {
                return Ok(None);
            };
            let emails: Vec<OutboxRow> = email_outbox::table
                .filter(email_outbox::batch_id.eq(&batch.id))
                .order(email_outbox::id.asc())
                .select(OutboxRow::as_select())
                .load(conn)
                .await?;
            Ok(Some((batch, emails)))
        })
    }

    /// Resend accepted the batch: `provider_ids` pairs outbox ids with the
    /// ids Resend gave them.
    ///
    /// This and the other outcomes below apply only while `node` holds the
    /// batch's lease, and answer whether it did: a node whose lease ran out
    /// leaves the batch to the node that took it over (which repeats the
    /// request under the same Idempotency-Key).
    pub async fn email_batch_sent(
        &self,
        node: &str,
        batch_id: &str,
        provider_ids: &[(String, String)],
    ) -> Result<bool, DbError> {
        let now = crate::time::now_ms();
        db_run!(self, |conn| {
            conn.transaction::<_, DbError, _>(async |conn| {
                let held = diesel::update(
                    email_batches::table
                        .find(batch_id)
                        .filter(email_batches::claimed_by.eq(node)),
                )
                .set((
                    email_batches::state.eq(BatchState::Sent),
                    email_batches::claimed_by.eq(None::<String>),
                    email_batches::claimed_until.eq(None::<i64>),
                    email_batches::last_error.eq(None::<String>),
                    email_batches::updated_at.eq(now),
                ))
                .execute(conn)
                .await?;
                if held == 0 {
                    return Ok(false);
                }
                diesel::update(email_outbox::table.filter(email_outbox::batch_id.eq(batch_id)))
                    .set((
                        email_outbox::state.eq(OutboxState::Sent),
                        email_outbox::sent_at.eq(now),
                    ))
                    .execute(conn)
                    .await?;
                for (outbox_id, provider_id) in provider_ids {
                    diesel::update(email_outbox::table.find(outbox_id))
                        .set(email_outbox::provider_id.eq(provider_id))
                        .execute(conn)
                        .await?;
                }
                Ok(true)
            })
            .await
        })
    }

    /// The batch is tried again at `next_attempt_at`; a rate-limited try is
    /// not counted as an attempt.
    pub async fn email_batch_retry(
        &self,
        node: &str,
        batch_id: &str,
        next_attempt_at: i64,
        error: &str,
        counts_as_attempt: bool,
    ) -> Result<bool, DbError> {
        let now = crate::time::now_ms();
        let uncount = if counts_as_attempt { 0 } else { 1 };
        db_run!(self, |conn| {
            let held = diesel::update(
                email_batches::table
                    .find(batch_id)
                    .filter(email_batches::claimed_by.eq(node)),
            )
            .set((
                email_batches::next_attempt_at.eq(next_attempt_at),
                email_batches::attempts.eq(email_batches::attempts - uncount),
                email_batches::claimed_by.eq(None::<String>),
                email_batches::claimed_until.eq(None::<i64>),
                email_batches::last_error.eq(error),
                email_batches::updated_at.eq(now),
            ))
            .execute(conn)
            .await?;
            Ok(held == 1)
        })
    }

    /// The batch is given up: it and its emails are marked failed.
    pub async fn email_batch_failed(
        &self,
        node: &str,
        batch_id: &str,
        error: &str,
    ) -> Result<bool, DbError> {
        let now = crate::time::now_ms();
        db_run!(self, |conn| {
            conn.transaction::<_, DbError, _>(async |conn| {
                let held = diesel::update(
                    email_batches::table
                        .find(batch_id)
                        .filter(email_batches::claimed_by.eq(node)),
                )
                .set((
                    email_batches::state.eq(BatchState::Failed),
                    email_batches::claimed_by.eq(None::<String>),
                    email_batches::claimed_until.eq(None::<i64>),
                    email_batches::last_error.eq(error),
                    email_batches::updated_at.eq(now),
                ))
                .execute(conn)
                .await?;
                if held == 0 {
                    return Ok(false);
                }
                diesel::update(email_outbox::table.filter(email_outbox::batch_id.eq(batch_id)))
                    .set((
                        email_outbox::state.eq(OutboxState::Failed),
                        email_outbox::last_error.eq(error),
                    ))
                    .execute(conn)
                    .await?;
                Ok(true)
            })
            .await
        })
    }

    /// Resend refused the batch as a whole (nothing of it was sent): its
    /// emails go back to the outbox, each to be sent on its own.
    pub async fn split_email_batch(
        &self,
        node: &str,
        batch_id: &str,
        error: &str,
    ) -> Result<bool, DbError> {
        let now = crate::time::now_ms();
        db_run!(self, |conn| {
            conn.transaction::<_, DbError, _>(async |conn| {
                let held = diesel::update(
                    email_batches::table
                        .find(batch_id)
                        .filter(email_batches::claimed_by.eq(node)),
                )
                .set((
                    email_batches::state.eq(BatchState::Split),
                    email_batches::claimed_by.eq(None::<String>),
                    email_batches::claimed_until.eq(None::<i64>),
                    email_batches::last_error.eq(error),
                    email_batches::updated_at.eq(now),
                ))
                .execute(conn)
                .await?;
                if held == 0 {
                    return Ok(false);
                }
                diesel::update(email_outbox::table.filter(email_outbox::batch_id.eq(batch_id)))
                    .set((
                        email_outbox::batch_id.eq(None::<String>),
                        email_outbox::solo.eq(true),
                        email_outbox::last_error.eq(error),
                    ))
                    .execute(conn)
                    .await?;
                Ok(true)
            })
            .await
        })
    }

    /// When the mailer has work next: now when emails wait for a batch,
    /// else the earliest moment a pending batch may be claimed (its next
    /// attempt, or the end of a lease a dead node left).
    pub async fn next_email_send(&self) -> Result<Option<i64>, DbError> {
        let now = crate::time::now_ms();
        db_run!(self, |conn| {
            let unbatched: i64 = email_outbox::table
                .filter(email_outbox::state.eq(OutboxState::Queued))
                .filter(email_outbox::batch_id.is_null())
                .count()
                .get_result(conn)
                .await?;
            if unbatched > 0 {
                return Ok(Some(now));
            }
            let pending: Vec<(i64, Option<i64>)> = email_batches::table
                .filter(email_batches::state.eq(BatchState::Pending))
                .order(email_batches::next_attempt_at.asc())
                .limit(100)
                .select((email_batches::next_attempt_at, email_batches::claimed_until))
                .load(conn)
                .await?;
            Ok(pending
                .into_iter()
                .map(|(next, lease)| next.max(lease.unwrap_or(0)))
                .min())
        })
    }

    /// Emails waiting in the outbox (queued, sent or not yet batched).
    pub async fn queued_email_count(&self) -> Result<i64, DbError> {
        db_run!(self, |conn| {
            Ok(email_outbox::table
                .filter(email_outbox::state.eq(OutboxState::Queued))
                .count()
                .get_result(conn)
                .await?)
        })
    }
}
