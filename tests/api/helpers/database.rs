//! A database of its own for each test: a SQLite file in a temp dir, or a
//! fresh database on the PostgreSQL server `MIXROOM_TEST_DATABASE_URL`
//! names; removed again when the test ends.

use std::path::PathBuf;
use std::time::Duration;

use mixroom_testkit::database::with_database;
use uuid::Uuid;

/// A database of its own for one test, removed again when dropped.
pub struct Backend {
    url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    SqliteDir(PathBuf),
    PostgresDatabase { admin_url: String, name: String },
}

impl Backend {
    /// A fresh SQLite file in a temp dir of its own.
    pub fn sqlite() -> Backend {
        let dir = std::env::temp_dir().join(format!("mixroom-test-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("create the test's temp dir");
        let url = format!("sqlite://{}", dir.join("chat.db").display());
        Backend {
            url,
            cleanup: Cleanup::SqliteDir(dir),
        }
    }

    /// A fresh database on the server named by `MIXROOM_TEST_DATABASE_URL`,
    /// or `None` when that is unset (a failure with
    /// `MIXROOM_TEST_REQUIRE_SERVICES=1`, so CI cannot skip silently).
    pub fn postgres() -> Option<Backend> {
        let admin_url = match std::env::var("MIXROOM_TEST_DATABASE_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => {
                if std::env::var("MIXROOM_TEST_REQUIRE_SERVICES").as_deref() == Ok("1") {
                    panic!(
                        "MIXROOM_TEST_REQUIRE_SERVICES=1 but MIXROOM_TEST_DATABASE_URL is not set; \
                         set it to a PostgreSQL server the tests may create databases on, \
                         e.g. postgres://postgres@127.0.0.1:5432/postgres"
                    );
                }
                return None;
            }
        };
        let name = format!("mixroom_test_{}", Uuid::new_v4().simple());
        if let Err(error) = run_admin_sql(&admin_url, &format!("CREATE DATABASE {name}")) {
            panic!("could not create database {name} via MIXROOM_TEST_DATABASE_URL: {error}");
        }
        let url = with_database(&admin_url, &name);
        Some(Backend {
            url,
            cleanup: Cleanup::PostgresDatabase { admin_url, name },
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // Best effort: a leftover temp dir or database must not fail a test.
        match &self.cleanup {
            Cleanup::SqliteDir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::PostgresDatabase { admin_url, name } => {
                let _ = run_admin_sql(
                    admin_url,
                    &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                );
            }
        }
    }
}

/// Runs SQL on a thread with its own runtime: callers are inside a test's
/// runtime (or its drop), where blocking on another future is not allowed.
fn run_admin_sql(admin_url: &str, sql: &str) -> Result<(), String> {
    let admin_url = admin_url.to_owned();
    let sql = sql.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let connect = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls);
            let (client, connection) = tokio::time::timeout(Duration::from_secs(10), connect)
                .await
                .map_err(|_| "timed out connecting".to_string())?
                .map_err(|e| e.to_string())?;
            let driver = tokio::spawn(connection);
            let result = client.batch_execute(&sql).await.map_err(|e| e.to_string());
            drop(client);
            let _ = driver.await;
            result
        })
    })
    .join()
    .map_err(|_| "the admin SQL thread panicked".to_string())?
}
