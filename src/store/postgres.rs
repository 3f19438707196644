//! PostgreSQL, for several stateless instances behind one database.

use std::str::FromStr;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions, PgRow};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Row};

use super::sql::impl_sql_store;
use super::sql_outbound::impl_outbound_store;
use super::sql_outbox::impl_outbox_store;
use super::sql_retention::impl_retention_store;
use super::sql_sessions::impl_session_store;
use super::sql_sync::impl_sync_store;
use super::*;

pub struct PostgresStore {
    pool: PgPool,
    /// Tasks waiting in `writer` for a connection (the metrics' pool waiters).
    waiting: std::sync::atomic::AtomicU32,
    options: PgConnectOptions,
    /// The change listeners started (`listen_for_changes`), stopped with the store.
    listeners: std::sync::Mutex<Vec<AbortOnDrop>>,
}

/// The channel the database announces cached data's changes on (see migration 0008).
pub const CHANGES_CHANNEL: &str = "wearlink_cache";

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&pool).await.map_err(|e| StoreError::Database(e.to_string()))?;
        Ok(Self { pool, options, listeners: Default::default(), waiting: Default::default() })
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

    fn listen_for_changes(&self, on_notice: std::sync::Arc<dyn Fn(ChangeNotice) + Send + Sync>) -> bool {
        let task = tokio::spawn(listen(self.options.clone(), on_notice)).abort_handle();
        self.listeners.lock().expect("listeners lock").push(AbortOnDrop(task));
        true
    }

    async fn announce_barrier(&self) -> StoreResult<Option<(String, u64)>> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (_, listeners): ((), i64) = sqlx::query_as(
            "SELECT pg_notify($1, 'barrier:' || $2),
                    (SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND application_name = $3)",
        )
        .bind(CHANGES_CHANNEL)
        .bind(&id)
        .bind(LISTENER_NAME)
        .fetch_one(&self.pool)
        .await?;
        Ok(Some((id, listeners.max(0) as u64)))
    }
}

/// How the listening connections name themselves, so a barrier knows how many to wait for.
const LISTENER_NAME: &str = "wearlink-listener";

/// Longest wait between two attempts to listen again.
const LISTEN_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Holds one connection of its own that `LISTEN`s on `CHANGES_CHANNEL` and passes on what it
/// hears, acknowledging barriers on the same connection once everything before them was passed
/// on; when that connection is lost it says so, connects again (backing off to
/// `LISTEN_RETRY_MAX`) and says `Listening` once it listens again.
async fn listen(options: PgConnectOptions, on_notice: std::sync::Arc<dyn Fn(ChangeNotice) + Send + Sync>) {
    // Its own pool of one, so the request pool keeps its size and a lost connection is replaced.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .max_lifetime(None)
        .idle_timeout(None)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_lazy_with(options.application_name(LISTENER_NAME));
    let mut retry = std::time::Duration::from_millis(100);
    let mut was_lost = false;
    loop {
        let listening = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            // A lost connection is ours to replace (and to report): see below.
            listener.eager_reconnect(false);
            listener.listen(CHANGES_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = match listening.await {
            Ok(listener) => listener,
            Err(e) => {
                if !was_lost {
                    tracing::warn!(error = %e, "cannot listen for cache changes; cached values live up to WEARLINK_CACHE_TTL_MS");
                    was_lost = true;
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(LISTEN_RETRY_MAX);
                continue;
            }
        };
        if was_lost {
            tracing::info!("listening for cache changes again");
        }
        retry = std::time::Duration::from_millis(100);
        on_notice(ChangeNotice::Listening);
        let lost = loop {
            let notification = match listener.try_recv().await {
                Ok(Some(notification)) => notification,
                Ok(None) => break None,
                Err(e) => break Some(e),
            };
            let payload = notification.payload();
            if let Some(id) = payload.strip_prefix("barrier:") {
                let ack = sqlx::query("SELECT pg_notify($1, 'ack:' || $2)").bind(CHANGES_CHANNEL).bind(id);
                if let Err(e) = ack.execute(&mut listener).await {
                    break Some(e);
                }
            } else if let Some(id) = payload.strip_prefix("ack:") {
                on_notice(ChangeNotice::Acked(id.to_string()));
            } else if let Some(change) = CachedChange::parse(payload) {
                on_notice(ChangeNotice::Changed(change));
            } else {
                tracing::debug!(payload, "unknown cache change notice");
            }
        };
        tracing::warn!(error = ?lost.map(|e| e.to_string()), "lost the connection listening for cache changes; reconnecting");
        was_lost = true;
        on_notice(ChangeNotice::Lost);
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

impl_outbox_store!(
    store: PostgresStore,
    db: sqlx::Postgres,
    row: PgRow,
    begin_write: begin,
    lock_rows: " FOR UPDATE",
    lock_share: " FOR KEY SHARE OF p",
);

impl_retention_store!(store: PostgresStore, skip_locked: " FOR UPDATE SKIP LOCKED");
