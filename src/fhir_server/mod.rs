//! The platform's own FHIR server, per project: its configuration and checks, and where the
//! project keeps its patients and data (`is_server_mode`, `require_patient`, `require_embedded_store`).
//!
//! A project names its server with settings and secrets (`FHIR_SERVER_*`, below); Wearlink checks
//! the server when they are set (its `CapabilityStatement`, then the credentials: a token request
//! and an authenticated read), keeps a token per project until shortly before it expires, and
//! offers a small client ([`client::FhirClient`]) that sends FHIR JSON with that
//! token and fetches a new one once when the server answers 401.
//!
//! Writing there (parts 2–4) is `outbox.rs`: a project switched to `server` mode gets every new
//! version of its Endpoints and synced data written into the server through a durable outbox.
//!
//! Where a check runs: every PUT of a `FHIR_SERVER_*` setting or secret is checked against the
//! configuration it would make, and refused (nothing stored) when that fails: the URL's
//! `/metadata` whenever a URL is set, the credentials once the configuration for the chosen mode
//! is complete. An incomplete configuration is stored unchecked (the admin is midway);
//! `POST /v1/project/fhir-server/check` runs every check and names what is missing.

use std::collections::HashMap;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use url::Url;

use crate::error::{Error, Result};
use crate::projects::{self, Principal};
use crate::time::now_ms;
use crate::Services;

mod auth;
pub mod capability;
pub mod client;
pub mod keys;
pub mod outbox;

pub use client::{FhirClient, FhirResponse, PatientLookup};
pub use outbox::is_server_mode;

pub const URL_SETTING: &str = "FHIR_SERVER_URL";
pub const AUTH_SETTING: &str = "FHIR_SERVER_AUTH";
pub const SCOPE_SETTING: &str = "FHIR_SERVER_SCOPE";
pub const TOKEN_URL_SETTING: &str = "FHIR_SERVER_TOKEN_URL";
/// `basic` or `form`: how the client id and secret go to the token URL (client_credentials).
pub const CLIENT_AUTH_SETTING: &str = "FHIR_SERVER_CLIENT_AUTH";
pub const SETTINGS: &[&str] =
    &[URL_SETTING, AUTH_SETTING, SCOPE_SETTING, TOKEN_URL_SETTING, CLIENT_AUTH_SETTING, outbox::BUNDLE_SIZE_SETTING];

pub const TOKEN_SECRET: &str = "FHIR_SERVER_TOKEN";
pub const CLIENT_ID_SECRET: &str = "FHIR_SERVER_CLIENT_ID";
pub const CLIENT_SECRET_SECRET: &str = "FHIR_SERVER_CLIENT_SECRET";
/// Secrets an admin sets (write-only, sealed).
pub const SECRETS: &[&str] = &[TOKEN_SECRET, CLIENT_ID_SECRET, CLIENT_SECRET_SECRET];
/// The project's signing keys (`keys::KeySet`), sealed; made and rotated by Wearlink only.
pub const SIGNING_KEYS_SECRET: &str = "FHIR_SERVER_SIGNING_KEYS";

const MAX_SETTING_LEN: usize = 2048;

/// What went wrong talking to (or configuring) the platform's FHIR server. Messages never carry
/// a secret, a token or an assertion.
#[derive(Debug, thiserror::Error)]
pub enum FhirServerError {
    #[error("the project has no FHIR server: set FHIR_SERVER_URL")]
    NotConfigured,
    #[error("the FHIR server configuration is incomplete: set {}", .0.join(", "))]
    Incomplete(Vec<String>),
    #[error("the FHIR server's address is refused: {0}")]
    Target(#[from] crate::events::target::TargetError),
    #[error("the FHIR server does not qualify: {}", .0.join("; "))]
    Unsuitable(Vec<String>),
    #[error("the FHIR server did not accept Wearlink's credentials: {0}")]
    AuthFailed(String),
    #[error("the FHIR server could not be reached: {0}")]
    Unreachable(String),
    #[error("the FHIR server answered {status} to {what}")]
    Answered { status: u16, what: String },
    #[error("{0}")]
    Keys(String),
    /// The server could not say whether the patient exists (down, timed out, 5xx, refused our
    /// credentials): connect stores nothing and the caller may retry.
    #[error("the project's FHIR server could not be asked for the patient; retry shortly")]
    PatientUnknown,
    /// `/fhir/R4` of a project that writes into its own server: read there (see `fhir::resources`).
    #[error("this project's FHIR data is written to its own FHIR server{}; read it there", .0.as_deref().map(|u| format!(" ({u})")).unwrap_or_default())]
    DataOnServer(Option<String>),
}

impl FhirServerError {
    /// The HTTP status an admin's request gets for this error.
    pub fn status(&self) -> u16 {
        match self {
            FhirServerError::NotConfigured => 409,
            FhirServerError::Incomplete(_)
            | FhirServerError::Target(_)
            | FhirServerError::Unsuitable(_)
            | FhirServerError::AuthFailed(_) => 422,
            FhirServerError::Unreachable(_) | FhirServerError::Answered { .. } => 502,
            FhirServerError::Keys(_) => 500,
            FhirServerError::PatientUnknown => 503,
            FhirServerError::DataOnServer(_) => 409,
        }
    }

