//! Projects, API tokens, settings, secrets and the per-provider credentials view.

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde_json::Value;

use crate::crypto::{random_token, sha256_hex};
use crate::error::{Error, Result};
use crate::providers::{ClientCredentials, Provider};
use crate::store::{ApiTokenRecord, CachedChange, Role};
use crate::time::now_ms;
use crate::Services;

/// Who is calling: the project an API token belongs to, and its role.
#[derive(Clone, Debug)]
pub struct Principal {
    pub project_id: String,
    pub role: Role,
    /// A fingerprint of the API token (a prefix of its hash), for audit records.
    pub token_fingerprint: String,
}

impl Principal {
    /// How audit records name this caller.
    pub fn actor(&self) -> String {
        format!("token:{}", self.token_fingerprint)
    }

    /// Wearlink itself acting for a project in the background (renewing a subscription).
    pub fn internal(project_id: &str) -> Self {
        Self { project_id: project_id.into(), role: Role::Admin, token_fingerprint: "wearlink".into() }
    }

    pub fn require_admin(&self) -> Result<()> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Member => Err(Error::Forbidden),
        }
    }
}

pub const REDIRECT_ALLOWLIST: &str = "WEARABLE_REDIRECT_ALLOWLIST";
/// Origins that may frame the hosted connect page (none unless set).
pub const CONNECT_FRAME_ANCESTORS: &str = "WEARABLE_CONNECT_FRAME_ANCESTORS";
const SECRET_SUFFIXES: [&str; 3] = ["CLIENT_ID", "CLIENT_SECRET", "WEBHOOK_SECRET"];
const MAX_SECRET_LEN: usize = 4096;

pub fn enabled_setting(provider_slug: &str) -> String {
    format!("WEARABLE_{}_ENABLED", provider_slug.to_ascii_uppercase())
}

pub fn secret_key(provider_slug: &str, suffix: &str) -> String {
    format!("WEARABLE_{}_{suffix}", provider_slug.to_ascii_uppercase())
}

/// Associated data binding a secret's ciphertext to its project and key.
fn secret_owner(project_id: &str, key: &str) -> String {
    format!("secret:{project_id}:{key}")
}

/// Creates a project and its first admin token. Returns `(project id, token)`; the token is shown once.
pub async fn create_project(services: &Services, name: &str) -> Result<(String, String)> {
    let name = name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(Error::Invalid("project name must be 1 to 200 characters".into()));
    }
    let id = uuid::Uuid::new_v4().to_string();
    services.store.create_project(&id, name, now_ms()).await?;
    let token = create_token(services, &id, Role::Admin).await?;
    Ok((id, token))
}

/// A new random API token for the project; only its hash is stored.
pub async fn create_token(services: &Services, project_id: &str, role: Role) -> Result<String> {
    if !services.store.project_exists(project_id).await? {
        return Err(Error::NotFound(format!("project {project_id}")));
    }
    let token = format!("wl_{}", random_token(32));
    services
        .store
        .insert_api_token(&ApiTokenRecord {
            token_hash: sha256_hex(&token),
            project_id: project_id.into(),
            role,
            created_at: now_ms(),
        })
        .await?;
    Ok(token)
}

/// Revokes an API token: it is refused from the next request on, on every instance (see `cache`).
/// Answers whether the token existed.
pub async fn revoke_token(services: &Services, token: &str) -> Result<bool> {
    let token_hash = sha256_hex(token);
    let change = CachedChange::token(&token_hash);
    changing(services, vec![change], services.store.delete_api_token(&token_hash), |deleted| *deleted).await
}

/// Writes a change to something instances cache and forgets it here. Where the database tells
/// every instance (PostgreSQL), answers only once every listening instance has acknowledged a
/// barrier announced after the write (at most `cache::ACK_WAIT`): they heard the change before
/// it, so they have forgotten it too. `wrote` says from the write's answer whether it changed a
/// row (only then is there anything to wait for).
async fn changing<T>(
    services: &Services,
    changes: Vec<CachedChange>,
    write: impl std::future::Future<Output = std::result::Result<T, crate::store::StoreError>>,
    wrote: fn(&T) -> bool,
) -> Result<T> {
    let written = write.await;
    // Even after a failure: the write may have committed before its answer was lost.
    for change in &changes {
        services.cache.forget(change);
    }
    let written = written?;
    if wrote(&written) && services.cache.is_listening() {
        let acks = services.cache.acks();
        match services.store.announce_barrier().await {
            Ok(Some((id, instances))) => {
                if !acks.wait(&id, instances, crate::cache::ACK_WAIT).await {
                    tracing::info!(instances, "not every instance acknowledged a cache change in time; they follow within WEARLINK_CACHE_TTL_MS");
                }
            }
            Ok(None) => {}
            // Written all the same: the other instances follow within the TTL.
            Err(e) => tracing::warn!(error = %e, "announcing a cache change failed"),
        }
    }
    Ok(written)
}

