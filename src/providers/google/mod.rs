//! Google Health API (https://developers.google.com/health): Fitbit and Pixel Watch data since the
//! legacy Fitbit Web API was switched off (shared/spec/providers.md, "Google Health API").
//!
//! OAuth is Google's own (https://developers.google.com/identity/protocols/oauth2/web-server):
//! `access_type=offline` and `prompt=consent` on every authorize URL (without `prompt=consent` a
//! user who consented before gets no refresh token), PKCE S256, client credentials in the form.
//! Refresh tokens do not rotate: a refresh answer carries none and the one on file is kept.

use async_trait::async_trait;
use oauth2::AuthType;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use url::Url;

use super::webhook::{
    constant_time_eq, Delivery, InboundEvent, SubscribeContext, Subscription, WebhookError, WebhookKeys,
    WebhookRequest, Webhooks,
};
use super::{
    token_set, AuthorizeRequest, ClientCredentials, CodeExchange, OAuthFlow, Provider, ProviderError, ProviderHttp,
    ProviderUrls, RefreshedTokens, ResolvedUrls, RevocationTarget, TokenSet,
};

mod data;
pub mod mapping;

pub const SLUG: &str = "google";

/// The read scopes Wearlink asks for (developers.google.com/health/scopes); Google reports in the
/// token answer (and the callback's `scope`) which of them the user granted.
pub const SCOPES: &[&str] = &[
    "https://www.googleapis.com/auth/googlehealth.activity_and_fitness.readonly",
    "https://www.googleapis.com/auth/googlehealth.health_metrics_and_measurements.readonly",
    "https://www.googleapis.com/auth/googlehealth.sleep.readonly",
    "https://www.googleapis.com/auth/googlehealth.profile.readonly",
];

/// The data types a subscriber asks notifications for (kebab-case, as `subscriberConfigs` wants).
pub const WEBHOOK_DATA_TYPES: &[&str] =
    &[data::EXERCISE, data::SLEEP, data::DAILY_RESTING_HEART_RATE, data::DAILY_HRV, data::DAILY_SPO2];

/// The id Wearlink gives its subscriber in the Cloud project (`subscriberId`).
const SUBSCRIBER_ID: &str = "wearlink";

/// The configured payload-signing key (`WEARLINK_PROVIDER_GOOGLE_SIGNATURE_KEY`).
enum SignatureKey {
    /// Not configured: `X-HEALTHAPI-SIGNATURE` is not checked (Google has not published where its
    /// key lives, spec ✖), the `Authorization` secret still is.
    None,
    Valid(Box<VerifyingKey>),
    /// Configured but not a P-256 public key in PEM: every delivery is refused (fail closed).
    Invalid,
}

pub struct Google {
    urls: ResolvedUrls,
    /// Where the user is named. Default `GET <api>/v4/users/me/identity` (users.getIdentity,
    /// developers.google.com/health/reference/rest/v4/users/getIdentity): it answers
    /// `healthUserId`, the very id the notifications carry (`healthUserId`) and the `{user}` of
    /// every resource name, so events find their connection. The token answer names no user, and
    /// `legacyUserId` (the old Fitbit id) is empty for users who never had a Fitbit account.
    user_url: Url,
    signature_key: SignatureKey,
}

impl Google {
    pub fn new(overrides: Option<&ProviderUrls>) -> Self {
        let urls = ResolvedUrls::new(
            overrides,
            "https://accounts.google.com/o/oauth2/v2/auth",
            "https://oauth2.googleapis.com/token",
            "https://health.googleapis.com",
            Some("https://oauth2.googleapis.com/revoke"),
        );
        let user_url = overrides
            .and_then(|o| o.user.clone())
            .unwrap_or_else(|| Url::parse(&urls.api_url("v4/users/me/identity")).expect("valid URL"));
        let signature_key = match overrides.and_then(|o| o.signature_key.as_deref()) {
            None => SignatureKey::None,
            Some(pem) => match VerifyingKey::from_public_key_pem(pem.trim()) {
                Ok(key) => SignatureKey::Valid(Box::new(key)),
                Err(_) => {
                    tracing::error!(
                        "WEARLINK_PROVIDER_GOOGLE_SIGNATURE_KEY is not a P-256 public key (PEM): Google deliveries are refused"
                    );
                    SignatureKey::Invalid
                }
            },
        };
        Self { urls, user_url, signature_key }
    }

