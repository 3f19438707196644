//! Garmin Health API with OAuth 2.0 PKCE (shared/spec/providers.md, "Garmin Health API" and
//! "Garmin, corrections and additions"; ◐: Garmin's docs are behind its partner portal, facts
//! checked against open-source Garmin clients).
//!
//! - OAuth: PKCE S256 is required; the token form carries client id and secret; no scopes are
//!   asked for (the user picks permissions at Garmin), so the connection records what
//!   `GET …/user/permissions` answers. Access tokens last 24 h; refresh tokens rotate (~90 days).
//! - The user id is not in the token answer: `GET /wellness-api/rest/user/id` → `{userId}`
//!   (`WEARLINK_PROVIDER_GARMIN_USER_URL` overrides it: clients also use `…/partner-gateway/…`).
//! - Disconnect deletes the user's registration; Garmin then pushes one deregistration.
//! - Webhooks are pushes configured in Garmin's portal (no subscribe API), unsigned: the
//!   `garmin-client-id` header must equal the project's client id.

use async_trait::async_trait;
use oauth2::AuthType;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use url::Url;

use super::webhook::{constant_time_eq, Delivery, InboundEvent, WebhookError, WebhookKeys, WebhookRequest, Webhooks};
use super::{
    revocation_result, token_set, AuthorizeRequest, ClientCredentials, CodeExchange, OAuthFlow, Provider,
    ProviderError, ProviderHttp, ProviderUrls, RefreshedTokens, ResolvedUrls, RevocationTarget, TokenSet,
};

mod data;
pub mod mapping;

pub const SLUG: &str = "garmin";
/// Where Garmin says who the user is, under the API base.
const USER_ID_PATH: &str = "wellness-api/rest/user/id";
const REGISTRATION_PATH: &str = "wellness-api/rest/user/registration";

/// The push lists that carry data, with the kind of object each item is.
pub(crate) const DATA_LISTS: &[(&str, &str)] = &[("activities", "activity"), ("sleeps", "sleep"), ("dailies", "daily")];
pub(crate) const DEREGISTRATIONS: &str = "deregistrations";
pub(crate) const PERMISSIONS_CHANGE: &str = "userPermissionsChange";

pub struct Garmin {
    urls: ResolvedUrls,
    /// `GET` → `{userId}`; its sibling `…/permissions` answers the granted permissions.
    user_url: Url,
}

impl Garmin {
    pub fn new(overrides: Option<&ProviderUrls>) -> Self {
        let urls = ResolvedUrls::new(
            overrides,
            "https://connect.garmin.com/oauth2Confirm",
            "https://diauth.garmin.com/di-oauth2-service/oauth/token",
            "https://apis.garmin.com",
            None,
        );
        let user_url = overrides
            .and_then(|o| o.user.clone())
            .unwrap_or_else(|| Url::parse(&urls.api_url(USER_ID_PATH)).expect("a valid URL"));
        Self { urls, user_url }
    }

    fn flow(&self) -> OAuthFlow<'_> {
        OAuthFlow {
            provider: SLUG,
            urls: &self.urls,
            // Garmin's token endpoint reads client_id and client_secret from the form.
            auth_type: AuthType::RequestBody,
            // No scopes per request: the user chooses permissions on Garmin's consent page.
            scope: String::new(),
            extra_authorize_params: &[],
        }
    }

    /// The permissions call next to the user id call (`…/user/id` → `…/user/permissions`).
    fn permissions_url(&self) -> Url {
        let mut url = self.user_url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop().push("permissions");
        }
        url
    }

    /// A GET with the user's token, only under the API base (the user URL is configurable).
    async fn get_with_token(
        &self,
        http: &ProviderHttp,
        url: &Url,
        token: &SecretString,
        operation: &'static str,
    ) -> Result<Value, ProviderError> {
        if !super::data::is_under(url.as_str(), &self.urls.api) {
            return Err(ProviderError::Refused { status: None, error: Some("URL outside the Garmin API base".into()) });
        }
        let request = http
            .get(url.clone())
            .bearer_auth(token.expose_secret())
            .header(reqwest::header::ACCEPT, "application/json");
        super::json_answer(http, (SLUG, operation), request, "Garmin user answer").await
    }
}

