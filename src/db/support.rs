//! Support conversations with the AI agent: their state for review and
//! takeover, the per-turn claim that makes each user message answered once,
//! the daily token budget, and the booking facts the agent may look up.

use diesel::upsert::excluded;

use super::schema::{
    booking_participants, bookings, support_conversations, support_token_usage, users,
};
use super::{Db, DbError};
use crate::db_run;
pub use crate::domain::support::ConversationStatus;

#[derive(Debug, Clone, diesel::Queryable, diesel::Selectable, diesel::Insertable)]
#[diesel(table_name = support_conversations, treat_none_as_default_value = false)]
pub struct SupportConversationRow {
    pub id: String,
    pub user_id: String,
    pub status: ConversationStatus,
    pub created_at: i64,
    pub updated_at: i64,
    pub escalated_at: Option<i64>,
    pub escalation_reason: Option<String>,
    pub taken_over_by: Option<String>,
    pub taken_over_at: Option<i64>,
    pub answered_seq: i64,
}

/// One of the asking user's bookings, as the agent may see it: no other
/// participant's identity, only what the user already knows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BookingFact {
    pub booking_id: String,
    pub title: String,
    pub status: String,
    pub starts_at: Option<String>,
    /// `client` or `provider`: the user's part in the booking.
    pub your_role: String,
}

/// How an escalation request changed the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escalation {
    /// It was `ai` and is `escalated` now: admins must be told.
    Escalated,
    /// Already escalated or taken over: nothing new to tell.
    AlreadyRequested,
    Missing,
}

/// The UTC day number of a unix-millisecond time (the budget's period).
pub fn usage_day(now_ms: i64) -> i64 {
    now_ms.div_euclid(86_400_000)
}

impl Db {
    pub async fn create_support_conversation(
        &self,
        id: &str,
        user_id: &str,
    ) -> Result<SupportConversationRow, DbError> {
        let now = crate::time::now_ms();
        let row = SupportConversationRow {
            id: id.to_owned(),
            user_id: user_id.to_owned(),
            status: ConversationStatus::Ai,
            created_at: now,
            updated_at: now,
            escalated_at: None,
            escalation_reason: None,
            taken_over_by: None,
            taken_over_at: None,
            answered_seq: 0,
        };
        db_run!(self, |conn| {
            diesel::insert_into(support_conversations::table)
                .values(&row)
                .execute(conn)
                .await?;
            Ok(row)
        })
    }

    pub async fn find_support_conversation(
        &self,
        id: &str,
    ) -> Result<Option<SupportConversationRow>, DbError> {
        db_run!(self, |conn| {
            Ok(support_conversations::table
                .find(id)
                .select(SupportConversationRow::as_select())
                .first(conn)
                .await
                .optional()?)
        })
    }

    /// Newest first, with the owner's mirrored name; `before` is a
    /// conversation id (ids are time-ordered) to page from.
    pub async fn list_support_conversations(
        &self,
        status: Option<ConversationStatus>,
        before: Option<&str>,
        limit: i64,
    ) -> Result<(Vec<(SupportConversationRow, Option<String>)>, bool), DbError> {
        let mut rows: Vec<(SupportConversationRow, Option<String>)> = db_run!(self, |conn| {
            let mut query = support_conversations::table
                .left_join(users::table.on(users::id.eq(support_conversations::user_id)))
                .into_boxed();
            if let Some(status) = status {
                query = query.filter(support_conversations::status.eq(status));
            }
            if let Some(before) = before {
                query = query.filter(support_conversations::id.lt(before));
            }
            query
                .order(support_conversations::id.desc())
                .limit(limit + 1)
                .select((SupportConversationRow::as_select(), users::name.nullable()))
                .load(conn)
                .await?
        });
        let has_more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        Ok((rows, has_more))
    }

    /// Claims the answer to the owner's message `seq`: true for exactly one
    /// caller, and only while the agent may answer (not taken over) and the
    /// message is newer than the last one answered.
    pub async fn claim_support_turn(
        &self,
        conversation_id: &str,
        sender_id: &str,
        seq: i64,
    ) -> Result<bool, DbError> {
        let now = crate::time::now_ms();
        db_run!(self, |conn| {
            let claimed = diesel::update(
                support_conversations::table
                    .filter(support_conversations::id.eq(conversation_id))
                    .filter(support_conversations::user_id.eq(sender_id))
                    .filter(support_conversations::status.ne(ConversationStatus::Human))
                    .filter(support_conversations::answered_seq.lt(seq)),
            )
            .set((
                support_conversations::answered_seq.eq(seq),
                support_conversations::updated_at.eq(now),
            ))
            .execute(conn)
            .await?;
            Ok(claimed == 1)
        })
    }

