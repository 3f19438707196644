//! The embedded default: SQLite in WAL mode through sqlx, `synchronous = FULL` unless configured
//! otherwise (`SqliteDurability`).

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Connection, Row, SqliteConnection, SqlitePool};
use tokio::sync::{Mutex, MutexGuard};

use super::sql::impl_sql_store;
use super::sql_outbound::impl_outbound_store;
use super::sql_outbox::impl_outbox_store;
use super::sql_retention::impl_retention_store;
use super::sql_sessions::impl_session_store;
use super::sql_sync::impl_sync_store;
use super::*;

pub struct SqliteStore {
    /// The one connection that writes. SQLite admits one writer at a time anyway; waiting here is a
    /// FIFO queue in the process, where several writing connections would sleep and retry in
    /// SQLite's busy handler, and a pool would ping the connection after every use.
    writer: Arc<Mutex<SqliteConnection>>,
    /// Read-only connections: in WAL mode readers run beside the writer and see every commit.
    readers: SqlitePool,
    acquire_timeout: Duration,
    /// Requests waiting for the writer: background work lets them go first.
    foreground_waiting: Arc<std::sync::atomic::AtomicUsize>,
    /// Every task waiting for the writer, background work included (the metrics' pool waiters).
    waiting: Arc<std::sync::atomic::AtomicUsize>,
    _checkpointer: AbortOnDrop,
}

/// Counts a request waiting for the writer for as long as it waits (or is cancelled).
struct Waiting(Arc<std::sync::atomic::AtomicUsize>);

impl Waiting {
    fn new(counter: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(Arc::clone(counter))
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Longest a background write waits for requests to pass before it queues anyway.
const BACKGROUND_YIELD_MAX: Duration = Duration::from_millis(200);

/// How often the WAL is checkpointed off the request path.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// WAL frames (pages, ~16 MB) past which a checkpoint runs while writes wait, so the WAL starts
/// over. Measured under sustained connects: 1,000 made those checkpoints slower (up to 230 ms),
/// 10,000 and 40,000 too (25–100 ms, the WAL index growing); 4,000 held them to 11–25 ms.
const WAL_FRAMES_MAX: i64 = 4_000;

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
            .synchronous(match pool.sqlite_durability {
                SqliteDurability::Full => SqliteSynchronous::Full,
                SqliteDurability::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true)
            // Sorts and temporary tables in memory, not in files under $TMPDIR: the database's
            // folder is then the only place written (a container's root is read-only).
            .pragma("temp_store", "memory");
        if let Some(dir) = options.get_filename().parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        }
        // Migrations run on a connection of their own (no timeout applies while they do), which
        // then checkpoints the WAL in the background.
        let mut own = SqliteConnection::connect_with(&options).await?;
        MIGRATOR.run(&mut own).await.map_err(|e| StoreError::Database(e.to_string()))?;
        // Checkpoints are the background task's; see `checkpoint_in_background`.
        let options = options.pragma("wal_autocheckpoint", "0");
        let writer = Arc::new(Mutex::new(SqliteConnection::connect_with(&options).await?));
        let checkpointer = tokio::spawn(checkpoint_in_background(own, Arc::clone(&writer))).abort_handle();
        // A file on this machine does not go away like a server: no ping before each use.
        let readers = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(pool.max_connections)
            .acquire_timeout(pool.acquire_timeout)
            .connect_lazy_with(options.read_only(true));
        Ok(Self {
            writer,
            readers,
            acquire_timeout: pool.acquire_timeout,
            foreground_waiting: Arc::default(),
            waiting: Arc::default(),
            _checkpointer: AbortOnDrop(checkpointer),
        })
    }

    fn reader(&self) -> &SqlitePool {
        &self.readers
    }

    /// Waits (in arrival order) for the writing connection, at most the acquire timeout. A
    /// transaction dropped half-way queues its rollback on the connection before the next use.
    ///
    /// Background work (see `in_background`) first lets the requests that are waiting go: the
    /// queue is FIFO, and one sync page's transaction ahead of a connect was its whole p99.
    async fn writer(&self) -> StoreResult<MutexGuard<'_, SqliteConnection>> {
        let _waiting = if is_background() {
            let started = tokio::time::Instant::now();
            while self.foreground_waiting.load(std::sync::atomic::Ordering::SeqCst) > 0
                && started.elapsed() < BACKGROUND_YIELD_MAX
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            None
        } else {
            Some(Waiting::new(&self.foreground_waiting))
        };
        let queued = Waiting::new(&self.waiting);
        let mut writer = tokio::time::timeout(self.acquire_timeout, self.writer.lock())
            .await
            .map_err(|_| StoreError::Unavailable("timed out waiting for the database writer".into()))?;
        drop(queued);
        if writer.is_in_transaction() {
            // The last holder was cancelled inside a transaction (a request timeout, a stopped
            // worker). Either its rollback is queued on the connection's thread but has not run
            // yet (a statement queued behind it waits for it), or it was cancelled between
            // sqlx's BEGIN and the `Transaction` that would roll it back: roll back here, or the
            // connection would keep that transaction open and every later BEGIN would fail.
            sqlx::query("SELECT 1").execute(&mut *writer).await?;
            if writer.is_in_transaction() {
                tracing::warn!("rolling back a transaction left open by a cancelled write");
                <sqlx::sqlite::SqliteTransactionManager as sqlx::TransactionManager>::rollback(&mut writer).await?;
            }
        }
        Ok(writer)
    }
}

