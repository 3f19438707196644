//! Inbound provider webhooks: verified, written to a durable deduplicated inbox before they are
//! acknowledged, then processed by a background worker with retries and a dead-letter state.
//! No HTTP types.

use std::time::Duration;

use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use crate::connections::endpoint_body;
use crate::error::{Error, Result};
use crate::projects::{self, Principal};
use crate::providers::{PolarEvent, StravaEvent};
use crate::store::{EventFilter, Lease, WebhookEvent};
use crate::time::now_ms;
use crate::Services;

/// Where the project's Strava push subscription id is recorded (not a user-facing setting).
pub const STRAVA_SUBSCRIPTION_SETTING: &str = "STRAVA_PUSH_SUBSCRIPTION_ID";
/// Failed processing attempts before an event is dead-lettered.
const MAX_ATTEMPTS: i64 = 8;

/// What a delivery led to.
#[derive(Debug, PartialEq, Eq)]
pub enum Receipt {
    /// Stored; `false` when it was a provider retry of an event already stored.
    Stored { new: bool },
    /// Polar's PING while the webhook is being created: acknowledged, nothing stored.
    Ping,
}

async fn require_project(services: &Services, project_id: &str) -> Result<()> {
    if !crate::connect::is_fhir_id(project_id) || !services.store.project_exists(project_id).await? {
        return Err(Error::NotFound(format!("project {project_id}")));
    }
    Ok(())
}

fn webhook_url(services: &Services, slug: &str, project_id: &str) -> String {
    let base = services.config.base_url.as_str().trim_end_matches('/');
    format!("{base}/v1/wearables/{slug}/webhook/{project_id}")
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Strava's subscription validation: echo the challenge only for the project's verify token.
pub async fn strava_challenge(
    services: &Services,
    project_id: &str,
    mode: Option<&str>,
    challenge: Option<&str>,
    verify_token: Option<&str>,
) -> Result<String> {
    require_project(services, project_id).await?;
    let (Some("subscribe"), Some(challenge), Some(token)) = (mode, challenge, verify_token) else {
        return Err(Error::Rejected("expected hub.mode=subscribe, hub.challenge and hub.verify_token".into()));
    };
    let secret = projects::webhook_secret(services, project_id, "strava").await?;
    match secret {
        Some(secret) if constant_time_eq(secret.expose_secret(), token) => Ok(challenge.to_string()),
        _ => Err(Error::Rejected("the verify token does not match".into())),
    }
}

/// A Strava event: accepted only for the project's recorded subscription; stored before the 200.
pub async fn receive_strava(services: &Services, project_id: &str, body: &[u8]) -> Result<Receipt> {
    require_project(services, project_id).await?;
    let event = StravaEvent::parse(body).map_err(Error::Malformed)?;
    let recorded = projects::stored_settings(services, project_id)
        .await?
        .iter()
        .find(|(k, _)| k == STRAVA_SUBSCRIPTION_SETTING)
        .and_then(|(_, v)| v.as_str().map(String::from));
    if recorded.as_deref() != Some(event.subscription_id.to_string().as_str()) {
        return Err(Error::Rejected("unknown subscription_id".into()));
    }
    let owner = event.owner_id.to_string();
    store(services, project_id, "strava", event.dedup_key(), event.event_type(), Some(owner), body).await
}

/// A Polar event: the signature is checked against the project's webhook secret (PING excepted).
pub async fn receive_polar(
    services: &Services,
    project_id: &str,
    event_header: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
) -> Result<Receipt> {
    require_project(services, project_id).await?;
    // Polar PINGs the URL while the webhook is created, before its secret can be on file.
    let body_is_ping = || serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| v["event"] == "PING");
    if event_header == Some("PING") || (event_header.is_none() && body_is_ping()) {
        return Ok(Receipt::Ping);
    }
    let secret = projects::webhook_secret(services, project_id, "polar").await?;
    let verified = match (secret, signature) {
        (Some(secret), Some(signature)) => {
            crate::providers::verify_polar_signature(secret.expose_secret().as_bytes(), body, signature)
        }
        _ => false,
    };
    if !verified {
        return Err(Error::InvalidSignature);
    }
    let event = PolarEvent::parse(body).map_err(Error::Malformed)?;
    if event.event == "PING" {
        return Ok(Receipt::Ping);
    }
    let user = event.user_id();
    store(services, project_id, "polar", event.dedup_key(), event.event.clone(), user, body).await
}

/// Writes the event to the inbox, resolving its connection. Events of unknown users are kept as
/// `ignored`, so they are acknowledged and visible but never processed.
async fn store(
    services: &Services,
    project_id: &str,
    provider: &str,
    dedup_key: String,
    event_type: String,
    remote_user_id: Option<String>,
    body: &[u8],
) -> Result<Receipt> {
    let connection = match &remote_user_id {
        Some(user) => services.store.find_connection_by_remote_user(project_id, provider, user).await?,
        None => None,
    };
    let now = now_ms();
    let new = services
        .store
        .insert_event(&WebhookEvent {
            id: uuid::Uuid::new_v4().to_string(),
            project_id: project_id.into(),
            provider: provider.into(),
            dedup_key,
            event_type,
            remote_user_id,
            endpoint_id: connection.as_ref().map(|c| c.endpoint_id.clone()),
            patient_id: connection.as_ref().map(|c| c.patient_id.clone()),
            payload: String::from_utf8_lossy(body).into_owned(),
            state: if connection.is_some() { "received" } else { "ignored" }.into(),
            attempts: 0,
            next_attempt_at: now,
            last_error: None,
            received_at: now,
            processed_at: connection.is_none().then_some(now),
        })
        .await?;
    Ok(Receipt::Stored { new })
}