    fn flow(&self) -> OAuthFlow<'_> {
        OAuthFlow {
            provider: SLUG,
            urls: &self.urls,
            auth_type: AuthType::RequestBody,
            scope: SCOPES.join(" "),
            // No `include_granted_scopes`: every authorization asks for all four scopes, and the
            // scopes recorded are then exactly those of this consent.
            extra_authorize_params: &[("access_type", "offline"), ("prompt", "consent")],
        }
    }

    /// `healthUserId` from users.getIdentity.
    async fn health_user_id(&self, http: &ProviderHttp, access_token: &SecretString) -> Result<String, ProviderError> {
        let request = http
            .get(self.user_url.clone())
            .bearer_auth(access_token.expose_secret())
            .header(reqwest::header::ACCEPT, "application/json");
        let body = super::json_answer(http, (SLUG, "identity"), request, "identity answer").await?;
        body.get("healthUserId")
            .and_then(Value::as_str)
            .filter(|id| is_health_user_id(id))
            .map(String::from)
            .ok_or(ProviderError::BadAnswer("identity answer without a valid healthUserId"))
    }

    /// The Cloud project a subscriber is created in: the project number that prefixes a Google
    /// OAuth client id (`123456789012-abc….apps.googleusercontent.com`). The client and the
    /// subscriber must live in the same Cloud project anyway (the Health API is enabled there).
    fn cloud_project(client_id: &str) -> Option<&str> {
        let (number, _) = client_id.split_once('-')?;
        (!number.is_empty() && number.len() <= 20 && number.bytes().all(|b| b.is_ascii_digit())).then_some(number)
    }

    fn check_signature(&self, request: &WebhookRequest<'_>) -> Result<(), WebhookError> {
        match &self.signature_key {
            SignatureKey::None => Ok(()),
            SignatureKey::Invalid => Err(WebhookError::InvalidSignature),
            SignatureKey::Valid(key) => match request.header("x-healthapi-signature") {
                Some(signature) if verify_signature(key, request.body, signature) => Ok(()),
                _ => Err(WebhookError::InvalidSignature),
            },
        }
    }
}

/// Google's user ids: 1–63 letters, digits and hyphens (users.getIdentity).
fn is_health_user_id(id: &str) -> bool {
    (1..=63).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Checks `X-HEALTHAPI-SIGNATURE`: ECDSA P-256 with SHA-256 over the raw JSON body
/// (projects.subscribers, EndpointAuthorization). Google does not document the encoding, so both
/// forms ECDSA signatures travel in are taken: base64 (standard or URL-safe, padded or not) of an
/// ASN.1 DER signature (what most signers, Cloud KMS among them, produce) or of the raw 64-byte
/// `r || s` (IEEE P1363, what JWS uses). Either way the check itself is the same ECDSA verify.
pub fn verify_signature(key: &VerifyingKey, body: &[u8], signature: &str) -> bool {
    use base64::Engine;
    let text = signature.trim();
    let engines = [
        base64::engine::general_purpose::STANDARD,
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    let Some(bytes) = engines.iter().find_map(|e| e.decode(text).ok()) else {
        return false;
    };
    let parsed = if bytes.len() == 64 { Signature::from_slice(&bytes) } else { Signature::from_der(&bytes) };
    parsed.is_ok_and(|s| key.verify(body, &s).is_ok())
}

#[async_trait]
impl Provider for Google {
    fn slug(&self) -> &'static str {
        SLUG
    }

    fn display_name(&self) -> &'static str {
        "Google Health (Fitbit, Pixel Watch)"
    }

    fn urls(&self) -> &ResolvedUrls {
        &self.urls
    }

    fn scopes(&self) -> Vec<String> {
        SCOPES.iter().map(|s| s.to_string()).collect()
    }

    fn uses_pkce(&self) -> bool {
        true
    }

    fn identifier_system(&self) -> String {
        format!("{}/sid/google-health-user-id", crate::fhir::BASE)
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
        let answer = self.flow().exchange::<oauth2::EmptyExtraTokenFields>(http, credentials, exchange).await?;
        let access = SecretString::from(oauth2::TokenResponse::access_token(&answer).secret().to_string());
        let user = self.health_user_id(http, &access).await?;
        Ok(token_set(&answer, user, None))
    }

    fn supports_refresh(&self) -> bool {
        true
    }

    /// Google answers `invalid_grant` (400) for a revoked, expired or unknown refresh token; a 401
    /// (`unauthorized_client`, `invalid_client`: the OAuth client was deleted or its secret
    /// rotated) cannot recover either. The answer carries no refresh token: the old one stays.
    async fn refresh(
        &self,
        http: &ProviderHttp,
        credentials: &ClientCredentials,
        refresh_token: &SecretString,
    ) -> Result<RefreshedTokens, ProviderError> {
        match super::refresh_with_form_credentials(http, SLUG, &self.urls.token, credentials, refresh_token, &[]).await
        {
            Err(ProviderError::Refused { status: Some(401), .. }) => Err(ProviderError::InvalidGrant),
            other => other,
        }
    }

    /// `POST https://oauth2.googleapis.com/revoke` with `token` (Google documents it as
    /// `?token=…` and accepts the same parameter form-encoded in the body; the body keeps the
    /// token out of proxies' and servers' URL logs).
    /// Wearlink keeps only the access token for a revocation; revoking it revokes the refresh
    /// token of the same grant too (Google: "If the token is an access token and it has a
    /// corresponding refresh token, the refresh token will also be revoked"). 200 is done; 400
    /// `invalid_token` means the token is already dead, so it counts as revoked.
    async fn revoke(&self, http: &ProviderHttp, target: &RevocationTarget<'_>) -> Result<(), ProviderError> {
        let url = self.urls.revoke.clone().expect("Google has a revoke URL");
        let request = http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .form(&[("token", target.access_token.expose_secret())]);
        let response = http.send(SLUG, "revoke", request).await.map_err(|_| ProviderError::Unreachable)?;
        let status = response.status();
        if status == reqwest::StatusCode::BAD_REQUEST {
            let body: Value = response.json().await.unwrap_or(Value::Null);
            return match body.get("error").and_then(Value::as_str) {
                Some("invalid_token") => Ok(()),
                other => Err(ProviderError::Refused { status: Some(400), error: other.map(String::from) }),
            };
        }
        super::revocation_result(status)
    }
}

