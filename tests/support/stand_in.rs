//! Local stand-ins for Strava and Polar, on 127.0.0.1, behaving as their public docs say:
//! authorize pages that redirect back with a code, token endpoints that check the form fields,
//! the client authentication and the exact `redirect_uri`, and accept each code once; Polar's
//! user registration. They can be told to fail.
//!
//! The data APIs (Strava activities, Polar exercises, sleep and daily activity) with their rate
//! limits are in `stand_in_data.rs`; their test API is on `StandIn` as well.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::json;

use super::stand_in_data;
pub use super::stand_in_data::{
    polar_daily_activity_json, polar_exercise_json, polar_sleep_json, strava_activity_json, ApiCall, ApiLog,
};

pub const STRAVA_CLIENT_ID: &str = "48151";
pub const STRAVA_CLIENT_SECRET: &str = "strava-client-secret-7f3a";
pub const POLAR_CLIENT_ID: &str = "polar-client-6b2e";
pub const POLAR_CLIENT_SECRET: &str = "polar-client-secret-91cd";

/// How the token endpoints answer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TokenMode {
    Normal,
    /// Answer this status with an error body.
    Status(u16),
    /// Wait this long before answering.
    Slow(Duration),
    /// 200 with a body that is not JSON.
    Garbage,
}

/// One token request as the stand-in received it.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub provider: &'static str,
    pub form: HashMap<String, String>,
    pub basic_auth: Option<(String, String)>,
}

