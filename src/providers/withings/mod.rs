//! Withings (developer.withings.com): connected scales, blood pressure cuffs, thermometers and
//! sleep analysers (shared/spec/providers.md, "Withings" and "Withings, more").
//!
//! Withings speaks OAuth 2.0 its own way: scopes are comma-separated; the token call is
//! `POST /v2/oauth2` with `action=requesttoken`; and every answer — token calls and data calls
//! alike — is an envelope `{status, body}` sent with HTTP 200 even when it is an error, so the
//! `status` is read, never the HTTP code alone (0 is success). Refresh tokens rotate: the old one
//! dies once the new access token is used, and the refresher stores the new tokens before anything
//! uses them (`crate::connections`). Revocation is a signed call: a single-use nonce from
//! `POST /v2/signature action=getnonce`, then `action=revoke` signed with HMAC-SHA256 over the
//! sorted values of `action, client_id, nonce` under the client secret.
//!
//! Notifications are subscribed per user and category (`appli`) at connect, with the user's
//! token (`POST /notify action=subscribe`), and unsubscribed on disconnect. Withings first sends
//! a HEAD to the callback URL (answered 200), then form POSTs `userid, appli, startdate, enddate`
//! that carry no data and no signature: only notifications of a user connected in the project are
//! taken, and the URL Wearlink subscribes carries the project's webhook secret as `?token=`
//! (required on every delivery once the secret is set).

use async_trait::async_trait;
use oauth2::AuthType;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use url::Url;

use super::webhook::{
    constant_time_eq, hmac_sha256, Delivery, InboundEvent, WebhookError, WebhookKeys, WebhookRequest, Webhooks,
};
use super::{
    AuthorizeRequest, ClientCredentials, CodeExchange, ConnectContext, OAuthFlow, Provider, ProviderError,
    ProviderHttp, ProviderUrls, RefreshedTokens, ResolvedUrls, RevocationTarget, TokenSet, WebhookTarget,
};

mod data;
pub mod mapping;

pub use data::{envelope_body, ACTIVITY, MEASURES, SLEEP};

pub const SLUG: &str = "withings";

/// Comma-separated, as Withings expects them (spec ◐).
pub const SCOPES: &[&str] = &["user.info", "user.metrics", "user.activity", "user.sleepevents"];

/// Notification categories subscribed for every user: 1 weight and body composition, 4 blood
/// pressure / heart rate / SpO2 (and temperature on current devices), 16 activity, 44 sleep.
pub const APPLIS: &[u32] = &[1, 4, 16, 44];
/// Bed in / bed out: only with `user.sleepevents` granted.
pub const SLEEP_EVENT_APPLIS: &[u32] = &[50, 51];

/// Envelope statuses (developer.withings.com, "Response status").
const STATUS_OK: i64 = 0;
const STATUS_INVALID_TOKEN: i64 = 401;
const STATUS_TOO_MANY_REQUESTS: i64 = 601;
/// `notify action=revoke`: "no such subscription" (the user had none for that appli).
const STATUS_NO_SUCH_SUBSCRIPTION: i64 = 286;

pub struct Withings {
    urls: ResolvedUrls,
}

/// A Withings answer read: the envelope's `body` when `status` is 0, else that status and its
/// `error` text (Withings' message, which names what was wrong, never a token).
type Envelope = Result<Value, (i64, Option<String>)>;

impl Withings {
    pub fn new(overrides: Option<&ProviderUrls>) -> Self {
        let urls = ResolvedUrls::new(
            overrides,
            "https://account.withings.com/oauth2_user/authorize2",
            "https://wbsapi.withings.net/v2/oauth2",
            "https://wbsapi.withings.net",
            None,
        );
        Self { urls }
    }

