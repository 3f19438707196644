//! Garmin Health API (OAuth 2.0 PKCE): a stand-in as Garmin's partner docs and open-source clients
//! describe it (shared/spec/providers.md, Garmin ◐), its `Case`, the shared stories and Garmin's own:
//! PKCE really checked, `garmin-client-id` compared, deregistration pushes, and backfills whose
//! data arrives later by push.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine;
use reqwest::StatusCode as Status;
use serde_json::{json, Value};
use sha2::Digest;
use wearlink::time::now_ms;

use crate::stories::{self, app_for, connection, deliver, search, signing_secret, sync_all, Case, Delivery};
use crate::support::{Backend, FhirPartner};

const CLIENT_ID: &str = "garmin-client-id-1";
const CLIENT_SECRET: &str = "garmin-client-secret-1";
const PERMISSIONS: &[&str] = &["ACTIVITY_EXPORT", "HEALTH_EXPORT", "HISTORICAL_DATA_EXPORT"];
const DAY_S: i64 = 86_400;

#[derive(Default)]
struct Grant {
    user: String,
    challenge: String,
    redirect_uri: String,
}

#[derive(Default)]
struct Inner {
    codes: HashMap<String, Grant>,
    users: usize,
    last_user: String,
    /// Access token → user.
    access: HashMap<String, String>,
    /// Refresh token → user (a used one is removed: Garmin rotates them).
    refresh: HashMap<String, String>,
    issued: Vec<String>,
    expire_soon: bool,
    refreshes: HashMap<String, usize>,
    killed: HashSet<String>,
    revoked: Vec<String>,
    /// Seeded summaries by list name (`activities`, `sleeps`, `dailies`).
    data: HashMap<&'static str, Vec<Value>>,
    webhook_url: Option<String>,
    /// Pushes are kept instead of sent (Garmin delivers them minutes to hours later).
    hold: bool,
    held: Vec<Value>,
    /// (list, start, end) of backfill requests already made: the same again is 409.
    backfills: HashSet<(String, i64, i64)>,
}

#[derive(Clone)]
struct Shared(Arc<Mutex<Inner>>);

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap()
    }
}

pub struct GarminCase {
    base: String,
    state: Shared,
}

fn token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({ "error": error }))).into_response()
}

fn unauthorized() -> Response {
    (StatusCode::UNAUTHORIZED, Json(json!({"errorMessage": "Unauthorized"}))).into_response()
}

/// The user of a bearer token (`None`: answer 401).
fn user_of(state: &Shared, headers: &HeaderMap) -> Option<String> {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    let user = bearer.and_then(|t| state.lock().access.get(t).cloned());
    user
}

/// `GET /oauth2Confirm`: the user approves; client id, response type and an S256 challenge are required.
async fn authorize(State(state): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    if q.get("client_id").map(String::as_str) != Some(CLIENT_ID)
        || q.get("response_type").map(String::as_str) != Some("code")
    {
        return (StatusCode::BAD_REQUEST, "unknown client or response type").into_response();
    }
    let (Some(challenge), Some("S256")) = (q.get("code_challenge"), q.get("code_challenge_method").map(String::as_str))
    else {
        return (StatusCode::BAD_REQUEST, "PKCE S256 is required").into_response();
    };
    let (Some(redirect_uri), Some(st)) = (q.get("redirect_uri"), q.get("state")) else {
        return (StatusCode::BAD_REQUEST, "redirect_uri and state are required").into_response();
    };
    let code = token();
    let mut s = state.lock();
    s.users += 1;
    let user = format!("garmin-user-{}-{}", s.users, &token()[..6]);
    s.last_user = user.clone();
    s.codes.insert(code.clone(), Grant { user, challenge: challenge.clone(), redirect_uri: redirect_uri.clone() });
    let mut back = url::Url::parse(redirect_uri).unwrap();
    back.query_pairs_mut().append_pair("code", &code).append_pair("state", st);
    (StatusCode::FOUND, [("location", back.to_string())]).into_response()
}

fn issue(s: &mut Inner, user: &str) -> Value {
    let (access, refresh) = (token(), token());
    s.access.insert(access.clone(), user.to_string());
    s.refresh.insert(refresh.clone(), user.to_string());
    s.issued.push(access.clone());
    json!({
        "access_token": access, "expires_in": if s.expire_soon { 30 } else { 86_400 }, "token_type": "bearer",
        "refresh_token": refresh, "scope": "PARTNER_WRITE PARTNER_READ CONNECT_READ CONNECT_WRITE",
        "refresh_token_expires_in": 7_775_998
    })
}