#[derive(Default)]
struct Inner {
    /// code → (provider, redirect_uri given at authorize, user id)
    codes: HashMap<String, (&'static str, String, u64)>,
    token_requests: Vec<TokenRequest>,
    /// access tokens issued, by provider
    issued: Vec<(&'static str, String, Option<String>)>,
    /// Polar member-ids registered, by x_user_id
    polar_users: HashMap<String, String>,
    /// Polar users whose data the client may read: registered, consents accepted, not deleted.
    polar_registered: std::collections::HashSet<u64>,
    polar_registrations: u32,
    next_user: u64,
    /// Valid Strava refresh tokens → athlete id. A refresh token works once (Strava rotates them).
    refresh_tokens: HashMap<String, u64>,
    /// Successful refreshes per athlete.
    refreshes: HashMap<u64, u32>,
    /// Latest access token per user id.
    latest_access: HashMap<u64, String>,
    /// Revocations received: (provider, access token or user id).
    revocations: Vec<(&'static str, String)>,
    /// The Polar webhook's signing key, once created.
    pub polar_signature_key: Option<String>,
    /// Lifetime of tokens issued at the code exchange.
    initial_expires_in: i64,
    /// Answer refreshes without a refresh token (and keep the old one valid).
    omit_refresh_token: bool,
}

#[derive(Clone)]
pub struct StandIn {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    mode: Arc<Mutex<TokenMode>>,
    revoke_mode: Arc<Mutex<TokenMode>>,
    deny: Arc<Mutex<bool>>,
    /// The authorize step shows a page with Approve / Deny buttons instead of deciding at once.
    interactive: Arc<Mutex<bool>>,
    /// The data APIs' activities, nights, limits and logs.
    pub(crate) data: Arc<Mutex<stand_in_data::Data>>,
}

impl StandIn {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stand_in = StandIn {
            addr,
            inner: Arc::new(Mutex::new(Inner { next_user: 1000, initial_expires_in: 21600, ..Default::default() })),
            mode: Arc::new(Mutex::new(TokenMode::Normal)),
            revoke_mode: Arc::new(Mutex::new(TokenMode::Normal)),
            deny: Arc::new(Mutex::new(false)),
            interactive: Arc::new(Mutex::new(false)),
            data: Arc::default(),
        };
        let app = Router::new()
            .route("/strava/oauth/authorize", get(strava_authorize))
            .route("/strava/oauth/authorize/decide", post(strava_decide))
            .route("/polar/oauth2/authorization/decide", post(polar_decide))
            .route("/strava/oauth/token", post(strava_token))
            .route("/polar/oauth2/authorization", get(polar_authorize))
            .route("/polar/v2/oauth2/token", post(polar_token))
            .route("/polar/v3/users", post(polar_register))
            .route("/polar/v3/users/{id}", axum::routing::delete(polar_delete_user))
            .route("/strava/oauth/deauthorize", post(strava_deauthorize))
            .route("/strava/api/v3/push_subscriptions", post(strava_push_subscription))
            .route("/polar/v3/webhooks", post(polar_create_webhook))
            .merge(stand_in_data::routes(stand_in.clone()))
            .with_state(stand_in.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        stand_in
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The `WEARLINK_PROVIDER_*` URLs pointing at this stand-in.
    pub fn provider_env(&self) -> Vec<(String, String)> {
        vec![
            ("WEARLINK_PROVIDER_STRAVA_AUTHORIZE_URL".into(), self.url("/strava/oauth/authorize")),
            ("WEARLINK_PROVIDER_STRAVA_TOKEN_URL".into(), self.url("/strava/oauth/token")),
            ("WEARLINK_PROVIDER_STRAVA_API_URL".into(), self.url("/strava/api/v3")),
            ("WEARLINK_PROVIDER_STRAVA_REVOKE_URL".into(), self.url("/strava/oauth/deauthorize")),
            ("WEARLINK_PROVIDER_POLAR_AUTHORIZE_URL".into(), self.url("/polar/oauth2/authorization")),
            ("WEARLINK_PROVIDER_POLAR_TOKEN_URL".into(), self.url("/polar/v2/oauth2/token")),
            ("WEARLINK_PROVIDER_POLAR_API_URL".into(), self.url("/polar/v3")),
        ]
    }

    pub fn set_token_mode(&self, mode: TokenMode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// How the revoke endpoints (Strava deauthorize, Polar user deletion) answer.
    pub fn set_revoke_mode(&self, mode: TokenMode) {
        *self.revoke_mode.lock().unwrap() = mode;
    }

    /// Lifetime of the tokens the code exchange issues from now on.
    pub fn set_initial_expires_in(&self, secs: i64) {
        self.inner.lock().unwrap().initial_expires_in = secs;
    }

    pub fn set_omit_refresh_token(&self, omit: bool) {
        self.inner.lock().unwrap().omit_refresh_token = omit;
    }

    /// The athletes revoke our app at Strava: every refresh token stops working.
    pub fn forget_refresh_tokens(&self) {
        self.inner.lock().unwrap().refresh_tokens.clear();
    }

    pub fn refreshes_of(&self, user: u64) -> u32 {
        self.inner.lock().unwrap().refreshes.get(&user).copied().unwrap_or(0)
    }

    /// The user's current access token expires now: data calls with it answer 401 (a refresh
    /// issues a new one).
    pub fn expire_access_token(&self, user: u64) {
        self.inner.lock().unwrap().latest_access.remove(&user);
    }

    pub fn total_refreshes(&self) -> u32 {
        self.inner.lock().unwrap().refreshes.values().sum()
    }

    pub fn latest_access_token(&self, user: u64) -> Option<String> {
        self.inner.lock().unwrap().latest_access.get(&user).cloned()
    }

    pub fn polar_signature_key(&self) -> Option<String> {
        self.inner.lock().unwrap().polar_signature_key.clone()
    }

    pub fn revocations(&self) -> Vec<(&'static str, String)> {
        self.inner.lock().unwrap().revocations.clone()
    }

    /// The authorize step shows a page where a person (a browser) approves or denies.
    pub fn set_interactive(&self, interactive: bool) {
        *self.interactive.lock().unwrap() = interactive;
    }

    /// The user declines at the authorize page.
    pub fn set_user_declines(&self, deny: bool) {
        *self.deny.lock().unwrap() = deny;
    }

    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.inner.lock().unwrap().token_requests.clone()
    }

    /// Every access and refresh token issued so far (to look for them where they must not be).
    pub fn issued_tokens(&self) -> Vec<String> {
        let inner = self.inner.lock().unwrap();
        inner.issued.iter().flat_map(|(_, a, r)| std::iter::once(a.clone()).chain(r.clone())).collect()
    }

    pub fn polar_registrations(&self) -> u32 {
        self.inner.lock().unwrap().polar_registrations
    }

    pub fn polar_member_ids(&self) -> Vec<String> {
        self.inner.lock().unwrap().polar_users.values().cloned().collect()
    }

    /// The user id handed out last (Strava athlete id or Polar `x_user_id`): the user of the
    /// latest authorize step. `None` before any.
    pub fn last_user_id(&self) -> Option<u64> {
        let inner = self.inner.lock().unwrap();
        (inner.next_user > 1000).then_some(inner.next_user)
    }

    /// A new user with an access token (and, for Strava, a refresh token), as if they had
    /// connected, without the OAuth round trip. Polar users are registered with the client.
    /// Answers `(user id, access token)`.
    pub fn mint_user(&self, provider: &'static str) -> (u64, String) {
        let user = {
            let mut inner = self.inner.lock().unwrap();
            inner.next_user += 1;
            inner.next_user
        };
        let (access, _, _) = self.issue(provider, user, provider == "strava", true);
        if provider == "polar" {
            let mut inner = self.inner.lock().unwrap();
            inner.polar_users.insert(user.to_string(), format!("member-{user}"));
            inner.polar_registered.insert(user);
        }
        (user, access)
    }

    /// Whether a Polar user's data is readable: registered and consents accepted (`false`: the
    /// data endpoints answer 403, as for a user who has not accepted Polar's consents).
    pub fn set_polar_registered(&self, user: u64, registered: bool) {
        let mut inner = self.inner.lock().unwrap();
        if registered {
            inner.polar_registered.insert(user);
        } else {
            inner.polar_registered.remove(&user);
        }
    }

    /// The user whose current (latest, not revoked) access token for `provider` this is.
    pub(crate) fn current_token_user(&self, provider: &'static str, token: &str) -> Option<u64> {
        if token.is_empty() {
            return None;
        }
        let inner = self.inner.lock().unwrap();
        if !inner.issued.iter().any(|(p, a, _)| *p == provider && a == token)
            || inner.revocations.iter().any(|(p, t)| *p == provider && t == token)
        {
            return None;
        }
        inner.latest_access.iter().find(|(_, a)| a.as_str() == token).map(|(user, _)| *user)
    }

    pub(crate) fn polar_is_registered(&self, user: u64) -> bool {
        self.inner.lock().unwrap().polar_registered.contains(&user)
    }

    /// Authorize step shared by both providers: checks the query, then redirects back with a code
    /// (or `error=access_denied` when the user declines).
    fn authorize(
        &self,
        provider: &'static str,
        expected_client: &str,
        expected_scope: &str,
        q: &HashMap<String, String>,
    ) -> Response {
        if *self.interactive.lock().unwrap() {
            return authorize_page(provider, q);
        }
        let deny = *self.deny.lock().unwrap();
        self.decide(provider, expected_client, expected_scope, q, deny)
    }

    /// The user's decision at the authorize step: back to `redirect_uri` with a code or an error.
    fn decide(
        &self,
        provider: &'static str,
        expected_client: &str,
        expected_scope: &str,
        q: &HashMap<String, String>,
        deny: bool,
    ) -> Response {
        let field = |k: &str| q.get(k).cloned().unwrap_or_default();
        if field("client_id") != expected_client || field("response_type") != "code" {
            return (StatusCode::BAD_REQUEST, "bad client_id or response_type").into_response();
        }
        if field("scope") != expected_scope || field("state").is_empty() {
            return (StatusCode::BAD_REQUEST, "bad scope or missing state").into_response();
        }
        if provider == "strava" && field("approval_prompt") != "auto" {
            return (StatusCode::BAD_REQUEST, "approval_prompt").into_response();
        }
        let redirect_uri = field("redirect_uri");
        let mut back = url::Url::parse(&redirect_uri).expect("redirect_uri is a URL");
        if deny {
            back.query_pairs_mut().append_pair("state", &field("state")).append_pair("error", "access_denied");
        } else {
            let code = format!("code-{}", uuid::Uuid::new_v4().simple());
            let mut inner = self.inner.lock().unwrap();
            inner.next_user += 1;
            let user = inner.next_user;
            inner.codes.insert(code.clone(), (provider, redirect_uri.clone(), user));
            back.query_pairs_mut().append_pair("state", &field("state")).append_pair("code", &code);
            if provider == "strava" {
                back.query_pairs_mut().append_pair("scope", "read,activity:read_all");
            }
        }
        (StatusCode::FOUND, [(header::LOCATION, back.to_string())]).into_response()
    }

    /// Applies the failure mode; `Some` is the answer to give instead of a normal one.
    async fn failure(&self) -> Option<Response> {
        let mode = *self.mode.lock().unwrap();
        failure_answer(mode).await
    }

    fn issue(&self, provider: &'static str, user: u64, refresh: bool, initial: bool) -> (String, Option<String>, i64) {
        let access = format!("{provider}-access-{}", uuid::Uuid::new_v4().simple());
        let refresh = refresh.then(|| format!("{provider}-refresh-{}", uuid::Uuid::new_v4().simple()));
        let mut inner = self.inner.lock().unwrap();
        inner.issued.push((provider, access.clone(), refresh.clone()));
        inner.latest_access.insert(user, access.clone());
        if let Some(r) = &refresh {
            inner.refresh_tokens.insert(r.clone(), user);
        }
        let expires_in = if initial { inner.initial_expires_in } else { 21600 };
        (access, refresh, expires_in)
    }

    /// Takes a code once: `(redirect_uri at authorize, user id)`.
    fn take_code(&self, provider: &'static str, code: &str) -> Option<(String, u64)> {
        let mut inner = self.inner.lock().unwrap();
        match inner.codes.remove(code) {
            Some((p, uri, user)) if p == provider => Some((uri, user)),
            _ => None,
        }
    }

    fn record(&self, provider: &'static str, form: &HashMap<String, String>, headers: &HeaderMap) {
        let basic_auth = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|raw| String::from_utf8(raw).ok())
            .and_then(|pair| pair.split_once(':').map(|(u, p)| (decode_form(u), decode_form(p))));
        self.inner.lock().unwrap().token_requests.push(TokenRequest { provider, form: form.clone(), basic_auth });
    }
}

/// Applies a failure mode; `Some` is the answer to give instead of a normal one.
async fn failure_answer(mode: TokenMode) -> Option<Response> {
    match mode {
        TokenMode::Normal => None,
        TokenMode::Slow(d) => {
            tokio::time::sleep(d).await;
            None
        }
        TokenMode::Status(429) => Some(
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, "120")],
                Json(json!({"message": "Rate Limit Exceeded", "errors": []})),
            )
                .into_response(),
        ),
        TokenMode::Status(s) => Some(
            (StatusCode::from_u16(s).unwrap(), Json(json!({"message": "Server Error", "errors": []}))).into_response(),
        ),
        TokenMode::Garbage => {
            Some((StatusCode::OK, [(header::CONTENT_TYPE, "text/html")], "<html>oops</html>").into_response())
        }
    }
}

