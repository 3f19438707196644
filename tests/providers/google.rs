//! Google Health API: a stand-in that behaves as Google's docs say (OAuth 2.0 with PKCE S256 on
//! accounts.google.com / oauth2.googleapis.com, users.getIdentity, dataPoints.list with AIP-160
//! filters and page tokens, projects.subscribers.create with its two verification POSTs), the
//! `Case` for the shared stories, and the stories only Google has.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::EncodePublicKey;
use reqwest::StatusCode as S;
use serde_json::{json, Value};
use sha2::Digest;
use wearlink::time::now_ms;

use crate::stories::{self, app_for, connected, deliver, Case, Delivery};
use crate::support::{Backend, Options, TestApp};

const CLIENT_ID: &str = "123456789012-wl4t3st.apps.googleusercontent.com";
const CLIENT_SECRET: &str = "GOCSPX-google-client-secret-5e1f";
const WEBHOOK_SECRET: &str = "google-hook-secret-8a0c";
const SCOPES: &[&str] = &[
    "https://www.googleapis.com/auth/googlehealth.activity_and_fitness.readonly",
    "https://www.googleapis.com/auth/googlehealth.health_metrics_and_measurements.readonly",
    "https://www.googleapis.com/auth/googlehealth.sleep.readonly",
    "https://www.googleapis.com/auth/googlehealth.profile.readonly",
];

/// A subscriber creation as received: (project, query, body, verification answers).
type SubscriberRequest = (String, HashMap<String, String>, Value, Vec<u16>);

struct Grant {
    user: String,
    redirect_uri: String,
    challenge: String,
    scopes: Vec<String>,
}

#[derive(Default)]
struct Inner {
    next_user: u32,
    last_user: Option<String>,
    codes: HashMap<String, Grant>,
    /// access token → (user, expires at ms, scopes)
    access: HashMap<String, (String, i64, Vec<String>)>,
    /// refresh token → user (Google's do not rotate: one per grant, valid until revoked)
    refresh: HashMap<String, String>,
    refreshes: HashMap<String, usize>,
    issued: Vec<String>,
    revoked: Vec<String>,
    expires_in: i64,
    /// The next approval grants only these scopes (the user unticks the others).
    grant_only: Option<Vec<String>>,
    /// Exercise data points per user: (id, start ms, minutes).
    exercises: HashMap<String, Vec<(String, i64, i64)>>,
    next_point: u64,
    /// The subscriber creation requests: (path, query, body) and the verification answers.
    subscribers: Vec<SubscriberRequest>,
    list_calls: Vec<HashMap<String, String>>,
    /// Steps per user and civil day (`YYYY-MM-DD`).
    steps: HashMap<String, HashMap<String, u64>>,
    rollup_calls: Vec<(String, Value)>,
    /// Other data points per (user, data type), as Google would list them (sleep by start time,
    /// daily types by date).
    points: HashMap<(String, String), Vec<(i64, Value)>>,
    /// Refreshes answer 401 `unauthorized_client` (the OAuth client was deleted at Google).
    refresh_unauthorized: bool,
}

#[derive(Clone)]
pub struct GoogleStandIn {
    base: String,
    inner: Arc<Mutex<Inner>>,
}

fn google_error(status: StatusCode, reason: &str, message: &str) -> Response {
    (status, Json(json!({"error": {"code": status.as_u16(), "message": message, "status": reason}}))).into_response()
}

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({"error": error, "error_description": "Bad Request"}))).into_response()
}

