//! The worker that runs the one queue's jobs on this instance, in two lanes of their own
//! concurrency: syncs (webhook events, backfills, resyncs, reconciliation: long jobs bound by
//! providers' rate limits) and deliveries to the platform (short jobs that mostly wait on the
//! network). One shared limit would let a burst of deliveries hold back syncing, or a backfill
//! storm hold back the platform's events, and a limit fit for backfills leaves deliveries
//! waiting on round trips (bench/deliveries.sh: 8 at once ran half as fast as 32).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Mutex, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{lease, run, DELIVERY_KINDS, SYNC_KINDS};
use crate::store::sync::Job;
use crate::store::Lease;

/// Jobs claimed, each with the lease it was claimed under.
type Claimed = Vec<(Job, Lease)>;
use crate::Services;

/// A request being served, counted in `Services::requests_in_flight` until it is dropped.
pub struct Serving(Arc<AtomicUsize>);

impl Serving {
    pub fn new(in_flight: Arc<AtomicUsize>) -> Self {
        in_flight.fetch_add(1, Ordering::Relaxed);
        Self(in_flight)
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One lane: which kinds it claims, how many it runs at once, what wakes it.
struct Lane {
    name: &'static str,
    kinds: &'static [&'static str],
    concurrency: usize,
    wake: fn(&Services) -> &Notify,
}

/// While the instance is busy, background jobs of both lanes together start at most `busy_rate` a
/// second. They start in bursts of `burst` (five a second), so that one claim and, as the burst's
/// jobs end together, one outcome commit serve several jobs: on SQLite each is a turn of the one
/// writer that requests wait behind. Only jobs claimed use up the pace: a lane that found nothing
/// takes nothing from the other.
struct Pace {
    gap: Duration,
    burst: usize,
    /// When the next claim may run; held while a lane claims, so the lanes take turns.
    next: Mutex<Instant>,
}

impl Pace {
    fn new(rate: u32) -> Self {
        Self { gap: Duration::from_secs(1) / rate, burst: (rate as usize / 5).max(1), next: Mutex::new(Instant::now()) }
    }

    /// Waits for the next turn, claims a burst (at most `free`) and moves the turn on by what was
    /// claimed.
    async fn claim<F, Fut>(&self, free: usize, claim: F) -> Claimed
    where
        F: FnOnce(usize) -> Fut,
        Fut: std::future::Future<Output = Claimed>,
    {
        let mut next = self.next.lock().await;
        tokio::time::sleep_until(*next).await;
        let jobs = claim(free.min(self.burst)).await;
        *next = Instant::now() + self.gap * jobs.len() as u32;
        jobs
    }
}

/// Leases up to `limit` due jobs of the lane's kinds (none when the claim fails: logged).
async fn claim(services: &Arc<Services>, lane: &Lane, limit: usize) -> Claimed {
    let lease = lease(services, crate::time::now_ms());
    // Background work too: on SQLite it lets waiting requests write first.
    match crate::store::in_background(services.store.claim_jobs(lane.kinds, &lease, limit as i64)).await {
        Ok(jobs) => jobs.into_iter().map(|job| (job, lease.clone())).collect(),
        Err(e) => {
            tracing::warn!(lane = lane.name, error = %e, "claiming jobs failed");
            Vec::new()
        }
    }
}

/// The running worker of this instance.
pub struct Worker {
    services: Arc<Services>,
    /// Set once: from then on no job is claimed, and running jobs may run until this instant.
    stop: watch::Sender<Option<Instant>>,
    task: JoinHandle<()>,
}

impl Worker {
    /// Stops at once, leases and all (tests: a worker that dies).
    pub fn abort(&self) {
        self.task.abort();
    }

