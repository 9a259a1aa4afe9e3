//! Chat messages: the group-committed append that assigns each room's
//! gap-free sequence, history, replay and read cursors.

use std::collections::{HashMap, HashSet};

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::models::{MessageRow, ReadCursorRow};
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

impl Appended {
    /// The answer to a resend: the row stored the first time.
    fn duplicate_of(row: MessageRow) -> Appended {
        Appended {
            row,
            duplicate: true,
        }
    }
}

/// Seqs for a batch, given each room's `last_seq` (read under the room's
/// write lock) and the rows already stored under the batch's
/// `(room, sender, client_id)` keys. Pure: both backends share it.
struct Assigned {
    /// One answer per input, in input order.
    results: Vec<Appended>,
    /// Rows to insert.
    new_rows: Vec<MessageRow>,
    /// Rooms whose `last_seq` moved, with the new value.
    moved: Vec<(String, i64)>,
}

/// `(room, sender_id, client_id)`: a resend of the same key is a duplicate.
type DedupKey = (String, Option<String>, String);

fn dedup_key(message: &NewMessage) -> Option<DedupKey> {
    message.client_id.as_ref().map(|client_id| {
        (
            message.room.clone(),
            message.sender_id.clone(),
            client_id.clone(),
        )
    })
}

fn assign(
    batch: &[NewMessage],
    mut last_seq: HashMap<String, i64>,
    mut stored: HashMap<DedupKey, MessageRow>,
    now: i64,
) -> Assigned {
    let mut results = Vec::with_capacity(batch.len());
    let mut new_rows = Vec::with_capacity(batch.len());
    let mut moved: Vec<String> = Vec::new();
    let mut moved_rooms: HashSet<&str> = HashSet::new();
    for message in batch {
        let key = dedup_key(message);
        if let Some(existing) = key.as_ref().and_then(|k| stored.get(k)) {
            results.push(Appended::duplicate_of(existing.clone()));
            continue;
        }
        let seq = last_seq
            .get_mut(&message.room)
            .expect("every room of the batch was read");
        if !moved_rooms.contains(message.room.as_str()) {
            moved_rooms.insert(message.room.as_str());
            moved.push(message.room.clone());
        }
        *seq += 1;
        let row = MessageRow {
            id: message
                .id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            room: message.room.clone(),
            seq: *seq,
            sender_id: message.sender_id.clone(),
            sender_name: message.sender_name.clone(),
            sender_role: message.sender_role.clone(),
            client_id: message.client_id.clone(),
            body: message.body.clone(),
            sent_at: now,
        };
        if let Some(key) = key {
            stored.insert(key, row.clone());
        }
        results.push(Appended {
            row: row.clone(),
            duplicate: false,
        });
        new_rows.push(row);
    }
    let moved = moved
        .into_iter()
        .map(|room| {
            let seq = last_seq[&room];
            (room, seq)
        })
        .collect();
    Assigned {
        results,
        new_rows,
        moved,
    }
}

/// The SQLite append, synchronous (diesel's blocking API): it runs inside
/// one `spawn_blocking` call.
mod sqlite_append {
    use std::collections::HashMap;

    use diesel::prelude::*;
    use diesel::result::{DatabaseErrorKind, Error};
    use diesel::RunQueryDsl;

    use super::{dedup_key, Appended, DedupKey, NewMessage};
    use crate::db::models::{MessageRow, NewRoom};
    use crate::db::schema::{messages, rooms};