impl GoogleStandIn {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let inner = Inner { expires_in: 3599, next_user: 100, ..Default::default() };
        let stand_in = GoogleStandIn { base, inner: Arc::new(Mutex::new(inner)) };
        let app = Router::new()
            .route("/o/oauth2/v2/auth", get(authorize))
            .route("/token", post(token))
            .route("/revoke", post(revoke))
            .route("/v4/users/me/identity", get(identity))
            .route("/v4/users/me/dataTypes/{data_type}/dataPoints", get(list_points))
            .route("/v4/users/me/dataTypes/{data_type}/dataPoints/{id}", get(get_point))
            .route("/v4/users/me/dataTypes/{data_type}/{method}", post(daily_roll_up))
            .route("/v4/projects/{project}/subscribers", post(create_subscriber))
            .with_state(stand_in.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        stand_in
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The user and scopes of a current bearer token.
    fn bearer(&self, headers: &HeaderMap) -> Option<(String, Vec<String>)> {
        let token = headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")?;
        let inner = self.inner.lock().unwrap();
        let (user, expires, scopes) = inner.access.get(token)?;
        (*expires > now_ms() && !inner.revoked.contains(user)).then(|| (user.clone(), scopes.clone()))
    }

    fn issue_access(&self, inner: &mut Inner, user: &str, scopes: &[String]) -> (String, i64) {
        let token = format!("ya29.{}", uuid::Uuid::new_v4().simple());
        let lifetime = inner.expires_in;
        inner.access.insert(token.clone(), (user.to_string(), now_ms() + lifetime * 1000, scopes.to_vec()));
        inner.issued.push(token.clone());
        (token, lifetime)
    }

    fn grant_only(&self, scopes: &[&str]) {
        self.inner.lock().unwrap().grant_only = Some(scopes.iter().map(|s| s.to_string()).collect());
    }

    fn subscribers(&self) -> Vec<SubscriberRequest> {
        self.inner.lock().unwrap().subscribers.clone()
    }
}

async fn authorize(State(s): State<GoogleStandIn>, Query(q): Query<HashMap<String, String>>) -> Response {
    let field = |k: &str| q.get(k).cloned().unwrap_or_default();
    if field("client_id") != CLIENT_ID || field("response_type") != "code" {
        return (StatusCode::BAD_REQUEST, "Error 401: invalid_client").into_response();
    }
    // Google: without access_type=offline there is no refresh token; without prompt=consent a
    // returning user gets none either. The stand-in insists on both.
    if field("access_type") != "offline" || field("prompt") != "consent" {
        return (StatusCode::BAD_REQUEST, "access_type=offline and prompt=consent expected").into_response();
    }
    if field("scope") != SCOPES.join(" ") || field("state").is_empty() {
        return (StatusCode::BAD_REQUEST, "Error 400: invalid_scope").into_response();
    }
    let challenge = field("code_challenge");
    if field("code_challenge_method") != "S256" || challenge.len() != 43 {
        return (StatusCode::BAD_REQUEST, "Error 400: invalid_request (code_challenge)").into_response();
    }
    let mut back = url::Url::parse(&field("redirect_uri")).unwrap();
    let code = format!("4/0A{}", uuid::Uuid::new_v4().simple());
    let mut inner = s.inner.lock().unwrap();
    inner.next_user += 1;
    let user = format!("NGL8Q2-{}", inner.next_user);
    inner.last_user = Some(user.clone());
    let scopes = inner.grant_only.take().unwrap_or_else(|| SCOPES.iter().map(|s| s.to_string()).collect());
    back.query_pairs_mut()
        .append_pair("state", &field("state"))
        .append_pair("code", &code)
        .append_pair("scope", &scopes.join(" "));
    inner.codes.insert(code, Grant { user, redirect_uri: field("redirect_uri"), challenge, scopes });
    (StatusCode::FOUND, [(header::LOCATION, back.to_string())]).into_response()
}

async fn token(State(s): State<GoogleStandIn>, Form(form): Form<HashMap<String, String>>) -> Response {
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    if field("client_id") != CLIENT_ID || field("client_secret") != CLIENT_SECRET {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let mut inner = s.inner.lock().unwrap();
    match field("grant_type").as_str() {
        "authorization_code" => {
            let Some(grant) = inner.codes.remove(&field("code")) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            };
            if grant.redirect_uri != field("redirect_uri") {
                return oauth_error(StatusCode::BAD_REQUEST, "redirect_uri_mismatch");
            }
            // RFC 7636 S256: BASE64URL(SHA256(verifier)) must be the challenge of the authorize step.
            let verifier = field("code_verifier");
            let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&verifier));
            if verifier.len() < 43 || computed != grant.challenge {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            let (access, expires_in) = s.issue_access(&mut inner, &grant.user, &grant.scopes);
            let refresh = format!("1//0g{}", uuid::Uuid::new_v4().simple());
            inner.refresh.insert(refresh.clone(), grant.user.clone());
            inner.issued.push(refresh.clone());
            Json(json!({"access_token": access, "expires_in": expires_in, "refresh_token": refresh,
                "scope": grant.scopes.join(" "), "token_type": "Bearer"}))
            .into_response()
        }
        "refresh_token" if inner.refresh_unauthorized => oauth_error(StatusCode::UNAUTHORIZED, "unauthorized_client"),
        "refresh_token" => {
            let Some(user) = inner.refresh.get(&field("refresh_token")).cloned() else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            };
            let scopes = SCOPES.iter().map(|s| s.to_string()).collect::<Vec<_>>();
            let (access, expires_in) = s.issue_access(&mut inner, &user, &scopes);
            *inner.refreshes.entry(user).or_default() += 1;
            // No refresh_token: Google's do not rotate.
            Json(json!({"access_token": access, "expires_in": expires_in, "scope": scopes.join(" "), "token_type": "Bearer"}))
                .into_response()
        }
        _ => oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    }
}

/// `POST /revoke?token=…` or with `token` in the form: revokes the whole grant.
async fn revoke(State(s): State<GoogleStandIn>, Query(q): Query<HashMap<String, String>>, body: String) -> Response {
    let form: HashMap<String, String> = serde_urlencoded::from_str(&body).unwrap_or_default();
    let token = q.get("token").or(form.get("token")).cloned().unwrap_or_default();
    let mut inner = s.inner.lock().unwrap();
    let user = inner.access.get(&token).map(|(u, _, _)| u.clone()).or_else(|| inner.refresh.get(&token).cloned());
    match user {
        Some(user) if !inner.revoked.contains(&user) => {
            inner.refresh.retain(|_, u| *u != user);
            inner.revoked.push(user);
            (StatusCode::OK, Json(json!({}))).into_response()
        }
        _ => oauth_error(StatusCode::BAD_REQUEST, "invalid_token"),
    }
}