    /// `ai` → `escalated`, once.
    pub async fn escalate_support_conversation(
        &self,
        id: &str,
        reason: &str,
    ) -> Result<Escalation, DbError> {
        let now = crate::time::now_ms();
        db_run!(self, |conn| {
            let changed = diesel::update(
                support_conversations::table
                    .filter(support_conversations::id.eq(id))
                    .filter(support_conversations::status.eq(ConversationStatus::Ai)),
            )
            .set((
                support_conversations::status.eq(ConversationStatus::Escalated),
                support_conversations::escalated_at.eq(now),
                support_conversations::escalation_reason.eq(reason),
                support_conversations::updated_at.eq(now),
            ))
            .execute(conn)
            .await?;
            if changed == 1 {
                return Ok(Escalation::Escalated);
            }
            let exists: Option<String> = support_conversations::table
                .find(id)
                .select(support_conversations::id)
                .first(conn)
                .await
                .optional()?;
            Ok(if exists.is_some() {
                Escalation::AlreadyRequested
            } else {
                Escalation::Missing
            })
        })
    }

    /// Hands the conversation to `admin_id`. Returns the row and whether
    /// anything changed (a repeated takeover by the same admin changes nothing).
    pub async fn take_over_support_conversation(
        &self,
        id: &str,
        admin_id: &str,
    ) -> Result<Option<(SupportConversationRow, bool)>, DbError> {
        let now = crate::time::now_ms();
        db_run!(self, |conn| {
            let changed = diesel::update(
                support_conversations::table
                    .filter(support_conversations::id.eq(id))
                    .filter(
                        support_conversations::status
                            .ne(ConversationStatus::Human)
                            .or(support_conversations::taken_over_by.is_null())
                            .or(support_conversations::taken_over_by.ne(admin_id)),
                    ),
            )
            .set((
                support_conversations::status.eq(ConversationStatus::Human),
                support_conversations::taken_over_by.eq(admin_id),
                support_conversations::taken_over_at.eq(now),
                support_conversations::updated_at.eq(now),
            ))
            .execute(conn)
            .await?;
            let row = support_conversations::table
                .find(id)
                .select(SupportConversationRow::as_select())
                .first(conn)
                .await
                .optional()?;
            Ok(row.map(|row| (row, changed == 1)))
        })
    }

    /// Admins in the users mirror (not erased): who is told about escalations.
    pub async fn admin_user_ids(&self) -> Result<Vec<String>, DbError> {
        db_run!(self, |conn| {
            Ok(users::table
                .filter(users::role.eq("admin"))
                .filter(users::erased_at.is_null())
                .select(users::id)
                .load(conn)
                .await?)
        })
    }

    pub async fn support_tokens_used(&self, user_id: &str, day: i64) -> Result<i64, DbError> {
        db_run!(self, |conn| {
            let used: Option<i64> = support_token_usage::table
                .find((user_id, day))
                .select(support_token_usage::tokens)
                .first(conn)
                .await
                .optional()?;
            Ok(used.unwrap_or(0))
        })
    }

    pub async fn add_support_tokens(
        &self,
        user_id: &str,
        day: i64,
        tokens: i64,
    ) -> Result<(), DbError> {
        db_run!(self, |conn| {
            diesel::insert_into(support_token_usage::table)
                .values((
                    support_token_usage::user_id.eq(user_id),
                    support_token_usage::day.eq(day),
                    support_token_usage::tokens.eq(tokens),
                ))
                .on_conflict((support_token_usage::user_id, support_token_usage::day))
                .do_update()
                .set(
                    support_token_usage::tokens
                        .eq(support_token_usage::tokens + excluded(support_token_usage::tokens)),
                )
                .execute(conn)
                .await?;
            Ok(())
        })
    }

    /// The user's own bookings, most recently changed first.
    pub async fn booking_facts_of(
        &self,
        user_id: &str,
        limit: i64,
    ) -> Result<Vec<BookingFact>, DbError> {
        let rows: Vec<(String, String, String, Option<String>, String)> = db_run!(self, |conn| {
            booking_participants::table
                .inner_join(bookings::table)
                .filter(booking_participants::user_id.eq(user_id))
                .order(bookings::updated_at.desc())
                .limit(limit)
                .select((
                    bookings::id,
                    bookings::title,
                    bookings::status,
                    bookings::starts_at,
                    booking_participants::kind,
                ))
                .load(conn)
                .await?
        });
        Ok(rows
            .into_iter()
            .map(|(booking_id, title, status, starts_at, kind)| BookingFact {
                booking_id,
                title,
                status,
                starts_at,
                your_role: kind,
            })
            .collect())
    }
}
