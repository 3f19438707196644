//! The embedded default: SQLite in WAL mode through sqlx.

use std::str::FromStr;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::sql::impl_sql_store;
use super::*;

pub struct SqliteStore {
    pool: SqlitePool,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl SqliteStore {
    /// Opens (creating the file and its folder when missing) and applies migrations.
    pub async fn connect(database_url: &str, pool: &PoolSettings) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(database_url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(5))
            .foreign_keys(true);
        if let Some(dir) = options.get_filename().parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        }
        // A file on this machine does not go away like a server: no ping before each use.
        let pool = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(pool.max_connections)
            .acquire_timeout(pool.acquire_timeout)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await.map_err(|e| StoreError::Database(e.to_string()))?;
        Ok(Self { pool })
    }
}

/// IMMEDIATE takes the write lock up front: a deferred read-then-write transaction could deadlock
/// against another writer instead of waiting on the busy timeout.
async fn begin_immediate(pool: &SqlitePool) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
    pool.begin_with("BEGIN IMMEDIATE").await
}

#[async_trait]
impl Readiness for SqliteStore {
    async fn ready(&self) -> StoreResult<()> {
        migrations_applied(&self.pool, &MIGRATOR).await
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