async fn identity(State(s): State<GoogleStandIn>, headers: HeaderMap) -> Response {
    let Some((user, _)) = s.bearer(&headers) else {
        return google_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
        );
    };
    Json(json!({"name": "users/me/identity", "legacyUserId": "", "healthUserId": user})).into_response()
}

fn exercise_point(user: &str, id: &str, start: i64, minutes: i64) -> Value {
    let at = |ms: i64| {
        chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    json!({
        "name": format!("users/{user}/dataTypes/exercise/dataPoints/{id}"),
        "dataSource": {"recordingMethod": "PASSIVELY_MEASURED", "device": {"displayName": "Pixel Watch 3"}},
        "exercise": {
            "interval": {"startTime": at(start), "startUtcOffset": "3600s", "endTime": at(start + minutes * 60_000), "endUtcOffset": "3600s"},
            "exerciseType": "RUNNING",
            "displayName": "Run",
            "activeDuration": format!("{}s", minutes * 60 - 120),
            "metricsSummary": {"caloriesKcal": 512.5, "distanceMillimeters": "8012300", "steps": "7420",
                "averageHeartRateBeatsPerMinute": 148}
        }
    })
}

/// `start_time >= "…"` and `start_time < "…"` bounds of an AIP-160 filter.
fn bounds(filter: &str, field: &str) -> Option<(i64, i64)> {
    let value_after = |op: &str| {
        let needle = format!("{field} {op} \"");
        let rest = &filter[filter.find(&needle)? + needle.len()..];
        let text = &rest[..rest.find('"')?];
        chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_millis())
    };
    Some((value_after(">=")?, value_after("<")?))
}

async fn list_points(
    State(s): State<GoogleStandIn>,
    Path(data_type): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let Some((user, scopes)) = s.bearer(&headers) else {
        return google_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
        );
    };
    s.inner.lock().unwrap().list_calls.push(q.clone());
    let page_size: usize = q.get("pageSize").and_then(|p| p.parse().ok()).unwrap_or(1440);
    let session = data_type == "exercise" || data_type == "sleep";
    if page_size == 0 || page_size > if session { 25 } else { 10_000 } {
        return google_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "page_size out of range");
    }
    let needed = if data_type == "sleep" {
        "sleep"
    } else if data_type == "exercise" {
        "activity_and_fitness"
    } else {
        "health_metrics"
    };
    if !scopes.iter().any(|s| s.contains(needed)) {
        return google_error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "Request had insufficient authentication scopes.",
        );
    }
    let filter = q.get("filter").cloned().unwrap_or_default();
    if data_type != "exercise" {
        let field = data_type.replace('-', "_");
        let range = if data_type == "sleep" {
            bounds(&filter, "sleep.interval.start_time")
        } else {
            filter.contains(&format!("{field}.date >= \"")).then_some((i64::MIN, i64::MAX))
        };
        let Some((from, to)) = range else {
            return google_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "Invalid filter");
        };
        let inner = s.inner.lock().unwrap();
        let points: Vec<Value> = inner
            .points
            .get(&(user, data_type))
            .map(|v| v.iter().filter(|(at, _)| *at >= from && *at < to).map(|(_, p)| p.clone()).collect())
            .unwrap_or_default();
        return Json(if points.is_empty() { json!({}) } else { json!({"dataPoints": points}) }).into_response();
    }
    let Some((from, to)) = bounds(&filter, "exercise.interval.start_time") else {
        return google_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "Invalid filter");
    };
    let inner = s.inner.lock().unwrap();
    let mut all: Vec<&(String, i64, i64)> = inner
        .exercises
        .get(&user)
        .map(|v| v.iter().filter(|(_, st, _)| *st >= from && *st < to).collect())
        .unwrap_or_default();
    all.sort_by_key(|(_, st, _)| -st);
    let offset: usize =
        q.get("pageToken").and_then(|t| t.strip_prefix("page-")).and_then(|n| n.parse().ok()).unwrap_or(0);
    let page: Vec<Value> =
        all.iter().skip(offset).take(page_size).map(|(id, st, m)| exercise_point(&user, id, *st, *m)).collect();
    let mut answer = json!({"dataPoints": page});
    if offset + page_size < all.len() {
        answer["nextPageToken"] = json!(format!("page-{}", offset + page_size));
    }
    Json(answer).into_response()
}

