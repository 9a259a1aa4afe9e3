//! Announcements: stored when the backend asks, then worked through by the
//! node holding the lease, one page of users per transaction. A page's
//! notifications, its emails and the advanced cursor commit together, and
//! only while the lease is still this node's, so a crash or a second node
//! neither skips a user nor notifies one twice.

use diesel::prelude::{Insertable, Queryable, Selectable};
use diesel_async::AsyncConnection;

use super::email::OutboxRow;
use super::models::NotificationRow;
use super::schema::{announcements, email_outbox, email_preferences, notifications, users};
use super::{Db, DbError};
use crate::domain::announcement::{AnnouncementKind, AnnouncementState};
use crate::domain::email::OutboxState;
use crate::{db_run, db_write};

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = announcements, treat_none_as_default_value = false)]
pub struct AnnouncementRow {
    pub id: String,
    pub kind: AnnouncementKind,
    pub title: String,
    pub body: String,
    pub link: Option<String>,
    /// `None`: every user.
    pub audience_role: Option<String>,
    pub request_hash: String,
    pub state: AnnouncementState,
    /// Matching users when it was created.
    pub users: i64,
    pub notified: i64,
    pub email_queued: i64,
    /// The last user id done (empty before the first).
    pub cursor: Option<String>,
    pub claimed_by: Option<String>,
    pub claimed_until: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What `create_announcement` found.
#[derive(Debug)]
pub enum Created {
    New(AnnouncementRow),
    /// The same request again: nothing new.
    Repeated(AnnouncementRow),
    /// Another request under this id.
    Conflict,
}

/// Where an announcement stands, with its emails' outcomes.
#[derive(Debug)]
pub struct Progress {
    pub row: AnnouncementRow,
    pub emailed: i64,
    pub failed: i64,
}

/// A user of a page: who they are and whether they are to be emailed.
#[derive(Debug, Clone)]
pub struct Addressee {
    pub user_id: String,
    pub name: Option<String>,
    /// `None`: not emailed (no address, or no marketing opt-in).
    pub email: Option<String>,
}

/// A user of a page as read: id, name, address, marketing opt-in.
type PageRow = (String, Option<String>, Option<String>, Option<bool>);

/// A page to store: its users' notifications and the emails of those to
/// email, the cursor it started from and the one it ends at.
pub struct Page {
    pub from: String,
    pub to: String,
    pub notifications: Vec<NotificationRow>,
    pub emails: Vec<OutboxRow>,
}

impl Db {
    /// Stores a new announcement with the number of users it will reach,
    /// or tells a repeated request (same hash) from a conflicting one.
    pub async fn create_announcement(&self, row: AnnouncementRow) -> Result<Created, DbError> {
        db_write!(self, |conn| {
            conn.transaction::<_, DbError, _>(async |conn| {
                // A write first (SQLite's write lock now, not at the insert
                // after the reads, which fails if another commit came
                // between); on PostgreSQL it matches nothing.
                diesel::update(announcements::table.find(&row.id))
                    .set(announcements::updated_at.eq(announcements::updated_at))
                    .execute(conn)
                    .await?;
                let stored: Option<AnnouncementRow> = announcements::table
                    .find(&row.id)
                    .select(AnnouncementRow::as_select())
                    .first(conn)
                    .await
                    .optional()?;
                if let Some(stored) = stored {
                    return Ok(if stored.request_hash == row.request_hash {
                        Created::Repeated(stored)
                    } else {
                        Created::Conflict
                    });
                }
                let mut query = users::table.filter(users::erased_at.is_null()).into_boxed();
                if let Some(role) = &row.audience_role {
                    query = query.filter(users::role.eq(role));
                }
                let users: i64 = query.count().get_result(conn).await?;
                let row = AnnouncementRow { users, ..row };
                let inserted = diesel::insert_into(announcements::table)
                    .values(&row)
                    .on_conflict_do_nothing()
                    .execute(conn)
                    .await?;
                if inserted == 0 {
                    // Another node's insert won the race: that one stands.
                    return Ok(Created::Conflict);
                }
                Ok(Created::New(row))
            })
            .await
        })
    }

    pub async fn announcement_progress(&self, id: &str) -> Result<Option<Progress>, DbError> {
        db_run!(self, |conn| {
            let Some(row) = announcements::table
                .find(id)
                .select(AnnouncementRow::as_select())
                .first(conn)
                .await
                .optional()?
            else {
                return Ok(None);
            };
            let states: Vec<(OutboxState, i64)> = email_outbox::table
                .filter(email_outbox::announcement_id.eq(id))
                .group_by(email_outbox::state)
                .select((email_outbox::state, diesel::dsl::count_star()))
                .load(conn)
                .await?;
            let count = |state| {
                states
                    .iter()
                    .find(|(s, _)| *s == state)
                    .map_or(0, |(_, n)| *n)
            };
            Ok(Some(Progress {
                emailed: count(OutboxState::Sent),
                failed: count(OutboxState::Failed),
                row,
            }))
        })
    }

