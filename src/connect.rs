//! The connect flow, without HTTP: `start` makes a state and the provider's authorization URL;
//! `finish` consumes the state, exchanges the code and persists the connection as an Endpoint.

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::connections::{endpoint_body, endpoint_owner, TokenMaterial};
use crate::crypto::{prefixed_random_token, sha256_hex, token_bytes};
use crate::error::{Error, Result};
use crate::projects::{self, Principal};
use crate::providers::{AuthorizeRequest, CodeExchange, Provider, ProviderError, TokenSet};
use crate::store::{ConnectionRecord, OAuthStateRecord, StoreError};
use crate::time::now_ms;
use crate::Services;

/// 256 bits from the OS CSPRNG.
const STATE_BYTES: usize = 32;
/// A state starts with its creation time: 6 bytes, milliseconds, big-endian.
const STATE_TIME_BYTES: usize = 6;

/// A new connect state and the key it is stored under. The state is its creation time, then
/// `STATE_BYTES` random bytes; only the key is stored: that time in hex, then the state's SHA-256.
/// Keys thus ascend, so a batch of new states lands on one or two index pages instead of one page
/// each — with hash-only keys SQLite wrote ~40 WAL pages per batch, and the checkpoints copying
/// them stalled connects (see the README's Benchmarks). The time is no secret: the state stays
/// unguessable by its random part alone.
fn new_state(now: i64) -> (String, String) {
    let time = &now.to_be_bytes()[8 - STATE_TIME_BYTES..];
    let state = prefixed_random_token(time, STATE_BYTES);
    let key = state_key(&state);
    (state, key)
}

/// The key a state is stored under (see `new_state`). A state of any other shape gets a key that
/// matches nothing stored: its hash alone.
fn state_key(state: &str) -> String {
    match token_bytes(state) {
        Some(bytes) if bytes.len() == STATE_TIME_BYTES + STATE_BYTES => {
            format!("{}{}", hex::encode(&bytes[..STATE_TIME_BYTES]), sha256_hex(state))
        }
        _ => sha256_hex(state),
    }
}

pub struct ConnectRequest {
    pub patient_id: String,
    pub redirect_uri: Option<String>,
    /// The hosted connect page session this connect comes from (`crate::connect_sessions`).
    pub session: Option<SessionLink>,
    /// The provider region the user's account lives in, for providers with regions (Dexcom:
    /// `us`, `eu`, `jp`); `None`: the provider's default.
    pub region: Option<String>,
}

/// A connect session and its token: the callback brings the patient back to that session's page.
pub struct SessionLink {
    pub session_id: String,
    pub token: String,
}

/// What a PKCE verifier is sealed to in a state row: that state.
fn verifier_owner(state_key: &str) -> String {
    format!("pkce-verifier:{state_key}")
}

/// What a session's token is sealed to in a state row: the session and the state.
fn session_owner(session_id: &str, state_key: &str) -> String {
    format!("connect-session:{session_id}:{state_key}")
}

pub struct ConnectStart {
    pub provider: String,
    pub authorization_url: Url,
    pub state: String,
}

fn provider(services: &Services, slug: &str) -> Result<Arc<dyn Provider>> {
    services.providers.get(slug).cloned().ok_or_else(|| Error::NotFound(format!("provider {slug}")))
}

/// Our callback for a provider, as registered at the provider.
pub fn callback_url(services: &Services, slug: &str) -> Url {
    callback_url_at(&services.config.base_url, slug)
}

/// The base URL's path extended, not a string parsed again: parsing was a few percent of a
/// connect's instructions (callgrind).
fn callback_url_at(base: &Url, slug: &str) -> Url {
    let mut url = base.clone();
    url.path_segments_mut().expect("the base URL is http(s)").pop_if_empty().extend([
        "v1",
        "wearables",
        slug,
        "callback",
    ]);
    url
}