async fn get_point(
    State(s): State<GoogleStandIn>,
    Path((data_type, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some((user, _)) = s.bearer(&headers) else {
        return google_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
        );
    };
    let inner = s.inner.lock().unwrap();
    let found = (data_type == "exercise")
        .then(|| inner.exercises.get(&user).and_then(|v| v.iter().find(|(i, _, _)| *i == id)))
        .flatten();
    match found {
        Some((id, st, m)) => Json(exercise_point(&user, id, *st, *m)).into_response(),
        None => google_error(StatusCode::NOT_FOUND, "NOT_FOUND", "Data point not found"),
    }
}

/// `POST …/dataTypes/{type}/dataPoints:dailyRollUp` (axum sees `dataPoints:dailyRollUp` as one
/// segment): one rollup data point per civil day of `[range.start, range.end)`, days
/// without data left out; ranges over 14 days (total-calories) or 90 days refused.
async fn daily_roll_up(
    State(s): State<GoogleStandIn>,
    Path((data_type, method)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if method != "dataPoints:dailyRollUp" {
        return google_error(StatusCode::NOT_FOUND, "NOT_FOUND", "Method not found");
    }
    let Some((user, _)) = s.bearer(&headers) else {
        return google_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
        );
    };
    let date = |v: &Value| {
        let d = &v["date"];
        chrono::NaiveDate::from_ymd_opt(
            d["year"].as_i64()? as i32,
            d["month"].as_u64()? as u32,
            d["day"].as_u64()? as u32,
        )
    };
    let (Some(start), Some(end)) = (date(&body["range"]["start"]), date(&body["range"]["end"])) else {
        return google_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "range is required");
    };
    let max = if data_type == "total-calories" { 14 } else { 90 };
    if end <= start || (end - start).num_days() > max {
        return google_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "range too long");
    }
    let mut inner = s.inner.lock().unwrap();
    inner.rollup_calls.push((data_type.clone(), body.clone()));
    let civil = |d: chrono::NaiveDate| json!({"date": {"year": chrono::Datelike::year(&d), "month": chrono::Datelike::month(&d), "day": chrono::Datelike::day(&d)}});
    let mut points = Vec::new();
    if data_type == "steps" {
        let mut day = start;
        while day < end {
            if let Some(count) = inner.steps.get(&user).and_then(|d| d.get(&day.format("%Y-%m-%d").to_string())) {
                let next = day.succ_opt().unwrap();
                points.push(json!({"civilStartTime": civil(day), "civilEndTime": civil(next), "steps": {"countSum": count.to_string()}}));
            }
            day = day.succ_opt().unwrap();
        }
    }
    Json(json!({"rollupDataPoints": points})).into_response()
}

/// projects.subscribers.create: verifies `endpointUri` with two POSTs of `{"type":"verification"}`
/// (with the Authorization secret → 201 expected; without → 401 or 403) before answering.
async fn create_subscriber(
    State(s): State<GoogleStandIn>,
    Path(project): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    Json(body): Json<Value>,
) -> Response {
    let endpoint = body["endpointUri"].as_str().unwrap_or_default().to_string();
    let secret = body["endpointAuthorization"]["secret"].as_str().unwrap_or_default().to_string();
    let http = reqwest::Client::new();
    let verification = json!({"type": "verification"});
    let with = http.post(&endpoint).header("authorization", &secret).json(&verification).send().await;
    let without = http.post(&endpoint).json(&verification).send().await;
    let statuses: Vec<u16> = [with, without].into_iter().map(|r| r.map(|r| r.status().as_u16()).unwrap_or(0)).collect();
    s.inner.lock().unwrap().subscribers.push((project.clone(), q.clone(), body.clone(), statuses.clone()));
    if statuses[0] != 201 || !(statuses[1] == 401 || statuses[1] == 403) {
        return google_error(StatusCode::BAD_REQUEST, "FAILED_PRECONDITION", "Endpoint verification failed");
    }
    let id = q.get("subscriberId").cloned().unwrap_or_else(|| "generated".into());
    Json(json!({"name": format!("projects/{project}/operations/op-{id}"), "done": true,
        "response": {"name": format!("projects/{project}/subscribers/{id}"), "endpointUri": endpoint}}))
    .into_response()
}

pub struct GoogleCase {
    stand_in: GoogleStandIn,
    signing_key: Option<SigningKey>,
}

impl GoogleCase {
    pub async fn start() -> Self {
        Self { stand_in: GoogleStandIn::start().await, signing_key: None }
    }

    /// With a payload-signing key configured (WEARLINK_PROVIDER_GOOGLE_SIGNATURE_KEY).
    pub async fn start_signing() -> Self {
        Self { stand_in: GoogleStandIn::start().await, signing_key: Some(SigningKey::random(&mut rand::rngs::OsRng)) }
    }

    fn notification(user: &str, start: i64, end: i64) -> Value {
        let at = |ms: i64| {
            chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        };
        json!({"healthUserId": user, "operation": "UPSERT", "dataType": "exercise",
            "intervals": [{"physicalTimeInterval": {"startTime": at(start), "endTime": at(end)}}]})
    }

    fn sign(&self, body: &[u8]) -> Option<String> {
        let signature: Signature = self.signing_key.as_ref()?.sign(body);
        Some(base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes()))
    }
}

