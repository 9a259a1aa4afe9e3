//! The group-committed append: one transaction per batch assigns each
//! room's gap-free seqs under the room's write lock, answers resends with
//! the stored row, and checks and applies the batch's changes (see
//! [`super::changes`]).

use std::collections::{HashMap, HashSet};

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::changes::{named_messages, Ledger, LedgerWrites};
use super::{Action, Appended, NewMessage, Outcome};
use crate::db::models::{MessageRow, ReactionRow};
use crate::db::schema::{message_reactions, messages};
use crate::db::{Db, DbError};
use crate::domain::chat::{ChatRefusal, EntryKind};

/// The stored row of an entry given its seq: a change keeps no text of its
/// own (an edit's text goes to the message it changes), a reaction keeps
/// its emoji.
pub(super) fn entry_row(entry: &NewMessage, seq: i64, now: i64, id: String) -> MessageRow {
    let (kind, body) = match &entry.action {
        Action::Post { .. } => (EntryKind::Message, entry.body.clone()),
        Action::Edit { .. } => (EntryKind::Edit, String::new()),
        Action::Delete { .. } => (EntryKind::Delete, String::new()),
        Action::React { on: true, .. } => (EntryKind::React, entry.body.clone()),
        Action::React { on: false, .. } => (EntryKind::Unreact, entry.body.clone()),
    };
    let attachments = match &entry.action {
        Action::Post { attachments, .. } if !attachments.is_empty() => {
            Some(serde_json::to_string(attachments).expect("attachments serialise"))
        }
        _ => None,
    };
    MessageRow {
        id,
        room: entry.room.clone(),
        seq,
        sender_id: entry.sender_id.clone(),
        sender_name: entry.sender_name.clone(),
        sender_role: entry.sender_role.clone(),
        client_id: entry.client_id.clone(),
        body,
        sent_at: now,
        kind,
        target_seq: entry.action.target(),
        attachments,
        edited_at: None,
        deleted_at: None,
        reactions: 0,
    }
}

/// The answer to an entry whose `client_id` is stored already: the first
/// ack when it asks the same (a message, or the same change of the same
/// message), else a refusal — a reused id must not silently swallow
/// another request (the HTTP side answers such a key with 409).
fn resend(stored: MessageRow, entry: &NewMessage) -> Outcome {
    let asked = entry_row(entry, stored.seq, stored.sent_at, String::new());
    let same = stored.kind == asked.kind
        && (stored.kind == EntryKind::Message || stored.target_seq == asked.target_seq);
    if same {
        Ok(Appended::duplicate_of(stored))
    } else {
        Err(ChatRefusal::Invalid(format!(
            "`client_id` already names another entry of the room (seq {}); use a fresh one",
            stored.seq
        )))
    }
}

