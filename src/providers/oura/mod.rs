//! Oura API v2 (https://cloud.ouraring.com/v2/docs): OAuth2 code flow without PKCE, the user named
//! only by `personal_info`, refresh tokens treated as rotating, webhooks per app and per
//! (event type × data type) that expire and are renewed, deliveries signed with the client secret.

use async_trait::async_trait;
use oauth2::AuthType;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};
use url::Url;

use super::webhook::{
    constant_time_eq, hmac_sha256, is_fresh, Delivery, InboundEvent, SubscribeContext, Subscription, WebhookError,
    WebhookKeys, WebhookRequest, Webhooks,
};
use super::{
    revocation_result, token_set, AuthorizeRequest, ClientCredentials, CodeExchange, OAuthFlow, Provider,
    ProviderError, ProviderHttp, ProviderUrls, RefreshedTokens, ResolvedUrls, RevocationTarget, TokenSet,
};

mod data;
pub mod mapping;

pub const SLUG: &str = "oura";

/// Space-separated (shared/spec/providers.md, overview). Only what is synced: `personal` for
/// `personal_info` (the user id), `daily` for sleep and daily activity, `workout`, `spo2` for
/// daily SpO2 (Oura's OpenAPI spells it `spo2Daily`, but open-source clients report that the API
/// enforces `spo2`). `heartrate` and `session` are not requested: nothing reads them.
const SCOPES: [&str; 4] = ["personal", "daily", "workout", "spo2"];

/// The data types whose webhooks we subscribe to, and the event types of each.
pub const WEBHOOK_DATA_TYPES: &[&str] = &["workout", "sleep", "daily_activity", "daily_spo2"];
pub const WEBHOOK_EVENT_TYPES: &[&str] = &["create", "update", "delete"];

pub struct Oura {
    urls: ResolvedUrls,
    /// Where the user id is read (`GET /v2/usercollection/personal_info` unless overridden).
    user_url: Url,
}

impl Oura {
    pub fn new(overrides: Option<&ProviderUrls>) -> Self {
        let urls = ResolvedUrls::new(
            overrides,
            "https://cloud.ouraring.com/oauth/authorize",
            // Apps of Oura's newer portal may be told another token host (spec ✖): configurable.
            "https://api.ouraring.com/oauth/token",
            "https://api.ouraring.com",
            Some("https://api.ouraring.com/oauth/revoke"),
        );
        let user_url = overrides
            .and_then(|o| o.user.clone())
            .unwrap_or_else(|| Url::parse(&urls.api_url("v2/usercollection/personal_info")).expect("valid URL"));
        Self { urls, user_url }
    }

    fn flow(&self) -> OAuthFlow<'_> {
        OAuthFlow {
            provider: SLUG,
            urls: &self.urls,
            // Oura takes client_id and client_secret in the token form (spec ◐, as open-source clients do).
            auth_type: AuthType::RequestBody,
            scope: SCOPES.join(" "),
            extra_authorize_params: &[],
        }
    }

    fn subscription_url(&self, tail: &str) -> String {
        self.urls.api_url(&format!("v2/webhook/subscription{tail}"))
    }

    /// The user id from `personal_info` (`{"id": "…", "age": …, …}`).
    async fn user_id(&self, http: &ProviderHttp, access_token: &SecretString) -> Result<String, ProviderError> {
        let request = http
            .get(self.user_url.clone())
            .bearer_auth(access_token.expose_secret())
            .header(reqwest::header::ACCEPT, "application/json");
        let body = super::json_answer(http, (SLUG, "user_info"), request, "personal_info answer").await?;
        super::id_text(body.get("id"))
            .filter(|id| !id.trim().is_empty() && id.len() <= 128)
            .ok_or(ProviderError::BadAnswer("personal_info without id"))
    }
}

