//! A connection's life after connect: listing, refresh before expiry, disconnect with upstream
//! revocation, and handing a valid access token to the platform. No HTTP types.
//!
//! Refresh safety: a connection is refreshed only under a lease (one instance at a time; a crashed
//! holder's lease runs out), re-read after the lease is taken, and written back only while the
//! lease still holds. Strava rotates refresh tokens, so two refreshes of one token would lose the
//! connection; the lease is what prevents that.

use std::time::Duration;

use futures::stream::{self, StreamExt};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::crypto::{CryptoError, Keyring, Sealed};
use crate::error::{Error, Result};
use crate::fhir::{self, EndpointFacts};
use crate::projects::{self, Principal};
use crate::providers::{Provider, ProviderError, RevocationTarget};
use crate::store::{AuditEntry, ConnectionFilter, ConnectionRecord, Lease, PendingRevocation};
use crate::time::now_ms;
use crate::Services;

/// The secret part of a connection, sealed to its Endpoint.
pub struct TokenMaterial {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub token_type: String,
}

#[derive(Serialize, Deserialize)]
struct TokenMaterialJson {
    access_token: String,
    refresh_token: Option<String>,
    token_type: String,
}

/// Associated data binding sealed tokens to their Endpoint.
pub fn endpoint_owner(project_id: &str, endpoint_id: &str) -> String {
    format!("endpoint:{project_id}:{endpoint_id}")
}

fn revocation_owner(project_id: &str, revocation_id: &str) -> String {
    format!("revocation:{project_id}:{revocation_id}")
}

impl TokenMaterial {
    pub fn seal(&self, keyring: &Keyring, owner: &str) -> Sealed {
        let json = serde_json::to_vec(&TokenMaterialJson {
            access_token: self.access_token.expose_secret().to_string(),
            refresh_token: self.refresh_token.as_ref().map(|t| t.expose_secret().to_string()),
            token_type: self.token_type.clone(),
        })
        .expect("strings serialize");
        keyring.seal(&json, owner)
    }

    pub fn open(keyring: &Keyring, sealed: &Sealed, owner: &str) -> Result<Self, CryptoError> {
        let json: TokenMaterialJson =
            serde_json::from_slice(&keyring.open(sealed, owner)?).map_err(|_| CryptoError::Open)?;
        Ok(Self {
            access_token: SecretString::from(json.access_token),
            refresh_token: json.refresh_token.map(SecretString::from),
            token_type: json.token_type,
        })
    }
}

/// The Endpoint that shows `connection`.
pub fn endpoint_body(provider: &dyn Provider, c: &ConnectionRecord) -> Value {
    let status_reason = (c.status != "active").then_some(c.last_error.as_deref()).flatten();
    fhir::endpoint(&EndpointFacts {
        patient_id: &c.patient_id,
        provider_slug: provider.slug(),
        provider_name: provider.display_name(),
        api_base: provider.urls_for(c.region.as_deref()).api.as_str(),
        identifier_system: &provider.identifier_system(),
        remote_user_id: &c.remote_user_id,
        scopes: &c.scopes,
        token_expires_at: c.tokens.as_ref().and(c.expires_at),
        status: &c.status,
        status_reason,
    })
}

fn provider_of(services: &Services, slug: &str) -> Result<std::sync::Arc<dyn Provider>> {
    services.providers.get(slug).cloned().ok_or_else(|| Error::NotFound(format!("provider {slug}")))
}

pub async fn list(
    services: &Services,
    principal: &Principal,
    filter: ConnectionFilter,
) -> Result<Vec<ConnectionRecord>> {
    if let Some(slug) = &filter.provider {
        provider_of(services, slug)?;
    }
    Ok(services.store.list_connections(&principal.project_id, &filter).await?)
}

// ---- refresh ----

