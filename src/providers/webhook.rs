//! The provider-facing side of inbound webhooks: what a provider must say about its webhooks so the
//! provider-neutral receiver (`crate::webhooks`) can answer handshakes, verify and store events and
//! manage subscriptions without knowing which provider it talks to.
//!
//! Shaped to fit every provider Wearlink speaks: GET handshakes (Strava `hub.challenge`, Oura
//! `challenge`), HEAD handshakes (Withings), verification POSTs answered 201 (Google), HMAC
//! signatures over the body (Polar) or a timestamp + body (Oura, WHOOP), shared headers compared
//! (Garmin's client id), pushes that carry many events in one body (Garmin), and subscriptions that
//! expire and must be renewed (Oura).

use async_trait::async_trait;
use secrecy::SecretString;
use serde_json::Value;
use subtle::ConstantTimeEq;

use super::{ClientCredentials, ProviderError, ProviderHttp};

/// An inbound webhook request as the provider sent it, without HTTP types (the HTTP layer fills it).
pub struct WebhookRequest<'a> {
    /// Header names in lower case.
    pub headers: &'a [(String, String)],
    pub query: &'a [(String, String)],
    pub body: &'a [u8],
}

impl WebhookRequest<'_> {
    /// The first value of a header (`name` in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn query(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// What the project keeps that a provider's webhook checks may need.
pub struct WebhookKeys<'a> {
    /// `WEARABLE_<SLUG>_WEBHOOK_SECRET`, when set.
    pub webhook_secret: Option<&'a SecretString>,
    /// The project's OAuth app (Oura and WHOOP sign with the client secret), when configured.
    pub client: Option<&'a ClientCredentials>,
    /// What `subscribe` recorded for the project (Strava: the subscription id).
    pub subscription: Option<&'a Value>,
    /// Epoch milliseconds: signed timestamps are judged against it.
    pub now_ms: i64,
}

/// A verified delivery.
#[derive(Debug)]
pub enum Delivery {
    /// Acknowledged with this status, nothing stored (Polar's PING 200, Google's verification 201).
    Acknowledge(u16),
    /// Events for the inbox (a push may carry several).
    Events(Vec<InboundEvent>),
}

/// One event for the inbox; deduplicated on `dedup_key` within the project and provider.
#[derive(Debug)]
pub struct InboundEvent {
    pub dedup_key: String,
    /// `activity.create`, `EXERCISE`, `sleep.updated`, … (a metrics label, bounded by the receiver).
    pub event_type: String,
    /// The provider's user id, when the event names one: the connection it belongs to.
    pub remote_user_id: Option<String>,
    /// What the inbox stores and `DataSource::event_action` later reads (JSON).
    pub payload: String,
}

impl InboundEvent {
    /// An event whose stored payload is `payload` itself, keyed on its hash with `parts`.
    pub fn new(event_type: String, remote_user_id: Option<String>, payload: String, parts: &[&str]) -> Self {
        let key_material = [parts.join("|"), payload.clone()].join("|");
        Self { dedup_key: crate::crypto::sha256_hex(&key_material), event_type, remote_user_id, payload }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The body is not what the provider sends (400).
    #[error("{0}")]
    Malformed(String),
    /// The signature (or shared secret) is missing, wrong, or its timestamp is stale (401).
    #[error("the signature does not match")]
    InvalidSignature,
    /// Well-formed and authentic enough to answer, but not for us (403).
    #[error("{0}")]
    Rejected(String),
    /// This provider has no such webhook interaction (404).
    #[error("this provider has no such webhook interaction")]
    NotSupported,
}

/// What a subscription created (or renewed) at the provider leaves for the project to keep.
#[derive(Debug)]
pub struct Subscription {
    /// The provider's id of the subscription (several joined by commas).
    pub id: String,
    /// A secret to keep as `WEARABLE_<SLUG>_WEBHOOK_SECRET` (Polar's signing key, a verify token).
    pub webhook_secret: Option<String>,
    /// Kept per project and handed back as `WebhookKeys::subscription` and to `renew`.
    pub record: Option<Value>,
}

/// What the project has on file when a subscription is made.
pub struct SubscribeContext<'a> {
    pub credentials: &'a ClientCredentials,
    /// Where the provider must deliver: `<base>/v1/wearables/<slug>/webhook/<projectId>`.
    pub callback_url: &'a str,
    /// The project's webhook secret (made before the call when none was set): the verify token
    /// or authorization value a provider checks the URL with while the subscription is made.
    pub webhook_secret: &'a SecretString,
}