#[async_trait]
impl Provider for Oura {
    fn slug(&self) -> &'static str {
        SLUG
    }

    fn display_name(&self) -> &'static str {
        "Oura"
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

    fn authorization_url(&self, credentials: &ClientCredentials, request: &AuthorizeRequest<'_>) -> Url {
        self.flow().authorization_url(credentials, request)
    }

    /// The token answer names no user: `personal_info` does, with the new access token.
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

    /// Rotation is unverified (spec ✖): the answer's refresh token, when there is one, replaces
    /// the old one; `invalid_grant` is a dead grant (post_token_form maps it).
    async fn refresh(
        &self,
        http: &ProviderHttp,
        credentials: &ClientCredentials,
        refresh_token: &SecretString,
    ) -> Result<RefreshedTokens, ProviderError> {
        super::refresh_with_form_credentials(http, SLUG, &self.urls.token, credentials, refresh_token, &[]).await
    }

    /// `POST /oauth/revoke?access_token=…` (spec ◐; the access token in the query, as Oura's
    /// authentication page and open-source clients have it).
    async fn revoke(&self, http: &ProviderHttp, target: &RevocationTarget<'_>) -> Result<(), ProviderError> {
        let url = self.urls.revoke.clone().expect("Oura has a revoke URL");
        let request = http.post(url).query(&[("access_token", target.access_token.expose_secret())]);
        let response = http.send(SLUG, "revoke", request).await.map_err(|_| ProviderError::Unreachable)?;
        revocation_result(response.status())
    }
}

/// An Oura webhook notification (spec ◐): `{event_type, data_type, object_id, event_time, user_id}`.
#[derive(Debug, Deserialize)]
pub struct OuraEvent {
    pub event_type: String,
    pub data_type: String,
    #[serde(default)]
    pub object_id: Option<String>,
    #[serde(default)]
    pub event_time: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
}

impl OuraEvent {
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let event: Self = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let word = |s: &str| (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        if !word(&event.event_type) || !word(&event.data_type) {
            return Err("event_type and data_type must be short lower-case names".into());
        }
        Ok(event)
    }

    /// `sleep.create`, `workout.delete`, …
    pub fn label(&self) -> String {
        format!("{}.{}", self.data_type, self.event_type)
    }

    fn dedup_key(&self) -> String {
        crate::crypto::sha256_hex(&format!(
            "{}|{}|{}|{}|{}",
            self.event_type,
            self.data_type,
            self.object_id.as_deref().unwrap_or_default(),
            self.event_time.as_deref().unwrap_or_default(),
            self.user_id.as_deref().unwrap_or_default()
        ))
    }
}

/// `x-oura-signature`: UPPERCASE hex HMAC-SHA256(client secret, `x-oura-timestamp` + raw body)
/// (spec ◐; hex is compared case-insensitively, as decoded bytes, in constant time).
pub fn verify_signature(client_secret: &[u8], timestamp: &str, body: &[u8], signature_hex: &str) -> bool {
    let Ok(signature) = hex::decode(signature_hex.trim()) else {
        return false;
    };
    super::webhook::verify_hmac_sha256(client_secret, &[timestamp.as_bytes(), body], &signature)
}

/// What Oura would send as `x-oura-signature` (the stand-in and tests sign with it).
pub fn signature(client_secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    hex::encode_upper(hmac_sha256(client_secret, &[timestamp.as_bytes(), body]))
}

/// `x-oura-timestamp` in epoch milliseconds. It is epoch seconds (the spec's vector has
/// `1705305600`, 2024-01-15T08:00:00Z, the event's own time); a value too large to be seconds is
/// read as milliseconds.
fn timestamp_ms(text: &str) -> Option<i64> {
    let value: i64 = text.trim().parse().ok()?;
    if value <= 0 {
        return None;
    }
    Some(if value >= 100_000_000_000 { value } else { value.checked_mul(1000)? })
}

/// Earliest `expiration_time` among recorded subscriptions, epoch ms.
fn parse_expiry(text: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_millis());
    }
    // A time without an offset is UTC.
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f").ok().map(|t| t.and_utc().timestamp_millis())
}

/// The record kept per project: `{"subscriptions": [{id, event_type, data_type, expiration_time}]}`.
fn record_of(subscriptions: &[Value]) -> Value {
    json!({ "subscriptions": subscriptions })
}

fn recorded(record: &Value) -> Vec<&Value> {
    record.get("subscriptions").and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default()
}

