//! Oura API v2: a stand-in as Oura's v2 docs describe it (https://cloud.ouraring.com/v2/docs;
//! shared/spec/providers.md), the shared stories, and the stories only Oura has: the GET
//! handshake, subscriptions made per (event type × data type) and renewed before they expire,
//! and a delete event that marks what the document wrote `entered-in-error`.
//!
//! The stand-in: authorize redirects back with `code`, `scope` and `state`; the token endpoint
//! takes the client in the form, answers no user id, rotates refresh tokens (a used one is
//! `invalid_grant`); `personal_info` names the user; `/oauth/revoke?access_token=`; user
//! collections listed by day and paged with `next_token`, documents by id (404
//! `{"detail": …}` when gone); webhook subscriptions under `x-client-id` / `x-client-secret`,
//! each checked by a GET of the callback with the verification token before Oura answers, 409
//! for a duplicate, `PUT …/renew/{id}` moving `expiration_time`; deliveries signed as Oura signs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use reqwest::StatusCode as Status;
use serde_json::{json, Value};
use wearlink::time::now_ms;

use crate::stories::{self, app_for, connected, deliver, search, sync_all, Case, Delivery};
use crate::support::{problem_code, Backend};

const CLIENT_ID: &str = "oura-client-5d1a";
const CLIENT_SECRET: &str = "oura-client-secret-c03f";
const SCOPES: &str = "personal daily workout spo2";
const PAGE_SIZE: usize = 2;

#[derive(Default)]
struct Inner {
    next_user: u64,
    /// code → (redirect_uri, user)
    codes: HashMap<String, (String, String)>,
    /// access token → user (valid until revoked)
    access: HashMap<String, String>,
    /// refresh token → user (valid once: Oura's are treated as rotating)
    refresh: HashMap<String, String>,
    issued: Vec<String>,
    refreshes: HashMap<String, usize>,
    revoked: Vec<String>,
    last_user: Option<String>,
    expires_in: i64,
    /// user → collection → documents
    documents: HashMap<String, HashMap<String, Vec<Value>>>,
    /// subscription id → subscription
    subscriptions: Vec<Value>,
    /// `expires_in` of subscriptions made or renewed from now on, seconds
    subscription_lifetime: i64,
    /// (method, path) of subscription calls
    subscription_calls: Vec<(String, String)>,
    /// challenges our webhook answered correctly while subscriptions were made
    handshakes_passed: usize,
}