pub async fn authenticate(services: &Services, bearer: &str) -> Result<Principal> {
    let token_hash = sha256_hex(bearer);
    let load = async {
        let Some(record) = services.store.find_api_token(&token_hash).await? else { return Ok(None) };
        let token_fingerprint = record.token_hash[..16].to_string();
        Ok::<_, Error>(Some(Principal { project_id: record.project_id, role: record.role, token_fingerprint }))
    };
    services.cache.principal(&token_hash, load).await?.ok_or(Error::Unauthenticated)
}

// ---- settings ----

enum SettingKind {
    Toggle,
    /// One of a provider's declared values (`Provider::settings`).
    Choice(&'static [&'static str]),
    Value,
    /// A whole number of days in 1..=365.
    Days,
    /// `FHIR_SERVER_*`: validated and checked against the server by `fhir_server`.
    FhirServer,
}

fn setting_kind(services: &Services, key: &str) -> Option<SettingKind> {
    if key == REDIRECT_ALLOWLIST || key == CONNECT_FRAME_ANCESTORS {
        return Some(SettingKind::Value);
    }
    if key == crate::sync::BACKFILL_DAYS_SETTING {
        return Some(SettingKind::Days);
    }
    if crate::fhir_server::SETTINGS.contains(&key) {
        return Some(SettingKind::FhirServer);
    }
    if let Some(own) = provider_setting(services, key) {
        return Some(SettingKind::Choice(own.values));
    }
    services.providers.all().any(|p| enabled_setting(p.slug()) == key).then_some(SettingKind::Toggle)
}

/// The project's settings: every provider toggle (off unless set) and each valued setting that is set.
pub async fn settings(services: &Services, principal: &Principal) -> Result<BTreeMap<String, Value>> {
    let mut map: BTreeMap<String, Value> =
        services.providers.all().map(|p| (enabled_setting(p.slug()), Value::Bool(false))).collect();
    map.insert(crate::sync::BACKFILL_DAYS_SETTING.into(), Value::from(crate::sync::DEFAULT_BACKFILL_DAYS));
    for p in services.providers.all() {
        for s in p.settings() {
            map.insert(provider_setting_key(p.slug(), s.name), Value::from(s.values[0]));
        }
    }
    for (key, value) in services.store.list_settings(&principal.project_id).await? {
        if setting_kind(services, &key).is_some() {
            map.insert(key, value);
        }
    }
    Ok(map)
}

/// What a setting is set to: `enabled` for a toggle, `value` for a valued setting.
pub struct SettingChange {
    pub enabled: Option<bool>,
    pub value: Option<Value>,
}

/// Sets one setting; a toggle takes `enabled`, a valued setting `value`.
pub async fn put_setting(
    services: &Services,
    principal: &Principal,
    key: &str,
    change: SettingChange,
) -> Result<BTreeMap<String, Value>> {
    principal.require_admin()?;
    if key == crate::store::outbox::MODE_SETTING {
        return Err(Error::Invalid(format!("{key} changes only through POST /v1/project/fhir-store")));
    }
    let kind = setting_kind(services, key).ok_or_else(|| Error::NotFound(format!("setting {key}")))?;
    let value = match kind {
        SettingKind::Toggle => match change.enabled {
            Some(b) => Value::Bool(b),
            _ => return Err(Error::Invalid(format!("{key} takes {{\"enabled\": true|false}}"))),
        },
        SettingKind::Value => match change.value {
            Some(Value::String(s)) => {
                parse_allowlist(&s)?;
                Value::String(s.trim().to_string())
            }
            _ => return Err(Error::Invalid(format!("{key} takes {{\"value\": \"...\"}}"))),
        },
        SettingKind::Choice(values) => match &change.value {
            Some(Value::String(s)) if values.contains(&s.trim()) => Value::String(s.trim().to_string()),
            _ => return Err(Error::Invalid(format!("{key} takes {{\"value\": \"{}\"}}", values.join("\" | \"")))),
        },
        SettingKind::Days => {
            let max = crate::sync::MAX_BACKFILL_DAYS;
            let days = match &change.value {
                Some(Value::Number(n)) => n.as_i64(),
                Some(Value::String(s)) => s.trim().parse().ok(),
                _ => None,
            };
            match days {
                Some(d) if (1..=max).contains(&d) => Value::from(d),
                _ => return Err(Error::Invalid(format!("{key} takes {{\"value\": 1..{max}}} (days)"))),
            }
        }
        SettingKind::FhirServer => {
            crate::fhir_server::prepare_setting(services, &principal.project_id, key, change.value).await?
        }
    };
    let change = CachedChange::Settings { project_id: principal.project_id.clone() };
    changing(services, vec![change], services.store.put_setting(&principal.project_id, key, &value, now_ms()), |_| {
        true
    })
    .await?;
    settings(services, principal).await
}