/// Copies the WAL into the database on a connection of its own, so a checkpoint's fsyncs do not
/// stall requests (SQLite's automatic checkpoint, off on the writing connection, makes the commit
/// that crosses 1000 WAL pages do the copy and the fsyncs).
///
/// A PASSIVE checkpoint never waits, but under sustained writes it never catches up either (the
/// writer appends while it copies), and the WAL starts over only once it has all been copied. So
/// past `WAL_FRAMES_MAX` frames one checkpoint runs while holding `writer`'s lock: it copies the
/// few frames since the last one, and the next write starts the WAL over. Not SQLite's RESTART
/// checkpoint: that one waits for the writer in SQLite's busy handler, which sleeps in steps of up
/// to 100 ms — the benchmark saw connects stall 35–85 ms every second or so.
async fn checkpoint_in_background(mut connection: SqliteConnection, writer: Arc<Mutex<SqliteConnection>>) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut checkpoint = passive_checkpoint(&mut connection).await;
        if matches!(checkpoint, Ok(frames) if frames > WAL_FRAMES_MAX) {
            let _no_writes = writer.lock().await;
            checkpoint = passive_checkpoint(&mut connection).await;
        }
        if let Err(e) = checkpoint {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
}

/// Answers the WAL's length in frames.
async fn passive_checkpoint(connection: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
    let (_, frames, _): (i64, i64, i64) =
        sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(connection).await?;
    Ok(frames)
}

/// IMMEDIATE takes the write lock up front: a deferred read-then-write transaction could deadlock
/// against another writer instead of waiting on the busy timeout.
async fn begin_immediate(
    connection: &mut SqliteConnection,
) -> Result<sqlx::Transaction<'_, sqlx::Sqlite>, sqlx::Error> {
    connection.begin_with("BEGIN IMMEDIATE").await
}

#[async_trait]
impl Backend for SqliteStore {
    async fn ready(&self) -> StoreResult<()> {
        migrations_applied(&self.readers, &MIGRATOR).await
    }

    fn parallel_writes(&self) -> usize {
        1
    }

    /// The read-only pool plus the one writing connection.
    fn pool_stats(&self) -> PoolStats {
        let writer_idle = u32::from(self.writer.try_lock().is_ok());
        PoolStats {
            size: self.readers.size() + 1,
            idle: self.readers.num_idle() as u32 + writer_idle,
            max: self.readers.options().get_max_connections() + 1,
            waiting: self.waiting.load(std::sync::atomic::Ordering::Relaxed) as u32,
        }
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

impl_sync_store!(
    store: SqliteStore,
    db: sqlx::Sqlite,
    row: SqliteRow,
    begin_write: begin_immediate,
    lock_rows: "",
    skip_locked: "",
);

impl_outbound_store!(
    store: SqliteStore,
    db: sqlx::Sqlite,
    row: SqliteRow,
    begin_write: begin_immediate,
    lock_rows: "",
    skip_locked: "",
);

impl_session_store!(store: SqliteStore, row: SqliteRow);

impl_outbox_store!(
    store: SqliteStore,
    db: sqlx::Sqlite,
    row: SqliteRow,
    begin_write: begin_immediate,
    lock_rows: "",
    lock_share: "",
);

impl_retention_store!(store: SqliteStore, skip_locked: "");

#[cfg(test)]
mod tests {
    use super::*;

    /// `PRAGMA synchronous` of a store opened as `wearlink serve` would, with this setting.
    async fn synchronous_of(setting: Option<&str>) -> i64 {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("wearlink.db").display());
        let config = crate::Config::from_vars(|name| match name {
            "WEARLINK_DATABASE_URL" => Some(url.clone()),
            "WEARLINK_SQLITE_SYNCHRONOUS" => setting.map(String::from),
            _ => None,
        })
        .unwrap();
        let pool = config.pool;
        let store = SqliteStore::connect(&url, &pool).await.unwrap();
        let (writer,): (i64,) =
            sqlx::query_as("PRAGMA synchronous").fetch_one(&mut *store.writer().await.unwrap()).await.unwrap();
        let (reader,): (i64,) = sqlx::query_as("PRAGMA synchronous").fetch_one(store.reader()).await.unwrap();
        assert_eq!(writer, reader, "every connection of the store runs the same mode");
        writer
    }

    /// What was acknowledged survives an OS crash by default; the faster mode is asked for.
    #[tokio::test]
    async fn commits_are_synced_to_disk_unless_configured_otherwise() {
        assert_eq!(synchronous_of(None).await, 2, "FULL by default");
        assert_eq!(synchronous_of(Some("full")).await, 2);
        assert_eq!(synchronous_of(Some("normal")).await, 1, "NORMAL when configured");
        assert_eq!(synchronous_of(Some("NORMAL")).await, 1);
    }

    /// Under writes that never pause the WAL still starts over, so its file stays bounded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_stays_bounded_under_sustained_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wearlink.db");
        let store =
            SqliteStore::connect(&format!("sqlite://{}", path.display()), &PoolSettings::default()).await.unwrap();
        store.create_project("p", "p", 0).await.unwrap();
        // Each write fills at least 16 pages: three times the limit in all.
        let body = serde_json::json!({"resourceType": "Patient", "text": "x".repeat(16 * 4096)});
        for i in 0..3 * WAL_FRAMES_MAX / 16 {
            store.create_resource("p", "Patient", &format!("p{i}"), body.clone(), 0).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let wal = std::fs::metadata(dir.path().join("wearlink.db-wal")).unwrap().len();
        let bound = 2 * WAL_FRAMES_MAX as u64 * 4096;
        assert!(wal < bound, "the WAL grew to {wal} bytes (bound {bound})");
    }
}
