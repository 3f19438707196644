//! Wearable providers behind one small trait; one file per provider, a registry by slug.
//!
//! The `oauth2` crate builds authorize URLs and performs code exchanges; its types stay inside this
//! module so a provider with a non-standard exchange can be written by hand.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse, BasicTokenType,
};
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, Client, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet,
    ExtraTokenFields, RedirectUrl, RequestTokenError, Scope, StandardRevocableToken, StandardTokenResponse,
    TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use url::Url;

pub mod data;
pub mod dexcom;
pub mod garmin;
pub mod google;
pub mod oura;
pub mod polar;
pub mod strava;
pub mod webhook;
pub mod whoop;
pub mod withings;

pub use data::DataSource;
pub use webhook::Webhooks;

pub use polar::{Polar, PolarEvent};
pub use strava::{Strava, StravaEvent};

pub use polar::verify_signature as verify_polar_signature;

/// Every built-in provider's slug (config reads URL overrides for each).
pub const SLUGS: &[&str] =
    &[strava::SLUG, polar::SLUG, oura::SLUG, whoop::SLUG, garmin::SLUG, google::SLUG, withings::SLUG, dexcom::SLUG];

/// The regions (and environments) of providers whose hosts differ by region, by slug: config
/// reads a host override `WEARLINK_PROVIDER_<SLUG>_REGION_<REGION>_URL` for each.
pub const REGIONS: &[(&str, &[&str])] = &[(dexcom::SLUG, dexcom::HOSTS)];

/// A setting of a provider's own, per project: `WEARABLE_<SLUG>_<NAME>`, one of `values` (the
/// first is the default). Declared by the provider, validated and stored by `projects`.
#[derive(Clone, Copy, Debug)]
pub struct ProviderSetting {
    pub name: &'static str,
    pub values: &'static [&'static str],
}

/// A provider's own settings in one project: name (without the prefix) → value (or its default).
pub type ProviderSettings = std::collections::BTreeMap<&'static str, String>;

/// Overrides of a provider's URLs; `None` keeps the provider's public default.
#[derive(Clone, Debug, Default)]
pub struct ProviderUrls {
    pub authorize: Option<Url>,
    pub token: Option<Url>,
    /// The API base that paths are appended to.
    pub api: Option<Url>,
    /// Where access is revoked (Strava's deauthorize); providers that revoke through their API ignore it.
    pub revoke: Option<Url>,
    /// Where the provider says who the user is, for providers whose token answer does not (Oura's
    /// `personal_info`, WHOOP's profile, Garmin's user id, whose path differs between clients).
    pub user: Option<Url>,
    /// The provider's public key for payload signatures, where it signs with one (Google Health's
    /// `X-HEALTHAPI-SIGNATURE`, ECDSA P-256; PEM); the check is skipped without it.
    pub signature_key: Option<String>,
    /// Host overrides by region (`WEARLINK_PROVIDER_<SLUG>_REGION_<REGION>_URL`), for providers
    /// whose hosts differ by region (`REGIONS`).
    pub regions: HashMap<String, Url>,
    /// The provider's short rate-limit window, where it is clock-aligned and not announced in
    /// headers (Strava's 15 minutes); shorter only to compress time in tests.
    pub short_rate_window: Option<std::time::Duration>,
}

/// A provider's URLs with defaults applied.
#[derive(Clone, Debug)]
pub struct ResolvedUrls {
    pub authorize: Url,
    pub token: Url,
    pub api: Url,
    pub revoke: Option<Url>,
}

impl ResolvedUrls {
    fn new(overrides: Option<&ProviderUrls>, authorize: &str, token: &str, api: &str, revoke: Option<&str>) -> Self {
        let pick = |o: Option<&Url>, d: &str| o.cloned().unwrap_or_else(|| Url::parse(d).expect("default URL"));
        let o = overrides.cloned().unwrap_or_default();
        Self {
            authorize: pick(o.authorize.as_ref(), authorize),
            token: pick(o.token.as_ref(), token),
            api: pick(o.api.as_ref(), api),
            revoke: o.revoke.or_else(|| revoke.map(|r| Url::parse(r).expect("default URL"))),
        }
    }

