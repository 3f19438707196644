//! Data sync, provider-neutral: backfill on connect, webhook events, resyncs and reconciliation
//! passes, all as jobs of the one work queue (`store::JobStore`), each claimed by one worker
//! under a lease and completed only while that lease holds. Providers describe their data API
//! through `providers::DataSource`; mapping to FHIR is theirs, writing is `writer`'s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::providers::DataSource;
use crate::store::sync::{Job, NewJob};
use crate::store::{Lease, WebhookEvent};
use crate::Services;

mod backfill;
mod budget;
mod cgm;
mod events;
mod session;
pub mod status;
mod worker;
mod writer;

pub use backfill::{BACKFILL_DAYS_SETTING, DEFAULT_BACKFILL_DAYS, MAX_BACKFILL_DAYS};
pub use budget::WorkBudget;
pub use status::{request_resync, SyncView};
pub use worker::{spawn_worker, Serving, Worker};

/// Job kinds of the queue.
pub const WEBHOOK_EVENT: &str = "webhook_event";
pub const BACKFILL: &str = "backfill";
pub const RECONCILE: &str = "reconcile";
/// Deliveries of outbound events to the platform (`crate::events`), sharing the queue.
pub const DELIVERY: &str = "delivery";
/// Drains of a project's FHIR outbox into its own FHIR server (`crate::fhir_server::outbox`).
pub const FHIR_OUTBOX: &str = crate::store::outbox::DRAIN_KIND;
/// Every kind, for `run_due`.
const KINDS: &[&str] = &[WEBHOOK_EVENT, DELIVERY, FHIR_OUTBOX, BACKFILL, RECONCILE];
/// The sync lane's kinds: long jobs bound by providers' rate limits.
const SYNC_KINDS: &[&str] = &[WEBHOOK_EVENT, BACKFILL, RECONCILE];
/// The delivery lane's: short jobs that wait on the platform's network answers.
const DELIVERY_KINDS: &[&str] = &[DELIVERY, FHIR_OUTBOX];

/// Fresh data first: a webhook's event before a resync, a resync before a backfill.
const PRIORITY_EVENT: i64 = 0;
const PRIORITY_RESYNC: i64 = 5;
const PRIORITY_BACKFILL: i64 = 10;
const PRIORITY_RECONCILE: i64 = 20;

/// How syncing behaves; from config.
#[derive(Clone, Debug)]
pub struct SyncPolicy {
    /// How long a worker holds a job before another may take it (extended at each checkpoint).
    pub lease: Duration,
    /// Jobs run at once per instance.
    pub concurrency: usize,
    /// Jobs started per second at most while requests are being served (0: no limit): on a
    /// saturated machine background work takes CPU from requests, so it slows down, never stops.
    pub busy_rate: u32,
    /// Requests in flight at once from which the instance counts as busy: a few requests now and
    /// then must not slow background work, or a steady trickle would starve the queue.
    pub busy_requests: usize,
    /// While busy (see `busy_requests`), the share of the wall time background work may use, in
    /// percent (`WorkBudget`); 100: no limit.
    pub busy_share_percent: u32,
    /// How often the worker looks for due jobs when nothing woke it.
    pub poll: Duration,
    /// Per connection, how often the reconciliation pass runs (jittered ±10 %).
    pub reconcile_every: Duration,
    /// How far back the reconciliation pass looks.
    pub reconcile_window: Duration,
    /// The share of each rate-limit window background work (backfills, reconciliation) may use;
    /// the rest is kept for webhook-driven syncs.
    pub background_share_percent: i64,
    /// Failed attempts before a job (or event) is given up.
    pub max_attempts: i64,
}

impl Default for SyncPolicy {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(120),
            concurrency: 8,
            busy_rate: 25,
            busy_requests: 8,
            busy_share_percent: 25,
            poll: Duration::from_secs(1),
            reconcile_every: Duration::from_secs(6 * 3600),
            reconcile_window: Duration::from_secs(48 * 3600),
            background_share_percent: 90,
            max_attempts: 8,
        }
    }
}

/// Counters an operator (and a test) can read.
#[derive(Debug, Default)]
pub struct SyncCounters {
    /// Completions refused because another worker had taken the job over.
    pub lost_leases: AtomicU64,
    /// Resources the reconciliation pass created: data whose webhook never came.
    pub reconcile_found: AtomicU64,
    pub resources_written: AtomicU64,
    /// When this instance last recorded a provider's rate-limit headers, by `project/provider`.
    pub rate_recorded_at: std::sync::Mutex<std::collections::HashMap<String, i64>>,
}

/// The backfill a connection gets when it is saved (connect or reconnect).
pub fn backfill_job(project_id: &str, endpoint_id: &str, now: i64) -> NewJob {
    NewJob {
        id: uuid::Uuid::new_v4().to_string(),
        kind: BACKFILL.into(),
        project_id: project_id.into(),
        endpoint_id: Some(endpoint_id.into()),
        unique_key: Some(format!("backfill:{endpoint_id}")),
        payload: json!({}),
        priority: PRIORITY_BACKFILL,
        due_at: now,
    }
}