    fn flow(&self) -> OAuthFlow<'_> {
        OAuthFlow {
            provider: SLUG,
            urls: &self.urls,
            auth_type: AuthType::RequestBody,
            scope: SCOPES.join(","),
            extra_authorize_params: &[],
        }
    }

    /// Sends a call and reads its envelope; fails outright only when no envelope came back
    /// (unreachable, an HTTP error, not JSON) or on status 601 (too many requests).
    async fn call(
        &self,
        http: &ProviderHttp,
        operation: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<Envelope, ProviderError> {
        let response = http.send(SLUG, operation, request).await.map_err(|_| ProviderError::Unreachable)?;
        let status = response.status();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(ProviderError::RateLimited { retry_after: None });
        }
        if !status.is_success() {
            return Err(ProviderError::Refused { status: Some(status.as_u16()), error: None });
        }
        let answer: Value = response.json().await.map_err(|_| ProviderError::BadAnswer("not a Withings envelope"))?;
        match answer.get("status").and_then(Value::as_i64) {
            Some(STATUS_OK) => Ok(Ok(answer.get("body").cloned().unwrap_or(Value::Null))),
            Some(STATUS_TOO_MANY_REQUESTS) => Err(ProviderError::RateLimited { retry_after: None }),
            Some(status) => {
                let error = answer.get("error").and_then(Value::as_str).map(|e| e.chars().take(200).collect());
                Ok(Err((status, error)))
            }
            None => Err(ProviderError::BadAnswer("no status in the Withings envelope")),
        }
    }

    /// A token call (`action=requesttoken`): the tokens in the envelope's body.
    async fn request_token(
        &self,
        http: &ProviderHttp,
        operation: &'static str,
        form: &[(&str, &str)],
    ) -> Result<TokenAnswer, ProviderError> {
        let request = http.post(self.urls.token.clone()).header(reqwest::header::ACCEPT, "application/json").form(form);
        match self.call(http, operation, request).await? {
            Ok(body) => serde_json::from_value(body).map_err(|_| ProviderError::BadAnswer("token answer")),
            // Withings answers an invalid, used or expired code or refresh token with 401 or
            // with 503 "invalid params" naming it; either way the grant cannot be used again.
            Err((STATUS_INVALID_TOKEN, error)) => {
                tracing::info!(?error, "Withings refused the grant");
                Err(ProviderError::InvalidGrant)
            }
            Err((503, Some(error))) if error.contains("refresh_token") || error.contains("code") => {
                Err(ProviderError::InvalidGrant)
            }
            Err((status, error)) => Err(ProviderError::Refused { status: u16::try_from(status).ok(), error }),
        }
    }

    /// The callback URL Withings is given for this project: the webhook URL, with the project's
    /// webhook secret as `?token=` when one is set.
    pub fn callback_url(webhook: &WebhookTarget<'_>) -> String {
        match webhook.secret {
            Some(secret) => {
                let mut url = Url::parse(webhook.url).expect("the webhook URL is a URL");
                url.query_pairs_mut().append_pair("token", secret.expose_secret());
                url.to_string()
            }
            None => webhook.url.to_string(),
        }
    }

    /// `POST /notify action=subscribe|revoke&callbackurl&appli` with the user's token.
    async fn notify(
        &self,
        http: &ProviderHttp,
        action: &'static str,
        token: &SecretString,
        callback: &str,
        appli: u32,
    ) -> Result<Result<(), (i64, Option<String>)>, ProviderError> {
        let form =
            [("action", action.to_string()), ("callbackurl", callback.to_string()), ("appli", appli.to_string())];
        let request = http
            .post(self.urls.api_url("notify"))
            .bearer_auth(token.expose_secret())
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form);
        let operation = if action == "subscribe" { "create_subscription" } else { "revoke" };
        Ok(self.call(http, operation, request).await?.map(|_| ()))
    }

    /// A single-use nonce (`POST /v2/signature action=getnonce&client_id&timestamp&signature`).
    async fn nonce(&self, http: &ProviderHttp, credentials: &ClientCredentials) -> Result<String, ProviderError> {
        let timestamp = (crate::time::now_ms() / 1000).to_string();
        let signature = signature(&credentials.client_secret, &["getnonce", &credentials.client_id, &timestamp]);
        let form = [
            ("action", "getnonce"),
            ("client_id", credentials.client_id.as_str()),
            ("timestamp", timestamp.as_str()),
            ("signature", signature.as_str()),
        ];
        let request = http.post(self.urls.api_url("v2/signature")).form(&form);
        match self.call(http, "revoke", request).await? {
            Ok(body) => body
                .get("nonce")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty() && n.len() <= 128)
                .map(String::from)
                .ok_or(ProviderError::BadAnswer("getnonce answer without a nonce")),
            Err((status, error)) => Err(ProviderError::Refused { status: u16::try_from(status).ok(), error }),
        }
    }
}

