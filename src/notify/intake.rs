//! Intake: what is owed when messages and notifications are committed.
//! One item per unread notification; for chat one *range* per recipient
//! and room, gathered over a short while so a busy room costs one write
//! per recipient, not one per message; and after a start, a catch-up on
//! what the previous process committed but stored no item for.

use std::collections::{HashMap, HashSet};

use super::policy::Delays;
use super::NotifyError;
use crate::db::email::{is_status_notice, EmailItemRow};
use crate::db::models::{MessageRow, NotificationRow};
use crate::db::Db;
use crate::domain::email::{ChatRoom, EmailKind, ItemState};

/// The catch-up after a start looks this far before the newest stored item
/// (the last moments before a crash) ...
const CATCH_UP_MARGIN_MS: i64 = 10 * 60 * 1000;
/// ... but never further back than this.
const CATCH_UP_MAX_AGE_MS: i64 = 24 * 60 * 60 * 1000;
const CATCH_UP_PAGE: i64 = 500;

/// Messages people write (and notices posted into rooms), in the rooms
/// emails are about. Booking status notices are left out: each status
/// change is also a `booking` notification, which is emailed.
/// Changes to earlier messages are not emailed: the email reads each
/// message as it stands when it is sent.
pub(super) fn is_chat(message: &MessageRow) -> bool {
    message.is_message() && ChatRoom::parse(&message.room).is_some() && !is_status_notice(message)
}

/// Committed chat messages not yet in a range, by room and sender: all a
/// recipient's range needs is the first and last of the others' messages
/// and when the first was sent, however many there were.
#[derive(Default)]
pub(super) struct UnreadChat {
    by_room: HashMap<String, Vec<SenderSpan>>,
}

struct SenderSpan {
    sender: Option<String>,
    first_seq: i64,
    last_seq: i64,
    first_sent_at: i64,
}

