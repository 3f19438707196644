//! Storage of the data-sync stage: the job queue, synced FHIR resources (write, search, history),
//! sync progress per connection and rate-limit windows. Implemented for both backends by
//! `sql_sync.rs`.

use async_trait::async_trait;
use serde_json::Value;

use super::{Lease, StoreResult, StoredResource};

/// A job to put in the queue.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub id: String,
    pub kind: String,
    pub project_id: String,
    pub endpoint_id: Option<String>,
    /// At most one job per (kind, unique_key): enqueueing it again while it waits does nothing.
    pub unique_key: Option<String>,
    pub payload: Value,
    /// Lower runs first.
    pub priority: i64,
    pub due_at: i64,
}

/// A claimed job.
#[derive(Clone, Debug)]
pub struct Job {
    pub id: String,
    pub kind: String,
    pub project_id: String,
    pub endpoint_id: Option<String>,
    pub unique_key: Option<String>,
    pub payload: Value,
    pub priority: i64,
    /// Failed attempts so far.
    pub attempts: i64,
    pub due_at: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
}

/// How a claimed job ends. Every completion is fenced on the lease owner: a worker whose lease
/// ran out (and whose job another worker re-claimed) changes nothing.
#[derive(Clone, Debug)]
pub enum JobOutcome {
    /// Finished: the job leaves the queue.
    Done,
    /// Failed: retried at `due_at`; counts as an attempt.
    Retry { due_at: i64, error: String },
    /// Not failed, only not finished (rate limit, next page): runs again at `due_at` with
    /// `payload`; no attempt is counted.
    Park { due_at: i64, payload: Value, note: Option<String> },
}

#[async_trait]
pub trait JobStore: Send + Sync {
    /// Answers how many were new (a unique key already queued is left as it is).
    async fn enqueue_jobs(&self, jobs: &[NewJob]) -> StoreResult<u64>;
    /// Leases up to `limit` due jobs of these kinds (free, or whose lease ran out), lowest
    /// priority first, oldest first. Of several instances claiming at once, each job goes to one.
    async fn claim_jobs(&self, kinds: &[&str], lease: &Lease, limit: i64) -> StoreResult<Vec<Job>>;
    /// Ends a job this lease holds; false when the lease was lost (nothing written).
    /// `events` are emitted with it (nothing when the lease was lost).
    async fn complete_job(
        &self,
        lease: &Lease,
        id: &str,
        outcome: &JobOutcome,
        events: &[super::outbound::OutboundEvent],
    ) -> StoreResult<bool>;
    /// Stores a job's progress (its cursor) and extends the lease to `lease.until`; false when lost.
    async fn checkpoint_job(&self, lease: &Lease, id: &str, payload: &Value) -> StoreResult<bool>;
    /// Frees every job still leased by a claimer of this instance (`<instance id>/…`, see
    /// `Services::claimer`), so another instance can claim them at once instead of after the
    /// lease runs out: a stopping instance gives back what it will not finish. No attempt is
    /// counted; a completion of this instance arriving after it is refused by the fence.
    async fn release_jobs(&self, instance_id: &str) -> StoreResult<u64>;
    /// Drops every job of a connection (disconnect); a worker holding one loses it.
    async fn cancel_jobs(&self, endpoint_id: &str) -> StoreResult<u64>;
    /// `(endpoint id, kind, count)` of the project's queued jobs.
    async fn count_jobs(&self, project_id: &str) -> StoreResult<Vec<(String, String, i64)>>;
}

/// What search needs of a resource, beyond its body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SearchIndex {
    /// ` system|code system|code ` (space-delimited, with a leading and trailing space).
    pub codes: String,
    pub categories: String,
    /// The clinical time range (effective / performed), epoch ms; an instant has start = end.
    pub date_start: Option<i64>,
    pub date_end: Option<i64>,
}

/// One resource to write (create, or a new version when its content changed).
#[derive(Clone, Debug)]
pub struct ResourceWrite {
    pub resource_type: String,
    pub id: String,
    pub patient_id: Option<String>,
    /// Without `id` and `meta`.
    pub body: Value,
    pub index: SearchIndex,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Created,
    Updated,
    /// Same content as the current version: nothing written, `versionId` unchanged.
    Unchanged,
}