#[async_trait]
impl Case for GoogleCase {
    fn slug(&self) -> &'static str {
        "google"
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("WEARLINK_PROVIDER_GOOGLE_AUTHORIZE_URL".into(), self.stand_in.url("/o/oauth2/v2/auth")),
            ("WEARLINK_PROVIDER_GOOGLE_TOKEN_URL".into(), self.stand_in.url("/token")),
            ("WEARLINK_PROVIDER_GOOGLE_REVOKE_URL".into(), self.stand_in.url("/revoke")),
            ("WEARLINK_PROVIDER_GOOGLE_API_URL".into(), self.stand_in.url("")),
        ];
        if let Some(key) = &self.signing_key {
            let pem = key.verifying_key().to_public_key_pem(p256::pkcs8::LineEnding::LF).unwrap();
            env.push(("WEARLINK_PROVIDER_GOOGLE_SIGNATURE_KEY".into(), pem));
        }
        env
    }

    fn client(&self) -> (String, String) {
        (CLIENT_ID.into(), CLIENT_SECRET.into())
    }

    fn webhook_secret(&self) -> Option<String> {
        Some(WEBHOOK_SECRET.into())
    }

    fn pkce(&self) -> bool {
        true
    }

    fn granted_scopes(&self) -> Vec<String> {
        let mut scopes: Vec<String> = SCOPES.iter().map(|s| s.to_string()).collect();
        scopes.sort();
        scopes
    }

    fn last_user(&self) -> String {
        self.stand_in.inner.lock().unwrap().last_user.clone().expect("an approval")
    }

    fn issued_tokens(&self) -> Vec<String> {
        self.stand_in.inner.lock().unwrap().issued.clone()
    }

    fn expire_soon(&self) {
        self.stand_in.inner.lock().unwrap().expires_in = 30;
    }

    fn refreshes(&self, user: &str) -> usize {
        self.stand_in.inner.lock().unwrap().refreshes.get(user).copied().unwrap_or(0)
    }

    fn kill_grant(&self, user: &str) {
        self.stand_in.inner.lock().unwrap().refresh.retain(|_, u| u != user);
    }

    fn revoked(&self) -> Vec<String> {
        self.stand_in.inner.lock().unwrap().revoked.clone()
    }

    fn seed_workout(&self, user: &str, start_ms: i64) -> String {
        let mut inner = self.stand_in.inner.lock().unwrap();
        inner.next_point += 1;
        let id = format!("72054899301865{:05}", inner.next_point);
        inner.exercises.entry(user.to_string()).or_default().push((id.clone(), start_ms / 1000 * 1000, 45));
        id
    }

    fn workout_identifier_system(&self) -> String {
        "https://health.googleapis.com/v4/dataTypes/exercise/dataPoints".into()
    }

    /// Google's notification for the exercise's interval, with the subscriber's Authorization.
    fn workout_delivery(&self, user: &str, workout_id: &str, _at_ms: i64, secret: &str) -> Delivery {
        let (start, minutes) = {
            let inner = self.stand_in.inner.lock().unwrap();
            let found = inner.exercises.get(user).and_then(|v| v.iter().find(|(i, _, _)| i == workout_id)).cloned();
            found.map(|(_, st, m)| (st, m)).expect("a seeded workout")
        };
        let body = Self::notification(user, start, start + minutes * 60_000);
        let mut headers = vec![("authorization".to_string(), format!("Bearer {secret}"))];
        if let Some(signature) = self.sign(&serde_json::to_vec(&body).unwrap()) {
            headers.push(("x-healthapi-signature".into(), signature));
        }
        Delivery::post_json(headers, &body)
    }

    /// Google signs no timestamp: a redelivery is a duplicate, not a replay.
    fn signs_timestamps(&self) -> bool {
        false
    }
}

crate::provider_stories!(super::GoogleCase::start();
    connect_approve_and_see_the_endpoint,
    a_declined_connect_stores_nothing,
    refresh_rotates_and_a_dead_grant_marks_the_connection_error,
    disconnect_revokes_upstream,
    webhook_signatures_are_checked_and_events_stored_once,
    two_instances_racing_refresh_it_once,
    backfill_and_webhook_data_arrive_as_valid_r4,
);

// ---- stories only Google has ----

fn verification(authorization: Option<&str>) -> Delivery {
    let headers = authorization.map(|a| vec![("authorization".to_string(), a.to_string())]).unwrap_or_default();
    Delivery::post_json(headers, &json!({"type": "verification"}))
}

/// Google's two verification POSTs: with our Authorization header → 201; without or wrong → 401.
async fn verification_posts_answer_201_only_with_our_authorization(backend: Backend) {
    let case = GoogleCase::start().await;
    let app = app_for(&case, backend).await;
    let (status, _) = deliver(&app, "google", &verification(Some(&format!("Bearer {WEBHOOK_SECRET}")))).await;
    assert_eq!(status, S::CREATED);
    let (status, _) = deliver(&app, "google", &verification(None)).await;
    assert_eq!(status, S::UNAUTHORIZED);
    let (status, _) = deliver(&app, "google", &verification(Some("Bearer not-the-secret"))).await;
    assert_eq!(status, S::UNAUTHORIZED);
    let (status, _) = deliver(&app, "google", &verification(Some(WEBHOOK_SECRET))).await;
    assert_eq!(status, S::UNAUTHORIZED, "the whole header value is the secret, scheme included");
    let (_, events) = app.get("/v1/wearables/events").await;
    assert_eq!(events["events"].as_array().unwrap().len(), 0, "{events}");
}