#[derive(Clone)]
pub struct OuraStandIn {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

fn iso(ms: i64, offset_s: i32) -> String {
    let offset = chrono::FixedOffset::east_opt(offset_s).unwrap();
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .with_timezone(&offset)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

fn error(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(String::from)
}

impl OuraStandIn {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stand_in = OuraStandIn {
            addr: listener.local_addr().unwrap(),
            inner: Arc::new(Mutex::new(Inner {
                next_user: 1,
                expires_in: 86_400,
                subscription_lifetime: 30 * 86_400,
                ..Default::default()
            })),
        };
        let app = Router::new()
            .route("/oura/oauth/authorize", get(authorize))
            .route("/oura/oauth/token", post(token))
            .route("/oura/oauth/revoke", post(revoke))
            .route("/oura/api/v2/usercollection/personal_info", get(personal_info))
            .route("/oura/api/v2/usercollection/{collection}", get(list))
            .route("/oura/api/v2/usercollection/{collection}/{id}", get(document))
            .route("/oura/api/v2/webhook/subscription", post(create_subscription).get(list_subscriptions))
            .route("/oura/api/v2/webhook/subscription/renew/{id}", put(renew_subscription))
            .with_state(stand_in.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        stand_in
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }

    fn issue(&self, inner: &mut Inner, user: &str) -> Value {
        let access = format!("oura-at-{}", uuid::Uuid::new_v4().simple());
        let refresh = format!("oura-rt-{}", uuid::Uuid::new_v4().simple());
        inner.access.insert(access.clone(), user.to_string());
        inner.refresh.insert(refresh.clone(), user.to_string());
        inner.issued.extend([access.clone(), refresh.clone()]);
        json!({"token_type": "bearer", "access_token": access, "refresh_token": refresh, "expires_in": inner.expires_in})
    }

    /// Adds a document of `collection` for the user.
    pub fn seed(&self, user: &str, collection: &str, document: Value) {
        self.lock().documents.entry(user.into()).or_default().entry(collection.into()).or_default().push(document);
    }

    pub fn subscriptions_expire_in(&self, seconds: i64) {
        self.lock().subscription_lifetime = seconds;
    }

    pub fn subscription_calls(&self, method: &str) -> Vec<String> {
        self.lock().subscription_calls.iter().filter(|(m, _)| m == method).map(|(_, p)| p.clone()).collect()
    }
}

async fn authorize(State(s): State<OuraStandIn>, Query(q): Query<HashMap<String, String>>) -> Response {
    let field = |k: &str| q.get(k).cloned().unwrap_or_default();
    if field("client_id") != CLIENT_ID || field("response_type") != "code" {
        return error(StatusCode::BAD_REQUEST, json!({"error": "invalid_request"}));
    }
    let requested: Vec<&str> = q.get("scope").map(|s| s.split(' ').collect()).unwrap_or_default();
    if !SCOPES.split(' ').all(|s| requested.contains(&s)) {
        return error(StatusCode::BAD_REQUEST, json!({"error": "invalid_scope"}));
    }
    if q.contains_key("code_challenge") {
        return error(StatusCode::BAD_REQUEST, json!({"error": "invalid_request", "error_description": "no PKCE"}));
    }
    let mut inner = s.lock();
    let user = format!("{:08x}-oura-user-{}", inner.next_user * 7919, inner.next_user);
    inner.next_user += 1;
    inner.last_user = Some(user.clone());
    let code = format!("code-{}", uuid::Uuid::new_v4().simple());
    inner.codes.insert(code.clone(), (field("redirect_uri"), user));
    let mut back = url::Url::parse(&field("redirect_uri")).unwrap();
    back.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("scope", SCOPES)
        .append_pair("state", &field("state"));
    // Oura answers the authorize step with a 302 to the redirect URI.
    (StatusCode::FOUND, [(axum::http::header::LOCATION, back.to_string())]).into_response()
}

async fn token(State(s): State<OuraStandIn>, Form(form): Form<HashMap<String, String>>) -> Response {
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    if field("client_id") != CLIENT_ID || field("client_secret") != CLIENT_SECRET {
        return error(StatusCode::UNAUTHORIZED, json!({"error": "invalid_client"}));
    }
    let mut inner = s.lock();
    match field("grant_type").as_str() {
        "authorization_code" => match inner.codes.remove(&field("code")) {
            Some((redirect_uri, user)) if redirect_uri == field("redirect_uri") => {
                Json(s.issue(&mut inner, &user)).into_response()
            }
            _ => error(StatusCode::BAD_REQUEST, json!({"error": "invalid_grant"})),
        },
        "refresh_token" => match inner.refresh.remove(&field("refresh_token")) {
            Some(user) => {
                *inner.refreshes.entry(user.clone()).or_default() += 1;
                Json(s.issue(&mut inner, &user)).into_response()
            }
            None => error(StatusCode::BAD_REQUEST, json!({"error": "invalid_grant"})),
        },
        _ => error(StatusCode::BAD_REQUEST, json!({"error": "unsupported_grant_type"})),
    }
}

async fn revoke(State(s): State<OuraStandIn>, Query(q): Query<HashMap<String, String>>) -> Response {
    let mut inner = s.lock();
    match q.get("access_token").and_then(|t| inner.access.remove(t)) {
        Some(user) => {
            inner.revoked.push(user.clone());
            inner.refresh.retain(|_, u| *u != user);
            StatusCode::OK.into_response()
        }
        None => error(StatusCode::UNAUTHORIZED, json!({"detail": "Invalid token"})),
    }
}

/// The user of the bearer token, or Oura's 401.
fn user_of(s: &OuraStandIn, headers: &HeaderMap) -> Result<String, Box<Response>> {
    let unauthorized = || Box::new(error(StatusCode::UNAUTHORIZED, json!({"detail": "Invalid or expired token"})));
    let token = bearer(headers).ok_or_else(unauthorized)?;
    s.lock().access.get(&token).cloned().ok_or_else(unauthorized)
}

async fn personal_info(State(s): State<OuraStandIn>, headers: HeaderMap) -> Response {
    match user_of(&s, &headers) {
        Ok(user) => Json(json!({"id": user, "age": 31, "weight": 64.5, "height": 1.71, "biological_sex": "female"}))
            .into_response(),
        Err(e) => *e,
    }
}

async fn list(
    State(s): State<OuraStandIn>,
    Path(collection): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let user = match user_of(&s, &headers) {
        Ok(u) => u,
        Err(e) => return *e,
    };
    let (Some(start), Some(end)) = (q.get("start_date"), q.get("end_date")) else {
        return error(StatusCode::BAD_REQUEST, json!({"detail": "start_date and end_date are required"}));
    };
    let inner = s.lock();
    let all: Vec<Value> = inner
        .documents
        .get(&user)
        .and_then(|c| c.get(&collection))
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d["day"].as_str().is_some_and(|day| day >= start.as_str() && day <= end.as_str()))
        .collect();
    let offset: usize =
        q.get("next_token").and_then(|t| t.strip_prefix("page-")).and_then(|n| n.parse().ok()).unwrap_or(0);
    let page: Vec<Value> = all.iter().skip(offset).take(PAGE_SIZE).cloned().collect();
    let next = (offset + PAGE_SIZE < all.len()).then(|| format!("page-{}", offset + PAGE_SIZE));
    Json(json!({"data": page, "next_token": next})).into_response()
}

async fn document(
    State(s): State<OuraStandIn>,
    Path((collection, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let user = match user_of(&s, &headers) {
        Ok(u) => u,
        Err(e) => return *e,
    };
    let inner = s.lock();
    let found = inner
        .documents
        .get(&user)
        .and_then(|c| c.get(&collection))
        .and_then(|docs| docs.iter().find(|d| d["id"] == id.as_str()));
    match found {
        Some(doc) => Json(doc.clone()).into_response(),
        None => error(StatusCode::NOT_FOUND, json!({"detail": "Document not found."})),
    }
}

fn client_headers_ok(headers: &HeaderMap) -> bool {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    h("x-client-id") == CLIENT_ID && h("x-client-secret") == CLIENT_SECRET
}

async fn list_subscriptions(State(s): State<OuraStandIn>, headers: HeaderMap) -> Response {
    if !client_headers_ok(&headers) {
        return error(StatusCode::UNAUTHORIZED, json!({"detail": "Invalid client"}));
    }
    let mut inner = s.lock();
    inner.subscription_calls.push(("GET".into(), "/v2/webhook/subscription".into()));
    Json(Value::Array(inner.subscriptions.clone())).into_response()
}

async fn create_subscription(State(s): State<OuraStandIn>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    if !client_headers_ok(&headers) {
        return error(StatusCode::UNAUTHORIZED, json!({"detail": "Invalid client"}));
    }
    let field = |k: &str| body[k].as_str().unwrap_or_default().to_string();
    let (callback, token, event_type, data_type) =
        (field("callback_url"), field("verification_token"), field("event_type"), field("data_type"));
    if callback.is_empty() || token.is_empty() || !["create", "update", "delete"].contains(&event_type.as_str()) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, json!({"detail": "invalid subscription"}));
    }
    s.lock().subscription_calls.push(("POST".into(), "/v2/webhook/subscription".into()));
    let duplicate = s.lock().subscriptions.iter().any(|x| {
        x["callback_url"] == callback.as_str()
            && x["event_type"] == event_type.as_str()
            && x["data_type"] == data_type.as_str()
    });
    if duplicate {
        return error(StatusCode::CONFLICT, json!({"detail": "Subscription already exists"}));
    }
    // Oura checks the callback before it answers: GET with the verification token and a challenge.
    let challenge = format!("challenge-{}", uuid::Uuid::new_v4().simple());
    let mut check = url::Url::parse(&callback).unwrap();
    check.query_pairs_mut().append_pair("verification_token", &token).append_pair("challenge", &challenge);
    let answer = reqwest::get(check).await;
    let echoed = match answer {
        Ok(r) if r.status() == Status::OK => r.json::<Value>().await.ok() == Some(json!({"challenge": challenge})),
        _ => false,
    };
    if !echoed {
        return error(StatusCode::BAD_REQUEST, json!({"detail": "Callback URL verification failed"}));
    }
    let mut inner = s.lock();
    inner.handshakes_passed += 1;
    let expiration = iso(now_ms() + inner.subscription_lifetime * 1000, 0);
    let subscription = json!({
        "id": uuid::Uuid::new_v4().to_string(), "callback_url": callback, "event_type": event_type,
        "data_type": data_type, "expiration_time": expiration,
    });
    inner.subscriptions.push(subscription.clone());
    (StatusCode::CREATED, Json(subscription)).into_response()
}

async fn renew_subscription(State(s): State<OuraStandIn>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if !client_headers_ok(&headers) {
        return error(StatusCode::UNAUTHORIZED, json!({"detail": "Invalid client"}));
    }
    let mut inner = s.lock();
    inner.subscription_calls.push(("PUT".into(), format!("/v2/webhook/subscription/renew/{id}")));
    let expiration = iso(now_ms() + inner.subscription_lifetime * 1000, 0);
    match inner.subscriptions.iter_mut().find(|x| x["id"] == id.as_str()) {
        Some(subscription) => {
            subscription["expiration_time"] = json!(expiration);
            Json(subscription.clone()).into_response()
        }
        None => error(StatusCode::NOT_FOUND, json!({"detail": "Subscription not found"})),
    }
}

/// Oura's signature, written here on its own (not the code under test's): UPPERCASE hex
/// HMAC-SHA256(secret, timestamp + body).
fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(body);
    hex::encode_upper(mac.finalize().into_bytes())
}

