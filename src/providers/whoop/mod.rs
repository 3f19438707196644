//! WHOOP API v2 (https://developer.whoop.com/api): OAuth2 with the client in the form body, the
//! user id read from the profile after the exchange, rotating refresh tokens, revocation through
//! the API, webhooks signed with the client secret.

use async_trait::async_trait;
use base64::Engine;
use oauth2::AuthType;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use super::webhook::{
    is_fresh, verify_hmac_sha256, Delivery, InboundEvent, WebhookError, WebhookKeys, WebhookRequest, Webhooks,
};
use super::{
    json_answer, revocation_result, token_set, AuthorizeRequest, ClientCredentials, CodeExchange, OAuthFlow, Provider,
    ProviderError, ProviderHttp, ProviderUrls, RefreshedTokens, ResolvedUrls, RevocationTarget, TokenSet,
};

mod data;
pub mod mapping;

pub const SLUG: &str = "whoop";
/// Space-separated (https://developer.whoop.com/docs/developing/oauth). `offline` is what makes
/// WHOOP issue a refresh token; `read:profile` is what lets us read the user id (the token answer
/// carries none) — shared/spec/providers.md, "Mistakes other implementations made".
pub const SCOPES: &[&str] = &["offline", "read:profile", "read:workout", "read:sleep", "read:recovery", "read:cycles"];

pub struct Whoop {
    urls: ResolvedUrls,
    /// Where the user id is read (`GET /v2/user/profile/basic`); `ProviderUrls.user` overrides it.
    profile: Url,
}

impl Whoop {
    pub fn new(overrides: Option<&ProviderUrls>) -> Self {
        let urls = ResolvedUrls::new(
            overrides,
            "https://api.prod.whoop.com/oauth/oauth2/auth",
            "https://api.prod.whoop.com/oauth/oauth2/token",
            "https://api.prod.whoop.com/developer",
            None,
        );
        let profile = overrides
            .and_then(|o| o.user.clone())
            .unwrap_or_else(|| Url::parse(&urls.api_url("v2/user/profile/basic")).expect("profile URL"));
        Self { urls, profile }
    }

    fn flow(&self) -> OAuthFlow<'_> {
        OAuthFlow {
            provider: SLUG,
            urls: &self.urls,
            // WHOOP takes client_id / client_secret in the form body.
            auth_type: AuthType::RequestBody,
            scope: SCOPES.join(" "),
            extra_authorize_params: &[],
        }
    }

    /// `GET /v2/user/profile/basic` → `user_id` (a number).
    async fn user_id(&self, http: &ProviderHttp, access_token: &SecretString) -> Result<String, ProviderError> {
        let request = http
            .get(self.profile.clone())
            .bearer_auth(access_token.expose_secret())
            .header(reqwest::header::ACCEPT, "application/json");
        let profile = json_answer(http, (SLUG, "profile"), request, "profile answer").await?;
        match profile.get("user_id") {
            Some(serde_json::Value::Number(n)) if n.as_u64().is_some() => Ok(n.to_string()),
            _ => Err(ProviderError::BadAnswer("profile answer without user_id")),
        }
    }
}

#[async_trait]
impl Provider for Whoop {
    fn slug(&self) -> &'static str {
        SLUG
    }

    fn display_name(&self) -> &'static str {
        "WHOOP"
    }

    fn urls(&self) -> &ResolvedUrls {
        &self.urls
    }

    fn scopes(&self) -> Vec<String> {
        SCOPES.iter().map(|s| s.to_string()).collect()
    }

    fn data(&self) -> Option<&dyn super::DataSource> {
        Some(self)
    }

    fn webhooks(&self) -> Option<&dyn Webhooks> {
        Some(self)
    }

    /// WHOOP wants a `state` of at least 8 characters; ours is far longer.
    fn authorization_url(&self, credentials: &ClientCredentials, request: &AuthorizeRequest<'_>) -> Url {
        self.flow().authorization_url(credentials, request)
    }

    async fn exchange_code(
        &self,
        http: &ProviderHttp,
        credentials: &ClientCredentials,
        exchange: &CodeExchange<'_>,
    ) -> Result<TokenSet, ProviderError> {
        let answer = self.flow().exchange::<oauth2::EmptyExtraTokenFields>(http, credentials, exchange).await?;
        let access = SecretString::from(oauth2::TokenResponse::access_token(&answer).secret().to_string());
        let user = self.user_id(http, &access).await?;
        Ok(token_set(&answer, user, None))
    }

    fn supports_refresh(&self) -> bool {
        true
    }

    /// `scope=offline` in the refresh form: without it WHOOP answers no new refresh token, and the
    /// old one is spent (WHOOP rotates) — https://developer.whoop.com/docs/developing/oauth.
    async fn refresh(
        &self,
        http: &ProviderHttp,
        credentials: &ClientCredentials,
        refresh_token: &SecretString,
    ) -> Result<RefreshedTokens, ProviderError> {
        super::refresh_with_form_credentials(
            http,
            SLUG,
            &self.urls.token,
            credentials,
            refresh_token,
            &[("scope", "offline")],
        )
        .await
    }

    /// `DELETE /v2/user/access` with the user's bearer → 204; access already gone counts as done.
    async fn revoke(&self, http: &ProviderHttp, target: &RevocationTarget<'_>) -> Result<(), ProviderError> {
        let request = http.delete(self.urls.api_url("v2/user/access")).bearer_auth(target.access_token.expose_secret());
        let response = http.send(SLUG, "revoke", request).await.map_err(|_| ProviderError::Unreachable)?;
        revocation_result(response.status())
    }
}

