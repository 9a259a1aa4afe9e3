//! Web Push storage (see `crate::notify::push` for the design): browsers'
//! subscriptions, push switches per kind, the durable queue of pushes
//! (each taken with a lease, like the mailer's batches) and the VAPID key
//! a development server made for itself.

use std::collections::HashMap;

use diesel::prelude::{Insertable, Queryable, Selectable};
use diesel_async::AsyncConnection;

use crate::db::schema::{
    bookings, push_preferences, push_queue, push_subscriptions, push_vapid_keys,
};
use crate::db::{Db, DbError};
use crate::domain::email::EmailKind;
use crate::{db_run, db_write};

/// `push_queue.state`: waiting for (another) attempt.
pub const PUSH_QUEUED: &str = "queued";
/// `push_queue.state`: given up (kept a week for inspection).
pub const PUSH_FAILED: &str = "failed";

/// The id of the development key in `push_vapid_keys`.
const DEVELOPMENT_KEY_ID: &str = "development";

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = push_subscriptions, treat_none_as_default_value = false)]
pub struct PushSubscriptionRow {
    pub endpoint: String,
    pub user_id: String,
    /// The browser's P-256 public key, base64url (65 bytes decoded).
    pub p256dh: String,
    /// The browser's auth secret, base64url (16 bytes decoded).
    pub auth: String,
    pub created_at: i64,
    pub last_success_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = push_queue, treat_none_as_default_value = false)]
pub struct QueuedPushRow {
    pub id: String,
    pub endpoint: String,
    pub user_id: String,
    pub kind: EmailKind,
    /// What the push is about (`notification:<id>`, `chat:<room>:<seq>`):
    /// one push per source and browser.
    pub source: String,
    /// The JSON the browser's service worker gets, before encryption.
    pub payload: String,
    pub state: String,
    /// Counted when the push is claimed, so a send that crashes the
    /// process still counts.
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub claimed_by: Option<String>,
    pub claimed_until: Option<i64>,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What storing a subscription did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscriptionSaved {
    /// New for this user (or moved over from another user of the browser).
    Created(PushSubscriptionRow),
    /// Already this user's; its keys were refreshed.
    Existing(PushSubscriptionRow),
    /// The user already has `max` other subscriptions.
    LimitReached { max: usize },
}

/// A claimed push with the keys of its subscription (`None`: the
/// subscription is gone, the push was dropped).
pub type ClaimedPush = (QueuedPushRow, Option<PushSubscriptionRow>);

impl Db {
    /// The development VAPID key: `candidate` is stored unless a key is
    /// already there; answers the stored one (the same on every node).
    pub async fn development_vapid_key(&self, candidate: &str) -> Result<String, DbError> {
        let now = crate::time::now_ms();
        db_run!(self, |conn| {
            diesel::insert_into(push_vapid_keys::table)
                .values((
                    push_vapid_keys::id.eq(DEVELOPMENT_KEY_ID),
                    push_vapid_keys::private_key.eq(candidate),
                    push_vapid_keys::created_at.eq(now),
                ))
                .on_conflict_do_nothing()
                .execute(conn)
                .await?;
            Ok(push_vapid_keys::table
                .find(DEVELOPMENT_KEY_ID)
                .select(push_vapid_keys::private_key)
                .first(conn)
                .await?)
        })
    }