    /// `<api base>/<path>`, keeping the base's own path.
    pub fn api_url(&self, path: &str) -> String {
        format!("{}/{}", self.api.as_str().trim_end_matches('/'), path.trim_start_matches('/'))
    }
}

/// The project's OAuth app at the provider.
pub struct ClientCredentials {
    pub client_id: String,
    pub client_secret: SecretString,
}

/// Tokens a provider issued, with the facts about them we keep.
#[derive(Debug)]
pub struct TokenSet {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub token_type: String,
    /// Epoch milliseconds.
    pub expires_at: Option<i64>,
    /// The provider's id of the user (Strava athlete id, Polar `x_user_id`).
    pub remote_user_id: String,
    /// Scopes the provider reports in the token answer, if it does.
    pub scopes: Option<Vec<String>>,
}

/// What a refresh hands back. Some providers rotate the refresh token, some do not send one.
pub struct RefreshedTokens {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub token_type: String,
    /// Epoch milliseconds.
    pub expires_at: Option<i64>,
}

/// What the authorize URL carries.
pub struct AuthorizeRequest<'a> {
    /// Our callback, exactly as registered at the provider.
    pub redirect_uri: &'a Url,
    pub state: &'a str,
    /// The PKCE S256 challenge, for providers that `uses_pkce`.
    pub code_challenge: Option<&'a str>,
    /// The connection's region (`Provider::region_for`), for providers with regions.
    pub region: Option<&'a str>,
}

/// What a code exchange carries.
pub struct CodeExchange<'a> {
    pub code: &'a str,
    pub redirect_uri: &'a Url,
    /// The PKCE verifier kept with the state.
    pub code_verifier: Option<&'a SecretString>,
    /// The connection's region, as at authorize.
    pub region: Option<&'a str>,
}

/// A new PKCE S256 pair (RFC 7636): `(challenge, verifier)`.
pub fn pkce_pair() -> (String, SecretString) {
    let (challenge, verifier) = oauth2::PkceCodeChallenge::new_random_sha256();
    (challenge.as_str().to_string(), SecretString::from(verifier.secret().to_string()))
}

/// What a revocation needs to know about the connection.
pub struct RevocationTarget<'a> {
    pub access_token: &'a SecretString,
    pub remote_user_id: &'a str,
    /// The project's OAuth app, for providers whose revocation is signed with it (Withings);
    /// `None` when the project no longer has credentials on file.
    pub credentials: Option<&'a ClientCredentials>,
    /// The project's webhook URL and secret, for providers whose notifications are subscribed per
    /// user and must be unsubscribed with the same callback (Withings).
    pub webhook: WebhookTarget<'a>,
}

/// The project's webhook URL for a provider (`<base>/v1/wearables/<slug>/webhook/<projectId>`)
/// and its webhook secret, when set.
#[derive(Clone, Copy)]
pub struct WebhookTarget<'a> {
    pub url: &'a str,
    pub secret: Option<&'a SecretString>,
}

/// What `after_connect` may need beside the tokens.
pub struct ConnectContext<'a> {
    /// An opaque, stable id of the patient within the project (Polar's `member-id`).
    pub member_id: &'a str,
    /// Where the provider delivers this project's notifications, for providers that subscribe
    /// per user at connect (Withings).
    pub webhook: WebhookTarget<'a>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The grant is dead (refresh token revoked, used or expired): the connection cannot recover.
    #[error("the provider refused the grant (invalid_grant)")]
    InvalidGrant,
    /// 429; wait at least `retry_after` when the provider says so.
    #[error("rate limited by the provider")]
    RateLimited { retry_after: Option<std::time::Duration> },
    /// Could not reach the provider, or it did not answer in time.
    #[error("provider unreachable")]
    Unreachable,
    /// The provider answered with an error status or an OAuth error.
    #[error("provider refused the request (status {status:?}, error {error:?})")]
    Refused { status: Option<u16>, error: Option<String> },
    /// The answer could not be understood; never carries the body (it may hold tokens).
    #[error("provider answer not understood: {0}")]
    BadAnswer(&'static str),
}