/// Withings' request signature: hex HMAC-SHA256 under the client secret of the signed
/// parameters' values, sorted by parameter name and joined with commas (`values` given in that
/// order: `action, client_id, nonce` or `action, client_id, timestamp`).
pub fn signature(client_secret: &SecretString, values: &[&str]) -> String {
    hex::encode(hmac_sha256(client_secret.expose_secret().as_bytes(), &[values.join(",").as_bytes()]))
}

/// The body of a token answer.
#[derive(serde::Deserialize)]
struct TokenAnswer {
    userid: Value,
    access_token: String,
    refresh_token: Option<String>,
    expires_in: Option<i64>,
    scope: Option<String>,
}

impl TokenAnswer {
    fn expires_at(&self) -> Option<i64> {
        self.expires_in.map(|s| crate::time::now_ms() + s * 1000)
    }
}

#[async_trait]
impl Provider for Withings {
    fn slug(&self) -> &'static str {
        SLUG
    }

    fn display_name(&self) -> &'static str {
        "Withings"
    }

    fn webhook_secret_at_connect(&self) -> bool {
        true
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

    /// `POST /v2/oauth2 action=requesttoken grant_type=authorization_code` with the client in the
    /// form; the user is `body.userid`.
    async fn exchange_code(
        &self,
        http: &ProviderHttp,
        credentials: &ClientCredentials,
        exchange: &CodeExchange<'_>,
    ) -> Result<TokenSet, ProviderError> {
        let form = [
            ("action", "requesttoken"),
            ("grant_type", "authorization_code"),
            ("client_id", credentials.client_id.as_str()),
            ("client_secret", credentials.client_secret.expose_secret()),
            ("code", exchange.code),
            ("redirect_uri", exchange.redirect_uri.as_str()),
        ];
        let answer = self.request_token(http, "token_exchange", &form).await?;
        let user = mapping::numeric_id(Some(&answer.userid))
            .ok_or(ProviderError::BadAnswer("token answer without a numeric userid"))?;
        let expires_at = answer.expires_at();
        let scopes = answer
            .scope
            .as_deref()
            .map(|s| s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect());
        Ok(TokenSet {
            access_token: SecretString::from(answer.access_token),
            refresh_token: answer.refresh_token.map(SecretString::from),
            token_type: "Bearer".into(),
            expires_at,
            remote_user_id: user,
            scopes,
        })
    }

    /// Subscribes the user's notifications, one category at a time; bed in/out only when
    /// `user.sleepevents` was granted. Best effort: Withings checks the callback URL (a HEAD) and
    /// refuses hosts it cannot reach (localhost, bare IPs), which must not make the connect fail;
    /// the reconciliation pass picks up what no notification announced.
    async fn after_connect(
        &self,
        http: &ProviderHttp,
        tokens: &TokenSet,
        ctx: &ConnectContext<'_>,
    ) -> Result<(), ProviderError> {
        let callback = Self::callback_url(&ctx.webhook);
        let sleep_events = tokens.scopes.as_ref().is_some_and(|s| s.iter().any(|s| s == "user.sleepevents"));
        let applis = APPLIS.iter().chain(if sleep_events { SLEEP_EVENT_APPLIS } else { &[] });
        for appli in applis {
            match self.notify(http, "subscribe", &tokens.access_token, &callback, *appli).await {
                Ok(Ok(())) => {}
                Ok(Err((status, error))) => {
                    tracing::warn!(appli, status, ?error, "Withings refused a notification subscription");
                }
                Err(e) => tracing::warn!(appli, error = %e, "Withings notification subscription failed"),
            }
        }
        Ok(())
    }

    fn supports_refresh(&self) -> bool {
        true
    }

    /// `action=requesttoken grant_type=refresh_token`: a new access and refresh token each time.
    async fn refresh(
        &self,
        http: &ProviderHttp,
        credentials: &ClientCredentials,
        refresh_token: &SecretString,
    ) -> Result<RefreshedTokens, ProviderError> {
        let form = [
            ("action", "requesttoken"),
            ("grant_type", "refresh_token"),
            ("client_id", credentials.client_id.as_str()),
            ("client_secret", credentials.client_secret.expose_secret()),
            ("refresh_token", refresh_token.expose_secret()),
        ];
        let answer = self.request_token(http, "token_refresh", &form).await?;
        let expires_at = answer.expires_at();
        Ok(RefreshedTokens {
            access_token: SecretString::from(answer.access_token),
            refresh_token: answer.refresh_token.map(SecretString::from),
            // RFC 6750 types are case-insensitive; Withings sends `Bearer`.
            token_type: "Bearer".into(),
            expires_at,
        })
    }

    /// Unsubscribes the user's notifications (with the access token, while it still works), then
    /// revokes the grant with a signed `action=revoke`. A category without a subscription, or a
    /// token already refused, does not stop the revocation.
    async fn revoke(&self, http: &ProviderHttp, target: &RevocationTarget<'_>) -> Result<(), ProviderError> {
        let callback = Self::callback_url(&target.webhook);
        for appli in APPLIS.iter().chain(SLEEP_EVENT_APPLIS) {
            match self.notify(http, "revoke", target.access_token, &callback, *appli).await? {
                Ok(()) | Err((STATUS_NO_SUCH_SUBSCRIPTION, _)) => {}
                Err((STATUS_INVALID_TOKEN, _)) => break,
                Err((status, error)) => tracing::info!(appli, status, ?error, "Withings kept a subscription"),
            }
        }
        let credentials = target.credentials.ok_or_else(|| ProviderError::Refused {
            status: None,
            error: Some("the project's Withings credentials are needed to sign the revocation".into()),
        })?;
        let nonce = self.nonce(http, credentials).await?;
        let signature = signature(&credentials.client_secret, &["revoke", &credentials.client_id, &nonce]);
        let form = [
            ("action", "revoke"),
            ("client_id", credentials.client_id.as_str()),
            ("nonce", nonce.as_str()),
            ("signature", signature.as_str()),
            ("userid", target.remote_user_id),
        ];
        let request = http.post(self.urls.token.clone()).form(&form);
        match self.call(http, "revoke", request).await? {
            Ok(_) => Ok(()),
            // The grant is already gone.
            Err((STATUS_INVALID_TOKEN, _)) => Ok(()),
            Err((status, error)) => Err(ProviderError::Refused { status: u16::try_from(status).ok(), error }),
        }
    }
}

