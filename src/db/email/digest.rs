//! Deciding about one recipient: their pending items read as they are now
//! (under a per-recipient lock), and the decision stored in the same
//! transaction: the digest email queued, items emailed, dropped or put off.

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::intake::{is_status_notice, EmailItemRow};
use super::outbox::OutboxRow;
use super::preferences::PreferencesRow;
use crate::db::models::{BookingRow, MessageRow, NotificationRow, UserRow};
use crate::db::schema::{
    booking_participants, bookings, email_items, email_outbox, email_preferences, messages,
    notifications, read_cursors, support_conversations, users,
};
use crate::db::{Db, DbError};
use crate::db_run;
use crate::domain::chat::EntryKind;
use crate::domain::email::{Audience, ChatRoom, ItemState};

/// Everything needed to decide about one recipient's pending items, read
/// under the recipient's lock.
#[derive(Debug, Clone)]
pub struct RecipientSnapshot {
    pub user: Option<UserRow>,
    pub preferences: Option<PreferencesRow>,
    pub items: Vec<PendingItem>,
}

#[derive(Debug, Clone)]
pub struct PendingItem {
    pub row: EmailItemRow,
    pub source: ItemSource,
}

/// An item's messages or notification as they are now.
#[derive(Debug, Clone)]
pub enum ItemSource {
    Chat {
        /// The newest unread messages of the range (at most
        /// [`DIGEST_MESSAGES_PER_ROOM`]), oldest first: not the recipient's
        /// own, not status notices, none an earlier email showed.
        messages: Vec<MessageRow>,
        /// Unread messages of the range older than those shown.
        more: i64,
        /// When the oldest unread message of the range was sent.
        oldest_unread_at: Option<i64>,
        /// The booking's title (booking rooms only).
        booking_title: Option<String>,
        /// Whether the recipient read the whole range.
        read: bool,
        /// Whether the recipient still belongs to the room.
        member: bool,
    },
    Notification(NotificationRow),
    /// Deleted, or never found.
    Gone,
}

/// What to do with a recipient's pending items, decided by the caller.
#[derive(Debug, Clone, Default)]
pub struct DispatchPlan {
    /// The emails to store (a digest, and each transactional item alone),
    /// each with the items it carries.
    pub emails: Vec<(OutboxRow, Vec<String>)>,
    /// Item id and its final state.
    pub dropped: Vec<(String, ItemState)>,
    /// Item id and when to look at it again.
    pub rescheduled: Vec<(String, i64)>,
}

/// A digest shows at most this many messages of one room (the newest);
/// it counts the older ones.
pub const DIGEST_MESSAGES_PER_ROOM: usize = 20;

/// Messages of a range read to find those shown: a few more than shown,
/// for the ones left out (status notices, shown by an earlier email).
const DIGEST_MESSAGES_READ: i64 = 100;

/// Of a range's unread messages (`newest` first, `unread` of them in
/// all), those a digest shows, oldest first, and how many older ones it
/// only counts: at most [`DIGEST_MESSAGES_PER_ROOM`], leaving out status
/// notices and what the `(first, last)` ranges of earlier emails showed.
fn messages_to_show(
    newest: Vec<MessageRow>,
    shown_before: &[(Option<i64>, Option<i64>)],
    unread: i64,
) -> (Vec<MessageRow>, i64) {
    let mut looked_at = 0;
    let mut shown = Vec::new();
    for message in newest {
        if shown.len() == DIGEST_MESSAGES_PER_ROOM {
            break;
        }
        looked_at += 1;
        let emailed = shown_before.iter().any(|(first, last)| {
            let first = first.unwrap_or(i64::MAX);
            first <= message.seq && message.seq <= last.unwrap_or(first)
        });
        if !emailed && !is_status_notice(&message) {
            shown.push(message);
        }
    }
    shown.reverse();
    (shown, (unread - looked_at).max(0))
}

/// Serialises the deciding of one recipient's items across nodes.
pub(crate) trait LockRecipient {
    async fn lock_email_recipient(&mut self, user_id: &str) -> QueryResult<()>;
    /// The recipient's pending items, oldest first, locked until the
    /// transaction ends where the backend locks rows: a chat range the
    /// notifier would extend meanwhile is extended after this decision (or,
    /// if it was emailed, a new range begins), never silently covered.
    async fn pending_email_items(&mut self, user_id: &str) -> QueryResult<Vec<EmailItemRow>>;
}