impl UnreadChat {
    pub(super) fn add(&mut self, message: &MessageRow) {
        // The room's name is copied once per flush, not once per message.
        let spans = match self.by_room.get_mut(&message.room) {
            Some(spans) => spans,
            None => self.by_room.entry(message.room.clone()).or_default(),
        };
        match spans.iter_mut().find(|s| s.sender == message.sender_id) {
            Some(span) => {
                span.first_seq = span.first_seq.min(message.seq);
                span.last_seq = span.last_seq.max(message.seq);
                span.first_sent_at = span.first_sent_at.min(message.sent_at);
            }
            None => spans.push(SenderSpan {
                sender: message.sender_id.clone(),
                first_seq: message.seq,
                last_seq: message.seq,
                first_sent_at: message.sent_at,
            }),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_room.is_empty()
    }

    pub(super) fn rooms(&self) -> usize {
        self.by_room.len()
    }

    /// A recipient's range in `room`: the others' first and last message
    /// and when the first was sent; none when only they wrote.
    fn range_for(&self, room: &str, user: &str) -> Option<(i64, i64, i64)> {
        self.by_room
            .get(room)?
            .iter()
            .filter(|span| span.sender.as_deref() != Some(user))
            .map(|span| (span.first_seq, span.last_seq, span.first_sent_at))
            .reduce(|(f1, l1, t1), (f2, l2, t2)| (f1.min(f2), l1.max(l2), t1.min(t2)))
    }
}

pub(super) fn new_item(
    user_id: &str,
    kind: EmailKind,
    source: String,
    created_at: i64,
    due_at: i64,
) -> EmailItemRow {
    let now = crate::time::now_ms();
    EmailItemRow {
        id: uuid::Uuid::now_v7().to_string(),
        user_id: user_id.to_owned(),
        kind,
        source,
        room: None,
        seq: None,
        message_id: None,
        notification_id: None,
        created_at,
        due_at,
        state: ItemState::Pending,
        outbox_id: None,
        updated_at: now,
        up_to_seq: None,
        transactional: false,
    }
}

/// One range per recipient and room: the booking's participants, or the
/// user who opened the support conversation; a recipient's own messages
/// are left out of it (and a room only they wrote in gets none).
pub(super) async fn chat_ranges(
    db: &Db,
    delays: Delays,
    unread: UnreadChat,
) -> Result<Vec<EmailItemRow>, NotifyError> {
    let rooms: Vec<(&String, ChatRoom)> = unread
        .by_room
        .keys()
        .filter_map(|room| Some((room, ChatRoom::parse(room)?)))
        .collect();
    let (booking_ids, conversation_ids) = ChatRoom::ids(rooms.iter().map(|(_, room)| *room));
    let audience = db.chat_audience(&booking_ids, &conversation_ids).await?;
    let recipients: Vec<String> = rooms
        .iter()
        .flat_map(|(_, room)| audience.recipients(*room))
        .map(str::to_owned)
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let chat_delays: HashMap<String, Option<i64>> = db
        .email_preferences_of(&recipients)
        .await?
        .into_iter()
        .map(|p| (p.user_id, p.chat_delay_secs))
        .collect();

    let mut ranges = Vec::new();
    for (room, chat_room) in &rooms {
        let kind = chat_room.email_kind();
        for user in audience.recipients(*chat_room) {
            let Some((first, last, first_sent_at)) = unread.range_for(room, user) else {
                continue;
            };
            let own_delay = chat_delays.get(user).copied().flatten();
            let due = delays.for_item(kind, own_delay).first_check(first_sent_at);
            let mut item = new_item(user, kind, String::new(), first_sent_at, due);
            item.source = format!("range:{room}:{}", item.id);
            item.room = Some((*room).clone());
            item.seq = Some(first);
            item.up_to_seq = Some(last);
            ranges.push(item);
        }
    }
    Ok(ranges)
}

pub(super) fn notification_items(delays: Delays, rows: &[NotificationRow]) -> Vec<EmailItemRow> {
    rows.iter()
        .filter(|n| n.read_at.is_none() || n.transactional)
        .map(|n| {
            // Every kind of notification is a kind of email (one type).
            // A transactional one is due at once.
            let due = if n.transactional {
                n.created_at
            } else {
                delays.first_check(n.created_at)
            };
            let mut item = new_item(
                &n.user_id,
                n.kind,
                format!("notification:{}", n.id),
                n.created_at,
                due,
            );
            item.notification_id = Some(n.id.clone());
            item.transactional = n.transactional;
            item
        })
        .collect()
}

/// After a start: messages and notifications stored shortly before the
/// previous process stopped may have no item yet (it died between storing
/// them and storing their items). Notification items are unique per
/// source, so storing them all again adds only the missing ones; messages
/// are left out where an item already covers them. Read ones are dropped
/// when they are decided.
pub(super) async fn catch_up(db: &Db, delays: Delays) -> Result<usize, NotifyError> {
    let now = crate::time::now_ms();
    let newest = db
        .latest_email_item_created()
        .await?
        .unwrap_or(now)
        .min(now);
    let since = (newest - CATCH_UP_MARGIN_MS).max(now - CATCH_UP_MAX_AGE_MS);
    let mut stored = 0;

    let mut after: Option<String> = None;
    loop {
        let page = db
            .chat_messages_since(since, after.as_deref(), CATCH_UP_PAGE)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        let rooms: Vec<String> = page
            .iter()
            .filter(|m| is_chat(m))
            .map(|m| m.room.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let covered = db.chat_ranges_of_rooms(&rooms, since).await?;
        let mut unread = UnreadChat::default();
        for message in page.iter().filter(|m| is_chat(m)) {
            unread.add(message);
        }
        // A recipient already covered for a message is left out of its
        // range; the others still get one.
        let ranges: Vec<EmailItemRow> = chat_ranges(db, delays, unread)
            .await?
            .into_iter()
            .filter_map(|range| uncovered_part(range, &page, &covered))
            .collect();
        stored += db.upsert_chat_ranges(&ranges).await?;
        if (page.len() as i64) < CATCH_UP_PAGE {
            break;
        }
    }

    let mut after: Option<String> = None;
    loop {
        let page = db
            .unread_notifications_since(since, after.as_deref(), CATCH_UP_PAGE)
            .await?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        stored += db
            .insert_email_items(&notification_items(delays, &page))
            .await?;
        if (page.len() as i64) < CATCH_UP_PAGE {
            break;
        }
    }
    Ok(stored)
}

/// What of a catch-up range no stored item covers yet: the recipient's
/// range shrunk to the others' messages of `page` outside every range in
/// `covered` (recipient, room, first, last); none when all are covered.
fn uncovered_part(
    mut range: EmailItemRow,
    page: &[MessageRow],
    covered: &[(String, String, i64, i64)],
) -> Option<EmailItemRow> {
    let room = range.room.clone()?;
    let user = range.user_id.clone();
    let is_covered = |seq: i64| {
        covered
            .iter()
            .any(|(u, r, first, last)| *u == user && *r == room && *first <= seq && seq <= *last)
    };
    let uncovered = page.iter().filter(|m| {
        m.room == room
            && is_chat(m)
            && m.sender_id.as_deref() != Some(user.as_str())
            && !is_covered(m.seq)
    });
    let (first, last, first_sent_at) = uncovered
        .map(|m| (m.seq, m.seq, m.sent_at))
        .reduce(|(f1, l1, t1), (f2, l2, t2)| (f1.min(f2), l1.max(l2), t1.min(t2)))?;
    range.seq = Some(first);
    range.up_to_seq = Some(last);
    // Its first look stays as early as the whole range's: harmless, the
    // look reschedules what is not due yet.
    range.created_at = first_sent_at;
    Some(range)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: i64, sender: &str, sent_at: i64) -> MessageRow {
        MessageRow {
            id: format!("m{seq}"),
            room: "booking:b1".into(),
            seq,
            sender_id: Some(sender.into()),
            sender_name: sender.into(),
            sender_role: "client".into(),
            client_id: Some(format!("c{seq}")),
            body: format!("take {seq}"),
            sent_at,
            kind: crate::domain::chat::EntryKind::Message,
            target_seq: None,
            attachments: None,
            edited_at: None,
            deleted_at: None,
            reactions: 0,
        }
    }

    #[test]
    fn a_recipients_range_holds_the_others_messages_only() {
        let mut unread = UnreadChat::default();
        for (seq, sender, at) in [
            (4, "ava", 40),
            (5, "sam", 50),
            (6, "eli", 60),
            (7, "ava", 70),
        ] {
            unread.add(&message(seq, sender, at));
        }
        assert_eq!(unread.rooms(), 1);
        assert_eq!(unread.range_for("booking:b1", "sam"), Some((4, 7, 40)));
        assert_eq!(unread.range_for("booking:b1", "ava"), Some((5, 6, 50)));
        assert_eq!(unread.range_for("booking:b2", "sam"), None);

        let mut alone = UnreadChat::default();
        alone.add(&message(1, "sam", 10));
        assert_eq!(alone.range_for("booking:b1", "sam"), None);
    }

    #[test]
    fn a_catch_up_range_leaves_out_what_is_covered() {
        let page: Vec<MessageRow> = (1..=6).map(|seq| message(seq, "ava", seq * 10)).collect();
        let mut range = new_item("sam", EmailKind::Chat, String::new(), 10, 0);
        range.room = Some("booking:b1".into());
        range.seq = Some(1);
        range.up_to_seq = Some(6);
        let covered = vec![
            ("sam".to_owned(), "booking:b1".to_owned(), 1, 3),
            // Another recipient's, or another room's, cover nothing of Sam's.
            ("eli".to_owned(), "booking:b1".to_owned(), 4, 6),
            ("sam".to_owned(), "booking:b2".to_owned(), 4, 6),
        ];
        let part = uncovered_part(range.clone(), &page, &covered).unwrap();
        assert_eq!(
            (part.seq, part.up_to_seq, part.created_at),
            (Some(4), Some(6), 40)
        );

        let all = vec![("sam".to_owned(), "booking:b1".to_owned(), 1, 6)];
        assert!(uncovered_part(range, &page, &all).is_none());
    }
}