    /// The stable problem code.
    pub fn code(&self) -> &'static str {
        match self {
            FhirServerError::NotConfigured => "fhir_server_not_configured",
            FhirServerError::Incomplete(_) => "fhir_server_incomplete",
            FhirServerError::Target(_) => "validation_failed",
            FhirServerError::Unsuitable(_) => "fhir_server_unsuitable",
            FhirServerError::AuthFailed(_) => "fhir_server_auth_failed",
            FhirServerError::Unreachable(_) => "fhir_server_unreachable",
            FhirServerError::Answered { .. } => "fhir_server_failed",
            FhirServerError::Keys(_) => "internal",
            FhirServerError::PatientUnknown => "fhir_server_unavailable",
            FhirServerError::DataOnServer(_) => "fhir_data_on_server",
        }
    }
}

/// How Wearlink authenticates to the server (`FHIR_SERVER_AUTH`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// A static token, `FHIR_SERVER_TOKEN`, sent as it is.
    Bearer,
    /// OAuth 2.0 client credentials with `FHIR_SERVER_CLIENT_ID` and `FHIR_SERVER_CLIENT_SECRET`.
    ClientCredentials,
    /// SMART Backend Services: client credentials with a JWT signed by the project's key.
    PrivateKeyJwt,
}

impl AuthMode {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "bearer" => Some(AuthMode::Bearer),
            "client_credentials" => Some(AuthMode::ClientCredentials),
            "private_key_jwt" => Some(AuthMode::PrivateKeyJwt),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AuthMode::Bearer => "bearer",
            AuthMode::ClientCredentials => "client_credentials",
            AuthMode::PrivateKeyJwt => "private_key_jwt",
        }
    }
}

/// How the client id and secret reach the token URL (`FHIR_SERVER_CLIENT_AUTH`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic (`client_secret_basic`; RFC 6749 §2.3.1 says servers must support it).
    Basic,
    /// In the form body (`client_secret_post`).
    Form,
}

impl ClientAuth {
    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "basic" => Some(ClientAuth::Basic),
            "form" => Some(ClientAuth::Form),
            _ => None,
        }
    }
}

/// A project's FHIR server configuration, as stored (or as a change would make it).
#[derive(Clone, Default)]
pub struct ServerConfig {
    /// The R4 base, without a trailing slash.
    pub url: Option<Url>,
    pub auth: Option<AuthMode>,
    pub scope: Option<String>,
    pub token_url: Option<Url>,
    pub client_auth: Option<ClientAuth>,
    pub token: Option<SecretString>,
    pub client_id: Option<SecretString>,
    pub client_secret: Option<SecretString>,
    pub keys: Option<keys::KeySet>,
}

impl ServerConfig {
    /// The project's stored configuration (settings and secrets through the cache).
    pub async fn load(services: &Services, project_id: &str) -> Result<Self> {
        let mut config = ServerConfig::default();
        for (key, value) in projects::stored_settings(services, project_id).await?.iter() {
            if SETTINGS.contains(&key.as_str()) {
                config.apply_setting(key, value);
            }
        }
        let wanted: Vec<&str> = SECRETS.iter().copied().chain([SIGNING_KEYS_SECRET]).collect();
        for (key, value) in projects::open_secrets(services, project_id, &wanted).await? {
            config.apply_secret(&key, value)?;
        }
        Ok(config)
    }

