//! Wearlink: a self-hostable wearable-connection gateway for FHIR health platforms.
//!
//! Layers, outermost first: `http` (routes, auth extraction, errors → problem+json) calls the
//! domain (`projects`, `connect`, `fhir`), which uses `store` and `providers` through small traits.

pub mod batch;
pub mod cache;
pub mod config;
pub mod connect;
pub mod connections;
pub mod crypto;
pub mod error;
pub mod events;
pub mod fhir;
pub mod http;
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
    /// Outbound client for provider calls (no redirects, timeouts from config).
    pub http: reqwest::Client,
    /// Outbound client for the platform's webhook endpoints: no redirects, its own timeout, and
    /// a resolver that refuses addresses the target policy refuses.
    pub outbound_http: reqwest::Client,
    /// This process, as it names itself on leases.
    pub instance_id: String,
    /// API tokens, settings and sealed secrets, for at most `config.cache_ttl`.
    pub cache: cache::Cache,
    /// The connect → callback path's writes, many callers to one statement or transaction.
    pub writes: batch::Writes,
    /// Delivery outcomes, many attempts to one transaction.
    pub delivery_outcomes: events::Outcomes,
    /// Wakes this instance's sync worker (an event was just stored, a resync asked for).
    pub sync_wake: tokio::sync::Notify,
    pub sync_counters: sync::SyncCounters,
    /// Requests being served now: while there are any, background jobs start at a bounded pace.
    pub requests_in_flight: Arc<std::sync::atomic::AtomicUsize>,
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
        Ok(Arc::new(Self {
            providers: providers::Registry::new(&config.provider_urls),
            http: providers::http_client(config.provider_timeout),
            outbound_http: events::http_client(&config.outbound),
            instance_id: uuid::Uuid::new_v4().to_string(),
            cache: cache::Cache::new(config.cache_ttl),
            writes: batch::Writes::new(Arc::clone(&store)),
            delivery_outcomes: events::Outcomes::new(Arc::clone(&store)),
            sync_wake: tokio::sync::Notify::new(),
            sync_counters: sync::SyncCounters::default(),
            requests_in_flight: Arc::default(),
            keyring,
            store,
            config,
        }))
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
                pass(Arc::clone(&services)).await;
            }
        })
    }

    /// Deletes expired connect states every `every`, so the table cannot grow without bound.
    pub fn spawn_state_sweeper(self: &Arc<Self>, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
        self.spawn_every(every, |services| async move {
            match services.store.delete_expired_states(time::now_ms()).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(swept = n, "expired connect states deleted"),
                Err(e) => tracing::warn!(error = %e, "sweeping expired connect states failed"),
            }
        })
    }
}