/// How refreshing behaves; from config.
#[derive(Clone, Debug)]
pub struct RefreshPolicy {
    /// Refresh tokens expiring within this window.
    pub window: Duration,
    /// How long a claim on a connection lasts.
    pub lease: Duration,
    /// First retry delay after a transient failure; doubles each time, up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Refreshes in flight at once per instance.
    pub concurrency: usize,
    /// No connection is refreshed twice within this, even when the provider's tokens live shorter
    /// than the window: the refresher must never loop on one connection.
    pub min_interval: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(30 * 60),
            lease: Duration::from_secs(120),
            backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(3600),
            concurrency: 16,
            min_interval: Duration::from_secs(60),
        }
    }
}

impl RefreshPolicy {
    pub fn backoff_after(&self, failures: i64) -> Duration {
        let exp = u32::try_from(failures.clamp(1, 20) - 1).unwrap_or(0);
        self.backoff.saturating_mul(2u32.saturating_pow(exp)).min(self.max_backoff)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshOutcome {
    Refreshed,
    /// Not due any more (another instance renewed it), gone, or the lease was lost.
    Skipped,
    /// The provider refused the grant: the connection is now `error`.
    Invalid,
    /// A passing failure: retried after a backoff.
    Deferred,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RefreshReport {
    pub refreshed: usize,
    pub skipped: usize,
    pub invalid: usize,
    pub deferred: usize,
}

fn lease(services: &Services, now: i64) -> Lease {
    Lease { owner: services.claimer(), now, until: now + services.config.refresh.lease.as_millis() as i64 }
}

/// One pass of the refresher at time `now`: claims what is due, batch by batch, and refreshes it.
pub async fn refresh_due(services: &Services, now: i64) -> Result<RefreshReport> {
    let policy = &services.config.refresh;
    let due_before = now + policy.window.as_millis() as i64;
    let mut report = RefreshReport::default();
    let lease = lease(services, now);
    let mut seen = std::collections::HashSet::new();
    // Stopping: the batch claimed is finished (its rotated tokens written), nothing more claimed.
    while !services.is_stopping() {
        let mut claimed = services.store.claim_due_refreshes(&lease, due_before, 100).await?;
        // Once per pass: whatever comes back a second time waits for the next pass.
        let (fresh, again): (Vec<String>, Vec<String>) = claimed.drain(..).partition(|id| seen.insert(id.clone()));
        for id in &again {
            services.store.release_refresh(&lease, id).await?;
        }
        if fresh.is_empty() {
            break;
        }
        let claimed = fresh;
        let outcomes: Vec<Result<RefreshOutcome>> = stream::iter(claimed)
            .map(|id| {
                let lease = lease.clone();
                async move { refresh_claimed(services, &lease, &id, due_before).await }
            })
            .buffer_unordered(policy.concurrency.max(1))
            .collect()
            .await;
        let mut progressed = false;
        for outcome in outcomes {
            match outcome? {
                RefreshOutcome::Refreshed => report.refreshed += 1,
                RefreshOutcome::Skipped => report.skipped += 1,
                RefreshOutcome::Invalid => report.invalid += 1,
                RefreshOutcome::Deferred => report.deferred += 1,
            }
            progressed = true;
        }
        if !progressed {
            break;
        }
    }
    Ok(report)
}

/// Refreshes one connection this instance holds the lease on; releases the lease in every case.
async fn refresh_claimed(
    services: &Services,
    lease: &Lease,
    endpoint_id: &str,
    due_before: i64,
) -> Result<RefreshOutcome> {
    let outcome = refresh_leased(services, lease, endpoint_id, due_before).await;
    if !matches!(outcome, Ok(RefreshOutcome::Refreshed | RefreshOutcome::Invalid | RefreshOutcome::Deferred)) {
        services.store.release_refresh(lease, endpoint_id).await?;
    }
    outcome
}

async fn refresh_leased(
    services: &Services,
    lease: &Lease,
    endpoint_id: &str,
    due_before: i64,
) -> Result<RefreshOutcome> {
    // Re-read under the lease: another instance may have renewed it since it looked due.
    let Some(c) = services.store.find_connection_by_endpoint(endpoint_id).await? else {
        return Ok(RefreshOutcome::Skipped);
    };
    let (Some(sealed), Some(provider)) = (&c.tokens, services.providers.get(&c.provider).cloned()) else {
        return Ok(RefreshOutcome::Skipped);
    };
    if c.status != "active" || !provider.supports_refresh() || c.expires_at.is_some_and(|e| e > due_before) {
        return Ok(RefreshOutcome::Skipped);
    }
    let owner = endpoint_owner(&c.project_id, &c.endpoint_id);
    let material = TokenMaterial::open(&services.keyring, sealed, &owner)?;
    let Some(refresh_token) = &material.refresh_token else {
        return Ok(RefreshOutcome::Skipped);
    };
    let credentials = match projects::client_credentials(services, &c.project_id, &c.provider).await {
        Ok(credentials) => credentials,
        Err(Error::CredentialsMissing { .. }) => {
            services.metrics.refresh(provider.slug(), "credentials_missing");
            return defer(services, lease, &c, "credentials_missing", None).await;
        }
        Err(e) => return Err(e),
    };
    let refreshed = provider.refresh_in(&services.http, &credentials, refresh_token, c.region.as_deref()).await;
    services.metrics.refresh(provider.slug(), refreshed.as_ref().map_or_else(ProviderError::code, |_| "refreshed"));
    match refreshed {
        Ok(fresh) => {
            let now = now_ms();
            let material = TokenMaterial {
                access_token: fresh.access_token,
                // A refresh answer without a refresh token keeps the one on file.
                refresh_token: fresh.refresh_token.or(material.refresh_token),
                token_type: fresh.token_type,
            };
            let mut updated = c.clone();
            updated.tokens = Some(material.seal(&services.keyring, &owner));
            updated.has_refresh_token = material.refresh_token.is_some();
            updated.expires_at = fresh.expires_at;
            updated.updated_at = now;
            updated.last_refreshed_at = Some(now);
            updated.last_error = None;
            updated.refresh_failures = 0;
            updated.next_attempt_at = Some(now + services.config.refresh.min_interval.as_millis() as i64);
            let body = endpoint_body(provider.as_ref(), &updated);
            match services.store.complete_refresh(lease, &updated, body).await? {
                Some(_) => Ok(RefreshOutcome::Refreshed),
                None => {
                    tracing::warn!(endpoint = %c.endpoint_id, "refresh finished after the lease was lost; result dropped");
                    Ok(RefreshOutcome::Skipped)
                }
            }
        }
        Err(ProviderError::InvalidGrant) => {
            tracing::warn!(endpoint = %c.endpoint_id, provider = %c.provider, "refresh refused: invalid_grant");
            mark_error(
                services,
                provider.as_ref(),
                &c,
                "invalid_grant: the provider no longer accepts the refresh token",
            )
            .await?;
            Ok(RefreshOutcome::Invalid)
        }
        Err(e) => {
            let retry_after = match &e {
                ProviderError::RateLimited { retry_after } => *retry_after,
                _ => None,
            };
            tracing::info!(endpoint = %c.endpoint_id, error = %e, "refresh failed; will retry");
            defer(services, lease, &c, &e.to_string(), retry_after).await
        }
    }
}

/// Records a passing failure: the connection stays active, the next attempt waits (backoff, or the
/// provider's Retry-After when longer).
async fn defer(
    services: &Services,
    lease: &Lease,
    c: &ConnectionRecord,
    error: &str,
    retry_after: Option<Duration>,
) -> Result<RefreshOutcome> {
    let failures = c.refresh_failures + 1;
    let delay = services.config.refresh.backoff_after(failures).max(retry_after.unwrap_or_default());
    let next = now_ms() + delay.as_millis() as i64;
    services.store.record_refresh_failure(lease, &c.endpoint_id, failures, next, error).await?;
    Ok(RefreshOutcome::Deferred)
}

/// Marks a connection `error` with its reason (the Endpoint shows both).
async fn mark_error(services: &Services, provider: &dyn Provider, c: &ConnectionRecord, reason: &str) -> Result<()> {
    let mut updated = c.clone();
    updated.status = "error".into();
    updated.last_error = Some(reason.into());
    let body = endpoint_body(provider, &updated);
    services.store.set_connection_status(&c.endpoint_id, "error", Some(reason), false, body, None).await?;
    Ok(())
}

// ---- disconnect and revocation ----

pub struct Disconnected {
    /// The upstream revoke failed and is retried in the background.
    pub revoke_pending: bool,
}

/// Disconnects a patient from a provider: tokens wiped, Endpoint `off`, access revoked upstream
/// (now, or later in the background). Idempotent.
pub async fn disconnect(
    services: &Services,
    principal: &Principal,
    slug: &str,
    patient_id: &str,
) -> Result<Disconnected> {
    let provider = provider_of(services, slug)?;
    if !crate::connect::is_fhir_id(patient_id) {
        return Err(Error::Invalid("patientId must be a FHIR id".into()));
    }
    let Some(c) = services.store.find_connection(&principal.project_id, patient_id, slug).await? else {
        return Ok(Disconnected { revoke_pending: false });
    };
    if c.status == "off" {
        return Ok(Disconnected { revoke_pending: false });
    }
    let now = now_ms();
    let revocation = match &c.tokens {
        Some(sealed) => {
            let material =
                TokenMaterial::open(&services.keyring, sealed, &endpoint_owner(&c.project_id, &c.endpoint_id))?;
            let id = uuid::Uuid::new_v4().to_string();
            let only_access = TokenMaterial {
                access_token: material.access_token,
                refresh_token: None,
                token_type: material.token_type,
            };
            Some(PendingRevocation {
                token: only_access.seal(&services.keyring, &revocation_owner(&c.project_id, &id)),
                id,
                project_id: c.project_id.clone(),
                endpoint_id: c.endpoint_id.clone(),
                provider: c.provider.clone(),
                remote_user_id: c.remote_user_id.clone(),
                attempts: 0,
                // Held by this call for one lease; the background revoker takes over after that.
                next_attempt_at: now + services.config.refresh.lease.as_millis() as i64,
                last_error: None,
                created_at: now,
            })
        }
        None => None,
    };
    let mut off = c.clone();
    off.status = "off".into();
    off.tokens = None;
    off.last_error = Some("disconnected".into());
    let body = endpoint_body(provider.as_ref(), &off);
    let changed = services
        .store
        .set_connection_status(&c.endpoint_id, "off", Some("disconnected"), true, body, revocation.as_ref())
        .await?;
    let revoke_pending = match (changed, revocation) {
        (true, Some(r)) => !revoke(services, &r).await?,
        _ => false,
    };
    Ok(Disconnected { revoke_pending })
}

/// Tries one upstream revocation; answers whether it is done (and no longer pending).
async fn revoke(services: &Services, r: &PendingRevocation) -> Result<bool> {
    let Some(provider) = services.providers.get(&r.provider).cloned() else {
        services.store.complete_revocation(&r.id).await?;
        return Ok(true);
    };
    let material = TokenMaterial::open(&services.keyring, &r.token, &revocation_owner(&r.project_id, &r.id))?;
    let credentials = match projects::client_credentials(services, &r.project_id, &r.provider).await {
        Ok(c) => Some(c),
        Err(Error::CredentialsMissing { .. }) => None,
        Err(e) => return Err(e),
    };
    let webhook_url = crate::webhooks::webhook_url(services, &r.provider, &r.project_id);
    let webhook_secret = projects::webhook_secret(services, &r.project_id, &r.provider).await?;
    let target = RevocationTarget {
        access_token: &material.access_token,
        remote_user_id: &r.remote_user_id,
        credentials: credentials.as_ref(),
        webhook: crate::providers::WebhookTarget { url: &webhook_url, secret: webhook_secret.as_ref() },
    };
    let revoked = provider.revoke(&services.http, &target).await;
    services.metrics.revocation(provider.slug(), revoked.as_ref().map_or_else(ProviderError::code, |_| "revoked"));
    match revoked {
        Ok(()) => {
            services.store.complete_revocation(&r.id).await?;
            Ok(true)
        }
        Err(e) => {
            let attempts = r.attempts + 1;
            let next = now_ms() + services.config.refresh.backoff_after(attempts).as_millis() as i64;
            tracing::info!(endpoint = %r.endpoint_id, error = %e, attempts, "upstream revoke failed; will retry");
            services.store.fail_revocation(&r.id, attempts, next, &e.to_string()).await?;
            Ok(false)
        }
    }
}

/// One pass of the background revoker at `now`: answers how many revocations completed.
pub async fn revoke_due(services: &Services, now: i64) -> Result<usize> {
    let claimed = services.store.claim_due_revocations(&lease(services, now), 50).await?;
    let mut done = 0;
    for r in &claimed {
        if revoke(services, r).await? {
            done += 1;
        }
    }
    Ok(done)
}

// ---- access tokens for the platform ----

pub struct AccessTokenGrant {
    pub access_token: SecretString,
    pub token_type: String,
    pub expires_at: Option<i64>,
}

/// Refresh first when the token expires within this margin.
const TOKEN_MARGIN: Duration = Duration::from_secs(5 * 60);

/// A currently valid access token for the platform's own data jobs (admin). Every call is audited.
pub async fn access_token(services: &Services, principal: &Principal, endpoint_id: &str) -> Result<AccessTokenGrant> {
    principal.require_admin()?;
    let not_found = || Error::NotFound(format!("connection {endpoint_id}"));
    let c = services
        .store
        .find_connection_by_endpoint(endpoint_id)
        .await?
        .filter(|c| c.project_id == principal.project_id)
        .ok_or_else(not_found)?;
    services
        .store
        .append_audit(&AuditEntry {
            id: uuid::Uuid::new_v4().to_string(),
            project_id: c.project_id.clone(),
            actor: principal.actor(),
            action: "access_token.read".into(),
            endpoint_id: Some(c.endpoint_id.clone()),
            at: now_ms(),
        })
        .await?;
    let c = refresh_if_expiring(services, c, TOKEN_MARGIN.as_millis() as i64).await?;
    if c.status != "active" {
        return Err(Error::Conflict(format!("the connection is {}; reconnect the patient", c.status)));
    }
    let sealed = c.tokens.as_ref().ok_or_else(|| Error::Conflict("the connection holds no tokens".into()))?;
    let material = TokenMaterial::open(&services.keyring, sealed, &endpoint_owner(&c.project_id, &c.endpoint_id))?;
    Ok(AccessTokenGrant {
        access_token: material.access_token,
        token_type: material.token_type,
        expires_at: c.expires_at,
    })
}

/// Refreshes the connection first when its token expires within `margin` ms (under the lease).
async fn refresh_if_expiring(services: &Services, c: ConnectionRecord, margin: i64) -> Result<ConnectionRecord> {
    let expiring = |c: &ConnectionRecord| c.status == "active" && c.expires_at.is_some_and(|e| e <= now_ms() + margin);
    let refreshable = services.providers.get(&c.provider).is_some_and(|p| p.supports_refresh()) && c.has_refresh_token;
    if !expiring(&c) || !refreshable {
        return Ok(c);
    }
    // Take the lease, or wait briefly for whoever holds it to finish.
    for _ in 0..50 {
        let now = now_ms();
        let lease = lease(services, now);
        if services.store.claim_refresh(&lease, &c.endpoint_id).await? {
            refresh_claimed(services, &lease, &c.endpoint_id, now + margin).await?;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        match services.store.find_connection_by_endpoint(&c.endpoint_id).await? {
            Some(latest) if !expiring(&latest) => return Ok(latest),
            _ => {}
        }
    }
    Ok(services.store.find_connection_by_endpoint(&c.endpoint_id).await?.unwrap_or(c))
}

// ---- tokens for data sync ----

/// The connection and a usable access token for data sync, refreshed first when it expires within
/// the refresh window; `None` when the connection is gone, not active or holds no tokens.
pub async fn data_token(services: &Services, endpoint_id: &str) -> Result<Option<(ConnectionRecord, SecretString)>> {
    let Some(c) = services.store.find_connection_by_endpoint(endpoint_id).await? else {
        return Ok(None);
    };
    let c = refresh_if_expiring(services, c, services.config.refresh.window.as_millis() as i64).await?;
    let (true, Some(sealed)) = (c.status == "active", &c.tokens) else {
        return Ok(None);
    };
    let material = TokenMaterial::open(&services.keyring, sealed, &endpoint_owner(&c.project_id, &c.endpoint_id))?;
    Ok(Some((c, material.access_token)))
}

/// The provider refused `refused` (401): answers the connection's current access token when
/// another worker has renewed it since, else (with `may_refresh`) refreshes once under the lease;
/// `None` when there is no other token to be had.
pub async fn refresh_refused_token(
    services: &Services,
    endpoint_id: &str,
    refused: &SecretString,
    may_refresh: bool,
) -> Result<Option<SecretString>> {
    let renewed = || async {
        let Some(c) = services.store.find_connection_by_endpoint(endpoint_id).await? else {
            return Ok::<_, Error>((None, None));
        };
        let (true, Some(sealed)) = (c.status == "active", &c.tokens) else {
            return Ok((None, None));
        };
        let token = TokenMaterial::open(&services.keyring, sealed, &endpoint_owner(&c.project_id, &c.endpoint_id))?
            .access_token;
        let changed = token.expose_secret() != refused.expose_secret();
        Ok((Some(c), changed.then_some(token)))
    };
    for _ in 0..50 {
        let (Some(c), token) = renewed().await? else {
            return Ok(None);
        };
        if token.is_some() {
            return Ok(token);
        }
        let refreshable = services.providers.get(&c.provider).is_some_and(|p| p.supports_refresh());
        if !may_refresh || !refreshable || !c.has_refresh_token {
            return Ok(None);
        }
        let lease = lease(services, now_ms());
        if services.store.claim_refresh(&lease, endpoint_id).await? {
            // Another worker may have renewed it between our read and our claim.
            if let (_, Some(token)) = renewed().await? {
                services.store.release_refresh(&lease, endpoint_id).await?;
                return Ok(Some(token));
            }
            refresh_claimed(services, &lease, endpoint_id, i64::MAX).await?;
            return Ok(renewed().await?.1);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(None)
}

/// The provider keeps refusing the connection's access: `error`, with a reason the platform can
/// act on; its queued work is dropped with it.
pub async fn mark_reconnect_needed(services: &Services, endpoint_id: &str, reason: &str) -> Result<()> {
    let Some(c) = services.store.find_connection_by_endpoint(endpoint_id).await? else {
        return Ok(());
    };
    let provider = provider_of(services, &c.provider)?;
    mark_error(services, provider.as_ref(), &c, reason).await
}

/// Runs the refresher and the revoker every `every` until the process ends.
pub fn spawn_workers(services: &std::sync::Arc<Services>, every: Duration) -> tokio::task::JoinHandle<()> {
    services.spawn_every(every, |services| async move {
        match refresh_due(&services, now_ms()).await {
            Ok(r) if r == RefreshReport::default() => {}
            Ok(r) => {
                tracing::info!(refreshed = r.refreshed, deferred = r.deferred, invalid = r.invalid, "refresh pass")
            }
            Err(e) => tracing::warn!(error = %e, "refresh pass failed"),
        }
        if let Err(e) = revoke_due(&services, now_ms()).await {
            tracing::warn!(error = %e, "revocation pass failed");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_ceiling() {
        let p = RefreshPolicy::default();
        assert_eq!(p.backoff_after(1), Duration::from_secs(30));
        assert_eq!(p.backoff_after(2), Duration::from_secs(60));
        assert_eq!(p.backoff_after(3), Duration::from_secs(120));
        assert_eq!(p.backoff_after(40), Duration::from_secs(3600));
    }

    #[test]
    fn token_material_is_bound_to_its_endpoint() {
        let ring = Keyring::from_encoded(&Keyring::generate_encoded(), &[]).unwrap();
        let m =
            TokenMaterial { access_token: "a".to_string().into(), refresh_token: None, token_type: "Bearer".into() };
        let sealed = m.seal(&ring, &endpoint_owner("p", "e1"));
        assert!(TokenMaterial::open(&ring, &sealed, &endpoint_owner("p", "e2")).is_err());
        let opened = TokenMaterial::open(&ring, &sealed, &endpoint_owner("p", "e1")).unwrap();
        assert_eq!(opened.access_token.expose_secret(), "a");
    }
}