/// A Google Health notification (developers.google.com/health/webhooks): no data, only which
/// user, data type and intervals changed.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GoogleNotification {
    pub health_user_id: String,
    pub operation: String,
    pub data_type: String,
    #[serde(default)]
    pub intervals: Vec<NotificationInterval>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NotificationInterval {
    pub physical_time_interval: PhysicalTimeInterval,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PhysicalTimeInterval {
    pub start_time: String,
    pub end_time: String,
}

impl GoogleNotification {
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let n: Self = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        if !is_health_user_id(&n.health_user_id) {
            return Err("healthUserId must be 1-63 letters, digits or hyphens".into());
        }
        let kebab = |s: &str| (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'-');
        if !kebab(&n.data_type) {
            return Err("dataType must be a kebab-case data type".into());
        }
        if !(1..=16).contains(&n.operation.len()) || !n.operation.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
            return Err("operation must be an upper-case name".into());
        }
        Ok(n)
    }
}

/// Google's subscriber webhook: verified by the `Authorization` value we gave Google when the
/// subscriber was made (the project's webhook secret as `Bearer <secret>`), and by
/// `X-HEALTHAPI-SIGNATURE` when a key is configured.
#[async_trait]
impl Webhooks for Google {
    fn receive(&self, request: &WebhookRequest<'_>, keys: &WebhookKeys<'_>) -> Result<Delivery, WebhookError> {
        // Google sends the subscriber's `endpointAuthorization.secret` as the whole Authorization
        // value; the second verification POST comes without it and must be refused (401).
        let authorized = match (keys.webhook_secret, request.header("authorization")) {
            (Some(secret), Some(given)) => constant_time_eq(given.trim(), &authorization_value(secret.expose_secret())),
            _ => false,
        };
        if !authorized {
            return Err(WebhookError::InvalidSignature);
        }
        self.check_signature(request)?;
        let body: Value =
            serde_json::from_slice(request.body).map_err(|e| WebhookError::Malformed(format!("not JSON: {e}")))?;
        if body.get("type").and_then(Value::as_str) == Some("verification") {
            // subscribers.create: "Expected Response: HTTP 201 Created".
            return Ok(Delivery::Acknowledge(201));
        }
        let n = GoogleNotification::parse(request.body).map_err(WebhookError::Malformed)?;
        let event_type = format!("{}.{}", n.data_type, n.operation.to_ascii_lowercase());
        // No id or timestamp of its own: the whole notification is the key (re-serialised, so
        // a redelivery with other whitespace is the same event). Two genuine notifications of the
        // same interval collapse into one, which is accepted: each is "re-read this interval",
        // and the one stored re-reads it after both were sent.
        let payload = body.to_string();
        Ok(Delivery::Events(vec![InboundEvent::new(event_type, Some(n.health_user_id), payload, &[SLUG])]))
    }