/// Creating the subscriber: Google gets our URL and `Bearer <secret>`, and its verification
/// POSTs pass (201, then 401).
async fn the_subscriber_is_created_with_our_url_and_bearer_secret(backend: Backend) {
    let case = GoogleCase::start().await;
    let app = app_for(&case, backend).await;
    let (status, body) =
        app.send("POST", "/v1/wearables/google/webhook-subscription", Some(&app.admin.clone()), None).await;
    assert_eq!(status, S::OK, "{body}");
    let subscribers = case.stand_in.subscribers();
    assert_eq!(subscribers.len(), 1);
    let (project, query, request, verifications) = &subscribers[0];
    assert_eq!(project, "123456789012", "the project number that prefixes the OAuth client id");
    assert_eq!(query.get("subscriberId").map(String::as_str), Some("wearlink"));
    assert_eq!(request["endpointUri"], app.url(&format!("/v1/wearables/google/webhook/{}", app.project_id)));
    assert_eq!(request["endpointAuthorization"]["secret"], format!("Bearer {WEBHOOK_SECRET}"));
    let types: Vec<String> = serde_json::from_value(request["subscriberConfigs"][0]["dataTypes"].clone()).unwrap();
    assert!(types.contains(&"exercise".to_string()) && types.contains(&"sleep".to_string()), "{request}");
    assert_eq!(request["subscriberConfigs"][0]["subscriptionCreatePolicy"], "AUTOMATIC");
    assert_eq!(verifications, &vec![201, 401]);
}

/// With a signing key configured, `X-HEALTHAPI-SIGNATURE` must verify: good → 200, bad → 401.
async fn signatures_are_checked_when_a_key_is_configured(backend: Backend) {
    let case = GoogleCase::start_signing().await;
    let app = TestApp::spawn_with(backend, Options { env: case.env(), ..Options::default() }).await;
    let (id, secret) = case.client();
    app.configure_with("google", &id, &secret).await;
    let (status, _) = app
        .send(
            "PUT",
            "/v1/project/secrets/WEARABLE_GOOGLE_WEBHOOK_SECRET",
            Some(&app.admin.clone()),
            Some(json!({"value": WEBHOOK_SECRET})),
        )
        .await;
    assert_eq!(status, S::OK);
    let (_, _, user) = connected(&case, &app).await;
    let workout = case.seed_workout(&user, now_ms() - 3_600_000);
    let good = case.workout_delivery(&user, &workout, now_ms(), WEBHOOK_SECRET);
    assert!(good.headers.iter().any(|(k, _)| k == "x-healthapi-signature"));
    let (status, body) = deliver(&app, "google", &good).await;
    assert_eq!(status, S::OK, "{body}");

    // Signed by another key.
    let mut forged = case.workout_delivery(&user, &workout, now_ms(), WEBHOOK_SECRET);
    let other: Signature = SigningKey::random(&mut rand::rngs::OsRng).sign(&forged.body);
    for (k, v) in forged.headers.iter_mut() {
        if k == "x-healthapi-signature" {
            *v = base64::engine::general_purpose::STANDARD.encode(other.to_der().as_bytes());
        }
    }
    let (status, _) = deliver(&app, "google", &forged).await;
    assert_eq!(status, S::UNAUTHORIZED);
    // The right secret but no signature.
    let mut unsigned = case.workout_delivery(&user, &workout, now_ms(), WEBHOOK_SECRET);
    unsigned.headers.retain(|(k, _)| k != "x-healthapi-signature");
    let (status, _) = deliver(&app, "google", &unsigned).await;
    assert_eq!(status, S::UNAUTHORIZED);
    // A signed verification POST passes, an unsigned one does not.
    let body = serde_json::to_vec(&json!({"type": "verification"})).unwrap();
    let headers = vec![
        ("authorization".to_string(), format!("Bearer {WEBHOOK_SECRET}")),
        ("x-healthapi-signature".to_string(), case.sign(&body).unwrap()),
    ];
    let (status, _) = deliver(&app, "google", &Delivery::post_json(headers, &json!({"type": "verification"}))).await;
    assert_eq!(status, S::CREATED);
}