/// A FHIR id: 1–64 of `[A-Za-z0-9-.]`.
pub fn is_fhir_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// An absolute http(s) URL without user info.
pub(crate) fn parse_redirect_uri(raw: &str) -> Result<Url> {
    let url = Url::parse(raw).map_err(|_| Error::Invalid("redirectUri must be an absolute URL".into()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(Error::Invalid("redirectUri must be an http(s) URL".into()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::Invalid("redirectUri must not carry user info".into()));
    }
    Ok(url)
}

pub async fn start(
    services: &Services,
    principal: &Principal,
    slug: &str,
    request: ConnectRequest,
) -> Result<ConnectStart> {
    let provider = provider(services, slug)?;
    let started = start_with(services, principal, &provider, slug, request).await;
    services.metrics.connect(provider.slug(), started.as_ref().map(|_| ()).map_err(Error::code));
    started
}

async fn start_with(
    services: &Services,
    principal: &Principal,
    provider: &Arc<dyn Provider>,
    slug: &str,
    request: ConnectRequest,
) -> Result<ConnectStart> {
    if !is_fhir_id(&request.patient_id) {
        return Err(Error::Invalid("patientId must be a FHIR id (1-64 of A-Z a-z 0-9 - .)".into()));
    }
    let redirect_uri = request.redirect_uri.as_deref().map(parse_redirect_uri).transpose()?;
    let project_id = &principal.project_id;
    let checked = async {
        let access = projects::provider_access(services, project_id, provider.as_ref()).await?;
        if !access.enabled {
            return Err(Error::ProviderDisabled { provider: slug.into(), setting: projects::enabled_setting(slug) });
        }
        let credentials = projects::client_credentials(services, project_id, slug).await?;
        if let (Some(url), Some(allowed)) = (&redirect_uri, &access.redirect_allowlist) {
            if !allowed.contains(&url.origin()) {
                return Err(Error::Invalid(format!("redirectUri origin is not in {}", projects::REDIRECT_ALLOWLIST)));
            }
        }
        let region = provider.region_for(request.region.as_deref(), &access.settings).map_err(Error::Invalid)?;
        Ok((credentials, region))
    };
    let patient_missing = || Error::NotFound(format!("Patient/{}", request.patient_id));
    // A project that keeps its patients on its own FHIR server is asked there first (its 404 is
    // ours, it down is 503 and nothing is stored). In the embedded store the patient is checked
    // as the state is written (one statement); when something else is wrong it is looked up
    // first, so a missing patient is still the error reported.
    let on_server = crate::fhir_server::is_server_mode(services, project_id).await?;
    if on_server {
        crate::fhir_server::require_patient(services, project_id, &request.patient_id).await?;
    }
    let (credentials, region) = match checked.await {
        Ok(checked) => checked,
        Err(e) => {
            if !on_server {
                crate::fhir_server::require_patient(services, project_id, &request.patient_id).await?;
            }
            return Err(e);
        }
    };

    let now = now_ms();
    let (state, state_hash) = new_state(now);
    let session = request.session.map(|link| crate::store::StateSession {
        token: services.keyring.seal(link.token.as_bytes(), &session_owner(&link.session_id, &state_hash)),
        session_id: link.session_id,
    });
    let pkce = provider.uses_pkce().then(crate::providers::pkce_pair);
    let code_verifier = pkce
        .as_ref()
        .map(|(_, verifier)| services.keyring.seal(verifier.expose_secret().as_bytes(), &verifier_owner(&state_hash)));
    let record = OAuthStateRecord {
        state_hash,
        project_id: project_id.clone(),
        patient_id: request.patient_id.clone(),
        provider: slug.into(),
        redirect_uri: redirect_uri.map(String::from),
        created_at: now,
        expires_at: now + services.config.state_ttl.as_millis() as i64,
        session,
        code_verifier,
        region: region.clone(),
    };
    let inserted = if on_server {
        // Checked on the server above; the embedded store holds no Patient to check against.
        services.store.insert_state(&record).await?;
        true
    } else {
        services.writes.insert_state.run(record).await?
    };
    if !inserted {
        return Err(patient_missing());
    }
    let redirect_uri = callback_url(services, slug);
    let authorize = AuthorizeRequest {
        redirect_uri: &redirect_uri,
        state: &state,
        code_challenge: pkce.as_ref().map(|(challenge, _)| challenge.as_str()),
        region: region.as_deref(),
    };
    let authorization_url = provider.authorization_url(&credentials, &authorize);
    Ok(ConnectStart { provider: slug.into(), authorization_url, state })
}

/// What the provider sent back to the callback.
#[derive(Default)]
pub struct CallbackParams {
    pub state: Option<String>,
    pub code: Option<String>,
    pub error: Option<String>,
    /// The scopes the user actually granted (Strava sends them).
    pub scope: Option<String>,
}

/// Why a connection attempt with a valid state failed; the code goes into the error redirect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The user declined at the provider.
    AccessDenied,
    /// The provider sent another OAuth error.
    ProviderError,
    /// Neither a code nor an error came back.
    InvalidRequest,
    ProviderDisabled,
    CredentialsMissing,
    TokenExchangeFailed,
    ProviderRegistrationFailed,
    ServerError,
    /// The connect came from a hosted page session that has since expired or been deleted.
    SessionEnded,
}

impl Failure {
    pub fn code(self) -> &'static str {
        match self {
            Failure::AccessDenied => "access_denied",
            Failure::ProviderError => "provider_error",
            Failure::InvalidRequest => "invalid_request",
            Failure::ProviderDisabled => "provider_disabled",
            Failure::CredentialsMissing => "credentials_missing",
            Failure::TokenExchangeFailed => "token_exchange_failed",
            Failure::ProviderRegistrationFailed => "provider_registration_failed",
            Failure::ServerError => "server_error",
            Failure::SessionEnded => "session_ended",
        }
    }
}