impl ProviderError {
    /// A short stable name of the failure (an outcome label in the metrics).
    pub fn code(&self) -> &'static str {
        match self {
            ProviderError::InvalidGrant => "invalid_grant",
            ProviderError::RateLimited { .. } => "rate_limited",
            ProviderError::Unreachable => "unreachable",
            ProviderError::Refused { .. } => "refused",
            ProviderError::BadAnswer(_) => "bad_answer",
        }
    }
}

#[async_trait]
pub trait Provider: Send + Sync {
    fn slug(&self) -> &'static str;
    fn display_name(&self) -> &'static str;
    fn urls(&self) -> &ResolvedUrls;
    /// Scopes requested at authorization.
    fn scopes(&self) -> Vec<String>;
    /// Whether the code flow carries a PKCE S256 challenge (RFC 7636): required by some providers
    /// (Garmin), supported by others (Google). The verifier stays with the state, sealed.
    fn uses_pkce(&self) -> bool {
        false
    }
    /// The URL the user is sent to.
    fn authorization_url(&self, credentials: &ClientCredentials, request: &AuthorizeRequest<'_>) -> Url;
    /// Exchanges the code for tokens, with whatever follow-up call names the user (Oura, WHOOP,
    /// Garmin answer the user id only from their API).
    async fn exchange_code(
        &self,
        http: &ProviderHttp,
        credentials: &ClientCredentials,
        exchange: &CodeExchange<'_>,
    ) -> Result<TokenSet, ProviderError>;
    /// What must happen at the provider before a connection is usable (Polar: register the user;
    /// Withings: subscribe the user's notifications).
    async fn after_connect(
        &self,
        _http: &ProviderHttp,
        _tokens: &TokenSet,
        _ctx: &ConnectContext<'_>,
    ) -> Result<(), ProviderError> {
        Ok(())
    }
    /// Whether `after_connect` subscribes the user with a callback URL that carries the project's
    /// webhook secret (Withings, which signs nothing): one is made first when none is on file, so
    /// no notification is ever accepted without it.
    fn webhook_secret_at_connect(&self) -> bool {
        false
    }
    /// Whether `refresh` can renew tokens (Polar's never expire by refresh: there is no refresh token).
    fn supports_refresh(&self) -> bool {
        false
    }
    async fn refresh(
        &self,
        _http: &ProviderHttp,
        _credentials: &ClientCredentials,
        _refresh_token: &SecretString,
    ) -> Result<RefreshedTokens, ProviderError> {
        Err(ProviderError::InvalidGrant)
    }
    /// `refresh` for a connection in `region` (providers with regions refresh at that region's
    /// token endpoint).
    async fn refresh_in(
        &self,
        http: &ProviderHttp,
        credentials: &ClientCredentials,
        refresh_token: &SecretString,
        _region: Option<&str>,
    ) -> Result<RefreshedTokens, ProviderError> {
        self.refresh(http, credentials, refresh_token).await
    }
    /// Settings of the provider's own (see `ProviderSetting`).
    fn settings(&self) -> &'static [ProviderSetting] {
        &[]
    }
    /// The regions a connect may name (the first is the default); empty when the provider has
    /// one set of hosts.
    fn regions(&self) -> &'static [&'static str] {
        &[]
    }
    /// The region a new connection lives in, from what the connect request asked and the
    /// project's provider settings; `Err` names what is wrong with the request (422).
    fn region_for(&self, requested: Option<&str>, _settings: &ProviderSettings) -> Result<Option<String>, String> {
        match requested {
            None => Ok(None),
            Some(_) => Err(format!("{} has no regions: leave region out", self.display_name())),
        }
    }
    /// The URLs of a connection in `region` (`None`: the provider's default hosts).
    fn urls_for(&self, _region: Option<&str>) -> &ResolvedUrls {
        self.urls()
    }
    /// Revokes our access at the provider. Access that is already gone counts as revoked.
    async fn revoke(&self, http: &ProviderHttp, target: &RevocationTarget<'_>) -> Result<(), ProviderError>;
    /// The provider's data API, when Wearlink syncs its data.
    fn data(&self) -> Option<&dyn DataSource> {
        None
    }
    /// The provider's inbound webhooks, when it sends any.
    fn webhooks(&self) -> Option<&dyn Webhooks> {
        None
    }
    /// The FHIR identifier system for this provider's user ids.
    fn identifier_system(&self) -> String {
        format!("{}/sid/{}-user-id", crate::fhir::BASE, self.slug())
    }
}

