//! Strava (https://developers.strava.com/docs/authentication/).

use async_trait::async_trait;
use oauth2::AuthType;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use url::Url;

use secrecy::{ExposeSecret, SecretString};

use super::webhook::{
    constant_time_eq, Delivery, InboundEvent, SubscribeContext, Subscription, WebhookError, WebhookKeys,
    WebhookRequest, Webhooks,
};
use super::{
    revocation_result, token_set, AuthorizeRequest, ClientCredentials, CodeExchange, OAuthFlow, Provider,
    ProviderError, ProviderHttp, ProviderUrls, RefreshedTokens, ResolvedUrls, RevocationTarget, TokenSet,
};

mod data;
pub mod mapping;

pub const SLUG: &str = "strava";
const SCOPE: &str = "read,activity:read_all";

pub struct Strava {
    urls: ResolvedUrls,
    /// The "15-minute" rate-limit window (shorter only to compress time in tests).
    short_window: std::time::Duration,
}

impl Strava {
    pub fn new(overrides: Option<&ProviderUrls>) -> Self {
        Self {
            urls: ResolvedUrls::new(
                overrides,
                "https://www.strava.com/oauth/authorize",
                "https://www.strava.com/oauth/token",
                "https://www.strava.com/api/v3",
                // Strava has announced POST /oauth/revoke as the successor: change it here.
                Some("https://www.strava.com/oauth/deauthorize"),
            ),
            short_window: overrides
                .and_then(|o| o.short_rate_window)
                .unwrap_or(std::time::Duration::from_secs(15 * 60)),
        }
    }

    fn short_window_ms(&self) -> i64 {
        (self.short_window.as_millis() as i64).max(1)
    }

    fn flow(&self) -> OAuthFlow<'_> {
        OAuthFlow {
            provider: SLUG,
            urls: &self.urls,
            // Strava wants client_id and client_secret in the form, not HTTP Basic.
            auth_type: AuthType::RequestBody,
            scope: SCOPE.into(),
            extra_authorize_params: &[("approval_prompt", "auto")],
        }
    }
}

/// Strava's additions to the token answer.
#[derive(Clone, Debug, Deserialize, Serialize)]
struct StravaTokenFields {
    /// Epoch seconds.
    expires_at: Option<i64>,
    athlete: Option<StravaAthlete>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
struct StravaAthlete {
    id: serde_json::Value,
}

impl oauth2::ExtraTokenFields for StravaTokenFields {}

#[async_trait]
impl Provider for Strava {
    fn slug(&self) -> &'static str {
        SLUG
    }

    fn display_name(&self) -> &'static str {
        "Strava"
    }

    fn urls(&self) -> &ResolvedUrls {
        &self.urls
    }

    fn scopes(&self) -> Vec<String> {
        SCOPE.split(',').map(String::from).collect()
    }

    fn identifier_system(&self) -> String {
        format!("{}/sid/strava-athlete-id", crate::fhir::BASE)
    }

    fn data(&self) -> Option<&dyn super::DataSource> {
        Some(self)
    }

    fn webhooks(&self) -> Option<&dyn Webhooks> {
        Some(self)
    }

    fn authorization_url(&self, credentials: &ClientCredentials, request: &AuthorizeRequest<'_>) -> Url {
        self.flow().authorization_url(credentials, request)
    }

    async fn exchange_code(
        &self,
        http: &ProviderHttp,
        credentials: &ClientCredentials,
        exchange: &CodeExchange<'_>,
    ) -> Result<TokenSet, ProviderError> {
        let answer = self.flow().exchange::<StravaTokenFields>(http, credentials, exchange).await?;
        let extra = answer.extra_fields();
        let athlete_id = match extra.athlete.as_ref().map(|a| &a.id) {
            Some(serde_json::Value::Number(n)) => n.to_string(),
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(ProviderError::BadAnswer("token answer without athlete.id")),
        };
        Ok(token_set(&answer, athlete_id, extra.expires_at.map(|s| s * 1000)))
    }

    fn supports_refresh(&self) -> bool {
        true
    }

    /// Each refresh may hand back a new refresh token; the old one stops working once used.
    async fn refresh(
        &self,
        http: &ProviderHttp,
        credentials: &ClientCredentials,
        refresh_token: &SecretString,
    ) -> Result<RefreshedTokens, ProviderError> {
        super::refresh_with_form_credentials(http, SLUG, &self.urls.token, credentials, refresh_token, &[]).await
    }

    async fn revoke(&self, http: &ProviderHttp, target: &RevocationTarget<'_>) -> Result<(), ProviderError> {
        let url = self.urls.revoke.clone().expect("Strava has a revoke URL");
        let request = http.post(url).form(&[("access_token", target.access_token.expose_secret())]);
        let response = http.send(SLUG, "revoke", request).await.map_err(|_| ProviderError::Unreachable)?;
        revocation_result(response.status())
    }
}

