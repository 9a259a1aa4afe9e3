//! The changes an append may carry besides new messages (edits, deletions,
//! reactions) and the replies that quote an earlier message: checked and
//! applied in the commit that stores them, under the room's write lock, so
//! two nodes never both edit a deleted message or double a reaction.
//!
//! [`Ledger`] is pure: the commit reads the messages a batch names (and
//! their reactions) once, the ledger decides each entry in order (a later
//! entry of the batch sees what an earlier one did, a reply may answer a
//! message of the same batch), and the commit writes what changed.

use std::collections::{BTreeSet, HashMap};

use super::{Action, EntryContext, NewMessage};
use crate::db::models::{MessageRow, ReactionRow};
use crate::domain::chat::{ChatRefusal, EntryKind};

/// Distinct emoji one message may carry, and one user may put on it.
const MAX_EMOJI_PER_MESSAGE: usize = 50;
const MAX_EMOJI_PER_USER: usize = 10;

type Key = (String, i64);

/// What a batch's changes need, read under the lock, then kept current.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    messages: HashMap<Key, MessageRow>,
    reactions: HashMap<Key, Vec<ReactionRow>>,
    /// Messages whose stored row changed.
    changed: BTreeSet<Key>,
    /// Messages whose reaction set changed.
    reacted: BTreeSet<Key>,
    /// Whether the batch names messages at all: only then are its new
    /// messages remembered (a batch of plain messages copies nothing).
    remember_new: bool,
}

/// A changed message's new state, to be written over its stored row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MessageUpdate {
    pub room: String,
    pub seq: i64,
    pub body: String,
    pub attachments: Option<String>,
    pub edited_at: Option<i64>,
    pub deleted_at: Option<i64>,
    pub reactions: i64,
}

/// Everything a batch's changes write, besides the new entries.
#[derive(Debug, Default)]
pub(super) struct LedgerWrites {
    pub updates: Vec<MessageUpdate>,
    /// Messages whose reactions are replaced by `reactions` (theirs only).
    pub reaction_sets: Vec<Key>,
    pub reactions: Vec<ReactionRow>,
}

impl LedgerWrites {
    pub fn is_empty(&self) -> bool {
        self.updates.is_empty() && self.reaction_sets.is_empty()
    }
}