/// RFC 6749 §2.3.1 form-encodes Basic credentials.
fn decode_form(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
}

async fn strava_authorize(State(s): State<StandIn>, Query(q): Query<HashMap<String, String>>) -> Response {
    s.authorize("strava", STRAVA_CLIENT_ID, "read,activity:read_all", &q)
}

async fn polar_authorize(State(s): State<StandIn>, Query(q): Query<HashMap<String, String>>) -> Response {
    s.authorize("polar", POLAR_CLIENT_ID, "accesslink.read_all", &q)
}

/// The interactive authorize page: the request's fields carried in two forms, Approve and Deny.
fn authorize_page(provider: &'static str, q: &HashMap<String, String>) -> Response {
    let action = match provider {
        "strava" => "/strava/oauth/authorize/decide",
        _ => "/polar/oauth2/authorization/decide",
    };
    let escape = |v: &str| v.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;");
    let hidden: String = q
        .iter()
        .map(|(k, v)| format!("<input type=\"hidden\" name=\"{}\" value=\"{}\">", escape(k), escape(v)))
        .collect();
    let form = |decision: &str, label: &str| {
        format!(
            "<form method=\"post\" action=\"{action}\">{hidden}<input type=\"hidden\" name=\"decision\" value=\"{decision}\"><button id=\"{decision}\">{label}</button></form>"
        )
    };
    let body = format!(
        "<!doctype html><title>{provider} authorize</title><h1>Authorize app ({provider} stand-in)</h1>{}{}",
        form("approve", "Authorize"),
        form("deny", "Cancel")
    );
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

async fn strava_decide(State(s): State<StandIn>, Form(form): Form<HashMap<String, String>>) -> Response {
    let deny = form.get("decision").map(String::as_str) != Some("approve");
    s.decide("strava", STRAVA_CLIENT_ID, "read,activity:read_all", &form, deny)
}

async fn polar_decide(State(s): State<StandIn>, Form(form): Form<HashMap<String, String>>) -> Response {
    let deny = form.get("decision").map(String::as_str) != Some("approve");
    s.decide("polar", POLAR_CLIENT_ID, "accesslink.read_all", &form, deny)
}

/// Strava: client credentials in the form; errors in Strava's own shape.
async fn strava_token(
    State(s): State<StandIn>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    s.record("strava", &form, &headers);
    if let Some(answer) = s.failure().await {
        return answer;
    }
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    if field("client_id") != STRAVA_CLIENT_ID || field("client_secret") != STRAVA_CLIENT_SECRET {
        return strava_error(StatusCode::UNAUTHORIZED, "Authorization Error", "Application", "client_id");
    }
    let now = chrono::Utc::now().timestamp();
    match field("grant_type").as_str() {
        "authorization_code" => {
            let Some((_, user)) = s.take_code("strava", &field("code")) else {
                return strava_error(StatusCode::BAD_REQUEST, "Bad Request", "AuthorizationCode", "code");
            };
            let (access, refresh, expires_in) = s.issue("strava", user, true, true);
            Json(json!({
                "token_type": "Bearer",
                "expires_at": now + expires_in,
                "expires_in": expires_in,
                "refresh_token": refresh,
                "access_token": access,
                "athlete": { "id": user, "username": "athlete", "firstname": "Ada", "lastname": "Runner" }
            }))
            .into_response()
        }
        "refresh_token" => {
            let omit = s.inner.lock().unwrap().omit_refresh_token;
            // A used refresh token stops working, unless no new one is handed out.
            let user = {
                let mut inner = s.inner.lock().unwrap();
                let token = field("refresh_token");
                let user =
                    if omit { inner.refresh_tokens.get(&token).copied() } else { inner.refresh_tokens.remove(&token) };
                if let Some(user) = user {
                    *inner.refreshes.entry(user).or_default() += 1;
                }
                user
            };
            let Some(user) = user else {
                return strava_error(StatusCode::BAD_REQUEST, "Bad Request", "RefreshToken", "refresh_token");
            };
            let (access, refresh, expires_in) = s.issue("strava", user, !omit, false);
            let mut answer = json!({
                "token_type": "Bearer",
                "access_token": access,
                "expires_at": now + expires_in,
                "expires_in": expires_in,
            });
            if let Some(refresh) = refresh {
                answer["refresh_token"] = json!(refresh);
            }
            Json(answer).into_response()
        }
        _ => strava_error(StatusCode::BAD_REQUEST, "Bad Request", "Application", "grant_type"),
    }
}

fn strava_error(status: StatusCode, message: &str, resource: &str, field: &str) -> Response {
    (status, Json(json!({"message": message, "errors": [{"resource": resource, "field": field, "code": "invalid"}]})))
        .into_response()
}

/// Polar: HTTP Basic client credentials, the exact `redirect_uri` of the authorize step.
async fn polar_token(
    State(s): State<StandIn>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    s.record("polar", &form, &headers);
    if let Some(answer) = s.failure().await {
        return answer;
    }
    let request = s.token_requests().pop().unwrap();
    if request.basic_auth != Some((POLAR_CLIENT_ID.into(), POLAR_CLIENT_SECRET.into())) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "invalid_client"}))).into_response();
    }
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    if field("grant_type") != "authorization_code" {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "unsupported_grant_type"}))).into_response();
    }
    match s.take_code("polar", &field("code")) {
        Some((uri, user)) if uri == field("redirect_uri") => {
            let (access, _, _) = s.issue("polar", user, false, true);
            Json(json!({
                "access_token": access,
                "token_type": "bearer",
                "expires_in": 31535999,
                "x_user_id": user
            }))
            .into_response()
        }
        _ => (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_grant"}))).into_response(),
    }
}

