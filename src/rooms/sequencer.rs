//! The sequencer stores chat messages: a writer task takes every pending
//! append, commits them in one transaction (group commit), answers each
//! sender with its ack, then publishes the committed messages for fan-out.
//!
//! While a transaction is in flight the next batch accumulates, so under
//! load batches grow by themselves. On PostgreSQL one transaction is worked
//! by one backend process, one core: when a commit is slow, the appends
//! waiting for other rooms get a commit of their own beside it, up to
//! `database.writers` at once. A room is never in two commits at once, so
//! its messages are stored and published in order.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Recipient;
use bytestring::ByteString;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::db::messages::views::entry_frame;
use crate::db::messages::{Appended, Entry, EntryContext, NewMessage};
use crate::db::models::MessageRow;
use crate::db::{Db, DbError};
use crate::domain::chat::ChatRefusal;
use crate::error::AppError;
use crate::metrics::Metrics;

/// A committed entry (a message or a change to one) and its frame,
/// serialised once.
#[derive(Debug)]
pub struct StoredMessage {
    pub row: MessageRow,
    pub context: EntryContext,
    pub frame: ByteString,
    /// When this node had it (committed here or arrived from another node).
    pub known_since: Instant,
}

impl StoredMessage {
    pub fn new(entry: Entry) -> Arc<Self> {
        let frame = entry_frame(&entry);
        Arc::new(StoredMessage {
            row: entry.row,
            context: entry.context,
            frame,
            known_since: Instant::now(),
        })
    }
}

/// Why an append was not stored.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    /// A change the room's state refused (not the author, deleted, ...).
    #[error(transparent)]
    Refused(ChatRefusal),
    #[error(transparent)]
    Store(Arc<DbError>),
}

impl From<AppendError> for AppError {
    fn from(error: AppendError) -> Self {
        match error {
            AppendError::Refused(refusal) => refusal.into(),
            AppendError::Store(error) => AppError::internal(anyhow::anyhow!("{error}")),
        }
    }
}

/// Committed messages, in seq order per room, for fan-out.
#[derive(actix::Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Committed(pub Vec<Arc<StoredMessage>>);

/// The outcome of a [`Sequencer::submit`], sent to the submitter.
#[derive(actix::Message, Debug)]
#[rtype(result = "()")]
pub struct StoreOutcome {
    /// What the submitter attached (the frame's `ref`).
    pub reference: Option<String>,
    pub result: Result<Appended, AppendError>,
}

/// Where an append's outcome goes.
enum Reply {
    Waiting(oneshot::Sender<Result<Appended, AppendError>>),
    /// A message to an actor: a socket with many sends in flight holds no
    /// future per send.
    Actor(Recipient<StoreOutcome>, Option<String>),
}

impl Reply {
    fn send(self, result: Result<Appended, AppendError>) {
        match self {
            Reply::Waiting(sender) => {
                let _ = sender.send(result);
            }
            Reply::Actor(recipient, reference) => {
                recipient.do_send(StoreOutcome { reference, result })
            }
        }
    }
}

// Appends are nearly every request: boxing them would add an allocation
// per message to spare the rare flush a few hundred bytes.
#[allow(clippy::large_enum_variant)]
enum Request {
    Append {
        message: NewMessage,
        reply: Reply,
    },
    /// Answered once everything queued before it is committed.
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct Sequencer {
    requests: mpsc::Sender<Request>,
}

/// Commits start at least this far apart. Each durable commit costs the
/// same (an fsync on SQLite, a WAL flush and a round trip on PostgreSQL)
/// whatever it carries; a short pause under load lets one commit carry
/// many messages, at the price of at most this much ack latency. An idle
/// store commits a lone message at once.
const COMMIT_INTERVAL: Duration = Duration::from_millis(5);

/// A commit in flight longer than this is slow: the appends waiting behind
/// it for other rooms get a commit of their own (up to `writers` at once).
/// Below it one commit at a time carries everything, in the largest
/// batches, for the least work per message.
const SLOW_COMMIT: Duration = Duration::from_millis(10);

/// How many appends may wait for the store before senders are refused.
const QUEUE_CAPACITY: usize = 65_536;

impl Sequencer {
    /// Spawns the writer task on the current runtime; it keeps up to
    /// `writers` commits in flight (at least one).
    pub fn start(
        db: Db,
        max_batch: usize,
        writers: usize,
        publish: Recipient<Committed>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (requests, inbox) = mpsc::channel(QUEUE_CAPACITY);
        let writer = Writer {
            db,
            max_batch: max_batch.max(1),
            max_in_flight: writers.max(1),
            publish,
            metrics,
        };
        tokio::spawn(writer.run(inbox));
        Sequencer { requests }
    }