/// One subscription of an answer, as recorded.
fn subscription_entry(answer: &Value) -> Result<Value, ProviderError> {
    let id = super::id_text(answer.get("id")).ok_or(ProviderError::BadAnswer("subscription answer without id"))?;
    let expires = answer
        .get("expiration_time")
        .and_then(Value::as_str)
        .ok_or(ProviderError::BadAnswer("subscription answer without expiration_time"))?;
    if parse_expiry(expires).is_none() {
        return Err(ProviderError::BadAnswer("subscription answer with an unreadable expiration_time"));
    }
    Ok(json!({
        "id": id,
        "event_type": answer.get("event_type").cloned().unwrap_or(Value::Null),
        "data_type": answer.get("data_type").cloned().unwrap_or(Value::Null),
        "expiration_time": expires,
    }))
}

fn summary(entries: &[Value], record: Option<Value>) -> Subscription {
    let ids: Vec<String> = entries.iter().filter_map(|e| e["id"].as_str().map(String::from)).collect();
    Subscription { id: ids.join(","), webhook_secret: None, record }
}

/// Oura's webhooks (https://cloud.ouraring.com/v2/docs#tag/Webhook-Subscription-Routes, spec ◐):
/// the URL checked by a GET with our verification token (the project's webhook secret) while a
/// subscription is made; deliveries signed with the client secret over timestamp + body.
#[async_trait]
impl Webhooks for Oura {
    /// `GET ?verification_token=…&challenge=…` → `{"challenge": "…"}` only for our token.
    fn handshake(&self, request: &WebhookRequest<'_>, keys: &WebhookKeys<'_>) -> Result<Value, WebhookError> {
        let (Some(token), Some(challenge)) = (request.query("verification_token"), request.query("challenge")) else {
            return Err(WebhookError::Rejected("expected verification_token and challenge".into()));
        };
        match keys.webhook_secret {
            Some(secret) if constant_time_eq(secret.expose_secret(), token) => Ok(json!({ "challenge": challenge })),
            _ => Err(WebhookError::Rejected("the verification token does not match".into())),
        }
    }

    fn receive(&self, request: &WebhookRequest<'_>, keys: &WebhookKeys<'_>) -> Result<Delivery, WebhookError> {
        let (Some(client), Some(signature), Some(timestamp)) =
            (keys.client, request.header("x-oura-signature"), request.header("x-oura-timestamp"))
        else {
            return Err(WebhookError::InvalidSignature);
        };
        if !verify_signature(client.client_secret.expose_secret().as_bytes(), timestamp, request.body, signature) {
            return Err(WebhookError::InvalidSignature);
        }
        // Signed but old (or from the future): a replay (shared/spec/providers.md, "mistakes").
        if !timestamp_ms(timestamp).is_some_and(|t| is_fresh(t, keys.now_ms)) {
            return Err(WebhookError::InvalidSignature);
        }
        let event = OuraEvent::parse(request.body).map_err(WebhookError::Malformed)?;
        Ok(Delivery::Events(vec![InboundEvent {
            dedup_key: event.dedup_key(),
            event_type: event.label(),
            remote_user_id: event.user_id.clone().filter(|u| !u.is_empty()),
            payload: String::from_utf8_lossy(request.body).into_owned(),
        }]))
    }

    /// `POST /v2/webhook/subscription` with `x-client-id` / `x-client-secret`, once per
    /// (event type × data type); Oura GETs our URL with the verification token before it answers.
    /// Subscriptions Oura already has for this callback URL are kept, not made again (Oura
    /// answers 409 to a duplicate), so a subscribe that failed half-way can simply be repeated.
    async fn subscribe(&self, http: &ProviderHttp, ctx: &SubscribeContext<'_>) -> Result<Subscription, ProviderError> {
        let list = http
            .get(self.subscription_url(""))
            .header("x-client-id", &ctx.credentials.client_id)
            .header("x-client-secret", ctx.credentials.client_secret.expose_secret())
            .header(reqwest::header::ACCEPT, "application/json");
        let existing = super::json_answer(http, (SLUG, "list_subscriptions"), list, "subscription list").await?;
        let existing = existing.as_array().cloned().unwrap_or_default();
        let mut entries = Vec::new();
        for data_type in WEBHOOK_DATA_TYPES {
            for event_type in WEBHOOK_EVENT_TYPES {
                let same = existing.iter().find(|s| {
                    s["callback_url"] == ctx.callback_url
                        && s["event_type"] == *event_type
                        && s["data_type"] == *data_type
                });
                if let Some(same) = same {
                    entries.push(subscription_entry(same)?);
                    continue;
                }
                let request = http
                    .post(self.subscription_url(""))
                    .header("x-client-id", &ctx.credentials.client_id)
                    .header("x-client-secret", ctx.credentials.client_secret.expose_secret())
                    .header(reqwest::header::ACCEPT, "application/json")
                    .json(&json!({
                        "callback_url": ctx.callback_url,
                        "verification_token": ctx.webhook_secret.expose_secret(),
                        "event_type": event_type,
                        "data_type": data_type,
                    }));
                let answer =
                    super::json_answer(http, (SLUG, "create_subscription"), request, "subscription answer").await?;
                entries.push(subscription_entry(&answer)?);
            }
        }
        let record = record_of(&entries);
        Ok(summary(&entries, Some(record)))
    }

