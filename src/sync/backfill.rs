//! Backfills, resyncs and reconciliation passes: walk a connection's streams over a time range,
//! page by page, writing what changed. Progress (stream, page cursor, items done in the page) is
//! stored with the job after every page, so a worker that dies is followed by one that resumes
//! there, not at the beginning.

use std::sync::atomic::Ordering;

use serde_json::{json, Value};

use super::session::{CallError, Session};
use super::writer::{self, Written};
use super::{int, next_reconcile, reconcile_job};
use crate::fhir::ResourceDraft;
use crate::providers::data::TimeRange;
use crate::store::sync::{Job, JobOutcome, SyncUpdate};
use crate::store::Lease;
use crate::time::now_ms;
use crate::Services;

/// The project setting: how many days a backfill reaches back.
pub const BACKFILL_DAYS_SETTING: &str = "WEARABLE_BACKFILL_DAYS";
pub const DEFAULT_BACKFILL_DAYS: i64 = 30;
pub const MAX_BACKFILL_DAYS: i64 = 365;
const DAY_MS: i64 = 86_400_000;
/// Pages a provider answers with "pushed later" (`Page::pushed_later`, Garmin's backfill): how
/// long the backfill waits at most for a push, and how often it looks whether one arrived.
const PUSH_DEADLINE_MS: i64 = DAY_MS;
const PUSH_RECHECK_MS: i64 = 60_000;

/// Runs the job until it is done, parked or failed; false when its lease was lost on the way.
pub async fn run(services: &Services, job: &Job, mut lease: Lease) -> crate::Result<bool> {
    let Some(endpoint_id) = job.endpoint_id.as_deref() else {
        return complete(services, &lease, job, JobOutcome::Done).await;
    };
    let mut session = match Session::open(services, endpoint_id, true).await {
        Ok(Some(session)) => session,
        // Gone, off, broken, or a provider without data: nothing to fetch.
        Ok(None) => return complete(services, &lease, job, JobOutcome::Done).await,
        Err(e) => return failed(services, &lease, job, &job.payload, e).await,
    };
    let mode = job.payload.get("mode").and_then(Value::as_str).unwrap_or("backfill").to_string();
    let mut payload = job.payload.clone();
    if payload.get("range").is_none() {
        let range = first_range(services, job, session.source(), &mode).await?;
        payload["range"] = json!(range);
        if mode != "reconcile" {
            let update =
                SyncUpdate { backfill_range: Some((range.from, range.to)), error: Some(None), ..Default::default() };
            services.store.update_sync_status(&job.project_id, endpoint_id, &update, now_ms()).await?;
        }
    }
    let range: TimeRange =
        serde_json::from_value(payload["range"].clone()).map_err(|e| crate::Error::Invalid(e.to_string()))?;
    let streams = session.source().streams();
    loop {
        let stream_index = int(&payload, "/stream").unwrap_or(0) as usize;
        let Some(stream) = streams.get(stream_index) else { break };
        if !session.still_active().await.map_err(internal)? {
            return Ok(complete(services, &lease, job, JobOutcome::Done).await.unwrap_or(true));
        }
        let reach = session.source().reach_days(stream).map(|d| now_ms() - d * DAY_MS);
        let clipped = TimeRange { from: range.from.max(reach.unwrap_or(i64::MIN)), to: range.to };
        let asked_at = now_ms();
        let page = match session.list(stream, clipped, payload.get("cursor").filter(|c| !c.is_null())).await {
            Ok(page) => page,
            Err(e) => return failed(services, &lease, job, &payload, e).await,
        };
        // The provider pushes this page's data later: wait for it once the streams are walked.
        if page.pushed_later && mode != "reconcile" && payload.get("awaiting_push_since").is_none() {
            payload["awaiting_push_since"] = json!(asked_at);
        }
        let skip = int(&payload, "/skip").unwrap_or(0) as usize;
        let mut drafts: Vec<ResourceDraft> = Vec::new();
        let mut done = 0;
        for item in page.items.iter().skip(skip) {
            let data = match &item.data {
                Some(data) => Some(data.clone()),
                None => match session.fetch(&item.object).await {
                    Ok(data) => data,
                    Err(e) => {
                        // Keep what this page already fetched, and where it stopped.
                        let written = flush(services, &session, job, &mode, drafts, done, &mut payload).await?;
                        payload["skip"] = json!(skip as i64 + done);
                        payload["done"] = json!(int(&payload, "/done").unwrap_or(0) + done);
                        count_found(&mut payload, &mode, &written);
                        return failed(services, &lease, job, &payload, e).await;
                    }
                },
            };
            done += 1;
            let Some(data) = data else { continue };
            match session.source().map(&session.context, &item.object, &data) {
                Ok(mapped) => drafts.extend(mapped),
                Err(e) => {
                    tracing::warn!(endpoint = %endpoint_id, kind = %item.object.kind, error = %e, "skipped data that does not map")
                }
            }
        }
        let written = flush(services, &session, job, &mode, drafts, done, &mut payload).await?;
        count_found(&mut payload, &mode, &written);
        payload["done"] = json!(int(&payload, "/done").unwrap_or(0) + done);
        payload["skip"] = json!(0);
        match page.next {
            Some(next) => payload["cursor"] = next,
            None => {
                payload["stream"] = json!(stream_index + 1);
                payload["cursor"] = Value::Null;
            }
        }
        let now = now_ms().max(lease.now);
        lease = Lease { owner: lease.owner.clone(), now, until: now + services.config.sync.lease.as_millis() as i64 };
        if !services.store.checkpoint_job(&lease, &job.id, &payload).await? {
            return Ok(false);
        }
    }
    finished(services, &lease, job, &session, &mode, &payload).await
}