/// Parses `WEARABLE_REDIRECT_ALLOWLIST`: comma-separated origins (`https://host[:port]`).
pub fn parse_allowlist(raw: &str) -> Result<Vec<url::Origin>> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|entry| {
            let url = url::Url::parse(entry).map_err(|_| Error::Invalid(format!("{entry:?} is not an origin")))?;
            let bare = url.path() == "/" && url.query().is_none() && url.fragment().is_none();
            if !matches!(url.scheme(), "http" | "https") || !bare || url.username() != "" || url.password().is_some() {
                return Err(Error::Invalid(format!("{entry:?} is not an http(s) origin like https://app.example.com")));
            }
            Ok(url.origin())
        })
        .collect()
}

/// What connect needs to know about a provider in this project.
pub struct ProviderAccess {
    pub enabled: bool,
    pub redirect_allowlist: Option<Vec<url::Origin>>,
    /// The provider's own settings (`Provider::settings`), each stored or its default.
    pub settings: crate::providers::ProviderSettings,
}

/// The key of a provider's own setting: `WEARABLE_<SLUG>_<NAME>`.
pub fn provider_setting_key(provider_slug: &str, name: &str) -> String {
    format!("WEARABLE_{}_{name}", provider_slug.to_ascii_uppercase())
}

/// The provider's own setting `key` names, if any.
fn provider_setting(services: &Services, key: &str) -> Option<crate::providers::ProviderSetting> {
    services
        .providers
        .all()
        .flat_map(|p| p.settings().iter().map(move |s| (p.slug(), *s)))
        .find(|(slug, s)| provider_setting_key(slug, s.name) == key)
        .map(|(_, s)| s)
}

/// The project's stored settings (internal ones included), through the cache.
pub async fn stored_settings(services: &Services, project_id: &str) -> Result<crate::cache::Settings> {
    services
        .cache
        .settings(project_id, async { Ok::<_, Error>(services.store.list_settings(project_id).await?.into()) })
        .await
}

/// A write that changes the project's settings (the FHIR store switch), announced like a setting.
pub(crate) async fn changing_settings<T>(
    services: &Services,
    project_id: &str,
    write: impl std::future::Future<Output = std::result::Result<T, crate::store::StoreError>>,
    wrote: fn(&T) -> bool,
) -> Result<T> {
    changing(services, vec![CachedChange::Settings { project_id: project_id.into() }], write, wrote).await
}

/// Records a setting that is not set through the settings API (e.g. a provider's subscription id).
pub async fn put_internal_setting(services: &Services, project_id: &str, key: &str, value: &Value) -> Result<()> {
    let change = CachedChange::Settings { project_id: project_id.into() };
    changing(services, vec![change], services.store.put_setting(project_id, key, value, now_ms()), |_| true).await
}

