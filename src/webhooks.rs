//! Inbound provider webhooks: verified, written to a durable deduplicated inbox before they are
//! acknowledged; each queues a job that the sync stage (`crate::sync`) processes.
//! No HTTP types.

use std::sync::Arc;

use secrecy::SecretString;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::projects::{self, Principal};
use crate::providers::webhook::{
    Delivery, InboundEvent, SubscribeContext, Subscription, WebhookError, WebhookKeys, WebhookRequest,
};
use crate::providers::{ClientCredentials, Provider};
use crate::store::{EventFilter, WebhookEvent};
use crate::time::now_ms;
use crate::Services;

/// The setting a provider's recorded subscription is kept under (not user-facing: not listed).
pub fn subscription_setting(slug: &str) -> String {
    format!("WEARABLE_{}_WEBHOOK_SUBSCRIPTION", slug.to_ascii_uppercase())
}

/// What a delivery led to.
#[derive(Debug, PartialEq, Eq)]
pub enum Receipt {
    /// Stored; `false` when every event was a provider retry of one already stored.
    Stored { new: bool },
    /// Acknowledged with this status, nothing stored (Polar's PING, Google's verification).
    Acknowledged(u16),
}

async fn require_project(services: &Services, project_id: &str) -> Result<()> {
    if !crate::connect::is_fhir_id(project_id) || !services.store.project_exists(project_id).await? {
        return Err(Error::NotFound(format!("project {project_id}")));
    }
    Ok(())
}

/// The project's webhook URL for a provider.
pub fn webhook_url(services: &Services, slug: &str, project_id: &str) -> String {
    let base = services.config.base_url.as_str().trim_end_matches('/');
    format!("{base}/v1/wearables/{slug}/webhook/{project_id}")
}

/// The provider, when it has webhooks.
fn webhooks_of(services: &Services, slug: &str) -> Result<Arc<dyn Provider>> {
    let provider = services.providers.get(slug).cloned().ok_or_else(|| Error::NotFound(format!("provider {slug}")))?;
    if provider.webhooks().is_none() {
        return Err(Error::NotFound(format!("webhooks for provider {slug}")));
    }
    Ok(provider)
}

/// The project's keys for a provider's webhook checks (secret, OAuth app, recorded subscription).
struct Keys {
    webhook_secret: Option<SecretString>,
    client: Option<ClientCredentials>,
    subscription: Option<Value>,
}

impl Keys {
    async fn load(services: &Services, project_id: &str, slug: &str) -> Result<Self> {
        let webhook_secret = projects::webhook_secret(services, project_id, slug).await?;
        let client = match projects::client_credentials(services, project_id, slug).await {
            Ok(c) => Some(c),
            Err(Error::CredentialsMissing { .. }) => None,
            Err(e) => return Err(e),
        };
        let setting = subscription_setting(slug);
        let subscription = projects::stored_settings(services, project_id)
            .await?
            .iter()
            .find(|(k, _)| *k == setting)
            .map(|(_, v)| v.clone());
        Ok(Self { webhook_secret, client, subscription })
    }

    fn view(&self) -> WebhookKeys<'_> {
        WebhookKeys {
            webhook_secret: self.webhook_secret.as_ref(),
            client: self.client.as_ref(),
            subscription: self.subscription.as_ref(),
            now_ms: now_ms(),
        }
    }
}

fn webhook_error(e: WebhookError) -> Error {
    match e {
        WebhookError::Malformed(m) => Error::Malformed(m),
        WebhookError::InvalidSignature => Error::InvalidSignature,
        WebhookError::Rejected(m) => Error::Rejected(m),
        WebhookError::NotSupported => Error::NotFound("no such webhook interaction for this provider".into()),
    }
}

/// A GET (or HEAD) on the webhook URL: the provider validating it (Strava, Oura, Withings).
pub async fn handshake(
    services: &Services,
    slug: &str,
    project_id: &str,
    request: &WebhookRequest<'_>,
) -> Result<Value> {
    let provider = webhooks_of(services, slug)?;
    require_project(services, project_id).await?;
    let keys = Keys::load(services, project_id, slug).await?;
    provider.webhooks().expect("checked").handshake(request, &keys.view()).map_err(webhook_error)
}