/// Advisory lock namespace of the email recipients (two-key form, so it
/// cannot meet the migration lock's one-key id).
const RECIPIENT_LOCK_NAMESPACE: i32 = 0x6d61_696c;

impl LockRecipient for diesel_async::AsyncPgConnection {
    async fn lock_email_recipient(&mut self, user_id: &str) -> QueryResult<()> {
        diesel::sql_query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind::<diesel::sql_types::Integer, _>(RECIPIENT_LOCK_NAMESPACE)
            .bind::<diesel::sql_types::Text, _>(user_id)
            .execute(self)
            .await?;
        Ok(())
    }

    async fn pending_email_items(&mut self, user_id: &str) -> QueryResult<Vec<EmailItemRow>> {
        email_items::table
            .filter(email_items::user_id.eq(user_id))
            .filter(email_items::state.eq(ItemState::Pending))
            .order(email_items::created_at.asc())
            .select(EmailItemRow::as_select())
            .for_update()
            .load(self)
            .await
    }
}

impl LockRecipient for crate::db::SqliteConn {
    /// A write as the transaction's first statement takes SQLite's one write
    /// lock at once (waiting on the busy timeout), instead of failing later
    /// when a transaction that began by reading wants to write.
    async fn lock_email_recipient(&mut self, user_id: &str) -> QueryResult<()> {
        diesel::update(
            email_items::table
                .filter(email_items::user_id.eq(user_id))
                .filter(email_items::state.eq(ItemState::Pending)),
        )
        .set(email_items::updated_at.eq(email_items::updated_at))
        .execute(self)
        .await?;
        Ok(())
    }

    /// SQLite's write lock, taken above, already keeps every writer out.
    async fn pending_email_items(&mut self, user_id: &str) -> QueryResult<Vec<EmailItemRow>> {
        email_items::table
            .filter(email_items::user_id.eq(user_id))
            .filter(email_items::state.eq(ItemState::Pending))
            .order(email_items::created_at.asc())
            .select(EmailItemRow::as_select())
            .load(self)
            .await
    }
}

impl Db {
    /// Recipients with a pending item due by `now`.
    pub async fn due_email_recipients(&self, now: i64, limit: i64) -> Result<Vec<String>, DbError> {
        db_run!(self, |conn| {
            Ok(email_items::table
                .filter(email_items::state.eq(ItemState::Pending))
                .filter(email_items::due_at.le(now))
                .select(email_items::user_id)
                .distinct()
                .limit(limit)
                .load(conn)
                .await?)
        })
    }

    /// When the earliest pending item is due.
    pub async fn next_email_item_due(&self) -> Result<Option<i64>, DbError> {
        db_run!(self, |conn| {
            Ok(email_items::table
                .filter(email_items::state.eq(ItemState::Pending))
                .select(diesel::dsl::min(email_items::due_at))
                .first(conn)
                .await?)
        })
    }