    /// `POST <api>/v4/projects/{project}/subscribers?subscriberId=wearlink` (projects.subscribers
    /// .create). Google verifies `endpointUri` with two POSTs before it answers (see `receive`).
    ///
    /// Limitation: Google authorizes this call with a Cloud IAM credential of the project
    /// (`health.subscribers.create`, a service account as Google recommends); Wearlink holds only
    /// the OAuth client, whose secret must never be sent as a bearer token. So this request goes
    /// out with no credential: behind an egress proxy that adds the service account's token it
    /// works as is, otherwise Google refuses it and the operator creates the subscriber with
    /// `gcloud` and the same body (docs/providers/google.md), with `Bearer <webhook secret>`.
    async fn subscribe(&self, http: &ProviderHttp, ctx: &SubscribeContext<'_>) -> Result<Subscription, ProviderError> {
        let project = Self::cloud_project(&ctx.credentials.client_id).ok_or_else(|| ProviderError::Refused {
            status: None,
            error: Some("the OAuth client id does not start with the Cloud project number".into()),
        })?;
        let body = json!({
            "endpointUri": ctx.callback_url,
            "subscriberConfigs": [{
                "dataTypes": WEBHOOK_DATA_TYPES,
                "subscriptionCreatePolicy": "AUTOMATIC"
            }],
            "endpointAuthorization": { "secret": authorization_value(ctx.webhook_secret.expose_secret()) }
        });
        let url = self.urls.api_url(&format!("v4/projects/{project}/subscribers"));
        let request = http
            .post(url)
            .query(&[("subscriberId", SUBSCRIBER_ID)])
            .header(reqwest::header::ACCEPT, "application/json")
            .json(&body);
        let answer = super::json_answer(http, (SLUG, "create_subscriber"), request, "subscriber answer").await?;
        // A long-running operation (`{name: "operations/…"}`) or the subscriber itself.
        let name = answer
            .get("name")
            .and_then(Value::as_str)
            .map(String::from)
            .unwrap_or_else(|| format!("projects/{project}/subscribers/{SUBSCRIBER_ID}"));
        Ok(Subscription {
            id: format!("projects/{project}/subscribers/{SUBSCRIBER_ID}"),
            webhook_secret: None,
            record: Some(
                json!({ "subscriber": format!("projects/{project}/subscribers/{SUBSCRIBER_ID}"), "operation": name }),
            ),
        })
    }
}