/// The built-in providers, by slug.
#[derive(Clone)]
pub struct Registry {
    providers: HashMap<&'static str, Arc<dyn Provider>>,
}

impl Registry {
    pub fn new(overrides: &HashMap<String, ProviderUrls>) -> Self {
        let all: Vec<Arc<dyn Provider>> = vec![
            Arc::new(Strava::new(overrides.get(strava::SLUG))),
            Arc::new(Polar::new(overrides.get(polar::SLUG))),
            Arc::new(oura::Oura::new(overrides.get(oura::SLUG))),
            Arc::new(whoop::Whoop::new(overrides.get(whoop::SLUG))),
            Arc::new(garmin::Garmin::new(overrides.get(garmin::SLUG))),
            Arc::new(google::Google::new(overrides.get(google::SLUG))),
            Arc::new(withings::Withings::new(overrides.get(withings::SLUG))),
            Arc::new(dexcom::Dexcom::new(overrides.get(dexcom::SLUG))),
        ];
        Self { providers: all.into_iter().map(|p| (p.slug(), p)).collect() }
    }

    pub fn get(&self, slug: &str) -> Option<&Arc<dyn Provider>> {
        self.providers.get(slug)
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Provider>> {
        self.providers.values()
    }
}

/// The outbound HTTP client for provider calls: no redirects (a token answer is never followed
/// elsewhere), explicit timeouts.
pub fn http_client(timeout: std::time::Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .timeout(timeout)
        .user_agent(concat!("wearlink/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the HTTP client configuration is valid")
}

/// The client every provider call goes through, so each one is counted in the metrics (provider,
/// operation, status class, time to the answer) where it really happens: one count per request,
/// with the status the provider sent. Derefs to the `reqwest::Client` that builds requests.
#[derive(Clone)]
pub struct ProviderHttp {
    client: reqwest::Client,
    calls: crate::metrics::ProviderCalls,
}

impl ProviderHttp {
    pub fn new(client: reqwest::Client, calls: crate::metrics::ProviderCalls) -> Self {
        Self { client, calls }
    }

    /// Sends `request` (`provider` and `operation` name it in the metrics).
    pub async fn send(
        &self,
        provider: &'static str,
        operation: &'static str,
        request: reqwest::RequestBuilder,
    ) -> reqwest::Result<reqwest::Response> {
        let started = std::time::Instant::now();
        let answer = request.send().await;
        self.calls.observe(provider, operation, answer.as_ref().ok().map(|r| r.status().as_u16()), started.elapsed());
        answer
    }
}

impl std::ops::Deref for ProviderHttp {
    type Target = reqwest::Client;

    fn deref(&self) -> &reqwest::Client {
        &self.client
    }
}

type OAuthClient<EF> = Client<
    BasicErrorResponse,
    StandardTokenResponse<EF, BasicTokenType>,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// How a provider wants its OAuth2 code flow spoken.
pub(crate) struct OAuthFlow<'a> {
    pub provider: &'static str,
    pub urls: &'a ResolvedUrls,
    pub auth_type: AuthType,
    /// Joined into one `scope` parameter as the provider expects (Strava: commas).
    pub scope: String,
    pub extra_authorize_params: &'a [(&'a str, &'a str)],
}

impl OAuthFlow<'_> {
    fn client<EF: ExtraTokenFields>(&self, credentials: &ClientCredentials, redirect_uri: &Url) -> OAuthClient<EF> {
        Client::new(ClientId::new(credentials.client_id.clone()))
            .set_client_secret(ClientSecret::new(credentials.client_secret.expose_secret().to_string()))
            .set_auth_uri(AuthUrl::from_url(self.urls.authorize.clone()))
            .set_token_uri(TokenUrl::from_url(self.urls.token.clone()))
            .set_redirect_uri(RedirectUrl::from_url(redirect_uri.clone()))
            .set_auth_type(self.auth_type.clone())
    }

