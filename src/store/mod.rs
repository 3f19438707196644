//! Storage behind small traits; one file per backend. Times are epoch milliseconds (`i64`) so every
//! backend stores them the same way.

use async_trait::async_trait;
use serde_json::Value;

use crate::crypto::Sealed;

pub mod outbound;
pub mod outbox;
mod postgres;
pub mod retention;
pub mod sessions;
mod sql;
mod sql_outbound;
mod sql_outbox;
mod sql_retention;
mod sql_sessions;
mod sql_sync;
mod sqlite;
pub mod sync;

pub use outbound::OutboundStore;
pub use outbox::OutboxStore;
pub use retention::RetentionStore;
pub use sessions::{ConnectSessionRecord, SessionStore};
pub use sync::{JobStore, ResourceStore, SyncStore};

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Pool sizing and how long a request waits for a connection before failing with 503.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: std::time::Duration,
    /// SQLite only: when a commit reaches the disk.
    pub sqlite_durability: SqliteDurability,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: std::time::Duration::from_secs(2),
            sqlite_durability: SqliteDurability::default(),
        }
    }
}

/// SQLite's `PRAGMA synchronous` in WAL mode (`WEARLINK_SQLITE_SYNCHRONOUS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SqliteDurability {
    /// `FULL`: each commit is synced to disk before it is answered, so what was acknowledged
    /// survives an OS crash or a power loss.
    #[default]
    Full,
    /// `NORMAL`: the WAL is synced only at checkpoints. Survives a process crash, but an OS crash
    /// or power loss can roll back the last commits, acknowledged ones included.
    Normal,
}

impl std::str::FromStr for SqliteDurability {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "full" => Ok(Self::Full),
            "normal" => Ok(Self::Normal),
            _ => Err("expected full or normal".into()),
        }
    }
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer created the same connection first; the caller re-reads and tries again.
    #[error("the connection was written concurrently")]
    Conflict,
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict,
            // PostgreSQL gave up one of two transactions that waited for each other (deadlock,
            // serialization failure): nothing was written; doing it again is right.
            sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40P01" | "40001")) => {
                StoreError::Conflict
            }
            // PostgreSQL connection exceptions (08xxx) and shutdown in progress (57P0x).
            sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P0")) => {
                StoreError::Unavailable(db.to_string())
            }
            other => StoreError::Database(other.to_string()),
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

tokio::task_local! {
    /// Set while background work (sync jobs, deliveries) runs: a backend that writes one at a
    /// time lets requests' writes go first.
    static BACKGROUND: ();
}

/// Runs `work` as background work (see `BACKGROUND`).
pub async fn in_background<F: std::future::Future>(work: F) -> F::Output {
    BACKGROUND.scope((), work).await
}