    /// Stores a browser's subscription for `user_id`, at most `max` per
    /// user. An endpoint another user had moves to this one (the browser
    /// is now theirs), its queued pushes dropped.
    pub async fn save_push_subscription(
        &self,
        row: &PushSubscriptionRow,
        max: usize,
    ) -> Result<SubscriptionSaved, DbError> {
        db_run!(self, |conn| {
            conn.transaction::<_, DbError, _>(async |conn| {
                let existing: Option<PushSubscriptionRow> = push_subscriptions::table
                    .find(&row.endpoint)
                    .select(PushSubscriptionRow::as_select())
                    .first(conn)
                    .await
                    .optional()?;
                if let Some(existing) = existing.as_ref().filter(|e| e.user_id == row.user_id) {
                    diesel::update(push_subscriptions::table.find(&row.endpoint))
                        .set((
                            push_subscriptions::p256dh.eq(&row.p256dh),
                            push_subscriptions::auth.eq(&row.auth),
                        ))
                        .execute(conn)
                        .await?;
                    return Ok(SubscriptionSaved::Existing(PushSubscriptionRow {
                        p256dh: row.p256dh.clone(),
                        auth: row.auth.clone(),
                        ..existing.clone()
                    }));
                }
                let others: i64 = push_subscriptions::table
                    .filter(push_subscriptions::user_id.eq(&row.user_id))
                    .count()
                    .get_result(conn)
                    .await?;
                // Two browsers subscribing at the same instant may both pass
                // on PostgreSQL (one over the limit): harmless, and cheaper
                // than a lock per user.
                if others as usize >= max {
                    return Ok(SubscriptionSaved::LimitReached { max });
                }
                if existing.is_some() {
                    diesel::delete(
                        push_queue::table.filter(push_queue::endpoint.eq(&row.endpoint)),
                    )
                    .execute(conn)
                    .await?;
                    diesel::delete(push_subscriptions::table.find(&row.endpoint))
                        .execute(conn)
                        .await?;
                }
                diesel::insert_into(push_subscriptions::table)
                    .values(row)
                    .execute(conn)
                    .await?;
                Ok(SubscriptionSaved::Created(row.clone()))
            })
            .await
        })
    }

    /// Removes `user_id`'s subscription of `endpoint` and its queued
    /// pushes; false when they have none there.
    pub async fn delete_push_subscription(
        &self,
        user_id: &str,
        endpoint: &str,
    ) -> Result<bool, DbError> {
        db_run!(self, |conn| {
            conn.transaction::<_, DbError, _>(async |conn| {
                let deleted = diesel::delete(
                    push_subscriptions::table
                        .find(endpoint)
                        .filter(push_subscriptions::user_id.eq(user_id)),
                )
                .execute(conn)
                .await?;
                if deleted > 0 {
                    diesel::delete(push_queue::table.filter(push_queue::endpoint.eq(endpoint)))
                        .execute(conn)
                        .await?;
                }
                Ok(deleted > 0)
            })
            .await
        })
    }

    /// The push service said the subscription is gone (404/410): it and
    /// every push queued for it go. False when it was already gone.
    pub async fn drop_gone_push_subscription(&self, endpoint: &str) -> Result<bool, DbError> {
        db_run!(self, |conn| {
            conn.transaction::<_, DbError, _>(async |conn| {
                diesel::delete(push_queue::table.filter(push_queue::endpoint.eq(endpoint)))
                    .execute(conn)
                    .await?;
                let deleted = diesel::delete(push_subscriptions::table.find(endpoint))
                    .execute(conn)
                    .await?;
                Ok(deleted > 0)
            })
            .await
        })
    }

    /// A user's subscriptions, oldest first.
    pub async fn push_subscriptions_of(
        &self,
        user_id: &str,
    ) -> Result<Vec<PushSubscriptionRow>, DbError> {
        db_run!(self, |conn| {
            Ok(push_subscriptions::table
                .filter(push_subscriptions::user_id.eq(user_id))
                .order((
                    push_subscriptions::created_at.asc(),
                    push_subscriptions::endpoint.asc(),
                ))
                .select(PushSubscriptionRow::as_select())
                .load(conn)
                .await?)
        })
    }

    /// The subscriptions of several users.
    pub async fn push_subscriptions_of_users(
        &self,
        user_ids: &[String],
    ) -> Result<Vec<PushSubscriptionRow>, DbError> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        db_run!(self, |conn| {
            Ok(push_subscriptions::table
                .filter(push_subscriptions::user_id.eq_any(user_ids))
                .select(PushSubscriptionRow::as_select())
                .load(conn)
                .await?)
        })
    }