fn new_id(entry: &NewMessage) -> String {
    entry
        .id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

/// Seqs for a batch, given each room's `last_seq` (read under the room's
/// write lock) and the rows already stored under the batch's
/// `(room, sender, client_id)` keys. Pure: both backends share it.
struct Assigned {
    /// One answer per input, in input order.
    results: Vec<Outcome>,
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
    ledger: &mut Ledger,
    now: i64,
) -> Assigned {
    let mut results = Vec::with_capacity(batch.len());
    let mut new_rows = Vec::with_capacity(batch.len());
    let mut moved: Vec<String> = Vec::new();
    let mut moved_rooms: HashSet<&str> = HashSet::new();
    for message in batch {
        let key = dedup_key(message);
        if let Some(existing) = key.as_ref().and_then(|k| stored.get(k)) {
            results.push(resend(existing.clone(), message));
            continue;
        }
        if let Err(refusal) = ledger.check(message, now) {
            results.push(Err(refusal));
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
        let row = entry_row(message, *seq, now, new_id(message));
        let context = ledger.apply(message, &row, now);
        if let Some(key) = key {
            stored.insert(key, row.clone());
        }
        results.push(Ok(Appended {
            row: row.clone(),
            context,
            duplicate: false,
        }));
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

    use super::super::changes::{named_messages, Ledger, LedgerWrites};
    use super::super::{Appended, NewMessage, Outcome};
    use super::{dedup_key, entry_row, new_id, resend, DedupKey};
    use crate::db::models::{MessageRow, NewRoom, ReactionRow};
    use crate::db::schema::{message_reactions, messages, rooms};

    /// SQLite: the whole batch in one call on the blocking thread (not one
    /// thread hop per statement), each statement prepared once and cached.
    /// `BEGIN IMMEDIATE` takes the write lock first, so seqs are assigned
    /// under it and committed with the rows: no gaps, no two writers with
    /// one seq, no ack for an uncommitted row.
    ///
    /// Per message one INSERT, which the unique `(room, sender_id,
    /// client_id)` index turns into nothing for a resend (then the stored
    /// row is read back); per room one read and one update of `last_seq`.
    /// A batch that changes or answers earlier messages reads those first.
    pub(in crate::db::messages) fn append_sqlite(
        conn: &mut diesel::SqliteConnection,
        batch: &[NewMessage],
        now: i64,
    ) -> QueryResult<Vec<Outcome>> {
        conn.immediate_transaction(|conn| {
            let mut ledger = read_named(conn, batch)?;
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
                    results.push(resend(existing.clone(), message));
                    continue;
                }
                // A NULL sender never conflicts in the unique index: look.
                if let (Some((_, None, client_id)), true) = (&key, message.sender_id.is_none()) {
                    if let Some(existing) = stored_duplicate(conn, room, None, client_id)? {
                        in_batch.insert(key.clone().expect("keyed"), existing.clone());
                        results.push(resend(existing, message));
                        continue;
                    }
                }
                if let Err(refusal) = ledger.check(message, now) {
                    // A resend of a stored message is answered as stored,
                    // whatever became of what it answers since.
                    let stored = match &key {
                        Some((_, sender_id, client_id)) => {
                            stored_duplicate(conn, room, sender_id.as_deref(), client_id)?
                        }
                        None => None,
                    };
                    results.push(match stored {
                        Some(existing) => resend(existing, message),
                        None => Err(refusal),
                    });
                    continue;
                }
                let current = &mut seqs.get_mut(room).expect("read above").1;
                let row = entry_row(message, *current + 1, now, new_id(message));
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
                    results.push(resend(existing, message));
                    continue;
                }
                *current += 1;
                let context = ledger.apply(message, &row, now);
                if let Some(key) = key {
                    in_batch.insert(key, row.clone());
                }
                results.push(Ok(Appended {
                    row,
                    context,
                    duplicate: false,
                }));
            }
            for room in rooms_in_order {
                let (read, now_at) = seqs[room];
                if now_at != read {
                    diesel::update(rooms::table.find(room))
                        .set(rooms::last_seq.eq(now_at))
                        .execute(conn)?;
                }
            }
            write_changes(conn, ledger.writes())?;
            Ok(results)
        })
    }

    /// The messages the batch names and their reactions (nothing is read
    /// for plain messages).
    fn read_named(conn: &mut SqliteConnection, batch: &[NewMessage]) -> QueryResult<Ledger> {
        let named = named_messages(batch);
        if named.is_empty() {
            return Ok(Ledger::default());
        }
        let mut rows = Vec::new();
        let mut reactions = Vec::new();
        for (room, seq) in &named {
            rows.extend(
                messages::table
                    .filter(messages::room.eq(room))
                    .filter(messages::seq.eq(seq))
                    .select(MessageRow::as_select())
                    .load(conn)?,
            );
            reactions.extend(
                message_reactions::table
                    .filter(message_reactions::room.eq(room))
                    .filter(message_reactions::seq.eq(seq))
                    .select(ReactionRow::as_select())
                    .load(conn)?,
            );
        }
        Ok(Ledger::new(rows, reactions))
    }

    fn write_changes(conn: &mut SqliteConnection, writes: LedgerWrites) -> QueryResult<()> {
        if writes.is_empty() {
            return Ok(());
        }
        for update in &writes.updates {
            diesel::update(
                messages::table
                    .filter(messages::room.eq(&update.room))
                    .filter(messages::seq.eq(update.seq)),
            )
            .set((
                messages::body.eq(&update.body),
                messages::attachments.eq(&update.attachments),
                messages::edited_at.eq(update.edited_at),
                messages::deleted_at.eq(update.deleted_at),
                messages::reactions.eq(update.reactions),
            ))
            .execute(conn)?;
        }
        for (room, seq) in &writes.reaction_sets {
            diesel::delete(
                message_reactions::table
                    .filter(message_reactions::room.eq(room))
                    .filter(message_reactions::seq.eq(seq)),
            )
            .execute(conn)?;
        }
        if !writes.reactions.is_empty() {
            diesel::insert_into(message_reactions::table)
                .values(&writes.reactions)
                .execute(conn)?;
        }
        Ok(())
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

/// Every column of `messages`, for the raw queries below.
const MESSAGE_COLUMNS: &str = "m.id, m.room, m.seq, m.sender_id, m.sender_name, m.sender_role, \
     m.client_id, m.body, m.sent_at, m.kind, m.target_seq, m.attachments, m.edited_at, \
     m.deleted_at, m.reactions";

/// PostgreSQL: a fixed number of round trips per batch, whatever the
/// number of rooms in it. Rooms are locked in id order (two nodes' batches
/// never wait for each other in a cycle), seqs assigned under the locks.
async fn append_postgres(
    conn: &mut diesel_async::AsyncPgConnection,
    batch: Vec<NewMessage>,
    now: i64,
) -> Result<Vec<Outcome>, DbError> {
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
                diesel::sql_query(format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages m \
                     JOIN unnest($1::text[], $2::text[], $3::text[]) AS k(room, sender_id, client_id) \
                     ON m.room = k.room AND m.sender_id = k.sender_id AND m.client_id = k.client_id"
                ))
                .bind::<Array<Text>, _>(&keyed_rooms)
                .bind::<Array<Text>, _>(&keyed_senders)
                .bind::<Array<Text>, _>(&keyed_clients)
                .load::<MessageRow>(conn)
                .await?,
            );
        }
        if !system_rooms.is_empty() {
            found.extend(
                diesel::sql_query(format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages m \
                     JOIN unnest($1::text[], $2::text[]) AS k(room, client_id) \
                     ON m.room = k.room AND m.sender_id IS NULL AND m.client_id = k.client_id"
                ))
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

        let mut ledger = read_named_postgres(conn, &batch).await?;
        let assigned = assign(&batch, last_seq, stored, &mut ledger, now);
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
        write_changes_postgres(conn, ledger.writes()).await?;
        Ok(assigned.results)
    })
    .await
}