    /// Takes one setting's value (a value the settings API accepted; `null` unsets it).
    fn apply_setting(&mut self, key: &str, value: &Value) {
        let text = value.as_str().map(str::trim).filter(|s| !s.is_empty());
        match key {
            URL_SETTING => self.url = text.and_then(|s| Url::parse(s).ok()),
            AUTH_SETTING => self.auth = text.and_then(AuthMode::parse),
            SCOPE_SETTING => self.scope = text.map(str::to_string),
            TOKEN_URL_SETTING => self.token_url = text.and_then(|s| Url::parse(s).ok()),
            CLIENT_AUTH_SETTING => self.client_auth = text.and_then(ClientAuth::parse),
            _ => {}
        }
    }

    fn apply_secret(&mut self, key: &str, value: SecretString) -> Result<()> {
        match key {
            TOKEN_SECRET => self.token = Some(value),
            CLIENT_ID_SECRET => self.client_id = Some(value),
            CLIENT_SECRET_SECRET => self.client_secret = Some(value),
            SIGNING_KEYS_SECRET => self.keys = Some(keys::KeySet::from_json(value.expose_secret().as_bytes())?),
            _ => {}
        }
        Ok(())
    }

    /// What the chosen mode still needs, by setting or secret name; empty when complete.
    pub fn missing(&self) -> Vec<String> {
        let mut missing = Vec::new();
        if self.url.is_none() {
            missing.push(URL_SETTING);
        }
        match self.auth {
            None => missing.push(AUTH_SETTING),
            Some(AuthMode::Bearer) => {
                if self.token.is_none() {
                    missing.push(TOKEN_SECRET);
                }
            }
            Some(AuthMode::ClientCredentials) => {
                if self.client_id.is_none() {
                    missing.push(CLIENT_ID_SECRET);
                }
                if self.client_secret.is_none() {
                    missing.push(CLIENT_SECRET_SECRET);
                }
            }
            Some(AuthMode::PrivateKeyJwt) => {
                if self.client_id.is_none() {
                    missing.push(CLIENT_ID_SECRET);
                }
            }
        }
        missing.into_iter().map(str::to_string).collect()
    }

    /// `{base}/{path}`.
    pub fn endpoint(&self, path: &str) -> Result<Url, FhirServerError> {
        let base = self.url.as_ref().ok_or(FhirServerError::NotConfigured)?;
        let joined = format!("{}/{}", base.as_str().trim_end_matches('/'), path.trim_start_matches('/'));
        Url::parse(&joined).map_err(|e| FhirServerError::Unreachable(format!("bad request URL: {e}")))
    }

    /// Changes to the token request invalidate a cached token: this names them all (hashed).
    fn fingerprint(&self) -> String {
        let secret = |s: &Option<SecretString>| s.as_ref().map(|s| crate::crypto::sha256_hex(s.expose_secret()));
        let current_kid = self.keys.as_ref().and_then(|k| k.current()).map(|k| k.kid.clone());
        crate::crypto::sha256_hex(&format!(
            "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
            self.url.as_ref().map(Url::as_str),
            self.auth,
            self.scope,
            self.token_url.as_ref().map(Url::as_str),
            self.client_auth,
            secret(&self.client_id),
            secret(&self.client_secret),
            current_kid,
        ))
    }
}

/// The cached access token of each project (client_credentials and private_key_jwt). One fetch
/// at a time per project: callers that find no usable token wait for the one fetching.
#[derive(Default)]
pub struct TokenCache {
    slots: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<CachedToken>>>>>,
}

struct CachedToken {
    /// The configuration it was fetched with (`ServerConfig::fingerprint`).
    fingerprint: String,
    token: SecretString,
    /// When to fetch a new one instead (shortly before it expires).
    renew_at: i64,
}

impl TokenCache {
    fn slot(&self, project_id: &str) -> Arc<tokio::sync::Mutex<Option<CachedToken>>> {
        let mut slots = self.slots.lock().expect("token cache lock");
        Arc::clone(slots.entry(project_id.to_string()).or_default())
    }

