//! One connection's calls to its provider's data API: each counted against the shared rate-limit
//! budget before it is made, its answer's rate-limit headers recorded, the access token refreshed
//! once on a 401, and the connection marked `error` when the token stays refused.

use std::sync::Arc;

use secrecy::SecretString;
use serde_json::Value;

use crate::connections;
use crate::fhir::MapContext;
use crate::providers::data::{DataApi, DataError, DataSource, ObjectRef, Page, TimeRange};
use crate::providers::Provider;
use crate::store::sync::RateWindow;
use crate::store::ConnectionRecord;
use crate::time::now_ms;
use crate::Services;

/// Why a call did not answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The budget is spent until then (or the provider said 429): park the work, it is no failure.
    #[error("rate limited until {0}")]
    Parked(i64),
    /// The connection cannot be used any more (off, or its access refused for good).
    #[error("connection unusable: {0}")]
    Stopped(String),
    #[error(transparent)]
    Provider(#[from] DataError),
    #[error(transparent)]
    Internal(#[from] crate::Error),
}

pub struct Session<'s> {
    services: &'s Services,
    pub connection: ConnectionRecord,
    pub provider: Arc<dyn Provider>,
    pub context: MapContext,
    token: SecretString,
    /// The share of the budget this work may use (see `SyncPolicy::background_share_percent`).
    share_percent: i64,
}

impl<'s> Session<'s> {
    /// `None` when the connection is gone, not active, or its provider syncs no data.
    pub async fn open(services: &'s Services, endpoint_id: &str, background: bool) -> Result<Option<Self>, CallError> {
        let Some((connection, token)) = connections::data_token(services, endpoint_id).await? else {
            return Ok(None);
        };
        let Some(provider) = services.providers.get(&connection.provider).cloned() else {
            return Ok(None);
        };
        if provider.data().is_none() {
            return Ok(None);
        }
        let context = MapContext {
            project_id: connection.project_id.clone(),
            patient_id: connection.patient_id.clone(),
            endpoint_id: connection.endpoint_id.clone(),
            provider: connection.provider.clone(),
            remote_user_id: connection.remote_user_id.clone(),
        };
        let share_percent = if background { services.config.sync.background_share_percent } else { 100 };
        Ok(Some(Self { services, connection, provider, context, token, share_percent }))
    }

    pub fn source(&self) -> &dyn DataSource {
        self.provider.data().expect("checked at open")
    }

    /// Whether the connection is still active (a disconnect stops the work at the next call).
    pub async fn still_active(&self) -> Result<bool, CallError> {
        let current = self
            .services
            .store
            .find_connection_by_endpoint(&self.connection.endpoint_id)
            .await
            .map_err(crate::Error::from)?;
        Ok(current.is_some_and(|c| c.status == "active"))
    }

    pub async fn list(&mut self, stream: &str, range: TimeRange, cursor: Option<&Value>) -> Result<Page, CallError> {
        let provider = Arc::clone(&self.provider);
        for attempt in 0..3 {
            let retried = attempt > 0;
            self.reserve().await?;
            let api = self.api("list");
            let answer = provider.data().expect("checked at open").list(&api, stream, range, cursor).await;
            let headers = api.take_headers();
            drop(api);
            match self.answered(headers, answer, retried).await? {
                Some(page) => return Ok(page),
                None => continue,
            }
        }
        Err(CallError::Stopped("the provider keeps refusing renewed tokens".into()))
    }

    pub async fn fetch(&mut self, object: &ObjectRef) -> Result<Option<Value>, CallError> {
        let provider = Arc::clone(&self.provider);
        for attempt in 0..3 {
            let retried = attempt > 0;
            self.reserve().await?;
            let api = self.api("fetch");
            let answer = provider.data().expect("checked at open").fetch(&api, object).await;
            let headers = api.take_headers();
            drop(api);
            match self.answered(headers, answer, retried).await? {
                Some(object) => return Ok(object),
                None => continue,
            }
        }
        Err(CallError::Stopped("the provider keeps refusing renewed tokens".into()))
    }