/// The `(room, seq)` of every message the batch names, to be read first;
/// empty for a batch of plain messages (nothing extra is read).
pub(super) fn named_messages(batch: &[NewMessage]) -> Vec<Key> {
    let mut keys: Vec<Key> = batch
        .iter()
        .filter_map(|m| m.action.target().map(|seq| (m.room.clone(), seq)))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

impl Ledger {
    pub fn new(messages: Vec<MessageRow>, reactions: Vec<ReactionRow>) -> Self {
        let mut ledger = Ledger {
            messages: messages
                .into_iter()
                .map(|m| ((m.room.clone(), m.seq), m))
                .collect(),
            remember_new: true,
            ..Ledger::default()
        };
        for reaction in reactions {
            ledger
                .reactions
                .entry((reaction.room.clone(), reaction.seq))
                .or_default()
                .push(reaction);
        }
        for list in ledger.reactions.values_mut() {
            list.sort_by(|a, b| (a.created_at, &a.emoji).cmp(&(b.created_at, &b.emoji)));
        }
        ledger
    }

    /// The message `seq` of the room, which must be a live message.
    fn live(&self, room: &str, seq: i64) -> Result<&MessageRow, ChatRefusal> {
        let target = self
            .messages
            .get(&(room.to_owned(), seq))
            .filter(|m| m.is_message())
            .ok_or_else(|| ChatRefusal::NotFound(format!("`{room}` has no message {seq}")))?;
        if target.deleted_at.is_some() {
            return Err(ChatRefusal::NotFound(format!(
                "message {seq} of `{room}` was deleted"
            )));
        }
        Ok(target)
    }

    /// Whether the entry may be stored, at `now` (unix ms).
    pub fn check(&self, entry: &NewMessage, now: i64) -> Result<(), ChatRefusal> {
        let room = entry.room.as_str();
        match &entry.action {
            Action::Post { reply_to: None, .. } => Ok(()),
            Action::Post {
                reply_to: Some(seq),
                ..
            } => self.live(room, *seq).map(|_| ()),
            Action::Edit { target, window_ms } => {
                let message = self.live(room, *target)?;
                if message.sender_id.is_none() || message.sender_id != entry.sender_id {
                    return Err(ChatRefusal::Forbidden(
                        "only its author may edit a message".into(),
                    ));
                }
                if now - message.sent_at > *window_ms {
                    return Err(ChatRefusal::Forbidden(format!(
                        "message {target} is past the edit window ({} s)",
                        window_ms / 1000
                    )));
                }
                Ok(())
            }
            Action::Delete { target, moderator } => {
                let message = self.live(room, *target)?;
                let own = message.sender_id.is_some() && message.sender_id == entry.sender_id;
                if !own && !moderator {
                    return Err(ChatRefusal::Forbidden(
                        "only its author or an admin may delete a message".into(),
                    ));
                }
                Ok(())
            }
            Action::React { target, on } => {
                self.live(room, *target)?;
                if !on {
                    return Ok(());
                }
                let user = entry.sender_id.as_deref().unwrap_or_default();
                let list = self
                    .reactions
                    .get(&(room.to_owned(), *target))
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                if list
                    .iter()
                    .any(|r| r.user_id == user && r.emoji == entry.body)
                {
                    return Ok(());
                }
                let mine = list.iter().filter(|r| r.user_id == user).count();
                let distinct: BTreeSet<&str> = list.iter().map(|r| r.emoji.as_str()).collect();
                if mine >= MAX_EMOJI_PER_USER
                    || (!distinct.contains(entry.body.as_str())
                        && distinct.len() >= MAX_EMOJI_PER_MESSAGE)
                {
                    return Err(ChatRefusal::Invalid(format!(
                        "message {target} has as many reactions as it may hold"
                    )));
                }
                Ok(())
            }
        }
    }

    /// Applies a checked entry, now stored as `row`; returns what its frame
    /// shows. A new message is remembered, so later entries may name it.
    pub fn apply(&mut self, entry: &NewMessage, row: &MessageRow, now: i64) -> EntryContext {
        if row.kind == EntryKind::Edit {
            return self.apply_edit(row, &entry.body, now);
        }
        let Some(seq) = row.target_seq else {
            if self.remember_new && row.is_message() {
                self.messages
                    .insert((row.room.clone(), row.seq), row.clone());
            }
            return EntryContext::default();
        };
        let key = (row.room.clone(), seq);
        if row.is_message() {
            self.messages
                .insert((row.room.clone(), row.seq), row.clone());
            return EntryContext {
                target: self.messages.get(&key).cloned().map(Box::new),
                reactions: Vec::new(),
            };
        }
        let reactions = self.reactions.entry(key.clone()).or_default();
        let target = self
            .messages
            .get_mut(&key)
            .expect("a checked change names a message that was read");
        match row.kind {
            EntryKind::Message => unreachable!("handled above"),
            EntryKind::Edit => unreachable!("handled by apply_edit"),
            EntryKind::Delete => {
                target.body.clear();
                target.attachments = None;
                target.deleted_at = Some(now);
                target.reactions = 0;
                if !reactions.is_empty() {
                    reactions.clear();
                    self.reacted.insert(key.clone());
                }
            }
            EntryKind::React | EntryKind::Unreact => {
                let user = row.sender_id.clone().unwrap_or_default();
                let at = reactions
                    .iter()
                    .position(|r| r.user_id == user && r.emoji == row.body);
                match (row.kind == EntryKind::React, at) {
                    (true, None) => reactions.push(ReactionRow {
                        room: row.room.clone(),
                        seq,
                        user_id: user,
                        emoji: row.body.clone(),
                        created_at: now,
                    }),
                    (false, Some(at)) => {
                        reactions.remove(at);
                    }
                    // Already so: stored all the same (a retry is harmless).
                    _ => {}
                }
                target.reactions = reactions.len() as i64;
                self.reacted.insert(key.clone());
            }
        }
        self.changed.insert(key.clone());
        EntryContext {
            target: Some(Box::new(target.clone())),
            reactions: reactions.clone(),
        }
    }

    /// Applies a checked edit (its text is `body`; the stored change row
    /// keeps none, so erasing or deleting the message leaves no copy).
    fn apply_edit(&mut self, row: &MessageRow, body: &str, now: i64) -> EntryContext {
        let key = (
            row.room.clone(),
            row.target_seq.expect("an edit names a message"),
        );
        let target = self
            .messages
            .get_mut(&key)
            .expect("a checked edit names a message that was read");
        target.body = body.to_owned();
        target.edited_at = Some(now);
        self.changed.insert(key);
        EntryContext {
            target: Some(Box::new(target.clone())),
            reactions: Vec::new(),
        }
    }

    /// What the batch's changes write.
    pub fn writes(self) -> LedgerWrites {
        let updates = self
            .changed
            .iter()
            .filter_map(|key| self.messages.get(key))
            .map(|m| MessageUpdate {
                room: m.room.clone(),
                seq: m.seq,
                body: m.body.clone(),
                attachments: m.attachments.clone(),
                edited_at: m.edited_at,
                deleted_at: m.deleted_at,
                reactions: m.reactions,
            })
            .collect();
        let reactions = self
            .reacted
            .iter()
            .flat_map(|key| self.reactions.get(key).into_iter().flatten().cloned())
            .collect();
        LedgerWrites {
            updates,
            reaction_sets: self.reacted.into_iter().collect(),
            reactions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(seq: i64, sender: &str, sent_at: i64) -> MessageRow {
        MessageRow {
            id: format!("m{seq}"),
            room: "booking:b".into(),
            seq,
            sender_id: Some(sender.into()),
            sender_name: sender.into(),
            sender_role: "client".into(),
            client_id: Some(format!("c{seq}")),
            body: format!("text {seq}"),
            sent_at,
            kind: EntryKind::Message,
            target_seq: None,
            attachments: None,
            edited_at: None,
            deleted_at: None,
            reactions: 0,
        }
    }

    fn change(sender: &str, action: Action, body: &str) -> NewMessage {
        NewMessage {
            id: None,
            room: "booking:b".into(),
            sender_id: Some(sender.into()),
            sender_name: sender.into(),
            sender_role: "client".into(),
            client_id: None,
            body: body.into(),
            action,
        }
    }

    fn row_of(entry: &NewMessage, seq: i64) -> MessageRow {
        super::super::append::entry_row(entry, seq, 0, "id".into())
    }

    #[test]
    fn only_the_author_edits_and_only_within_the_window() {
        let ledger = Ledger::new(vec![stored(1, "ava", 1_000)], vec![]);
        let edit = |who: &str| {
            change(
                who,
                Action::Edit {
                    target: 1,
                    window_ms: 60_000,
                },
                "fixed",
            )
        };
        assert!(ledger.check(&edit("ava"), 2_000).is_ok());
        assert!(matches!(
            ledger.check(&edit("sam"), 2_000),
            Err(ChatRefusal::Forbidden(_))
        ));
        assert!(matches!(
            ledger.check(&edit("ava"), 62_000),
            Err(ChatRefusal::Forbidden(_))
        ));
        let missing = change(
            "ava",
            Action::Edit {
                target: 7,
                window_ms: 60_000,
            },
            "x",
        );
        assert!(matches!(
            ledger.check(&missing, 2_000),
            Err(ChatRefusal::NotFound(_))
        ));
    }

    #[test]
    fn a_deleted_message_is_a_tombstone_that_takes_no_more_changes() {
        let mut ledger = Ledger::new(
            vec![stored(1, "ava", 0)],
            vec![ReactionRow {
                room: "booking:b".into(),
                seq: 1,
                user_id: "sam".into(),
                emoji: "👍".into(),
                created_at: 0,
            }],
        );
        let by_admin = change(
            "root",
            Action::Delete {
                target: 1,
                moderator: true,
            },
            "",
        );
        let by_sam = change(
            "sam",
            Action::Delete {
                target: 1,
                moderator: false,
            },
            "",
        );
        assert!(matches!(
            ledger.check(&by_sam, 0),
            Err(ChatRefusal::Forbidden(_))
        ));
        assert!(ledger.check(&by_admin, 0).is_ok());
        let context = ledger.apply(&by_admin, &row_of(&by_admin, 2), 5);
        let target = context.target.unwrap();
        assert_eq!((target.body.as_str(), target.deleted_at), ("", Some(5)));
        let react = change(
            "sam",
            Action::React {
                target: 1,
                on: true,
            },
            "👍",
        );
        assert!(matches!(
            ledger.check(&react, 0),
            Err(ChatRefusal::NotFound(_))
        ));
        let writes = ledger.writes();
        assert_eq!(writes.updates.len(), 1);
        assert_eq!(writes.reaction_sets, vec![("booking:b".to_owned(), 1)]);
        assert!(
            writes.reactions.is_empty(),
            "the tombstone keeps no reactions"
        );
    }

    #[test]
    fn one_of_each_emoji_per_user_and_replies_to_messages_of_the_same_batch() {
        // A batch naming a message of its own reads nothing first.
        let mut ledger = Ledger::new(vec![], vec![]);
        let first = change(
            "ava",
            Action::Post {
                reply_to: None,
                attachments: Vec::new(),
            },
            "hello",
        );
        ledger.apply(&first, &row_of(&first, 1), 0);
        let reply = change(
            "sam",
            Action::Post {
                reply_to: Some(1),
                attachments: Vec::new(),
            },
            "hi",
        );
        assert!(ledger.check(&reply, 0).is_ok());
        let quoted = ledger.apply(&reply, &row_of(&reply, 2), 0);
        assert_eq!(quoted.target.unwrap().body, "hello");
        let thumbs = change(
            "sam",
            Action::React {
                target: 1,
                on: true,
            },
            "👍",
        );
        ledger.apply(&thumbs, &row_of(&thumbs, 3), 1);
        let again = ledger.apply(&thumbs, &row_of(&thumbs, 4), 2);
        assert_eq!(again.reactions.len(), 1, "one 👍 per user");
        let off = change(
            "sam",
            Action::React {
                target: 1,
                on: false,
            },
            "👍",
        );
        let after = ledger.apply(&off, &row_of(&off, 5), 3);
        assert!(after.reactions.is_empty());
        assert_eq!(after.target.unwrap().reactions, 0);
    }

    #[test]
    fn reactions_per_user_are_bounded() {
        let mut ledger = Ledger::new(vec![stored(1, "ava", 0)], vec![]);
        let emoji = [
            "😀", "😁", "😂", "🤣", "😃", "😄", "😅", "😆", "😉", "😊", "😋",
        ];
        for (i, e) in emoji.iter().enumerate() {
            let react = change(
                "sam",
                Action::React {
                    target: 1,
                    on: true,
                },
                e,
            );
            let checked = ledger.check(&react, 0);
            if i < MAX_EMOJI_PER_USER {
                checked.unwrap();
                ledger.apply(&react, &row_of(&react, 2 + i as i64), 0);
            } else {
                assert!(matches!(checked, Err(ChatRefusal::Invalid(_))));
            }
        }
    }
}