pub async fn provider_access(services: &Services, project_id: &str, provider: &dyn Provider) -> Result<ProviderAccess> {
    let toggle = enabled_setting(provider.slug());
    let settings = provider.settings().iter().map(|s| (s.name, s.values[0].to_string())).collect();
    let mut access = ProviderAccess { enabled: false, redirect_allowlist: None, settings };
    for (key, value) in stored_settings(services, project_id).await?.iter() {
        let own = provider.settings().iter().find(|s| provider_setting_key(provider.slug(), s.name) == *key);
        if let (Some(own), Some(value)) = (own, value.as_str()) {
            access.settings.insert(own.name, value.to_string());
        } else if *key == toggle {
            access.enabled = *value == Value::Bool(true);
        } else if key == REDIRECT_ALLOWLIST {
            if let Some(raw) = value.as_str().filter(|s| !s.trim().is_empty()) {
                access.redirect_allowlist = Some(parse_allowlist(raw)?);
            }
        }
    }
    Ok(access)
}

// ---- secrets ----

fn is_secret_key(services: &Services, key: &str) -> bool {
    services.providers.all().any(|p| SECRET_SUFFIXES.iter().any(|s| secret_key(p.slug(), s) == key))
        || crate::fhir_server::SECRETS.contains(&key)
}

/// Stores a secret, sealed under the master key. Returns its update time.
pub async fn put_secret(services: &Services, principal: &Principal, key: &str, value: &str) -> Result<i64> {
    principal.require_admin()?;
    if !is_secret_key(services, key) {
        return Err(Error::NotFound(format!("secret {key}")));
    }
    let value = value.trim();
    if value.is_empty() || value.len() > MAX_SECRET_LEN {
        return Err(Error::Invalid(format!("value must be 1 to {MAX_SECRET_LEN} characters")));
    }
    if crate::fhir_server::SECRETS.contains(&key) {
        crate::fhir_server::prepare_secret(services, &principal.project_id, key, value).await?;
    }
    put_internal_secret(services, &principal.project_id, key, value).await
}

/// Stores a secret, sealed, whatever its key (e.g. the FHIR server's signing keys, which no API
/// sets). Returns its update time.
pub async fn put_internal_secret(services: &Services, project_id: &str, key: &str, value: &str) -> Result<i64> {
    let now = now_ms();
    let sealed = services.keyring.seal(value.as_bytes(), &secret_owner(project_id, key));
    let change = CachedChange::Secrets { project_id: project_id.into() };
    changing(services, vec![change], services.store.put_secret(project_id, key, &sealed, now), |_| true).await?;
    Ok(now)
}

/// Names and update times of the project's secrets; never values.
pub async fn list_secrets(services: &Services, principal: &Principal) -> Result<Vec<(String, i64)>> {
    principal.require_admin()?;
    Ok(services.store.list_secrets(&principal.project_id).await?.into_iter().map(|s| (s.key, s.updated_at)).collect())
}

pub async fn delete_secret(services: &Services, principal: &Principal, key: &str) -> Result<()> {
    principal.require_admin()?;
    if !is_secret_key(services, key) {
        return Err(Error::NotFound(format!("secret {key}")));
    }
    let change = CachedChange::Secrets { project_id: principal.project_id.clone() };
    changing(services, vec![change], services.store.delete_secrets(&principal.project_id, &[key.to_string()]), |n| {
        *n > 0
    })
    .await?;
    Ok(())
}

/// Opens the project's secrets whose keys are in `wanted` (through the cache).
pub async fn open_secrets(
    services: &Services,
    project_id: &str,
    wanted: &[&str],
) -> Result<BTreeMap<String, SecretString>> {
    let mut found = BTreeMap::new();
    let secrets = services
        .cache
        .secrets(project_id, async { Ok::<_, Error>(services.store.list_secrets(project_id).await?.into()) });
    for record in secrets.await?.iter().filter(|r| wanted.contains(&r.key.as_str())) {
        let plain = services.keyring.open(&record.sealed, &secret_owner(project_id, &record.key))?;
        let text = String::from_utf8(plain).map_err(|_| crate::crypto::CryptoError::Open)?;
        found.insert(record.key.clone(), SecretString::from(text));
    }
    Ok(found)
}

/// Opens the project's secrets for one provider, by suffix (`CLIENT_ID`, ...).
async fn provider_secrets(
    services: &Services,
    project_id: &str,
    slug: &str,
) -> Result<BTreeMap<&'static str, SecretString>> {
    let keys: Vec<String> = SECRET_SUFFIXES.iter().map(|s| secret_key(slug, s)).collect();
    let wanted: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut opened = open_secrets(services, project_id, &wanted).await?;
    Ok(SECRET_SUFFIXES
        .iter()
        .zip(&keys)
        .filter_map(|(suffix, key)| opened.remove(key).map(|value| (*suffix, value)))
        .collect())
}

