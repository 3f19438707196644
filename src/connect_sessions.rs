//! Hosted connect page sessions, without HTTP: a platform creates a session for one patient and
//! hands them its link; the page lists the project's providers and connects or disconnects them
//! through the same flow as the API (`crate::connect`), with the callback bringing the patient back.
//!
//! The link's token is 256 random bits; only its hash is stored. While a connect started from the
//! page is at the provider, its state row also holds the token sealed to that state (see
//! `connect::SessionLink`), so the callback can send the patient back to the page.

use url::Url;

use crate::connect::{self, ConnectRequest, SessionLink};
use crate::crypto::{random_token, sha256_hex};
use crate::error::{Error, Result};
use crate::projects::{self, Principal};
use crate::store::{ConnectSessionRecord, Role};
use crate::time::now_ms;
use crate::Services;

/// 256 bits from the OS CSPRNG.
const TOKEN_BYTES: usize = 32;
/// How long an ended or expired session is kept, so its link answers 410 rather than 404.
pub const KEEP_ENDED_FOR_MS: i64 = 24 * 3600 * 1000;

/// The languages the page speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Locale {
    En,
    De,
}

impl Locale {
    pub fn code(self) -> &'static str {
        match self {
            Locale::En => "en",
            Locale::De => "de",
        }
    }

    /// `de`, `de-AT`, `EN_us`… by their primary language; `None` for languages the page lacks.
    pub fn parse(tag: &str) -> Option<Self> {
        let primary = tag.trim().split(['-', '_']).next()?.to_ascii_lowercase();
        match primary.as_str() {
            "en" => Some(Locale::En),
            "de" => Some(Locale::De),
            _ => None,
        }
    }

    /// The session's locale, else the best of `Accept-Language` the page speaks, else English.
    pub fn negotiate(session: Option<&str>, accept_language: Option<&str>) -> Self {
        if let Some(locale) = session.and_then(Self::parse) {
            return locale;
        }
        let mut ranked: Vec<(f32, usize, Locale)> = accept_language
            .unwrap_or_default()
            .split(',')
            .enumerate()
            .filter_map(|(i, item)| {
                let mut parts = item.split(';');
                let locale = Self::parse(parts.next()?)?;
                let q = parts
                    .find_map(|p| p.trim().strip_prefix("q=").and_then(|q| q.trim().parse::<f32>().ok()))
                    .unwrap_or(1.0);
                (q > 0.0).then_some((q, i, locale))
            })
            .collect();
        // Highest weight first; among equals, the order given.
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        ranked.first().map(|r| r.2).unwrap_or(Locale::En)
    }
}

pub struct NewSession {
    pub patient_id: String,
    pub redirect_uri: Option<String>,
    pub providers: Option<Vec<String>>,
    pub locale: Option<String>,
}

pub struct CreatedSession {
    pub id: String,
    /// `<base URL>/connect/<token>`: shown once, never stored.
    pub url: Url,
    pub expires_at: i64,
}

/// The page's link for a session token.
pub fn page_url(services: &Services, token: &str) -> Url {
    let base = services.config.base_url.as_str().trim_end_matches('/');
    Url::parse(&format!("{base}/connect/{token}")).expect("base URL plus a path is a URL")
}

/// Checks a `redirectUri` as connect does: an http(s) URL, in the project's allowlist when it has one.
async fn allowed_redirect_uri(services: &Services, project_id: &str, raw: &str) -> Result<Url> {
    let url = connect::parse_redirect_uri(raw)?;
    let settings = projects::stored_settings(services, project_id).await?;
    let allowlist = settings.iter().find(|(key, _)| *key == projects::REDIRECT_ALLOWLIST).and_then(|(_, v)| v.as_str());
    if let Some(raw) = allowlist.filter(|s| !s.trim().is_empty()) {
        if !projects::parse_allowlist(raw)?.contains(&url.origin()) {
            return Err(Error::Invalid(format!("redirectUri origin is not in {}", projects::REDIRECT_ALLOWLIST)));
        }
    }
    Ok(url)
}