/// `POST /di-oauth2-service/oauth/token`: the code exchange (the verifier must hash to the
/// challenge seen at authorize) and the rotating refresh; client id and secret in the form.
async fn token_endpoint(State(state): State<Shared>, Form(f): Form<HashMap<String, String>>) -> Response {
    let field = |k: &str| f.get(k).map(String::as_str);
    if field("client_id") != Some(CLIENT_ID) || field("client_secret") != Some(CLIENT_SECRET) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let mut s = state.lock();
    match field("grant_type") {
        Some("authorization_code") => {
            let Some(grant) = field("code").and_then(|c| s.codes.get(c)) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            };
            let verified = field("code_verifier").is_some_and(|v| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(v.as_bytes()))
                    == grant.challenge
            });
            if !verified || field("redirect_uri") != Some(grant.redirect_uri.as_str()) {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            let grant = s.codes.remove(field("code").unwrap()).unwrap();
            Json(issue(&mut s, &grant.user)).into_response()
        }
        Some("refresh_token") => {
            let user = field("refresh_token").and_then(|t| s.refresh.get(t).cloned());
            match user {
                Some(user) if !s.killed.contains(&user) => {
                    s.refresh.remove(field("refresh_token").unwrap());
                    *s.refreshes.entry(user.clone()).or_default() += 1;
                    Json(issue(&mut s, &user)).into_response()
                }
                _ => oauth_error(StatusCode::BAD_REQUEST, "invalid_grant"),
            }
        }
        _ => oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    }
}

async fn user_id(State(state): State<Shared>, headers: HeaderMap) -> Response {
    match user_of(&state, &headers) {
        Some(user) => Json(json!({ "userId": user })).into_response(),
        None => unauthorized(),
    }
}

async fn permissions(State(state): State<Shared>, headers: HeaderMap) -> Response {
    match user_of(&state, &headers) {
        Some(_) => Json(json!(PERMISSIONS)).into_response(),
        None => unauthorized(),
    }
}

/// `DELETE /wellness-api/rest/user/registration` → 204. (Garmin then pushes a deregistration; the
/// stand-in leaves that to the story that needs it.)
async fn deregister(State(state): State<Shared>, headers: HeaderMap) -> Response {
    match user_of(&state, &headers) {
        Some(user) => {
            let mut s = state.lock();
            s.access.retain(|_, u| *u != user);
            s.refresh.retain(|_, u| *u != user);
            s.revoked.push(user);
            StatusCode::NO_CONTENT.into_response()
        }
        None => unauthorized(),
    }
}

/// `GET /wellness-api/rest/backfill/{list}`: ≤ 30 days, 409 for a range asked before, 202 with
/// no body; the summaries in range are then pushed to the webhook (now, or when released).
async fn backfill(
    State(state): State<Shared>,
    Path(list): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let user = match user_of(&state, &headers) {
        Some(user) => user,
        None => return unauthorized(),
    };
    let secs = |k: &str| q.get(k).and_then(|v| v.parse::<i64>().ok());
    let (Some(start), Some(end)) = (secs("summaryStartTimeInSeconds"), secs("summaryEndTimeInSeconds")) else {
        return (StatusCode::BAD_REQUEST, Json(json!({"errorMessage": "start and end are required"}))).into_response();
    };
    if !["activities", "sleeps", "dailies"].contains(&list.as_str()) || end <= start || end - start > 30 * DAY_S {
        return (StatusCode::BAD_REQUEST, Json(json!({"errorMessage": "invalid range"}))).into_response();
    }
    let (push, url) = {
        let mut s = state.lock();
        if !s.backfills.insert((list.clone(), start, end)) {
            return (StatusCode::CONFLICT, Json(json!({"errorMessage": "duplicate backfill"}))).into_response();
        }
        let items: Vec<Value> = s
            .data
            .get(list.as_str())
            .into_iter()
            .flatten()
            .filter(|i| i["userId"] == user.as_str())
            .filter(|i| i["startTimeInSeconds"].as_i64().is_some_and(|t| (start..end).contains(&t)))
            .cloned()
            .collect();
        if items.is_empty() {
            return StatusCode::ACCEPTED.into_response();
        }
        let push = json!({ list.clone(): items });
        if s.hold {
            s.held.push(push);
            return StatusCode::ACCEPTED.into_response();
        }
        (push, s.webhook_url.clone())
    };
    if let Some(url) = url {
        send_push(&url, &push).await;
    }
    StatusCode::ACCEPTED.into_response()
}

