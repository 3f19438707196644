//! Dexcom API v3 told through the shared stories that fit a provider without webhooks (connect,
//! decline, refresh and a dead grant, disconnect, racing refreshes), plus what only Dexcom does:
//! regions and the sandbox, the polled backfill over `dataRange` and 30-day windows, readings
//! as CGM IG sensor readings with their Device, late data on the next poll, 429.
//!
//! The stand-in behaves as https://developer.dexcom.com documents it, one set of hosts per region
//! (`/us`, `/eu`, `/jp`, `/sandbox` here): `GET /v2/oauth2/login` checks client, redirect URI,
//! `response_type=code` and `scope=offline_access`; `POST /v2/oauth2/token` takes the client in
//! the form body, answers `expires_in: 7200` and a new refresh token on every refresh (the old
//! one then fails, `invalid_grant`); a user's tokens work only on their region's host;
//! `GET /v3/users/self/dataRange` answers `userId` and the first/last `systemTime` per type;
//! `egvs` and `events` need `startDate`/`endDate` (UTC, no zone) at most 30 days apart (400
//! otherwise) and answer `{recordType, recordVersion, userId, records}`; 429 when told so.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::NaiveDateTime;
use reqwest::StatusCode as S;
use serde_json::{json, Value};
use wearlink::time::now_ms;

use crate::stories::{app_for, connection, search, Case};
use crate::support::{problem_code, Backend, FhirPartner};

const CLIENT_ID: &str = "dexcom-client-8d21";
const CLIENT_SECRET: &str = "dexcom-client-secret-77fa";
const DAY_MS: i64 = 86_400_000;
const FIVE_MINUTES: i64 = 300_000;

#[derive(Default)]
struct Inner {
    next_user: u64,
    /// code → (redirect_uri, user, region)
    codes: HashMap<String, (String, String, String)>,
    /// access token → (user, region)
    access: HashMap<String, (String, String)>,
    /// refresh token → (user, region); each works once
    refresh: HashMap<String, (String, String)>,
    issued: Vec<String>,
    refreshes: HashMap<String, usize>,
    expires_in: i64,
    /// Records by user: (kind `egv` | `event`, systemTime ms, record).
    records: HashMap<String, Vec<(&'static str, i64, Value)>>,
    /// Data requests answer 429 while this is > 0 (counting down).
    too_many: usize,
    /// Data requests: (region, path, query).
    requests: Vec<(String, String, String)>,
    last_user: String,
}

#[derive(Clone)]
pub struct DexcomStandIn {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl DexcomStandIn {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stand_in = DexcomStandIn {
            addr: listener.local_addr().unwrap(),
            inner: Arc::new(Mutex::new(Inner { next_user: 0, expires_in: 7200, ..Default::default() })),
        };
        let app = Router::new()
            .route("/{region}/v2/oauth2/login", get(login))
            .route("/{region}/v2/oauth2/token", post(token))
            .route("/{region}/v3/users/self/dataRange", get(data_range))
            .route("/{region}/v3/users/self/egvs", get(|s, p, h, q| records(s, p, h, q, "egv")))
            .route("/{region}/v3/users/self/events", get(|s, p, h, q| records(s, p, h, q, "event")))
            .with_state(stand_in.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        stand_in
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn issue(&self, user: &str, region: &str) -> Value {
        let access = format!("dexcom-access-{}", uuid::Uuid::new_v4().simple());
        let refresh = format!("dexcom-refresh-{}", uuid::Uuid::new_v4().simple());
        let mut inner = self.inner.lock().unwrap();
        inner.access.retain(|_, (u, _)| u != user);
        inner.access.insert(access.clone(), (user.into(), region.into()));
        inner.refresh.insert(refresh.clone(), (user.into(), region.into()));
        inner.issued.extend([access.clone(), refresh.clone()]);
        json!({"access_token": access, "expires_in": inner.expires_in, "token_type": "Bearer", "refresh_token": refresh})
    }

    /// The user of a bearer token, only on the host of the user's region.
    fn bearer_user(&self, headers: &HeaderMap, region: &str) -> Option<String> {
        let token = headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")?;
        let inner = self.inner.lock().unwrap();
        let (user, home) = inner.access.get(token)?;
        (home == region).then(|| user.clone())
    }

    pub fn add(&self, user: &str, kind: &'static str, record: Value) {
        let at = system_ms(record["systemTime"].as_str().unwrap()).unwrap();
        let mut inner = self.inner.lock().unwrap();
        let list = inner.records.entry(user.into()).or_default();
        list.retain(|(k, _, r)| !(*k == kind && r["recordId"] == record["recordId"]));
        list.push((kind, at, record));
    }

    /// An EGV every 5 minutes over `[from, to)`, values from `value(i)` (`None`: a high).
    pub fn seed_egvs(&self, user: &str, from: i64, to: i64, value: impl Fn(i64) -> Option<f64>) -> usize {
        let mut n = 0;
        let mut at = from;
        while at < to {
            self.add(user, "egv", egv_json(&format!("egv-{at}"), at, value(at)));
            n += 1;
            at += FIVE_MINUTES;
        }
        n
    }

    pub fn refuse_next(&self, n: usize) {
        self.inner.lock().unwrap().too_many = n;
    }

    pub fn requests(&self) -> Vec<(String, String, String)> {
        self.inner.lock().unwrap().requests.clone()
    }
}

fn system_ms(text: &str) -> Option<i64> {
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S").ok().map(|t| t.and_utc().timestamp_millis())
}

fn system_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap().format("%Y-%m-%dT%H:%M:%S").to_string()
}

/// An EGV as Dexcom v3 documents it; `None` is a reading above the sensor's range (status high,
/// no value). Display time in US Pacific (−08:00).
pub fn egv_json(id: &str, at: i64, value: Option<f64>) -> Value {
    let display = chrono::DateTime::from_timestamp_millis(at)
        .unwrap()
        .with_timezone(&chrono::FixedOffset::west_opt(8 * 3600).unwrap())
        .format("%Y-%m-%dT%H:%M:%S%:z")
        .to_string();
    json!({"recordId": id, "systemTime": system_time(at), "displayTime": display, "transmitterId": "8GXK2Q",
        "transmitterTicks": at / 1000 % 1_000_000, "value": value, "status": if value.is_some() { "ok" } else { "high" },
        "trend": "flat", "trendRate": if value.is_some() { json!(0.2) } else { Value::Null }, "unit": "mg/dL",
        "rateUnit": "mg/dL/min", "displayDevice": "iOS", "transmitterGeneration": "g7"})
}

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({"error": error, "error_description": format!("stand-in: {error}")}))).into_response()
}