    /// Stores a message; returns once it is committed (or was already).
    pub async fn append(&self, message: NewMessage) -> Result<Appended, AppError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Append {
                message,
                reply: Reply::Waiting(reply),
            })
            .await
            .map_err(|_| AppError::internal(anyhow::anyhow!("sequencer stopped")))?;
        match answer.await {
            Ok(Ok(appended)) => Ok(appended),
            Ok(Err(error)) => Err(error.into()),
            Err(_) => Err(AppError::internal(anyhow::anyhow!(
                "sequencer dropped the append"
            ))),
        }
    }

    /// Queues a message without waiting; the outcome is sent to `notify`.
    /// A full queue (the store far behind) is refused at once.
    pub fn submit(
        &self,
        message: NewMessage,
        notify: Recipient<StoreOutcome>,
        reference: Option<String>,
    ) -> Result<(), AppError> {
        self.requests
            .try_send(Request::Append {
                message,
                reply: Reply::Actor(notify, reference),
            })
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => AppError::RateLimited {
                    retry_after_ms: 100,
                },
                mpsc::error::TrySendError::Closed(_) => {
                    AppError::internal(anyhow::anyhow!("sequencer stopped"))
                }
            })
    }

    /// Waits until every append queued so far is committed.
    pub async fn flush(&self) {
        let (done, finished) = oneshot::channel();
        if self.requests.send(Request::Flush(done)).await.is_ok() {
            let _ = finished.await;
        }
    }
}

/// An append waiting for its commit, numbered in arrival order.
struct Queued {
    number: u64,
    message: NewMessage,
    reply: Reply,
}

/// A commit in flight: the rooms it holds and its first append's number.
struct InFlight {
    rooms: Vec<String>,
    first: u64,
    started: Instant,
}

struct Writer {
    db: Db,
    max_batch: usize,
    max_in_flight: usize,
    publish: Recipient<Committed>,
    metrics: Arc<Metrics>,
}