/// Whether the current task runs background work.
pub(crate) fn is_background() -> bool {
    BACKGROUND.try_with(|_| ()).is_ok()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Admin,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct ApiTokenRecord {
    /// SHA-256 of the token; the token itself is never stored.
    pub token_hash: String,
    pub project_id: String,
    pub role: Role,
    pub created_at: i64,
}

#[derive(Clone, Debug)]
pub struct SecretRecord {
    pub key: String,
    pub sealed: Sealed,
    pub updated_at: i64,
}

/// A FHIR resource as stored: `body` already carries `id` and `meta`.
#[derive(Clone, Debug)]
pub struct StoredResource {
    pub id: String,
    pub version_id: i64,
    pub last_updated: i64,
    pub body: Value,
}

/// What a connect call leaves behind, found again by its `state`'s key.
#[derive(Clone, Debug)]
pub struct OAuthStateRecord {
    /// The state's creation time, then its SHA-256 (`connect::new_state`); never the state.
    pub state_hash: String,
    pub project_id: String,
    pub patient_id: String,
    pub provider: String,
    pub redirect_uri: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    /// Set when the connect was started from a hosted connect page (`crate::connect_sessions`).
    pub session: Option<StateSession>,
    /// The PKCE verifier (`Provider::uses_pkce`), sealed to the state: never sent to the browser.
    pub code_verifier: Option<Sealed>,
    /// The provider region (or environment) chosen at connect (`Provider::region_for`).
    pub region: Option<String>,
}

/// The connect session a state came from, and that session's token sealed to the state, so the
/// callback can send the patient back to the page (the session itself keeps only a hash).
#[derive(Clone, Debug)]
pub struct StateSession {
    pub session_id: String,
    pub token: Sealed,
}

/// The private side of an Endpoint: the sealed tokens and what the refresher needs.
#[derive(Clone, Debug)]
pub struct ConnectionRecord {
    pub endpoint_id: String,
    pub project_id: String,
    pub patient_id: String,
    pub provider: String,
    pub remote_user_id: String,
    pub scopes: Vec<String>,
    /// `active`, `error` (the provider refused the tokens) or `off` (disconnected).
    pub status: String,
    /// Sealed `{access_token, refresh_token, token_type}`; `None` once wiped.
    pub tokens: Option<Sealed>,
    pub has_refresh_token: bool,
    pub expires_at: Option<i64>,
    pub connected_at: i64,
    pub updated_at: i64,
    pub last_refreshed_at: Option<i64>,
    pub last_error: Option<String>,
    pub refresh_failures: i64,
    /// No refresh attempt before this (backoff and cooldown).
    pub next_attempt_at: Option<i64>,
    /// The provider region (or environment) the connection lives in; its calls go to that
    /// region's hosts (`Provider::urls_for`). `None`: the provider's only hosts.
    pub region: Option<String>,
}

/// A disconnect whose upstream revoke has not succeeded yet.
#[derive(Clone, Debug)]
pub struct PendingRevocation {
    pub id: String,
    pub project_id: String,
    pub endpoint_id: String,
    pub provider: String,
    pub remote_user_id: String,
    /// The access token, sealed to this revocation's id.
    pub token: Sealed,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: String,
    pub project_id: String,
    /// Who: `token:<fingerprint>`.
    pub actor: String,
    pub action: String,
    pub endpoint_id: Option<String>,
    pub at: i64,
}

/// One provider event in the webhook inbox.
#[derive(Clone, Debug)]
pub struct WebhookEvent {
    pub id: String,
    pub project_id: String,
    pub provider: String,
    pub dedup_key: String,
    pub event_type: String,
    pub remote_user_id: Option<String>,
    pub endpoint_id: Option<String>,
    pub patient_id: Option<String>,
    /// The event as received (raw JSON text).
    pub payload: String,
    /// `received` (to process), `synced`, `done`, `ignored` or `dead`.
    pub state: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    pub received_at: i64,
    pub processed_at: Option<i64>,
    /// The FHIR resources (`Type/id`) a `synced` event wrote or changed.
    pub synced_refs: Option<Vec<String>>,
}

/// How processing an event ended, written with its job's completion.
#[derive(Clone, Debug)]
pub struct EventOutcome {
    pub job: sync::JobOutcome,
    /// The event's state now (`received` while it is retried).
    pub state: String,
    pub attempts: i64,
    /// Why it was ignored, or the last failure.
    pub error: Option<String>,
    pub refs: Option<Vec<String>>,
    pub processed_at: Option<i64>,
}

#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub patient_id: Option<String>,
    pub state: Option<String>,
}

/// Filters of a connection listing.
#[derive(Clone, Debug, Default)]
pub struct ConnectionFilter {
    pub patient_id: Option<String>,
    pub provider: Option<String>,
}

#[async_trait]
pub trait ProjectStore: Send + Sync {
    async fn create_project(&self, id: &str, name: &str, now: i64) -> StoreResult<()>;
    async fn project_exists(&self, id: &str) -> StoreResult<bool>;
    async fn insert_api_token(&self, token: &ApiTokenRecord) -> StoreResult<()>;
    async fn find_api_token(&self, token_hash: &str) -> StoreResult<Option<ApiTokenRecord>>;
    /// Deletes the token with this hash; answers whether it existed.
    async fn delete_api_token(&self, token_hash: &str) -> StoreResult<bool>;
    /// `(key, JSON value)` pairs of the settings that were ever set.
    async fn list_settings(&self, project_id: &str) -> StoreResult<Vec<(String, Value)>>;
    /// Every project's value of one setting: `(project id, value)`.
    async fn list_setting_values(&self, key: &str) -> StoreResult<Vec<(String, Value)>>;
    async fn put_setting(&self, project_id: &str, key: &str, value: &Value, now: i64) -> StoreResult<()>;
    async fn put_secret(&self, project_id: &str, key: &str, sealed: &Sealed, now: i64) -> StoreResult<()>;
    async fn list_secrets(&self, project_id: &str) -> StoreResult<Vec<SecretRecord>>;
    /// Deletes the given keys; answers how many existed.
    async fn delete_secrets(&self, project_id: &str, keys: &[String]) -> StoreResult<u64>;
}

