//! Dexcom API v3 (https://developer.dexcom.com/docs): continuous glucose. OAuth 2.0 on `/v2`
//! (`/v2/oauth2/login`, `/v2/oauth2/token`, the client in the form body, the one scope
//! `offline_access`), data on `/v3/users/self/…`. No webhooks: Dexcom is polled
//! (`DataSource::poll_every`).
//!
//! Hosts are per region — US `api.dexcom.com`, outside the US `api.dexcom.eu`, Japan
//! `api.dexcom.jp` — and the user's account lives in one: the connect request names it
//! (`region`, default `us`), the state carries it and the connection keeps it, so each
//! connection's login, token, refresh and data calls go to its own host. A project whose
//! `WEARABLE_DEXCOM_ENVIRONMENT` is `sandbox` connects to `sandbox-api.dexcom.com` instead (the
//! sandbox Dexcom gives developers first, with its SandboxUser accounts) — shared/spec/providers.md.

use async_trait::async_trait;
use oauth2::AuthType;
use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::{
    json_answer, token_set, AuthorizeRequest, ClientCredentials, CodeExchange, OAuthFlow, Provider, ProviderError,
    ProviderHttp, ProviderSetting, ProviderSettings, ProviderUrls, RefreshedTokens, ResolvedUrls, RevocationTarget,
    TokenSet,
};

mod data;
pub mod mapping;

pub const SLUG: &str = "dexcom";
/// The only scope Dexcom has; it is what issues a refresh token.
pub const SCOPE: &str = "offline_access";
/// What a connect may name; the first is the default.
pub const REGIONS: &[&str] = &["us", "eu", "jp"];
/// Every set of hosts (the regions and the sandbox), each overridable for tests
/// (`WEARLINK_PROVIDER_DEXCOM_REGION_<NAME>_URL`).
pub const HOSTS: &[&str] = &["us", "eu", "jp", "sandbox"];
const SANDBOX: &str = "sandbox";
const DEFAULT_HOSTS: [(&str, &str); 4] = [
    ("us", "https://api.dexcom.com"),
    ("eu", "https://api.dexcom.eu"),
    ("jp", "https://api.dexcom.jp"),
    (SANDBOX, "https://sandbox-api.dexcom.com"),
];
/// `WEARABLE_DEXCOM_ENVIRONMENT`: `production` (the user's region) or `sandbox`.
const SETTINGS: &[ProviderSetting] = &[ProviderSetting { name: "ENVIRONMENT", values: &["production", "sandbox"] }];

pub struct Dexcom {
    /// The URLs of each host, in `HOSTS` order.
    hosts: Vec<(&'static str, ResolvedUrls)>,
}

/// A host's URLs: login and token on `/v2/oauth2`, data on `/v3`.
fn urls_of(host: &Url) -> ResolvedUrls {
    let base = host.as_str().trim_end_matches('/');
    let at = |path: &str| Url::parse(&format!("{base}/{path}")).expect("a host plus a path is a URL");
    ResolvedUrls { authorize: at("v2/oauth2/login"), token: at("v2/oauth2/token"), api: at("v3"), revoke: None }
}

impl Dexcom {
    pub fn new(overrides: Option<&ProviderUrls>) -> Self {
        let hosts = DEFAULT_HOSTS
            .iter()
            .map(|(name, default)| {
                let host = overrides
                    .and_then(|o| o.regions.get(*name).cloned())
                    .unwrap_or_else(|| Url::parse(default).expect("default host"));
                (*name, urls_of(&host))
            })
            .collect();
        Self { hosts }
    }

    fn flow<'a>(&self, urls: &'a ResolvedUrls) -> OAuthFlow<'a> {
        OAuthFlow {
            provider: SLUG,
            urls,
            // Dexcom takes client_id / client_secret in the form body.
            auth_type: AuthType::RequestBody,
            scope: SCOPE.into(),
            extra_authorize_params: &[],
        }
    }

    /// `GET /v3/users/self/dataRange` → `userId`: the token answer does not name the user.
    async fn user_id(
        &self,
        http: &ProviderHttp,
        urls: &ResolvedUrls,
        access_token: &SecretString,
    ) -> Result<String, ProviderError> {
        let request = http
            .get(urls.api_url("users/self/dataRange"))
            .bearer_auth(access_token.expose_secret())
            .header(reqwest::header::ACCEPT, "application/json");
        let range = json_answer(http, (SLUG, "profile"), request, "dataRange answer").await?;
        match range.get("userId").and_then(|u| u.as_str()).map(str::trim) {
            Some(id) if (1..=128).contains(&id.len()) => Ok(id.to_string()),
            _ => Err(ProviderError::BadAnswer("dataRange answer without userId")),
        }
    }
}

