//! WHOOP API v2 told through the shared stories, plus what only WHOOP does: scores that arrive
//! later (PENDING_SCORE → SCORED), recovery webhooks, deletes, and its rate-limit headers.
//!
//! The stand-in behaves as https://developer.whoop.com documents it: the authorize page checks
//! client, scopes (space-separated) and a state of at least 8 characters; the token endpoint
//! takes the client in the form body, issues a refresh token only for `offline`, rotates it on
//! refresh (and issues none when the refresh form lacks `scope=offline`), answers RFC 6749
//! errors; the user id comes from `GET /developer/v2/user/profile/basic` (needs `read:profile`);
//! `DELETE /developer/v2/user/access` → 204; collections answer `{records, next_token}` with
//! `limit` ≤ 25; every data answer carries `X-RateLimit-Limit/-Remaining/-Reset`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine;
use reqwest::StatusCode as S;
use serde_json::{json, Value};
use wearlink::time::now_ms;

use crate::stories::{app_for, connected, connection, deliver, search, sync_all, Case, Delivery};
use crate::support::{problem_code, Backend, FhirPartner};

const CLIENT_ID: &str = "whoop-client-3f9a";
const CLIENT_SECRET: &str = "whoop-client-secret-c41e";
const SCOPE: &str = "offline read:profile read:workout read:sleep read:recovery read:cycles";
/// `X-RateLimit-*` of one answer.
type RateHeaders = [(&'static str, String); 3];

const RATE_LIMIT: &str = "100, 100;window=60, 10000;window=86400";

#[derive(Default)]
struct Inner {
    next_user: u64,
    /// code → (redirect_uri, user, scope)
    codes: HashMap<String, (String, u64, String)>,
    /// access token → user (valid ones)
    access: HashMap<String, u64>,
    /// refresh token → user (valid ones; each works once)
    refresh: HashMap<String, u64>,
    issued: Vec<String>,
    refreshes: HashMap<u64, usize>,
    revoked: Vec<String>,
    expires_in: i64,
    /// Records by user: (kind, record).
    records: HashMap<u64, Vec<(&'static str, Value)>>,
    /// Data requests answer 429 while this is > 0 (counting down).
    too_many: usize,
    /// Requests in the current minute.
    minute_used: i64,
    data_requests: Vec<String>,
}

#[derive(Clone)]
pub struct WhoopStandIn {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl WhoopStandIn {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stand_in = WhoopStandIn {
            addr: listener.local_addr().unwrap(),
            inner: Arc::new(Mutex::new(Inner { next_user: 10128, expires_in: 3600, ..Default::default() })),
        };
        let app = Router::new()
            .route("/oauth/oauth2/auth", get(authorize))
            .route("/oauth/oauth2/token", post(token))
            .route("/developer/v2/user/profile/basic", get(profile))
            .route("/developer/v2/user/access", delete(revoke))
            .route("/developer/v2/activity/workout", get(|s, h, q| collection(s, h, q, "workout")))
            .route("/developer/v2/activity/sleep", get(|s, h, q| collection(s, h, q, "sleep")))
            .route("/developer/v2/recovery", get(|s, h, q| collection(s, h, q, "recovery")))
            .route("/developer/v2/cycle", get(|s, h, q| collection(s, h, q, "cycle")))
            .route("/developer/v2/activity/workout/{id}", get(|s, h, p| one(s, h, p, "workout")))
            .route("/developer/v2/activity/sleep/{id}", get(|s, h, p| one(s, h, p, "sleep")))
            .route("/developer/v2/cycle/{id}", get(|s, h, p| one(s, h, p, "cycle")))
            .route("/developer/v2/cycle/{id}/recovery", get(|s, h, p| one(s, h, p, "recovery")))
            .with_state(stand_in.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        stand_in
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn issue(&self, user: u64, with_refresh: bool) -> Value {
        let access = format!("whoop-access-{}", uuid::Uuid::new_v4().simple());
        let mut inner = self.inner.lock().unwrap();
        inner.access.retain(|_, u| *u != user);
        inner.access.insert(access.clone(), user);
        inner.issued.push(access.clone());
        let mut answer =
            json!({"access_token": access, "expires_in": inner.expires_in, "scope": SCOPE, "token_type": "bearer"});
        if with_refresh {
            let refresh = format!("whoop-refresh-{}", uuid::Uuid::new_v4().simple());
            inner.refresh.insert(refresh.clone(), user);
            inner.issued.push(refresh.clone());
            answer["refresh_token"] = json!(refresh);
        }
        answer
    }

    fn bearer_user(&self, headers: &HeaderMap) -> Option<u64> {
        let token = headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")?;
        self.inner.lock().unwrap().access.get(token).copied()
    }

    pub fn add(&self, user: u64, kind: &'static str, record: Value) {
        let mut inner = self.inner.lock().unwrap();
        let list = inner.records.entry(user).or_default();
        let key = if kind == "recovery" { "sleep_id" } else { "id" };
        list.retain(|(k, r)| !(*k == kind && r[key] == record[key]));
        list.push((kind, record));
    }

    /// The next `n` data requests answer 429 (the budget of the app is spent).
    pub fn refuse_next(&self, n: usize) {
        self.inner.lock().unwrap().too_many = n;
    }

    pub fn data_requests(&self) -> Vec<String> {
        self.inner.lock().unwrap().data_requests.clone()
    }

    /// `X-RateLimit-*` of an answer.
    fn rate_headers(&self, refused: bool) -> RateHeaders {
        let mut inner = self.inner.lock().unwrap();
        inner.minute_used += 1;
        let remaining = if refused { 0 } else { (100 - inner.minute_used).max(0) };
        [
            ("x-ratelimit-limit", RATE_LIMIT.to_string()),
            ("x-ratelimit-remaining", remaining.to_string()),
            ("x-ratelimit-reset", if refused { "120".into() } else { "30".into() }),
        ]
    }

    /// The common part of a data request: the token, a 429 when told so.
    fn data_gate(&self, headers: &HeaderMap, path: String) -> Result<(u64, RateHeaders), Box<Response>> {
        self.inner.lock().unwrap().data_requests.push(path);
        let refused = {
            let mut inner = self.inner.lock().unwrap();
            let refuse = inner.too_many > 0;
            inner.too_many = inner.too_many.saturating_sub(1);
            refuse
        };
        let rate = self.rate_headers(refused);
        if refused {
            let body = Json(json!({"error": "Too Many Requests"}));
            return Err(Box::new((StatusCode::TOO_MANY_REQUESTS, rate, body).into_response()));
        }
        match self.bearer_user(headers) {
            Some(user) => Ok((user, rate)),
            None => {
                let body = Json(json!({"error": "Authorization was not valid"}));
                Err(Box::new((StatusCode::UNAUTHORIZED, rate, body).into_response()))
            }
        }
    }
}

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({"error": error, "error_description": format!("stand-in: {error}")}))).into_response()
}

async fn authorize(State(s): State<WhoopStandIn>, Query(q): Query<HashMap<String, String>>) -> Response {
    let field = |k: &str| q.get(k).cloned().unwrap_or_default();
    if field("client_id") != CLIENT_ID || field("response_type") != "code" {
        return (StatusCode::BAD_REQUEST, "bad client_id or response_type").into_response();
    }
    if field("scope") != SCOPE {
        return (StatusCode::BAD_REQUEST, format!("unexpected scope {:?}", field("scope"))).into_response();
    }
    // WHOOP refuses a state shorter than 8 characters.
    if field("state").len() < 8 || q.contains_key("code_challenge") {
        return (StatusCode::BAD_REQUEST, "state too short, or PKCE WHOOP does not speak").into_response();
    }
    let redirect_uri = field("redirect_uri");
    let mut back = url::Url::parse(&redirect_uri).unwrap();
    let code = format!("whoop-code-{}", uuid::Uuid::new_v4().simple());
    {
        let mut inner = s.inner.lock().unwrap();
        inner.next_user += 1;
        let user = inner.next_user;
        inner.codes.insert(code.clone(), (redirect_uri, user, field("scope")));
    }
    back.query_pairs_mut().append_pair("code", &code).append_pair("scope", SCOPE).append_pair("state", &field("state"));
    (StatusCode::FOUND, [(header::LOCATION, back.to_string())]).into_response()
}

async fn token(State(s): State<WhoopStandIn>, Form(form): Form<HashMap<String, String>>) -> Response {
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    if field("client_id") != CLIENT_ID || field("client_secret") != CLIENT_SECRET {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    match field("grant_type").as_str() {
        "authorization_code" => {
            let taken = s.inner.lock().unwrap().codes.remove(&field("code"));
            match taken {
                Some((uri, user, scope)) if uri == field("redirect_uri") => {
                    let offline = scope.split(' ').any(|s| s == "offline");
                    Json(s.issue(user, offline)).into_response()
                }
                _ => oauth_error(StatusCode::BAD_REQUEST, "invalid_grant"),
            }
        }
        "refresh_token" => {
            let user = {
                let mut inner = s.inner.lock().unwrap();
                let user = inner.refresh.remove(&field("refresh_token"));
                if let Some(user) = user {
                    *inner.refreshes.entry(user).or_default() += 1;
                }
                user
            };
            let Some(user) = user else { return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant") };
            // Without `scope=offline` WHOOP hands out no new refresh token (and the old one is spent).
            let offline = field("scope").split(' ').any(|s| s == "offline");
            Json(s.issue(user, offline)).into_response()
        }
        _ => oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    }
}

async fn profile(State(s): State<WhoopStandIn>, headers: HeaderMap) -> Response {
    match s.bearer_user(&headers) {
        Some(user) => {
            Json(json!({"user_id": user, "email": "ada@example.com", "first_name": "Ada", "last_name": "Runner"}))
                .into_response()
        }
        None => (StatusCode::UNAUTHORIZED, Json(json!({"error": "Authorization was not valid"}))).into_response(),
    }
}

async fn revoke(State(s): State<WhoopStandIn>, headers: HeaderMap) -> Response {
    let Some(user) = s.bearer_user(&headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let mut inner = s.inner.lock().unwrap();
    inner.access.retain(|_, u| *u != user);
    inner.refresh.retain(|_, u| *u != user);
    inner.revoked.push(user.to_string());
    StatusCode::NO_CONTENT.into_response()
}

/// Where a record sits in time, for `start`/`end` filtering.
fn record_time(kind: &str, record: &Value) -> String {
    let key = if kind == "recovery" { "created_at" } else { "start" };
    record[key].as_str().unwrap_or_default().to_string()
}

async fn collection(
    State(s): State<WhoopStandIn>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    kind: &'static str,
) -> Response {
    let (user, rate) = match s.data_gate(&headers, format!("/{kind}")) {
        Ok(ok) => ok,
        Err(answer) => return *answer,
    };
    let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(10);
    if limit == 0 || limit > 25 {
        return (StatusCode::BAD_REQUEST, rate, Json(json!({"error": "limit must be at most 25"}))).into_response();
    }
    let parse = |k: &str| q.get(k).map(|t| chrono::DateTime::parse_from_rfc3339(t).map(|d| d.timestamp_millis()));
    let (start, end) = match (parse("start"), parse("end")) {
        (Some(Ok(a)), Some(Ok(b))) => (a, b),
        (None, None) => (i64::MIN, i64::MAX),
        _ => return (StatusCode::BAD_REQUEST, rate, Json(json!({"error": "start/end"}))).into_response(),
    };
    let mut matching: Vec<Value> = s
        .inner
        .lock()
        .unwrap()
        .records
        .get(&user)
        .into_iter()
        .flatten()
        .filter(|(k, r)| {
            let at = chrono::DateTime::parse_from_rfc3339(&record_time(kind, r)).map(|d| d.timestamp_millis());
            *k == kind && at.is_ok_and(|at| at >= start && at < end)
        })
        .map(|(_, r)| r.clone())
        .collect();
    // Newest first, as WHOOP sorts.
    matching.sort_by_key(|r| std::cmp::Reverse(record_time(kind, r)));
    let offset: usize = match q.get("nextToken") {
        Some(t) => match base64::engine::general_purpose::STANDARD
            .decode(t)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.parse().ok())
        {
            Some(o) => o,
            None => return (StatusCode::BAD_REQUEST, rate, Json(json!({"error": "nextToken"}))).into_response(),
        },
        None => 0,
    };
    let page: Vec<Value> = matching.iter().skip(offset).take(limit).cloned().collect();
    let next = (offset + limit < matching.len())
        .then(|| base64::engine::general_purpose::STANDARD.encode((offset + limit).to_string()));
    (StatusCode::OK, rate, Json(json!({"records": page, "next_token": next}))).into_response()
}

async fn one(
    State(s): State<WhoopStandIn>,
    headers: HeaderMap,
    Path(id): Path<String>,
    kind: &'static str,
) -> Response {
    let (user, rate) = match s.data_gate(&headers, format!("/{kind}/{id}")) {
        Ok(ok) => ok,
        Err(answer) => return *answer,
    };
    let key = if kind == "recovery" { "cycle_id" } else { "id" };
    let found = s
        .inner
        .lock()
        .unwrap()
        .records
        .get(&user)
        .into_iter()
        .flatten()
        .find_map(|(k, r)| (*k == kind && id_of(&r[key]) == id).then(|| r.clone()));
    match found {
        Some(record) => (StatusCode::OK, rate, Json(record)).into_response(),
        None => (StatusCode::NOT_FOUND, rate, Json(json!({"error": "Not Found"}))).into_response(),
    }
}

fn id_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A v2 workout as WHOOP documents it; `scored` decides its `score_state`.
pub fn workout_json(id: &str, user: u64, start_ms: i64, scored: bool) -> Value {
    let mut w = json!({
        "id": id, "v1_id": 1043, "user_id": user,
        "created_at": iso(start_ms + 3_000_000), "updated_at": iso(start_ms + 3_000_000),
        "start": iso(start_ms), "end": iso(start_ms + 2_700_000), "timezone_offset": "-05:00",
        "sport_name": "running", "sport_id": 0,
        "score_state": if scored { "SCORED" } else { "PENDING_SCORE" },
    });
    if scored {
        w["score"] = json!({"strain": 8.2463, "average_heart_rate": 123, "max_heart_rate": 146, "kilojoule": 1569.34,
            "percent_recorded": 100, "distance_meter": 1772.77, "altitude_gain_meter": 46.64, "altitude_change_meter": -0.78,
            "zone_durations": {"zone_zero_milli": 300000, "zone_one_milli": 600000, "zone_two_milli": 900000,
            "zone_three_milli": 900000, "zone_four_milli": 0, "zone_five_milli": 0}});
    }
    w
}

pub fn recovery_json(sleep_id: &str, cycle_id: u64, user: u64, created_ms: i64) -> Value {
    json!({"cycle_id": cycle_id, "sleep_id": sleep_id, "user_id": user, "created_at": iso(created_ms),
        "updated_at": iso(created_ms), "score_state": "SCORED",
        "score": {"user_calibrating": false, "recovery_score": 44, "resting_heart_rate": 64,
        "hrv_rmssd_milli": 31.813562, "spo2_percentage": 95.6875, "skin_temp_celsius": 33.7}})
}

/// base64 HMAC-SHA256(secret, timestamp + body): WHOOP's `X-WHOOP-Signature`, computed here
/// independently of the code under test.
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

pub struct WhoopCase {
    pub stand_in: WhoopStandIn,
}

impl WhoopCase {
    pub async fn start() -> Self {
        Self { stand_in: WhoopStandIn::start().await }
    }

    pub fn event(&self, user: &str, kind: &str, id: Value, at_ms: i64, secret: &str) -> Delivery {
        let body = json!({"user_id": user.parse::<u64>().unwrap(), "id": id, "type": kind,
            "trace_id": uuid::Uuid::new_v4().to_string()});
        let bytes = serde_json::to_vec(&body).unwrap();
        let timestamp = at_ms.to_string();
        let headers = vec![
            ("x-whoop-signature".to_string(), sign(secret, &timestamp, &bytes)),
            ("x-whoop-signature-timestamp".to_string(), timestamp),
            ("content-type".to_string(), "application/json".to_string()),
        ];
        Delivery { method: "POST", headers, body: bytes, query: Vec::new() }
    }
}

#[async_trait]
impl Case for WhoopCase {
    fn slug(&self) -> &'static str {
        "whoop"
    }

    fn env(&self) -> Vec<(String, String)> {
        let s = &self.stand_in;
        vec![
            ("WEARLINK_PROVIDER_WHOOP_AUTHORIZE_URL".into(), s.url("/oauth/oauth2/auth")),
            ("WEARLINK_PROVIDER_WHOOP_TOKEN_URL".into(), s.url("/oauth/oauth2/token")),
            ("WEARLINK_PROVIDER_WHOOP_API_URL".into(), s.url("/developer")),
        ]
    }

    fn client(&self) -> (String, String) {
        (CLIENT_ID.into(), CLIENT_SECRET.into())
    }

    fn granted_scopes(&self) -> Vec<String> {
        let mut scopes: Vec<String> = SCOPE.split(' ').map(String::from).collect();
        scopes.sort();
        scopes
    }

    fn last_user(&self) -> String {
        self.stand_in.inner.lock().unwrap().next_user.to_string()
    }

    fn issued_tokens(&self) -> Vec<String> {
        self.stand_in.inner.lock().unwrap().issued.clone()
    }

    fn expire_soon(&self) {
        self.stand_in.inner.lock().unwrap().expires_in = 30;
    }

    fn refreshes(&self, user: &str) -> usize {
        let user: u64 = user.parse().unwrap();
        self.stand_in.inner.lock().unwrap().refreshes.get(&user).copied().unwrap_or(0)
    }

    fn kill_grant(&self, user: &str) {
        let user: u64 = user.parse().unwrap();
        self.stand_in.inner.lock().unwrap().refresh.retain(|_, u| *u != user);
    }

    fn revoked(&self) -> Vec<String> {
        self.stand_in.inner.lock().unwrap().revoked.clone()
    }

    fn seed_workout(&self, user: &str, start_ms: i64) -> String {
        let id = uuid::Uuid::new_v4().to_string();
        self.stand_in.add(user.parse().unwrap(), "workout", workout_json(&id, user.parse().unwrap(), start_ms, true));
        id
    }

    fn workout_identifier_system(&self) -> String {
        "https://api.prod.whoop.com/developer/v2/activity/workout".into()
    }

    fn workout_delivery(&self, user: &str, workout_id: &str, at_ms: i64, secret: &str) -> Delivery {
        self.event(user, "workout.updated", json!(workout_id), at_ms, secret)
    }
}

crate::provider_stories!(crate::whoop::WhoopCase::start();
    connect_approve_and_see_the_endpoint,
    a_declined_connect_stores_nothing,
    refresh_rotates_and_a_dead_grant_marks_the_connection_error,
    disconnect_revokes_upstream,
    webhook_signatures_are_checked_and_events_stored_once,
    two_instances_racing_refresh_it_once,
    backfill_and_webhook_data_arrive_as_valid_r4,
);

crate::own_stories!(
    a_pending_workout_gets_its_measures_when_scored,
    a_recovery_event_writes_the_days_vitals,
    a_deleted_workout_is_entered_in_error,
    a_429_parks_the_sync_until_the_window_resets,
    subscribing_says_the_url_is_set_in_the_dashboard,
);

fn codes(observations: &[Value]) -> Vec<String> {
    let mut codes: Vec<String> =
        observations.iter().map(|o| o["code"]["coding"][0]["code"].as_str().unwrap().to_string()).collect();
    codes.sort();
    codes
}

/// PENDING_SCORE: the session and its duration, no energy or heart rate; the SCORED update that
/// follows writes them, kcal from kJ.
async fn a_pending_workout_gets_its_measures_when_scored(backend: Backend) {
    let case = WhoopCase::start().await;
    let app = app_for(&case, backend).await;
    let (patient, _, user) = connected(&case, &app).await;
    sync_all(&app).await;
    let uid: u64 = user.parse().unwrap();
    let id = uuid::Uuid::new_v4().to_string();
    let start = now_ms() - 3_600_000;
    case.stand_in.add(uid, "workout", workout_json(&id, uid, start, false));
    let (status, body) =
        deliver(&app, "whoop", &case.event(&user, "workout.updated", json!(id), now_ms(), CLIENT_SECRET)).await;
    assert_eq!(status, S::OK, "{body}");
    sync_all(&app).await;
    assert_eq!(search(&app, &format!("Procedure?patient=Patient/{patient}")).await.len(), 1);
    let observations = search(&app, &format!("Observation?patient=Patient/{patient}")).await;
    assert_eq!(codes(&observations), vec!["55411-3"], "unscored: duration only");

    case.stand_in.add(uid, "workout", workout_json(&id, uid, start, true));
    let (status, body) =
        deliver(&app, "whoop", &case.event(&user, "workout.updated", json!(id), now_ms(), CLIENT_SECRET)).await;
    assert_eq!(status, S::OK, "{body}");
    sync_all(&app).await;
    let observations = search(&app, &format!("Observation?patient=Patient/{patient}")).await;
    assert_eq!(codes(&observations), vec!["55411-3", "55424-6", "55425-3", "55426-1", "distance"]);
    let kcal = observations.iter().find(|o| o["code"]["coding"][0]["code"] == "55424-6").unwrap();
    assert_eq!(kcal["valueQuantity"]["value"], json!(375.1), "1569.34 kJ / 4.184");
    assert_eq!(search(&app, &format!("Procedure?patient=Patient/{patient}")).await.len(), 1);
}

/// A v2 `recovery.updated` (naming the sleep) writes resting HR, HRV and SpO2 for the day.
async fn a_recovery_event_writes_the_days_vitals(backend: Backend) {
    let case = WhoopCase::start().await;
    let app = app_for(&case, backend).await;
    let (patient, _, user) = connected(&case, &app).await;
    sync_all(&app).await;
    let uid: u64 = user.parse().unwrap();
    let sleep_id = uuid::Uuid::new_v4().to_string();
    case.stand_in.add(uid, "recovery", recovery_json(&sleep_id, 93845, uid, now_ms() - 1_800_000));
    let delivery = case.event(&user, "recovery.updated", json!(sleep_id), now_ms(), CLIENT_SECRET);
    let (status, body) = deliver(&app, "whoop", &delivery).await;
    assert_eq!(status, S::OK, "{body}");
    sync_all(&app).await;
    let observations = search(&app, &format!("Observation?patient=Patient/{patient}")).await;
    assert_eq!(codes(&observations), vec!["2708-6", "40443-4", "hrv-rmssd"]);
    let rhr = observations.iter().find(|o| o["code"]["coding"][0]["code"] == "40443-4").unwrap();
    assert_eq!(rhr["valueQuantity"]["value"], json!(64));
    assert!(rhr["identifier"].to_string().contains(&sleep_id), "{rhr}");
    if let Some(validator) = FhirPartner::start().await {
        validator.validate_all(&observations).await.unwrap_or_else(|e| panic!("invalid R4: {e}"));
    }
}

/// `workout.deleted` → the session and its measures are kept as `entered-in-error`.
async fn a_deleted_workout_is_entered_in_error(backend: Backend) {
    let case = WhoopCase::start().await;
    let app = app_for(&case, backend).await;
    let (patient, _, user) = connected(&case, &app).await;
    let id = case.seed_workout(&user, now_ms() - 3_600_000);
    deliver(&app, "whoop", &case.workout_delivery(&user, &id, now_ms(), CLIENT_SECRET)).await;
    sync_all(&app).await;
    let (status, body) =
        deliver(&app, "whoop", &case.event(&user, "workout.deleted", json!(id), now_ms(), CLIENT_SECRET)).await;
    assert_eq!(status, S::OK, "{body}");
    sync_all(&app).await;
    let sessions = search(&app, &format!("Procedure?patient=Patient/{patient}")).await;
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["status"], "entered-in-error", "{}", sessions[0]);
    let observations = search(&app, &format!("Observation?patient=Patient/{patient}")).await;
    assert!(!observations.is_empty());
    assert!(observations.iter().all(|o| o["status"] == "entered-in-error"));
}

/// A 429 with WHOOP's headers parks the backfill until the window resets: `paused`, with
/// `rateLimitedUntil`, never an error.
async fn a_429_parks_the_sync_until_the_window_resets(backend: Backend) {
    let case = WhoopCase::start().await;
    let app = app_for(&case, backend).await;
    case.stand_in.refuse_next(1);
    let (_, endpoint_id, _) = connected(&case, &app).await;
    let before = now_ms();
    app.sync().await;
    let c = connection(&app, &endpoint_id).await;
    let until = c["sync"]["rateLimitedUntil"].as_i64().unwrap_or_else(|| panic!("not parked: {c}"));
    assert!(until >= before + 100_000 && until <= now_ms() + 121_000, "X-RateLimit-Reset 120 s: {c}");
    assert_eq!(c["sync"]["state"], "paused", "{c}");
    assert!(c["sync"]["lastError"].is_null(), "{c}");
    assert_eq!(c["status"], "active");
    // Parked: nothing goes out before the reset.
    let requests = case.stand_in.data_requests().len();
    app.sync().await;
    assert_eq!(case.stand_in.data_requests().len(), requests);
}

/// WHOOP has no subscription API: a clear 502 problem, not a 500.
async fn subscribing_says_the_url_is_set_in_the_dashboard(backend: Backend) {
    let case = WhoopCase::start().await;
    let app = app_for(&case, backend).await;
    let (status, body) =
        app.send("POST", "/v1/wearables/whoop/webhook-subscription", Some(&app.admin.clone()), None).await;
    assert_eq!(status, S::BAD_GATEWAY, "{body}");
    assert_eq!(problem_code(&body, status), "upstream_failed");
    assert!(body["detail"].as_str().unwrap().contains("portal"), "{body}");
}

#[test]
fn the_stand_ins_signature_matches_the_spec_vector() {
    let body = br#"{"user_id":10129,"id":"ecfc6a15-4661-442f-a9a4-f160dd7afae8","type":"sleep.updated","trace_id":"e369c784-5100-49e8-8098-75d35c47b31b"}"#;
    assert_eq!(sign("test_client_secret", "1748241241000", body), "HqrOdNk7edrilyDPPstLzI9L97ttliL3HIj5bWyVyP0=");
}