    /// SQLite: the whole batch in one call on the blocking thread (not one
    /// thread hop per statement), each statement prepared once and cached.
    /// `BEGIN IMMEDIATE` takes the write lock first, so seqs are assigned
    /// under it and committed with the rows: no gaps, no two writers with
    /// one seq, no ack for an uncommitted row.
    ///
    /// Per message one INSERT, which the unique `(room, sender_id,
    /// client_id)` index turns into nothing for a resend (then the stored
    /// row is read back); per room one read and one update of `last_seq`.
    pub(super) fn append_sqlite(
        conn: &mut diesel::SqliteConnection,
        batch: &[NewMessage],
        now: i64,
    ) -> QueryResult<Vec<Appended>> {
        conn.immediate_transaction(|conn| {
            // Each room's `last_seq` as read, and as it stands now.
            let mut seqs: HashMap<&str, (i64, i64)> = HashMap::new();
            let mut rooms_in_order: Vec<&str> = Vec::new();
            let mut in_batch: HashMap<DedupKey, MessageRow> = HashMap::new();
            let mut results = Vec::with_capacity(batch.len());
            for message in batch {
                let room = message.room.as_str();
                if !seqs.contains_key(room) {
                    // `get_result`, not `first`: a bound `LIMIT` makes
                    // SQLite re-prepare the statement on every call.
                    let stored: Option<i64> = rooms::table
                        .find(room)
                        .select(rooms::last_seq)
                        .get_result(conn)
                        .optional()?;
                    let read = match stored {
                        Some(seq) => seq,
                        None => {
                            diesel::insert_into(rooms::table)
                                .values(&NewRoom {
                                    id: room,
                                    last_seq: 0,
                                    created_at: now,
                                })
                                .execute(conn)?;
                            0
                        }
                    };
                    seqs.insert(room, (read, read));
                    rooms_in_order.push(room);
                }
                let key = dedup_key(message);
                if let Some(existing) = key.as_ref().and_then(|k| in_batch.get(k)) {
                    results.push(Appended::duplicate_of(existing.clone()));
                    continue;
                }
                // A NULL sender never conflicts in the unique index: look.
                if let (Some((_, None, client_id)), true) = (&key, message.sender_id.is_none()) {
                    if let Some(existing) = stored_duplicate(conn, room, None, client_id)? {
                        in_batch.insert(key.clone().expect("keyed"), existing.clone());
                        results.push(Appended::duplicate_of(existing));
                        continue;
                    }
                }
                let current = &mut seqs.get_mut(room).expect("read above").1;
                let row = MessageRow {
                    id: message
                        .id
                        .clone()
                        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
                    room: message.room.clone(),
                    seq: *current + 1,
                    sender_id: message.sender_id.clone(),
                    sender_name: message.sender_name.clone(),
                    sender_role: message.sender_role.clone(),
                    client_id: message.client_id.clone(),
                    body: message.body.clone(),
                    sent_at: now,
                };
                let inserted = diesel::insert_into(messages::table)
                    .values(&row)
                    .on_conflict((messages::room, messages::sender_id, messages::client_id))
                    .do_nothing()
                    .execute(conn)?;
                if inserted == 0 {
                    let (_, sender_id, client_id) = key.as_ref().ok_or_else(conflict)?;
                    let existing = stored_duplicate(conn, room, sender_id.as_deref(), client_id)?
                        .ok_or_else(conflict)?;
                    in_batch.insert(key.expect("keyed"), existing.clone());
                    results.push(Appended::duplicate_of(existing));
                    continue;
                }
                *current += 1;
                if let Some(key) = key {
                    in_batch.insert(key, row.clone());
                }
                results.push(Appended {
                    row,
                    duplicate: false,
                });
            }
            for room in rooms_in_order {
                let (read, now_at) = seqs[room];
                if now_at != read {
                    diesel::update(rooms::table.find(room))
                        .set(rooms::last_seq.eq(now_at))
                        .execute(conn)?;
                }
            }
            Ok(results)
        })
    }

    fn stored_duplicate(
        conn: &mut SqliteConnection,
        room: &str,
        sender_id: Option<&str>,
        client_id: &str,
    ) -> QueryResult<Option<MessageRow>> {
        let query = messages::table
            .filter(messages::room.eq(room))
            .filter(messages::client_id.eq(client_id))
            .select(MessageRow::as_select());
        match sender_id {
            Some(sender_id) => query
                .filter(messages::sender_id.eq(sender_id))
                .first(conn)
                .optional(),
            None => query
                .filter(messages::sender_id.is_null())
                .first(conn)
                .optional(),
        }
    }

    /// Nothing was inserted, yet no stored duplicate explains it.
    fn conflict() -> Error {
        Error::DatabaseError(
            DatabaseErrorKind::UniqueViolation,
            Box::new("message conflicts with a stored one".to_owned()),
        )
    }
}

#[derive(QueryableByName)]
struct RoomSeq {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    last_seq: i64,
}