/// Daily steps come from dailyRollUp, one Observation per civil day, valid R4, in ranges Google
/// accepts; a steps notification re-reads its day.
async fn daily_steps_are_rolled_up_per_day(backend: Backend) {
    let case = GoogleCase::start().await;
    let app = app_for(&case, backend).await;
    let patient = app.create_patient().await;
    let (status, started) = app.connect("google", json!({"patientId": patient})).await;
    assert_eq!(status, S::OK);
    let back = case.approve(started["authorizationUrl"].as_str().unwrap()).await;
    let user = case.last_user();
    let day = |ago: i64| {
        chrono::DateTime::<chrono::Utc>::from_timestamp_millis(now_ms() - ago * 86_400_000)
            .unwrap()
            .format("%Y-%m-%d")
            .to_string()
    };
    case.stand_in.inner.lock().unwrap().steps.entry(user.clone()).or_default().extend([(day(2), 8500), (day(1), 0)]);
    let (status, _, page) = app.callback(&back).await;
    assert_eq!(status, S::OK, "{page}");
    stories::sync_all(&app).await;
    let steps = stories::search(&app, &format!("Observation?patient=Patient/{patient}&code=41950-7")).await;
    assert_eq!(steps.len(), 2, "{steps:?}");
    let two_days_ago = steps.iter().find(|o| o["effectivePeriod"]["start"] == day(2).as_str()).expect("the day");
    assert_eq!(two_days_ago["valueQuantity"]["value"], 8500);
    assert_eq!(two_days_ago["identifier"][0]["value"], format!("{user}:{}:41950-7", day(2)));
    let calls = case.stand_in.inner.lock().unwrap().rollup_calls.clone();
    assert!(calls.iter().any(|(t, _)| t == "total-calories"), "{calls:?}");
    assert!(calls.iter().all(|(_, b)| b["windowSizeDays"] == 1));

    // Today's steps change: the notification for today re-reads today only.
    case.stand_in.inner.lock().unwrap().steps.get_mut(&user).unwrap().insert(day(0), 1234);
    let now = now_ms();
    let mut body = GoogleCase::notification(&user, now - 600_000, now);
    body["dataType"] = json!("steps");
    let delivery = Delivery::post_json(vec![("authorization".into(), format!("Bearer {WEBHOOK_SECRET}"))], &body);
    let (status, answer) = deliver(&app, "google", &delivery).await;
    assert_eq!(status, S::OK, "{answer}");
    stories::sync_all(&app).await;
    let steps = stories::search(&app, &format!("Observation?patient=Patient/{patient}&code=41950-7")).await;
    assert_eq!(steps.len(), 3, "{steps:?}");
    if let Some(validator) = crate::support::FhirPartner::start().await {
        validator.validate_all(&steps).await.unwrap_or_else(|e| panic!("invalid R4: {e}"));
    }
}

/// Google's refresh answers no new refresh token (the one on file keeps working), and a 401 on
/// refresh (the OAuth client is gone) is a dead grant like `invalid_grant`.
async fn refresh_keeps_the_refresh_token_and_a_401_is_a_dead_grant(backend: Backend) {
    let case = GoogleCase::start().await;
    let app = app_for(&case, backend).await;
    case.expire_soon();
    let (_, endpoint_id, user) = connected(&case, &app).await;
    for i in 1..=3 {
        let report = wearlink::connections::refresh_due(&app.services, now_ms() + i * 120_000).await.unwrap();
        assert_eq!(report.refreshed, 1, "{report:?}");
    }
    assert_eq!(case.refreshes(&user), 3);
    case.stand_in.inner.lock().unwrap().refresh_unauthorized = true;
    let report = wearlink::connections::refresh_due(&app.services, now_ms() + 600_000).await.unwrap();
    assert_eq!(report.invalid, 1, "{report:?}");
    assert_eq!(stories::connection(&app, &endpoint_id).await["status"], "error");
}