/// Garmin's addition to the token answer (seconds the refresh token lives, ~90 days).
#[derive(Clone, Debug, Deserialize, Serialize)]
struct GarminTokenFields {
    refresh_token_expires_in: Option<i64>,
}

impl oauth2::ExtraTokenFields for GarminTokenFields {}

#[async_trait]
impl Provider for Garmin {
    fn slug(&self) -> &'static str {
        SLUG
    }

    fn display_name(&self) -> &'static str {
        "Garmin"
    }

    fn urls(&self) -> &ResolvedUrls {
        &self.urls
    }

    fn scopes(&self) -> Vec<String> {
        Vec::new()
    }

    /// Garmin's OAuth 2.0 requires PKCE with S256.
    fn uses_pkce(&self) -> bool {
        true
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

    /// The exchange (with the PKCE verifier), then `GET …/user/id`, then the permissions (what the
    /// user granted, recorded as the scopes; none when that call fails: it is informational).
    async fn exchange_code(
        &self,
        http: &ProviderHttp,
        credentials: &ClientCredentials,
        exchange: &CodeExchange<'_>,
    ) -> Result<TokenSet, ProviderError> {
        let answer = self.flow().exchange::<GarminTokenFields>(http, credentials, exchange).await?;
        let token = SecretString::from(oauth2::TokenResponse::access_token(&answer).secret().to_string());
        let user = self.get_with_token(http, &self.user_url, &token, "user_id").await?;
        let user_id = super::id_text(user.get("userId"))
            .filter(|id| !id.trim().is_empty() && id.len() <= 128)
            .ok_or(ProviderError::BadAnswer("user id answer without userId"))?;
        let mut tokens = token_set(&answer, user_id, None);
        tokens.scopes = match self.get_with_token(http, &self.permissions_url(), &token, "user_permissions").await {
            Ok(Value::Array(permissions)) => {
                Some(permissions.iter().filter_map(Value::as_str).map(String::from).collect())
            }
            _ => None,
        };
        Ok(tokens)
    }

    fn supports_refresh(&self) -> bool {
        true
    }

    /// `grant_type=refresh_token` with client id and secret in the form; the answer carries a new
    /// refresh token (rotation), kept by the caller.
    async fn refresh(
        &self,
        http: &ProviderHttp,
        credentials: &ClientCredentials,
        refresh_token: &SecretString,
    ) -> Result<RefreshedTokens, ProviderError> {
        super::refresh_with_form_credentials(http, SLUG, &self.urls.token, credentials, refresh_token, &[]).await
    }

    /// `DELETE /wellness-api/rest/user/registration` (bearer) → 204; Garmin then pushes one
    /// deregistration, which finds the connection already off.
    async fn revoke(&self, http: &ProviderHttp, target: &RevocationTarget<'_>) -> Result<(), ProviderError> {
        let request =
            http.delete(self.urls.api_url(REGISTRATION_PATH)).bearer_auth(target.access_token.expose_secret());
        let response = http.send(SLUG, "revoke", request).await.map_err(|_| ProviderError::Unreachable)?;
        revocation_result(response.status())
    }

    fn identifier_system(&self) -> String {
        format!("{}/sid/garmin-user-id", crate::fhir::BASE)
    }
}

/// One inbox event of a push: `{"type": <list name>, "item": <the item>}`.
pub(crate) fn event_payload(list: &str, item: &Value) -> Value {
    json!({ "type": list, "item": item })
}