    fn renew_at(&self, record: &Value) -> Option<i64> {
        recorded(record).iter().filter_map(|e| e["expiration_time"].as_str().and_then(parse_expiry)).min()
    }

    /// `PUT /v2/webhook/subscription/renew/{id}` for each recorded subscription; each answer's
    /// `expiration_time` is kept.
    async fn renew(
        &self,
        http: &ProviderHttp,
        ctx: &SubscribeContext<'_>,
        record: &Value,
    ) -> Result<Subscription, ProviderError> {
        let mut entries = Vec::new();
        for entry in recorded(record) {
            let Some(id) = entry["id"]
                .as_str()
                .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
            else {
                continue;
            };
            let request = http
                .put(self.subscription_url(&format!("/renew/{id}")))
                .header("x-client-id", &ctx.credentials.client_id)
                .header("x-client-secret", ctx.credentials.client_secret.expose_secret())
                .header(reqwest::header::ACCEPT, "application/json");
            let answer = super::json_answer(http, (SLUG, "renew_subscription"), request, "subscription answer").await?;
            let mut renewed = subscription_entry(&answer)?;
            // Keep what we knew when the answer leaves it out.
            for key in ["event_type", "data_type"] {
                if renewed[key].is_null() {
                    renewed[key] = entry[key].clone();
                }
            }
            entries.push(renewed);
        }
        if entries.is_empty() {
            return Err(ProviderError::BadAnswer("no recorded Oura subscription to renew"));
        }
        let record = record_of(&entries);
        Ok(summary(&entries, Some(record)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR_BODY: &str = r#"{"event_type":"create","data_type":"sleep","object_id":"abc-123","event_time":"2024-01-15T08:00:00+00:00","user_id":"oura-user-123"}"#;
    const VECTOR_SIGNATURE: &str = "2BA72757B4BF9D03800B99B75DC6FB65BEB74CF61FF221B27A2AEA75B8AA71F0";

    fn keys(client: &ClientCredentials, now_ms: i64) -> WebhookKeys<'_> {
        WebhookKeys { webhook_secret: None, client: Some(client), subscription: None, now_ms }
    }

    fn client() -> ClientCredentials {
        ClientCredentials { client_id: "cid".into(), client_secret: SecretString::from("test_client_secret") }
    }

    #[test]
    fn the_spec_signature_vector_verifies() {
        assert_eq!(signature(b"test_client_secret", "1705305600", VECTOR_BODY.as_bytes()), VECTOR_SIGNATURE);
        assert!(verify_signature(b"test_client_secret", "1705305600", VECTOR_BODY.as_bytes(), VECTOR_SIGNATURE));
        let lower = VECTOR_SIGNATURE.to_ascii_lowercase();
        assert!(verify_signature(b"test_client_secret", "1705305600", VECTOR_BODY.as_bytes(), &lower));
        assert!(!verify_signature(b"test_client_secret", "1705305601", VECTOR_BODY.as_bytes(), VECTOR_SIGNATURE));
        assert!(!verify_signature(b"other", "1705305600", VECTOR_BODY.as_bytes(), VECTOR_SIGNATURE));
        assert!(!verify_signature(b"test_client_secret", "1705305600", b"{}", VECTOR_SIGNATURE));
        assert!(!verify_signature(b"test_client_secret", "1705305600", VECTOR_BODY.as_bytes(), "zz"));
    }

    fn request<'a>(headers: &'a [(String, String)]) -> WebhookRequest<'a> {
        WebhookRequest { headers, query: &[], body: VECTOR_BODY.as_bytes() }
    }

