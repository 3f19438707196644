//! PostgreSQL, for several stateless instances behind one database.

use std::str::FromStr;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Row};

use super::sql::impl_sql_store;
use super::sql_outbound::impl_outbound_store;
use super::sql_sessions::impl_session_store;
use super::sql_sync::impl_sync_store;
use super::*;

pub struct PostgresStore {
    pool: PgPool,
    /// Tasks waiting in `writer` for a connection (the metrics' pool waiters).
    waiting: std::sync::atomic::AtomicU32,
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl PostgresStore {
    /// Connects and applies migrations (sqlx takes an advisory lock, so instances starting together
    /// migrate once).
    pub async fn connect(database_url: &str, pool: &PoolSettings) -> StoreResult<Self> {
        let options = PgConnectOptions::from_str(database_url)?.application_name("wearlink");
        let pool = PgPoolOptions::new()
            .max_connections(pool.max_connections)
            .acquire_timeout(pool.acquire_timeout)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await.map_err(|e| StoreError::Database(e.to_string()))?;
        Ok(Self { pool, waiting: Default::default() })
    }

    /// Reads and writes share one pool: the server runs them side by side.
    fn reader(&self) -> &PgPool {
        &self.pool
    }

    async fn writer(&self) -> StoreResult<PoolConnection<Postgres>> {
        let _waiting = Waiting::new(&self.waiting);
        Ok(self.pool.acquire().await?)
    }
}

/// Counts a task waiting for a connection for as long as it waits (or until it is cancelled).
struct Waiting<'a>(&'a std::sync::atomic::AtomicU32);

impl<'a> Waiting<'a> {
    fn new(counter: &'a std::sync::atomic::AtomicU32) -> Self {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

async fn begin(connection: &mut PgConnection) -> Result<sqlx::Transaction<'_, Postgres>, sqlx::Error> {
    connection.begin().await
}

#[async_trait]
impl Backend for PostgresStore {
    async fn ready(&self) -> StoreResult<()> {
        migrations_applied(&self.pool, &MIGRATOR).await
    }

    /// Two: while one batch waits for its commit's WAL flush, the next one is written. Measured
    /// (bench/run.sh, 2 cores): connect 7,700/s with one, 10,300/s with two, 8,100/s with five
    /// (half the pool) and a longer tail, the cores then busy with more backends.
    fn parallel_writes(&self) -> usize {
        2
    }

    fn pool_stats(&self) -> PoolStats {
        PoolStats {
            size: self.pool.size(),
            idle: self.pool.num_idle() as u32,
            max: self.pool.options().get_max_connections(),
            waiting: self.waiting.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

impl_sql_store!(
    store: PostgresStore,
    db: sqlx::Postgres,
    row: PgRow,
    begin_write: begin,
    lock_rows: " FOR UPDATE",
    skip_locked: " FOR UPDATE SKIP LOCKED",
);

impl_sync_store!(
    store: PostgresStore,
    db: sqlx::Postgres,
    row: PgRow,
    begin_write: begin,
    lock_rows: " FOR UPDATE",
    skip_locked: " FOR UPDATE SKIP LOCKED",
);

impl_outbound_store!(
    store: PostgresStore,
    db: sqlx::Postgres,
    row: PgRow,
    begin_write: begin,
    lock_rows: " FOR UPDATE",
    skip_locked: " FOR UPDATE SKIP LOCKED",
);

impl_session_store!(store: PostgresStore, row: PgRow);