    /// Takes the lease of a running announcement nobody holds (or whose
    /// holder let it run out), oldest first.
    pub async fn claim_announcement(
        &self,
        node: &str,
        lease_until: i64,
    ) -> Result<Option<AnnouncementRow>, DbError> {
        let now = crate::time::now_ms();
        db_write!(self, |conn| {
            let free = announcements::state.eq(AnnouncementState::Running).and(
                announcements::claimed_until
                    .is_null()
                    .or(announcements::claimed_until.lt(now))
                    .or(announcements::claimed_by.eq(node)),
            );
            let first: Option<String> = announcements::table
                .filter(free)
                .order(announcements::created_at.asc())
                .select(announcements::id)
                .first(conn)
                .await
                .optional()?;
            let Some(first) = first else {
                return Ok(None);
            };
            // The conditions again: a node that waited for the row's lock
            // re-checks them and takes nothing.
            let claimed: Vec<AnnouncementRow> =
                diesel::update(announcements::table.find(&first).filter(free))
                    .set((
                        announcements::claimed_by.eq(node),
                        announcements::claimed_until.eq(lease_until),
                    ))
                    .returning(AnnouncementRow::as_returning())
                    .get_results(conn)
                    .await?;
            Ok(claimed.into_iter().next())
        })
    }

    /// The next page of the announcement's users after `cursor`, with
    /// whether each is to be emailed: policy emails go to every address,
    /// marketing ones only to users who opted in.
    pub async fn announcement_page(
        &self,
        announcement: &AnnouncementRow,
        limit: i64,
    ) -> Result<Vec<Addressee>, DbError> {
        let after = announcement.cursor.clone().unwrap_or_default();
        let rows: Vec<PageRow> = db_run!(self, |conn| {
            let mut query = users::table
                .left_join(email_preferences::table.on(email_preferences::user_id.eq(users::id)))
                .filter(users::erased_at.is_null())
                .filter(users::id.gt(&after))
                .into_boxed();
            if let Some(role) = &announcement.audience_role {
                query = query.filter(users::role.eq(role));
            }
            query
                .order(users::id.asc())
                .limit(limit)
                .select((
                    users::id,
                    users::name,
                    users::email,
                    email_preferences::marketing.nullable(),
                ))
                .load(conn)
                .await?
        });
        Ok(rows
            .into_iter()
            .map(|(user_id, name, email, marketing)| {
                let wanted = match announcement.kind {
                    AnnouncementKind::Policy => true,
                    // No preferences row: the default, which is off.
                    AnnouncementKind::Marketing => marketing.unwrap_or(false),
                };
                Addressee {
                    user_id,
                    name,
                    email: email.filter(|e| wanted && !e.trim().is_empty()),
                }
            })
            .collect())
    }

    /// Stores a page while `node` holds the lease and the cursor is where
    /// the page began (else nothing and `false`): the notifications (a user
    /// who has this announcement's already is skipped, with their email),
    /// the emails, the counts, the cursor, and a renewed lease.
    pub async fn store_announcement_page(
        &self,
        announcement_id: &str,
        node: &str,
        lease_until: i64,
        page: &Page,
    ) -> Result<bool, DbError> {
        let now = crate::time::now_ms();
        db_write!(self, |conn| {
            conn.transaction::<_, DbError, _>(async |conn| {
                let held = diesel::update(
                    announcements::table
                        .find(announcement_id)
                        .filter(announcements::claimed_by.eq(node))
                        .filter(announcements::state.eq(AnnouncementState::Running))
                        .filter(announcements::cursor.eq(&page.from)),
                )
                .set((
                    announcements::cursor.eq(&page.to),
                    announcements::claimed_until.eq(lease_until),
                    announcements::updated_at.eq(now),
                ))
                .execute(conn)
                .await?;
                if held == 0 {
                    return Ok(false);
                }
                let mut notified = 0i64;
                let mut queued = 0i64;
                for row in &page.notifications {
                    let inserted = diesel::insert_into(notifications::table)
                        .values(row)
                        .on_conflict_do_nothing()
                        .execute(conn)
                        .await?;
                    if inserted == 0 {
                        continue;
                    }
                    notified += 1;
                    if let Some(email) = page.emails.iter().find(|e| e.user_id == row.user_id) {
                        diesel::insert_into(email_outbox::table)
                            .values(email)
                            .execute(conn)
                            .await?;
                        queued += 1;
                    }
                }
                diesel::update(announcements::table.find(announcement_id))
                    .set((
                        announcements::notified.eq(announcements::notified + notified),
                        announcements::email_queued.eq(announcements::email_queued + queued),
                    ))
                    .execute(conn)
                    .await?;
                Ok(true)
            })
            .await
        })
    }

    /// Every user is done: the announcement is, and its lease is let go.
    pub async fn finish_announcement(&self, id: &str, node: &str) -> Result<(), DbError> {
        let now = crate::time::now_ms();
        db_write!(self, |conn| {
            diesel::update(
                announcements::table
                    .find(id)
                    .filter(announcements::claimed_by.eq(node)),
            )
            .set((
                announcements::state.eq(AnnouncementState::Done),
                announcements::claimed_by.eq(None::<String>),
                announcements::claimed_until.eq(None::<i64>),
                announcements::updated_at.eq(now),
            ))
            .execute(conn)
            .await?;
            Ok(())
        })
    }
}