    /// A token for the project's server: the cached one while it is valid for this
    /// configuration, unless it is `stale` (the server just answered 401 to it), else a new one.
    pub async fn token(
        &self,
        services: &Services,
        project_id: &str,
        config: &ServerConfig,
        stale: Option<&SecretString>,
    ) -> Result<SecretString, FhirServerError> {
        if config.auth == Some(AuthMode::Bearer) {
            return config.token.clone().ok_or_else(|| FhirServerError::Incomplete(vec![TOKEN_SECRET.into()]));
        }
        let slot = self.slot(project_id);
        let mut cached = slot.lock().await;
        let fingerprint = config.fingerprint();
        if let Some(entry) = cached.as_ref() {
            let is_stale = stale.is_some_and(|s| s.expose_secret() == entry.token.expose_secret());
            if entry.fingerprint == fingerprint && now_ms() < entry.renew_at && !is_stale {
                return Ok(entry.token.clone());
            }
        }
        let fetched = auth::fetch_token(services, config).await?;
        *cached = Some(CachedToken { fingerprint, token: fetched.token.clone(), renew_at: fetched.renew_at });
        Ok(fetched.token)
    }
}

/// What the check found, for the admin.
#[derive(Clone, Debug)]
pub struct CheckReport {
    pub url: String,
    pub fhir_version: String,
    pub bundles: &'static str,
    pub software: Option<String>,
    pub auth: Option<AuthMode>,
    /// The token URL used (set or discovered), for the token modes.
    pub token_url: Option<String>,
    /// Empty when the credentials were checked; otherwise what is missing before they can be.
    pub missing: Vec<String>,
    pub jwks_url: String,
}

/// The project's public JWKS URL, for the platform to register.
pub fn jwks_url(services: &Services, project_id: &str) -> String {
    format!("{}/v1/projects/{project_id}/jwks.json", services.config.base_url.as_str().trim_end_matches('/'))
}

/// Checks `config`: the address (target policy), `GET /metadata`, and, when complete, a token
/// request and an authenticated read. `require_complete` refuses an incomplete configuration.
async fn check(
    services: &Services,
    project_id: &str,
    config: &ServerConfig,
    require_complete: bool,
) -> Result<CheckReport, FhirServerError> {
    let url = config.url.clone().ok_or(FhirServerError::NotConfigured)?;
    services.config.outbound.targets().check_url(url.as_str()).await?;
    let missing = config.missing();
    if require_complete && !missing.is_empty() {
        return Err(FhirServerError::Incomplete(missing));
    }
    let client = FhirClient::new(services, project_id, config.clone());
    let metadata = client.metadata().await?;
    let qualified = capability::qualify(&metadata).map_err(FhirServerError::Unsuitable)?;
    let mut token_url = None;
    if missing.is_empty() {
        if config.auth != Some(AuthMode::Bearer) {
            token_url = Some(auth::token_url(services, config).await?.0.to_string());
        }
        client.check_credentials().await?;
    }
    Ok(CheckReport {
        url: url.to_string(),
        fhir_version: qualified.fhir_version,
        bundles: qualified.bundles,
        software: qualified.software,
        auth: config.auth,
        token_url,
        missing,
        jwks_url: jwks_url(services, project_id),
    })
}

/// `POST /v1/project/fhir-server/check`: every check on the stored configuration.
pub async fn check_project(services: &Services, principal: &Principal) -> Result<CheckReport> {
    principal.require_admin()?;
    let config = ServerConfig::load(services, &principal.project_id).await?;
    Ok(check(services, &principal.project_id, &config, true).await?)
}