pub struct OuraCase {
    pub oura: OuraStandIn,
}

impl OuraCase {
    pub async fn start() -> Self {
        Self { oura: OuraStandIn::start().await }
    }

    /// A notification as Oura sends it, signed with `secret` at `at_ms` (seconds in the header).
    pub fn delivery(&self, event: Value, at_ms: i64, secret: &str) -> Delivery {
        let body = serde_json::to_vec(&event).unwrap();
        let timestamp = (at_ms / 1000).to_string();
        let signature = sign(secret, &timestamp, &body);
        Delivery {
            method: "POST",
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("x-oura-timestamp".into(), timestamp),
                ("x-oura-signature".into(), signature),
            ],
            body,
            query: Vec::new(),
        }
    }

    fn event(event_type: &str, data_type: &str, user: &str, object_id: &str, at_ms: i64) -> Value {
        json!({"event_type": event_type, "data_type": data_type, "object_id": object_id,
               "event_time": iso(at_ms, 0), "user_id": user})
    }
}

#[async_trait]
impl Case for OuraCase {
    fn slug(&self) -> &'static str {
        "oura"
    }

    fn env(&self) -> Vec<(String, String)> {
        let u = |p: &str| self.oura.url(p);
        vec![
            ("WEARLINK_PROVIDER_OURA_AUTHORIZE_URL".into(), u("/oura/oauth/authorize")),
            ("WEARLINK_PROVIDER_OURA_TOKEN_URL".into(), u("/oura/oauth/token")),
            ("WEARLINK_PROVIDER_OURA_API_URL".into(), u("/oura/api")),
            ("WEARLINK_PROVIDER_OURA_REVOKE_URL".into(), u("/oura/oauth/revoke")),
        ]
    }

    fn client(&self) -> (String, String) {
        (CLIENT_ID.into(), CLIENT_SECRET.into())
    }

    /// Oura signs with the client secret.
    fn webhook_secret(&self) -> Option<String> {
        None
    }

    fn granted_scopes(&self) -> Vec<String> {
        let mut scopes: Vec<String> = SCOPES.split(' ').map(String::from).collect();
        scopes.sort();
        scopes
    }

    fn last_user(&self) -> String {
        self.oura.lock().last_user.clone().expect("an approval")
    }

    fn issued_tokens(&self) -> Vec<String> {
        self.oura.lock().issued.clone()
    }

    fn expire_soon(&self) {
        self.oura.lock().expires_in = 30;
    }

    fn refreshes(&self, user: &str) -> usize {
        self.oura.lock().refreshes.get(user).copied().unwrap_or(0)
    }

    fn kill_grant(&self, user: &str) {
        self.oura.lock().refresh.retain(|_, u| u != user);
    }

    fn revoked(&self) -> Vec<String> {
        self.oura.lock().revoked.clone()
    }

    fn seed_workout(&self, user: &str, start_ms: i64) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        // Local time two hours east of UTC, as Oura writes a user's offsets.
        let start = iso(start_ms, 7200);
        let doc = json!({
            "id": id, "activity": "walking", "calories": 212, "day": &start[..10], "distance": 4180.5,
            "start_datetime": start, "end_datetime": iso(start_ms + 45 * 60_000, 7200),
            "intensity": "moderate", "label": null, "source": "autodetected",
        });
        self.oura.seed(user, "workout", doc);
        id
    }

    fn workout_identifier_system(&self) -> String {
        wearlink::providers::oura::mapping::WORKOUT_SYSTEM.into()
    }

    fn workout_delivery(&self, user: &str, workout_id: &str, at_ms: i64, secret: &str) -> Delivery {
        self.delivery(Self::event("create", "workout", user, workout_id, at_ms), at_ms, secret)
    }
}