/// Garmin's pushes: `{"activities": [...], "sleeps": [...], "dailies": [...]}` with the data,
/// `{"deregistrations": [{userId}]}`, `{"userPermissionsChange": [{userId, permissions}]}` — any
/// list is split into one event per item.
#[async_trait]
impl Webhooks for Garmin {
    fn receive(&self, request: &WebhookRequest<'_>, keys: &WebhookKeys<'_>) -> Result<Delivery, WebhookError> {
        // No signature: the `garmin-client-id` header must be the project's client id. Checking
        // only that it is present is a mistake others made (shared/spec/providers.md).
        let authentic = match (keys.client, request.header("garmin-client-id")) {
            (Some(client), Some(sent)) => constant_time_eq(&client.client_id, sent.trim()),
            _ => false,
        };
        // The client id is no secret (every authorize URL carries it): with a webhook secret on
        // file, the push URL registered at Garmin carries it too (`?token=<secret>`), and a push
        // without it is refused — a forged push could write data or disconnect a patient.
        let token_ok = match keys.webhook_secret {
            Some(secret) => request.query("token").is_some_and(|t| constant_time_eq(secret.expose_secret(), t)),
            None => true,
        };
        if !authentic || !token_ok {
            return Err(WebhookError::InvalidSignature);
        }
        let body: Value = serde_json::from_slice(request.body).map_err(|e| WebhookError::Malformed(e.to_string()))?;
        let Value::Object(lists) = body else {
            return Err(WebhookError::Malformed("a Garmin push is a JSON object of lists".into()));
        };
        let mut events = Vec::new();
        for (list, items) in &lists {
            let Value::Array(items) = items else {
                return Err(WebhookError::Malformed(format!("{list} is not a list")));
            };
            if list.len() > 64 || !list.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(WebhookError::Malformed("unexpected list name".into()));
            }
            for item in items {
                let user = super::id_text(item.get("userId")).filter(|u| !u.is_empty());
                // Dedup on the list and the summary (or, for a deregistration, the user); the item's
                // content is part of the key too, so an updated summary is a new event.
                let key = super::id_text(item.get("summaryId")).or_else(|| user.clone()).unwrap_or_default();
                let payload = event_payload(list, item).to_string();
                events.push(InboundEvent::new(list.clone(), user, payload, &[list, &key]));
            }
        }
        if events.is_empty() {
            return Err(WebhookError::Malformed("a push without items".into()));
        }
        Ok(Delivery::Events(events))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::data::{DataSource, EventAction};

    fn client() -> ClientCredentials {
        ClientCredentials { client_id: "garmin-client".into(), client_secret: SecretString::from("s3cret".to_string()) }
    }

    fn receive(headers: &[(&str, &str)], body: &Value) -> Result<Delivery, WebhookError> {
        let headers: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let body = serde_json::to_vec(body).unwrap();
        let client = client();
        let keys = WebhookKeys { webhook_secret: None, client: Some(&client), subscription: None, now_ms: 0 };
        Garmin::new(None).receive(&WebhookRequest { headers: &headers, query: &[], body: &body }, &keys)
    }

    fn push() -> Value {
        json!({"activities":[{"userId":"d3315b10","summaryId":"x153a9f3","activityType":"RUNNING",
            "startTimeInSeconds":1763597760,"startTimeOffsetInSeconds":3600,"durationInSeconds":3600}],
            "dailies":[{"userId":"d3315b10","summaryId":"d1","calendarDate":"2025-11-20","steps":10}]})
    }

    #[test]
    fn the_client_id_header_must_equal_the_client_id() {
        assert!(matches!(receive(&[], &push()), Err(WebhookError::InvalidSignature)));
        assert!(matches!(receive(&[("garmin-client-id", "")], &push()), Err(WebhookError::InvalidSignature)));
        assert!(matches!(
            receive(&[("garmin-client-id", "garmin-clien")], &push()),
            Err(WebhookError::InvalidSignature)
        ));
        assert!(matches!(receive(&[("garmin-client-id", "s3cret")], &push()), Err(WebhookError::InvalidSignature)));
        assert!(matches!(receive(&[("garmin-client-id", "garmin-client")], &push()), Ok(Delivery::Events(_))));
    }

