//! Stored entries as clients see them: a message (with the quote of what it
//! answers and its reactions) or a change to an earlier message.

use bytestring::ByteString;

use super::Entry;
use crate::db::models::{MessageRow, ReactionRow};
use crate::domain::chat::{excerpt, EntryKind};
use crate::domain::wire::{ChangeView, MessageView, QuoteView, ReactionView, SenderView};
use crate::time::rfc3339_ms;

fn sender(row: &MessageRow) -> SenderView<'_> {
    SenderView {
        user_id: row.sender_id.as_deref(),
        name: &row.sender_name,
        role: &row.sender_role,
    }
}

/// Reactions grouped by emoji, in the order each emoji first came.
fn reaction_views(reactions: &[ReactionRow]) -> Vec<ReactionView<'_>> {
    let mut views: Vec<ReactionView<'_>> = Vec::new();
    for reaction in reactions {
        match views.iter_mut().find(|v| v.emoji == reaction.emoji) {
            Some(view) => {
                view.count += 1;
                view.user_ids.push(&reaction.user_id);
            }
            None => views.push(ReactionView {
                emoji: &reaction.emoji,
                count: 1,
                user_ids: vec![&reaction.user_id],
            }),
        }
    }
    views
}

/// A message entry as it stands.
pub fn message_view(entry: &Entry) -> MessageView<'_> {
    let row = &entry.row;
    let reply_to = row
        .target_seq
        .map(|seq| match entry.context.target.as_deref() {
            Some(answered) => QuoteView {
                seq,
                sender: sender(answered),
                excerpt: excerpt(&answered.body),
                deleted: answered.deleted_at.is_some(),
            },
            // Only a store edited by hand loses a message: show the seq.
            None => QuoteView {
                seq,
                sender: SenderView {
                    user_id: None,
                    name: "",
                    role: "",
                },
                excerpt: "",
                deleted: true,
            },
        });
    MessageView {
        room: &row.room,
        seq: row.seq,
        id: &row.id,
        client_id: row.client_id.as_deref(),
        sender: sender(row),
        body: &row.body,
        sent_at: rfc3339_ms(row.sent_at),
        reply_to,
        attachments: row.attachment_list(),
        edited_at: row.edited_at.map(rfc3339_ms),
        deleted_at: row.deleted_at.map(rfc3339_ms),
        reactions: reaction_views(&entry.context.reactions),
    }
}

/// A change entry, showing the changed message as it stands; `None` for a
/// message entry.
pub fn change_view(entry: &Entry) -> Option<ChangeView<'_>> {
    let row = &entry.row;
    let message_seq = row.target_seq?;
    let target = entry.context.target.as_deref();
    let at = rfc3339_ms(row.sent_at);
    Some(match row.kind {
        EntryKind::Message => return None,
        EntryKind::Edit => ChangeView::Edited {
            room: &row.room,
            seq: row.seq,
            message_seq,
            by: sender(row),
            body: target.map_or("", |t| t.body.as_str()),
            edited_at: target.and_then(|t| t.edited_at).map(rfc3339_ms),
            at,
        },
        EntryKind::Delete => ChangeView::Deleted {
            room: &row.room,
            seq: row.seq,
            message_seq,
            by: sender(row),
            at,
        },
        EntryKind::React | EntryKind::Unreact => ChangeView::Reacted {
            room: &row.room,
            seq: row.seq,
            message_seq,
            by: sender(row),
            emoji: &row.body,
            on: row.kind == EntryKind::React,
            reactions: reaction_views(&entry.context.reactions),
            at,
        },
    })
}

/// The frame of an entry, serialised once for all its recipients.
pub fn entry_frame(entry: &Entry) -> ByteString {
    match change_view(entry) {
        Some(change) => change.encode(),
        None => crate::domain::wire::message_frame(message_view(entry)),
    }
}

/// A page of entries split as the `history` frame carries them.
pub fn page_views(entries: &[Entry]) -> (Vec<MessageView<'_>>, Vec<ChangeView<'_>>) {
    let mut messages = Vec::new();
    let mut changes = Vec::new();
    for entry in entries {
        match change_view(entry) {
            Some(change) => changes.push(change),
            None => messages.push(message_view(entry)),
        }
    }
    (messages, changes)
}