#[async_trait]
pub trait FhirStore: Send + Sync {
    /// Stores a new resource at version 1; `patient_id` indexes it for `?patient=` searches.
    async fn create_resource(
        &self,
        project_id: &str,
        resource_type: &str,
        id: &str,
        body: Value,
        now: i64,
    ) -> StoreResult<StoredResource>;
    async fn read_resource(
        &self,
        project_id: &str,
        resource_type: &str,
        id: &str,
    ) -> StoreResult<Option<StoredResource>>;
}

#[async_trait]
pub trait StateStore: Send + Sync {
    async fn insert_state(&self, state: &OAuthStateRecord) -> StoreResult<()>;
    /// Inserts, in one statement, each state whose patient exists in its project; answers the
    /// hashes of those inserted. Connect's only database write (see `crate::batch`).
    async fn insert_states_for_patients(&self, states: &[OAuthStateRecord]) -> StoreResult<Vec<String>>;
    /// Deletes and returns, in one statement, the states with these hashes that exist: of two
    /// concurrent takers of a state only one gets it.
    async fn take_states(&self, state_hashes: &[String]) -> StoreResult<Vec<OAuthStateRecord>>;
    /// Deletes at most `limit` states expired by `now` (one bounded statement: see
    /// `Services::sweep_expired_states`); rows another sweeper holds are skipped.
    async fn delete_expired_states(&self, now: i64, limit: u32) -> StoreResult<u64>;
}

#[async_trait]
pub trait ConnectionStore: Send + Sync {
    async fn find_connection(
        &self,
        project_id: &str,
        patient_id: &str,
        provider: &str,
    ) -> StoreResult<Option<ConnectionRecord>>;
    async fn find_connection_by_endpoint(&self, endpoint_id: &str) -> StoreResult<Option<ConnectionRecord>>;
    async fn find_connection_by_remote_user(
        &self,
        project_id: &str,
        provider: &str,
        remote_user_id: &str,
    ) -> StoreResult<Option<ConnectionRecord>>;
    async fn list_connections(&self, project_id: &str, filter: &ConnectionFilter)
        -> StoreResult<Vec<ConnectionRecord>>;
    /// Writes the connection and its Endpoint (a new version when it exists) in one transaction.
    /// `StoreError::Conflict` when a different Endpoint id already holds (project, patient, provider).
    async fn save_connection(&self, connection: &ConnectionRecord, endpoint: Value) -> StoreResult<StoredResource> {
        let mut saved = self.save_connections(&[(connection.clone(), endpoint)]).await?;
        saved.pop().ok_or_else(|| StoreError::Database("a saved connection went missing".into()))
    }
    /// `save_connection` for many connections, in one transaction: all are written or none.
    /// Answers in the order given; fails (writing nothing) when an Endpoint comes twice.
    async fn save_connections(&self, connections: &[(ConnectionRecord, Value)]) -> StoreResult<Vec<StoredResource>>;

    /// Leases up to `limit` active connections with a refresh token expiring before `due_before`,
    /// whose lease is free or ran out and whose backoff has passed. Of several instances claiming
    /// at once, each connection goes to one.
    async fn claim_due_refreshes(&self, lease: &Lease, due_before: i64, limit: i64) -> StoreResult<Vec<String>>;
    /// Leases one connection (free or expired lease) whatever its expiry; false when another holds it.
    async fn claim_refresh(&self, lease: &Lease, endpoint_id: &str) -> StoreResult<bool>;
    async fn release_refresh(&self, lease: &Lease, endpoint_id: &str) -> StoreResult<()>;
    /// Replaces tokens, expiry and next attempt, clears failures and the lease, writes a new Endpoint version;
    /// only while `lease` still holds the connection and it is active. `None` when it did not.
    async fn complete_refresh(
        &self,
        lease: &Lease,
        connection: &ConnectionRecord,
        endpoint: Value,
    ) -> StoreResult<Option<StoredResource>>;
    /// Records a failed attempt (failures, next attempt, last error) and frees the lease.
    async fn record_refresh_failure(
        &self,
        lease: &Lease,
        endpoint_id: &str,
        failures: i64,
        next_attempt_at: i64,
        error: &str,
    ) -> StoreResult<()>;
    /// Sets the connection's status (`error`, `off`) with a reason, wipes its tokens when asked,
    /// frees any lease and writes a new Endpoint version; with `revocation`, queues it in the
    /// same transaction. Answers false when the connection was already in that status.
    async fn set_connection_status(
        &self,
        endpoint_id: &str,
        status: &str,
        reason: Option<&str>,
        wipe_tokens: bool,
        endpoint: Value,
        revocation: Option<&PendingRevocation>,
    ) -> StoreResult<bool>;