#[async_trait]
impl Provider for Dexcom {
    fn slug(&self) -> &'static str {
        SLUG
    }

    fn display_name(&self) -> &'static str {
        "Dexcom"
    }

    fn urls(&self) -> &ResolvedUrls {
        &self.hosts[0].1
    }

    fn scopes(&self) -> Vec<String> {
        vec![SCOPE.into()]
    }

    fn settings(&self) -> &'static [ProviderSetting] {
        SETTINGS
    }

    fn regions(&self) -> &'static [&'static str] {
        REGIONS
    }

    /// The requested region (checked even in the sandbox, so a request that works there works in
    /// production), or `sandbox` when the project is set to it.
    fn region_for(&self, requested: Option<&str>, settings: &ProviderSettings) -> Result<Option<String>, String> {
        let region = match requested.map(str::trim) {
            None => REGIONS[0],
            Some(r) => REGIONS
                .iter()
                .find(|known| known.eq_ignore_ascii_case(r))
                .ok_or_else(|| format!("region must be one of {}", REGIONS.join(", ")))?,
        };
        let sandbox = settings.get("ENVIRONMENT").is_some_and(|e| e == SANDBOX);
        Ok(Some(if sandbox { SANDBOX } else { region }.to_string()))
    }

    fn urls_for(&self, region: Option<&str>) -> &ResolvedUrls {
        let region = region.unwrap_or(REGIONS[0]);
        self.hosts.iter().find(|(name, _)| *name == region).map_or(&self.hosts[0].1, |(_, urls)| urls)
    }

    fn data(&self) -> Option<&dyn super::DataSource> {
        Some(self)
    }

    fn authorization_url(&self, credentials: &ClientCredentials, request: &AuthorizeRequest<'_>) -> Url {
        self.flow(self.urls_for(request.region)).authorization_url(credentials, request)
    }

    async fn exchange_code(
        &self,
        http: &ProviderHttp,
        credentials: &ClientCredentials,
        exchange: &CodeExchange<'_>,
    ) -> Result<TokenSet, ProviderError> {
        let urls = self.urls_for(exchange.region);
        let answer = self.flow(urls).exchange::<oauth2::EmptyExtraTokenFields>(http, credentials, exchange).await?;
        let access = SecretString::from(oauth2::TokenResponse::access_token(&answer).secret().to_string());
        let user = self.user_id(http, urls, &access).await?;
        let mut tokens = token_set(&answer, user, None);
        // Dexcom's token answer carries no scope; offline_access is all there is.
        tokens.scopes.get_or_insert_with(|| vec![SCOPE.into()]);
        Ok(tokens)
    }

    fn supports_refresh(&self) -> bool {
        true
    }

    async fn refresh(
        &self,
        http: &ProviderHttp,
        credentials: &ClientCredentials,
        refresh_token: &SecretString,
    ) -> Result<RefreshedTokens, ProviderError> {
        self.refresh_in(http, credentials, refresh_token, None).await
    }

    /// At the connection's own host. Whether Dexcom rotates refresh tokens is not documented:
    /// the newest one answered is stored every time (the refresher keeps the old one only when
    /// an answer has none).
    async fn refresh_in(
        &self,
        http: &ProviderHttp,
        credentials: &ClientCredentials,
        refresh_token: &SecretString,
        region: Option<&str>,
    ) -> Result<RefreshedTokens, ProviderError> {
        let url = &self.urls_for(region).token;
        super::refresh_with_form_credentials(http, SLUG, url, credentials, refresh_token, &[]).await
    }

    /// Dexcom has no revocation API: the user removes the app's access in their Dexcom account.
    /// Disconnect wipes the tokens and turns the Endpoint off; nothing to call.
    async fn revoke(&self, _http: &ProviderHttp, _target: &RevocationTarget<'_>) -> Result<(), ProviderError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(environment: &str) -> ProviderSettings {
        [("ENVIRONMENT", environment.to_string())].into_iter().collect()
    }

    #[test]
    fn regions_are_checked_and_the_sandbox_setting_wins() {
        let dexcom = Dexcom::new(None);
        let production = settings("production");
        assert_eq!(dexcom.region_for(None, &production).unwrap().as_deref(), Some("us"));
        assert_eq!(dexcom.region_for(Some("EU"), &production).unwrap().as_deref(), Some("eu"));
        assert!(dexcom.region_for(Some("mars"), &production).is_err());
        assert_eq!(dexcom.region_for(Some("jp"), &settings("sandbox")).unwrap().as_deref(), Some("sandbox"));
        assert!(dexcom.region_for(Some("mars"), &settings("sandbox")).is_err());
        assert_eq!(dexcom.urls_for(Some("eu")).token.as_str(), "https://api.dexcom.eu/v2/oauth2/token");
        assert_eq!(dexcom.urls_for(Some("jp")).api_url("users/self/egvs"), "https://api.dexcom.jp/v3/users/self/egvs");
        assert_eq!(
            dexcom.urls_for(Some("sandbox")).authorize.as_str(),
            "https://sandbox-api.dexcom.com/v2/oauth2/login"
        );
        assert_eq!(dexcom.urls_for(None).authorize.as_str(), "https://api.dexcom.com/v2/oauth2/login");
    }

    #[test]
    fn the_login_url_asks_for_offline_access() {
        let dexcom = Dexcom::new(None);
        let redirect = Url::parse("https://wearlink.example/v1/wearables/dexcom/callback").unwrap();
        let credentials =
            ClientCredentials { client_id: "c".into(), client_secret: SecretString::from("s".to_string()) };
        let request =
            AuthorizeRequest { redirect_uri: &redirect, state: "st", code_challenge: None, region: Some("eu") };
        let url = dexcom.authorization_url(&credentials, &request);
        assert!(url.as_str().starts_with("https://api.dexcom.eu/v2/oauth2/login?"), "{url}");
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!((q["scope"].as_str(), q["response_type"].as_str()), ("offline_access", "code"));
    }
}