/// Creates a session for one of the project's patients (member token).
pub async fn create(services: &Services, principal: &Principal, new: NewSession) -> Result<CreatedSession> {
    if !connect::is_fhir_id(&new.patient_id) {
        return Err(Error::Invalid("patientId must be a FHIR id (1-64 of A-Z a-z 0-9 - .)".into()));
    }
    let project_id = &principal.project_id;
    let redirect_uri = match &new.redirect_uri {
        Some(raw) => Some(allowed_redirect_uri(services, project_id, raw).await?),
        None => None,
    };
    let providers = match new.providers {
        Some(list) => {
            let mut slugs: Vec<String> = Vec::new();
            for slug in list {
                if services.providers.get(&slug).is_none() {
                    return Err(Error::Invalid(format!("providers: unknown provider {slug:?}")));
                }
                if !slugs.contains(&slug) {
                    slugs.push(slug);
                }
            }
            if slugs.is_empty() {
                return Err(Error::Invalid("providers must name at least one provider when given".into()));
            }
            Some(slugs)
        }
        None => None,
    };
    let locale = match new.locale.as_deref() {
        Some(tag) => Some(
            Locale::parse(tag)
                .ok_or_else(|| Error::Invalid("locale must be en or de (a tag such as de-AT is fine)".into()))?
                .code()
                .to_string(),
        ),
        None => None,
    };
    crate::fhir_server::require_patient(services, project_id, &new.patient_id).await?;
    let token = random_token(TOKEN_BYTES);
    let now = now_ms();
    let record = ConnectSessionRecord {
        id: uuid::Uuid::new_v4().to_string(),
        token_hash: sha256_hex(&token),
        project_id: project_id.clone(),
        patient_id: new.patient_id,
        redirect_uri: redirect_uri.map(String::from),
        providers,
        locale,
        created_at: now,
        expires_at: now + services.config.connect_session_ttl.as_millis() as i64,
        ended_at: None,
    };
    services.store.insert_connect_session(&record).await?;
    Ok(CreatedSession { url: page_url(services, &token), id: record.id, expires_at: record.expires_at })
}

/// Ends a session of the project (member token): its link answers 410 from now on. Idempotent.
pub async fn delete(services: &Services, principal: &Principal, id: &str) -> Result<()> {
    if !services.store.end_connect_session(&principal.project_id, id, now_ms()).await? {
        return Err(Error::NotFound(format!("connect session {id}")));
    }
    Ok(())
}

/// Why a link does not open a page.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("no such connect session")]
    Unknown,
    #[error("the connect session expired or was ended")]
    Ended,
    #[error(transparent)]
    Other(#[from] Error),
}

impl From<crate::store::StoreError> for OpenError {
    fn from(e: crate::store::StoreError) -> Self {
        OpenError::Other(e.into())
    }
}

/// A live session, opened by its token.
pub struct OpenSession {
    pub record: ConnectSessionRecord,
    token: String,
}

impl OpenSession {
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Who acts for the patient on the project's behalf (audit records name the session).
    fn principal(&self) -> Principal {
        Principal {
            project_id: self.record.project_id.clone(),
            role: Role::Member,
            token_fingerprint: format!("connect-session:{}", self.record.id),
        }
    }
}

/// Opens the session a link's token belongs to.
pub async fn open(services: &Services, token: &str) -> Result<OpenSession, OpenError> {
    if token.is_empty() || token.len() > 128 {
        return Err(OpenError::Unknown);
    }
    let record = services.store.find_connect_session_by_token(&sha256_hex(token)).await?.ok_or(OpenError::Unknown)?;
    if record.ended_at.is_some() || record.expires_at <= now_ms() {
        return Err(OpenError::Ended);
    }
    Ok(OpenSession { record, token: token.to_string() })
}

/// One provider as the page shows it.
pub struct ProviderView {
    pub slug: &'static str,
    pub name: &'static str,
    pub connected: bool,
    /// Where "Connect" sends the browser: its origin must be allowed as a form target.
    pub authorize_origin: String,
}

pub struct PageView {
    pub project_name: String,
    pub providers: Vec<ProviderView>,
}

/// The providers this page offers: enabled, with credentials, and among the session's when given.
pub async fn view(services: &Services, session: &OpenSession) -> Result<PageView> {
    let project_id = &session.record.project_id;
    let mut all: Vec<_> = services.providers.all().collect();
    all.sort_by_key(|p| p.display_name());
    let mut providers = Vec::new();
    for provider in all {
        let slug = provider.slug();
        if session.record.providers.as_ref().is_some_and(|only| !only.iter().any(|s| s == slug)) {
            continue;
        }
        let access = projects::provider_access(services, project_id, provider.as_ref()).await?;
        if !access.enabled {
            continue;
        }
        match projects::client_credentials(services, project_id, slug).await {
            Ok(_) => {}
            Err(Error::CredentialsMissing { .. }) => continue,
            Err(e) => return Err(e),
        }
        let connected = services
            .store
            .find_connection(project_id, &session.record.patient_id, slug)
            .await?
            .is_some_and(|c| c.status == "active");
        providers.push(ProviderView {
            slug,
            name: provider.display_name(),
            connected,
            // Where the page's Connect redirects: the default region's host, or the sandbox's when
            // the project's settings choose it (the page's CSP `form-action` must name it).
            authorize_origin: provider
                .urls_for(provider.region_for(None, &access.settings).ok().flatten().as_deref())
                .authorize
                .origin()
                .ascii_serialization(),
        });
    }
    let project_name = services.store.project_name(project_id).await?.unwrap_or_default();
    Ok(PageView { project_name, providers })
}

