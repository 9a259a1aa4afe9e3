//! The data rights of the privacy policy: export everything stored about a
//! user, and erase their personal data while keeping booking records for
//! the legal retention period.

use serde::Serialize;

use super::models::{
    BookingRow, MessageRow, NotificationRow, ReactionRow, ReadCursorRow, StatusChangeRow, UserRow,
};
use super::schema::{
    booking_participants, booking_status_history, bookings, email_items, email_outbox,
    email_preferences, message_reactions, messages, notifications, push_preferences, push_queue,
    push_subscriptions, read_cursors, support_conversations, support_token_usage, users,
};
use super::{Db, DbError};
use crate::db_run;
use crate::domain::chat::EntryKind;
use crate::domain::email::{ItemState, OutboxState};

/// What erasure leaves in place of a message body and a sender's name.
pub const ERASED_BODY: &str = "[deleted]";
pub const ERASED_NAME: &str = "Deleted user";

#[derive(Debug, Serialize)]
pub struct ExportedMessage {
    pub room: String,
    pub seq: i64,
    pub id: String,
    pub body: String,
    pub sent_at: i64,
    pub reply_to: Option<i64>,
    pub attachments: Vec<crate::domain::chat::Attachment>,
    pub edited_at: Option<i64>,
    pub deleted_at: Option<i64>,
}

/// An edit, deletion or reaction the user made (an edit's text is the
/// message's current one, in `messages`).
#[derive(Debug, Serialize)]
pub struct ExportedChange {
    pub room: String,
    pub seq: i64,
    pub kind: EntryKind,
    pub message_seq: Option<i64>,
    /// A reaction's emoji.
    pub emoji: Option<String>,
    pub at: i64,
}

#[derive(Debug, Serialize)]
pub struct ExportedBooking {
    pub booking: BookingRowView,
    pub participation: String,
    pub status_history: Vec<StatusChangeView>,
}

