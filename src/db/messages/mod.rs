//! A room's sequence: messages and the changes made to them (edits,
//! deletions, reactions), each at its own seq. Appends are group-committed
//! ([`append`]), changes checked and applied in the same commit
//! ([`changes`]); reads for history and replay come with what their
//! frames show ([`Entry`]); read cursors.

mod append;
mod changes;
pub mod views;

use std::collections::BTreeSet;

use super::models::{MessageRow, ReactionRow, ReadCursorRow};
use super::schema::{message_reactions, messages, read_cursors, rooms};
use super::{Db, DbError};
use crate::db_run;
use crate::domain::chat::{Attachment, ChatRefusal, EntryKind};

/// An entry to be stored; `seq`, `sent_at` and (unless given) `id` are
/// assigned at commit.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Set by a writer that announced the id before storing (the support
    /// agent streams `message.delta` frames under it); must be unique.
    pub id: Option<String>,
    pub room: String,
    pub sender_id: Option<String>,
    pub sender_name: String,
    pub sender_role: String,
    pub client_id: Option<String>,
    /// A message's text, an edit's new text, a reaction's emoji.
    pub body: String,
    pub action: Action,
}

/// What an entry does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A new message, maybe answering another, maybe with attachments
    /// (checked by the caller against `chat.attachment_origins`).
    Post {
        reply_to: Option<i64>,
        attachments: Vec<Attachment>,
    },
    /// New text for the sender's own message, if sent within `window_ms`.
    Edit {
        target: i64,
        window_ms: i64,
    },
    /// The sender's own message, or any when `moderator` (an admin).
    Delete {
        target: i64,
        moderator: bool,
    },
    React {
        target: i64,
        on: bool,
    },
}

impl Action {
    /// A plain message.
    pub const MESSAGE: Action = Action::Post {
        reply_to: None,
        attachments: Vec::new(),
    };

    /// The message this entry changes or answers.
    pub fn target(&self) -> Option<i64> {
        match self {
            Action::Post { reply_to, .. } => *reply_to,
            Action::Edit { target, .. }
            | Action::Delete { target, .. }
            | Action::React { target, .. } => Some(*target),
        }
    }
}

/// What an entry's frame shows besides its own row.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EntryContext {
    /// For a reply, the message it answers; for a change, the message it
    /// changes; as it stands (after the change).
    pub target: Option<Box<MessageRow>>,
    /// A message's reactions, or for a reaction, its message's reactions.
    pub reactions: Vec<ReactionRow>,
}

/// A stored entry with what its frame shows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub row: MessageRow,
    pub context: EntryContext,
}

impl Entry {
    /// About the bytes of text its frame carries: its own body and
    /// attachments, and what it shows of another message (an edit the
    /// whole new text, a reply a quote). Replays are bounded by this, not
    /// by the row alone: an edit's row holds no text, its frame does.
    pub fn shown_bytes(&self) -> usize {
        let own = self.row.body.len() + self.row.attachments.as_ref().map_or(0, String::len);
        let target = self.context.target.as_deref().map_or(0, |t| t.body.len());
        own + match self.row.kind {
            EntryKind::Edit => target,
            EntryKind::Message => target.min(4 * crate::domain::chat::QUOTE_CHARS),
            _ => 0,
        }
    }
}

/// One appended entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub row: MessageRow,
    pub context: EntryContext,
    /// The same sender already stored this `client_id`: `row` is the stored one.
    pub duplicate: bool,
}

impl Appended {
    /// The answer to a resend: the row stored the first time.
    fn duplicate_of(row: MessageRow) -> Appended {
        Appended {
            row,
            context: EntryContext::default(),
            duplicate: true,
        }
    }

    pub fn entry(&self) -> Entry {
        Entry {
            row: self.row.clone(),
            context: self.context.clone(),
        }
    }
}

/// The answer to one entry of a batch: stored (or a duplicate), or a
/// change the room's state refused.
pub type Outcome = Result<Appended, ChatRefusal>;

impl Db {
    /// The highest stored seq of a room (0 when it has none).
    pub async fn room_last_seq(&self, room: &str) -> Result<i64, DbError> {
        db_run!(self, |conn| {
            let found: Option<i64> = rooms::table
                .find(room)
                .select(rooms::last_seq)
                .first(conn)
                .await
                .optional()?;
            Ok(found.unwrap_or(0))
        })
    }