crate::provider_stories!(crate::oura::OuraCase::start();
    connect_approve_and_see_the_endpoint,
    a_declined_connect_stores_nothing,
    refresh_rotates_and_a_dead_grant_marks_the_connection_error,
    disconnect_revokes_upstream,
    webhook_signatures_are_checked_and_events_stored_once,
    two_instances_racing_refresh_it_once,
    backfill_and_webhook_data_arrive_as_valid_r4,
);

/// Runs an Oura-only story on both backends.
macro_rules! oura_stories {
    ($($story:ident),* $(,)?) => {$(
        mod $story {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$story(&super::OuraCase::start().await, crate::support::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if crate::support::postgres_available() {
                    super::$story(&super::OuraCase::start().await, crate::support::Backend::Postgres).await
                }
            }
        }
    )*};
}

oura_stories!(
    the_handshake_echoes_the_challenge_only_for_our_verification_token,
    subscriptions_are_made_per_event_and_data_type_and_renewed_before_they_expire,
    a_deleted_workout_is_entered_in_error,
    sleep_daily_activity_and_spo2_arrive_paged_as_valid_r4,
);

async fn put_webhook_secret(app: &crate::support::TestApp, value: &str) {
    let (status, body) = app
        .send(
            "PUT",
            "/v1/project/secrets/WEARABLE_OURA_WEBHOOK_SECRET",
            Some(&app.admin.clone()),
            Some(json!({"value": value})),
        )
        .await;
    assert_eq!(status, Status::OK, "{body}");
}