#[derive(Debug, Serialize)]
pub struct BookingRowView {
    pub id: String,
    pub status: String,
    pub title: String,
    pub starts_at: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct StatusChangeView {
    pub status: String,
    pub previous_status: Option<String>,
    pub reason: Option<String>,
    pub at: i64,
}

/// The rows about one user, from the tables this module knows.
#[derive(Debug)]
pub struct UserData {
    pub profile: Option<UserRow>,
    pub bookings: Vec<ExportedBooking>,
    pub messages: Vec<ExportedMessage>,
    pub message_changes: Vec<ExportedChange>,
    /// The user's reactions that are on.
    pub reactions: Vec<ReactionRow>,
    pub read_cursors: Vec<ReadCursorRow>,
    pub notifications: Vec<NotificationRow>,
    pub support: Vec<ExportedConversation>,
    pub email_preferences: Option<super::email::PreferencesRow>,
    pub emails: Vec<ExportedEmail>,
    pub email_items: Vec<ExportedEmailItem>,
    /// Model tokens the support agent spent answering the user, per day.
    pub token_usage: Vec<ExportedTokenUsage>,
    /// Conversations of others the user took over as an admin.
    pub takeovers: Vec<ExportedTakeover>,
}

/// Something waiting to be (or that was) considered for an email.
#[derive(Debug, Serialize)]
pub struct ExportedEmailItem {
    pub kind: String,
    pub source: String,
    pub room: Option<String>,
    pub seq: Option<i64>,
    pub up_to_seq: Option<i64>,
    pub state: String,
    pub created_at: i64,
    pub due_at: i64,
}

#[derive(Debug, Serialize)]
pub struct ExportedTokenUsage {
    /// Days since 1970-01-01 (UTC).
    pub day: i64,
    pub tokens: i64,
}

#[derive(Debug, Serialize)]
pub struct ExportedTakeover {
    pub conversation_id: String,
    pub taken_over_at: Option<i64>,
}

/// An email composed for the user (sent, failed or still queued).
#[derive(Debug, Serialize)]
pub struct ExportedEmail {
    pub to_address: String,
    pub subject: String,
    pub text: String,
    pub state: String,
    pub created_at: i64,
    pub sent_at: Option<i64>,
}

/// A support conversation the user opened, with every turn (theirs, the
/// agent's, admins').
#[derive(Debug, Serialize)]
pub struct ExportedConversation {
    pub id: String,
    pub status: String,
    pub created_at: i64,
    pub escalated_at: Option<i64>,
    pub escalation_reason: Option<String>,
    pub taken_over_at: Option<i64>,
    pub turns: Vec<ExportedTurn>,
}

#[derive(Debug, Serialize)]
pub struct ExportedTurn {
    pub seq: i64,
    pub sender_role: String,
    pub body: String,
    pub sent_at: i64,
}

/// What an erasure changed.
#[derive(Debug, Serialize)]
pub struct Erasure {
    pub messages_blanked: usize,
    pub notifications_deleted: usize,
    pub read_cursors_deleted: usize,
    pub support_turns_blanked: usize,
    pub emails_cancelled: usize,
    pub push_subscriptions_deleted: usize,
    /// Booking rooms whose members lists named the user.
    #[serde(skip)]
    pub booking_rooms: Vec<String>,
}

impl Db {
    pub async fn user_data(&self, user_id: &str) -> Result<UserData, DbError> {
        db_run!(self, |conn| {
            let profile = users::table
                .find(user_id)
                .select(UserRow::as_select())
                .first(conn)
                .await
                .optional()?;
            let participation: Vec<(BookingRow, String)> = bookings::table
                .inner_join(booking_participants::table)
                .filter(booking_participants::user_id.eq(user_id))
                .select((BookingRow::as_select(), booking_participants::kind))
                .load(conn)
                .await?;
            let mut exported_bookings = Vec::with_capacity(participation.len());
            for (booking, kind) in participation {
                let history: Vec<StatusChangeRow> = booking_status_history::table
                    .filter(booking_status_history::booking_id.eq(&booking.id))
                    .order(booking_status_history::at.asc())
                    .select(StatusChangeRow::as_select())
                    .load(conn)
                    .await?;
                exported_bookings.push(ExportedBooking {
                    booking: BookingRowView {
                        id: booking.id,
                        status: booking.status.to_string(),
                        title: booking.title,
                        starts_at: booking.starts_at,
                    },
                    participation: kind,
                    status_history: history
                        .into_iter()
                        .map(|change| StatusChangeView {
                            status: change.status.to_string(),
                            previous_status: change.previous_status.map(|s| s.to_string()),
                            reason: change.reason,
                            at: change.at,
                        })
                        .collect(),
                });
            }
            let sent: Vec<MessageRow> = messages::table
                .filter(messages::sender_id.eq(user_id))
                .order((messages::room.asc(), messages::seq.asc()))
                .select(MessageRow::as_select())
                .load(conn)
                .await?;
            let reactions: Vec<ReactionRow> = message_reactions::table
                .filter(message_reactions::user_id.eq(user_id))
                .order((message_reactions::room.asc(), message_reactions::seq.asc()))
                .select(ReactionRow::as_select())
                .load(conn)
                .await?;
            let read_cursors = read_cursors::table
                .filter(read_cursors::user_id.eq(user_id))
                .select(ReadCursorRow::as_select())
                .load(conn)
                .await?;
            let notifications = notifications::table
                .filter(notifications::user_id.eq(user_id))
                .order(notifications::id.asc())
                .select(NotificationRow::as_select())
                .load(conn)
                .await?;
            type ConversationFields = (
                String,
                String,
                i64,
                Option<i64>,
                Option<String>,
                Option<i64>,
            );
            let conversations: Vec<ConversationFields> = support_conversations::table
                .filter(support_conversations::user_id.eq(user_id))
                .order(support_conversations::created_at.asc())
                .select((
                    support_conversations::id,
                    support_conversations::status,
                    support_conversations::created_at,
                    support_conversations::escalated_at,
                    support_conversations::escalation_reason,
                    support_conversations::taken_over_at,
                ))
                .load(conn)
                .await?;
            let mut support = Vec::with_capacity(conversations.len());
            for (id, status, created_at, escalated_at, escalation_reason, taken_over_at) in
                conversations
            {
                let turns: Vec<(i64, String, String, i64)> = messages::table
                    .filter(messages::room.eq(format!("support:{id}")))
                    .filter(messages::kind.eq(EntryKind::Message))
                    .order(messages::seq.asc())
                    .select((
                        messages::seq,
                        messages::sender_role,
                        messages::body,
                        messages::sent_at,
                    ))
                    .load(conn)
                    .await?;
                support.push(ExportedConversation {
                    id,
                    status,
                    created_at,
                    escalated_at,
                    escalation_reason,
                    taken_over_at,
                    turns: turns
                        .into_iter()
                        .map(|(seq, sender_role, body, sent_at)| ExportedTurn {
                            seq,
                            sender_role,
                            body,
                            sent_at,
                        })
                        .collect(),
                });
            }
            let email_preferences = email_preferences::table
                .find(user_id)
                .select(super::email::PreferencesRow::as_select())
                .first(conn)
                .await
                .optional()?;
            let emails: Vec<(String, String, String, String, i64, Option<i64>)> =
                email_outbox::table
                    .filter(email_outbox::user_id.eq(user_id))
                    .order(email_outbox::created_at.asc())
                    .select((
                        email_outbox::to_address,
                        email_outbox::subject,
                        email_outbox::text,
                        email_outbox::state,
                        email_outbox::created_at,
                        email_outbox::sent_at,
                    ))
                    .load(conn)
                    .await?;
            type ItemFields = (
                String,
                String,
                Option<String>,
                Option<i64>,
                Option<i64>,
                String,
                i64,
                i64,
            );
            let items: Vec<ItemFields> = email_items::table
                .filter(email_items::user_id.eq(user_id))
                .order(email_items::created_at.asc())
                .select((
                    email_items::kind,
                    email_items::source,
                    email_items::room,
                    email_items::seq,
                    email_items::up_to_seq,
                    email_items::state,
                    email_items::created_at,
                    email_items::due_at,
                ))
                .load(conn)
                .await?;
            let token_usage: Vec<(i64, i64)> = support_token_usage::table
                .filter(support_token_usage::user_id.eq(user_id))
                .order(support_token_usage::day.asc())
                .select((support_token_usage::day, support_token_usage::tokens))
                .load(conn)
                .await?;
            let takeovers: Vec<(String, Option<i64>)> = support_conversations::table
                .filter(support_conversations::taken_over_by.eq(user_id))
                .order(support_conversations::created_at.asc())
                .select((
                    support_conversations::id,
                    support_conversations::taken_over_at,
                ))
                .load(conn)
                .await?;
            Ok(UserData {
                email_items: items
                    .into_iter()
                    .map(
                        |(kind, source, room, seq, up_to_seq, state, created_at, due_at)| {
                            ExportedEmailItem {
                                kind,
                                source,
                                room,
                                seq,
                                up_to_seq,
                                state,
                                created_at,
                                due_at,
                            }
                        },
                    )
                    .collect(),
                token_usage: token_usage
                    .into_iter()
                    .map(|(day, tokens)| ExportedTokenUsage { day, tokens })
                    .collect(),
                takeovers: takeovers
                    .into_iter()
                    .map(|(conversation_id, taken_over_at)| ExportedTakeover {
                        conversation_id,
                        taken_over_at,
                    })
                    .collect(),
                email_preferences,
                emails: emails
                    .into_iter()
                    .map(
                        |(to_address, subject, text, state, created_at, sent_at)| ExportedEmail {
                            to_address,
                            subject,
                            text,
                            state,
                            created_at,
                            sent_at,
                        },
                    )
                    .collect(),
                support,
                profile,
                bookings: exported_bookings,
                message_changes: sent
                    .iter()
                    .filter(|m| !m.is_message())
                    .map(|m| ExportedChange {
                        room: m.room.clone(),
                        seq: m.seq,
                        kind: m.kind,
                        message_seq: m.target_seq,
                        emoji: matches!(m.kind, EntryKind::React | EntryKind::Unreact)
                            .then(|| m.body.clone()),
                        at: m.sent_at,
                    })
                    .collect(),
                messages: sent
                    .into_iter()
                    .filter(MessageRow::is_message)
                    .map(|m| ExportedMessage {
                        attachments: m.attachment_list(),
                        room: m.room,
                        seq: m.seq,
                        id: m.id,
                        body: m.body,
                        sent_at: m.sent_at,
                        reply_to: m.target_seq,
                        edited_at: m.edited_at,
                        deleted_at: m.deleted_at,
                    })
                    .collect(),
                reactions,
                read_cursors,
                notifications,
            })
        })
    }