    /// Entries with `after < seq <= up_to`, oldest first, at most `limit`.
    pub async fn messages_after(
        &self,
        room: &str,
        after: i64,
        up_to: i64,
        limit: i64,
    ) -> Result<Vec<MessageRow>, DbError> {
        db_run!(self, |conn| {
            Ok(messages::table
                .filter(messages::room.eq(room))
                .filter(messages::seq.gt(after))
                .filter(messages::seq.le(up_to))
                .order(messages::seq.asc())
                .limit(limit)
                .select(MessageRow::as_select())
                .load(conn)
                .await?)
        })
    }

    /// Up to `limit` entries with seq below `before` (all when `None`),
    /// newest first, and whether older ones remain.
    pub async fn messages_before(
        &self,
        room: &str,
        before: Option<i64>,
        limit: i64,
    ) -> Result<(Vec<MessageRow>, bool), DbError> {
        let before = before.unwrap_or(i64::MAX);
        let mut rows: Vec<MessageRow> = db_run!(self, |conn| {
            messages::table
                .filter(messages::room.eq(room))
                .filter(messages::seq.lt(before))
                .order(messages::seq.desc())
                .limit(limit + 1)
                .select(MessageRow::as_select())
                .load(conn)
                .await?
        });
        let has_more = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        Ok((rows, has_more))
    }

    /// Entries of one room with what their frames show: the messages they
    /// answer or change and the reactions they show, read only when some
    /// entry needs them.
    pub async fn with_context(&self, rows: Vec<MessageRow>) -> Result<Vec<Entry>, DbError> {
        let Some(room) = <[MessageRow]>::first(&rows).map(|r| r.room.clone()) else {
            return Ok(Vec::new());
        };
        let targets: BTreeSet<i64> = rows.iter().filter_map(|r| r.target_seq).collect();
        let reacted: BTreeSet<i64> = rows
            .iter()
            .filter_map(|r| match r.kind {
                EntryKind::Message if r.reactions > 0 => Some(r.seq),
                EntryKind::React | EntryKind::Unreact => r.target_seq,
                _ => None,
            })
            .collect();
        let (targets, reactions): (Vec<MessageRow>, Vec<ReactionRow>) =
            if targets.is_empty() && reacted.is_empty() {
                (Vec::new(), Vec::new())
            } else {
                db_run!(self, |conn| {
                    let found = if targets.is_empty() {
                        Vec::new()
                    } else {
                        messages::table
                            .filter(messages::room.eq(&room))
                            .filter(messages::seq.eq_any(&targets))
                            .select(MessageRow::as_select())
                            .load(conn)
                            .await?
                    };
                    let reactions = if reacted.is_empty() {
                        Vec::new()
                    } else {
                        message_reactions::table
                            .filter(message_reactions::room.eq(&room))
                            .filter(message_reactions::seq.eq_any(&reacted))
                            .order((message_reactions::created_at, message_reactions::emoji))
                            .select(ReactionRow::as_select())
                            .load(conn)
                            .await?
                    };
                    (found, reactions)
                })
            };
        Ok(rows
            .into_iter()
            .map(|row| {
                let target = row
                    .target_seq
                    .and_then(|seq| targets.iter().find(|t| t.seq == seq))
                    .cloned()
                    .map(Box::new);
                let shown = match row.kind {
                    EntryKind::Message => Some(row.seq),
                    EntryKind::React | EntryKind::Unreact => row.target_seq,
                    _ => None,
                };
                let reactions = shown
                    .map(|seq| reactions.iter().filter(|r| r.seq == seq).cloned().collect())
                    .unwrap_or_default();
                Entry {
                    row,
                    context: EntryContext { target, reactions },
                }
            })
            .collect())
    }