async fn login(
    State(s): State<DexcomStandIn>,
    Path(region): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let field = |k: &str| q.get(k).cloned().unwrap_or_default();
    if field("client_id") != CLIENT_ID || field("response_type") != "code" || field("scope") != "offline_access" {
        return (StatusCode::BAD_REQUEST, "bad client_id, response_type or scope").into_response();
    }
    let redirect_uri = field("redirect_uri");
    let mut back = url::Url::parse(&redirect_uri).unwrap();
    let code = format!("dexcom-code-{}", uuid::Uuid::new_v4().simple());
    {
        let mut inner = s.inner.lock().unwrap();
        inner.next_user += 1;
        let user = format!("{region}-user-{:04}", inner.next_user);
        inner.last_user = user.clone();
        inner.codes.insert(code.clone(), (redirect_uri, user, region));
    }
    back.query_pairs_mut().append_pair("code", &code).append_pair("state", &field("state"));
    (StatusCode::FOUND, [(header::LOCATION, back.to_string())]).into_response()
}

async fn token(
    State(s): State<DexcomStandIn>,
    Path(region): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    if field("client_id") != CLIENT_ID || field("client_secret") != CLIENT_SECRET {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    match field("grant_type").as_str() {
        "authorization_code" => {
            let taken = s.inner.lock().unwrap().codes.remove(&field("code"));
            match taken {
                Some((uri, user, home)) if uri == field("redirect_uri") && home == region => {
                    Json(s.issue(&user, &region)).into_response()
                }
                _ => oauth_error(StatusCode::BAD_REQUEST, "invalid_grant"),
            }
        }
        "refresh_token" => {
            let user = {
                let mut inner = s.inner.lock().unwrap();
                match inner.refresh.remove(&field("refresh_token")) {
                    Some((user, home)) if home == region => {
                        *inner.refreshes.entry(user.clone()).or_default() += 1;
                        Some(user)
                    }
                    _ => None,
                }
            };
            match user {
                Some(user) => Json(s.issue(&user, &region)).into_response(),
                None => oauth_error(StatusCode::BAD_REQUEST, "invalid_grant"),
            }
        }
        _ => oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    }
}

/// The common part of a data request: counted, 429 when told so, the token of this region.
fn data_gate(
    s: &DexcomStandIn,
    region: &str,
    headers: &HeaderMap,
    path: &str,
    query: String,
) -> Result<String, Box<Response>> {
    let refuse = {
        let mut inner = s.inner.lock().unwrap();
        inner.requests.push((region.into(), path.into(), query));
        let refuse = inner.too_many > 0;
        inner.too_many = inner.too_many.saturating_sub(1);
        refuse
    };
    if refuse {
        // Dexcom's 429 names no wait (the session then waits a minute); one second here, to
        // compress the test's time.
        let wait = [(header::RETRY_AFTER, "1")];
        return Err(Box::new(
            (StatusCode::TOO_MANY_REQUESTS, wait, Json(json!({"error": "Too Many Requests"}))).into_response(),
        ));
    }
    s.bearer_user(headers, region).ok_or_else(|| {
        Box::new(
            (StatusCode::UNAUTHORIZED, Json(json!({"fault": {"faultstring": "Invalid access token"}}))).into_response(),
        )
    })
}

async fn data_range(State(s): State<DexcomStandIn>, Path(region): Path<String>, headers: HeaderMap) -> Response {
    let user = match data_gate(&s, &region, &headers, "dataRange", String::new()) {
        Ok(user) => user,
        Err(answer) => return *answer,
    };
    let mut answer = json!({"recordType": "dataRange", "recordVersion": "3.0", "userId": user});
    let inner = s.inner.lock().unwrap();
    for (kind, key) in [("egv", "egvs"), ("event", "events")] {
        let times: Vec<i64> =
            inner.records.get(&user).into_iter().flatten().filter(|(k, _, _)| *k == kind).map(|(_, t, _)| *t).collect();
        if let (Some(first), Some(last)) = (times.iter().min(), times.iter().max()) {
            answer[key] = json!({"start": {"systemTime": system_time(*first), "displayTime": system_time(*first - 8 * 3_600_000)},
                                 "end": {"systemTime": system_time(*last), "displayTime": system_time(*last - 8 * 3_600_000)}});
        }
    }
    Json(answer).into_response()
}

async fn records(
    State(s): State<DexcomStandIn>,
    Path(region): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    kind: &'static str,
) -> Response {
    let query = format!(
        "{}..{}",
        q.get("startDate").cloned().unwrap_or_default(),
        q.get("endDate").cloned().unwrap_or_default()
    );
    let user = match data_gate(&s, &region, &headers, kind, query) {
        Ok(user) => user,
        Err(answer) => return *answer,
    };
    let bad = |why: &str| {
        (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_request", "message": why}))).into_response()
    };
    let (Some(start), Some(end)) =
        (q.get("startDate").and_then(|d| system_ms(d)), q.get("endDate").and_then(|d| system_ms(d)))
    else {
        return bad("startDate and endDate are required (YYYY-MM-DDThh:mm:ss)");
    };
    if end <= start || end - start > 30 * DAY_MS {
        return bad("the date range must be positive and at most 30 days");
    }
    let inner = s.inner.lock().unwrap();
    let mut list: Vec<(i64, Value)> = inner
        .records
        .get(&user)
        .into_iter()
        .flatten()
        .filter(|(k, t, _)| *k == kind && *t >= start && *t <= end)
        .map(|(_, t, r)| (*t, r.clone()))
        .collect();
    // Newest first, as Dexcom sorts.
    list.sort_by_key(|(t, _)| std::cmp::Reverse(*t));
    let records: Vec<Value> = list.into_iter().map(|(_, r)| r).collect();
    Json(json!({"recordType": kind, "recordVersion": "3.0", "userId": user, "records": records})).into_response()
}

pub struct DexcomCase {
    pub stand_in: DexcomStandIn,
}

impl DexcomCase {
    pub async fn start() -> Self {
        Self { stand_in: DexcomStandIn::start().await }
    }
}

#[async_trait]
impl Case for DexcomCase {
    fn slug(&self) -> &'static str {
        "dexcom"
    }

    fn env(&self) -> Vec<(String, String)> {
        ["us", "eu", "jp", "sandbox"]
            .iter()
            .map(|r| {
                (
                    format!("WEARLINK_PROVIDER_DEXCOM_REGION_{}_URL", r.to_uppercase()),
                    self.stand_in.url(&format!("/{r}")),
                )
            })
            .collect()
    }

    fn client(&self) -> (String, String) {
        (CLIENT_ID.into(), CLIENT_SECRET.into())
    }

    fn granted_scopes(&self) -> Vec<String> {
        vec!["offline_access".into()]
    }

    fn last_user(&self) -> String {
        self.stand_in.inner.lock().unwrap().last_user.clone()
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
        self.stand_in.inner.lock().unwrap().refresh.retain(|_, (u, _)| u != user);
    }

    fn revoked(&self) -> Vec<String> {
        Vec::new()
    }

    fn revokes_upstream(&self) -> bool {
        false
    }

    fn seed_workout(&self, _user: &str, _start_ms: i64) -> String {
        unreachable!("Dexcom has no workouts: the webhook and workout stories are not told for it")
    }

    fn workout_identifier_system(&self) -> String {
        unreachable!("Dexcom has no workouts")
    }

    fn workout_delivery(&self, _user: &str, _workout_id: &str, _at_ms: i64, _secret: &str) -> crate::stories::Delivery {
        unreachable!("Dexcom sends no webhooks")
    }
}

// Webhook and workout stories are not told: Dexcom has neither (it is polled).
crate::provider_stories!(crate::dexcom::DexcomCase::start();
    connect_approve_and_see_the_endpoint,
    a_declined_connect_stores_nothing,
    refresh_rotates_and_a_dead_grant_marks_the_connection_error,
    disconnect_revokes_upstream,
    two_instances_racing_refresh_it_once,
);

crate::on_both_backends!(
    regions_and_the_sandbox_choose_the_hosts,
    a_30_day_backfill_writes_readings_devices_and_daily_summaries,
    late_readings_on_the_next_poll_change_the_summary_without_duplicates,
);

/// Connects a patient in `region` (a JSON value: a string or null); answers (patient, Endpoint
/// id, user).
async fn connect_in(case: &DexcomCase, app: &crate::support::TestApp, region: Value) -> (String, String, String) {
    let patient = app.create_patient().await;
    let (status, started) = app.connect("dexcom", json!({"patientId": patient, "region": region})).await;
    assert_eq!(status, S::OK, "{started}");
    let back = case.approve(started["authorizationUrl"].as_str().unwrap()).await;
    let (status, _, page) = app.callback(&back).await;
    assert_eq!(status, S::OK, "{page}");
    (patient, page["endpointId"].as_str().unwrap().to_string(), case.last_user())
}

/// The total of a search (`_count=0`).
async fn total(app: &crate::support::TestApp, query: &str) -> i64 {
    let (status, bundle) = app.get(&format!("/fhir/R4/{query}&_count=0")).await;
    assert_eq!(status, S::OK, "{bundle}");
    bundle["total"].as_i64().unwrap()
}

/// The IG's sensor-reading rules (cgm-sensor-reading-mass-per-volume): LOINC 99504-3, category
/// laboratory, `effectiveDateTime`, a mg/dL UCUM value or a `dataAbsentReason` — never both.
fn assert_sensor_reading(reading: &Value) {
    assert_eq!(reading["code"]["coding"][0]["system"], "http://loinc.org", "{reading}");
    assert_eq!(reading["code"]["coding"][0]["code"], "99504-3", "{reading}");
    assert_eq!(reading["category"][0]["coding"][0]["code"], "laboratory");
    assert!(chrono::DateTime::parse_from_rfc3339(reading["effectiveDateTime"].as_str().unwrap()).is_ok());
    assert!(reading["subject"]["reference"].as_str().unwrap().starts_with("Patient/"));
    match (reading.get("valueQuantity"), reading.get("dataAbsentReason")) {
        (Some(q), None) => {
            assert_eq!((q["system"].as_str(), q["code"].as_str()), (Some("http://unitsofmeasure.org"), Some("mg/dL")));
            assert!(q["value"].is_number());
        }
        (None, Some(_)) => assert!(reading["interpretation"][0]["coding"][0]["code"].is_string(), "{reading}"),
        other => panic!("a value or a dataAbsentReason, not {other:?}: {reading}"),
    }
}

/// A connect names its region: the login, token and data calls go to that region's host, and
/// the Endpoint's address is that region's API. An unknown region is 422. The project's
/// `WEARABLE_DEXCOM_ENVIRONMENT=sandbox` sends connects to the sandbox; other values are 422.
async fn regions_and_the_sandbox_choose_the_hosts(backend: Backend) {
    let case = DexcomCase::start().await;
    let app = app_for(&case, backend).await;
    let patient = app.create_patient().await;
    let (status, body) = app.connect("dexcom", json!({"patientId": patient, "region": "mars"})).await;
    assert_eq!(status, S::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(problem_code(&body, status), "validation_failed");

    let (_, endpoint_id, user) = connect_in(&case, &app, json!("eu")).await;
    assert!(user.starts_with("eu-"), "logged in at the EU host: {user}");
    let (_, endpoint) = app.get(&format!("/fhir/R4/Endpoint/{endpoint_id}")).await;
    assert_eq!(endpoint["address"], case.stand_in.url("/eu/v3"));
    case.stand_in.seed_egvs(&user, now_ms() - DAY_MS, now_ms() - 3_600_000, |_| Some(110.0));
    crate::stories::sync_all(&app).await;
    let regions: Vec<String> = case.stand_in.requests().into_iter().map(|(r, _, _)| r).collect();
    assert!(!regions.is_empty() && regions.iter().all(|r| r == "eu"), "{regions:?}");
    assert_eq!(connection(&app, &endpoint_id).await["status"], "active");

    let admin = app.admin.clone();
    let setting = "/v1/project/settings/WEARABLE_DEXCOM_ENVIRONMENT";
    let (status, body) = app.send("PUT", setting, Some(&admin), Some(json!({"value": "staging"}))).await;
    assert_eq!(status, S::UNPROCESSABLE_ENTITY, "{body}");
    let (status, body) = app.send("PUT", setting, Some(&admin), Some(json!({"value": "sandbox"}))).await;
    assert_eq!(status, S::OK, "{body}");
    assert_eq!(body["settings"]["WEARABLE_DEXCOM_ENVIRONMENT"], "sandbox", "{body}");
    let (_, sandbox_endpoint, user) = connect_in(&case, &app, Value::Null).await;
    assert!(user.starts_with("sandbox-"), "{user}");
    let (_, endpoint) = app.get(&format!("/fhir/R4/Endpoint/{sandbox_endpoint}")).await;
    assert_eq!(endpoint["address"], case.stand_in.url("/sandbox/v3"));
}

/// A day's values, hand-picked so the summary is known: every 5 minutes from midnight UTC,
/// 200 mg/dL for the first 6 hours (72 readings: high), then 100 (in range) — except readings at
/// 12:00 and 12:05, which are above the sensor's range (no value).
fn day_value(at: i64) -> Option<f64> {
    let minute = (at.rem_euclid(DAY_MS)) / 60_000;
    match minute {
        720 | 725 => None,
        m if m < 360 => Some(200.0),
        _ => Some(100.0),
    }
}

/// Thirty days of a sandbox-like patient (8,640 readings) backfilled: dataRange first, then
/// windows of at most 30 days; one 429 parks the work until it passes; every reading a sensor
/// reading by the IG's rules referencing its transmitter's Device; a full day's summary as
/// computed by hand; valid R4 throughout.
async fn a_30_day_backfill_writes_readings_devices_and_daily_summaries(backend: Backend) {
    let case = DexcomCase::start().await;
    let app = app_for(&case, backend).await;
    let admin = app.admin.clone();
    let days = json!({"value": 32});
    let (status, body) = app.send("PUT", "/v1/project/settings/WEARABLE_BACKFILL_DAYS", Some(&admin), Some(days)).await;
    assert_eq!(status, S::OK, "{body}");
    let patient = app.create_patient().await;
    let (status, started) = app.connect("dexcom", json!({"patientId": patient})).await;
    assert_eq!(status, S::OK, "{started}");
    let back = case.approve(started["authorizationUrl"].as_str().unwrap()).await;
    let user = case.last_user();
    let today = now_ms() - now_ms().rem_euclid(DAY_MS);
    let seeded = case.stand_in.seed_egvs(&user, today - 31 * DAY_MS, today, day_value);
    assert_eq!(seeded, 31 * 288);
    case.stand_in.add(
        &user,
        "event",
        json!({"recordId": "ev-carbs", "systemTime": system_time(today - DAY_MS + 43_200_000),
        "displayTime": system_time(today - DAY_MS + 43_200_000 - 8 * 3_600_000), "eventStatus": "created",
        "eventType": "carbs", "eventSubType": null, "value": 45, "unit": "grams"}),
    );
    case.stand_in.add(
        &user,
        "event",
        json!({"recordId": "ev-insulin", "systemTime": system_time(today - DAY_MS + 43_300_000),
        "displayTime": system_time(today - DAY_MS + 43_300_000 - 8 * 3_600_000), "eventStatus": "created",
        "eventType": "insulin", "eventSubType": "fastActing", "value": 4, "unit": "units"}),
    );
    // An old exercise event: the events' range spans 31 days, two windows.
    let old = today - 31 * DAY_MS + 3_600_000;
    case.stand_in.add(
        &user,
        "event",
        json!({"recordId": "ev-old-exercise", "systemTime": system_time(old), "displayTime": system_time(old),
        "eventStatus": "created", "eventType": "exercise", "value": 30, "unit": "minutes"}),
    );
    let (status, _, page) = app.callback(&back).await;
    assert_eq!(status, S::OK, "{page}");
    case.stand_in.refuse_next(1);
    crate::stories::sync_all(&app).await;
    // The 429 parked the backfill until it passed: nothing was written meanwhile.
    let code = "code=http://loinc.org|99504-3";
    assert_eq!(total(&app, &format!("Observation?patient=Patient/{patient}&{code}")).await, 0);
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    crate::stories::sync_all(&app).await;

    assert_eq!(total(&app, &format!("Observation?patient=Patient/{patient}&{code}")).await, 31 * 288);
    let requests = case.stand_in.requests();
    let windows: Vec<&(String, String, String)> = requests.iter().filter(|(_, p, _)| p == "egv").collect();
    assert_eq!(windows.len(), 31, "EGVs a day at a time: {windows:?}");
    let events: Vec<&(String, String, String)> = requests.iter().filter(|(_, p, _)| p == "event").collect();
    assert_eq!(events.len(), 2, "31 days of events: two windows of at most 30 days (the stand-in refuses more)");
    assert!(requests.iter().filter(|(_, p, _)| p == "dataRange").count() >= 2, "dataRange first, per stream");

    // Yesterday: 288 readings, 72 at 200 (high), 2 off scale high (very high), 214 at 100.
    let yesterday = chrono::DateTime::from_timestamp_millis(today - DAY_MS).unwrap().format("%Y-%m-%d").to_string();
    let panels = search(&app, &format!("Observation?patient=Patient/{patient}&code=107931-8&date={yesterday}")).await;
    assert_eq!(panels.len(), 1, "{panels:?}");
    let members: Vec<String> = panels[0]["hasMember"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["reference"].as_str().unwrap().to_string())
        .collect();
    let mut by_code = HashMap::new();
    for member in &members {
        let (status, observation) = app.get(&format!("/fhir/R4/{member}")).await;
        assert_eq!(status, S::OK);
        by_code.insert(observation["code"]["coding"][0]["code"].as_str().unwrap().to_string(), observation);
    }
    let tir = &by_code["106793-3"]["component"];
    let percent = |i: usize| tir[i]["valueQuantity"]["value"].as_f64().unwrap();
    // 214 / 288 = 74.3 %, 72 / 288 = 25.0 %, 2 / 288 = 0.7 %.
    assert_eq!((percent(0), percent(1), percent(2), percent(3), percent(4)), (0.0, 0.0, 74.3, 25.0, 0.7));
    // Mean (72 × 200 + 2 × 400 + 214 × 100) / 288 = 36,600 / 288 = 127.08 → 127.1; GMI 3.31 +
    // 0.02392 × 127.083 = 6.3498 → 6.3 (from the unrounded mean).
    assert_eq!(by_code["97507-8"]["valueQuantity"]["value"], 127.1);
    assert_eq!(by_code["97506-0"]["valueQuantity"]["value"], 6.3);
    assert_eq!(by_code["104637-4"]["valueQuantity"]["value"], 100.0);

    let readings = search(
        &app,
        &format!("Observation?patient=Patient/{patient}&code=99504-3&date=ge{yesterday}T12:00:00Z&_count=5&_sort=date"),
    )
    .await;
    assert!(!readings.is_empty());
    readings.iter().for_each(assert_sensor_reading);
    let high = readings.iter().find(|r| r.get("dataAbsentReason").is_some()).expect("the 12:00 high");
    assert_eq!(high["interpretation"][0]["coding"][0]["code"], ">");
    let device_ref = high["device"]["reference"].as_str().unwrap();
    let (status, device) = app.get(&format!("/fhir/R4/{device_ref}")).await;
    assert_eq!(status, S::OK, "{device}");
    assert_eq!(device["serialNumber"], "8GXK2Q");
    let identifier = device["identifier"][0]["value"].as_str().unwrap();
    assert!(identifier.ends_with("/8GXK2Q") && identifier.len() > 7, "keyed by the user: {identifier}");
    assert_eq!(device["patient"]["reference"], format!("Patient/{patient}"));

    let carbs = search(&app, &format!("Observation?patient=Patient/{patient}&code=9059-7")).await;
    assert_eq!(carbs.len(), 1, "carbs written, insulin not: {carbs:?}");
    if let Some(validator) = FhirPartner::start().await {
        let mut all = readings.clone();
        all.push(device);
        all.extend(by_code.into_values());
        all.extend(panels);
        all.extend(carbs);
        validator.validate_all(&all).await.unwrap_or_else(|e| panic!("invalid R4: {e}"));
    }
}

/// Readings that arrive late (Dexcom uploads 1–3 h after the fact) are read by the next poll,
/// which re-reads the overlap: the day's summary changes, nothing is duplicated, and readings
/// read again keep their versions.
async fn late_readings_on_the_next_poll_change_the_summary_without_duplicates(backend: Backend) {
    let case = DexcomCase::start().await;
    let app = app_for(&case, backend).await;
    let (patient, _, user) = connect_in(&case, &app, Value::Null).await;
    // Five hours up to three hours ago; the last three are not uploaded yet.
    let now = now_ms();
    let (from, uploaded) = (now - 5 * 3_600_000, now - 3 * 3_600_000);
    case.stand_in.seed_egvs(&user, from, uploaded, |_| Some(100.0));
    crate::stories::sync_all(&app).await;
    let readings = format!("Observation?patient=Patient/{patient}&code=99504-3");
    let before = total(&app, &readings).await;
    let day_of = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).unwrap().format("%Y-%m-%d").to_string();
    let panel_query = format!("Observation?patient=Patient/{patient}&code=107931-8&date={}", day_of(uploaded - 1));
    let panel = search(&app, &panel_query).await.pop().expect("a summary");
    let first = search(&app, &format!("{readings}&_sort=date&_count=1")).await.pop().unwrap();

    // The last 3 hours arrive, higher (and one off scale): the next poll (2 h ± 15 min) reads them.
    let late = case.stand_in.seed_egvs(&user, uploaded, now - 60_000, |at| (at != uploaded).then_some(250.0));
    let polls_before = case.stand_in.requests().len();
    let poll_at = now_ms() + 2 * 3_600_000 + 16 * 60_000;
    while wearlink::sync::run_due(&app.services, poll_at).await.unwrap() > 0 {}
    assert!(case.stand_in.requests().len() > polls_before, "the poll ran");
    assert_eq!(total(&app, &readings).await, before + late as i64, "no duplicates");
    let again = search(&app, &format!("{readings}&_sort=date&_count=1")).await.pop().unwrap();
    assert_eq!(again["meta"]["versionId"], first["meta"]["versionId"], "re-read readings keep their versions");
    let changed = search(&app, &panel_query).await.pop().expect("a summary");
    if day_of(uploaded - 1) == day_of(now - 60_000) {
        assert_ne!(changed["meta"]["versionId"], panel["meta"]["versionId"], "the day's summary was recomputed");
    }
    let high = search(&app, &format!("{readings}&date=ge{}Z", system_time(uploaded))).await;
    assert!(high.iter().any(|r| r["interpretation"][0]["coding"][0]["code"] == ">"), "the off-scale reading");
    high.iter().for_each(assert_sensor_reading);
}