/// A push as Garmin sends it: JSON, with the `garmin-client-id` header.
async fn send_push(url: &str, push: &Value) {
    let response =
        reqwest::Client::new().post(url).header("garmin-client-id", CLIENT_ID).json(push).send().await.unwrap();
    assert_eq!(response.status(), Status::OK, "push refused: {}", response.text().await.unwrap());
}

impl GarminCase {
    pub async fn start() -> Self {
        let state = Shared(Arc::new(Mutex::new(Inner::default())));
        let app = Router::new()
            .route("/oauth2Confirm", get(authorize))
            .route("/di-oauth2-service/oauth/token", post(token_endpoint))
            .route("/wellness-api/rest/user/id", get(user_id))
            .route("/wellness-api/rest/user/permissions", get(permissions))
            .route("/wellness-api/rest/user/registration", delete(deregister))
            .route("/wellness-api/rest/backfill/{list}", get(backfill))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base, state }
    }

    fn seed(&self, list: &'static str, item: Value) {
        self.state.lock().data.entry(list).or_default().push(item);
    }

    /// A night and a day of the user, the night starting at `start_s`.
    fn seed_night_and_day(&self, user: &str, start_s: i64) {
        let date = chrono::DateTime::from_timestamp(start_s + 3600 * 8, 0).unwrap().format("%Y-%m-%d").to_string();
        self.seed(
            "sleeps",
            json!({"userId": user, "summaryId": format!("s-{start_s}"), "calendarDate": date,
            "startTimeInSeconds": start_s, "startTimeOffsetInSeconds": 3600, "durationInSeconds": 27000,
            "deepSleepDurationInSeconds": 5400, "lightSleepDurationInSeconds": 14400, "remSleepInSeconds": 7200,
            "awakeDurationInSeconds": 900}),
        );
        self.seed(
            "dailies",
            json!({"userId": user, "summaryId": format!("d-{start_s}"), "calendarDate": date,
            "startTimeInSeconds": start_s + 3600 * 2, "startTimeOffsetInSeconds": 3600, "durationInSeconds": 86400,
            "steps": 9120, "distanceInMeters": 7021.5, "activeKilocalories": 612, "bmrKilocalories": 1688,
            "restingHeartRateInBeatsPerMinute": 52}),
        );
    }

    /// Sends the pushes held so far.
    async fn release(&self) {
        let (held, url) = {
            let mut s = self.state.lock();
            s.hold = false;
            (std::mem::take(&mut s.held), s.webhook_url.clone().expect("attached"))
        };
        for push in held {
            send_push(&url, &push).await;
        }
    }
}

#[async_trait]
impl Case for GarminCase {
    fn slug(&self) -> &'static str {
        "garmin"
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("WEARLINK_PROVIDER_GARMIN_AUTHORIZE_URL".into(), format!("{}/oauth2Confirm", self.base)),
            ("WEARLINK_PROVIDER_GARMIN_TOKEN_URL".into(), format!("{}/di-oauth2-service/oauth/token", self.base)),
            ("WEARLINK_PROVIDER_GARMIN_API_URL".into(), self.base.clone()),
            ("WEARLINK_PROVIDER_GARMIN_USER_URL".into(), format!("{}/wellness-api/rest/user/id", self.base)),
        ]
    }

    fn client(&self) -> (String, String) {
        (CLIENT_ID.into(), CLIENT_SECRET.into())
    }

    fn pkce(&self) -> bool {
        true
    }

    fn granted_scopes(&self) -> Vec<String> {
        PERMISSIONS.iter().map(|p| p.to_string()).collect()
    }

    fn last_user(&self) -> String {
        self.state.lock().last_user.clone()
    }

    fn issued_tokens(&self) -> Vec<String> {
        let s = self.state.lock();
        s.issued.iter().cloned().chain(s.refresh.keys().cloned()).collect()
    }

    fn expire_soon(&self) {
        self.state.lock().expire_soon = true;
    }

    fn refreshes(&self, user: &str) -> usize {
        self.state.lock().refreshes.get(user).copied().unwrap_or(0)
    }

    fn kill_grant(&self, user: &str) {
        self.state.lock().killed.insert(user.to_string());
    }

    fn revoked(&self) -> Vec<String> {
        self.state.lock().revoked.clone()
    }

    fn seed_workout(&self, user: &str, start_ms: i64) -> String {
        let id = format!("x{}", &token()[..10]);
        self.seed(
            "activities",
            json!({"userId": user, "summaryId": id, "activityType": "RUNNING",
            "startTimeInSeconds": start_ms / 1000, "startTimeOffsetInSeconds": 3600, "durationInSeconds": 3600,
            "distanceInMeters": 10000.0, "activeKilocalories": 650, "averageHeartRateInBeatsPerMinute": 150,
            "maxHeartRateInBeatsPerMinute": 178}),
        );
        id
    }

    fn workout_identifier_system(&self) -> String {
        "https://apis.garmin.com/wellness-api/rest/activities".into()
    }

    /// A push of the one activity. Garmin does not sign: it sends the client id in
    /// `garmin-client-id`. The stories hand `signing_secret` (= the client secret, as there is no
    /// webhook secret) for a genuine delivery and another string for a forgery, so the header
    /// carries the client id when `secret` is the client secret, and `secret` itself otherwise.
    fn workout_delivery(&self, user: &str, workout_id: &str, _at_ms: i64, secret: &str) -> Delivery {
        let item = self.state.lock().data["activities"]
            .iter()
            .find(|i| i["summaryId"] == workout_id && i["userId"] == user)
            .cloned()
            .expect("seeded");
        let header = if secret == CLIENT_SECRET { CLIENT_ID } else { secret };
        Delivery::post_json(vec![("garmin-client-id".into(), header.into())], &json!({ "activities": [item] }))
    }

    /// No timestamp is signed: a replay is a duplicate (deduplicated), not a 401.
    fn signs_timestamps(&self) -> bool {
        false
    }

    fn attach(&self, webhook_url: String) {
        self.state.lock().webhook_url = Some(webhook_url);
    }
}