async fn the_handshake_echoes_the_challenge_only_for_our_verification_token(case: &OuraCase, backend: Backend) {
    let app = app_for(case, backend).await;
    let token = "oura-verify-2f9c41";
    put_webhook_secret(&app, token).await;
    let path =
        |t: &str| format!("/v1/wearables/oura/webhook/{}?verification_token={t}&challenge=c7a1e0", app.project_id);
    let (status, body) = app.send("GET", &path(token), None, None).await;
    assert_eq!((status, body), (Status::OK, json!({"challenge": "c7a1e0"})));
    for wrong in ["oura-verify-2f9c42", "", "oura-verify-2f9c41x"] {
        let (status, body) = app.send("GET", &path(wrong), None, None).await;
        assert_eq!(status, Status::FORBIDDEN, "{wrong:?}: {body}");
        assert_eq!(problem_code(&body, status), "rejected");
    }
    let (status, _) =
        app.send("GET", &format!("/v1/wearables/oura/webhook/{}?challenge=x", app.project_id), None, None).await;
    assert_eq!(status, Status::FORBIDDEN);
}

async fn subscriptions_are_made_per_event_and_data_type_and_renewed_before_they_expire(
    case: &OuraCase,
    backend: Backend,
) {
    let app = app_for(case, backend).await;
    case.oura.subscriptions_expire_in(3600);
    let (status, body) =
        app.send("POST", "/v1/wearables/oura/webhook-subscription", Some(&app.admin.clone()), None).await;
    assert_eq!(status, Status::OK, "{body}");
    assert_eq!(body["url"], app.url(&format!("/v1/wearables/oura/webhook/{}", app.project_id)));
    // 4 data types × create/update/delete, each URL checked with the project's verification token.
    assert_eq!(case.oura.subscription_calls("POST").len(), 12);
    assert_eq!(case.oura.lock().handshakes_passed, 12);
    assert_eq!(body["id"].as_str().unwrap().split(',').count(), 12);

    let setting = wearlink::webhooks::subscription_setting("oura");
    let record = |app: &crate::support::TestApp| {
        let store = app.services.store.clone();
        let setting = setting.clone();
        async move { store.list_setting_values(&setting).await.unwrap().into_iter().next().unwrap().1 }
    };
    let before = record(&app).await;
    let expiries = |r: &Value| -> Vec<i64> {
        r["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                chrono::DateTime::parse_from_rfc3339(s["expiration_time"].as_str().unwrap()).unwrap().timestamp_millis()
            })
            .collect()
    };
    assert_eq!(expiries(&before).len(), 12);
    assert!(expiries(&before).iter().all(|e| *e < now_ms() + 2 * 3_600_000));

    // Not yet within the renewal horizon: nothing renewed.
    let renewed =
        wearlink::webhooks::renew_subscriptions(&app.services, std::time::Duration::from_secs(60)).await.unwrap();
    assert_eq!(renewed, 0);
    assert!(case.oura.subscription_calls("PUT").is_empty());

    // Near expiry: every subscription is renewed at Oura, and the new expiries are kept.
    case.oura.subscriptions_expire_in(30 * 86_400);
    let renewed =
        wearlink::webhooks::renew_subscriptions(&app.services, std::time::Duration::from_secs(2 * 3600)).await.unwrap();
    assert_eq!(renewed, 1, "one project's subscriptions");
    let puts = case.oura.subscription_calls("PUT");
    assert_eq!(puts.len(), 12);
    for s in before["subscriptions"].as_array().unwrap() {
        assert!(puts.contains(&format!("/v2/webhook/subscription/renew/{}", s["id"].as_str().unwrap())));
    }
    let after = record(&app).await;
    assert!(expiries(&after).iter().all(|e| *e > now_ms() + 29 * 86_400_000), "{after}");
    // Renewed far ahead: the next pass leaves them alone.
    let renewed =
        wearlink::webhooks::renew_subscriptions(&app.services, std::time::Duration::from_secs(2 * 3600)).await.unwrap();
    assert_eq!(renewed, 0);

    // Subscribing again makes nothing new: Oura's existing subscriptions are kept (it would 409).
    let (status, body) =
        app.send("POST", "/v1/wearables/oura/webhook-subscription", Some(&app.admin.clone()), None).await;
    assert_eq!(status, Status::OK, "{body}");
    assert_eq!(case.oura.subscription_calls("POST").len(), 12);
}