/// One `date` search parameter: `date_start`/`date_end` compared with a bound (epoch ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DateBound {
    /// The resource ends at or after.
    EndsAtOrAfter(i64),
    /// The resource starts before.
    StartsBefore(i64),
}

/// A token search parameter: `code` alone matches any system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenParam {
    pub system: Option<String>,
    pub code: String,
}

#[derive(Clone, Debug)]
pub struct ResourceQuery {
    pub resource_type: String,
    pub patient_id: String,
    /// Each entry is one parameter occurrence; values within one are alternatives (OR).
    pub codes: Vec<Vec<TokenParam>>,
    pub categories: Vec<Vec<TokenParam>>,
    pub dates: Vec<DateBound>,
    pub newest_first: bool,
    pub count: i64,
    pub offset: i64,
}

#[async_trait]
pub trait ResourceStore: Send + Sync {
    /// Writes each resource of the project in one transaction; answers per resource what
    /// happened and its version now. With `source`, what was created or changed is announced to
    /// the platform (`data.synced`) in the same transaction.
    async fn write_resources(
        &self,
        project_id: &str,
        writes: &[ResourceWrite],
        now: i64,
        source: Option<&crate::events::SyncSource>,
    ) -> StoreResult<Vec<(WriteOutcome, i64)>>;
    /// Answers `(total matches, this page)`.
    async fn search_resources(
        &self,
        project_id: &str,
        query: &ResourceQuery,
    ) -> StoreResult<(i64, Vec<StoredResource>)>;
    async fn read_version(
        &self,
        project_id: &str,
        resource_type: &str,
        id: &str,
        version_id: i64,
    ) -> StoreResult<Option<StoredResource>>;
}

/// Sync progress of one connection.
#[derive(Clone, Debug, Default)]
pub struct SyncStatus {
    pub endpoint_id: String,
    pub backfill_from: Option<i64>,
    pub backfill_to: Option<i64>,
    pub backfill_done: i64,
    pub backfill_total: Option<i64>,
    pub last_synced_at: Option<i64>,
    pub last_error: Option<String>,
}

/// A change to a connection's sync progress; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct SyncUpdate {
    /// A backfill (re)starts over this range: its count starts at zero.
    pub backfill_range: Option<(i64, i64)>,
    pub backfill_done_add: i64,
    pub backfill_total: Option<i64>,
    pub synced_at: Option<i64>,
    /// `Some(None)` clears the error.
    pub error: Option<Option<String>>,
}

/// A provider's rate-limit window as its headers describe it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateWindow {
    pub name: String,
    pub limit: i64,
    pub used: i64,
    pub resets_at: i64,
    /// How long the window lasts, to know when the next one ends once this one has.
    pub length_ms: i64,
}

#[async_trait]
pub trait SyncStore: Send + Sync {
    async fn update_sync_status(
        &self,
        project_id: &str,
        endpoint_id: &str,
        update: &SyncUpdate,
        now: i64,
    ) -> StoreResult<()>;
    async fn list_sync_status(&self, project_id: &str) -> StoreResult<Vec<SyncStatus>>;
    /// Counts one call against every known window of (project, provider) when each has room
    /// below `share_percent` % of its limit; otherwise answers `Err(until)`, when the fullest ends.
    async fn reserve_call(
        &self,
        project_id: &str,
        provider: &str,
        share_percent: i64,
        now: i64,
    ) -> StoreResult<Result<(), i64>>;
    /// Records what the provider's headers said (their usage counts every instance's calls).
    async fn record_rate_windows(&self, project_id: &str, provider: &str, windows: &[RateWindow]) -> StoreResult<()>;
    /// `(provider, until)` for the project's providers whose budget is spent for background work.
    async fn rate_limited(&self, project_id: &str, share_percent: i64, now: i64) -> StoreResult<Vec<(String, i64)>>;
}
