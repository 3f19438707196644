//! Wearlink: a self-hostable wearable-connection gateway for FHIR health platforms.
//!
//! Layers, outermost first: `http` (routes, auth extraction, errors → problem+json) calls the
//! domain (`projects`, `connect`, `fhir`), which uses `store` and `providers` through small traits.

pub mod batch;
pub mod cache;
pub mod config;
pub mod connect;
pub mod connect_sessions;
pub mod connections;
pub mod crypto;
pub mod error;
pub mod events;
pub mod fhir;
pub mod fhir_server;
pub mod http;
pub mod metrics;
pub mod projects;
pub mod providers;
pub mod store;
pub mod sync;
pub mod time;
pub mod webhooks;

use std::sync::Arc;

pub use config::Config;
pub use error::{Error, Result};

/// What every request and background task shares.
pub struct Services {
    pub config: Config,
    pub store: Arc<dyn store::Store>,
    pub keyring: crypto::Keyring,
    pub providers: providers::Registry,
    /// Outbound client for provider calls (no redirects, timeouts from config), each one counted.
    pub http: providers::ProviderHttp,
    /// Outbound client for the platform's webhook endpoints: no redirects, its own timeout, and
    /// a resolver that refuses addresses the target policy refuses.
    pub outbound_http: reqwest::Client,
    /// Access tokens for the projects' own FHIR servers (`fhir_server`), until shortly before they expire.
    pub fhir_tokens: fhir_server::TokenCache,
    /// This process, as it names itself on leases.
    pub instance_id: String,
    /// API tokens, settings and sealed secrets, for at most `config.cache_ttl`.
    pub cache: cache::Cache,
    /// The connect → callback path's writes, many callers to one statement or transaction.
    pub writes: batch::Writes,
    /// Delivery outcomes, many attempts to one transaction.
    pub delivery_outcomes: events::Outcomes,
    /// Wakes this instance's sync lane (an event was just stored, a resync asked for).
    pub sync_wake: tokio::sync::Notify,
    /// Wakes this instance's delivery lane (a delivery was just queued here).
    pub delivery_wake: tokio::sync::Notify,
    pub sync_counters: sync::SyncCounters,
    /// This instance's metrics (`GET /metrics`).
    pub metrics: metrics::Metrics,
    /// Requests being served now: while there are any, background jobs start at a bounded pace.
    pub requests_in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// While requests keep the instance busy, background work's share of the time.
    pub work_budget: Arc<sync::WorkBudget>,
    /// The periodic passes of `spawn_every` (refresh, revocation, sweeps), so a stop can wait for them.
    passes: Passes,
}

/// Periodic passes in flight, and whether the process is stopping. A refresh pass cut between the
/// provider's answer and its write loses a rotated refresh token, and with it the connection, so a
/// stop lets the passes running finish (`stop_passes`) and starts none after.
#[derive(Default)]
struct Passes {
    stopping: std::sync::atomic::AtomicBool,
    /// Each pass holds a read guard; a stop takes the write guard once they are done.
    running: tokio::sync::RwLock<()>,
}

impl Services {
    /// Opens the store (applying migrations) and loads the master key, creating the key file in
    /// the data folder when `WEARLINK_MASTER_KEY` is unset.
    pub async fn start(config: Config) -> anyhow::Result<Arc<Self>> {
        let master_key = match &config.master_key {
            Some(key) => key.clone(),
            None => {
                let path = config.data_dir.join("master.key");
                let (key, created) = crypto::Keyring::load_or_create_file(&path)?;
                if created {
                    tracing::warn!(path = %path.display(), "WEARLINK_MASTER_KEY is unset: generated a master key file; back it up or set WEARLINK_MASTER_KEY");
                }
                key
            }
        };
        let keyring = crypto::Keyring::from_encoded(&master_key, &config.previous_master_keys)?;
        let store = store::connect(&config.database_url, &config.pool).await?;
        let metrics = metrics::Metrics::new();
        let requests_in_flight = Arc::default();
        let work_budget = Arc::new(sync::WorkBudget::new(
            config.sync.busy_share_percent,
            config.sync.busy_requests,
            Arc::clone(&requests_in_flight),
        ));
        let services = Arc::new(Self {
            providers: providers::Registry::new(&config.provider_urls),
            http: providers::ProviderHttp::new(
                providers::http_client(config.provider_timeout),
                metrics.provider_calls.clone(),
            ),
            outbound_http: events::http_client(&config.outbound),
            fhir_tokens: fhir_server::TokenCache::default(),
            instance_id: uuid::Uuid::new_v4().to_string(),
            cache: cache::Cache::new(config.cache_ttl),
            writes: batch::Writes::new(Arc::clone(&store)),
            delivery_outcomes: events::Outcomes::new(Arc::clone(&store)),
            sync_wake: tokio::sync::Notify::new(),
            delivery_wake: tokio::sync::Notify::new(),
            sync_counters: sync::SyncCounters::default(),
            metrics,
            requests_in_flight,
            work_budget,
            passes: Passes::default(),
            keyring,
            store,
            config,
        });
        services.follow_changes().await;
        Ok(services)
    }