/// The messages the batch names and their reactions, read under the rooms'
/// locks (nothing is read for plain messages).
async fn read_named_postgres(
    conn: &mut diesel_async::AsyncPgConnection,
    batch: &[NewMessage],
) -> Result<Ledger, DbError> {
    use diesel::sql_types::{Array, BigInt, Text};
    let named = named_messages(batch);
    if named.is_empty() {
        return Ok(Ledger::default());
    }
    let (rooms, seqs): (Vec<&str>, Vec<i64>) = named.iter().map(|(r, s)| (r.as_str(), *s)).unzip();
    let rows: Vec<MessageRow> = diesel::sql_query(format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages m \
         JOIN unnest($1::text[], $2::bigint[]) AS k(room, seq) ON m.room = k.room AND m.seq = k.seq"
    ))
    .bind::<Array<Text>, _>(&rooms)
    .bind::<Array<BigInt>, _>(&seqs)
    .load(conn)
    .await?;
    let mut reactions: Vec<ReactionRow> = Vec::new();
    for (room, seq) in &named {
        reactions.extend(
            message_reactions::table
                .filter(message_reactions::room.eq(room))
                .filter(message_reactions::seq.eq(seq))
                .select(ReactionRow::as_select())
                .load(conn)
                .await?,
        );
    }
    Ok(Ledger::new(rows, reactions))
}

async fn write_changes_postgres(
    conn: &mut diesel_async::AsyncPgConnection,
    writes: LedgerWrites,
) -> Result<(), DbError> {
    if writes.is_empty() {
        return Ok(());
    }
    for update in &writes.updates {
        diesel::update(
            messages::table
                .filter(messages::room.eq(&update.room))
                .filter(messages::seq.eq(update.seq)),
        )
        .set((
            messages::body.eq(&update.body),
            messages::attachments.eq(&update.attachments),
            messages::edited_at.eq(update.edited_at),
            messages::deleted_at.eq(update.deleted_at),
            messages::reactions.eq(update.reactions),
        ))
        .execute(conn)
        .await?;
    }
    for (room, seq) in &writes.reaction_sets {
        diesel::delete(
            message_reactions::table
                .filter(message_reactions::room.eq(room))
                .filter(message_reactions::seq.eq(seq)),
        )
        .execute(conn)
        .await?;
    }
    if !writes.reactions.is_empty() {
        diesel::insert_into(message_reactions::table)
            .values(&writes.reactions)
            .execute(conn)
            .await?;
    }
    Ok(())
}

impl Db {
    /// Stores a batch of entries in one transaction (group commit). Every
    /// entry is answered in input order: stored, a duplicate of a stored
    /// message, or a change refused (the others are stored all the same).
    pub async fn append_messages(&self, batch: Vec<NewMessage>) -> Result<Vec<Outcome>, DbError> {
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
}