    /// Leases up to `limit` pending revocations due by `lease.now` until `lease.until`.
    async fn claim_due_revocations(&self, lease: &Lease, limit: i64) -> StoreResult<Vec<PendingRevocation>>;
    async fn complete_revocation(&self, id: &str) -> StoreResult<()>;
    async fn fail_revocation(&self, id: &str, attempts: i64, next_attempt_at: i64, error: &str) -> StoreResult<()>;
    async fn count_pending_revocations(&self, project_id: &str) -> StoreResult<i64>;

    async fn append_audit(&self, entry: &AuditEntry) -> StoreResult<()>;
    async fn list_audit(&self, project_id: &str) -> StoreResult<Vec<AuditEntry>>;
}

/// A time-limited claim by one instance.
#[derive(Clone, Debug)]
pub struct Lease {
    pub owner: String,
    pub now: i64,
    pub until: i64,
}

#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Stores an event unless the same (project, provider, dedup key) is already in; answers
    /// whether it was new.
    async fn insert_event(&self, event: &WebhookEvent) -> StoreResult<bool>;
    /// Stores several events in one transaction (one commit), each with its job as `insert_event`
    /// does; answers, in order, whether each was new. Event ids must be distinct.
    async fn insert_events(&self, events: &[WebhookEvent]) -> StoreResult<Vec<bool>>;
    async fn read_event(&self, id: &str) -> StoreResult<Option<WebhookEvent>>;
    /// Completes the event's job (fenced on `lease`) and records the outcome in one transaction;
    /// false when the lease was lost (nothing written).
    async fn complete_event(
        &self,
        lease: &Lease,
        job_id: &str,
        event_id: &str,
        outcome: &EventOutcome,
    ) -> StoreResult<bool>;
    async fn list_events(&self, project_id: &str, filter: &EventFilter) -> StoreResult<Vec<WebhookEvent>>;
    /// How many of the project's events are in each state.
    async fn count_events(&self, project_id: &str) -> StoreResult<Vec<(String, i64)>>;
    /// How many events of all projects are in each state (the metrics' inbox gauge).
    async fn count_inbox(&self) -> StoreResult<Vec<(String, i64)>>;
    /// Puts an event of the project back to `received` and in the queue; false when there is none.
    async fn replay_event(&self, project_id: &str, id: &str, now: i64) -> StoreResult<bool>;
}

#[async_trait]
pub trait Backend: Send + Sync {
    /// The database answers and every migration this build knows is applied.
    async fn ready(&self) -> StoreResult<()>;
    /// How many write transactions are worth running at once (`crate::batch` keeps that many
    /// batches in flight): SQLite writes one at a time; a server overlaps their commits.
    fn parallel_writes(&self) -> usize;
    /// The connection pool as it is now (for the metrics).
    fn pool_stats(&self) -> PoolStats;
    /// Starts hearing, for as long as the store lives, what the database tells every instance
    /// about changes to what instances cache (API tokens, settings, secrets), in commit order:
    /// `on_notice` is called with each, and a barrier (`announce_barrier`) is acknowledged only
    /// once `on_notice` has returned for everything heard before it. Answers `false` for a
    /// backend with one instance (SQLite), which announces nothing.
    fn listen_for_changes(&self, on_notice: std::sync::Arc<dyn Fn(ChangeNotice) + Send + Sync>) -> bool {
        let _ = on_notice;
        false
    }
    /// Announces a barrier after everything committed so far; answers its id and how many
    /// instances listen (each acknowledges it: `ChangeNotice::Acked`), or `None` (SQLite).
    async fn announce_barrier(&self) -> StoreResult<Option<(String, u64)>> {
        Ok(None)
    }
}

/// A committed change to something instances cache. Names what changed, never a value: an API
/// token by the first 16 hex digits of its hash (its fingerprint), settings and secrets by project.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CachedChange {
    Token { hash_prefix: String },
    Settings { project_id: String },
    Secrets { project_id: String },
}

/// How many hex digits of a token's hash a `CachedChange::Token` carries.
pub const TOKEN_PREFIX_LEN: usize = 16;

impl CachedChange {
    pub fn token(token_hash: &str) -> Self {
        CachedChange::Token { hash_prefix: token_hash[..TOKEN_PREFIX_LEN.min(token_hash.len())].to_string() }
    }

