//! Polar AccessLink (https://www.polar.com/accesslink-api/).

use async_trait::async_trait;
use oauth2::AuthType;
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use url::Url;

use super::{
    revocation_result, token_set, ClientCredentials, OAuthFlow, Provider, ProviderError, ProviderUrls, ResolvedUrls,
    RevocationTarget, TokenSet,
};

pub const SLUG: &str = "polar";
const SCOPE: &str = "accesslink.read_all";

pub struct Polar {
    urls: ResolvedUrls,
}

impl Polar {
    pub fn new(overrides: Option<&ProviderUrls>) -> Self {
        Self {
            urls: ResolvedUrls::new(
                overrides,
                "https://flow.polar.com/oauth2/authorization",
                "https://polarremote.com/v2/oauth2/token",
                "https://www.polaraccesslink.com/v3",
                None,
            ),
        }
    }

    fn flow(&self) -> OAuthFlow<'_> {
        OAuthFlow { urls: &self.urls, auth_type: AuthType::BasicAuth, scope: SCOPE.into(), extra_authorize_params: &[] }
    }
}

/// Polar's addition to the token answer: the AccessLink user id.
#[derive(Clone, Debug, Deserialize, Serialize)]
struct PolarTokenFields {
    x_user_id: Option<serde_json::Value>,
}

impl oauth2::ExtraTokenFields for PolarTokenFields {}

#[async_trait]
impl Provider for Polar {
    fn slug(&self) -> &'static str {
        SLUG
    }

    fn display_name(&self) -> &'static str {
        "Polar"
    }

    fn urls(&self) -> &ResolvedUrls {
        &self.urls
    }

    fn scopes(&self) -> Vec<String> {
        vec![SCOPE.into()]
    }

    fn authorization_url(&self, credentials: &ClientCredentials, redirect_uri: &Url, state: &str) -> Url {
        self.flow().authorization_url(credentials, redirect_uri, state)
    }

    async fn exchange_code(
        &self,
        http: &reqwest::Client,
        credentials: &ClientCredentials,
        code: &str,
        redirect_uri: &Url,
    ) -> Result<TokenSet, ProviderError> {
        let answer = self.flow().exchange::<PolarTokenFields>(http, credentials, code, redirect_uri).await?;
        let user_id = match &answer.extra_fields().x_user_id {
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(ProviderError::BadAnswer("token answer without x_user_id")),
        };
        Ok(token_set(&answer, user_id, None))
    }

    /// AccessLink only serves data for registered users; 409 means already registered.
    async fn after_connect(
        &self,
        http: &reqwest::Client,
        tokens: &TokenSet,
        member_id: &str,
    ) -> Result<(), ProviderError> {
        let response = http
            .post(self.urls.api_url("users"))
            .bearer_auth(tokens.access_token.expose_secret())
            .header(reqwest::header::ACCEPT, "application/json")
            .json(&serde_json::json!({ "member-id": member_id }))
            .send()
            .await
            .map_err(|_| ProviderError::Unreachable)?;
        match response.status() {
            s if s.is_success() || s == StatusCode::CONFLICT => Ok(()),
            s => Err(ProviderError::Refused { status: Some(s.as_u16()), error: None }),
        }
    }

    /// AccessLink revokes by deleting the registered user.
    async fn revoke(&self, http: &reqwest::Client, target: &RevocationTarget<'_>) -> Result<(), ProviderError> {
        let response = http
            .delete(self.urls.api_url(&format!("users/{}", target.remote_user_id)))
            .bearer_auth(target.access_token.expose_secret())
            .send()
            .await
            .map_err(|_| ProviderError::Unreachable)?;
        revocation_result(response.status())
    }
}
