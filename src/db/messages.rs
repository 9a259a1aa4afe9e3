//! Chat messages: the group-committed append that assigns each room's
//! gap-free sequence, history, replay and read cursors.

use std::collections::HashMap;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::models::{MessageRow, NewRoom, ReadCursorRow};
use super::schema::{messages, read_cursors, rooms};
use super::{Db, DbError};
use crate::db_run;

/// A message to be stored; `seq`, `sent_at` and (unless given) `id` are
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
    pub body: String,
}

/// The outcome of one appended message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub row: MessageRow,
    /// The same sender already stored this `client_id`: `row` is the stored one.
    pub duplicate: bool,
}

/// The batch's statements, identical for both backends. Within one
/// transaction, for each room in order of first appearance:
/// 1. take the room row's write lock and read `last_seq` (an UPDATE that
///    changes nothing, so concurrent writers on other nodes wait here);
/// 2. look up `client_id`s already stored by their senders (dedup for good);
/// 3. give the new messages `last_seq + 1 ..` and store them;
/// 4. move `last_seq` forward.
///
/// Seqs are therefore assigned under the lock and committed with the rows:
/// no gaps, no two writers with one seq, and no ack for an uncommitted row.
macro_rules! append_in_transaction {
    ($conn:ident, $batch:expr, $now:expr) => {{
        let batch: Vec<NewMessage> = $batch;
        let now: i64 = $now;
        $conn
            .transaction::<_, DbError, _>(async |conn| {
                let mut results: Vec<Option<Appended>> = vec![None; batch.len()];
                let mut by_room: Vec<(String, Vec<usize>)> = Vec::new();
                for (index, message) in batch.iter().enumerate() {
                    match by_room.iter_mut().find(|(room, _)| *room == message.room) {
                        Some((_, indexes)) => indexes.push(index),
                        None => by_room.push((message.room.clone(), vec![index])),
                    }
                }
                let mut new_rows = Vec::new();
                for (room, indexes) in by_room {
                    diesel::insert_into(rooms::table)
                        .values(&NewRoom {
                            id: &room,
                            last_seq: 0,
                            created_at: now,
                        })
                        .on_conflict_do_nothing()
                        .execute(conn)
                        .await?;
                    let mut last_seq: i64 = diesel::update(rooms::table.find(&room))
                        .set(rooms::last_seq.eq(rooms::last_seq))
                        .returning(rooms::last_seq)
                        .get_result(conn)
                        .await?;
                    let client_ids: Vec<&str> = indexes
                        .iter()
                        .filter_map(|&i| batch[i].client_id.as_deref())
                        .collect();
                    let mut seen: HashMap<(Option<String>, String), MessageRow> =
                        if client_ids.is_empty() {
                            HashMap::new()
                        } else {
                            messages::table
                                .filter(messages::room.eq(&room))
                                .filter(messages::client_id.eq_any(&client_ids))
                                .select(MessageRow::as_select())
                                .load::<MessageRow>(conn)
                                .await?
                                .into_iter()
                                .filter_map(|row| {
                                    let key = (row.sender_id.clone(), row.client_id.clone()?);
                                    Some((key, row))
                                })
                                .collect()
                        };
                    let first_new = new_rows.len();
                    for index in indexes {
                        let message = &batch[index];
                        let key = message
                            .client_id
                            .clone()
                            .map(|client_id| (message.sender_id.clone(), client_id));
                        if let Some(existing) = key.as_ref().and_then(|k| seen.get(k)) {
                            results[index] = Some(Appended {
                                row: existing.clone(),
                                duplicate: true,
                            });
                            continue;
                        }
                        last_seq += 1;
                        let row = MessageRow {
                            id: message
                                .id
                                .clone()
                                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
                            room: room.clone(),
                            seq: last_seq,
                            sender_id: message.sender_id.clone(),
                            sender_name: message.sender_name.clone(),
                            sender_role: message.sender_role.clone(),
                            client_id: message.client_id.clone(),
                            body: message.body.clone(),
                            sent_at: now,
                        };
                        if let Some(key) = key {
                            seen.insert(key, row.clone());
                        }
                        results[index] = Some(Appended {
                            row: row.clone(),
                            duplicate: false,
                        });
                        new_rows.push(row);
                    }
                    if new_rows.len() > first_new {
                        diesel::update(rooms::table.find(&room))
                            .set(rooms::last_seq.eq(last_seq))
                            .execute(conn)
                            .await?;
                    }
                }
                conn.insert_message_rows(&new_rows).await?;
                Ok(results
                    .into_iter()
                    .map(|r| r.expect("every index answered"))
                    .collect())
            })
            .await
    }};
}

/// Inserting many rows: PostgreSQL takes them in multi-row statements;
/// Diesel has no multi-row insert for SQLite behind an async wrapper, and
/// row by row costs SQLite nothing (no round trips, one transaction).
pub(crate) trait InsertMessageRows {
    async fn insert_message_rows(&mut self, rows: &[MessageRow]) -> QueryResult<()>;
}

impl InsertMessageRows for diesel_async::AsyncPgConnection {
    async fn insert_message_rows(&mut self, rows: &[MessageRow]) -> QueryResult<()> {
        // Bounded chunks stay far below the limit of bound parameters.
        for chunk in rows.chunks(1000) {
            diesel::insert_into(messages::table)
                .values(chunk)
                .execute(self)
                .await?;
        }
        Ok(())
    }
}

impl InsertMessageRows for super::SqliteConn {
    async fn insert_message_rows(&mut self, rows: &[MessageRow]) -> QueryResult<()> {
        for row in rows {
            diesel::insert_into(messages::table)
                .values(row)
                .execute(self)
                .await?;
        }
        Ok(())
    }
}

impl Db {
    /// Stores a batch of messages in one transaction (group commit).
    /// Every message is answered in input order, duplicates included.
    pub async fn append_messages(&self, batch: Vec<NewMessage>) -> Result<Vec<Appended>, DbError> {
        let now = crate::time::now_ms();
        db_run!(self, |conn| append_in_transaction!(conn, batch, now))
    }

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

    /// Messages with `after < seq <= up_to`, oldest first, at most `limit`.
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

    /// Up to `limit` messages with seq below `before` (all when `None`),
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
                        })
                        .collect();
                    let answers = db.append_messages(messages).await.unwrap();
                    for (key, answer) in batch.iter().zip(answers) {
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