/// The `Authorization` value Google is given (and sends back): `Bearer <webhook secret>`.
fn authorization_value(secret: &str) -> String {
    format!("Bearer {secret}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::SigningKey;
    use p256::pkcs8::EncodePublicKey;

    fn keys() -> (SigningKey, String) {
        let signing = SigningKey::random(&mut rand::rngs::OsRng);
        let pem = signing.verifying_key().to_public_key_pem(p256::pkcs8::LineEnding::LF).unwrap();
        (signing, pem)
    }

    fn google(pem: Option<&str>) -> Google {
        Google::new(Some(&ProviderUrls { signature_key: pem.map(String::from), ..ProviderUrls::default() }))
    }

    fn secret() -> SecretString {
        SecretString::from("hook-secret-1".to_string())
    }

    fn request<'a>(headers: &'a [(String, String)], body: &'a [u8]) -> WebhookRequest<'a> {
        WebhookRequest { headers, query: &[], body }
    }

    fn keys_view(secret: &SecretString) -> WebhookKeys<'_> {
        WebhookKeys { webhook_secret: Some(secret), client: None, subscription: None, now_ms: 0 }
    }

    const NOTIFICATION: &str = r#"{"healthUserId":"NGL8Q2-abc","operation":"UPSERT","dataType":"exercise","intervals":[{"physicalTimeInterval":{"startTime":"2026-11-20T07:00:00Z","endTime":"2026-11-20T08:00:00Z"}}]}"#;

    #[test]
    fn der_and_raw_signatures_verify_and_others_do_not() {
        let (signing, pem) = keys();
        let key = VerifyingKey::from_public_key_pem(&pem).unwrap();
        let body = NOTIFICATION.as_bytes();
        let signature: Signature = signing.sign(body);
        let b64 = base64::engine::general_purpose::STANDARD;
        let der = b64.encode(signature.to_der().as_bytes());
        let raw = b64.encode(signature.to_bytes());
        assert!(verify_signature(&key, body, &der));
        assert!(verify_signature(&key, body, &raw));
        assert!(verify_signature(
            &key,
            body,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature.to_bytes())
        ));
        assert!(!verify_signature(&key, b"{\"other\":1}", &der));
        assert!(!verify_signature(&key, body, "not base64 !"));
        let (other, _) = keys();
        let foreign: Signature = other.sign(body);
        assert!(!verify_signature(&key, body, &b64.encode(foreign.to_der().as_bytes())));
    }

    #[test]
    fn verification_posts_need_our_authorization() {
        let g = google(None);
        let s = secret();
        let body = br#"{"type":"verification"}"#;
        let with = [("authorization".to_string(), "Bearer hook-secret-1".to_string())];
        assert!(matches!(g.receive(&request(&with, body), &keys_view(&s)), Ok(Delivery::Acknowledge(201))));
        assert!(matches!(g.receive(&request(&[], body), &keys_view(&s)), Err(WebhookError::InvalidSignature)));
        let wrong = [("authorization".to_string(), "Bearer hook-secret-2".to_string())];
        assert!(matches!(g.receive(&request(&wrong, body), &keys_view(&s)), Err(WebhookError::InvalidSignature)));
        let bare = [("authorization".to_string(), "hook-secret-1".to_string())];
        assert!(matches!(g.receive(&request(&bare, body), &keys_view(&s)), Err(WebhookError::InvalidSignature)));
    }

    #[test]
    fn a_notification_is_one_event_keyed_on_its_content() {
        let g = google(None);
        let s = secret();
        let with = [("authorization".to_string(), "Bearer hook-secret-1".to_string())];
        let Ok(Delivery::Events(events)) = g.receive(&request(&with, NOTIFICATION.as_bytes()), &keys_view(&s)) else {
            panic!("not an event")
        };
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event_type, "exercise.upsert");
        assert_eq!(events[0].remote_user_id.as_deref(), Some("NGL8Q2-abc"));
        let spaced = NOTIFICATION.replace(',', ", ");
        let Ok(Delivery::Events(again)) = g.receive(&request(&with, spaced.as_bytes()), &keys_view(&s)) else {
            panic!("not an event")
        };
        assert_eq!(again[0].dedup_key, events[0].dedup_key);
        let other = NOTIFICATION.replace("UPSERT", "DELETE");
        let Ok(Delivery::Events(deleted)) = g.receive(&request(&with, other.as_bytes()), &keys_view(&s)) else {
            panic!("not an event")
        };
        assert_ne!(deleted[0].dedup_key, events[0].dedup_key);
        let bad = NOTIFICATION.replace("NGL8Q2-abc", "../x");
        assert!(matches!(g.receive(&request(&with, bad.as_bytes()), &keys_view(&s)), Err(WebhookError::Malformed(_))));
    }

    #[test]
    fn a_configured_key_makes_the_signature_required() {
        let (signing, pem) = keys();
        let g = google(Some(&pem));
        let s = secret();
        let body = NOTIFICATION.as_bytes();
        let signature: Signature = signing.sign(body);
        let good = base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes());
        let auth = ("authorization".to_string(), "Bearer hook-secret-1".to_string());
        let signed = [auth.clone(), ("x-healthapi-signature".to_string(), good)];
        assert!(matches!(g.receive(&request(&signed, body), &keys_view(&s)), Ok(Delivery::Events(_))));
        let unsigned = [auth.clone()];
        assert!(matches!(g.receive(&request(&unsigned, body), &keys_view(&s)), Err(WebhookError::InvalidSignature)));
        let tampered = NOTIFICATION.replace("08:00", "09:00");
        assert!(matches!(
            g.receive(&request(&signed, tampered.as_bytes()), &keys_view(&s)),
            Err(WebhookError::InvalidSignature)
        ));
        // A key that is not a key refuses everything.
        let broken = google(Some("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"));
        assert!(matches!(broken.receive(&request(&signed, body), &keys_view(&s)), Err(WebhookError::InvalidSignature)));
    }

    #[test]
    fn the_cloud_project_is_the_client_ids_number() {
        assert_eq!(Google::cloud_project("123456789012-abc.apps.googleusercontent.com"), Some("123456789012"));
        assert_eq!(Google::cloud_project("abc-123.apps.googleusercontent.com"), None);
        assert_eq!(Google::cloud_project("123456"), None);
    }

    #[test]
    fn the_authorize_url_asks_for_offline_access_and_consent() {
        let g = google(None);
        let credentials =
            ClientCredentials { client_id: "1-x".into(), client_secret: SecretString::from("s".to_string()) };
        let redirect = Url::parse("https://wl.example/v1/wearables/google/callback").unwrap();
        let url = g.authorization_url(
            &credentials,
            &AuthorizeRequest {
                redirect_uri: &redirect,
                state: "st",
                code_challenge: Some("c".repeat(43).as_str()),
                region: None,
            },
        );
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(q["access_type"], "offline");
        assert_eq!(q["prompt"], "consent");
        assert_eq!(q["scope"], SCOPES.join(" "));
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(url.host_str(), Some("accounts.google.com"));
    }
}