/// The event types WHOOP sends (https://developer.whoop.com/docs/developing/webhooks).
pub const WEBHOOK_EVENTS: &[&str] =
    &["workout.updated", "workout.deleted", "sleep.updated", "sleep.deleted", "recovery.updated", "recovery.deleted"];

/// Checks `X-WHOOP-Signature`: base64 of HMAC-SHA256(client secret, timestamp + raw body), in
/// constant time (https://developer.whoop.com/docs/developing/webhooks, "Webhook signature").
pub fn verify_signature(client_secret: &[u8], timestamp: &str, body: &[u8], signature_b64: &str) -> bool {
    let Ok(signature) = base64::engine::general_purpose::STANDARD.decode(signature_b64.trim()) else {
        return false;
    };
    verify_hmac_sha256(client_secret, &[timestamp.as_bytes(), body], &signature)
}

/// A WHOOP webhook: `{user_id, id, type, trace_id}`. v2 webhooks carry UUIDs as `id`; v1 (legacy)
/// integers.
#[derive(Debug, Deserialize)]
pub struct WhoopEvent {
    pub user_id: serde_json::Value,
    pub id: serde_json::Value,
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(default)]
    pub trace_id: Option<String>,
}

impl WhoopEvent {
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let event: Self = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        if !WEBHOOK_EVENTS.contains(&event.event_type.as_str()) {
            return Err("type must be one of WHOOP's webhook event types".into());
        }
        if event.user().is_none() || event.object_id().is_none() {
            return Err("user_id and id are required".into());
        }
        Ok(event)
    }

    pub fn user(&self) -> Option<String> {
        match &self.user_id {
            serde_json::Value::Number(n) if n.as_u64().is_some() => Some(n.to_string()),
            _ => None,
        }
    }

    /// The object's id: a UUID (v2) or a number (v1), as text.
    pub fn object_id(&self) -> Option<String> {
        let text = super::id_text(Some(&self.id))?;
        let plain = (1..=64).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
        plain.then_some(text)
    }

    /// WHOOP retries a delivery with the same `trace_id`: (type, id, trace_id) names it. An event
    /// without one is keyed on its signed timestamp too (`at`): two updates of one object have
    /// the same body, and storing a retry twice costs an idempotent re-fetch, losing an update
    /// costs data.
    pub fn dedup_key(&self, at: &str) -> String {
        let trace = match self.trace_id.as_deref() {
            Some(trace) => trace.to_string(),
            None => format!("at:{}", at.trim()),
        };
        crate::crypto::sha256_hex(&format!(
            "{}|{}|{}|{}",
            self.event_type,
            self.user().unwrap_or_default(),
            self.object_id().unwrap_or_default(),
            trace
        ))
    }
}