    /// Decides about one recipient's pending items under the recipient's
    /// lock: `decide` sees them as they are now and says what becomes of
    /// them; the plan is stored in the same transaction and returned.
    pub async fn dispatch_email_items<F>(
        &self,
        user_id: &str,
        decide: F,
    ) -> Result<DispatchPlan, DbError>
    where
        F: FnOnce(RecipientSnapshot) -> DispatchPlan + Send,
    {
        let now = crate::time::now_ms();
        db_run!(self, |conn| {
            conn.transaction::<_, DbError, _>(async |conn| {
                conn.lock_email_recipient(user_id).await?;
                let rows = conn.pending_email_items(user_id).await?;
                if rows.is_empty() {
                    return Ok(DispatchPlan::default());
                }
                let notification_ids: Vec<&str> = rows
                    .iter()
                    .filter_map(|r| r.notification_id.as_deref())
                    .collect();
                let rooms: Vec<&str> = rows
                    .iter()
                    .filter_map(|r| r.chat_range().map(|(room, _, _)| room))
                    .collect();
                let (booking_ids, conversation_ids) =
                    ChatRoom::ids(rooms.iter().filter_map(|room| ChatRoom::parse(room)));
                let cursors: Vec<(String, i64)> = if rooms.is_empty() {
                    Vec::new()
                } else {
                    read_cursors::table
                        .filter(read_cursors::user_id.eq(user_id))
                        .filter(read_cursors::room.eq_any(&rooms))
                        .select((read_cursors::room, read_cursors::seq))
                        .load(conn)
                        .await?
                };
                // Loaded here; who of them is owed an email is the domain's
                // rule (`Audience`).
                let (participants, booking_rows): (Vec<(String, String)>, Vec<BookingRow>) =
                    if booking_ids.is_empty() {
                        (Vec::new(), Vec::new())
                    } else {
                        (
                            booking_participants::table
                                .filter(booking_participants::booking_id.eq_any(&booking_ids))
                                .select((
                                    booking_participants::booking_id,
                                    booking_participants::user_id,
                                ))
                                .load(conn)
                                .await?,
                            bookings::table
                                .filter(bookings::id.eq_any(&booking_ids))
                                .select(BookingRow::as_select())
                                .load(conn)
                                .await?,
                        )
                    };
                let owners: Vec<(String, String)> = if conversation_ids.is_empty() {
                    Vec::new()
                } else {
                    support_conversations::table
                        .filter(support_conversations::id.eq_any(&conversation_ids))
                        .select((support_conversations::id, support_conversations::user_id))
                        .load(conn)
                        .await?
                };
                let audience = Audience::new(participants, owners);
                let found_notifications: Vec<NotificationRow> = if notification_ids.is_empty() {
                    Vec::new()
                } else {
                    notifications::table
                        .filter(notifications::id.eq_any(&notification_ids))
                        .filter(notifications::user_id.eq(user_id))
                        .select(NotificationRow::as_select())
                        .load(conn)
                        .await?
                };
                let user: Option<UserRow> = users::table
                    .find(user_id)
                    .select(UserRow::as_select())
                    .first(conn)
                    .await
                    .optional()?;
                let preferences: Option<PreferencesRow> = email_preferences::table
                    .find(user_id)
                    .select(PreferencesRow::as_select())
                    .first(conn)
                    .await
                    .optional()?;

                let mut items = Vec::with_capacity(rows.len());
                for row in rows {
                    let source = if let Some((room, first, last)) = row.chat_range() {
                        let read_up_to = cursors
                            .iter()
                            .find(|(r, _)| r == room)
                            .map_or(0, |(_, seq)| *seq);
                        let chat_room = ChatRoom::parse(room);
                        let member = chat_room.is_some_and(|r| audience.owes(r, user_id));
                        let booking_title = match chat_room {
                            Some(ChatRoom::Booking(id)) => booking_rows
                                .iter()
                                .find(|b| b.id == id)
                                .map(|b| b.title.clone()),
                            _ => None,
                        };
                        let (shown, more, oldest_unread_at) = if member && read_up_to < last {
                            let from = first.max(read_up_to + 1);
                            // What earlier emails showed is not shown again
                            // (ranges can meet when nodes store a room's
                            // messages out of order).
                            let shown_before: Vec<(Option<i64>, Option<i64>)> = email_items::table
                                .filter(email_items::user_id.eq(user_id))
                                .filter(email_items::room.eq(room))
                                .filter(email_items::state.eq(ItemState::Emailed))
                                .filter(email_items::seq.le(last))
                                .filter(
                                    diesel::dsl::sql::<diesel::sql_types::Bool>(
                                        "COALESCE(up_to_seq, seq) >= ",
                                    )
                                    .bind::<diesel::sql_types::BigInt, _>(from),
                                )
                                .select((email_items::seq, email_items::up_to_seq))
                                .load(conn)
                                .await?;
                            // Messages as they stand: changes and deleted
                            // messages are not emailed.
                            let unread = messages::table
                                .filter(messages::room.eq(room))
                                .filter(messages::seq.ge(from))
                                .filter(messages::seq.le(last))
                                .filter(messages::kind.eq(EntryKind::Message))
                                .filter(messages::deleted_at.is_null())
                                .filter(
                                    messages::sender_id
                                        .is_null()
                                        .or(messages::sender_id.ne(user_id)),
                                );
                            let (count, oldest_at): (i64, Option<i64>) = unread
                                .select((
                                    diesel::dsl::count_star(),
                                    diesel::dsl::min(messages::sent_at),
                                ))
                                .first(conn)
                                .await?;
                            let newest: Vec<MessageRow> = unread
                                .order(messages::seq.desc())
                                .limit(DIGEST_MESSAGES_READ)
                                .select(MessageRow::as_select())
                                .load(conn)
                                .await?;
                            let (shown, more) = messages_to_show(newest, &shown_before, count);
                            (shown, more, oldest_at)
                        } else {
                            (Vec::new(), 0, None)
                        };
                        ItemSource::Chat {
                            messages: shown,
                            more,
                            oldest_unread_at,
                            booking_title,
                            read: read_up_to >= last,
                            member,
                        }
                    } else if let Some(id) = &row.notification_id {
                        found_notifications
                            .iter()
                            .find(|n| &n.id == id)
                            .cloned()
                            .map_or(ItemSource::Gone, ItemSource::Notification)
                    } else {
                        ItemSource::Gone
                    };
                    items.push(PendingItem { row, source });
                }

                let plan = decide(RecipientSnapshot {
                    user,
                    preferences,
                    items,
                });

                for (email, emailed) in &plan.emails {
                    diesel::insert_into(email_outbox::table)
                        .values(email)
                        .execute(conn)
                        .await?;
                    diesel::update(email_items::table.filter(email_items::id.eq_any(emailed)))
                        .set((
                            email_items::state.eq(ItemState::Emailed),
                            email_items::outbox_id.eq(&email.id),
                            email_items::updated_at.eq(now),
                        ))
                        .execute(conn)
                        .await?;
                }
                for (id, state) in &plan.dropped {
                    diesel::update(email_items::table.find(id))
                        .set((
                            email_items::state.eq(*state),
                            email_items::updated_at.eq(now),
                        ))
                        .execute(conn)
                        .await?;
                }
                for (id, due_at) in &plan.rescheduled {
                    diesel::update(email_items::table.find(id))
                        .set((
                            email_items::due_at.eq(*due_at),
                            email_items::updated_at.eq(now),
                        ))
                        .execute(conn)
                        .await?;
                }
                Ok(plan)
            })
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: i64, client_id: &str) -> MessageRow {
        MessageRow {
            id: format!("m{seq}"),
            room: "booking:b1".into(),
            seq,
            sender_id: Some("ava".into()),
            sender_name: "Ava".into(),
            sender_role: if client_id.starts_with("status:") {
                "system".into()
            } else {
                "client".into()
            },
            client_id: Some(client_id.into()),
            body: format!("take {seq}"),
            sent_at: seq * 10,
            kind: crate::domain::chat::EntryKind::Message,
            target_seq: None,
            attachments: None,
            edited_at: None,
            deleted_at: None,
            reactions: 0,
        }
    }

    fn seqs(messages: &[MessageRow]) -> Vec<i64> {
        messages.iter().map(|m| m.seq).collect()
    }

    #[test]
    fn a_digest_shows_the_newest_unread_not_shown_before_oldest_first() {
        let newest: Vec<MessageRow> = (1..=6)
            .rev()
            .map(|seq| match seq {
                4 => message(seq, "status:confirmed"),
                _ => message(seq, &format!("c{seq}")),
            })
            .collect();
        // An earlier email showed 2 and 3; one stored per message showed 6.
        let before = [(Some(2), Some(3)), (Some(6), None)];
        let (shown, more) = messages_to_show(newest, &before, 6);
        assert_eq!(seqs(&shown), [1, 5]);
        assert_eq!(more, 0);
    }

    #[test]
    fn a_long_range_shows_its_newest_and_counts_the_rest() {
        let count = DIGEST_MESSAGES_PER_ROOM as i64 + 30;
        let newest: Vec<MessageRow> = (1..=count)
            .rev()
            .map(|seq| message(seq, &format!("c{seq}")))
            .collect();
        let (shown, more) = messages_to_show(newest, &[], count);
        assert_eq!(shown.len(), DIGEST_MESSAGES_PER_ROOM);
        assert_eq!(seqs(&shown), (31..=count).collect::<Vec<_>>());
        assert_eq!(more, 30);
    }
}