/// The project's `WEARABLE_CONNECT_FRAME_ANCESTORS`: origins that may frame the page (none unless set).
pub async fn frame_ancestors(services: &Services, project_id: &str) -> Result<Vec<String>> {
    let settings = projects::stored_settings(services, project_id).await?;
    let raw = settings.iter().find(|(key, _)| *key == projects::CONNECT_FRAME_ANCESTORS).and_then(|(_, v)| v.as_str());
    Ok(match raw {
        Some(raw) => projects::parse_allowlist(raw)?.iter().map(|o| o.ascii_serialization()).collect(),
        None => Vec::new(),
    })
}

fn offered(page: &PageView, slug: &str) -> Result<()> {
    if page.providers.iter().any(|p| p.slug == slug) {
        Ok(())
    } else {
        Err(Error::NotFound(format!("provider {slug}")))
    }
}

/// "Connect": starts the API's connect flow for this patient; answers where to send the browser.
pub async fn start_connect(services: &Services, session: &OpenSession, slug: &str) -> Result<Url> {
    offered(&view(services, session).await?, slug)?;
    let request = ConnectRequest {
        patient_id: session.record.patient_id.clone(),
        redirect_uri: None,
        session: Some(SessionLink { session_id: session.record.id.clone(), token: session.token.clone() }),
        region: None,
    };
    Ok(connect::start(services, &session.principal(), slug, request).await?.authorization_url)
}

/// "Disconnect": the API's disconnect (revoke upstream, wipe tokens, Endpoint `off`).
pub async fn disconnect(services: &Services, session: &OpenSession, slug: &str) -> Result<()> {
    offered(&view(services, session).await?, slug)?;
    crate::connections::disconnect(services, &session.principal(), slug, &session.record.patient_id).await?;
    Ok(())
}

/// "Done": ends the session; answers the `redirectUri` with `status` (`connected` when at least
/// one provider is, else `cancelled`) and `providers` (the connected ones, comma-separated), or
/// `None` when the session has none (the page then shows a closing message).
pub async fn done(services: &Services, session: &OpenSession) -> Result<Option<Url>> {
    let page = view(services, session).await?;
    services.store.end_connect_session(&session.record.project_id, &session.record.id, now_ms()).await?;
    let Some(mut url) = session.record.redirect_uri.as_deref().and_then(|u| Url::parse(u).ok()) else {
        return Ok(None);
    };
    let connected: Vec<&str> = page.providers.iter().filter(|p| p.connected).map(|p| p.slug).collect();
    let status = if connected.is_empty() { "cancelled" } else { "connected" };
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| !["status", "providers"].contains(&k.as_ref()))
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    url.set_query(None);
    url.query_pairs_mut()
        .extend_pairs(kept)
        .append_pair("status", status)
        .append_pair("providers", &connected.join(","));
    Ok(Some(url))
}

/// Where the callback sends a patient whose connect came from a page: back to it, with the outcome.
pub fn return_url(services: &Services, callback: &connect::Callback) -> Option<Url> {
    let link = callback.session.as_ref()?;
    let mut url = page_url(services, &link.token);
    {
        let mut query = url.query_pairs_mut();
        match &callback.result {
            Ok(_) => query.append_pair("result", "connected"),
            Err(failure) => query.append_pair("result", "failed").append_pair("reason", failure.code()),
        };
        query.append_pair("provider", &callback.provider);
    }
    Some(url)
}

/// Deletes sessions that ended or expired more than `KEEP_ENDED_FOR_MS` ago.
pub async fn sweep(services: &Services) -> Result<u64> {
    Ok(services.store.delete_connect_sessions_before(now_ms() - KEEP_ENDED_FOR_MS).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_locale_wins_then_accept_language_by_weight() {
        assert_eq!(Locale::negotiate(Some("de"), Some("en")), Locale::De);
        assert_eq!(Locale::negotiate(None, Some("de-DE,de;q=0.9,en;q=0.8")), Locale::De);
        assert_eq!(Locale::negotiate(None, Some("fr-FR, en;q=0.5, de;q=0.7")), Locale::De);
        assert_eq!(Locale::negotiate(None, Some("fr, it")), Locale::En);
        assert_eq!(Locale::negotiate(None, Some("de;q=0, en")), Locale::En);
        assert_eq!(Locale::negotiate(Some("xx"), None), Locale::En);
        assert_eq!(Locale::negotiate(None, None), Locale::En);
    }
}
