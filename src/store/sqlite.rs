//! The embedded default: SQLite in WAL mode through sqlx.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Connection, Row, SqliteConnection, SqlitePool};
use tokio::sync::{Mutex, MutexGuard};

use super::sql::impl_sql_store;
use super::*;

pub struct SqliteStore {
    /// The one connection that writes. SQLite admits one writer at a time anyway; waiting here is a
    /// FIFO queue in the process, where several writing connections would sleep and retry in
    /// SQLite's busy handler, and a pool would ping the connection after every use.
    writer: Mutex<SqliteConnection>,
    /// Read-only connections: in WAL mode readers run beside the writer and see every commit.
    readers: SqlitePool,
    acquire_timeout: Duration,
    _checkpointer: AbortOnDrop,
}

/// How often the WAL is checkpointed off the request path.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// WAL frames (pages) past which the checkpoint waits for the writer so the WAL starts over.
const WAL_FRAMES_MAX: i64 = 10_000;

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl SqliteStore {
    /// Opens (creating the file and its folder when missing) and applies migrations.
    pub async fn connect(database_url: &str, pool: &PoolSettings) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(database_url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        if let Some(dir) = options.get_filename().parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        }
        // Migrations run on a connection of their own (no timeout applies while they do), which
        // then checkpoints the WAL in the background.
        let mut own = SqliteConnection::connect_with(&options).await?;
        MIGRATOR.run(&mut own).await.map_err(|e| StoreError::Database(e.to_string()))?;
        let checkpointer = tokio::spawn(checkpoint_in_background(own)).abort_handle();
        // Checkpoints are the background task's; see `checkpoint_in_background`.
        let options = options.pragma("wal_autocheckpoint", "0");
        let writer = SqliteConnection::connect_with(&options).await?;
        // A file on this machine does not go away like a server: no ping before each use.
        let readers = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(pool.max_connections)
            .acquire_timeout(pool.acquire_timeout)
            .connect_lazy_with(options.read_only(true));
        Ok(Self {
            writer: Mutex::new(writer),
            readers,
            acquire_timeout: pool.acquire_timeout,
            _checkpointer: AbortOnDrop(checkpointer),
        })
    }

    fn reader(&self) -> &SqlitePool {
        &self.readers
    }

    /// Waits (in arrival order) for the writing connection, at most the acquire timeout. A
    /// transaction dropped half-way queues its rollback on the connection before the next use.
    async fn writer(&self) -> StoreResult<MutexGuard<'_, SqliteConnection>> {
        tokio::time::timeout(self.acquire_timeout, self.writer.lock())
            .await
            .map_err(|_| StoreError::Unavailable("timed out waiting for the database writer".into()))
    }
}

/// Copies the WAL into the database on a connection of its own, so a checkpoint's fsyncs never
/// stall a request (SQLite's automatic checkpoint, off on the pool's connections, makes the commit
/// that crosses 1000 WAL pages do the copy and the fsyncs). PASSIVE never blocks the writer; under
/// sustained writes it cannot let the WAL start over, so past `WAL_FRAMES_MAX` frames (~40 MB) a
/// RESTART checkpoint waits for the writer once and the WAL starts over.
async fn checkpoint_in_background(mut connection: SqliteConnection) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let passive: Result<(i64, i64, i64), _> =
            sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(&mut connection).await;
        let result = match passive {
            Ok((_, frames, _)) if frames > WAL_FRAMES_MAX => {
                sqlx::query("PRAGMA wal_checkpoint(RESTART)").execute(&mut connection).await.map(drop)
            }
            other => other.map(drop),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
}

/// IMMEDIATE takes the write lock up front: a deferred read-then-write transaction could deadlock
/// against another writer instead of waiting on the busy timeout.
async fn begin_immediate(
    connection: &mut SqliteConnection,
) -> Result<sqlx::Transaction<'_, sqlx::Sqlite>, sqlx::Error> {
    connection.begin_with("BEGIN IMMEDIATE").await
}

#[async_trait]
impl Readiness for SqliteStore {
    async fn ready(&self) -> StoreResult<()> {
        migrations_applied(&self.readers, &MIGRATOR).await
    }
}

impl_sql_store!(
    store: SqliteStore,
    db: sqlx::Sqlite,
    row: SqliteRow,
    begin_write: begin_immediate,
    lock_rows: "",
    skip_locked: "",
);