    /// Ends the worker for a shutdown: claims nothing more, lets running jobs finish until
    /// `deadline`, aborts the others and releases every lease this instance still holds, so
    /// another instance takes those jobs at once rather than when their leases run out.
    /// Answers how many were released. Nothing is lost either way: a job's effects and its
    /// completion are fenced on its lease, and an aborted job is run again from its last
    /// checkpoint.
    pub async fn stop(self, deadline: Instant) -> crate::store::StoreResult<u64> {
        let _ = self.stop.send(Some(deadline));
        let _ = self.task.await;
        self.services.store.release_jobs(&self.services.instance_id).await
    }
}

/// Starts both lanes. A lane with concurrency 0 runs nothing on this instance.
pub fn spawn_worker(services: &Arc<Services>) -> Worker {
    let (stop, stopped) = watch::channel(None);
    let task = tokio::spawn({
        let services = Arc::clone(services);
        async move {
            let pace = match services.config.sync.busy_rate {
                0 => None,
                rate => Some(Arc::new(Pace::new(rate))),
            };
            let sync = Lane {
                name: "sync (WEARLINK_SYNC_CONCURRENCY)",
                kinds: SYNC_KINDS,
                concurrency: services.config.sync.concurrency,
                wake: |s| &s.sync_wake,
            };
            let deliveries = Lane {
                name: "delivery (WEARLINK_OUTBOUND_CONCURRENCY)",
                kinds: DELIVERY_KINDS,
                concurrency: services.config.outbound.concurrency,
                wake: |s| &s.delivery_wake,
            };
            tokio::join!(
                run_lane(&services, sync, pace.clone(), stopped.clone()),
                run_lane(&services, deliveries, pace, stopped)
            );
        }
    });
    Worker { services: Arc::clone(services), stop, task }
}

/// Keeps up to the lane's concurrency of jobs running, claiming as slots free up; wakes on the
/// lane's notice (work was just queued here) or every `poll`. While at least `busy_requests`
/// requests are being served, it starts a burst of jobs per turn of the shared pace.
async fn run_lane(
    services: &Arc<Services>,
    lane: Lane,
    pace: Option<Arc<Pace>>,
    mut stop: watch::Receiver<Option<Instant>>,
) {
    if lane.concurrency == 0 {
        tracing::info!(lane = lane.name, "concurrency 0: this instance runs none of this lane's jobs");
        return;
    }
    let mut running = tokio::task::JoinSet::new();
    // The worker's handle was dropped without stopping it: it runs until the process ends.
    let mut unstoppable = false;
    // Claims fill a quarter of the slots or more at once: one statement for several short jobs
    // (deliveries) instead of one per job that ends.
    let claim_at = (lane.concurrency / 4).max(1);
    loop {
        let deadline = *stop.borrow_and_update();
        if let Some(deadline) = deadline {
            let _ = tokio::time::timeout_at(deadline, async { while running.join_next().await.is_some() {} }).await;
            if !running.is_empty() {
                tracing::info!(lane = lane.name, jobs = running.len(), "stopping: jobs still running are aborted");
            }
            running.shutdown().await;
            return;
        }
        while running.try_join_next().is_some() {}
        let free = lane.concurrency - running.len();
        let busy =
            pace.is_some() && services.requests_in_flight.load(Ordering::Relaxed) >= services.config.sync.busy_requests;
        let mut claimed = 0;
        if free > 0 && (busy || free >= claim_at || running.is_empty()) {
            let jobs = match (&pace, busy) {
                (Some(pace), true) => pace.claim(free, |n| claim(services, &lane, n)).await,
                _ => claim(services, &lane, free).await,
            };
            claimed = jobs.len();
            for (job, lease) in jobs {
                running.spawn(run(Arc::clone(services), job, lease));
            }
        }
        // Claimed while busy: the next start waits for its turn of the pace, not for a job to end.
        if busy && claimed > 0 {
            continue;
        }
        if claimed > 0 && lane.concurrency - running.len() >= claim_at {
            continue;
        }
        tokio::select! {
            Some(_) = running.join_next(), if !running.is_empty() => {}
            _ = (lane.wake)(services).notified() => {}
            _ = tokio::time::sleep(services.config.sync.poll) => {}
            changed = stop.changed(), if !unstoppable => unstoppable = changed.is_err(),
        }
    }
}