/// Validates a `FHIR_SERVER_*` setting and checks the configuration it makes; answers the value
/// to store (`null` unsets it: an unset URL is the embedded store, as before).
pub async fn prepare_setting(services: &Services, project_id: &str, key: &str, value: Option<Value>) -> Result<Value> {
    if key == outbox::BUNDLE_SIZE_SETTING {
        return outbox::prepare_bundle_size(value.as_ref());
    }
    let raw = match &value {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) if s.len() <= MAX_SETTING_LEN => Some(s.trim().to_string()),
        _ => return Err(Error::Invalid(format!("{key} takes {{\"value\": \"...\"}} (or null to unset it)"))),
    };
    let stored = match (key, raw) {
        (_, None) => Value::Null,
        (URL_SETTING | TOKEN_URL_SETTING, Some(raw)) => {
            let mut url = services.config.outbound.targets().check_url_syntax(&raw).map_err(|e| {
                Error::Invalid(format!(
                    "{key}: {e} (plain http only to loopback with WEARLINK_ALLOW_LOOPBACK_TARGETS=1)"
                ))
            })?;
            if url.query().is_some() {
                return Err(Error::Invalid(format!("{key} must not have a query")));
            }
            let path = url.path().trim_end_matches('/').to_string();
            url.set_path(&path);
            Value::String(url.to_string().trim_end_matches('/').to_string())
        }
        (AUTH_SETTING, Some(raw)) => {
            let mode = AuthMode::parse(&raw).ok_or_else(|| {
                Error::Invalid(format!("{key} is one of bearer, client_credentials, private_key_jwt"))
            })?;
            if mode == AuthMode::PrivateKeyJwt {
                ensure_keys(services, project_id).await?;
            }
            Value::String(raw)
        }
        (CLIENT_AUTH_SETTING, Some(raw)) => {
            ClientAuth::parse(&raw).ok_or_else(|| Error::Invalid(format!("{key} is basic or form")))?;
            Value::String(raw)
        }
        (_, Some(raw)) => {
            if raw.chars().any(char::is_control) {
                return Err(Error::Invalid(format!("{key} must be one line of text")));
            }
            Value::String(raw)
        }
    };
    let mut candidate = ServerConfig::load(services, project_id).await?;
    let new_url = stored.as_str().and_then(|s| Url::parse(s).ok());
    let moves = match key {
        URL_SETTING => candidate.url != new_url,
        TOKEN_URL_SETTING => candidate.token_url != new_url,
        _ => false,
    };
    if key == URL_SETTING && moves && is_server_mode(services, project_id).await? {
        // The project's data is on that server: a new one would get only what is written from
        // now on (a silent split), and none would leave every write waiting.
        return Err(Error::Conflict(format!(
            "{key} cannot change while the project's store is its FHIR server: switch to the \
             embedded store first (POST /v1/project/fhir-store {{\"store\": \"embedded\"}}), change \
             it, then switch back (which copies everything to the new server)"
        )));
    }
    if moves && (candidate.token.is_some() || candidate.client_secret.is_some()) {
        // Stored credentials are write-only: were they checked against a new address, an admin
        // token could read them back by pointing the URL at its own host. They go only where
        // they were given for; to move, delete them, change the URL, and set them again.
        return Err(Error::Conflict(format!(
            "{key} cannot change while FHIR_SERVER_TOKEN or FHIR_SERVER_CLIENT_SECRET is stored \
             (they are sent only to the server they were set for): delete them first, then set \
             them again after the change"
        )));
    }
    candidate.apply_setting(key, &stored);
    if candidate.url.is_some() {
        check(services, project_id, &candidate, false).await?;
    }
    Ok(stored)
}

/// Checks the configuration a new `FHIR_SERVER_*` secret makes, before it is stored.
pub async fn prepare_secret(services: &Services, project_id: &str, key: &str, value: &str) -> Result<()> {
    let mut candidate = ServerConfig::load(services, project_id).await?;
    candidate.apply_secret(key, SecretString::from(value.to_string()))?;
    if candidate.url.is_some() {
        check(services, project_id, &candidate, false).await?;
    }
    Ok(())
}

/// The project's signing keys, made (one ES384 key) when it has none.
async fn ensure_keys(services: &Services, project_id: &str) -> Result<keys::KeySet> {
    let stored = ServerConfig::load(services, project_id).await?.keys;
    match stored {
        Some(set) if set.current().is_some() => Ok(set),
        _ => {
            let mut set = stored.unwrap_or_default();
            set.rotate(now_ms());
            projects::put_internal_secret(services, project_id, SIGNING_KEYS_SECRET, &set.to_json()).await?;
            Ok(set)
        }
    }
}

/// `POST /v1/project/fhir-server/keys`: a new signing key signs from now on; the one it replaces
/// stays in the JWKS for `keys::RETIRED_KEY_KEPT_MS`.
pub async fn rotate_keys(services: &Services, principal: &Principal) -> Result<Value> {
    principal.require_admin()?;
    let mut set = ServerConfig::load(services, &principal.project_id).await?.keys.unwrap_or_default();
    set.rotate(now_ms());
    projects::put_internal_secret(services, &principal.project_id, SIGNING_KEYS_SECRET, &set.to_json()).await?;
    Ok(set.jwks(now_ms()))
}

/// `GET /v1/projects/{projectId}/jwks.json`: the project's public keys (none until
/// `FHIR_SERVER_AUTH` is `private_key_jwt`). Unknown project: not found.
pub async fn jwks(services: &Services, project_id: &str) -> Result<Value> {
    if !services.store.project_exists(project_id).await? {
        return Err(Error::NotFound(format!("project {project_id}")));
    }
    // Only the signing keys are opened: this route takes no token, so it must not decrypt the
    // project's other FHIR secrets (nor fail on one of them).
    let mut keys = keys::KeySet::default();
    for (_, value) in projects::open_secrets(services, project_id, &[SIGNING_KEYS_SECRET]).await? {
        keys = keys::KeySet::from_json(value.expose_secret().as_bytes())?;
    }
    Ok(keys.jwks(now_ms()))
}