/// A Strava push event (https://developers.strava.com/docs/webhooks/). Strava does not sign them:
/// the receiver checks `subscription_id` and `owner_id` instead.
#[derive(Debug, Deserialize)]
pub struct StravaEvent {
    pub object_type: String,
    pub object_id: u64,
    pub aspect_type: String,
    #[serde(default)]
    pub updates: serde_json::Map<String, serde_json::Value>,
    pub owner_id: u64,
    pub subscription_id: u64,
    pub event_time: i64,
}

impl StravaEvent {
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let event: Self = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        if event.object_type.is_empty() || event.object_type.len() > 32 || event.aspect_type.len() > 32 {
            return Err("object_type and aspect_type must be short strings".into());
        }
        Ok(event)
    }

    /// `activity.create`, `athlete.update`, …
    pub fn event_type(&self) -> String {
        format!("{}.{}", self.object_type, self.aspect_type)
    }

    /// The same event delivered again has the same key.
    pub fn dedup_key(&self) -> String {
        crate::crypto::sha256_hex(&format!(
            "{}|{}|{}|{}|{}|{}",
            self.object_type,
            self.object_id,
            self.aspect_type,
            self.owner_id,
            self.event_time,
            serde_json::Value::Object(self.updates.clone())
        ))
    }

    /// The athlete revoked our access at Strava.
    pub fn deauthorizes(&self) -> bool {
        self.object_type == "athlete"
            && self.updates.get("authorized").is_some_and(|v| v == "false" || v == &serde_json::Value::Bool(false))
    }
}

/// Strava's push subscriptions (https://developers.strava.com/docs/webhooks/): one per app, validated
/// by a GET that must echo `hub.challenge` for our verify token; events are not signed, so only
/// events of the subscription recorded for the project are taken.
#[async_trait]
impl Webhooks for Strava {
    fn handshake(&self, request: &WebhookRequest<'_>, keys: &WebhookKeys<'_>) -> Result<Value, WebhookError> {
        let (Some("subscribe"), Some(challenge), Some(token)) =
            (request.query("hub.mode"), request.query("hub.challenge"), request.query("hub.verify_token"))
        else {
            return Err(WebhookError::Rejected(
                "expected hub.mode=subscribe, hub.challenge and hub.verify_token".into(),
            ));
        };
        match keys.webhook_secret {
            Some(secret) if constant_time_eq(secret.expose_secret(), token) => {
                Ok(json!({ "hub.challenge": challenge }))
            }
            _ => Err(WebhookError::Rejected("the verify token does not match".into())),
        }
    }

    fn receive(&self, request: &WebhookRequest<'_>, keys: &WebhookKeys<'_>) -> Result<Delivery, WebhookError> {
        let event = StravaEvent::parse(request.body).map_err(WebhookError::Malformed)?;
        let recorded = keys.subscription.and_then(|v| super::id_text(Some(v)));
        if recorded.as_deref() != Some(event.subscription_id.to_string().as_str()) {
            return Err(WebhookError::Rejected("unknown subscription_id".into()));
        }
        Ok(Delivery::Events(vec![InboundEvent {
            dedup_key: event.dedup_key(),
            event_type: event.event_type(),
            remote_user_id: Some(event.owner_id.to_string()),
            payload: String::from_utf8_lossy(request.body).into_owned(),
        }]))
    }

    /// `POST /push_subscriptions`; Strava validates `callback_url` with a GET before it answers,
    /// echoing the verify token (the project's webhook secret).
    async fn subscribe(&self, http: &ProviderHttp, ctx: &SubscribeContext<'_>) -> Result<Subscription, ProviderError> {
        let verify_token = ctx.webhook_secret.expose_secret();
        let request = http.post(self.urls.api_url("push_subscriptions")).form(&[
            ("client_id", ctx.credentials.client_id.as_str()),
            ("client_secret", ctx.credentials.client_secret.expose_secret()),
            ("callback_url", ctx.callback_url),
            ("verify_token", verify_token),
        ]);
        let body = super::json_answer(http, (SLUG, "create_subscription"), request, "subscription answer").await?;
        let id = super::id_text(body.get("id")).ok_or(ProviderError::BadAnswer("subscription answer without id"))?;
        Ok(Subscription { record: Some(Value::String(id.clone())), id, webhook_secret: None })
    }
}