    pub fn authorization_url(&self, credentials: &ClientCredentials, request: &AuthorizeRequest<'_>) -> Url {
        let client = self.client::<oauth2::EmptyExtraTokenFields>(credentials, request.redirect_uri);
        let state = request.state.to_string();
        let mut url = client.authorize_url(|| CsrfToken::new(state));
        if !self.scope.is_empty() {
            url = url.add_scope(Scope::new(self.scope.clone()));
        }
        for (name, value) in self.extra_authorize_params {
            url = url.add_extra_param(*name, *value);
        }
        if let Some(challenge) = request.code_challenge {
            url = url.add_extra_param("code_challenge", challenge).add_extra_param("code_challenge_method", "S256");
        }
        url.url().0
    }

    /// Exchanges `code`; the caller reads its provider's extra fields from the answer.
    pub async fn exchange<EF: ExtraTokenFields>(
        &self,
        http: &ProviderHttp,
        credentials: &ClientCredentials,
        exchange: &CodeExchange<'_>,
    ) -> Result<StandardTokenResponse<EF, BasicTokenType>, ProviderError> {
        let counted = CountedExchange { http, provider: self.provider };
        let client = self.client::<EF>(credentials, exchange.redirect_uri);
        let mut request = client.exchange_code(AuthorizationCode::new(exchange.code.to_string()));
        if let Some(verifier) = exchange.code_verifier {
            request = request.set_pkce_verifier(oauth2::PkceCodeVerifier::new(verifier.expose_secret().to_string()));
        }
        request.request_async(&counted).await.map_err(|e| match e {
            RequestTokenError::ServerResponse(r) => {
                ProviderError::Refused { status: None, error: Some(r.error().as_ref().to_string()) }
            }
            RequestTokenError::Request(_) => ProviderError::Unreachable,
            // The raw body of a parse error may hold tokens: dropped here, never logged.
            RequestTokenError::Parse(_, _) => ProviderError::BadAnswer("token answer"),
            RequestTokenError::Other(_) => ProviderError::Refused { status: None, error: None },
        })
    }
}

/// The oauth2 crate sends the code exchange itself: this counts it around reqwest's call.
struct CountedExchange<'a> {
    http: &'a ProviderHttp,
    provider: &'static str,
}

impl<'c> oauth2::AsyncHttpClient<'c> for CountedExchange<'_> {
    type Error = <reqwest::Client as oauth2::AsyncHttpClient<'c>>::Error;
    type Future = <reqwest::Client as oauth2::AsyncHttpClient<'c>>::Future;

    fn call(&'c self, request: oauth2::HttpRequest) -> Self::Future {
        Box::pin(async move {
            let started = std::time::Instant::now();
            let answer = self.http.client.call(request).await;
            let status = answer.as_ref().ok().map(|r| r.status().as_u16());
            self.http.calls.observe(self.provider, "token_exchange", status, started.elapsed());
            answer
        })
    }
}