/// PostgreSQL: a fixed number of round trips per batch, whatever the
/// number of rooms in it. Rooms are locked in id order (two nodes' batches
/// never wait for each other in a cycle), seqs assigned under the locks.
async fn append_postgres(
    conn: &mut diesel_async::AsyncPgConnection,
    batch: Vec<NewMessage>,
    now: i64,
) -> Result<Vec<Appended>, DbError> {
    use diesel::sql_types::{Array, BigInt, Text};
    conn.transaction::<_, DbError, _>(async |conn| {
        let mut rooms: Vec<&str> = batch.iter().map(|m| m.room.as_str()).collect();
        rooms.sort_unstable();
        rooms.dedup();
        diesel::sql_query(
            "INSERT INTO rooms (id, last_seq, created_at) \
             SELECT r, 0, $2 FROM unnest($1::text[]) AS r ON CONFLICT (id) DO NOTHING",
        )
        .bind::<Array<Text>, _>(&rooms)
        .bind::<BigInt, _>(now)
        .execute(conn)
        .await?;
        let locked: Vec<RoomSeq> = diesel::sql_query(
            "SELECT id, last_seq FROM rooms WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        )
        .bind::<Array<Text>, _>(&rooms)
        .load(conn)
        .await?;
        let last_seq: HashMap<String, i64> =
            locked.into_iter().map(|r| (r.id, r.last_seq)).collect();

        let mut keyed_rooms = Vec::new();
        let mut keyed_senders = Vec::new();
        let mut keyed_clients = Vec::new();
        let mut system_rooms = Vec::new();
        let mut system_clients = Vec::new();
        for message in &batch {
            let Some(client_id) = message.client_id.as_deref() else {
                continue;
            };
            match message.sender_id.as_deref() {
                Some(sender_id) => {
                    keyed_rooms.push(message.room.as_str());
                    keyed_senders.push(sender_id);
                    keyed_clients.push(client_id);
                }
                None => {
                    system_rooms.push(message.room.as_str());
                    system_clients.push(client_id);
                }
            }
        }
        let mut found: Vec<MessageRow> = Vec::new();
        if !keyed_rooms.is_empty() {
            found.extend(
                diesel::sql_query(
                    "SELECT m.id, m.room, m.seq, m.sender_id, m.sender_name, m.sender_role, \
                     m.client_id, m.body, m.sent_at FROM messages m \
                     JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(room, sender_id, client_id) \
                     ON m.room = k.room AND m.sender_id = k.sender_id AND m.client_id = k.client_id",
                )
                .bind::<Array<Text>, _>(&keyed_rooms)
                .bind::<Array<Text>, _>(&keyed_senders)
                .bind::<Array<Text>, _>(&keyed_clients)
                .load::<MessageRow>(conn)
                .await?,
            );
        }
        if !system_rooms.is_empty() {
            found.extend(
                diesel::sql_query(
                    "SELECT m.id, m.room, m.seq, m.sender_id, m.sender_name, m.sender_role, \
                     m.client_id, m.body, m.sent_at FROM messages m \
                     JOIN unnest($1::text[], $2::text[]) AS k(room, client_id) \
                     ON m.room = k.room AND m.sender_id IS NULL AND m.client_id = k.client_id",
                )
                .bind::<Array<Text>, _>(&system_rooms)
                .bind::<Array<Text>, _>(&system_clients)
                .load::<MessageRow>(conn)
                .await?,
            );
        }
        let stored: HashMap<DedupKey, MessageRow> = found
            .into_iter()
            .filter_map(|row| {
                let key = (row.room.clone(), row.sender_id.clone(), row.client_id.clone()?);
                Some((key, row))
            })
            .collect();

        let assigned = assign(&batch, last_seq, stored, now);
        if !assigned.moved.is_empty() {
            let (ids, seqs): (Vec<&str>, Vec<i64>) = assigned
                .moved
                .iter()
                .map(|(room, seq)| (room.as_str(), *seq))
                .unzip();
            diesel::sql_query(
                "UPDATE rooms SET last_seq = v.seq \
                 FROM unnest($1::text[], $2::bigint[]) AS v(id, seq) WHERE rooms.id = v.id",
            )
            .bind::<Array<Text>, _>(&ids)
            .bind::<Array<BigInt>, _>(&seqs)
            .execute(conn)
            .await?;
        }
        // Bounded chunks stay far below the limit of bound parameters.
        for chunk in assigned.new_rows.chunks(1000) {
            diesel::insert_into(messages::table)
                .values(chunk)
                .execute(conn)
                .await?;
        }
        Ok(assigned.results)
    })
    .await
}

impl Db {
    /// Stores a batch of messages in one transaction (group commit).
    /// Every message is answered in input order, duplicates included.
    pub async fn append_messages(&self, batch: Vec<NewMessage>) -> Result<Vec<Appended>, DbError> {
        let now = crate::time::now_ms();
        match self {
            Db::Sqlite(pool, gate) => {
                let mut pooled = pool.get().await?;
                let _turn = gate.lock().await;
                Ok(pooled
                    .spawn_blocking(move |conn| sqlite_append::append_sqlite(conn, &batch, now))
                    .await?)
            }
            Db::Postgres(pool) => {
                let mut pooled = pool.get().await?;
                append_postgres(&mut pooled, batch, now).await
            }
        }
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