    /// Applies to the cache what the database announces about changes to cached data (PostgreSQL:
    /// see `cache`). Waits a little for the listener to be up, so that an instance answering
    /// requests already hears; if it is not, the cache's TTL is the bound until it is.
    async fn follow_changes(self: &Arc<Self>) {
        const START_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
        let services = Arc::downgrade(self);
        let (up_tx, up_rx) = tokio::sync::oneshot::channel();
        let up_tx = std::sync::Mutex::new(Some(up_tx));
        let on_notice = move |notice| {
            let Some(services) = services.upgrade() else { return };
            match notice {
                store::ChangeNotice::Changed(change) => services.cache.heard(change),
                store::ChangeNotice::Acked(id) => services.cache.acked(id),
                store::ChangeNotice::Listening => {
                    services.cache.set_listening(true);
                    if let Some(up) = up_tx.lock().expect("lock").take() {
                        let _ = up.send(());
                    }
                }
                store::ChangeNotice::Lost => services.cache.set_listening(false),
            }
        };
        if !self.store.listen_for_changes(Arc::new(on_notice)) {
            return;
        }
        if tokio::time::timeout(START_WAIT, up_rx).await.is_err() {
            tracing::warn!("not yet listening for cache changes; until then changes made elsewhere take up to WEARLINK_CACHE_TTL_MS");
        }
    }

    /// A name for one claim of this process (a refresh, a batch of jobs): two claimers in the same
    /// process must not pass for each other, or a fence on the lease owner would let both through.
    pub fn claimer(&self) -> String {
        format!("{}/{}", self.instance_id, uuid::Uuid::new_v4().simple())
    }

    /// Runs `pass` every `every` until the process ends; a pass that overruns delays the next.
    pub fn spawn_every<F, Fut>(self: &Arc<Self>, every: std::time::Duration, pass: F) -> tokio::task::JoinHandle<()>
    where
        F: Fn(Arc<Services>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let services = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let _running = services.passes.running.read().await;
                if services.is_stopping() {
                    return;
                }
                pass(Arc::clone(&services)).await;
            }
        })
    }

    /// Whether this instance is stopping: passes start nothing new (a refresh pass claims no more).
    pub fn is_stopping(&self) -> bool {
        self.passes.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// For a graceful stop: no periodic pass starts from now on, and this waits until the ones
    /// running have finished, or until `deadline`. Answers whether they all finished.
    pub async fn stop_passes(&self, deadline: tokio::time::Instant) -> bool {
        self.passes.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        tokio::time::timeout_at(deadline, self.passes.running.write()).await.is_ok()
    }

    /// Deletes expired connect states every `every`, so the table cannot grow without bound.
    pub fn spawn_state_sweeper(self: &Arc<Self>, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
        self.spawn_every(every, |services| async move {
            match services.sweep_expired_states().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(swept = n, "expired connect states deleted"),
                Err(e) => tracing::warn!(error = %e, "sweeping expired connect states failed"),
            }
        })
    }

    /// Deletes every state expired by now, `SWEEP_BATCH` rows a statement, as background work: a
    /// backlog of millions (an earlier burst) must not hold SQLite's one writer for seconds, or
    /// connects wait past their acquire timeout (503). Between batches the writer goes to any
    /// request waiting for it (`store::in_background`). Answers how many were deleted.
    pub async fn sweep_expired_states(&self) -> store::StoreResult<u64> {
        let now = time::now_ms();
        in_batches(|| self.store.delete_expired_states(now, SWEEP_BATCH)).await
    }

    /// Deletes the records of work finished more than `retention` before `now`
    /// (`store::RetentionStore`) in batches, like the state sweep. Answers how many rows went;
    /// nothing without a retention.
    pub async fn prune_finished(&self, now: i64) -> store::StoreResult<u64> {
        let Some(retention) = self.config.retention else { return Ok(0) };
        let cutoff = now - retention.as_millis() as i64;
        in_batches(|| self.store.prune_finished(cutoff, SWEEP_BATCH)).await
    }
}

/// Runs `batch` (one bounded delete, as background work) until one deletes fewer than
/// `SWEEP_BATCH` rows, pausing between batches; answers how many rows went in all.
async fn in_batches<F, Fut>(batch: F) -> store::StoreResult<u64>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = store::StoreResult<u64>>,
{
    let mut total = 0;
    loop {
        let deleted = store::in_background(batch()).await?;
        total += deleted;
        if deleted < u64::from(SWEEP_BATCH) {
            return Ok(total);
        }
        tokio::time::sleep(SWEEP_PAUSE).await;
    }
}

/// Rows a housekeeping statement deletes at most. Measured on SQLite (2 shared cores, disk): a
/// batch of 2,000 expired states takes 10–25 ms, where one `DELETE` of a million held the writer
/// for 32 s (and connects failed with 503 after their 2 s acquire timeout).
pub const SWEEP_BATCH: u32 = 2_000;
/// A pause between two housekeeping batches, so a long sweep takes a share of the writer rather
/// than all of it when no request happens to be waiting at the moment it asks.
const SWEEP_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);
