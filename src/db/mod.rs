//! Persistence: one Diesel schema over SQLite (embedded default) and
//! PostgreSQL (production), both through diesel-async and deadpool so no
//! query blocks an actix thread.
//!
//! Queries are written once and expanded for each backend by [`db_run!`]
//! (the approach vaultwarden takes): Diesel's query types are tied to a
//! backend, and a macro is far lighter than generic bounds over both.

pub mod announcements;
pub mod bookings;
pub mod client_reads;
pub mod email;
pub mod idempotency;
pub mod messages;
pub mod models;
pub mod notifications;
pub mod payments;
pub mod privacy;
pub mod push;
pub mod reminders;
pub mod schema;
pub mod support;
pub mod tls;
pub mod users;

use std::path::Path;
use std::time::Duration;

use diesel::SqliteConnection;
use diesel_async::pooled_connection::deadpool::{Pool, PoolError};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use futures_util::FutureExt;
use secrecy::{ExposeSecret, SecretString};

pub type SqliteConn = SyncConnectionWrapper<SqliteConnection, DetachedBlocking>;

/// Runs SQLite calls on tokio's blocking pool and, unlike diesel-async's
/// default, lets a call finish by itself when the future awaiting it is
/// dropped (a socket closing mid-query). The default then blocks the
/// dropping thread, which panics on the current-thread runtimes actix runs
/// on. Detaching is safe: the connection sits behind a mutex that the next
/// call on it waits for.
pub struct DetachedBlocking(tokio::runtime::Handle);

impl diesel_async::sync_connection_wrapper::SpawnBlocking for DetachedBlocking {
    fn spawn_blocking<'a, R>(
        &mut self,
        task: impl FnOnce() -> R + Send + 'static,
    ) -> futures_util::future::BoxFuture<
        'a,
        Result<R, Box<dyn std::error::Error + Send + Sync + 'static>>,
    >
    where
        R: Send + 'static,
    {
        let running = self.0.spawn_blocking(task);
        async move { running.await.map_err(Box::from) }.boxed()
    }

    /// One runtime for all SQLite calls, living as long as the process, so
    /// a connection made on one actix worker thread outlives it safely.
    fn get_runtime() -> Self {
        static BLOCKING: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
        let runtime = BLOCKING.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("sqlite")
                .build()
                .expect("start the SQLite runtime")
        });
        DetachedBlocking(runtime.handle().clone())
    }
}

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Serialises migrations of several nodes starting at once.
const MIGRATION_LOCK_ID: i64 = 0x006d_6978_726f_6f6d;

/// Per-connection SQLite settings: WAL so readers never block the writer,
/// `synchronous=FULL` because an ack promises the message is durable. The
/// busy timeout comes first: setting the journal mode takes a lock, and
/// without a timeout a connection opened while another writes failed at
/// once ("database is locked", a 503 for the request that opened it).
const SQLITE_PRAGMAS: &str = "PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL; \
     PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 10000; \
     PRAGMA cache_size = -8000; PRAGMA mmap_size = 268435456;";

/// Tries at opening a pooled SQLite connection (see `Db::connect`).
const SQLITE_OPEN_ATTEMPTS: u64 = 5;