    fn headers(timestamp: &str, signature: &str) -> Vec<(String, String)> {
        vec![("x-oura-timestamp".into(), timestamp.into()), ("x-oura-signature".into(), signature.into())]
    }

    #[test]
    fn the_vector_is_received_at_its_time_and_refused_as_a_replay_later() {
        let client = client();
        let signed = headers("1705305600", VECTOR_SIGNATURE);
        let at_the_time = 1_705_305_600_000 + 30_000;
        let Ok(Delivery::Events(events)) = Oura::new(None).receive(&request(&signed), &keys(&client, at_the_time))
        else {
            panic!("the vector is a valid delivery")
        };
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event_type, "sleep.create");
        assert_eq!(events[0].remote_user_id.as_deref(), Some("oura-user-123"));
        // An hour later the same signed delivery is a replay.
        let later = 1_705_305_600_000 + 3_600_000;
        let replay = Oura::new(None).receive(&request(&signed), &keys(&client, later));
        assert!(matches!(replay, Err(WebhookError::InvalidSignature)));
        // No signature, no client secret on file, a forged one: refused.
        let oura = Oura::new(None);
        assert!(matches!(
            oura.receive(&request(&[]), &keys(&client, at_the_time)),
            Err(WebhookError::InvalidSignature)
        ));
        let none = WebhookKeys { webhook_secret: None, client: None, subscription: None, now_ms: at_the_time };
        assert!(matches!(oura.receive(&request(&signed), &none), Err(WebhookError::InvalidSignature)));
        let forged = headers("1705305600", &"0".repeat(64));
        assert!(matches!(
            oura.receive(&request(&forged), &keys(&client, at_the_time)),
            Err(WebhookError::InvalidSignature)
        ));
    }

    #[test]
    fn timestamps_are_seconds() {
        assert_eq!(timestamp_ms("1705305600"), Some(1_705_305_600_000));
        assert_eq!(timestamp_ms("1705305600123"), Some(1_705_305_600_123));
        assert_eq!(timestamp_ms("-1"), None);
        assert_eq!(timestamp_ms("2024-01-15T08:00:00Z"), None);
    }

    #[test]
    fn the_handshake_echoes_the_challenge_only_for_our_token() {
        let secret = SecretString::from("verify-7c1e");
        let keys = WebhookKeys { webhook_secret: Some(&secret), client: None, subscription: None, now_ms: 0 };
        let query = |token: &str| {
            vec![("verification_token".to_string(), token.to_string()), ("challenge".to_string(), "ch-1".to_string())]
        };
        let good = query("verify-7c1e");
        let oura = Oura::new(None);
        let answer = oura.handshake(&WebhookRequest { headers: &[], query: &good, body: b"" }, &keys).unwrap();
        assert_eq!(answer, json!({"challenge": "ch-1"}));
        for wrong in ["verify-7c1f", "", "verify-7c1e-more"] {
            let q = query(wrong);
            let answer = oura.handshake(&WebhookRequest { headers: &[], query: &q, body: b"" }, &keys);
            assert!(matches!(answer, Err(WebhookError::Rejected(_))), "{wrong:?}");
        }
    }

    #[test]
    fn renewal_is_due_at_the_earliest_expiry() {
        let r = record_of(&[
            json!({"id": "a", "expiration_time": "2026-12-10T10:00:00.000000+00:00"}),
            json!({"id": "b", "expiration_time": "2026-12-09T10:00:00"}),
        ]);
        let oura = Oura::new(None);
        assert_eq!(oura.renew_at(&r), parse_expiry("2026-12-09T10:00:00Z"));
        assert_eq!(oura.renew_at(&json!("legacy")), None);
    }

    #[test]
    fn the_user_url_defaults_under_the_api_and_can_be_overridden() {
        assert_eq!(Oura::new(None).user_url.as_str(), "https://api.ouraring.com/v2/usercollection/personal_info");
        let o = ProviderUrls { user: Some(Url::parse("http://127.0.0.1:9/me").unwrap()), ..Default::default() };
        assert_eq!(Oura::new(Some(&o)).user_url.as_str(), "http://127.0.0.1:9/me");
    }
}