/// A delivery: verified by the provider's rules, its events stored before the answer.
pub async fn receive(
    services: &Services,
    slug: &str,
    project_id: &str,
    request: &WebhookRequest<'_>,
) -> Result<Receipt> {
    let provider = webhooks_of(services, slug)?;
    require_project(services, project_id).await?;
    let keys = Keys::load(services, project_id, slug).await?;
    let delivery = provider.webhooks().expect("checked").receive(request, &keys.view()).map_err(webhook_error)?;
    let events = match delivery {
        Delivery::Acknowledge(status) => return Ok(Receipt::Acknowledged(status)),
        Delivery::Events(events) => events,
    };
    let known_only = provider.webhooks().expect("checked").unknown_users_rejected();
    // A push of many events (Garmin) is stored as many inbox rows, group-committed together.
    let stored =
        futures::future::try_join_all(events.into_iter().map(|e| store(services, project_id, slug, e, known_only)))
            .await?;
    Ok(Receipt::Stored { new: stored.iter().any(|new| *new) || stored.is_empty() })
}

/// Writes the event to the inbox, resolving its connection. Events of unknown users are kept as
/// `ignored`, so they are acknowledged and visible but never processed — or refused (403, nothing
/// stored) when `known_only`: a provider that signs nothing (Withings) must not let anyone fill
/// the inbox.
async fn store(
    services: &Services,
    project_id: &str,
    provider: &str,
    event: InboundEvent,
    known_only: bool,
) -> Result<bool> {
    let InboundEvent { dedup_key, event_type, remote_user_id, payload } = event;
    services.metrics.webhook_event(provider, &event_type);
    let connection = match &remote_user_id {
        Some(user) => services.store.find_connection_by_remote_user(project_id, provider, user).await?,
        None => None,
    };
    if known_only && connection.is_none() {
        return Err(Error::Rejected("no connection of this project has this user".into()));
    }
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
            payload,
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
    Ok(new)
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
    let provider = webhooks_of(services, slug)?;
    let credentials = projects::client_credentials(services, &principal.project_id, slug).await?;
    let url = webhook_url(services, slug, &principal.project_id);
    // Providers that check the URL while the subscription is made (Strava's and Oura's GET with
    // a verify token, Google's POSTs with its Authorization header) check it against this secret,
    // so one is on file first; a provider that issues its own key (Polar) replaces it after.
    let secret = match projects::webhook_secret(services, &principal.project_id, slug).await? {
        Some(secret) => secret,
        None => {
            let token = crate::crypto::random_token(24);
            projects::put_secret(services, principal, &projects::secret_key(slug, "WEBHOOK_SECRET"), &token).await?;
            SecretString::from(token)
        }
    };
    let ctx = SubscribeContext { credentials: &credentials, callback_url: &url, webhook_secret: &secret };
    let subscription = provider
        .webhooks()
        .expect("checked")
        .subscribe(&services.http, &ctx)
        .await
        .map_err(|e| Error::Upstream(e.to_string()))?;
    keep(services, principal, slug, &subscription).await?;
    Ok((subscription.id, url))
}

/// Keeps what a subscription left: its secret (as the project's webhook secret) and its record.
async fn keep(services: &Services, principal: &Principal, slug: &str, subscription: &Subscription) -> Result<()> {
    if let Some(secret) = &subscription.webhook_secret {
        projects::put_secret(services, principal, &projects::secret_key(slug, "WEBHOOK_SECRET"), secret).await?;
    }
    if let Some(record) = &subscription.record {
        projects::put_internal_setting(services, &principal.project_id, &subscription_setting(slug), record).await?;
    }
    Ok(())
}

/// Renews every recorded subscription that expires within `ahead` (Oura's expire): one pass of
/// the background renewal. Answers how many were renewed; a failure is logged and retried on the
/// next pass.
pub async fn renew_subscriptions(services: &Services, ahead: std::time::Duration) -> Result<usize> {
    let mut renewed = 0;
    let due_before = now_ms() + ahead.as_millis() as i64;
    for provider in services.providers.all() {
        let Some(hooks) = provider.webhooks() else { continue };
        let slug = provider.slug();
        for (project_id, record) in services.store.list_setting_values(&subscription_setting(slug)).await? {
            if hooks.renew_at(&record).is_none_or(|at| at > due_before) {
                continue;
            }
            let principal = Principal::internal(&project_id);
            let credentials = match projects::client_credentials(services, &project_id, slug).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(provider = slug, error = %e, "cannot renew a webhook subscription");
                    continue;
                }
            };
            let url = webhook_url(services, slug, &project_id);
            let Some(secret) = projects::webhook_secret(services, &project_id, slug).await? else { continue };
            let ctx = SubscribeContext { credentials: &credentials, callback_url: &url, webhook_secret: &secret };
            match hooks.renew(&services.http, &ctx, &record).await {
                Ok(subscription) => {
                    keep(services, &principal, slug, &subscription).await?;
                    renewed += 1;
                }
                Err(e) => tracing::warn!(provider = slug, error = %e, "renewing a webhook subscription failed"),
            }
        }
    }
    Ok(renewed)
}