async fn a_deleted_workout_is_entered_in_error(case: &OuraCase, backend: Backend) {
    let app = app_for(case, backend).await;
    let (patient, _, user) = connected(case, &app).await;
    sync_all(&app).await;
    let workout = case.seed_workout(&user, now_ms() - 7_200_000);
    let created = case.workout_delivery(&user, &workout, now_ms(), CLIENT_SECRET);
    let (status, body) = deliver(&app, "oura", &created).await;
    assert_eq!(status, Status::OK, "{body}");
    sync_all(&app).await;
    let sessions = search(&app, &format!("Procedure?patient=Patient/{patient}")).await;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(sessions[0]["status"], "completed");
    let observations = search(&app, &format!("Observation?patient=Patient/{patient}&_count=200")).await;
    assert_eq!(observations.len(), 3, "duration, distance, kcal: {observations:?}");

    let now = now_ms();
    let deleted = case.delivery(OuraCase::event("delete", "workout", &user, &workout, now), now, CLIENT_SECRET);
    let (status, body) = deliver(&app, "oura", &deleted).await;
    assert_eq!(status, Status::OK, "{body}");
    sync_all(&app).await;
    let sessions = search(&app, &format!("Procedure?patient=Patient/{patient}")).await;
    assert_eq!(sessions.len(), 1, "kept, not deleted: {sessions:?}");
    assert_eq!(sessions[0]["status"], "entered-in-error", "{}", sessions[0]);
    let observations = search(&app, &format!("Observation?patient=Patient/{patient}&_count=200")).await;
    assert_eq!(observations.len(), 3);
    assert!(observations.iter().all(|o| o["status"] == "entered-in-error"), "{observations:?}");
}