/// The end of a connect attempt whose state was valid.
pub struct Callback {
    pub provider: String,
    pub patient_id: String,
    pub redirect_uri: Option<Url>,
    /// The Endpoint id, or why it failed.
    pub result: std::result::Result<String, Failure>,
    /// Set when the connect came from a hosted connect page: the patient goes back there.
    pub session: Option<SessionLink>,
}

impl Callback {
    /// The `redirectUri` with the outcome added to its query (keeping what it had).
    pub fn redirect_target(&self) -> Option<Url> {
        let mut url = self.redirect_uri.clone()?;
        let mut params: Vec<(&str, &str)> = match &self.result {
            Ok(endpoint_id) => vec![("status", "connected"), ("endpointId", endpoint_id)],
            Err(failure) => vec![("status", "error"), ("error", failure.code())],
        };
        params.extend([("provider", self.provider.as_str()), ("patientId", self.patient_id.as_str())]);
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| !["status", "error", "endpointId", "provider", "patientId"].contains(&k.as_ref()))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        url.set_query(None);
        url.query_pairs_mut().extend_pairs(kept).extend_pairs(params);
        Some(url)
    }
}

/// Consumes the state (once), then finishes the connection. A bad state is an `Error`; anything
/// after a good state is a `Callback` (success or a failure to report through the redirect).
pub async fn finish(services: &Services, slug: &str, params: CallbackParams) -> Result<Callback> {
    let provider = provider(services, slug)?;
    let finished = finish_with(services, provider.as_ref(), slug, params).await;
    let outcome = match &finished {
        Ok(callback) => callback.result.as_ref().map(|_| ()).map_err(|failure| failure.code()),
        Err(e) => Err(e.code()),
    };
    services.metrics.callback(provider.slug(), outcome);
    finished
}

async fn finish_with(
    services: &Services,
    provider: &dyn Provider,
    slug: &str,
    params: CallbackParams,
) -> Result<Callback> {
    let state = params.state.as_deref().filter(|s| !s.is_empty() && s.len() <= 256).ok_or(Error::InvalidState)?;
    let record = services.writes.take_state.run(state_key(state)).await?.ok_or(Error::InvalidState)?;
    if record.expires_at <= now_ms() || record.provider != slug {
        return Err(Error::InvalidState);
    }
    let redirect_uri = record.redirect_uri.as_deref().and_then(|u| Url::parse(u).ok());
    let session = match &record.session {
        Some(s) => Some(open_session_link(services, s, &record.state_hash).await?),
        None => None,
    };
    let result = match &session {
        Some((_, false)) => Err(Failure::SessionEnded),
        _ => complete(services, provider, &record, &params).await,
    };
    let session = session.map(|(link, _)| link);
    Ok(Callback { provider: slug.into(), patient_id: record.patient_id, redirect_uri, result, session })
}

/// The session a state came from, with its token, and whether the session is still open: a
/// session deleted or expired while the patient was at the provider connects nothing more.
async fn open_session_link(
    services: &Services,
    stored: &crate::store::StateSession,
    state_key: &str,
) -> Result<(SessionLink, bool)> {
    let token = services.keyring.open(&stored.token, &session_owner(&stored.session_id, state_key))?;
    let token = String::from_utf8(token).map_err(|_| crate::crypto::CryptoError::Open)?;
    let open = services
        .store
        .find_connect_session(&stored.session_id)
        .await?
        .is_some_and(|s| s.ended_at.is_none() && s.expires_at > now_ms());
    Ok((SessionLink { session_id: stored.session_id.clone(), token }, open))
}

