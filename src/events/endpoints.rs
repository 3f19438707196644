//! The platform's webhook endpoints (admin): register, list, change, delete, rotate the secret,
//! send a test event, see and retry deliveries. No HTTP types.

use secrecy::SecretString;

use super::{event, ENDPOINT_TEST, TYPES};
use crate::error::{Error, Result};
use crate::projects::Principal;
use crate::store::outbound::{DeliveryRecord, EndpointRecord};
use crate::time::now_ms;
use crate::Services;

pub struct NewEndpoint {
    pub url: String,
    pub events: Option<Vec<String>>,
    pub description: Option<String>,
}

/// A change; `None` leaves a field as it is.
#[derive(Default)]
pub struct EndpointChange {
    pub url: Option<String>,
    /// `Some(None)`: every event type.
    pub events: Option<Option<Vec<String>>>,
    pub enabled: Option<bool>,
    pub description: Option<Option<String>>,
}

/// Associated data binding an endpoint's sealed secret to it.
fn secret_owner(project_id: &str, endpoint_id: &str) -> String {
    format!("webhook-endpoint:{project_id}:{endpoint_id}")
}

/// The secrets that sign now: the current one, and the previous one during its overlap.
pub fn signing_secrets(services: &Services, e: &EndpointRecord, now: i64) -> Result<Vec<SecretString>> {
    let owner = secret_owner(&e.project_id, &e.id);
    let open = |sealed| -> Result<SecretString> {
        let bytes = services.keyring.open(sealed, &owner)?;
        Ok(SecretString::from(String::from_utf8(bytes).map_err(|_| Error::Invalid("secret".into()))?))
    };
    let mut secrets = vec![open(&e.secret)?];
    if let Some((previous, until)) = &e.previous_secret {
        if *until > now {
            secrets.push(open(previous)?);
        }
    }
    Ok(secrets)
}

fn check_events(events: Option<Vec<String>>) -> Result<Option<Vec<String>>> {
    let Some(mut events) = events else { return Ok(None) };
    if events.is_empty() {
        return Err(Error::Invalid("events: leave it out for every type, or name at least one".into()));
    }
    if let Some(unknown) = events.iter().find(|e| !TYPES.contains(&e.as_str())) {
        return Err(Error::Invalid(format!("events: unknown event type {unknown:?} (known: {})", TYPES.join(", "))));
    }
    events.sort();
    events.dedup();
    Ok(Some(events))
}

async fn check_url(services: &Services, url: &str) -> Result<String> {
    let checked = services.config.outbound.targets().check_url(url).await;
    checked.map(String::from).map_err(|e| Error::Invalid(format!("url: {e}")))
}

fn check_description(description: Option<String>) -> Result<Option<String>> {
    match description {
        Some(d) if d.chars().count() > 500 => Err(Error::Invalid("description: at most 500 characters".into())),
        other => Ok(other),
    }
}

/// Registers an endpoint; answers it and its secret (shown only here).
pub async fn create(services: &Services, principal: &Principal, new: NewEndpoint) -> Result<(EndpointRecord, String)> {
    principal.require_admin()?;
    let url = check_url(services, &new.url).await?;
    let events = check_events(new.events)?;
    let description = check_description(new.description)?;
    let id = uuid::Uuid::new_v4().to_string();
    let secret = super::sign::new_secret();
    let now = now_ms();
    let record = EndpointRecord {
        secret: services.keyring.seal(secret.as_bytes(), &secret_owner(&principal.project_id, &id)),
        id,
        project_id: principal.project_id.clone(),
        url,
        description,
        events,
        enabled: true,
        disabled_reason: None,
        previous_secret: None,
        failing_since: None,
        created_at: now,
        updated_at: now,
    };
    services.store.create_endpoint(&record).await?;
    Ok((record, secret))
}