/// Writes a page's drafts and counts the items done; the days whose CGM readings changed are
/// noted in the job's payload, summarized once when the job ends (`finished`).
#[allow(clippy::too_many_arguments)]
async fn flush(
    services: &Services,
    session: &Session<'_>,
    job: &Job,
    mode: &str,
    drafts: Vec<ResourceDraft>,
    items_done: i64,
    payload: &mut Value,
) -> crate::Result<Written> {
    let readings = super::cgm::reading_days(&drafts);
    let written = writer::write(services, &session.context, drafts).await?;
    super::cgm::note_reading_days(payload, &readings);
    if items_done > 0 || !written.changed.is_empty() {
        let update = SyncUpdate {
            // A reconciliation pass is no backfill: its objects are not the backfill's progress.
            backfill_done_add: if mode == "reconcile" { 0 } else { items_done },
            synced_at: Some(now_ms()),
            ..Default::default()
        };
        services.store.update_sync_status(&job.project_id, &session.connection.endpoint_id, &update, now_ms()).await?;
    }
    Ok(written)
}

fn count_found(payload: &mut Value, mode: &str, written: &Written) {
    if mode == "reconcile" {
        payload["found"] = json!(int(payload, "/found").unwrap_or(0) + written.created as i64);
    }
}

async fn finished(
    services: &Services,
    lease: &Lease,
    job: &Job,
    session: &Session<'_>,
    mode: &str,
    payload: &Value,
) -> crate::Result<bool> {
    // The claim's clock, when it runs ahead (tests move it): the next pass must come after it.
    let now = now_ms().max(lease.now);
    let c = &session.connection;
    // Late data, a first backfill: the days the job read readings of are summarized again.
    super::cgm::summarize_noted_days(services, &session.context, payload).await?;
    if mode == "reconcile" {
        let found = int(payload, "/found").unwrap_or(0);
        let polled = session.source().poll_every().is_some();
        if polled {
            tracing::info!(provider = %c.provider, found, "poll finished");
        } else if found > 0 {
            services.sync_counters.reconcile_found.fetch_add(found as u64, Ordering::Relaxed);
            tracing::warn!(provider = %c.provider, found, "reconciliation found data no webhook announced (check the webhook subscription)");
        } else {
            tracing::info!(provider = %c.provider, "reconciliation found nothing missed");
        }
        // The pass is recurring: it parks itself until the next one.
        // A poll's next pass reads on from where this one ended (less the overlap).
        let since = int(payload, "/range/to").unwrap_or(now);
        let next = JobOutcome::Park {
            due_at: next_reconcile(services, session.source(), now),
            payload: json!({ "mode": "reconcile", "since": since }),
            note: None,
        };
        return complete(services, lease, job, next).await;
    }
    if let Some(since) = int(payload, "/awaiting_push_since") {
        if now < since + PUSH_DEADLINE_MS && !push_arrived(services, job, &c.endpoint_id, since).await? {
            // Parked, so the connection shows `backfilling` until a push came (or the deadline).
            let due_at = (now + PUSH_RECHECK_MS).min(since + PUSH_DEADLINE_MS);
            let park = JobOutcome::Park { due_at, payload: payload.clone(), note: Some("awaiting the push".into()) };
            return complete(services, lease, job, park).await;
        }
    }
    let update = SyncUpdate { synced_at: Some(now), error: Some(None), ..Default::default() };
    services.store.update_sync_status(&job.project_id, &c.endpoint_id, &update, now).await?;
    let range_end = int(payload, "/range/to").unwrap_or(now);
    let pass = reconcile_job(services, session.source(), &job.project_id, &c.endpoint_id, range_end, now);
    services.store.enqueue_jobs(&[pass]).await?;
    tracing::info!(provider = %c.provider, endpoint = %c.endpoint_id, mode, "backfill finished");
    let source = crate::events::SyncSource::from(&session.context);
    let range = payload.get("range").cloned().unwrap_or_default();
    let (from, to) = (int(&range, "/from").unwrap_or(0), int(&range, "/to").unwrap_or(now));
    let objects = int(payload, "/done").unwrap_or(0);
    let completed = source.backfill_completed(from, to, objects, now);
    Ok(services.store.complete_job(lease, &job.id, &JobOutcome::Done, &[completed]).await?)
}

