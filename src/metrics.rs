//! What an operator's Prometheus scrapes (`GET /metrics`): counters and histograms the domain
//! updates where things happen, gauges read at scrape time (the webhook inbox, the database pool,
//! the sync worker's counters). No HTTP types.
//!
//! One `Registry` per `Services` (the `prometheus-client` crate) rather than a process-wide
//! recorder: tests start many apps in one process and each reads its own counters exactly, and two
//! instances in one process never mix their figures.
//!
//! Labels are closed sets: provider slugs from the registry, operation and outcome names from the
//! code, route templates (never the raw path), status codes. No label carries a patient, a
//! project, a token, a state or a URL query; what a provider sends is mapped onto known values.

use std::fmt::Write;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::store::PoolStats;

/// The `Content-Type` of what `render` writes: the Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// States of the webhook inbox, always reported (0 included) so a dashboard sees `dead 0`.
pub const INBOX_STATES: &[&str] = &["received", "synced", "done", "ignored", "dead"];

/// Request latencies: 1 ms to 10 s.
const HTTP_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Provider call latencies: 10 ms to 30 s (their timeout is 10 s by default).
const PROVIDER_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: &'static str,
    /// The route template (`/v1/wearables/{provider}/connect`), or `unmatched`.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    provider: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    provider: &'static str,
    event_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    provider: &'static str,
    operation: &'static str,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    state: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// HTTP request counts and latencies; cloned into the HTTP layer's middleware.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    requests: Family<HttpLabels, Counter>,
    duration: HistogramFamily<HttpLabels>,
}

impl HttpMetrics {
    pub fn observe(&self, labels: HttpLabels, elapsed: Duration) {
        self.duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
        self.requests.get_or_create(&labels).inc();
    }
}

/// Calls to providers; cloned into `providers::ProviderHttp`, which sees every one go out.
#[derive(Clone, Debug)]
pub struct ProviderCalls {
    calls: Family<CallLabels, Counter>,
    duration: HistogramFamily<CallLabels>,
}

impl ProviderCalls {
    /// `status`: the answer's, or `None` when none came (unreachable, timed out).
    pub fn observe(&self, provider: &'static str, operation: &'static str, status: Option<u16>, elapsed: Duration) {
        let labels = CallLabels { provider, operation, status_class: status_class(status) };
        self.duration.get_or_create(&labels).observe(elapsed.as_secs_f64());
        self.calls.get_or_create(&labels).inc();
    }
}

fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        _ => "error",
    }
}

/// What the sync worker counted (`crate::sync::SyncCounters`), read at scrape time.
#[derive(Clone, Copy, Debug, Default)]
pub struct SyncSnapshot {
    pub lost_leases: u64,
    pub reconcile_found: u64,
    pub resources_written: u64,
}

/// What is read at scrape time.
pub struct Snapshot {
    /// Events in the inbox by state; `None` when the store could not be read (no inbox series then).
    pub inbox: Option<Vec<(String, i64)>>,
    pub pool: PoolStats,
    pub sync: SyncSnapshot,
    /// The FHIR outbox by state (`pending`, `dead`): rows and the oldest row's creation (epoch
    /// ms); `None` when the store could not be read.
    pub fhir_outbox: Option<crate::store::outbox::OutboxDepth>,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub http: HttpMetrics,
    pub provider_calls: ProviderCalls,
    connects: Family<OutcomeLabels, Counter>,
    callbacks: Family<OutcomeLabels, Counter>,
    refreshes: Family<OutcomeLabels, Counter>,
    revocations: Family<OutcomeLabels, Counter>,
    webhook_events: Family<EventLabels, Counter>,
    inbox: Family<StateLabels, Gauge>,
    pool: Family<PoolLabels, Gauge>,
    pool_max: Gauge,
    pool_waiting: Gauge,
    fhir_outbox: Family<StateLabels, Gauge>,
    fhir_outbox_oldest: Gauge,
    /// Resources written into projects' FHIR servers, requests sent, and bundle-size fallbacks.
    pub fhir_writes: Counter,
    pub fhir_requests: Family<FhirRequestLabels, Counter>,
    pub fhir_fallbacks: Counter,
}