async fn complete(
    services: &Services,
    provider: &dyn Provider,
    state: &OAuthStateRecord,
    params: &CallbackParams,
) -> std::result::Result<String, Failure> {
    let slug = provider.slug();
    if let Some(error) = &params.error {
        tracing::info!(provider = slug, "user did not approve the connection");
        return Err(if error == "access_denied" { Failure::AccessDenied } else { Failure::ProviderError });
    }
    let code = params.code.as_deref().filter(|c| !c.is_empty()).ok_or(Failure::InvalidRequest)?;
    // Settings may have changed since connect.
    match projects::provider_access(services, &state.project_id, provider).await {
        Ok(access) if access.enabled => {}
        Ok(_) => return Err(Failure::ProviderDisabled),
        Err(e) => return Err(server_error(&e)),
    }
    let credentials = match projects::client_credentials(services, &state.project_id, slug).await {
        Ok(c) => c,
        Err(Error::CredentialsMissing { .. }) => return Err(Failure::CredentialsMissing),
        Err(e) => return Err(server_error(&e)),
    };
    let callback = callback_url(services, slug);
    let code_verifier = match &state.code_verifier {
        Some(sealed) => match services.keyring.open(sealed, &verifier_owner(&state.state_hash)) {
            Ok(plain) => Some(SecretString::from(String::from_utf8_lossy(&plain).into_owned())),
            Err(e) => return Err(server_error(&e.into())),
        },
        None => None,
    };
    let exchange = CodeExchange {
        code,
        redirect_uri: &callback,
        code_verifier: code_verifier.as_ref(),
        region: state.region.as_deref(),
    };
    let tokens = provider.exchange_code(&services.http, &credentials, &exchange).await.map_err(|e| {
        tracing::warn!(provider = slug, error = %e, "token exchange failed");
        Failure::TokenExchangeFailed
    })?;
    let member_id = &sha256_hex(&format!("wearlink-member:{}:{}", state.project_id, state.patient_id))[..32];
    let webhook_url = crate::webhooks::webhook_url(services, slug, &state.project_id);
    let mut webhook_secret =
        projects::webhook_secret(services, &state.project_id, slug).await.map_err(|e| server_error(&e))?;
    if webhook_secret.is_none() && provider.webhook_secret_at_connect() {
        // Made once per project, then read back: of two first connects racing, both use what was
        // stored last unless one read before the other wrote (its notifications would then be
        // refused, and reconciliation still brings its data).
        let key = projects::secret_key(slug, "WEBHOOK_SECRET");
        let made = crate::crypto::random_token(24);
        projects::put_internal_secret(services, &state.project_id, &key, &made).await.map_err(|e| server_error(&e))?;
        webhook_secret =
            projects::webhook_secret(services, &state.project_id, slug).await.map_err(|e| server_error(&e))?;
    }
    let webhook = crate::providers::WebhookTarget { url: &webhook_url, secret: webhook_secret.as_ref() };
    let ctx = crate::providers::ConnectContext { member_id, webhook };
    provider.after_connect(&services.http, &tokens, &ctx).await.map_err(|e: ProviderError| {
        tracing::warn!(provider = slug, error = %e, "provider registration failed");
        Failure::ProviderRegistrationFailed
    })?;
    let scopes = granted_scopes(provider, params, &tokens);
    save(services, provider, state, tokens, scopes).await.map_err(|e| server_error(&e))
}

fn server_error(e: &Error) -> Failure {
    tracing::error!(error = %e, "connect callback failed on our side");
    Failure::ServerError
}

/// The callback's `scope` when the provider sends it, else the token answer's, else what we asked for.
fn granted_scopes(provider: &dyn Provider, params: &CallbackParams, tokens: &TokenSet) -> Vec<String> {
    if let Some(scope) = params.scope.as_deref().filter(|s| !s.trim().is_empty()) {
        return scope.split([',', ' ']).filter(|s| !s.is_empty()).map(String::from).collect();
    }
    tokens.scopes.clone().unwrap_or_else(|| provider.scopes())
}