/// Whether data was synced for the connection since `since` (a webhook event writes
/// `last_synced_at`): the pushes a "pushed later" page announced have begun to arrive. A push
/// whose every item was already stored is a duplicate and writes nothing: such a backfill waits
/// until the deadline. A heuristic both ways: an ordinary push (today's dailies) also counts, so
/// the state may show the backfill done while older pushed data is still on its way; the data
/// is written whenever it comes.
async fn push_arrived(services: &Services, job: &Job, endpoint_id: &str, since: i64) -> crate::Result<bool> {
    let statuses = services.store.list_sync_status(&job.project_id).await?;
    Ok(statuses.iter().any(|s| s.endpoint_id == endpoint_id && s.last_synced_at.is_some_and(|at| at >= since)))
}

/// The range a new job covers: the project's backfill days before the job was queued, the
/// reconciliation window before now, or the resync's own range.
async fn first_range(
    services: &Services,
    job: &Job,
    source: &dyn crate::providers::DataSource,
    mode: &str,
) -> crate::Result<TimeRange> {
    let now = now_ms();
    if mode == "reconcile" {
        let window = now - services.config.sync.reconcile_window.as_millis() as i64;
        // A poll reads on from the previous pass's end, less the overlap where late data lands
        // (so passes missed meanwhile are caught up too).
        let from = match (source.poll_every(), int(&job.payload, "/since")) {
            (Some(_), Some(since)) => since - source.poll_overlap().as_millis() as i64,
            _ => window,
        };
        return Ok(TimeRange { from, to: now });
    }
    let settings = crate::projects::stored_settings(services, &job.project_id).await?;
    let days = settings
        .iter()
        .find(|(k, _)| k == BACKFILL_DAYS_SETTING)
        .and_then(|(_, v)| v.as_i64())
        .unwrap_or(DEFAULT_BACKFILL_DAYS)
        .clamp(1, MAX_BACKFILL_DAYS);
    Ok(TimeRange { from: job.created_at - days * DAY_MS, to: now.max(job.created_at) + 60_000 })
}

fn internal(e: CallError) -> crate::Error {
    match e {
        CallError::Internal(e) => e,
        other => crate::Error::Upstream(other.to_string()),
    }
}

/// A call that did not answer: parked (no failure), stopped (the connection is unusable; its jobs
/// are gone), or a failed attempt retried with backoff until the job is given up.
async fn failed(services: &Services, lease: &Lease, job: &Job, payload: &Value, e: CallError) -> crate::Result<bool> {
    // The claim's clock when it runs ahead (tests move it), so a retry is not due at once.
    let now = now_ms().max(lease.now);
    let outcome = match e {
        CallError::Parked(until) => {
            JobOutcome::Park { due_at: until.max(now + 1), payload: payload.clone(), note: Some("rate limited".into()) }
        }
        CallError::Stopped(_) => JobOutcome::Done,
        e => {
            let attempts = job.attempts + 1;
            let error = e.to_string();
            tracing::warn!(job = %job.id, attempts, error = %error, "sync job attempt failed");
            if let Some(endpoint) = &job.endpoint_id {
                let update = SyncUpdate { error: Some(Some(error.clone())), ..Default::default() };
                services.store.update_sync_status(&job.project_id, endpoint, &update, now).await?;
            }
            if attempts >= services.config.sync.max_attempts {
                JobOutcome::Done
            } else {
                // Keep the progress made: the retry resumes from it.
                services.store.checkpoint_job(lease, &job.id, payload).await?;
                JobOutcome::Retry {
                    due_at: now + services.config.refresh.backoff_after(attempts).as_millis() as i64,
                    error,
                }
            }
        }
    };
    complete(services, lease, job, outcome).await
}

async fn complete(services: &Services, lease: &Lease, job: &Job, outcome: JobOutcome) -> crate::Result<bool> {
    Ok(services.store.complete_job(lease, &job.id, &outcome, &[]).await?)
}