/// A token answer as providers send it on refresh.
#[derive(serde::Deserialize)]
struct RawTokenAnswer {
    access_token: String,
    refresh_token: Option<String>,
    token_type: Option<String>,
    /// Epoch seconds (Strava).
    expires_at: Option<i64>,
    expires_in: Option<i64>,
}

/// POSTs a token form by hand (refresh): unlike the `oauth2` crate's exchange, this keeps the
/// status and `Retry-After`, so a dead grant can be told from a passing failure. Strava's errors
/// are not RFC 6749 shaped (`{"message", "errors": [{"resource", "field", "code"}]}`); both are read.
pub(crate) async fn post_token_form(
    http: &ProviderHttp,
    provider: &'static str,
    url: &Url,
    form: &[(&str, &str)],
    basic: Option<&ClientCredentials>,
) -> Result<RefreshedTokens, ProviderError> {
    let mut request = http.post(url.clone()).header(reqwest::header::ACCEPT, "application/json").form(form);
    if let Some(c) = basic {
        request = request.basic_auth(&c.client_id, Some(c.client_secret.expose_secret()));
    }
    let response = http.send(provider, "token_refresh", request).await.map_err(|_| ProviderError::Unreachable)?;
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let body = response.bytes().await.map_err(|_| ProviderError::Unreachable)?;
    if status.is_success() {
        let answer: RawTokenAnswer =
            serde_json::from_slice(&body).map_err(|_| ProviderError::BadAnswer("token answer"))?;
        let now = crate::time::now_ms();
        return Ok(RefreshedTokens {
            access_token: SecretString::from(answer.access_token),
            refresh_token: answer.refresh_token.map(SecretString::from),
            token_type: answer.token_type.unwrap_or_else(|| "Bearer".into()),
            expires_at: answer.expires_at.map(|s| s * 1000).or(answer.expires_in.map(|s| now + s * 1000)),
        });
    }
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(ProviderError::RateLimited { retry_after });
    }
    let error = serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|v| oauth_error_code(&v));
    match error.as_deref() {
        Some("invalid_grant") => Err(ProviderError::InvalidGrant),
        _ => Err(ProviderError::Refused { status: Some(status.as_u16()), error }),
    }
}

/// A refresh as RFC 6749 §6 has it, with the client's id and secret in the form (what every
/// provider here but Polar expects); `extra` adds a provider's own fields (WHOOP's `scope`).
pub(crate) async fn refresh_with_form_credentials(
    http: &ProviderHttp,
    provider: &'static str,
    url: &Url,
    credentials: &ClientCredentials,
    refresh_token: &SecretString,
    extra: &[(&str, &str)],
) -> Result<RefreshedTokens, ProviderError> {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token.expose_secret()),
        ("client_id", credentials.client_id.as_str()),
        ("client_secret", credentials.client_secret.expose_secret()),
    ];
    form.extend_from_slice(extra);
    post_token_form(http, provider, url, &form, None).await
}

/// Sends a provider API call whose success answers JSON. Errors: unreachable, refused (any
/// status but 2xx), or an answer that is not JSON (`what` names it).
pub(crate) async fn json_answer(
    http: &ProviderHttp,
    (provider, operation): (&'static str, &'static str),
    request: reqwest::RequestBuilder,
    what: &'static str,
) -> Result<serde_json::Value, ProviderError> {
    let response = http.send(provider, operation, request).await.map_err(|_| ProviderError::Unreachable)?;
    let status = response.status();
    if !status.is_success() {
        return Err(ProviderError::Refused { status: Some(status.as_u16()), error: None });
    }
    response.json().await.map_err(|_| ProviderError::BadAnswer(what))
}