async fn sleep_daily_activity_and_spo2_arrive_paged_as_valid_r4(case: &OuraCase, backend: Backend) {
    let app = app_for(case, backend).await;
    let patient = app.create_patient().await;
    let (status, started) = app.connect("oura", json!({"patientId": patient})).await;
    assert_eq!(status, Status::OK, "{started}");
    let back = case.approve(started["authorizationUrl"].as_str().unwrap()).await;
    let user = case.last_user();
    // Three nights (more than one page of two), a nap, three days of activity, one SpO2.
    for n in 1..=3i64 {
        let end = now_ms() - n * 86_400_000;
        let day = iso(end, 3600)[..10].to_string();
        case.oura.seed(
            &user,
            "sleep",
            json!({
                "id": format!("sleep-{n}"), "day": day, "type": "long_sleep",
                "bedtime_start": iso(end - 8 * 3_600_000, 3600), "bedtime_end": iso(end, 3600),
                "total_sleep_duration": 25200, "deep_sleep_duration": 5400, "light_sleep_duration": 14400,
                "rem_sleep_duration": 5400, "awake_time": 3600, "lowest_heart_rate": 47 + n, "average_hrv": 40 + n,
            }),
        );
        case.oura.seed(
            &user,
            "daily_activity",
            json!({
                "id": format!("activity-{n}"), "day": day, "steps": 8000 + n, "active_calories": 400,
                "total_calories": 2400 + n, "equivalent_walking_distance": 6500,
            }),
        );
    }
    let nap_end = now_ms() - 86_400_000 + 6 * 3_600_000;
    case.oura.seed(&user, "sleep", json!({
        "id": "nap-1", "day": iso(nap_end, 3600)[..10], "type": "late_nap",
        "bedtime_start": iso(nap_end - 1_800_000, 3600), "bedtime_end": iso(nap_end, 3600),
        "total_sleep_duration": 1500, "deep_sleep_duration": 0, "light_sleep_duration": 1500, "rem_sleep_duration": 0,
        "lowest_heart_rate": 60,
    }));
    case.oura.seed(
        &user,
        "daily_spo2",
        json!({
            "id": "spo2-1", "day": iso(now_ms() - 86_400_000, 0)[..10], "spo2_percentage": {"average": 96.2},
        }),
    );
    let (status, _, page) = app.callback(&back).await;
    assert_eq!(status, Status::OK, "{page}");
    sync_all(&app).await;

    let all = search(&app, &format!("Observation?patient=Patient/{patient}&_count=200")).await;
    let count = |code: &str| all.iter().filter(|o| o["code"]["coding"][0]["code"] == code).count();
    assert_eq!(count("93832-4"), 4, "three nights and a nap");
    assert_eq!(count("40443-4"), 3, "resting heart rate of the main nights only");
    assert_eq!(count("hrv-rmssd"), 3);
    assert_eq!(count("41950-7"), 3);
    assert_eq!(count("41979-6"), 3);
    assert_eq!(count("daily-distance"), 3);
    assert_eq!(count("2708-6"), 1);
    // 4 sleeps × 4 durations + 3 × 2 vitals + 3 days × 3 + 1 SpO2.
    assert_eq!(all.len(), 16 + 6 + 9 + 1);

    if let Some(validator) = crate::support::FhirPartner::start().await {
        validator.validate_all(&all).await.unwrap_or_else(|e| panic!("invalid R4: {e}"));
    }
    let _ = stories::connection(&app, page["endpointId"].as_str().unwrap()).await;
}