/// WHOOP's webhook URL is set per app in WHOOP's developer dashboard: no handshake, no
/// subscription API (`subscribe` keeps the default answer: managed in the provider's portal).
#[async_trait]
impl Webhooks for Whoop {
    fn receive(&self, request: &WebhookRequest<'_>, keys: &WebhookKeys<'_>) -> Result<Delivery, WebhookError> {
        let (Some(client), Some(signature), Some(timestamp)) =
            (keys.client, request.header("x-whoop-signature"), request.header("x-whoop-signature-timestamp"))
        else {
            return Err(WebhookError::InvalidSignature);
        };
        let secret = client.client_secret.expose_secret().as_bytes();
        if !verify_signature(secret, timestamp, request.body, signature) {
            return Err(WebhookError::InvalidSignature);
        }
        // Signed epoch milliseconds: an old (or far future) one is a replay.
        match timestamp.trim().parse::<i64>() {
            Ok(at) if is_fresh(at, keys.now_ms) => {}
            _ => return Err(WebhookError::InvalidSignature),
        }
        let event = WhoopEvent::parse(request.body).map_err(WebhookError::Malformed)?;
        Ok(Delivery::Events(vec![InboundEvent {
            dedup_key: event.dedup_key(timestamp),
            remote_user_id: event.user(),
            event_type: event.event_type.clone(),
            payload: String::from_utf8_lossy(request.body).into_owned(),
        }]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "test_client_secret";
    const TIMESTAMP: &str = "1748241241000";
    const BODY: &str = r#"{"user_id":10129,"id":"ecfc6a15-4661-442f-a9a4-f160dd7afae8","type":"sleep.updated","trace_id":"e369c784-5100-49e8-8098-75d35c47b31b"}"#;
    const SIGNATURE: &str = "HqrOdNk7edrilyDPPstLzI9L97ttliL3HIj5bWyVyP0=";

    fn credentials() -> ClientCredentials {
        ClientCredentials { client_id: "c".into(), client_secret: SecretString::from(SECRET.to_string()) }
    }

    fn receive(headers: &[(&str, &str)], body: &str, now_ms: i64) -> Result<Delivery, WebhookError> {
        let headers: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let client = credentials();
        let keys = WebhookKeys { webhook_secret: None, client: Some(&client), subscription: None, now_ms };
        Whoop::new(None).receive(&WebhookRequest { headers: &headers, query: &[], body: body.as_bytes() }, &keys)
    }

    #[test]
    fn the_spec_vector_verifies() {
        assert!(verify_signature(SECRET.as_bytes(), TIMESTAMP, BODY.as_bytes(), SIGNATURE));
        assert!(!verify_signature(b"other", TIMESTAMP, BODY.as_bytes(), SIGNATURE));
        assert!(!verify_signature(SECRET.as_bytes(), "1748241241001", BODY.as_bytes(), SIGNATURE));
        assert!(!verify_signature(SECRET.as_bytes(), TIMESTAMP, b"{}", SIGNATURE));
        assert!(!verify_signature(SECRET.as_bytes(), TIMESTAMP, BODY.as_bytes(), "not base64!"));
    }

    #[test]
    fn a_fresh_signed_delivery_is_one_event_and_a_stale_one_is_refused() {
        let headers = [("x-whoop-signature", SIGNATURE), ("x-whoop-signature-timestamp", TIMESTAMP)];
        let now = 1_748_241_241_000 + 60_000;
        let Ok(Delivery::Events(events)) = receive(&headers, BODY, now) else { panic!("not accepted") };
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event_type, "sleep.updated");
        assert_eq!(events[0].remote_user_id.as_deref(), Some("10129"));
        let stale = receive(&headers, BODY, now + 3_600_000);
        assert!(matches!(stale, Err(WebhookError::InvalidSignature)));
        let unsigned = receive(&headers[..1], BODY, now);
        assert!(matches!(unsigned, Err(WebhookError::InvalidSignature)));
        let forged = [("x-whoop-signature", "AAAA"), ("x-whoop-signature-timestamp", TIMESTAMP)];
        assert!(matches!(receive(&forged, BODY, now), Err(WebhookError::InvalidSignature)));
    }

    #[test]
    fn events_are_checked_and_keyed_on_type_id_and_trace() {
        let a = WhoopEvent::parse(BODY.as_bytes()).unwrap();
        let again = WhoopEvent::parse(BODY.replace("{\"user_id\"", "{ \"user_id\"").as_bytes()).unwrap();
        assert_eq!(a.dedup_key("1"), again.dedup_key("2"), "a retry: the same trace_id");
        let other = WhoopEvent::parse(BODY.replace("e369c784", "f369c784").as_bytes()).unwrap();
        assert_ne!(a.dedup_key("1"), other.dedup_key("1"));
        // Without a trace_id, two updates of one object differ by their signed timestamps.
        let untraced = br#"{"user_id":10129,"id":"ecfc6a15-4661-442f-a9a4-f160dd7afae8","type":"sleep.updated"}"#;
        let untraced = WhoopEvent::parse(untraced).unwrap();
        assert_ne!(untraced.dedup_key("1748241241000"), untraced.dedup_key("1748241299000"));
        assert_eq!(untraced.dedup_key("1748241241000"), untraced.dedup_key("1748241241000"));
        assert!(WhoopEvent::parse(BODY.replace("sleep.updated", "cycle.updated").as_bytes()).is_err());
        assert!(WhoopEvent::parse(br#"{"user_id":"x","id":"a","type":"sleep.updated"}"#).is_err());
        assert!(WhoopEvent::parse(br#"{"user_id":1,"id":"../x","type":"sleep.updated"}"#).is_err());
        assert!(WhoopEvent::parse(b"not json").is_err());
    }

    #[test]
    fn the_authorize_url_asks_for_offline_and_profile_with_spaces() {
        let whoop = Whoop::new(None);
        let redirect = Url::parse("https://wearlink.example/v1/wearables/whoop/callback").unwrap();
        let request = AuthorizeRequest {
            redirect_uri: &redirect,
            state: "state-of-many-characters",
            code_challenge: None,
            region: None,
        };
        let url = whoop.authorization_url(&credentials(), &request);
        assert!(url.as_str().starts_with("https://api.prod.whoop.com/oauth/oauth2/auth?"));
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(q["scope"], "offline read:profile read:workout read:sleep read:recovery read:cycles");
        assert_eq!(q["response_type"], "code");
        assert!(!q.contains_key("code_challenge"));
        assert_eq!(whoop.profile.as_str(), "https://api.prod.whoop.com/developer/v2/user/profile/basic");
    }
}