/// Checks that `patient_id` is a Patient where the project keeps its patients: the embedded store,
/// or its own FHIR server once the project has switched to it. Not found → `NotFound`; the server
/// unable to say → `PatientUnknown` (503), so nothing is stored on a guess.
pub async fn require_patient(services: &Services, project_id: &str, patient_id: &str) -> Result<()> {
    let missing = || Error::NotFound(format!("Patient/{patient_id}"));
    if !is_server_mode(services, project_id).await? {
        return match services.store.read_resource(project_id, "Patient", patient_id).await? {
            Some(_) => Ok(()),
            None => Err(missing()),
        };
    }
    let client = match FhirClient::for_project(services, project_id).await {
        Ok(Some(client)) => client,
        // Switched to a server whose configuration was taken apart since: it cannot answer.
        Ok(None) | Err(_) => {
            tracing::warn!(project = %project_id, "patient check: the project's FHIR server is not configured");
            return Err(FhirServerError::PatientUnknown.into());
        }
    };
    match client.patient(patient_id).await {
        client::PatientLookup::Found(_) => Ok(()),
        client::PatientLookup::NotFound => Err(missing()),
        client::PatientLookup::Unavailable(reason) => {
            tracing::warn!(project = %project_id, %reason, "patient check: the project's FHIR server did not answer");
            Err(FhirServerError::PatientUnknown.into())
        }
    }
}

/// `/fhir/R4` serves a project's data only while the embedded store is its store of record. Once
/// it has switched to its own server, answering from the working copy would show data the
/// platform may since have changed, and answering from the server would lend Wearlink's service
/// credentials (usually broad: a Medplum ClientApplication, an Entra app with FHIR Data
/// Contributor) to every API token of the project. So it is a clear 409 naming the server.
pub async fn require_embedded_store(services: &Services, project_id: &str) -> Result<()> {
    if !is_server_mode(services, project_id).await? {
        return Ok(());
    }
    let url = ServerConfig::load(services, project_id).await.ok().and_then(|c| c.url).map(|u| u.to_string());
    Err(FhirServerError::DataOnServer(url).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Option<SecretString> {
        Some(SecretString::from(s.to_string()))
    }

    #[test]
    fn each_mode_names_what_it_still_needs() {
        let mut config = ServerConfig::default();
        assert_eq!(config.missing(), vec![URL_SETTING, AUTH_SETTING]);
        config.url = Url::parse("https://fhir.example/R4").ok();
        config.auth = Some(AuthMode::Bearer);
        assert_eq!(config.missing(), vec![TOKEN_SECRET]);
        config.auth = Some(AuthMode::ClientCredentials);
        config.client_id = secret("id");
        assert_eq!(config.missing(), vec![CLIENT_SECRET_SECRET]);
        config.auth = Some(AuthMode::PrivateKeyJwt);
        assert!(config.missing().is_empty(), "the key is Wearlink's own");
        assert_eq!(config.endpoint("/metadata").unwrap().as_str(), "https://fhir.example/R4/metadata");
    }

    #[test]
    fn a_cached_token_belongs_to_the_credentials_it_was_fetched_with() {
        let mut config = ServerConfig {
            url: Url::parse("https://fhir.example/R4").ok(),
            auth: Some(AuthMode::ClientCredentials),
            client_id: secret("id"),
            client_secret: secret("one"),
            ..ServerConfig::default()
        };
        let first = config.fingerprint();
        assert_eq!(first, config.fingerprint());
        config.client_secret = secret("two");
        assert_ne!(first, config.fingerprint(), "a new secret, a new token");
        let second = config.fingerprint();
        config.scope = Some("system/*.rs".into());
        assert_ne!(second, config.fingerprint());
        assert!(!config.fingerprint().contains("two"));
    }

    #[test]
    fn modes_are_spelled_as_the_settings_take_them() {
        for mode in [AuthMode::Bearer, AuthMode::ClientCredentials, AuthMode::PrivateKeyJwt] {
            assert_eq!(AuthMode::parse(mode.as_str()), Some(mode));
        }
        assert_eq!(AuthMode::parse("client-credentials"), None);
    }
}