/// A Withings notification (form fields; developer.withings.com "Notification content").
#[derive(Debug, serde::Deserialize, serde::Serialize)]
pub struct Notification {
    pub userid: String,
    pub appli: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startdate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enddate: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deviceid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

impl Notification {
    /// Reads a form body; answers what is wrong with it.
    pub fn parse(body: &[u8]) -> Result<Self, String> {
        let n: Self =
            serde_urlencoded::from_bytes(body).map_err(|e| format!("not a Withings notification form: {e}"))?;
        let digits = |s: &str, max: usize| (1..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(&n.userid, 24) {
            return Err("userid must be a number".into());
        }
        if !digits(&n.appli, 4) {
            return Err("appli must be a number".into());
        }
        for (name, value) in [("startdate", &n.startdate), ("enddate", &n.enddate)] {
            if value.as_deref().is_some_and(|v| !digits(v, 12)) {
                return Err(format!("{name} must be epoch seconds"));
            }
        }
        let plain = |v: &Option<String>| {
            v.as_deref().is_none_or(|v| v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        };
        if !plain(&n.date) || !plain(&n.deviceid) || !plain(&n.action) {
            return Err("date, deviceid and action must be short plain values".into());
        }
        Ok(n)
    }

    pub fn start_ms(&self) -> Option<i64> {
        self.startdate.as_deref()?.parse::<i64>().ok().map(|s| s * 1000)
    }

    pub fn end_ms(&self) -> Option<i64> {
        self.enddate.as_deref()?.parse::<i64>().ok().map(|s| s * 1000)
    }

    /// The range the notification names, epoch ms, both ends included: `startdate`–`enddate`,
    /// else its `date` (`YYYY-MM-DD`, the user's day: widened by a day each side, as the user's
    /// time zone is not in the notification).
    pub fn range_ms(&self) -> Option<(i64, i64)> {
        if let (Some(from), Some(to)) = (self.start_ms(), self.end_ms()) {
            return Some((from, to));
        }
        let day = chrono::NaiveDate::parse_from_str(self.date.as_deref()?, "%Y-%m-%d").ok()?;
        let midnight = day.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis();
        Some((midnight - 86_400_000, midnight + 2 * 86_400_000 - 1000))
    }
}

impl Withings {
    /// The callback URL carries the project's webhook secret as `?token=` (made at the first
    /// connect when none was set): compared in constant time, else 401. Without a secret nothing
    /// is accepted — an unsigned form naming a guessable `userid` could otherwise unlink anyone.
    fn check_token(request: &WebhookRequest<'_>, keys: &WebhookKeys<'_>) -> Result<(), WebhookError> {
        match keys.webhook_secret {
            None => Err(WebhookError::InvalidSignature),
            Some(secret) => match request.query("token") {
                Some(given) if constant_time_eq(given, secret.expose_secret()) => Ok(()),
                _ => Err(WebhookError::InvalidSignature),
            },
        }
    }
}

#[async_trait]
impl Webhooks for Withings {
    /// Withings checks the callback URL with a HEAD before it subscribes it: 200.
    fn handshake(&self, request: &WebhookRequest<'_>, keys: &WebhookKeys<'_>) -> Result<Value, WebhookError> {
        Self::check_token(request, keys)?;
        Ok(json!({}))
    }

    /// Nothing but the user ties a notification to a connection.
    fn unknown_users_rejected(&self) -> bool {
        true
    }

    fn receive(&self, request: &WebhookRequest<'_>, keys: &WebhookKeys<'_>) -> Result<Delivery, WebhookError> {
        Self::check_token(request, keys)?;
        let n = Notification::parse(request.body).map_err(WebhookError::Malformed)?;
        let event_type = format!("appli-{}", n.appli);
        // The fields as JSON (sorted keys): a redelivery of the same form is the same event.
        let payload = serde_json::to_value(&n).expect("serialisable").to_string();
        Ok(Delivery::Events(vec![InboundEvent::new(event_type, Some(n.userid.clone()), payload, &[SLUG])]))
    }

    /// Withings subscribes per user, at connect (`after_connect`): there is nothing per project.
    async fn subscribe(
        &self,
        _http: &ProviderHttp,
        _ctx: &super::webhook::SubscribeContext<'_>,
    ) -> Result<super::webhook::Subscription, ProviderError> {
        Err(ProviderError::Refused {
            status: None,
            error: Some("Withings notifications are subscribed per user when the user connects".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_getnonce_signature_matches_the_spec_vector() {
        let secret = SecretString::from("test_client_secret".to_string());
        assert_eq!(
            signature(&secret, &["getnonce", "my_client_id", "1700000000"]),
            "1480d5b9101c5a113a03f0bfce26817b62cc65c174141e289ddab8a1692dea4c"
        );
    }

    #[test]
    fn notifications_are_forms_with_a_numeric_user() {
        let n = Notification::parse(b"userid=363&appli=4&startdate=1796000000&enddate=1796000060").unwrap();
        assert_eq!((n.userid.as_str(), n.appli.as_str()), ("363", "4"));
        assert_eq!(n.start_ms(), Some(1_796_000_000_000));
        assert!(Notification::parse(b"userid=abc&appli=1").is_err());
        assert!(Notification::parse(b"appli=1").is_err());
        assert!(Notification::parse(br#"{"userid": 363, "appli": 1}"#).is_err());
        assert!(Notification::parse(b"userid=363&appli=1&startdate=soon").is_err());
        let day = Notification::parse(b"userid=363&appli=16&date=2026-12-01&foo=bar").unwrap();
        assert_eq!(day.range_ms(), Some((1_795_996_800_000, 1_796_255_999_000)), "30 Nov to 2 Dec, UTC");
    }

    #[test]
    fn a_set_webhook_secret_is_required_as_the_token() {
        let w = Withings::new(None);
        let secret = SecretString::from("hook-1".to_string());
        let keys = WebhookKeys { webhook_secret: Some(&secret), client: None, subscription: None, now_ms: 0 };
        let body = b"userid=363&appli=1&startdate=1796000000&enddate=1796000000";
        let good = [("token".to_string(), "hook-1".to_string())];
        let request = |query| WebhookRequest { headers: &[], query, body };
        assert!(matches!(w.receive(&request(&good), &keys), Ok(Delivery::Events(e)) if e.len() == 1));
        assert!(matches!(w.receive(&request(&[]), &keys), Err(WebhookError::InvalidSignature)));
        let wrong = [("token".to_string(), "hook-2".to_string())];
        assert!(matches!(w.handshake(&request(&wrong), &keys), Err(WebhookError::InvalidSignature)));
        assert!(w.handshake(&request(&good), &keys).is_ok());
        let open = WebhookKeys { webhook_secret: None, client: None, subscription: None, now_ms: 0 };
        assert!(w.handshake(&request(&[]), &open).is_err(), "no secret: nothing is accepted");
        assert!(w.receive(&request(&good), &open).is_err());
    }

    #[test]
    fn the_callback_url_carries_the_secret() {
        let secret = SecretString::from("a b&c".to_string());
        let target =
            WebhookTarget { url: "https://wl.example/v1/wearables/withings/webhook/p1", secret: Some(&secret) };
        assert_eq!(
            Withings::callback_url(&target),
            "https://wl.example/v1/wearables/withings/webhook/p1?token=a+b%26c"
        );
        let bare = WebhookTarget { secret: None, ..target };
        assert_eq!(Withings::callback_url(&bare), "https://wl.example/v1/wearables/withings/webhook/p1");
    }

    #[test]
    fn the_authorize_url_has_comma_separated_scopes() {
        let w = Withings::new(None);
        let credentials =
            ClientCredentials { client_id: "cid".into(), client_secret: SecretString::from("s".to_string()) };
        let redirect = Url::parse("https://wl.example/v1/wearables/withings/callback").unwrap();
        let url = w.authorization_url(
            &credentials,
            &AuthorizeRequest { redirect_uri: &redirect, state: "st", code_challenge: None, region: None },
        );
        let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(q["scope"], "user.info,user.metrics,user.activity,user.sleepevents");
        assert_eq!(q["response_type"], "code");
        assert_eq!(url.host_str(), Some("account.withings.com"));
    }
}