    /// The text announced to the other instances.
    pub fn payload(&self) -> String {
        match self {
            CachedChange::Token { hash_prefix } => format!("token:{hash_prefix}"),
            CachedChange::Settings { project_id } => format!("settings:{project_id}"),
            CachedChange::Secrets { project_id } => format!("secrets:{project_id}"),
        }
    }

    pub fn parse(payload: &str) -> Option<Self> {
        let (kind, id) = payload.split_once(':')?;
        let id = id.to_string();
        match kind {
            "token" if id.len() == TOKEN_PREFIX_LEN => Some(CachedChange::Token { hash_prefix: id }),
            "settings" if !id.is_empty() => Some(CachedChange::Settings { project_id: id }),
            "secrets" if !id.is_empty() => Some(CachedChange::Secrets { project_id: id }),
            _ => None,
        }
    }
}

/// What an instance hears about changes made anywhere (see `Backend::listen_for_changes`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeNotice {
    Changed(CachedChange),
    /// Listening (again): changes made before this may have gone unheard.
    Listening,
    /// The listening connection was lost; changes go unheard until `Listening`.
    Lost,
    /// An instance acknowledged the barrier with this id.
    Acked(String),
}

/// A store's connections: open (`size`), idle, the most it may open, and the tasks waiting for a
/// connection to write (sqlx's pool does not expose its own queue of waiting readers).
#[derive(Clone, Copy, Debug, Default)]
pub struct PoolStats {
    pub size: u32,
    pub idle: u32,
    pub max: u32,
    pub waiting: u32,
}

/// Everything the service stores, as one object (`Arc<dyn Store>`).
pub trait Store:
    ProjectStore
    + FhirStore
    + StateStore
    + ConnectionStore
    + WebhookStore
    + JobStore
    + ResourceStore
    + SyncStore
    + OutboundStore
    + OutboxStore
    + RetentionStore
    + SessionStore
    + Backend
{
}
impl<T> Store for T where
    T: ProjectStore
        + FhirStore
        + StateStore
        + ConnectionStore
        + WebhookStore
        + JobStore
        + ResourceStore
        + SyncStore
        + OutboundStore
        + OutboxStore
        + RetentionStore
        + SessionStore
        + Backend
{
}

/// Readiness check shared by the SQL backends: the newest migration of this build is recorded.
async fn migrations_applied<'e, E>(executor: E, migrator: &sqlx::migrate::Migrator) -> StoreResult<()>
where
    E: sqlx::Executor<'e>,
    i64: sqlx::Type<E::Database> + for<'r> sqlx::Decode<'r, E::Database>,
    for<'q> <E::Database as sqlx::Database>::Arguments<'q>: sqlx::IntoArguments<'q, E::Database>,
    usize: sqlx::ColumnIndex<<E::Database as sqlx::Database>::Row>,
{
    let newest = migrator.iter().map(|m| m.version).max().unwrap_or_default();
    let applied: (i64,) = sqlx::query_as("SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success")
        .fetch_one(executor)
        .await?;
    if applied.0 < newest {
        return Err(StoreError::Unavailable(format!("migrations pending (at {}, need {newest})", applied.0)));
    }
    Ok(())
}

/// Sets `id` and `meta` on a resource body, as every backend stores it.
pub(crate) fn with_meta(mut body: Value, id: &str, version_id: i64, last_updated: i64) -> Value {
    if let Value::Object(map) = &mut body {
        map.insert("id".into(), Value::String(id.into()));
        let mut meta = match map.remove("meta") {
            Some(Value::Object(meta)) => meta,
            _ => serde_json::Map::new(),
        };
        meta.insert("versionId".into(), Value::String(version_id.to_string()));
        meta.insert("lastUpdated".into(), Value::String(crate::time::to_rfc3339(last_updated)));
        map.insert("meta".into(), Value::Object(meta));
    }
    body
}

/// Connects to the backend named by the URL's scheme, applying migrations.
pub async fn connect(database_url: &str, pool: &PoolSettings) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    let scheme = database_url.split(':').next().unwrap_or_default();
    match scheme {
        "sqlite" => Ok(std::sync::Arc::new(SqliteStore::connect(database_url, pool).await?)),
        "postgres" | "postgresql" => Ok(std::sync::Arc::new(PostgresStore::connect(database_url, pool).await?)),
        other => Err(StoreError::Database(format!(
            "unsupported database URL scheme {other:?} (expected sqlite: or postgres:)"
        ))),
    }
}