async fn open_sqlite(path: &str) -> Result<SqliteConn, diesel::ConnectionError> {
    let mut conn = SqliteConn::establish(path).await?;
    conn.batch_execute(SQLITE_PRAGMAS)
        .await
        .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
    Ok(conn)
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database pool: {0}")]
    Pool(#[from] PoolError),
    #[error("database query: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("database connection: {0}")]
    Connection(#[from] diesel::ConnectionError),
    #[error("database migration: {0}")]
    Migration(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(
        "database.url points at a transaction pooler ({0}): migrations hold a session-level \
         advisory lock and statements are prepared per connection, which a transaction pooler \
         breaks; use the direct connection or the session pooler (Supabase: port 5432)"
    )]
    TransactionPooler(String),
}

impl DbError {
    pub fn is_unique_violation(&self) -> bool {
        matches!(
            self,
            DbError::Query(diesel::result::Error::DatabaseError(
                diesel::result::DatabaseErrorKind::UniqueViolation,
                _
            ))
        )
    }
}

/// How the connection pool is used (for `/metrics`).
#[derive(Debug, Clone, Copy)]
pub struct PoolStatus {
    pub size: usize,
    pub idle: usize,
    pub waiting: usize,
}

/// A pool of connections to the configured backend.
#[derive(Clone)]
pub enum Db {
    Postgres(Pool<AsyncPgConnection>),
    Sqlite(Pool<SqliteConn>, WriteGate),
}

/// SQLite has one writer at a time, and a writer that finds the lock taken
/// sleeps in growing steps (up to 100 ms) before it tries again. The two
/// bulk writers, the message store and the notifier's email items, take
/// turns through this first-come-first-served gate instead: a chat append
/// waits for at most one chunk of items, never for a sleeping retry.
pub type WriteGate = std::sync::Arc<tokio::sync::Mutex<()>>;

/// Runs `$body` with `$conn` bound to a pooled connection of whichever
/// backend is configured. `?` inside converts into the caller's error type.
#[macro_export]
macro_rules! db_run {
    // `$gated`: on SQLite, take a turn at the write gate first. (This arm
    // comes first: `@turn` is not an expression the other could start on.)
    (@turn $gated:expr, $db:expr, |$conn:ident| $body:expr) => {{
        #[allow(unused_imports)]
        use diesel::prelude::*;
        #[allow(unused_imports)]
        use diesel_async::RunQueryDsl;
        match $db {
            $crate::db::Db::Postgres(pool) => {
                let mut pooled = pool.get().await.map_err($crate::db::DbError::from)?;
                let $conn = &mut *pooled;
                $body
            }
            $crate::db::Db::Sqlite(pool, gate) => {
                let mut pooled = pool.get().await.map_err($crate::db::DbError::from)?;
                let _turn = if $gated { Some(gate.lock().await) } else { None };
                let $conn = &mut *pooled;
                $body
            }
        }
    }};
    ($db:expr, |$conn:ident| $body:expr) => {
        $crate::db_run!(@turn false, $db, |$conn| $body)
    };
}

/// [`db_run!`] for a write that a client's connection causes (a profile
/// mirrored at `auth`): on SQLite it takes its turn at the [`WriteGate`]
/// like the bulk writers, instead of sleeping in `busy_timeout` retries
/// that would make a chat append wait behind it.
#[macro_export]
macro_rules! db_write {
    ($db:expr, |$conn:ident| $body:expr) => {
        $crate::db_run!(@turn true, $db, |$conn| $body)
    };
}

enum Backend<'a> {
    Postgres(&'a str),
    Sqlite(&'a str),
}

fn backend(url: &str) -> Backend<'_> {
    match url.strip_prefix("sqlite://") {
        Some(path) => Backend::Sqlite(path),
        None => Backend::Postgres(url),
    }
}

impl Db {
    /// Connects, creating the SQLite file (and its folder) when missing.
    pub async fn connect(url: &SecretString, pool_size: usize) -> Result<Self, DbError> {
        match backend(url.expose_secret()) {
            Backend::Postgres(url) => {
                let target = tls::PgTarget::from_url(url)?;
                let mut config = ManagerConfig::default();
                config.recycling_method = RecyclingMethod::Fast;
                let setup_target = target.clone();
                config.custom_setup = Box::new(move |_url| {
                    let target = setup_target.clone();
                    async move { target.connect_for_pool().await }.boxed()
                });
                let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
                    target.url(),
                    config,
                );
                let pool = Pool::builder(manager)
                    .max_size(pool_size)
                    .wait_timeout(Some(Duration::from_secs(10)))
                    .create_timeout(Some(Duration::from_secs(10)))
                    .runtime(deadpool::Runtime::Tokio1)
                    .build()
                    .map_err(|e| DbError::Migration(e.to_string()))?;
                Ok(Db::Postgres(pool))
            }
            Backend::Sqlite(path) => {
                if let Some(dir) = Path::new(path).parent() {
                    if !dir.as_os_str().is_empty() {
                        std::fs::create_dir_all(dir)
                            .map_err(|e| DbError::Migration(format!("create {dir:?}: {e}")))?;
                    }
                }
                let mut config = ManagerConfig::default();
                config.recycling_method = RecyclingMethod::Fast;
                config.custom_setup = Box::new(|path| {
                    async move {
                        // Opening a WAL database races with other
                        // connections setting up its shared memory: SQLite
                        // can answer "unable to open database file" (or
                        // "locked") for a moment. Tried a few times.
                        let mut attempt = 0;
                        loop {
                            attempt += 1;
                            match open_sqlite(path).await {
                                Ok(conn) => return Ok(conn),
                                Err(error) if attempt < SQLITE_OPEN_ATTEMPTS => {
                                    tracing::debug!(%error, attempt, "opening SQLite again");
                                    tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
                                }
                                Err(error) => return Err(error),
                            }
                        }
                    }
                    .boxed()
                });
                let manager =
                    AsyncDieselConnectionManager::<SqliteConn>::new_with_config(path, config);
                let pool = Pool::builder(manager)
                    .max_size(pool_size)
                    .wait_timeout(Some(Duration::from_secs(10)))
                    .runtime(deadpool::Runtime::Tokio1)
                    .build()
                    .map_err(|e| DbError::Migration(e.to_string()))?;
                Ok(Db::Sqlite(pool, WriteGate::default()))
            }
        }
    }

    /// Connections made, idle ones among them, and tasks waiting for one.
    pub fn pool_status(&self) -> PoolStatus {
        let status = match self {
            Db::Postgres(pool) => pool.status(),
            Db::Sqlite(pool, _) => pool.status(),
        };
        PoolStatus {
            size: status.size,
            idle: status.available,
            waiting: status.waiting,
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self {
            Db::Postgres(_) => "postgres",
            Db::Sqlite(..) => "sqlite",
        }
    }

    /// Applies pending migrations (on a blocking thread: the migration
    /// harness is synchronous).
    pub async fn migrate(url: &SecretString) -> Result<Vec<String>, DbError> {
        let migration = match backend(url.expose_secret()) {
            Backend::Sqlite(path) => Migration::Sqlite(path.to_owned()),
            // Connected here, with the URL's TLS, and handed to the
            // (synchronous) migration harness.
            Backend::Postgres(url) => {
                Migration::Postgres(Box::new(tls::PgTarget::from_url(url)?.connect().await?))
            }
        };
        tokio::task::spawn_blocking(move || run_migrations(migration))
            .await
            .map_err(|e| DbError::Migration(e.to_string()))?
    }

    /// A trivial round trip, for `/readyz`.
    pub async fn ping(&self) -> Result<(), DbError> {
        db_run!(self, |conn| {
            conn.batch_execute("SELECT 1").await?;
            Ok(())
        })
    }
}

enum Migration {
    Sqlite(String),
    Postgres(Box<AsyncPgConnection>),
}

fn run_migrations(migration: Migration) -> Result<Vec<String>, DbError> {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let migration_error =
        |e: Box<dyn std::error::Error + Send + Sync>| DbError::Migration(e.to_string());
    let applied = match migration {
        Migration::Sqlite(path) => {
            let path = path.as_str();
            if let Some(dir) = Path::new(path).parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| DbError::Migration(format!("create {dir:?}: {e}")))?;
                }
            }
            let mut conn = SqliteConnection::establish(path)?;
            conn.batch_execute(SQLITE_PRAGMAS)?;
            conn.run_pending_migrations(SQLITE_MIGRATIONS)
                .map_err(migration_error)?
                .iter()
                .map(ToString::to_string)
                .collect()
        }
        Migration::Postgres(conn) => {
            use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
            let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::from(*conn);
            SimpleConnection::batch_execute(
                &mut conn,
                &format!("SELECT pg_advisory_lock({MIGRATION_LOCK_ID})"),
            )?;
            let result = conn
                .run_pending_migrations(POSTGRES_MIGRATIONS)
                .map(|versions| versions.iter().map(ToString::to_string).collect())
                .map_err(migration_error);
            SimpleConnection::batch_execute(
                &mut conn,
                &format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_ID})"),
            )?;
            result?
        }
    };
    Ok(applied)
}