    /// The provider's API for one call of `operation` (as the metrics name it).
    fn api(&self, operation: &'static str) -> DataApi<'_> {
        let call = (self.provider.slug(), operation);
        let urls = self.provider.urls_for(self.connection.region.as_deref());
        DataApi::new(&self.services.http, call, &urls.api, self.token.clone())
    }

    async fn reserve(&self) -> Result<(), CallError> {
        // Before each call: a safe point for background work to give way to requests.
        self.services.work_budget.turn().await;
        let c = &self.connection;
        match self.services.store.reserve_call(&c.project_id, &c.provider, self.share_percent, now_ms()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(until)) => Err(CallError::Parked(until)),
            Err(e) => Err(CallError::Internal(e.into())),
        }
    }

    /// Records the answer's rate-limit windows; answers the value, or `None` to retry once with a
    /// refreshed token.
    async fn answered<T>(
        &mut self,
        headers: Option<reqwest::header::HeaderMap>,
        answer: Result<T, DataError>,
        retried: bool,
    ) -> Result<Option<T>, CallError> {
        let now = now_ms();
        let c = &self.connection;
        let mut windows = headers.map(|h| self.source().rate_windows(&h, now)).unwrap_or_default();
        if let Err(DataError::RateLimited { retry_after }) = &answer {
            // However the provider counts, nothing more goes out until it said so (or a minute).
            let until = now + retry_after.map_or(60_000, |d| d.as_millis() as i64);
            windows.push(RateWindow {
                name: "retry-after".into(),
                limit: 1 << 40,
                used: 1 << 40,
                resets_at: until,
                length_ms: 1,
            });
        }
        if self.worth_recording(&windows, now) {
            let store = &self.services.store;
            store.record_rate_windows(&c.project_id, &c.provider, &windows).await.map_err(crate::Error::from)?;
        }
        match answer {
            Ok(value) => Ok(Some(value)),
            Err(DataError::RateLimited { .. }) => {
                let until =
                    windows.iter().filter(|w| w.used >= w.limit).map(|w| w.resets_at).max().unwrap_or(now + 60_000);
                tracing::info!(provider = %c.provider, "rate limited by the provider; work parked until the window resets");
                Err(CallError::Parked(until))
            }
            // Refused: a token another worker renewed meanwhile is tried; else one refresh, once.
            Err(DataError::Unauthorized) => {
                let endpoint = c.endpoint_id.clone();
                match connections::refresh_refused_token(self.services, &endpoint, &self.token, !retried).await? {
                    Some(token) => {
                        self.token = token;
                        Ok(None)
                    }
                    None => self.stop().await,
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Whether to write the provider's view of its windows now. Our own calls are counted as they
    /// are reserved; the provider's count adds other instances' and refused calls, so it is
    /// written at least every `RECORD_EVERY_MS` per provider application, and at once near a limit
    /// or on a 429 — not after every call, which made every worker queue on the same rows.
    fn worth_recording(&self, windows: &[RateWindow], now: i64) -> bool {
        const RECORD_EVERY_MS: i64 = 500;
        if windows.is_empty() {
            return false;
        }
        let near_limit = windows.iter().any(|w| w.used * 100 >= w.limit * 80);
        let key = format!("{}/{}", self.connection.project_id, self.connection.provider);
        let mut recorded = self.services.sync_counters.rate_recorded_at.lock().expect("not poisoned");
        let last = recorded.get(&key).copied().unwrap_or(i64::MIN);
        if near_limit || now.saturating_sub(last) >= RECORD_EVERY_MS {
            recorded.insert(key, now);
            return true;
        }
        false
    }

    /// The provider keeps refusing our access: the connection needs the patient to reconnect.
    async fn stop<T>(&self) -> Result<Option<T>, CallError> {
        let reason = "reconnect needed: the provider refused the access token (401)";
        tracing::warn!(endpoint = %self.connection.endpoint_id, provider = %self.connection.provider, "{reason}");
        connections::mark_reconnect_needed(self.services, &self.connection.endpoint_id, reason).await?;
        Err(CallError::Stopped(reason.into()))
    }
}