crate::provider_stories!(crate::garmin::GarminCase::start();
    connect_approve_and_see_the_endpoint,
    a_declined_connect_stores_nothing,
    refresh_rotates_and_a_dead_grant_marks_the_connection_error,
    disconnect_revokes_upstream,
    webhook_signatures_are_checked_and_events_stored_once,
    two_instances_racing_refresh_it_once,
    backfill_and_webhook_data_arrive_as_valid_r4,
);

/// Garmin's own stories, each on both backends.
macro_rules! garmin_stories {
    ($($story:ident),* $(,)?) => {$(
        mod $story {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$story(&super::GarminCase::start().await, crate::support::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if crate::support::postgres_available() {
                    super::$story(&super::GarminCase::start().await, crate::support::Backend::Postgres).await
                }
            }
        }
    )*};
}

garmin_stories!(
    pkce_is_checked_at_the_token_endpoint,
    a_backfill_is_backfilling_until_its_pushes_arrive,
    a_deregistration_push_turns_the_endpoint_off,
    the_client_id_header_must_match,
);

/// The stand-in refuses the code without the verifier, or with another: PKCE is really checked;
/// the app's own exchange (with the verifier it kept sealed) then succeeds.
async fn pkce_is_checked_at_the_token_endpoint(case: &GarminCase, backend: Backend) {
    let app = app_for(case, backend).await;
    let patient = app.create_patient().await;
    let (status, started) = app.connect("garmin", json!({"patientId": patient})).await;
    assert_eq!(status, Status::OK, "{started}");
    let back = case.approve(started["authorizationUrl"].as_str().unwrap()).await;
    let back_url = url::Url::parse(&back).unwrap();
    let q: HashMap<_, _> = back_url.query_pairs().into_owned().collect();
    let redirect = app.url("/v1/wearables/garmin/callback");
    let http = reqwest::Client::new();
    for verifier in [None, Some("a-verifier-that-is-not-the-one-whose-hash-was-sent-at-authorize")] {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
            ("code", q["code"].as_str()),
            ("redirect_uri", redirect.as_str()),
        ];
        form.extend(verifier.map(|v| ("code_verifier", v)));
        let response =
            http.post(format!("{}/di-oauth2-service/oauth/token", case.base)).form(&form).send().await.unwrap();
        assert_eq!(response.status(), Status::BAD_REQUEST, "verifier {verifier:?}");
        assert_eq!(response.json::<Value>().await.unwrap()["error"], "invalid_grant");
    }
    let (status, _, page) = app.callback(&back).await;
    assert_eq!(status, Status::OK, "{page}");
    assert_eq!(page["status"], "connected", "{page}");
}