/// An id as text: providers send ids as JSON numbers or strings.
pub(crate) fn id_text(value: Option<&serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// The RFC 6749 `error`, or Strava's equivalent: an invalid `RefreshToken` means `invalid_grant`.
fn oauth_error_code(body: &serde_json::Value) -> Option<String> {
    if let Some(code) = body.get("error").and_then(|e| e.as_str()) {
        return Some(code.to_string());
    }
    let errors = body.get("errors")?.as_array()?;
    let refresh_token_invalid = errors.iter().any(|e| {
        e.get("resource").and_then(|r| r.as_str()) == Some("RefreshToken")
            || e.get("field").and_then(|f| f.as_str()) == Some("refresh_token")
    });
    if refresh_token_invalid {
        return Some("invalid_grant".into());
    }
    errors.first()?.get("resource")?.as_str().map(|r| format!("{}_invalid", r.to_ascii_lowercase()))
}

/// `Retry-After`: delay-seconds, or an HTTP date (RFC 9110 §10.2.3), as a wait from now.
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<std::time::Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(std::time::Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.timestamp_millis() - crate::time::now_ms();
    Some(std::time::Duration::from_millis(wait.max(0) as u64))
}

/// Classifies the status of a revocation call: success, or access already gone, is done.
pub(crate) fn revocation_result(status: reqwest::StatusCode) -> Result<(), ProviderError> {
    use reqwest::StatusCode as S;
    match status {
        s if s.is_success() => Ok(()),
        S::UNAUTHORIZED | S::FORBIDDEN | S::NOT_FOUND => Ok(()),
        S::TOO_MANY_REQUESTS => Err(ProviderError::RateLimited { retry_after: None }),
        s => Err(ProviderError::Refused { status: Some(s.as_u16()), error: None }),
    }
}

/// The standard part of a token answer as a `TokenSet`.
pub(crate) fn token_set<EF: ExtraTokenFields>(
    answer: &StandardTokenResponse<EF, BasicTokenType>,
    remote_user_id: String,
    expires_at: Option<i64>,
) -> TokenSet {
    let now = crate::time::now_ms();
    TokenSet {
        access_token: SecretString::from(answer.access_token().secret().to_string()),
        refresh_token: answer.refresh_token().map(|t| SecretString::from(t.secret().to_string())),
        // RFC 6750 types are case-insensitive; hand out the canonical spelling.
        token_type: match answer.token_type() {
            BasicTokenType::Bearer => "Bearer".to_string(),
            other => other.as_ref().to_string(),
        },
        expires_at: expires_at.or_else(|| answer.expires_in().map(|d| now + d.as_millis() as i64)),
        remote_user_id,
        scopes: answer.scopes().map(|s| s.iter().map(|s| s.to_string()).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strava_and_rfc6749_errors_are_read_alike() {
        let strava = json!({"message": "Bad Request", "errors": [{"resource": "RefreshToken", "field": "refresh_token", "code": "invalid"}]});
        assert_eq!(oauth_error_code(&strava).as_deref(), Some("invalid_grant"));
        assert_eq!(oauth_error_code(&json!({"error": "invalid_grant"})).as_deref(), Some("invalid_grant"));
        let app = json!({"message": "Authorization Error", "errors": [{"resource": "Application", "field": "client_id", "code": "invalid"}]});
        assert_eq!(oauth_error_code(&app).as_deref(), Some("application_invalid"));
        assert_eq!(oauth_error_code(&json!({"message": "x"})), None);
    }

    #[test]
    fn revocation_counts_access_already_gone_as_done() {
        assert!(revocation_result(reqwest::StatusCode::NO_CONTENT).is_ok());
        assert!(revocation_result(reqwest::StatusCode::UNAUTHORIZED).is_ok());
        assert!(revocation_result(reqwest::StatusCode::SERVICE_UNAVAILABLE).is_err());
    }
}