/// A request of the FHIR outbox: `transaction`, `batch` or `single` (one conditional PUT).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FhirRequestLabels {
    pub kind: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("wearlink");
        let http = HttpMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(HTTP_BUCKETS.iter().copied())),
        };
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route template and status",
            http.requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by method, route template and status",
            http.duration.clone(),
        );
        let provider_calls = ProviderCalls {
            calls: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(PROVIDER_BUCKETS.iter().copied())),
        };
        registry.register(
            "provider_calls",
            "HTTP calls to providers, by provider, operation and status class (2xx, 4xx, 5xx, error: no answer)",
            provider_calls.calls.clone(),
        );
        registry.register(
            "provider_call_duration_seconds",
            "Time until a provider answered, by provider, operation and status class",
            provider_calls.duration.clone(),
        );
        let mut metrics = Self {
            http,
            provider_calls,
            connects: Family::default(),
            callbacks: Family::default(),
            refreshes: Family::default(),
            revocations: Family::default(),
            webhook_events: Family::default(),
            inbox: Family::default(),
            pool: Family::default(),
            pool_max: Gauge::default(),
            pool_waiting: Gauge::default(),
            fhir_outbox: Family::default(),
            fhir_outbox_oldest: Gauge::default(),
            fhir_writes: Counter::default(),
            fhir_requests: Family::default(),
            fhir_fallbacks: Counter::default(),
            registry,
        };
        let r = &mut metrics.registry;
        r.register(
            "connects",
            "Connect starts, by provider and outcome (started, or the error code)",
            metrics.connects.clone(),
        );
        r.register(
            "callbacks",
            "Connect callbacks, by provider and outcome (connected, or the error code)",
            metrics.callbacks.clone(),
        );
        r.register(
            "refreshes",
            "Token refreshes tried at the provider, by provider and outcome",
            metrics.refreshes.clone(),
        );
        r.register("revocations", "Upstream revocations tried, by provider and outcome", metrics.revocations.clone());
        r.register(
            "webhook_events_received",
            "Provider webhook events accepted (verified and parsed), by provider and event type",
            metrics.webhook_events.clone(),
        );
        r.register(
            "webhook_inbox_events",
            "Events in the webhook inbox, by state (all projects)",
            metrics.inbox.clone(),
        );
        r.register("db_pool_connections", "Database connections open, by state (idle, in_use)", metrics.pool.clone());
        r.register("db_pool_max_connections", "Database connections the pool may open", metrics.pool_max.clone());
        r.register(
            "db_pool_waiting",
            "Tasks waiting for a database connection to write (see README: Metrics)",
            metrics.pool_waiting.clone(),
        );
        r.register(
            "fhir_outbox_rows",
            "Resources waiting in the FHIR outbox to be written into projects' own FHIR servers, by state (pending, dead; all projects)",
            metrics.fhir_outbox.clone(),
        );
        r.register(
            "fhir_outbox_oldest_pending_age_seconds",
            "Age of the oldest pending row of the FHIR outbox (0 when none)",
            metrics.fhir_outbox_oldest.clone(),
        );
        r.register(
            "fhir_server_writes",
            "Resources written into projects' own FHIR servers",
            metrics.fhir_writes.clone(),
        );
        r.register(
            "fhir_server_requests",
            "Write requests sent to projects' own FHIR servers, by kind (transaction, batch, single)",
            metrics.fhir_requests.clone(),
        );
        r.register(
            "fhir_server_bundle_fallbacks",
            "Times a FHIR server refused a bundle for its size (or transactions) and smaller bundles were used",
            metrics.fhir_fallbacks.clone(),
        );
        metrics
    }

    /// A connect start ended: `Ok` (`started`) or the error's stable code.
    pub fn connect(&self, provider: &'static str, outcome: Result<(), &'static str>) {
        self.connects.get_or_create(&OutcomeLabels { provider, outcome: outcome.err().unwrap_or("started") }).inc();
    }

    /// A callback ended: `Ok` (`connected`) or the error's stable code.
    pub fn callback(&self, provider: &'static str, outcome: Result<(), &'static str>) {
        self.callbacks.get_or_create(&OutcomeLabels { provider, outcome: outcome.err().unwrap_or("connected") }).inc();
    }

    pub fn refresh(&self, provider: &'static str, outcome: &'static str) {
        self.refreshes.get_or_create(&OutcomeLabels { provider, outcome }).inc();
    }

    pub fn revocation(&self, provider: &'static str, outcome: &'static str) {
        self.revocations.get_or_create(&OutcomeLabels { provider, outcome }).inc();
    }

    /// A webhook event was accepted; a type this build does not know counts as `other`.
    pub fn webhook_event(&self, provider: &str, event_type: &str) {
        let provider = crate::providers::SLUGS.iter().copied().find(|p| *p == provider).unwrap_or("other");
        let event_type = KNOWN_EVENT_TYPES.iter().copied().find(|t| *t == event_type).unwrap_or("other");
        self.webhook_events.get_or_create(&EventLabels { provider, event_type }).inc();
    }

    /// The exposition, after setting the gauges read at scrape time.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        match &snapshot.inbox {
            Some(counts) => {
                for state in INBOX_STATES {
                    let count = counts.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
                    self.inbox.get_or_create(&StateLabels { state: (*state).into() }).set(count);
                }
                for (state, count) in counts.iter().filter(|(s, _)| !INBOX_STATES.contains(&s.as_str())) {
                    self.inbox.get_or_create(&StateLabels { state: state.clone() }).set(*count);
                }
            }
            // Unknown is not zero: no series rather than a wrong one.
            None => self.inbox.clear(),
        }
        match &snapshot.fhir_outbox {
            Some(depth) => {
                for state in [crate::store::outbox::PENDING, crate::store::outbox::DEAD] {
                    let count = depth.iter().find(|(s, _, _)| s == state).map_or(0, |(_, n, _)| *n);
                    self.fhir_outbox.get_or_create(&StateLabels { state: state.into() }).set(count);
                }
                let oldest =
                    depth.iter().find(|(s, _, _)| s == crate::store::outbox::PENDING).and_then(|(_, _, at)| *at);
                self.fhir_outbox_oldest.set(oldest.map_or(0, |at| (crate::time::now_ms() - at).max(0) / 1000));
            }
            None => self.fhir_outbox.clear(),
        }
        let pool = snapshot.pool;
        self.pool.get_or_create(&PoolLabels { state: "idle" }).set(pool.idle.into());
        self.pool.get_or_create(&PoolLabels { state: "in_use" }).set(pool.size.saturating_sub(pool.idle).into());
        self.pool_max.set(pool.max.into());
        self.pool_waiting.set(pool.waiting.into());

        // The sync worker's counters live in `SyncCounters`: constant values in a registry of the
        // moment, so the worker keeps its plain atomics.
        let mut scraped = Registry::with_prefix("wearlink_sync");
        let sync = snapshot.sync;
        scraped.register(
            "lost_leases",
            "Job completions refused because another worker had taken the job over",
            ConstCounter::new(sync.lost_leases),
        );
        scraped.register(
            "reconcile_found",
            "Resources the reconciliation pass created (data whose webhook never came)",
            ConstCounter::new(sync.reconcile_found),
        );
        scraped.register(
            "resources_written",
            "FHIR resources created or changed by sync",
            ConstCounter::new(sync.resources_written),
        );

        let mut text = String::new();
        let encode = prometheus_client::encoding::prometheus_text::encode;
        encode(&mut text, &self.registry).expect("writing to a String cannot fail");
        encode(&mut text, &scraped).expect("writing to a String cannot fail");
        if !text.ends_with('\n') {
            let _ = writeln!(text);
        }
        text
    }
}