    #[test]
    fn with_a_webhook_secret_on_file_the_push_url_must_carry_it() {
        let headers = vec![("garmin-client-id".to_string(), "garmin-client".to_string())];
        let body = serde_json::to_vec(&push()).unwrap();
        let client = client();
        let secret = SecretString::from("url-token-7f".to_string());
        let keys = WebhookKeys { webhook_secret: Some(&secret), client: Some(&client), subscription: None, now_ms: 0 };
        let with = |query: &[(String, String)]| {
            Garmin::new(None).receive(&WebhookRequest { headers: &headers, query, body: &body }, &keys)
        };
        assert!(matches!(with(&[]), Err(WebhookError::InvalidSignature)));
        assert!(matches!(with(&[("token".into(), "url-token-7".into())]), Err(WebhookError::InvalidSignature)));
        assert!(matches!(with(&[("token".into(), "url-token-7f".into())]), Ok(Delivery::Events(_))));
    }

    #[test]
    fn a_push_is_split_into_one_event_per_item_and_each_maps_to_its_action() {
        let Ok(Delivery::Events(events)) = receive(&[("garmin-client-id", "garmin-client")], &push()) else {
            panic!("events")
        };
        assert_eq!(events.len(), 2);
        let types: Vec<_> = events.iter().map(|e| e.event_type.as_str()).collect();
        assert_eq!(types, vec!["activities", "dailies"]);
        assert!(events.iter().all(|e| e.remote_user_id.as_deref() == Some("d3315b10")));
        assert_ne!(events[0].dedup_key, events[1].dedup_key);
        let garmin = Garmin::new(None);
        let base = Url::parse("https://apis.garmin.com").unwrap();
        let payload: Value = serde_json::from_str(&events[0].payload).unwrap();
        let EventAction::Items(items) = garmin.event_action(&payload, &base) else { panic!("items") };
        assert_eq!((items[0].0.kind.as_str(), items[0].0.id.as_str()), ("activity", "x153a9f3"));
        assert_eq!(items[0].1["activityType"], "RUNNING");

        let Ok(Delivery::Events(events)) = receive(
            &[("garmin-client-id", "garmin-client")],
            &json!({"deregistrations":[{"userId":"d3315b10"}],
                    "userPermissionsChange":[{"userId":"d3315b10","permissions":["ACTIVITY_EXPORT"]}]}),
        ) else {
            panic!("events")
        };
        let actions: Vec<_> =
            events.iter().map(|e| garmin.event_action(&serde_json::from_str(&e.payload).unwrap(), &base)).collect();
        assert_eq!(actions[0], EventAction::Deauthorize);
        assert!(matches!(actions[1], EventAction::Ignore(_)));
    }

    #[test]
    fn the_same_item_again_has_the_same_key() {
        let once = receive(&[("garmin-client-id", "garmin-client")], &push()).unwrap();
        let twice = receive(&[("garmin-client-id", "garmin-client")], &push()).unwrap();
        let (Delivery::Events(a), Delivery::Events(b)) = (once, twice) else { panic!("events") };
        assert_eq!(a[0].dedup_key, b[0].dedup_key);
    }

    #[test]
    fn pushes_that_are_not_lists_are_malformed() {
        for body in [json!([]), json!({"activities": {}}), json!({}), json!({"activities": []})] {
            assert!(
                matches!(receive(&[("garmin-client-id", "garmin-client")], &body), Err(WebhookError::Malformed(_))),
                "{body}"
            );
        }
    }

    #[test]
    fn the_permissions_url_sits_beside_the_user_id_url() {
        let garmin = Garmin::new(None);
        assert_eq!(garmin.user_url.as_str(), "https://apis.garmin.com/wellness-api/rest/user/id");
        assert_eq!(garmin.permissions_url().as_str(), "https://apis.garmin.com/wellness-api/rest/user/permissions");
        let partner = ProviderUrls {
            user: Some(Url::parse("https://apis.garmin.com/partner-gateway/rest/user/id").unwrap()),
            ..ProviderUrls::default()
        };
        assert_eq!(
            Garmin::new(Some(&partner)).permissions_url().as_str(),
            "https://apis.garmin.com/partner-gateway/rest/user/permissions"
        );
    }
}