    /// Blanks the user's messages, removes name and email and deletes
    /// their inbox and cursors, in one transaction. Booking records and
    /// their status history stay (7-year retention).
    pub async fn erase_user(&self, user_id: &str) -> Result<Erasure, DbError> {
        let now = crate::time::now_ms();
        db_run!(self, |conn| {
            use diesel_async::AsyncConnection;
            conn.transaction::<_, DbError, _>(async |conn| {
                // Their messages (edited text included) and the attachment
                // references they shared; their changes keep no text, and
                // a reaction's emoji goes with the reaction.
                let messages_blanked = diesel::update(
                    messages::table
                        .filter(messages::sender_id.eq(user_id))
                        .filter(messages::kind.eq(EntryKind::Message)),
                )
                .set((
                    messages::body.eq(ERASED_BODY),
                    messages::attachments.eq(None::<String>),
                    messages::sender_name.eq(ERASED_NAME),
                ))
                .execute(conn)
                .await?;
                diesel::update(
                    messages::table
                        .filter(messages::sender_id.eq(user_id))
                        .filter(messages::kind.ne(EntryKind::Message)),
                )
                .set((messages::body.eq(""), messages::sender_name.eq(ERASED_NAME)))
                .execute(conn)
                .await?;
                let reacted: Vec<(String, i64)> = message_reactions::table
                    .filter(message_reactions::user_id.eq(user_id))
                    .select((message_reactions::room, message_reactions::seq))
                    .load(conn)
                    .await?;
                diesel::delete(
                    message_reactions::table.filter(message_reactions::user_id.eq(user_id)),
                )
                .execute(conn)
                .await?;
                for (room, seq) in reacted {
                    let left: i64 = message_reactions::table
                        .filter(message_reactions::room.eq(&room))
                        .filter(message_reactions::seq.eq(seq))
                        .count()
                        .get_result(conn)
                        .await?;
                    diesel::update(
                        messages::table
                            .filter(messages::room.eq(&room))
                            .filter(messages::seq.eq(seq)),
                    )
                    .set(messages::reactions.eq(left))
                    .execute(conn)
                    .await?;
                }
                let notifications_deleted =
                    diesel::delete(notifications::table.filter(notifications::user_id.eq(user_id)))
                        .execute(conn)
                        .await?;
                let read_cursors_deleted =
                    diesel::delete(read_cursors::table.filter(read_cursors::user_id.eq(user_id)))
                        .execute(conn)
                        .await?;
                let erased = diesel::update(users::table.find(user_id))
                    .set((
                        users::email.eq(None::<String>),
                        users::name.eq(None::<String>),
                        users::erased_at.eq(Some(now)),
                        users::updated_at.eq(now),
                    ))
                    .execute(conn)
                    .await?;
                if erased == 0 {
                    // Never mirrored: remember the erasure so token claims
                    // do not bring the name back.
                    diesel::insert_into(users::table)
                        .values(&UserRow {
                            id: user_id.to_owned(),
                            email: None,
                            name: None,
                            role: "client".to_owned(),
                            updated_at: now,
                            erased_at: Some(now),
                        })
                        .execute(conn)
                        .await?;
                }
                // The agent's replies in the user's own support rooms can
                // quote their booking facts: they go too.
                let rooms: Vec<String> = support_conversations::table
                    .filter(support_conversations::user_id.eq(user_id))
                    .select(support_conversations::id)
                    .load::<String>(conn)
                    .await?
                    .into_iter()
                    .map(|id| format!("support:{id}"))
                    .collect();
                let support_turns_blanked = diesel::update(
                    messages::table
                        .filter(messages::room.eq_any(&rooms))
                        .filter(messages::kind.eq(EntryKind::Message)),
                )
                .set((
                    messages::body.eq(ERASED_BODY),
                    messages::attachments.eq(None::<String>),
                ))
                .execute(conn)
                .await?;
                diesel::delete(
                    support_token_usage::table.filter(support_token_usage::user_id.eq(user_id)),
                )
                .execute(conn)
                .await?;
                let booking_rooms = booking_participants::table
                    .filter(booking_participants::user_id.eq(user_id))
                    .select(booking_participants::booking_id)
                    .load::<String>(conn)
                    .await?
                    .iter()
                    .map(|id| super::bookings::booking_room(id))
                    .collect();
                // Nothing more is emailed: pending items end, queued emails
                // not yet in a request are cancelled, and the content of
                // the others is blanked (one already handed to a batch may
                // still go out under its idempotency key).
                diesel::update(
                    email_items::table
                        .filter(email_items::user_id.eq(user_id))
                        .filter(email_items::state.eq(ItemState::Pending)),
                )
                .set((
                    email_items::state.eq(ItemState::NoAddress),
                    email_items::updated_at.eq(now),
                ))
                .execute(conn)
                .await?;
                let emails_cancelled = diesel::update(
                    email_outbox::table
                        .filter(email_outbox::user_id.eq(user_id))
                        .filter(email_outbox::state.eq(OutboxState::Queued))
                        .filter(email_outbox::batch_id.is_null()),
                )
                .set((
                    email_outbox::state.eq(OutboxState::Failed),
                    email_outbox::last_error.eq("recipient erased"),
                ))
                .execute(conn)
                .await?;
                diesel::update(
                    email_outbox::table
                        .filter(email_outbox::user_id.eq(user_id))
                        .filter(email_outbox::state.ne(OutboxState::Queued)),
                )
                .set((
                    email_outbox::to_address.eq(""),
                    email_outbox::subject.eq(ERASED_BODY),
                    email_outbox::html.eq(ERASED_BODY),
                    email_outbox::text.eq(ERASED_BODY),
                ))
                .execute(conn)
                .await?;
                diesel::delete(email_preferences::table.find(user_id))
                    .execute(conn)
                    .await?;
                // Their browsers get nothing more: subscriptions, queued
                // pushes and push switches go.
                diesel::delete(push_queue::table.filter(push_queue::user_id.eq(user_id)))
                    .execute(conn)
                    .await?;
                let push_subscriptions_deleted = diesel::delete(
                    push_subscriptions::table.filter(push_subscriptions::user_id.eq(user_id)),
                )
                .execute(conn)
                .await?;
                diesel::delete(
                    push_preferences::table.filter(push_preferences::user_id.eq(user_id)),
                )
                .execute(conn)
                .await?;
                Ok(Erasure {
                    emails_cancelled,
                    push_subscriptions_deleted,
                    booking_rooms,
                    support_turns_blanked,
                    messages_blanked,
                    notifications_deleted,
                    read_cursors_deleted,
                })
            })
            .await
        })
    }
}

impl Db {
    /// Deletes support conversations untouched since `before`, with their
    /// messages (the retention period of the AI support log).
    pub async fn prune_support_logs(&self, before: i64) -> Result<usize, DbError> {
        use super::schema::rooms;
        db_run!(self, |conn| {
            use diesel_async::AsyncConnection;
            conn.transaction::<_, DbError, _>(async |conn| {
                let old: Vec<String> = support_conversations::table
                    .filter(support_conversations::updated_at.lt(before))
                    .select(support_conversations::id)
                    .limit(1000)
                    .load(conn)
                    .await?;
                let room_names: Vec<String> =
                    old.iter().map(|id| format!("support:{id}")).collect();
                diesel::delete(messages::table.filter(messages::room.eq_any(&room_names)))
                    .execute(conn)
                    .await?;
                diesel::delete(rooms::table.filter(rooms::id.eq_any(&room_names)))
                    .execute(conn)
                    .await?;
                Ok(diesel::delete(
                    support_conversations::table.filter(support_conversations::id.eq_any(&old)),
                )
                .execute(conn)
                .await?)
            })
            .await
        })
    }
}