    /// Moves a user's read cursor forward (never back).
    pub async fn advance_read_cursor(
        &self,
        room: &str,
        user_id: &str,
        seq: i64,
    ) -> Result<(), DbError> {
        let now = crate::time::now_ms();
        let row = ReadCursorRow {
            room: room.to_owned(),
            user_id: user_id.to_owned(),
            seq,
            updated_at: now,
        };
        db_run!(self, |conn| {
            let inserted = diesel::insert_into(read_cursors::table)
                .values(&row)
                .on_conflict_do_nothing()
                .execute(conn)
                .await?;
            if inserted == 0 {
                diesel::update(read_cursors::table.find((room, user_id)))
                    .filter(read_cursors::seq.lt(seq))
                    .set((read_cursors::seq.eq(seq), read_cursors::updated_at.eq(now)))
                    .execute(conn)
                    .await?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    //! Properties of sequencing, dedup and resume, over any mix of rooms,
    //! senders, repeated client ids and batch boundaries.

    use std::collections::{BTreeMap, HashMap};

    use proptest::prelude::*;

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    async fn fresh_db(dir: &std::path::Path) -> Db {
        let url: secrecy::SecretString = format!("sqlite://{}", dir.join("p.db").display()).into();
        Db::migrate(&url).await.unwrap();
        Db::connect(&url, 2).await.unwrap()
    }

    /// (room, sender, client id): small ranges so repeats are common.
    fn appends() -> impl Strategy<Value = Vec<(u8, u8, u8)>> {
        prop::collection::vec((0u8..3, 0u8..2, 0u8..12), 1..60)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn seqs_are_gap_free_and_client_ids_stored_once(
            appends in appends(),
            batch_sizes in prop::collection::vec(1usize..8, 1..20),
        ) {
            let dir = std::env::temp_dir().join(format!("mixroom-prop-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).unwrap();
            runtime().block_on(async {
                let db = fresh_db(&dir).await;
                let mut first_answer: HashMap<(u8, u8, u8), (i64, String)> = HashMap::new();
                let mut sizes = batch_sizes.iter().cycle();
                let mut rest = appends.as_slice();
                while !rest.is_empty() {
                    let take = (*sizes.next().unwrap()).min(rest.len());
                    let (batch, tail) = rest.split_at(take);
                    rest = tail;
                    let messages: Vec<NewMessage> = batch
                        .iter()
                        .map(|&(room, sender, client)| NewMessage {
                            id: None,
                            room: format!("booking:r{room}"),
                            sender_id: Some(format!("u{sender}")),
                            sender_name: "U".into(),
                            sender_role: "client".into(),
                            client_id: Some(format!("c{client}")),
                            body: "b".into(),
                            action: Action::MESSAGE,
                        })
                        .collect();
                    let answers = db.append_messages(messages).await.unwrap();
                    for (key, answer) in batch.iter().zip(answers) {
                        let answer = answer.expect("a plain message is never refused");
                        let seen = (answer.row.seq, answer.row.id.clone());
                        match first_answer.get(key) {
                            // A repeat gets the original ack back.
                            Some(original) => {
                                prop_assert!(answer.duplicate);
                                prop_assert_eq!(original, &seen);
                            }
                            None => {
                                prop_assert!(!answer.duplicate);
                                first_answer.insert(*key, seen);
                            }
                        }
                    }
                }
                let mut per_room: BTreeMap<u8, usize> = BTreeMap::new();
                for (room, _, _) in first_answer.keys() {
                    *per_room.entry(*room).or_default() += 1;
                }
                for (room, count) in per_room {
                    let name = format!("booking:r{room}");
                    let stored = db.messages_after(&name, 0, i64::MAX, 1000).await.unwrap();
                    let seqs: Vec<i64> = stored.iter().map(|m| m.seq).collect();
                    // Gap-free from 1, one row per distinct client id.
                    prop_assert_eq!(seqs, (1..=count as i64).collect::<Vec<_>>());
                    prop_assert_eq!(db.room_last_seq(&name).await.unwrap(), count as i64);
                    // Resuming from any point yields exactly the rest, in order.
                    for since in 0..=count as i64 {
                        let replay = db.messages_after(&name, since, i64::MAX, 1000).await.unwrap();
                        let replayed: Vec<i64> = replay.iter().map(|m| m.seq).collect();
                        prop_assert_eq!(replayed, (since + 1..=count as i64).collect::<Vec<_>>());
                    }
                }
                Ok(())
            })?;
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
