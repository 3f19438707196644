//! A budget for background work while requests are being served: pacing job *starts* (the
//! worker's `Pace`) does not bound a backfill that has started, which then ran at full speed beside
//! the requests. While the instance is busy, the time background work spends — polled on the
//! runtime's threads, and waiting for its own database writes — is charged here, and at its next
//! safe point (before a provider call, before a write: nothing held that requests wait for) the
//! work waits until that time is a `share` of the wall time. Idle, nothing is charged or waited.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

// Tokio's clock: the same as std's in the service, and paused time in tests.
use tokio::time::Instant;

/// Debt carried at most: a long step charged at once must not stall background work for seconds
/// after the requests are gone (the wait also ends as soon as the instance is no longer busy).
const MAX_DEBT: Duration = Duration::from_millis(250);
/// How often a waiting step looks again whether the instance is still busy.
const RECHECK: Duration = Duration::from_millis(5);

pub struct WorkBudget {
    /// Percent of the wall time background work may use while busy; 100: no budget.
    share_percent: u32,
    busy_requests: usize,
    in_flight: Arc<AtomicUsize>,
    origin: Instant,
    /// Nanoseconds after `origin` before which a step waits (while busy).
    next: AtomicU64,
}

impl WorkBudget {
    pub fn new(share_percent: u32, busy_requests: usize, in_flight: Arc<AtomicUsize>) -> Self {
        Self {
            share_percent: share_percent.clamp(1, 100),
            busy_requests,
            in_flight,
            origin: Instant::now(),
            next: AtomicU64::new(0),
        }
    }

    /// Whether enough requests are in flight for background work to give way.
    pub fn busy(&self) -> bool {
        self.share_percent < 100 && self.in_flight.load(Ordering::Relaxed) >= self.busy_requests
    }

    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_nanos() as u64
    }

    /// Background work spent `spent`: the next step may start when that is `share` of the time.
    pub fn charge(&self, spent: Duration) {
        if !self.busy() {
            return;
        }
        let now = self.nanos(Instant::now());
        let cost = (spent.as_nanos() as u64).saturating_mul(100) / u64::from(self.share_percent);
        let cap = now + MAX_DEBT.as_nanos() as u64;
        let _ = self.next.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| {
            Some(next.max(now).saturating_add(cost).min(cap))
        });
    }

    /// A safe point of background work: waits while the instance is busy and the budget spent.
    /// Requests' own work (not in `store::in_background`) never waits here.
    pub async fn turn(&self) {
        if !crate::store::is_background() {
            return;
        }
        loop {
            if !self.busy() {
                return;
            }
            let now = Instant::now();
            let next = self.next.load(Ordering::Relaxed);
            let at = self.nanos(now);
            if at >= next {
                return;
            }
            tokio::time::sleep(Duration::from_nanos(next - at).min(RECHECK)).await;
        }
    }

    /// Runs `work` (one write, say), charging the wall time it took when it is background work.
    pub async fn charged<F: Future>(&self, work: F) -> F::Output {
        if !crate::store::is_background() {
            return work.await;
        }
        let started = Instant::now();
        let output = work.await;
        self.charge(started.elapsed());
        output
    }

    /// `work`, its time on the runtime's threads charged to this budget.
    pub fn metered<F: Future>(self: &Arc<Self>, work: F) -> Metered<F> {
        Metered { work: Box::pin(work), budget: Arc::clone(self) }
    }
}

/// A future whose polls are charged to a budget (it never waits itself: it may hold a lock
/// between two polls; the work waits at its safe points).
pub struct Metered<F> {
    work: Pin<Box<F>>,
    budget: Arc<WorkBudget>,
}

impl<F: Future> Future for Metered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let started = Instant::now();
        let polled = self.work.as_mut().poll(cx);
        self.budget.charge(started.elapsed());
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn while_busy_work_waits_until_its_time_is_the_share() {
        let budget = WorkBudget::new(25, 8, Arc::new(AtomicUsize::new(8)));
        let started = Instant::now();
        budget.charge(Duration::from_millis(10));
        crate::store::in_background(budget.turn()).await;
        // 10 ms of work at a 25 % share: the next step 40 ms after it began.
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(39), "waited {waited:?}");
        assert!(waited < Duration::from_millis(200), "waited {waited:?}");
    }

    #[tokio::test]
    async fn idle_nothing_is_charged_and_nothing_waits() {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let budget = WorkBudget::new(25, 8, Arc::clone(&in_flight));
        budget.charge(Duration::from_secs(10));
        in_flight.store(8, Ordering::Relaxed);
        let started = Instant::now();
        crate::store::in_background(budget.turn()).await;
        assert!(started.elapsed() < Duration::from_millis(5), "work done while idle is no debt once requests come");
    }

    #[tokio::test]
    async fn the_debt_is_bounded_and_ends_when_the_requests_do() {
        let in_flight = Arc::new(AtomicUsize::new(8));
        let budget = Arc::new(WorkBudget::new(10, 8, Arc::clone(&in_flight)));
        let started = Instant::now();
        budget.charge(Duration::from_secs(5));
        crate::store::in_background(budget.turn()).await;
        let waited = started.elapsed();
        assert!(waited >= MAX_DEBT - RECHECK, "waited {waited:?}");
        assert!(waited < MAX_DEBT * 2, "five seconds charged wait at most the bound, waited {waited:?}");

        budget.charge(Duration::from_secs(5));
        let waiting = tokio::spawn({
            let budget = Arc::clone(&budget);
            async move { crate::store::in_background(budget.turn()).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "still busy: still waiting");
        in_flight.store(0, Ordering::Relaxed);
        let started = Instant::now();
        waiting.await.unwrap();
        assert!(started.elapsed() < Duration::from_millis(100), "the wait ended with the requests");
    }

    #[tokio::test]
    async fn a_metered_future_is_charged_for_its_polls() {
        let budget = Arc::new(WorkBudget::new(50, 8, Arc::new(AtomicUsize::new(8))));
        let started = Instant::now();
        budget.metered(async { std::thread::sleep(Duration::from_millis(10)) }).await;
        crate::store::in_background(budget.turn()).await;
        assert!(started.elapsed() >= Duration::from_millis(19), "10 ms polled at 50 %: 20 ms");
    }
}