/// Reads what the metrics report at scrape time. A store that cannot be read leaves the inbox out
/// (logged) rather than failing the scrape: the pool figures matter most when the database is down.
pub async fn snapshot(services: &crate::Services) -> Snapshot {
    use std::sync::atomic::Ordering::Relaxed;
    let inbox = match services.store.count_inbox().await {
        Ok(counts) => Some(counts),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: counting the webhook inbox failed");
            None
        }
    };
    let fhir_outbox = match services.store.outbox_depth().await {
        Ok(depth) => Some(depth),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: counting the FHIR outbox failed");
            None
        }
    };
    let counters = &services.sync_counters;
    Snapshot {
        fhir_outbox,
        inbox,
        pool: services.store.pool_stats(),
        sync: SyncSnapshot {
            lost_leases: counters.lost_leases.load(Relaxed),
            reconcile_found: counters.reconcile_found.load(Relaxed),
            resources_written: counters.resources_written.load(Relaxed),
        },
    }
}

/// Event types the providers document; anything else is counted as `other`.
const KNOWN_EVENT_TYPES: &[&str] = &[
    "activity.create",
    "activity.update",
    "activity.delete",
    "athlete.create",
    "athlete.update",
    "athlete.delete",
    "EXERCISE",
    "SLEEP",
    "CONTINUOUS_HEART_RATE",
    "SLEEP_WISE_CIRCADIAN_BEDTIME",
    "SLEEP_WISE_ALERTNESS",
    "ACTIVITY_SUMMARY",
    // Withings notifications, by category (`appli`).
    "appli-1",
    "appli-4",
    "appli-16",
    "appli-44",
    "appli-46",
    "appli-50",
    "appli-51",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_event_types_outside_the_known_set_are_other() {
        let metrics = Metrics::new();
        metrics.webhook_event("strava", "activity.create");
        metrics.webhook_event("strava", "patient-123.create");
        let text = metrics.render(&Snapshot {
            inbox: None,
            pool: PoolStats::default(),
            sync: SyncSnapshot::default(),
            fhir_outbox: None,
        });
        assert!(
            text.contains(
                r#"wearlink_webhook_events_received_total{provider="strava",event_type="activity.create"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"wearlink_webhook_events_received_total{provider="strava",event_type="other"} 1"#),
            "{text}"
        );
        assert!(!text.contains("patient-123"));
    }

    #[test]
    fn the_inbox_reports_every_state_and_nothing_when_unknown() {
        let metrics = Metrics::new();
        let snapshot =
            |inbox| Snapshot { inbox, pool: PoolStats::default(), sync: SyncSnapshot::default(), fhir_outbox: None };
        let text = metrics.render(&snapshot(Some(vec![("received".into(), 3)])));
        assert!(text.contains(r#"wearlink_webhook_inbox_events{state="received"} 3"#), "{text}");
        assert!(text.contains(r#"wearlink_webhook_inbox_events{state="dead"} 0"#), "{text}");
        let text = metrics.render(&snapshot(None));
        assert!(!text.contains("wearlink_webhook_inbox_events{"), "{text}");
    }

    #[test]
    fn status_classes() {
        assert_eq!(status_class(Some(204)), "2xx");
        assert_eq!(status_class(Some(429)), "4xx");
        assert_eq!(status_class(Some(503)), "5xx");
        assert_eq!(status_class(None), "error");
    }
}