impl Writer {
    /// Takes appends in arrival order and commits them in batches. A room
    /// is in at most one commit in flight, and its appends leave the queue
    /// in order: each room's messages are stored, acked and published in
    /// the order they came, whatever runs beside them.
    async fn run(self, mut inbox: mpsc::Receiver<Request>) {
        let mut queue: VecDeque<Queued> = VecDeque::new();
        let mut arrived: u64 = 0;
        // (appends that arrived before it, answer)
        let mut flushes: Vec<(u64, oneshot::Sender<()>)> = Vec::new();
        let mut commits: JoinSet<()> = JoinSet::new();
        let mut in_flight: HashMap<tokio::task::Id, InFlight> = HashMap::new();
        let mut busy: HashSet<String> = HashSet::new();
        let mut last_start: Option<Instant> = None;
        // Everything queued is for rooms in flight: no commit can start until
        // one ends or an append for another room comes (no rescan per append).
        let mut stalled = false;
        let mut open = true;
        // Appends are taken off the channel only this far ahead: past it the
        // channel fills and senders are refused (`rate_limited`).
        let lookahead = self.max_batch * self.max_in_flight;
        loop {
            while open && queue.len() < lookahead {
                match inbox.try_recv() {
                    Ok(request) => {
                        stalled &= !accept(request, &busy, &mut queue, &mut flushes, &mut arrived)
                    }
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            let unfinished = queue
                .front()
                .map(|q| q.number)
                .into_iter()
                .chain(in_flight.values().map(|c| c.first))
                .min()
                .unwrap_or(arrived);
            let (answered, waiting) = std::mem::take(&mut flushes)
                .into_iter()
                .partition(|(before, _)| *before <= unfinished);
            flushes = waiting;
            for (_, done) in answered {
                let _ = done.send(());
            }

            let now = Instant::now();
            let start_at = if stalled {
                None
            } else {
                self.next_start(&queue, &in_flight, last_start, now)
            };
            if start_at.is_some_and(|at| at <= now) {
                let batch = take_batch(&mut queue, &busy, self.max_batch);
                stalled = batch.is_empty();
                if !batch.is_empty() {
                    let rooms: Vec<String> = batch
                        .iter()
                        .map(|q| q.message.room.clone())
                        .collect::<HashSet<_>>()
                        .into_iter()
                        .collect();
                    busy.extend(rooms.iter().cloned());
                    let first = batch.iter().map(|q| q.number).min().unwrap_or(arrived);
                    let (db, publish, metrics) =
                        (self.db.clone(), self.publish.clone(), self.metrics.clone());
                    let batch: Vec<Pending> =
                        batch.into_iter().map(|q| (q.message, q.reply)).collect();
                    let handle =
                        commits.spawn(async move { commit(&db, batch, &publish, &metrics).await });
                    in_flight.insert(
                        handle.id(),
                        InFlight {
                            rooms,
                            first,
                            started: now,
                        },
                    );
                    last_start = Some(now);
                    continue;
                }
            }
            if !open && queue.is_empty() && commits.is_empty() {
                break;
            }
            let wake = start_at.unwrap_or_else(|| now + Duration::from_secs(3600));
            tokio::select! {
                Some(done) = commits.join_next_with_id() => {
                    let id = match done {
                        Ok((id, ())) => id,
                        Err(error) => {
                            tracing::error!(%error, "a commit task failed");
                            error.id()
                        }
                    };
                    if let Some(finished) = in_flight.remove(&id) {
                        for room in finished.rooms {
                            busy.remove(&room);
                        }
                    }
                    stalled = false;
                }
                request = inbox.recv(), if open && queue.len() < lookahead => match request {
                    Some(request) => {
                        stalled &= !accept(request, &busy, &mut queue, &mut flushes, &mut arrived)
                    }
                    None => open = false,
                },
                _ = tokio::time::sleep_until(wake.into()), if start_at.is_some() => {}
            }
        }
        for (_, done) in flushes {
            let _ = done.send(());
        }
    }

    /// When the next commit may start, if one should.
    fn next_start(
        &self,
        queue: &VecDeque<Queued>,
        in_flight: &HashMap<tokio::task::Id, InFlight>,
        last_start: Option<Instant>,
        now: Instant,
    ) -> Option<Instant> {
        if queue.is_empty() || in_flight.len() >= self.max_in_flight {
            return None;
        }
        let spaced = last_start.map_or(now, |at| at + COMMIT_INTERVAL);
        let Some(oldest) = in_flight.values().map(|c| c.started).min() else {
            // Nothing in flight: at once when a batch is full, else once
            // commits are far enough apart (at once when idle).
            return Some(if queue.len() >= self.max_batch {
                now
            } else {
                spaced
            });
        };
        // Another commit beside a slow one, for rooms it does not hold.
        Some(spaced.max(oldest + SLOW_COMMIT))
    }
}

/// Queues a request; true when it is an append for a room no commit in
/// flight holds.
fn accept(
    request: Request,
    busy: &HashSet<String>,
    queue: &mut VecDeque<Queued>,
    flushes: &mut Vec<(u64, oneshot::Sender<()>)>,
    arrived: &mut u64,
) -> bool {
    match request {
        Request::Append { message, reply } => {
            let free = !busy.contains(&message.room);
            queue.push_back(Queued {
                number: *arrived,
                message,
                reply,
            });
            *arrived += 1;
            free
        }
        Request::Flush(done) => {
            flushes.push((*arrived, done));
            false
        }
    }
}

/// Up to `max_batch` appends in arrival order, skipping rooms held by a
/// commit in flight; once a room has an append left behind, its later
/// appends stay behind too (its order holds).
fn take_batch(
    queue: &mut VecDeque<Queued>,
    busy: &HashSet<String>,
    max_batch: usize,
) -> Vec<Queued> {
    let mut batch = Vec::new();
    let mut held: HashSet<String> = HashSet::new();
    let mut kept = VecDeque::with_capacity(queue.len());
    for queued in queue.drain(..) {
        let room = queued.message.room.as_str();
        if batch.len() < max_batch && !busy.contains(room) && !held.contains(room) {
            batch.push(queued);
        } else {
            if !held.contains(room) {
                held.insert(room.to_owned());
            }
            kept.push_back(queued);
        }
    }
    *queue = kept;
    batch
}

type Pending = (NewMessage, Reply);

async fn commit(db: &Db, batch: Vec<Pending>, publish: &Recipient<Committed>, metrics: &Metrics) {
    let started = Instant::now();
    let (messages, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    let size = messages.len();
    let results: Vec<Result<Appended, AppendError>> =
        match db.append_messages(messages.clone()).await {
            Ok(outcomes) => outcomes
                .into_iter()
                .map(|o| o.map_err(AppendError::Refused))
                .collect(),
            // One bad row must not sink the others: retry each on its own.
            Err(error) if size > 1 => {
                tracing::warn!(%error, size, "batch append failed; retrying one by one");
                let mut results = Vec::with_capacity(size);
                for message in messages {
                    results.push(match db.append_messages(vec![message]).await {
                        Ok(mut one) => one.remove(0).map_err(AppendError::Refused),
                        Err(error) => Err(AppendError::Store(Arc::new(error))),
                    });
                }
                results
            }
            Err(error) => vec![Err(AppendError::Store(Arc::new(error)))],
        };
    metrics.store_batch_size.observe(size as f64);
    metrics
        .store_commit_seconds
        .observe(started.elapsed().as_secs_f64());
    let mut committed = Vec::new();
    for (result, reply) in results.into_iter().zip(replies) {
        if let Ok(appended) = &result {
            if !appended.duplicate {
                committed.push(StoredMessage::new(appended.entry()));
            }
        }
        if let Err(AppendError::Store(error)) = &result {
            tracing::error!(%error, "message not stored");
        }
        reply.send(result);
    }
    metrics.messages_stored.inc_by(committed.len() as u64);
    if !committed.is_empty() {
        publish.do_send(Committed(committed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(number: u64, room: &str) -> Queued {
        let (reply, _) = oneshot::channel();
        Queued {
            number,
            message: NewMessage {
                id: None,
                room: room.to_owned(),
                sender_id: Some("u".into()),
                sender_name: "U".into(),
                sender_role: "client".into(),
                client_id: Some(format!("c{number}")),
                body: "b".into(),
                action: crate::db::messages::Action::MESSAGE,
            },
            reply: Reply::Waiting(reply),
        }
    }

    fn numbers(queue: impl IntoIterator<Item = Queued>) -> Vec<u64> {
        queue.into_iter().map(|q| q.number).collect()
    }

    #[test]
    fn a_batch_skips_rooms_in_flight_and_keeps_each_rooms_order() {
        let rooms = ["a", "b", "a", "c", "b"];
        let mut queue: VecDeque<Queued> = rooms
            .iter()
            .enumerate()
            .map(|(n, room)| queued(n as u64, room))
            .collect();
        let busy: HashSet<String> = ["b".to_owned()].into();
        let batch = take_batch(&mut queue, &busy, 10);
        assert_eq!(numbers(batch), [0, 2, 3]);
        assert_eq!(numbers(queue), [1, 4]);
    }

    #[test]
    fn a_room_cut_by_the_batch_size_waits_whole() {
        let rooms = ["a", "b", "a", "b"];
        let mut queue: VecDeque<Queued> = rooms
            .iter()
            .enumerate()
            .map(|(n, room)| queued(n as u64, room))
            .collect();
        let first = take_batch(&mut queue, &HashSet::new(), 1);
        assert_eq!(numbers(first), [0]);
        // `a` is now in flight; `b` goes, and `a`'s second append waits.
        let busy: HashSet<String> = ["a".to_owned()].into();
        let second = take_batch(&mut queue, &busy, 10);
        assert_eq!(numbers(second), [1, 3]);
        assert_eq!(numbers(queue), [2]);
    }
}