/// The project's webhook secret for a provider, if set.
pub async fn webhook_secret(services: &Services, project_id: &str, slug: &str) -> Result<Option<SecretString>> {
    Ok(provider_secrets(services, project_id, slug).await?.remove("WEBHOOK_SECRET"))
}

/// The client credentials connect and callback use; names every missing key.
pub async fn client_credentials(services: &Services, project_id: &str, slug: &str) -> Result<ClientCredentials> {
    let mut secrets = provider_secrets(services, project_id, slug).await?;
    match (secrets.remove("CLIENT_ID"), secrets.remove("CLIENT_SECRET")) {
        (Some(id), Some(secret)) => Ok(ClientCredentials {
            client_id: secrecy::ExposeSecret::expose_secret(&id).to_string(),
            client_secret: secret,
        }),
        (id, secret) => Err(Error::CredentialsMissing {
            keys: [(id.is_none(), "CLIENT_ID"), (secret.is_none(), "CLIENT_SECRET")]
                .into_iter()
                .filter(|(missing, _)| *missing)
                .map(|(_, suffix)| secret_key(slug, suffix))
                .collect(),
        }),
    }
}

/// The credentials view: what is configured, never a value.
#[derive(Debug, PartialEq, Eq)]
pub struct CredentialsStatus {
    pub configured: bool,
    pub client_id_last4: Option<String>,
    pub has_secret: bool,
    pub has_webhook_secret: bool,
}

pub struct NewCredentials {
    pub client_id: String,
    pub client_secret: String,
    pub webhook_secret: Option<String>,
}

fn require_provider<'a>(services: &'a Services, slug: &str) -> Result<&'a std::sync::Arc<dyn Provider>> {
    services.providers.get(slug).ok_or_else(|| Error::NotFound(format!("provider {slug}")))
}

pub async fn credentials(services: &Services, principal: &Principal, slug: &str) -> Result<CredentialsStatus> {
    principal.require_admin()?;
    require_provider(services, slug)?;
    let secrets = provider_secrets(services, &principal.project_id, slug).await?;
    let client_id_last4 = secrets.get("CLIENT_ID").map(|id| {
        let id = secrecy::ExposeSecret::expose_secret(id);
        id.chars().skip(id.chars().count().saturating_sub(4)).collect()
    });
    let has_secret = secrets.contains_key("CLIENT_SECRET");
    Ok(CredentialsStatus {
        configured: client_id_last4.is_some() && has_secret,
        client_id_last4,
        has_secret,
        has_webhook_secret: secrets.contains_key("WEBHOOK_SECRET"),
    })
}

/// Sets client id and secret (and the webhook secret when given) together.
pub async fn put_credentials(
    services: &Services,
    principal: &Principal,
    slug: &str,
    new: &NewCredentials,
) -> Result<CredentialsStatus> {
    principal.require_admin()?;
    require_provider(services, slug)?;
    for (field, value) in [
        ("clientId", Some(&new.client_id)),
        ("clientSecret", Some(&new.client_secret)),
        ("webhookSecret", new.webhook_secret.as_ref()),
    ] {
        if let Some(v) = value {
            if v.trim().is_empty() || v.len() > MAX_SECRET_LEN {
                return Err(Error::Invalid(format!("{field} must be 1 to {MAX_SECRET_LEN} characters")));
            }
        }
    }
    put_secret(services, principal, &secret_key(slug, "CLIENT_ID"), &new.client_id).await?;
    put_secret(services, principal, &secret_key(slug, "CLIENT_SECRET"), &new.client_secret).await?;
    if let Some(webhook) = &new.webhook_secret {
        put_secret(services, principal, &secret_key(slug, "WEBHOOK_SECRET"), webhook).await?;
    }
    credentials(services, principal, slug).await
}

pub async fn delete_credentials(services: &Services, principal: &Principal, slug: &str) -> Result<CredentialsStatus> {
    principal.require_admin()?;
    require_provider(services, slug)?;
    let keys: Vec<String> = SECRET_SUFFIXES.iter().map(|s| secret_key(slug, s)).collect();
    let change = CachedChange::Secrets { project_id: principal.project_id.clone() };
    changing(services, vec![change], services.store.delete_secrets(&principal.project_id, &keys), |n| *n > 0).await?;
    credentials(services, principal, slug).await
}