/// One pass of the worker at `now`: processes due events until none is left; answers how many.
pub async fn process_due(services: &Services, now: i64) -> Result<usize> {
    let lease = Lease {
        owner: services.instance_id.clone(),
        now,
        until: now + services.config.refresh.lease.as_millis() as i64,
    };
    let mut processed = 0;
    loop {
        let claimed = services.store.claim_due_events(&lease, 200).await?;
        if claimed.is_empty() {
            return Ok(processed);
        }
        for event in &claimed {
            match process(services, event).await {
                Ok(state) => services.store.finish_event(&event.id, state, now_ms()).await?,
                Err(e) => {
                    let attempts = event.attempts + 1;
                    // From the pass's own clock, so this pass does not take it up again.
                    let next =
                        lease.now.max(now_ms()) + services.config.refresh.backoff_after(attempts).as_millis() as i64;
                    let dead = attempts >= MAX_ATTEMPTS;
                    tracing::warn!(event = %event.id, attempts, dead, error = %e, "webhook event processing failed");
                    services.store.fail_event(&event.id, attempts, next, &e.to_string(), dead).await?;
                }
            }
            processed += 1;
        }
    }
}

/// Applies one event; answers its final state.
async fn process(services: &Services, event: &WebhookEvent) -> Result<&'static str> {
    let Some(endpoint_id) = &event.endpoint_id else {
        return Ok("ignored");
    };
    let Some(c) = services.store.find_connection_by_endpoint(endpoint_id).await? else {
        return Ok("ignored");
    };
    let provider = services.providers.get(&c.provider).cloned().ok_or_else(|| Error::NotFound("provider".into()))?;
    if event.provider == "strava" {
        let parsed = StravaEvent::parse(event.payload.as_bytes()).map_err(Error::Malformed)?;
        if parsed.deauthorizes() {
            // The athlete revoked us at Strava: nothing to revoke upstream, only to forget.
            let mut off = c.clone();
            off.status = "off".into();
            off.tokens = None;
            off.last_error = Some("deauthorized at the provider".into());
            let body = endpoint_body(provider.as_ref(), &off);
            services
                .store
                .set_connection_status(&c.endpoint_id, "off", off.last_error.as_deref(), true, body, None)
                .await?;
            return Ok("done");
        }
        if parsed.object_type != "activity" {
            return Ok("ignored");
        }
    }
    // Activity and exercise events become sync work for their connection (a later stage reads them).
    Ok(if c.status == "active" { "pending_sync" } else { "ignored" })
}

pub async fn list_events(services: &Services, principal: &Principal, filter: EventFilter) -> Result<Vec<WebhookEvent>> {
    principal.require_admin()?;
    Ok(services.store.list_events(&principal.project_id, &filter).await?)
}

/// Puts an event (typically a dead letter) back in the queue.
pub async fn replay(services: &Services, principal: &Principal, event_id: &str) -> Result<()> {
    principal.require_admin()?;
    if !services.store.replay_event(&principal.project_id, event_id, now_ms()).await? {
        return Err(Error::NotFound(format!("event {event_id}")));
    }
    Ok(())
}

/// Creates the webhook at the provider for this project; answers (provider's id, our URL).
pub async fn subscribe(services: &Services, principal: &Principal, slug: &str) -> Result<(String, String)> {
    principal.require_admin()?;
    let provider = services.providers.get(slug).cloned().ok_or_else(|| Error::NotFound(format!("provider {slug}")))?;
    let credentials = projects::client_credentials(services, &principal.project_id, slug).await?;
    let url = webhook_url(services, slug, &principal.project_id);
    let upstream = |e: crate::providers::ProviderError| Error::Upstream(e.to_string());
    match slug {
        "strava" => {
            // Strava echoes this verify token to our GET; keep one on file (generate it if needed).
            let verify_token = match projects::webhook_secret(services, &principal.project_id, slug).await? {
                Some(secret) => secret.expose_secret().to_string(),
                None => {
                    let token = crate::crypto::random_token(24);
                    let key = projects::secret_key(slug, "WEBHOOK_SECRET");
                    projects::put_secret(services, principal, &key, &token).await?;
                    token
                }
            };
            let id = crate::providers::create_strava_push_subscription(
                &services.http,
                provider.urls(),
                &credentials,
                &url,
                &verify_token,
            )
            .await
            .map_err(upstream)?;
            let value = serde_json::Value::String(id.clone());
            projects::put_internal_setting(services, &principal.project_id, STRAVA_SUBSCRIPTION_SETTING, &value)
                .await?;
            Ok((id, url))
        }
        "polar" => {
            let (id, signature_key) =
                crate::providers::create_polar_webhook(&services.http, provider.urls(), &credentials, &url)
                    .await
                    .map_err(upstream)?;
            let key = projects::secret_key(slug, "WEBHOOK_SECRET");
            projects::put_secret(services, principal, &key, &signature_key).await?;
            Ok((id, url))
        }
        _ => Err(Error::NotFound(format!("webhooks for provider {slug}"))),
    }
}

/// Runs the inbox worker every `every` until the process ends.
pub fn spawn_worker(services: &std::sync::Arc<Services>, every: Duration) -> tokio::task::JoinHandle<()> {
    services.spawn_every(every, |services| async move {
        if let Err(e) = process_due(&services, now_ms()).await {
            tracing::warn!(error = %e, "webhook worker pass failed");
        }
    })
}