/// Garmin answers a backfill 202 and pushes later: the connection shows `backfilling` while the
/// pushes are outstanding (re-checks included), and `idle` once they arrived; the night and the
/// day are valid R4.
async fn a_backfill_is_backfilling_until_its_pushes_arrive(case: &GarminCase, backend: Backend) {
    let app = app_for(case, backend).await;
    case.state.lock().hold = true;
    let patient = app.create_patient().await;
    let (status, started) = app.connect("garmin", json!({"patientId": patient})).await;
    assert_eq!(status, Status::OK, "{started}");
    let back = case.approve(started["authorizationUrl"].as_str().unwrap()).await;
    let user = case.last_user();
    case.seed_workout(&user, now_ms() - 3 * 86_400_000);
    case.seed_night_and_day(&user, now_ms() / 1000 - 2 * DAY_S);
    let (status, _, page) = app.callback(&back).await;
    assert_eq!(status, Status::OK, "{page}");
    let endpoint_id = page["endpointId"].as_str().unwrap().to_string();

    sync_all(&app).await;
    // 30 days and a minute: two requests per list, each range asked once.
    assert_eq!(case.state.lock().backfills.len(), 6);
    assert_eq!(connection(&app, &endpoint_id).await["sync"]["state"], "backfilling");
    assert!(search(&app, &format!("Procedure?patient=Patient/{patient}")).await.is_empty());
    // A re-check before anything arrived keeps waiting.
    wearlink::sync::run_due(&app.services, now_ms() + 61_000).await.unwrap();
    assert_eq!(connection(&app, &endpoint_id).await["sync"]["state"], "backfilling");

    case.release().await;
    sync_all(&app).await;
    assert_eq!(search(&app, &format!("Procedure?patient=Patient/{patient}")).await.len(), 1);
    let observations = search(&app, &format!("Observation?patient=Patient/{patient}&_count=200")).await;
    // 5 of the activity, 4 of the night, 4 of the day.
    assert_eq!(observations.len(), 13, "{observations:?}");
    // The next re-check sees the pushes: the backfill is over.
    wearlink::sync::run_due(&app.services, now_ms() + 2 * 61_000).await.unwrap();
    let c = connection(&app, &endpoint_id).await;
    assert_eq!(c["sync"]["state"], "idle", "{c}");

    if let Some(validator) = FhirPartner::start().await {
        let mut all = observations;
        all.extend(search(&app, &format!("Procedure?patient=Patient/{patient}")).await);
        validator.validate_all(&all).await.unwrap_or_else(|e| panic!("invalid R4: {e}"));
    }
}

/// `{"deregistrations": [{userId}]}` (the user left us at Garmin) turns the Endpoint off.
async fn a_deregistration_push_turns_the_endpoint_off(case: &GarminCase, backend: Backend) {
    let app = app_for(case, backend).await;
    let (_, endpoint_id, user) = stories::connected(case, &app).await;
    let push = Delivery::post_json(
        vec![("garmin-client-id".into(), CLIENT_ID.into())],
        &json!({"deregistrations": [{"userId": user}]}),
    );
    let (status, body) = deliver(&app, "garmin", &push).await;
    assert_eq!(status, Status::OK, "{body}");
    sync_all(&app).await;
    let c = connection(&app, &endpoint_id).await;
    assert_eq!(c["status"], "off", "{c}");
    let (_, endpoint) = app.get(&format!("/fhir/R4/Endpoint/{endpoint_id}")).await;
    assert_eq!(endpoint["status"], "off");
    let stored = app.services.store.find_connection_by_endpoint(&endpoint_id).await.unwrap().unwrap();
    assert!(stored.tokens.is_none());
}

/// Without the header, or with another client's id (or the secret), a push is 401 and nothing is stored.
async fn the_client_id_header_must_match(case: &GarminCase, backend: Backend) {
    let app = app_for(case, backend).await;
    let (_, _, user) = stories::connected(case, &app).await;
    let workout = case.seed_workout(&user, now_ms() - 3_600_000);
    let good = case.workout_delivery(&user, &workout, now_ms(), &signing_secret(case));
    for header in [None, Some("another-client"), Some(CLIENT_SECRET), Some("garmin-client-id-")] {
        let mut delivery = case.workout_delivery(&user, &workout, now_ms(), &signing_secret(case));
        delivery.headers.retain(|(k, _)| k != "garmin-client-id");
        delivery.headers.extend(header.map(|h| ("garmin-client-id".to_string(), h.to_string())));
        let (status, body) = deliver(&app, "garmin", &delivery).await;
        assert_eq!(status, Status::UNAUTHORIZED, "{header:?}: {body}");
    }
    let (_, events) = app.get("/v1/wearables/events").await;
    assert!(events["events"].as_array().unwrap().is_empty(), "{events}");
    let (status, body) = deliver(&app, "garmin", &good).await;
    assert_eq!((status, body), (Status::OK, json!({"ok": true, "duplicate": false})));
}