    /// The push switches users changed, as (user, kind, on); kinds no
    /// longer known are left out.
    pub async fn push_switches_of(
        &self,
        user_ids: &[String],
    ) -> Result<Vec<(String, EmailKind, bool)>, DbError> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, String, bool)> = db_run!(self, |conn| {
            push_preferences::table
                .filter(push_preferences::user_id.eq_any(user_ids))
                .select((
                    push_preferences::user_id,
                    push_preferences::kind,
                    push_preferences::enabled,
                ))
                .load(conn)
                .await
                .map_err(DbError::from)
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|(user, kind, on)| Some((user, EmailKind::parse(&kind)?, on)))
            .collect())
    }

    /// Stores a user's push switches (the kinds named; others unchanged).
    pub async fn set_push_switches(
        &self,
        user_id: &str,
        switches: &[(EmailKind, bool)],
    ) -> Result<(), DbError> {
        use diesel::upsert::excluded;
        if switches.is_empty() {
            return Ok(());
        }
        let now = crate::time::now_ms();
        db_run!(self, |conn| {
            conn.transaction::<_, DbError, _>(async |conn| {
                for (kind, on) in switches {
                    diesel::insert_into(push_preferences::table)
                        .values((
                            push_preferences::user_id.eq(user_id),
                            push_preferences::kind.eq(kind.as_str()),
                            push_preferences::enabled.eq(*on),
                            push_preferences::updated_at.eq(now),
                        ))
                        .on_conflict((push_preferences::user_id, push_preferences::kind))
                        .do_update()
                        .set((
                            push_preferences::enabled.eq(excluded(push_preferences::enabled)),
                            push_preferences::updated_at.eq(excluded(push_preferences::updated_at)),
                        ))
                        .execute(conn)
                        .await?;
                }
                Ok(())
            })
            .await
        })
    }

    /// The titles of bookings, for pushes about their chat.
    pub async fn booking_titles(&self, ids: &[&str]) -> Result<HashMap<String, String>, DbError> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        db_run!(self, |conn| {
            let rows: Vec<(String, String)> = bookings::table
                .filter(bookings::id.eq_any(ids))
                .select((bookings::id, bookings::title))
                .load(conn)
                .await?;
            Ok(rows.into_iter().collect())
        })
    }

    /// Queues pushes; one already queued for the same endpoint and source
    /// stays. Answers how many were new. Takes its turn at SQLite's write
    /// gate: it runs beside chat appends.
    pub async fn queue_pushes(&self, rows: &[QueuedPushRow]) -> Result<usize, DbError> {
        if rows.is_empty() {
            return Ok(0);
        }
        db_write!(self, |conn| {
            conn.transaction::<_, DbError, _>(async |conn| {
                let mut queued = 0;
                for row in rows {
                    queued += diesel::insert_into(push_queue::table)
                        .values(row)
                        .on_conflict_do_nothing()
                        .execute(conn)
                        .await?;
                }
                Ok(queued)
            })
            .await
        })
    }

    /// Takes the lease of up to `limit` pushes that are due (their next
    /// attempt reached, no live lease), counting an attempt; returns each
    /// with its subscription. The UPDATE repeats the conditions, so a node
    /// that waited for a row another node just took skips it.
    pub async fn claim_pushes(
        &self,
        node: &str,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<ClaimedPush>, DbError> {
        let now = crate::time::now_ms();
        db_run!(self, |conn| {
            let claimable = push_queue::state
                .eq(PUSH_QUEUED)
                .and(push_queue::next_attempt_at.le(now))
                .and(
                    push_queue::claimed_until
                        .is_null()
                        .or(push_queue::claimed_until.lt(now)),
                );
            let due: Vec<String> = push_queue::table
                .filter(claimable)
                .order(push_queue::next_attempt_at.asc())
                .limit(limit)
                .select(push_queue::id)
                .load(conn)
                .await?;
            if due.is_empty() {
                return Ok(Vec::new());
            }
            let claimed: Vec<QueuedPushRow> = diesel::update(
                push_queue::table
                    .filter(push_queue::id.eq_any(&due))
                    .filter(claimable),
            )
            .set((
                push_queue::claimed_by.eq(node),
                push_queue::claimed_until.eq(lease_until),
                push_queue::attempts.eq(push_queue::attempts + 1),
                push_queue::updated_at.eq(now),
            ))
            .returning(QueuedPushRow::as_returning())
            .get_results(conn)
            .await?;
            let endpoints: Vec<&str> = claimed.iter().map(|p| p.endpoint.as_str()).collect();
            let subscriptions: HashMap<String, PushSubscriptionRow> = push_subscriptions::table
                .filter(push_subscriptions::endpoint.eq_any(&endpoints))
                .select(PushSubscriptionRow::as_select())
                .load(conn)
                .await?
                .into_iter()
                .map(|s| (s.endpoint.clone(), s))
                .collect();
            let orphans: Vec<&str> = claimed
                .iter()
                .filter(|p| !subscriptions.contains_key(&p.endpoint))
                .map(|p| p.id.as_str())
                .collect();
            if !orphans.is_empty() {
                diesel::delete(push_queue::table.filter(push_queue::id.eq_any(&orphans)))
                    .execute(conn)
                    .await?;
            }
            Ok(claimed
                .into_iter()
                .map(|push| {
                    let subscription = subscriptions.get(&push.endpoint).cloned();
                    (push, subscription)
                })
                .collect())
        })
    }

    /// The push service accepted it: the push is done (deleted) and its
    /// subscription known to work. Like the outcomes below, it applies only
    /// while `node` holds the lease, and answers whether it did.
    pub async fn push_sent(&self, node: &str, push: &QueuedPushRow) -> Result<bool, DbError> {
        let now = crate::time::now_ms();
        db_run!(self, |conn| {
            conn.transaction::<_, DbError, _>(async |conn| {
                let held = diesel::delete(
                    push_queue::table
                        .find(&push.id)
                        .filter(push_queue::claimed_by.eq(node)),
                )
                .execute(conn)
                .await?;
                diesel::update(push_subscriptions::table.find(&push.endpoint))
                    .set(push_subscriptions::last_success_at.eq(now))
                    .execute(conn)
                    .await?;
                Ok(held == 1)
            })
            .await
        })
    }

    /// The push is tried again at `next_attempt_at`.
    pub async fn push_retry(
        &self,
        node: &str,
        push_id: &str,
        next_attempt_at: i64,
        error: &str,
    ) -> Result<bool, DbError> {
        let now = crate::time::now_ms();
        db_run!(self, |conn| {
            let held = diesel::update(
                push_queue::table
                    .find(push_id)
                    .filter(push_queue::claimed_by.eq(node)),
            )
            .set((
                push_queue::next_attempt_at.eq(next_attempt_at),
                push_queue::claimed_by.eq(None::<String>),
                push_queue::claimed_until.eq(None::<i64>),
                push_queue::last_error.eq(error),
                push_queue::updated_at.eq(now),
            ))
            .execute(conn)
            .await?;
            Ok(held == 1)
        })
    }

    /// The push is given up.
    pub async fn push_failed(
        &self,
        node: &str,
        push_id: &str,
        error: &str,
    ) -> Result<bool, DbError> {
        let now = crate::time::now_ms();
        db_run!(self, |conn| {
            let held = diesel::update(
                push_queue::table
                    .find(push_id)
                    .filter(push_queue::claimed_by.eq(node)),
            )
            .set((
                push_queue::state.eq(PUSH_FAILED),
                push_queue::claimed_by.eq(None::<String>),
                push_queue::claimed_until.eq(None::<i64>),
                push_queue::last_error.eq(error),
                push_queue::updated_at.eq(now),
            ))
            .execute(conn)
            .await?;
            Ok(held == 1)
        })
    }

    /// When the sender has work next: the earliest moment a queued push
    /// may be claimed (its next attempt, or the end of a lease a dead node
    /// left).
    pub async fn next_push_due(&self) -> Result<Option<i64>, DbError> {
        db_run!(self, |conn| {
            let queued: Vec<(i64, Option<i64>)> = push_queue::table
                .filter(push_queue::state.eq(PUSH_QUEUED))
                .order(push_queue::next_attempt_at.asc())
                .limit(100)
                .select((push_queue::next_attempt_at, push_queue::claimed_until))
                .load(conn)
                .await?;
            Ok(queued
                .into_iter()
                .map(|(next, lease)| next.max(lease.unwrap_or(0)))
                .min())
        })
    }

    /// Forgets pushes given up before `before`.
    pub async fn prune_failed_pushes(&self, before: i64) -> Result<usize, DbError> {
        db_run!(self, |conn| {
            Ok(diesel::delete(
                push_queue::table
                    .filter(push_queue::state.eq(PUSH_FAILED))
                    .filter(push_queue::updated_at.lt(before)),
            )
            .execute(conn)
            .await?)
        })
    }
}