/// The job that processes a received webhook event.
pub fn event_job(event: &WebhookEvent) -> NewJob {
    NewJob {
        id: format!("event-{}", event.id),
        kind: WEBHOOK_EVENT.into(),
        project_id: event.project_id.clone(),
        endpoint_id: event.endpoint_id.clone(),
        unique_key: Some(event.id.clone()),
        payload: json!({}),
        priority: PRIORITY_EVENT,
        due_at: event.next_attempt_at,
    }
}

/// A resync of `[from, to)`; the same range asked twice while queued is one job.
fn resync_job(project_id: &str, endpoint_id: &str, from: i64, to: i64, now: i64) -> NewJob {
    NewJob {
        id: uuid::Uuid::new_v4().to_string(),
        kind: BACKFILL.into(),
        project_id: project_id.into(),
        endpoint_id: Some(endpoint_id.into()),
        unique_key: Some(format!("resync:{endpoint_id}:{from}:{to}")),
        payload: json!({ "mode": "resync", "range": { "from": from, "to": to } }),
        priority: PRIORITY_RESYNC,
        due_at: now,
    }
}

/// The connection's recurring reconciliation pass (the poll, for a provider without webhooks),
/// first due one interval from now (jittered).
fn reconcile_job(
    services: &Services,
    source: &dyn DataSource,
    project_id: &str,
    endpoint_id: &str,
    since: i64,
    now: i64,
) -> NewJob {
    NewJob {
        id: uuid::Uuid::new_v4().to_string(),
        kind: RECONCILE.into(),
        project_id: project_id.into(),
        endpoint_id: Some(endpoint_id.into()),
        unique_key: Some(format!("reconcile:{endpoint_id}")),
        payload: json!({ "mode": "reconcile", "since": since }),
        priority: PRIORITY_RECONCILE,
        due_at: next_reconcile(services, source, now),
    }
}

/// `now` + the reconcile interval ± 10 % (a polled provider's own interval and jitter), so
/// passes of connections made together spread out.
fn next_reconcile(services: &Services, source: &dyn DataSource, now: i64) -> i64 {
    let (every, jitter) = match source.poll_every() {
        Some((every, jitter)) => (every.as_millis() as i64, jitter.as_millis() as i64),
        None => {
            let every = services.config.sync.reconcile_every.as_millis() as i64;
            (every, every / 10)
        }
    };
    let jitter = jitter.max(1);
    now + every + rand::Rng::gen_range(&mut rand::thread_rng(), -jitter..=jitter)
}

fn lease(services: &Services, now: i64) -> Lease {
    Lease { owner: services.claimer(), now, until: now + services.config.sync.lease.as_millis() as i64 }
}

/// Runs one claimed job to its end; the job completes itself (fenced on its lease).
async fn run(services: Arc<Services>, job: Job, lease: Lease) {
    let work = async {
        match job.kind.as_str() {
            WEBHOOK_EVENT => events::process(&services, &job, &lease).await,
            DELIVERY => crate::events::deliver(&services, &job, &lease).await,
            FHIR_OUTBOX => crate::fhir_server::outbox::drain(&services, &job, &lease).await,
            _ => backfill::run(&services, &job, lease.clone()).await,
        }
    };
    let outcome = crate::store::in_background(services.work_budget.metered(work)).await;
    match outcome {
        Ok(true) => {}
        Ok(false) => {
            services.sync_counters.lost_leases.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(job = %job.id, kind = %job.kind, "job finished after its lease was lost; another worker's outcome stands");
        }
        Err(e) => tracing::warn!(job = %job.id, kind = %job.kind, error = %e, "job failed; its lease will run out"),
    }
}

/// Claims and runs due jobs until none is left; answers how many ran. Tests call it directly.
/// `now` is the claim's clock: a test moves it on to see leases run out and retries come due.
pub async fn run_due(services: &Arc<Services>, now: i64) -> crate::Result<usize> {
    run_due_of(services, now, KINDS).await
}

/// `run_due` for jobs of these kinds only.
pub async fn run_due_of(services: &Arc<Services>, now: i64, kinds: &[&str]) -> crate::Result<usize> {
    let mut ran = 0;
    loop {
        let lease = lease(services, now);
        let jobs = services.store.claim_jobs(kinds, &lease, services.config.sync.concurrency as i64).await?;
        if jobs.is_empty() {
            return Ok(ran);
        }
        ran += jobs.len();
        let tasks: Vec<_> = jobs.into_iter().map(|job| run(Arc::clone(services), job, lease.clone())).collect();
        futures::future::join_all(tasks).await;
    }
}

/// The payload's field as an i64.
fn int(payload: &Value, pointer: &str) -> Option<i64> {
    payload.pointer(pointer).and_then(Value::as_i64)
}