#[async_trait]
pub trait Webhooks: Send + Sync {
    /// A GET (or HEAD) on the webhook URL: the provider checking the URL before it delivers.
    /// Answers the JSON body of the 200.
    fn handshake(&self, _request: &WebhookRequest<'_>, _keys: &WebhookKeys<'_>) -> Result<Value, WebhookError> {
        Err(WebhookError::NotSupported)
    }

    /// Whether events naming no user of the project are refused (403, nothing stored) instead of
    /// kept as `ignored`: for providers that sign nothing (Withings), where the user is all that
    /// ties a notification to a connection.
    fn unknown_users_rejected(&self) -> bool {
        false
    }

    /// Verifies a POST (signature, shared secret, freshness) and parses its events.
    fn receive(&self, request: &WebhookRequest<'_>, keys: &WebhookKeys<'_>) -> Result<Delivery, WebhookError>;

    /// Creates the project's subscription at the provider, where the provider has an API for it.
    async fn subscribe(
        &self,
        _http: &ProviderHttp,
        _ctx: &SubscribeContext<'_>,
    ) -> Result<Subscription, ProviderError> {
        Err(ProviderError::Refused {
            status: None,
            error: Some("subscriptions are managed in the provider's portal".into()),
        })
    }

    /// When a recorded subscription must be renewed (epoch ms); `None`: it does not expire.
    fn renew_at(&self, _record: &Value) -> Option<i64> {
        None
    }

    /// Renews the recorded subscription; answers what to keep from now on.
    async fn renew(
        &self,
        http: &ProviderHttp,
        ctx: &SubscribeContext<'_>,
        _record: &Value,
    ) -> Result<Subscription, ProviderError> {
        self.subscribe(http, ctx).await
    }
}

/// Equal strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// HMAC-SHA256 of `parts` concatenated, with `key`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// Checks an HMAC-SHA256 over `parts` against `expected` (the raw MAC bytes), in constant time.
pub fn verify_hmac_sha256(key: &[u8], parts: &[&[u8]], expected: &[u8]) -> bool {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.verify_slice(expected).is_ok()
}

/// How far a signed timestamp may be from our clock: old enough to cover a provider's retry
/// latency and clock skew, short enough that a captured delivery cannot be replayed later
/// (Stripe and Standard Webhooks use five minutes too).
pub const SIGNATURE_TOLERANCE_MS: i64 = 5 * 60 * 1000;

/// Whether a signed timestamp (epoch ms) is within `SIGNATURE_TOLERANCE_MS` of `now_ms`.
pub fn is_fresh(timestamp_ms: i64, now_ms: i64) -> bool {
    (now_ms - timestamp_ms).abs() <= SIGNATURE_TOLERANCE_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_is_symmetric_and_bounded() {
        let now = 1_700_000_000_000;
        assert!(is_fresh(now, now));
        assert!(is_fresh(now - SIGNATURE_TOLERANCE_MS, now));
        assert!(!is_fresh(now - SIGNATURE_TOLERANCE_MS - 1, now));
        assert!(!is_fresh(now + SIGNATURE_TOLERANCE_MS + 1, now));
    }

    #[test]
    fn hmac_checks_agree_with_the_mac() {
        let mac = hmac_sha256(b"k", &[b"a", b"bc"]);
        assert!(verify_hmac_sha256(b"k", &[b"abc"], &mac));
        assert!(!verify_hmac_sha256(b"k", &[b"abd"], &mac));
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "ab"));
    }
}
