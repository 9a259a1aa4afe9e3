//! Idempotency keys of internal POSTs: the first request's hash and answer.

use super::schema::idempotency_keys;
use super::{Db, DbError};
use crate::db_run;

/// What a key says about a request that carries it.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyClaim {
    /// First use: handle the request, then [`Db::settle_idempotency_key`].
    Claimed,
    /// Answered before, for the same request: its status and JSON body.
    Answered { status: u16, response: String },
    /// The key was used for another request (another route or body).
    OtherRequest,
    /// The first request with this key is still being handled.
    InFlight,
}

impl Db {
    /// Claims `key` for a request whose route and body hash to `hash`.
    pub async fn claim_idempotency_key(
        &self,
        key: &str,
        route: &str,
        hash: &str,
        now: i64,
    ) -> Result<KeyClaim, DbError> {
        db_run!(self, |conn| {
            let inserted = diesel::insert_into(idempotency_keys::table)
                .values((
                    idempotency_keys::key.eq(key),
                    idempotency_keys::route.eq(route),
                    idempotency_keys::request_hash.eq(hash),
                    idempotency_keys::status.eq(0),
                    idempotency_keys::response.eq(""),
                    idempotency_keys::created_at.eq(now),
                ))
                .on_conflict_do_nothing()
                .execute(conn)
                .await?;
            if inserted == 1 {
                return Ok(KeyClaim::Claimed);
            }
            let stored: Option<(String, i32, String)> = idempotency_keys::table
                .find(key)
                .select((
                    idempotency_keys::request_hash,
                    idempotency_keys::status,
                    idempotency_keys::response,
                ))
                .first(conn)
                .await
                .optional()?;
            Ok(match stored {
                // Released between our insert and read: the caller retries.
                None => KeyClaim::InFlight,
                Some((stored_hash, _, _)) if stored_hash != hash => KeyClaim::OtherRequest,
                Some((_, 0, _)) => KeyClaim::InFlight,
                Some((_, status, response)) => KeyClaim::Answered {
                    status: status as u16,
                    response,
                },
            })
        })
    }

    /// Keeps the answer of a claimed key.
    pub async fn settle_idempotency_key(
        &self,
        key: &str,
        status: u16,
        response: &str,
    ) -> Result<(), DbError> {
        db_run!(self, |conn| {
            diesel::update(idempotency_keys::table.find(key))
                .set((
                    idempotency_keys::status.eq(i32::from(status)),
                    idempotency_keys::response.eq(response),
                ))
                .execute(conn)
                .await?;
            Ok(())
        })
    }

    /// Gives a claimed key up (the request failed: a retry may use it).
    pub async fn release_idempotency_key(&self, key: &str) -> Result<(), DbError> {
        db_run!(self, |conn| {
            diesel::delete(
                idempotency_keys::table
                    .find(key)
                    .filter(idempotency_keys::status.eq(0)),
            )
            .execute(conn)
            .await?;
            Ok(())
        })
    }

    /// Forgets keys used before `before` (milliseconds).
    pub async fn prune_idempotency_keys(&self, before: i64) -> Result<usize, DbError> {
        db_run!(self, |conn| {
            Ok(diesel::delete(
                idempotency_keys::table.filter(idempotency_keys::created_at.lt(before)),
            )
            .execute(conn)
            .await?)
        })
    }
}