/// A night and a day's resting heart rate are backfilled through dataPoints.list as valid R4.
async fn sleep_and_daily_vitals_are_backfilled_as_valid_r4(backend: Backend) {
    let case = GoogleCase::start().await;
    let app = app_for(&case, backend).await;
    let patient = app.create_patient().await;
    let (status, started) = app.connect("google", json!({"patientId": patient})).await;
    assert_eq!(status, S::OK);
    let back = case.approve(started["authorizationUrl"].as_str().unwrap()).await;
    let user = case.last_user();
    let start = now_ms() - 2 * 86_400_000;
    let at = |ms: i64| {
        chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let night = json!({"name": format!("users/{user}/dataTypes/sleep/dataPoints/4411"), "sleep": {
        "interval": {"startTime": at(start), "startUtcOffset": "-18000s", "endTime": at(start + 7 * 3_600_000), "endUtcOffset": "-18000s"},
        "type": "STAGES", "summary": {"minutesAsleep": "390", "stagesSummary": [
            {"type": "DEEP", "minutes": "80"}, {"type": "LIGHT", "minutes": "230"}, {"type": "REM", "minutes": "80"},
            {"type": "AWAKE", "minutes": "30"}]}}});
    let day = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(start).unwrap().date_naive();
    let rhr = json!({"name": format!("users/{user}/dataTypes/daily-resting-heart-rate/dataPoints/d1"),
        "dailyRestingHeartRate": {"date": {"year": chrono::Datelike::year(&day), "month": chrono::Datelike::month(&day),
            "day": chrono::Datelike::day(&day)}, "beatsPerMinute": "57"}});
    {
        let mut inner = case.stand_in.inner.lock().unwrap();
        inner.points.insert((user.clone(), "sleep".into()), vec![(start, night)]);
        inner.points.insert((user.clone(), "daily-resting-heart-rate".into()), vec![(start, rhr)]);
    }
    let (status, _, page) = app.callback(&back).await;
    assert_eq!(status, S::OK, "{page}");
    stories::sync_all(&app).await;
    let observations = stories::search(&app, &format!("Observation?patient=Patient/{patient}&_count=50")).await;
    let code = |c: &str| observations.iter().find(|o| o["code"]["coding"][0]["code"] == c).cloned();
    let sleep = code("93832-4").expect("sleep duration");
    assert_eq!(sleep["valueQuantity"]["value"], 390);
    assert!(sleep["effectivePeriod"]["start"].as_str().unwrap().ends_with("-05:00"), "{sleep}");
    assert_eq!(code("93831-6").expect("deep")["valueQuantity"]["value"], 80);
    let resting = code("40443-4").expect("resting heart rate");
    assert_eq!(resting["valueQuantity"]["value"], 57);
    assert_eq!(resting["effectivePeriod"]["start"], day.format("%Y-%m-%d").to_string());
    assert_eq!(observations.len(), 5, "{observations:?}");
    if let Some(validator) = crate::support::FhirPartner::start().await {
        validator.validate_all(&observations).await.unwrap_or_else(|e| panic!("invalid R4: {e}"));
    }
}

/// The authorize URL carries access_type=offline and prompt=consent (no refresh token otherwise).
async fn the_authorize_url_asks_for_offline_access_and_consent(backend: Backend) {
    let case = GoogleCase::start().await;
    let app = app_for(&case, backend).await;
    let patient = app.create_patient().await;
    let (status, started) = app.connect("google", json!({"patientId": patient})).await;
    assert_eq!(status, S::OK, "{started}");
    let url = url::Url::parse(started["authorizationUrl"].as_str().unwrap()).unwrap();
    let q: HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(q["access_type"], "offline");
    assert_eq!(q["prompt"], "consent");
    assert_eq!(q["scope"], SCOPES.join(" "));
    assert_eq!(q["response_type"], "code");
}

/// A user who unticks scopes at Google's consent screen has exactly the granted ones recorded.
async fn fewer_granted_scopes_are_recorded_as_granted(backend: Backend) {
    let case = GoogleCase::start().await;
    let app = app_for(&case, backend).await;
    case.stand_in.grant_only(&[SCOPES[2], SCOPES[3]]);
    let (_, endpoint_id, _) = connected(&case, &app).await;
    let c = stories::connection(&app, &endpoint_id).await;
    let mut scopes: Vec<String> = serde_json::from_value(c["scopes"].clone()).unwrap();
    scopes.sort();
    assert_eq!(scopes, vec![SCOPES[3].to_string(), SCOPES[2].to_string()]);
}

/// Backfill pages exercise 25 at a time, following nextPageToken, with the filter on start_time.
async fn exercise_backfill_pages_by_25_with_a_start_time_filter(backend: Backend) {
    let case = GoogleCase::start().await;
    let app = app_for(&case, backend).await;
    let patient = app.create_patient().await;
    let (status, started) = app.connect("google", json!({"patientId": patient})).await;
    assert_eq!(status, S::OK);
    let back = case.approve(started["authorizationUrl"].as_str().unwrap()).await;
    let user = case.last_user();
    for i in 0..27 {
        case.seed_workout(&user, now_ms() - (i + 1) * 3 * 3_600_000);
    }
    let (status, _, page) = app.callback(&back).await;
    assert_eq!(status, S::OK, "{page}");
    stories::sync_all(&app).await;
    let sessions = stories::search(&app, &format!("Procedure?patient=Patient/{patient}&_count=100")).await;
    assert_eq!(sessions.len(), 27);
    let calls = case.stand_in.inner.lock().unwrap().list_calls.clone();
    let exercise: Vec<_> = calls.iter().filter(|c| c["filter"].starts_with("exercise.")).collect();
    assert_eq!(exercise.len(), 2, "{calls:?}");
    assert!(exercise.iter().all(|c| c["pageSize"] == "25"));
    assert_eq!(exercise[1].get("pageToken").map(String::as_str), Some("page-25"));
    assert!(exercise[0]["filter"].contains("exercise.interval.start_time >= \""), "{:?}", exercise[0]);
}

crate::on_both_backends!(
    verification_posts_answer_201_only_with_our_authorization,
    the_subscriber_is_created_with_our_url_and_bearer_secret,
    signatures_are_checked_when_a_key_is_configured,
    the_authorize_url_asks_for_offline_access_and_consent,
    fewer_granted_scopes_are_recorded_as_granted,
    exercise_backfill_pages_by_25_with_a_start_time_filter,
    daily_steps_are_rolled_up_per_day,
    refresh_keeps_the_refresh_token_and_a_401_is_a_dead_grant,
    sleep_and_daily_vitals_are_backfilled_as_valid_r4,
);