pub async fn list(services: &Services, principal: &Principal) -> Result<Vec<EndpointRecord>> {
    principal.require_admin()?;
    Ok(services.store.list_endpoints(&principal.project_id).await?)
}

pub async fn get(services: &Services, principal: &Principal, id: &str) -> Result<EndpointRecord> {
    principal.require_admin()?;
    services
        .store
        .find_endpoint(&principal.project_id, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("webhook endpoint {id}")))
}

/// Changes an endpoint; enabling it again clears why it was disabled and its failure streak.
pub async fn update(
    services: &Services,
    principal: &Principal,
    id: &str,
    change: EndpointChange,
) -> Result<EndpointRecord> {
    let mut e = get(services, principal, id).await?;
    if let Some(url) = change.url {
        e.url = check_url(services, &url).await?;
    }
    if let Some(events) = change.events {
        e.events = check_events(events)?;
    }
    if let Some(description) = change.description {
        e.description = check_description(description)?;
    }
    if let Some(enabled) = change.enabled {
        if enabled && !e.enabled {
            e.disabled_reason = None;
            e.failing_since = None;
        }
        e.enabled = enabled;
    }
    e.updated_at = now_ms();
    if !services.store.update_endpoint(&e).await? {
        return Err(Error::NotFound(format!("webhook endpoint {id}")));
    }
    Ok(e)
}

pub async fn delete(services: &Services, principal: &Principal, id: &str) -> Result<()> {
    principal.require_admin()?;
    if !services.store.delete_endpoint(&principal.project_id, id).await? {
        return Err(Error::NotFound(format!("webhook endpoint {id}")));
    }
    Ok(())
}

/// A new secret; the old one keeps signing (beside it) for the overlap. Answers the new one.
pub async fn rotate_secret(services: &Services, principal: &Principal, id: &str) -> Result<String> {
    let mut e = get(services, principal, id).await?;
    let now = now_ms();
    let secret = super::sign::new_secret();
    let overlap = services.config.outbound.secret_overlap.as_millis() as i64;
    let previous =
        std::mem::replace(&mut e.secret, services.keyring.seal(secret.as_bytes(), &secret_owner(&e.project_id, &e.id)));
    e.previous_secret = Some((previous, now + overlap));
    e.updated_at = now;
    if !services.store.update_endpoint(&e).await? {
        return Err(Error::NotFound(format!("webhook endpoint {id}")));
    }
    Ok(secret)
}

/// Sends a `webhook-endpoint.test` event to this endpoint only; answers the event id.
pub async fn test(services: &Services, principal: &Principal, id: &str) -> Result<String> {
    let e = get(services, principal, id).await?;
    if !e.enabled {
        return Err(Error::Conflict("the endpoint is disabled; enable it first".into()));
    }
    let data = serde_json::json!({ "projectId": e.project_id, "webhookEndpointId": e.id });
    let test = event(&e.project_id, ENDPOINT_TEST, data, now_ms());
    services.store.emit(&test, Some(&e.id)).await?;
    services.delivery_wake.notify_one();
    Ok(test.id)
}

pub async fn deliveries(
    services: &Services,
    principal: &Principal,
    id: &str,
    state: Option<&str>,
) -> Result<Vec<DeliveryRecord>> {
    get(services, principal, id).await?;
    if let Some(state) = state.filter(|s| !["pending", "delivered", "failed"].contains(s)) {
        return Err(Error::Invalid(format!("state {state:?}: pending, delivered or failed")));
    }
    Ok(services.store.list_deliveries(&principal.project_id, id, state).await?)
}

/// Sends a delivery again (a failed one, typically), due now.
pub async fn retry(services: &Services, principal: &Principal, delivery_id: &str) -> Result<()> {
    principal.require_admin()?;
    if !services.store.retry_delivery(&principal.project_id, delivery_id, now_ms()).await? {
        return Err(Error::NotFound(format!("webhook delivery {delivery_id}")));
    }
    services.delivery_wake.notify_one();
    Ok(())
}