/// Writes the connection: one Endpoint per (project, patient, provider), a new version on reconnect.
async fn save(
    services: &Services,
    provider: &dyn Provider,
    state: &OAuthStateRecord,
    tokens: TokenSet,
    scopes: Vec<String>,
) -> Result<String> {
    let material = TokenMaterial {
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        token_type: tokens.token_type,
    };
    // A concurrent first connect of the same patient may create the Endpoint between our read and
    // write; then we adopt its id (the tokens are sealed to the id, so we seal again).
    for _ in 0..3 {
        let existing = services.store.find_connection(&state.project_id, &state.patient_id, provider.slug()).await?;
        let endpoint_id = existing.map(|c| c.endpoint_id).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let now = now_ms();
        let record = ConnectionRecord {
            tokens: Some(material.seal(&services.keyring, &endpoint_owner(&state.project_id, &endpoint_id))),
            has_refresh_token: material.refresh_token.is_some(),
            endpoint_id,
            project_id: state.project_id.clone(),
            patient_id: state.patient_id.clone(),
            provider: provider.slug().into(),
            remote_user_id: tokens.remote_user_id.clone(),
            scopes: scopes.clone(),
            status: "active".into(),
            expires_at: tokens.expires_at,
            connected_at: now,
            updated_at: now,
            last_refreshed_at: None,
            last_error: None,
            refresh_failures: 0,
            next_attempt_at: None,
            region: state.region.clone(),
        };
        let endpoint = endpoint_body(provider, &record);
        match services.writes.save_connection.run((record, endpoint)).await {
            Ok(stored) => return Ok(stored.id),
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Store(StoreError::Conflict))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn callback(redirect: &str, result: std::result::Result<String, Failure>) -> Callback {
        Callback {
            provider: "strava".into(),
            patient_id: "p1".into(),
            redirect_uri: Some(Url::parse(redirect).unwrap()),
            result,
            session: None,
        }
    }

    #[test]
    fn the_redirect_keeps_its_query_and_adds_the_outcome() {
        let url = callback("https://app.example/done?tab=2&status=forged", Ok("e1".into())).redirect_target().unwrap();
        assert_eq!(url.query(), Some("tab=2&status=connected&endpointId=e1&provider=strava&patientId=p1"));
    }

    #[test]
    fn a_failure_redirects_with_its_code() {
        let url = callback("https://app.example/done", Err(Failure::TokenExchangeFailed)).redirect_target().unwrap();
        assert_eq!(url.query(), Some("status=error&error=token_exchange_failed&provider=strava&patientId=p1"));
    }

    #[test]
    fn redirect_uris_must_be_plain_http_urls() {
        assert!(parse_redirect_uri("https://app.example/x").is_ok());
        assert!(parse_redirect_uri("/relative").is_err());
        assert!(parse_redirect_uri("javascript:alert(1)").is_err());
        assert!(parse_redirect_uri("https://user:pw@app.example/").is_err());
    }

    #[test]
    fn state_keys_ascend_with_time_and_hide_the_state() {
        let (first, first_key) = new_state(1_795_000_000_000);
        let (second, second_key) = new_state(1_795_000_000_001);
        assert_eq!(token_bytes(&first).unwrap().len(), STATE_TIME_BYTES + STATE_BYTES);
        assert_eq!(state_key(&first), first_key, "the callback finds the key again");
        assert!(first_key < second_key, "later states sort after earlier ones");
        assert_eq!(&first_key[..12], format!("{:012x}", 1_795_000_000_000_i64));
        assert!(first_key.ends_with(&sha256_hex(&first)), "the rest is the state's hash, not the state");
        assert!(!first_key.contains(&first) && !second_key.contains(&second));
        let (again, _) = new_state(1_795_000_000_000);
        assert_ne!(first, again, "same time, other random part");
        assert_eq!(state_key("forged"), sha256_hex("forged"));
    }

    #[test]
    fn the_callback_url_follows_the_base_url_and_its_path() {
        for (base, expected) in [
            ("https://wl.example", "https://wl.example/v1/wearables/strava/callback"),
            ("https://wl.example/", "https://wl.example/v1/wearables/strava/callback"),
            ("https://wl.example/gateway", "https://wl.example/gateway/v1/wearables/strava/callback"),
            ("https://wl.example/gateway/", "https://wl.example/gateway/v1/wearables/strava/callback"),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080/v1/wearables/strava/callback"),
        ] {
            assert_eq!(callback_url_at(&Url::parse(base).unwrap(), "strava").as_str(), expected, "base {base}");
        }
    }

    #[test]
    fn fhir_ids_are_checked() {
        assert!(is_fhir_id("a-B.9"));
        assert!(!is_fhir_id(""));
        assert!(!is_fhir_id("a/b"));
        assert!(!is_fhir_id(&"x".repeat(65)));
    }
}
