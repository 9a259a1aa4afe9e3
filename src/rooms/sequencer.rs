//! The sequencer stores chat messages: a writer task takes every pending
//! append, commits them in one transaction (group commit), answers each
//! sender with its ack, then publishes the committed messages for fan-out.
//!
//! While a transaction is in flight the next batch accumulates, so under
//! load batches grow by themselves. On PostgreSQL one transaction is worked
//! by one backend process, one core: past that, rooms are split between
//! several writers (`database.writers`), each with its own transaction in
//! flight. A room always goes to the same writer, so its messages are
//! stored and published in order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Recipient;
use bytestring::ByteString;
use tokio::sync::{mpsc, oneshot};

use crate::db::messages::{Appended, NewMessage};
use crate::db::models::MessageRow;
use crate::db::Db;
use crate::error::AppError;
use crate::metrics::Metrics;
use crate::ws::frames::message_frame;

/// A committed message and its `message` frame, serialised once.
#[derive(Debug)]
pub struct StoredMessage {
    pub row: MessageRow,
    pub frame: ByteString,
    /// When this node had it (committed here or arrived from another node).
    pub known_since: Instant,
}

impl StoredMessage {
    pub fn new(row: MessageRow) -> Arc<Self> {
        let frame = message_frame(&row);
        Arc::new(StoredMessage {
            row,
            frame,
            known_since: Instant::now(),
        })
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
    pub result: Result<Appended, Arc<crate::db::DbError>>,
}

/// Where an append's outcome goes.
enum Reply {
    Waiting(oneshot::Sender<Result<Appended, Arc<crate::db::DbError>>>),
    /// A message to an actor: a socket with many sends in flight holds no
    /// future per send.
    Actor(Recipient<StoreOutcome>, Option<String>),
}

impl Reply {
    fn send(self, result: Result<Appended, Arc<crate::db::DbError>>) {
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
    /// One queue per writer task; a room's appends always go to the same one.
    writers: Arc<[mpsc::Sender<Request>]>,
}

/// Commits start at least this far apart. Each durable commit costs the
/// same (an fsync on SQLite, a WAL flush and a round trip on PostgreSQL)
/// whatever it carries; a short pause under load lets one commit carry
/// many messages, at the price of at most this much ack latency. An idle
/// store commits a lone message at once.
const COMMIT_INTERVAL: Duration = Duration::from_millis(5);

/// How many appends may wait for the store (all writers together) before
/// senders wait too.
const QUEUE_CAPACITY: usize = 65_536;

impl Sequencer {
    /// Spawns `writers` writer tasks on the current runtime (at least one).
    pub fn start(
        db: Db,
        max_batch: usize,
        writers: usize,
        publish: Recipient<Committed>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let writers = writers.max(1);
        let writers = (0..writers)
            .map(|_| {
                let (requests, inbox) = mpsc::channel(QUEUE_CAPACITY / writers);
                tokio::spawn(run_writer(
                    db.clone(),
                    max_batch.max(1),
                    inbox,
                    publish.clone(),
                    metrics.clone(),
                ));
                requests
            })
            .collect();
        Sequencer { writers }
    }

    /// The writer that stores `room`'s messages.
    fn writer_for(&self, room: &str) -> &mpsc::Sender<Request> {
        if self.writers.len() == 1 {
            return &self.writers[0];
        }
        use std::hash::{BuildHasher, BuildHasherDefault};
        // A fixed hasher: the same room maps to the same writer for the
        // life of the process (any mapping would do, it only must not move).
        let hash = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(room);
        &self.writers[(hash % self.writers.len() as u64) as usize]
    }

    /// Stores a message; returns once it is committed (or was already).
    pub async fn append(&self, message: NewMessage) -> Result<Appended, AppError> {
        let (reply, answer) = oneshot::channel();
        self.writer_for(&message.room)
            .send(Request::Append {
                message,
                reply: Reply::Waiting(reply),
            })
            .await
            .map_err(|_| AppError::internal(anyhow::anyhow!("sequencer stopped")))?;
        match answer.await {
            Ok(Ok(appended)) => Ok(appended),
            Ok(Err(db_error)) => Err(AppError::internal(anyhow::anyhow!("{db_error}"))),
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
        self.writer_for(&message.room)
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
        let mut finished = Vec::with_capacity(self.writers.len());
        for writer in self.writers.iter() {
            let (done, answer) = oneshot::channel();
            if writer.send(Request::Flush(done)).await.is_ok() {
                finished.push(answer);
            }
        }
        for answer in finished {
            let _ = answer.await;
        }
    }
}

async fn run_writer(
    db: Db,
    max_batch: usize,
    mut inbox: mpsc::Receiver<Request>,
    publish: Recipient<Committed>,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(max_batch);
    let mut flushes = Vec::new();
    // When the last commit started: commits are at least `COMMIT_INTERVAL`
    // apart, so under load each one carries more messages.
    let mut last_commit: Option<Instant> = None;
    while let Some(first) = inbox.recv().await {
        let mut next = Some(first);
        loop {
            while let Some(request) = next.take() {
                match request {
                    Request::Append { message, reply } => batch.push((message, reply)),
                    Request::Flush(done) => flushes.push(done),
                }
                if batch.len() < max_batch {
                    next = inbox.try_recv().ok();
                }
            }
            let due = last_commit.map(|at| at + COMMIT_INTERVAL);
            let Some(due) = due.filter(|due| *due > Instant::now() && batch.len() < max_batch)
            else {
                break;
            };
            match tokio::time::timeout_at(due.into(), inbox.recv()).await {
                Ok(Some(request)) => next = Some(request),
                // Closed or due: commit what there is.
                Ok(None) | Err(_) => break,
            }
        }
        if !batch.is_empty() {
            last_commit = Some(Instant::now());
            commit(&db, std::mem::take(&mut batch), &publish, &metrics).await;
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

type Pending = (NewMessage, Reply);

async fn commit(db: &Db, batch: Vec<Pending>, publish: &Recipient<Committed>, metrics: &Metrics) {
    let started = Instant::now();
    let (messages, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    let size = messages.len();
    let results = match db.append_messages(messages.clone()).await {
        Ok(appended) => appended.into_iter().map(Ok).collect(),
        // One bad row must not sink the others: retry each on its own.
        Err(error) if size > 1 => {
            tracing::warn!(%error, size, "batch append failed; retrying one by one");
            let mut results = Vec::with_capacity(size);
            for message in messages {
                results.push(match db.append_messages(vec![message]).await {
                    Ok(mut one) => Ok(one.remove(0)),
                    Err(error) => Err(Arc::new(error)),
                });
            }
            results
        }
        Err(error) => vec![Err(Arc::new(error))],
    };
    metrics.store_batch_size.observe(size as f64);
    metrics
        .store_commit_seconds
        .observe(started.elapsed().as_secs_f64());
    let mut committed = Vec::new();
    for (result, reply) in results.into_iter().zip(replies) {
        if let Ok(appended) = &result {
            if !appended.duplicate {
                committed.push(StoredMessage::new(appended.row.clone()));
            }
        }
        if let Err(error) = &result {
            tracing::error!(%error, "message not stored");
        }
        reply.send(result);
    }
    metrics.messages_stored.inc_by(committed.len() as u64);
    if !committed.is_empty() {
        publish.do_send(Committed(committed));
    }
}
