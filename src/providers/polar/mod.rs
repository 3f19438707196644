//! Polar AccessLink (https://www.polar.com/accesslink-api/).

use async_trait::async_trait;
use oauth2::AuthType;
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use url::Url;

use super::webhook::{
    Delivery, InboundEvent, SubscribeContext, Subscription, WebhookError, WebhookKeys, WebhookRequest, Webhooks,
};
use super::{
    revocation_result, token_set, AuthorizeRequest, ClientCredentials, CodeExchange, OAuthFlow, Provider,
    ProviderError, ProviderHttp, ProviderUrls, ResolvedUrls, RevocationTarget, TokenSet,
};

mod data;
pub mod mapping;

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
        OAuthFlow {
            provider: SLUG,
            urls: &self.urls,
            auth_type: AuthType::BasicAuth,
            scope: SCOPE.into(),
            extra_authorize_params: &[],
        }
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
        let answer = self.flow().exchange::<PolarTokenFields>(http, credentials, exchange).await?;
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
        http: &ProviderHttp,
        tokens: &TokenSet,
        ctx: &super::ConnectContext<'_>,
    ) -> Result<(), ProviderError> {
        let request = http
            .post(self.urls.api_url("users"))
            .bearer_auth(tokens.access_token.expose_secret())
            .header(reqwest::header::ACCEPT, "application/json")
            .json(&serde_json::json!({ "member-id": ctx.member_id }));
        let response = http.send(SLUG, "register_user", request).await.map_err(|_| ProviderError::Unreachable)?;
        match response.status() {
            s if s.is_success() || s == StatusCode::CONFLICT => Ok(()),
            s => Err(ProviderError::Refused { status: Some(s.as_u16()), error: None }),
        }
    }

    /// AccessLink revokes by deleting the registered user.
    async fn revoke(&self, http: &ProviderHttp, target: &RevocationTarget<'_>) -> Result<(), ProviderError> {
        let request = http
            .delete(self.urls.api_url(&format!("users/{}", target.remote_user_id)))
            .bearer_auth(target.access_token.expose_secret());
        let response = http.send(SLUG, "revoke", request).await.map_err(|_| ProviderError::Unreachable)?;
        revocation_result(response.status())
    }
}

/// The event types Polar AccessLink documents for webhooks.
pub const WEBHOOK_EVENTS: &[&str] = &[
    "EXERCISE",
    "SLEEP",
    "CONTINUOUS_HEART_RATE",
    "SLEEP_WISE_CIRCADIAN_BEDTIME",
    "SLEEP_WISE_ALERTNESS",
    "ACTIVITY_SUMMARY",
];

/// Checks `Polar-Webhook-Signature`: the hex HMAC-SHA256 of the raw body, in constant time.
pub fn verify_signature(secret: &[u8], body: &[u8], signature_hex: &str) -> bool {
    use hmac::Mac;
    let Ok(signature) = hex::decode(signature_hex.trim()) else {
        return false;
    };
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&signature).is_ok()
}

/// A Polar webhook event: `{event, user_id, entity_id, timestamp, url}`.
#[derive(Debug, Deserialize)]
pub struct PolarEvent {
    pub event: String,
    #[serde(default)]
    pub user_id: Option<serde_json::Value>,
    #[serde(default)]
    pub entity_id: Option<String>,
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
}

impl PolarEvent {
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let event: Self = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let valid = !event.event.is_empty()
            && event.event.len() <= 64
            && event.event.bytes().all(|b| b.is_ascii_uppercase() || b == b'_' || b.is_ascii_digit());
        if !valid {
            return Err("event must be an upper-case event name".into());
        }
        Ok(event)
    }

    pub fn user_id(&self) -> Option<String> {
        match &self.user_id {
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        }
    }

    pub fn dedup_key(&self) -> String {
        crate::crypto::sha256_hex(&format!(
            "{}|{}|{}|{}",
            self.event,
            self.user_id().unwrap_or_default(),
            self.entity_id.as_deref().unwrap_or_default(),
            self.timestamp.as_deref().unwrap_or_default()
        ))
    }
}

/// Polar's webhook (https://www.polar.com/accesslink-api/#webhooks): one per client, PINGed while it
/// is created (before its signing key can be on file), events signed with that key.
#[async_trait]
impl Webhooks for Polar {
    fn receive(&self, request: &WebhookRequest<'_>, keys: &WebhookKeys<'_>) -> Result<Delivery, WebhookError> {
        let event_header = request.header("polar-webhook-event");
        let body_is_ping =
            || serde_json::from_slice::<serde_json::Value>(request.body).is_ok_and(|v| v["event"] == "PING");
        if event_header == Some("PING") || (event_header.is_none() && body_is_ping()) {
            return Ok(Delivery::Acknowledge(200));
        }
        let verified = match (keys.webhook_secret, request.header("polar-webhook-signature")) {
            (Some(secret), Some(signature)) => {
                verify_signature(secret.expose_secret().as_bytes(), request.body, signature)
            }
            _ => false,
        };
        if !verified {
            return Err(WebhookError::InvalidSignature);
        }
        let event = PolarEvent::parse(request.body).map_err(WebhookError::Malformed)?;
        if event.event == "PING" {
            return Ok(Delivery::Acknowledge(200));
        }
        Ok(Delivery::Events(vec![InboundEvent {
            dedup_key: event.dedup_key(),
            remote_user_id: event.user_id(),
            event_type: event.event,
            payload: String::from_utf8_lossy(request.body).into_owned(),
        }]))
    }

    /// `POST /v3/webhooks` with Basic client credentials; Polar PINGs the URL first. Its
    /// `signature_secret_key` becomes the project's webhook secret.
    async fn subscribe(&self, http: &ProviderHttp, ctx: &SubscribeContext<'_>) -> Result<Subscription, ProviderError> {
        let request = http
            .post(self.urls.api_url("webhooks"))
            .basic_auth(&ctx.credentials.client_id, Some(ctx.credentials.client_secret.expose_secret()))
            .header(reqwest::header::ACCEPT, "application/json")
            .json(&serde_json::json!({ "events": WEBHOOK_EVENTS, "url": ctx.callback_url }));
        let body = super::json_answer(http, (SLUG, "create_webhook"), request, "webhook answer").await?;
        let data = body.get("data").unwrap_or(&body);
        let id = super::id_text(data.get("id"));
        let key = data.get("signature_secret_key").and_then(|v| v.as_str()).map(String::from);
        match (id, key) {
            (Some(id), Some(key)) => Ok(Subscription { id, webhook_secret: Some(key), record: None }),
            _ => Err(ProviderError::BadAnswer("webhook answer without id or signature_secret_key")),
        }
    }
}