/// AccessLink `POST /v3/users`: 200 the first time, 409 after. The stand-in hands out a new user
/// id at every authorize step, so a reconnect of the same member-id (the same person, whose Polar
/// account is registered already) makes the new id registered as well.
async fn polar_register(State(s): State<StandIn>, headers: HeaderMap, Json(body): Json<serde_json::Value>) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    let Some(user) = s.current_token_user("polar", &token) else {
        return (StatusCode::UNAUTHORIZED, "").into_response();
    };
    let mut inner = s.inner.lock().unwrap();
    let Some(member_id) = body.get("member-id").and_then(|m| m.as_str()).map(String::from) else {
        return (StatusCode::BAD_REQUEST, "member-id required").into_response();
    };
    inner.polar_registrations += 1;
    let key = user.to_string();
    if inner.polar_users.contains_key(&key) || inner.polar_users.values().any(|m| *m == member_id) {
        inner.polar_registered.insert(user);
        return (StatusCode::CONFLICT, "").into_response();
    }
    inner.polar_users.insert(key, member_id.clone());
    inner.polar_registered.insert(user);
    Json(json!({"polar-user-id": user, "member-id": member_id, "registration-date": "2026-11-25T10:00:00.000Z"}))
        .into_response()
}

/// Strava `POST /oauth/deauthorize`: the access token in the form; 401 when it is not valid.
async fn strava_deauthorize(State(s): State<StandIn>, Form(form): Form<HashMap<String, String>>) -> Response {
    let mode = *s.revoke_mode.lock().unwrap();
    if let Some(answer) = failure_answer(mode).await {
        return answer;
    }
    let token = form.get("access_token").cloned().unwrap_or_default();
    let mut inner = s.inner.lock().unwrap();
    if !inner.issued.iter().any(|(p, a, _)| *p == "strava" && *a == token) {
        return strava_error(StatusCode::UNAUTHORIZED, "Authorization Error", "Athlete", "access_token");
    }
    inner.revocations.push(("strava", token.clone()));
    Json(json!({ "access_token": token })).into_response()
}

