//! Inbound provider webhooks: verified, written to a durable deduplicated inbox before they are
//! acknowledged; each queues a job that the sync stage (`crate::sync`) processes.
//! No HTTP types.

use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};
use crate::projects::{self, Principal};
use crate::providers::{PolarEvent, StravaEvent};
use crate::store::{EventFilter, WebhookEvent};
use crate::time::now_ms;
use crate::Services;

/// Where the project's Strava push subscription id is recorded (not a user-facing setting).
pub const STRAVA_SUBSCRIPTION_SETTING: &str = "STRAVA_PUSH_SUBSCRIPTION_ID";

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
    services.metrics.webhook_event(provider, &event_type);
    let connection = match &remote_user_id {
        Some(user) => services.store.find_connection_by_remote_user(project_id, provider, user).await?,
        None => None,
    };
    let now = now_ms();
    // Group-committed with the events that arrive meanwhile; answered once its commit is done.
    let new = services
        .writes
        .insert_event
        .run(WebhookEvent {
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
            synced_refs: None,
        })
        .await?;
    if new && connection.is_some() {
        services.sync_wake.notify_one();
    }
    Ok(Receipt::Stored { new })
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