/// AccessLink `DELETE /v3/users/{user-id}`: 204.
async fn polar_delete_user(
    State(s): State<StandIn>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    let mode = *s.revoke_mode.lock().unwrap();
    if let Some(answer) = failure_answer(mode).await {
        return answer;
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    let mut inner = s.inner.lock().unwrap();
    let Ok(user) = id.parse::<u64>() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if inner.latest_access.get(&user) != Some(&token) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    inner.revocations.push(("polar", id));
    inner.polar_registered.remove(&user);
    StatusCode::NO_CONTENT.into_response()
}

pub const STRAVA_SUBSCRIPTION_ID: u64 = 120475;

/// Strava `POST /api/v3/push_subscriptions`: validates the callback with a GET carrying a
/// challenge and the verify token, as Strava does, before answering the subscription id.
async fn strava_push_subscription(State(s): State<StandIn>, Form(form): Form<HashMap<String, String>>) -> Response {
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    if field("client_id") != STRAVA_CLIENT_ID || field("client_secret") != STRAVA_CLIENT_SECRET {
        return strava_error(StatusCode::UNAUTHORIZED, "Authorization Error", "Application", "client_id");
    }
    let challenge = format!("challenge-{}", uuid::Uuid::new_v4().simple());
    let mut url = url::Url::parse(&field("callback_url")).unwrap();
    url.query_pairs_mut()
        .append_pair("hub.mode", "subscribe")
        .append_pair("hub.challenge", &challenge)
        .append_pair("hub.verify_token", &field("verify_token"));
    let echoed: Option<serde_json::Value> = match reqwest::get(url).await {
        Ok(r) if r.status().is_success() => r.json().await.ok(),
        _ => None,
    };
    if echoed.as_ref().and_then(|v| v.get("hub.challenge")).and_then(|c| c.as_str()) != Some(challenge.as_str()) {
        return strava_error(StatusCode::BAD_REQUEST, "Bad Request", "PushSubscription", "callback url");
    }
    let _ = &s;
    Json(json!({ "id": STRAVA_SUBSCRIPTION_ID })).into_response()
}

/// Polar `POST /v3/webhooks`: Basic client credentials; PINGs the URL, then answers the key.
async fn polar_create_webhook(
    State(s): State<StandIn>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Response {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{POLAR_CLIENT_ID}:{POLAR_CLIENT_SECRET}"))
    );
    if headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let url = body["url"].as_str().unwrap_or_default().to_string();
    let ping = json!({"timestamp": "2026-11-25T10:00:00Z", "event": "PING"});
    let pinged = reqwest::Client::new()
        .post(&url)
        .header("Polar-Webhook-Event", "PING")
        .json(&ping)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    if !pinged {
        return (StatusCode::BAD_REQUEST, "the webhook URL did not answer the PING").into_response();
    }
    let key = format!("polar-signature-key-{}", uuid::Uuid::new_v4().simple());
    s.inner.lock().unwrap().polar_signature_key = Some(key.clone());
    (
        StatusCode::CREATED,
        Json(json!({"data": {"id": "abdf33", "events": body["events"], "url": url, "signature_secret_key": key}})),
    )
        .into_response()
}
