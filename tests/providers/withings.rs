//! Withings told through the shared stories, plus what only Withings does: measure groups that
//! become R4 vital signs (`value × 10^unit`), per-user notification subscriptions made at connect
//! and removed on disconnect, a deleted measure, and an expired token answered inside an HTTP 200.
//!
//! The stand-in behaves as developer.withings.com documents it (shared/spec/providers.md): the
//! authorize page checks the client, `response_type=code` and the comma-separated scopes; every
//! call is a form POST answered HTTP 200 with an envelope `{status, body}` (or `{status, error}`);
//! `POST /v2/oauth2 action=requesttoken` exchanges codes and rotates refresh tokens (the old one
//! stays usable until the new access token is used); `POST /v2/signature action=getnonce` checks
//! the HMAC of `getnonce,<client_id>,<timestamp>` and hands out single-use nonces that the signed
//! `action=revoke` (HMAC of `revoke,<client_id>,<nonce>`) consumes; `POST /notify` subscribes a
//! user's category only after a HEAD to the callback URL answered 200, 286 for a revoke of no
//! subscription; `getmeas`, `getactivity`, `getworkouts`, `getsummary` filter on `lastupdate`
//! and page with `more`/`offset`; a refused access token is `{"status": 401}` in an HTTP 200.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use reqwest::StatusCode as S;
use serde_json::{json, Value};
use wearlink::time::now_ms;

use crate::stories::{app_for, connected, connection, deliver, search, sync_all, Case, Delivery};
use crate::support::{problem_code, Backend, FhirPartner, Options, TestApp};

const CLIENT_ID: &str = "withings-client-7b2e";
const CLIENT_SECRET: &str = "withings-client-secret-91d0";
const WEBHOOK_SECRET: &str = "withings-hook-secret-4c7f";
const SCOPE: &str = "user.info,user.metrics,user.activity,user.sleepevents";
const PAGE: usize = 2;

#[derive(Default)]
struct Inner {
    next_user: u64,
    /// code → (redirect_uri, user)
    codes: HashMap<String, (String, u64)>,
    /// access token → user
    access: HashMap<String, u64>,
    /// refresh token → (user, the access token issued with its successor): dies once that is used
    refresh: HashMap<String, (u64, Option<String>)>,
    issued: Vec<String>,
    refreshes: HashMap<u64, usize>,
    revoked: Vec<String>,
    expires_in: i64,
    /// Scopes granted from now on.
    scope: String,
    nonces: HashSet<String>,
    /// (user, appli, callbackurl)
    subscriptions: Vec<(u64, u32, String)>,
    /// HEAD checks of callback URLs and their status
    heads: Vec<(String, u16)>,
    /// user → (kind, object): `measure`, `activity`, `workout`, `sleep`
    data: HashMap<u64, Vec<(&'static str, Value)>>,
    /// data calls answered with the refused-token envelope
    refused_tokens: usize,
    next_id: u64,
}

#[derive(Clone)]
pub struct WithingsStandIn {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

/// Withings' envelope for an error: HTTP 200 all the same.
fn error(status: i64, message: &str) -> Response {
    Json(json!({"status": status, "body": {}, "error": message})).into_response()
}

fn ok(body: Value) -> Response {
    Json(json!({"status": 0, "body": body})).into_response()
}

fn hmac_hex(values: &[&str]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(CLIENT_SECRET.as_bytes()).unwrap();
    mac.update(values.join(",").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

impl WithingsStandIn {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stand_in = WithingsStandIn {
            addr: listener.local_addr().unwrap(),
            inner: Arc::new(Mutex::new(Inner {
                next_user: 36_300,
                expires_in: 10_800,
                scope: SCOPE.into(),
                next_id: 5_000_000_000,
                ..Default::default()
            })),
        };
        let app = Router::new()
            .route("/oauth2_user/authorize2", get(authorize))
            .route("/v2/oauth2", post(oauth2))
            .route("/v2/signature", post(signature))
            .route("/notify", post(notify))
            .route("/measure", post(data))
            .route("/v2/measure", post(data))
            .route("/v2/sleep", post(data))
            .with_state(stand_in.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        stand_in
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn issue(&self, user: u64) -> Value {
        let access = format!("withings-access-{}", uuid::Uuid::new_v4().simple());
        let refresh = format!("withings-refresh-{}", uuid::Uuid::new_v4().simple());
        let mut inner = self.inner.lock().unwrap();
        inner.access.retain(|_, u| *u != user);
        inner.access.insert(access.clone(), user);
        inner.refresh.insert(refresh.clone(), (user, None));
        inner.issued.extend([access.clone(), refresh.clone()]);
        json!({"userid": user, "access_token": access, "refresh_token": refresh, "expires_in": inner.expires_in,
            "scope": inner.scope, "token_type": "Bearer", "csrf_token": "c"})
    }

    /// The user of a bearer token; using a new access token kills the refresh token it replaced.
    fn bearer_user(&self, headers: &HeaderMap) -> Option<u64> {
        let token = headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")?.to_string();
        let mut inner = self.inner.lock().unwrap();
        let user = *inner.access.get(&token)?;
        inner.refresh.retain(|_, (_, successor)| successor.as_deref() != Some(token.as_str()));
        Some(user)
    }

    fn add(&self, user: u64, kind: &'static str, object: Value) {
        self.inner.lock().unwrap().data.entry(user).or_default().push((kind, object));
    }

    fn next_id(&self) -> u64 {
        let mut inner = self.inner.lock().unwrap();
        inner.next_id += 1;
        inner.next_id
    }

    /// A measure group taken at `date` (epoch s), stored now; answers its grpid.
    pub fn add_group(&self, user: u64, date: i64, category: i64, measures: Value) -> u64 {
        let grpid = self.next_id();
        let now = now_ms() / 1000;
        self.add(
            user,
            "measure",
            json!({"grpid": grpid, "attrib": 0, "date": date, "created": now, "modified": now, "category": category,
                "deviceid": "c405eb8e0e053f6601e151c7e43c04e29aad6956", "model": "Body+", "measures": measures,
                "comment": null}),
        );
        grpid
    }

    /// Sets a group's `modified` (a device whose clock runs ahead stores groups dated later).
    pub fn set_modified(&self, user: u64, grpid: u64, modified: i64) {
        let mut inner = self.inner.lock().unwrap();
        for (_, o) in
            inner.data.get_mut(&user).into_iter().flatten().filter(|(k, o)| *k == "measure" && o["grpid"] == grpid)
        {
            o["modified"] = json!(modified);
        }
    }

    pub fn delete_group(&self, user: u64, grpid: u64) {
        if let Some(list) = self.inner.lock().unwrap().data.get_mut(&user) {
            list.retain(|(k, o)| !(*k == "measure" && o["grpid"] == grpid));
        }
    }

    /// Every access token stops working (expired): data calls answer `{"status": 401}`.
    pub fn expire_access_tokens(&self) {
        self.inner.lock().unwrap().access.clear();
    }

    pub fn subscriptions(&self) -> Vec<(u64, u32, String)> {
        self.inner.lock().unwrap().subscriptions.clone()
    }
}

async fn authorize(State(s): State<WithingsStandIn>, Query(q): Query<HashMap<String, String>>) -> Response {
    let field = |k: &str| q.get(k).cloned().unwrap_or_default();
    if field("client_id") != CLIENT_ID || field("response_type") != "code" || field("state").is_empty() {
        return (StatusCode::BAD_REQUEST, "bad client_id, response_type or state").into_response();
    }
    if field("scope") != SCOPE {
        return (StatusCode::BAD_REQUEST, format!("scopes must be comma-separated: {:?}", field("scope")))
            .into_response();
    }
    let code = format!("withings-code-{}", uuid::Uuid::new_v4().simple());
    {
        let mut inner = s.inner.lock().unwrap();
        inner.next_user += 1;
        let user = inner.next_user;
        inner.codes.insert(code.clone(), (field("redirect_uri"), user));
    }
    let mut back = url::Url::parse(&field("redirect_uri")).unwrap();
    back.query_pairs_mut().append_pair("code", &code).append_pair("state", &field("state"));
    (StatusCode::FOUND, [(header::LOCATION, back.to_string())]).into_response()
}

async fn oauth2(State(s): State<WithingsStandIn>, Form(form): Form<HashMap<String, String>>) -> Response {
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    if field("client_id") != CLIENT_ID {
        return error(503, "Invalid Params: invalid client_id");
    }
    match (field("action").as_str(), field("grant_type").as_str()) {
        ("requesttoken", grant) if field("client_secret") != CLIENT_SECRET => {
            error(503, &format!("Invalid Params: invalid client_secret ({grant})"))
        }
        ("requesttoken", "authorization_code") => {
            let taken = s.inner.lock().unwrap().codes.remove(&field("code"));
            match taken {
                Some((uri, user)) if uri == field("redirect_uri") => ok(s.issue(user)),
                _ => error(503, "Invalid Params: invalid code"),
            }
        }
        ("requesttoken", "refresh_token") => {
            let user = s.inner.lock().unwrap().refresh.get(&field("refresh_token")).map(|(u, _)| *u);
            let Some(user) = user else { return error(503, "Invalid Params: invalid refresh_token") };
            let answer = s.issue(user);
            let mut inner = s.inner.lock().unwrap();
            *inner.refreshes.entry(user).or_default() += 1;
            // The old refresh token lives until the new access token is used.
            let new_access = answer["access_token"].as_str().unwrap().to_string();
            inner.refresh.insert(field("refresh_token"), (user, Some(new_access)));
            drop(inner);
            ok(answer)
        }
        ("revoke", _) => {
            let nonce = field("nonce");
            if !s.inner.lock().unwrap().nonces.remove(&nonce) {
                return error(503, "Invalid Params: invalid nonce");
            }
            if field("signature") != hmac_hex(&["revoke", CLIENT_ID, &nonce]) {
                return error(503, "Invalid Params: invalid signature");
            }
            let Ok(user) = field("userid").parse::<u64>() else { return error(503, "Invalid Params: userid") };
            let mut inner = s.inner.lock().unwrap();
            inner.access.retain(|_, u| *u != user);
            inner.refresh.retain(|_, (u, _)| *u != user);
            inner.revoked.push(user.to_string());
            ok(json!({}))
        }
        _ => error(2555, "An unknown error occurred"),
    }
}

async fn signature(State(s): State<WithingsStandIn>, Form(form): Form<HashMap<String, String>>) -> Response {
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    let fresh = field("timestamp").parse::<i64>().is_ok_and(|t| (t - now_ms() / 1000).abs() <= 600);
    if field("action") != "getnonce" || field("client_id") != CLIENT_ID || !fresh {
        return error(503, "Invalid Params");
    }
    if field("signature") != hmac_hex(&["getnonce", CLIENT_ID, &field("timestamp")]) {
        return error(503, "Invalid Params: invalid signature");
    }
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    s.inner.lock().unwrap().nonces.insert(nonce.clone());
    ok(json!({"nonce": nonce}))
}

async fn notify(
    State(s): State<WithingsStandIn>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let Some(user) = s.bearer_user(&headers) else {
        return error(401, "XRequestID: Not provided invalid_token: The access token provided is invalid");
    };
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    let Ok(appli) = field("appli").parse::<u32>() else { return error(503, "Invalid Params: appli") };
    let callback = field("callbackurl");
    match field("action").as_str() {
        "subscribe" => {
            if matches!(appli, 50 | 51) && !s.inner.lock().unwrap().scope.contains("user.sleepevents") {
                return error(503, "Invalid Params: user.sleepevents scope needed");
            }
            // Withings checks the callback URL with a HEAD before it subscribes it.
            let head = reqwest::Client::new().head(&callback).send().await;
            let status = head.map(|r| r.status().as_u16()).unwrap_or(0);
            let mut inner = s.inner.lock().unwrap();
            inner.heads.push((callback.clone(), status));
            if status != 200 {
                return error(2554, "The callback URL did not answer the HEAD request with 200");
            }
            inner.subscriptions.retain(|(u, a, c)| !(*u == user && *a == appli && *c == callback));
            inner.subscriptions.push((user, appli, callback));
            ok(json!({}))
        }
        "revoke" => {
            let mut inner = s.inner.lock().unwrap();
            let before = inner.subscriptions.len();
            inner.subscriptions.retain(|(u, a, c)| !(*u == user && *a == appli && *c == callback));
            if inner.subscriptions.len() == before {
                return error(286, "No such subscription was found");
            }
            ok(json!({}))
        }
        _ => error(2555, "An unknown error occurred"),
    }
}

/// `getmeas`, `getactivity`, `getworkouts`, `getsummary`: objects changed since `lastupdate`,
/// `PAGE` at a time from `offset`.
async fn data(
    State(s): State<WithingsStandIn>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let Some(user) = s.bearer_user(&headers) else {
        s.inner.lock().unwrap().refused_tokens += 1;
        return error(401, "XRequestID: Not provided invalid_token: The access token provided is invalid");
    };
    let field = |k: &str| form.get(k).cloned().unwrap_or_default();
    let (kind, key) = match field("action").as_str() {
        "getmeas" => ("measure", "measuregrps"),
        "getactivity" => ("activity", "activities"),
        "getworkouts" => ("workout", "series"),
        "getsummary" => ("sleep", "series"),
        _ => return error(2555, "An unknown error occurred"),
    };
    if kind == "measure" && field("category") != "1" {
        return error(503, "Invalid Params: this stand-in expects category=1");
    }
    let Ok(since) = field("lastupdate").parse::<i64>() else { return error(503, "Invalid Params: lastupdate") };
    let offset: usize = form.get("offset").map_or(Ok(0), |o| o.parse()).unwrap_or(usize::MAX);
    let matching: Vec<Value> = s
        .inner
        .lock()
        .unwrap()
        .data
        .get(&user)
        .into_iter()
        .flatten()
        .filter(|(k, o)| *k == kind && o["modified"].as_i64().unwrap_or(0) >= since)
        .map(|(_, o)| o.clone())
        .collect();
    if offset > matching.len() {
        return error(503, "Invalid Params: offset");
    }
    let page: Vec<Value> = matching.iter().skip(offset).take(PAGE).cloned().collect();
    let more = offset + PAGE < matching.len();
    let mut body = json!({"more": more, "offset": if more { offset + PAGE } else { 0 }, "timezone": "Europe/Paris"});
    body[key] = Value::Array(page);
    if kind == "measure" {
        body["updatetime"] = json!(now_ms() / 1000);
    }
    ok(body)
}

pub struct WithingsCase {
    pub stand_in: WithingsStandIn,
}

impl WithingsCase {
    pub async fn start() -> Self {
        Self { stand_in: WithingsStandIn::start().await }
    }

    /// A notification as Withings posts it: a form, to the callback URL with our `?token=`.
    pub fn notification(&self, user: &str, appli: u32, start_s: i64, end_s: i64, token: &str) -> Delivery {
        let body = format!("userid={user}&appli={appli}&startdate={start_s}&enddate={end_s}");
        Delivery {
            method: "POST",
            headers: vec![("content-type".into(), "application/x-www-form-urlencoded".into())],
            body: body.into_bytes(),
            query: vec![("token".into(), token.into())],
        }
    }

    fn workout(&self, user: &str, id: &str) -> Value {
        let uid: u64 = user.parse().unwrap();
        let inner = self.stand_in.inner.lock().unwrap();
        let list = inner.data.get(&uid).cloned().unwrap_or_default();
        list.into_iter()
            .find(|(k, o)| *k == "workout" && o["id"].as_u64().map(|n| n.to_string()).as_deref() == Some(id))
            .map(|(_, o)| o)
            .expect("seeded")
    }
}

#[async_trait]
impl Case for WithingsCase {
    fn slug(&self) -> &'static str {
        "withings"
    }

    fn env(&self) -> Vec<(String, String)> {
        let s = &self.stand_in;
        vec![
            ("WEARLINK_PROVIDER_WITHINGS_AUTHORIZE_URL".into(), s.url("/oauth2_user/authorize2")),
            ("WEARLINK_PROVIDER_WITHINGS_TOKEN_URL".into(), s.url("/v2/oauth2")),
            ("WEARLINK_PROVIDER_WITHINGS_API_URL".into(), s.url("")),
        ]
    }

    fn client(&self) -> (String, String) {
        (CLIENT_ID.into(), CLIENT_SECRET.into())
    }

    fn webhook_secret(&self) -> Option<String> {
        Some(WEBHOOK_SECRET.into())
    }

    fn granted_scopes(&self) -> Vec<String> {
        let mut scopes: Vec<String> = SCOPE.split(',').map(String::from).collect();
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
        self.stand_in.inner.lock().unwrap().refresh.retain(|_, (u, _)| *u != user);
    }

    fn revoked(&self) -> Vec<String> {
        self.stand_in.inner.lock().unwrap().revoked.clone()
    }

    fn seed_workout(&self, user: &str, start_ms: i64) -> String {
        let id = self.stand_in.next_id();
        let start = start_ms / 1000;
        self.stand_in.add(
            user.parse().unwrap(),
            "workout",
            json!({"id": id, "category": 2, "timezone": "Europe/Paris", "attrib": 7, "startdate": start,
                "enddate": start + 2_700, "date": "2026-12-01", "modified": now_ms() / 1000, "deviceid": null,
                "data": {"calories": 412, "distance": 7_420, "hr_average": 146, "hr_max": 171, "steps": 7_900}}),
        );
        id.to_string()
    }

    fn workout_identifier_system(&self) -> String {
        "https://wbsapi.withings.net/v2/measure/workouts".into()
    }

    /// Withings signs nothing: what a forger cannot know is the `?token=` of our callback URL,
    /// which the stories hand as `secret`.
    fn workout_delivery(&self, user: &str, workout_id: &str, _at_ms: i64, secret: &str) -> Delivery {
        let w = self.workout(user, workout_id);
        let (start, end) = (w["startdate"].as_i64().unwrap(), w["enddate"].as_i64().unwrap());
        self.notification(user, 16, start, end, secret)
    }

    fn signs_timestamps(&self) -> bool {
        false
    }
}

crate::provider_stories!(crate::withings::WithingsCase::start();
    connect_approve_and_see_the_endpoint,
    a_declined_connect_stores_nothing,
    refresh_rotates_and_a_dead_grant_marks_the_connection_error,
    disconnect_revokes_upstream,
    webhook_signatures_are_checked_and_events_stored_once,
    two_instances_racing_refresh_it_once,
    backfill_and_webhook_data_arrive_as_valid_r4,
);

crate::own_stories!(
    connect_subscribes_each_category_and_disconnect_unsubscribes,
    scale_cuff_and_thermometer_readings_become_valid_vital_signs,
    a_deleted_measure_becomes_entered_in_error,
    an_expired_token_in_the_envelope_is_refreshed_once,
    notifications_of_unknown_users_are_refused,
    without_a_webhook_secret_the_first_connect_makes_one_and_notifications_need_it,
    a_night_and_a_day_arrive_as_valid_r4,
);

async fn observations(app: &TestApp, patient: &str) -> Vec<Value> {
    search(app, &format!("Observation?patient=Patient/{patient}&_count=200")).await
}

fn by_code<'a>(observations: &'a [Value], code: &str) -> Vec<&'a Value> {
    observations.iter().filter(|o| o["code"]["coding"][0]["code"] == code).collect()
}

/// Connect: the callback URL answers Withings' HEAD, and categories 1, 4, 16, 44 (and 50, 51:
/// `user.sleepevents` was granted) are subscribed with the `?token=` URL. Disconnect removes each
/// subscription with the user's token, then revokes with a fresh, signed nonce.
async fn connect_subscribes_each_category_and_disconnect_unsubscribes(backend: Backend) {
    let case = WithingsCase::start().await;
    let app = app_for(&case, backend).await;
    let (patient, _, user) = connected(&case, &app).await;
    let webhook = app.url(&format!("/v1/wearables/withings/webhook/{}", app.project_id));
    let callback = format!("{webhook}?token={WEBHOOK_SECRET}");
    let mut applis: Vec<u32> = case.stand_in.subscriptions().iter().map(|(_, a, _)| *a).collect();
    applis.sort();
    assert_eq!(applis, vec![1, 4, 16, 44, 50, 51]);
    assert!(case.stand_in.subscriptions().iter().all(|(u, _, c)| u.to_string() == user && *c == callback));
    let heads = case.stand_in.inner.lock().unwrap().heads.clone();
    assert!(!heads.is_empty() && heads.iter().all(|(url, status)| *url == callback && *status == 200), "{heads:?}");
    // Our side of the handshake: a HEAD without the token is refused.
    let bare = app.http.head(&webhook).send().await.unwrap();
    assert_eq!(bare.status(), S::UNAUTHORIZED);

    let path = format!("/v1/wearables/withings/connections/{patient}");
    let (status, body) = app.send("DELETE", &path, Some(&app.admin.clone()), None).await;
    assert_eq!((status, body), (S::OK, json!({"ok": true, "revokePending": false})));
    assert!(case.stand_in.subscriptions().is_empty(), "{:?}", case.stand_in.subscriptions());
    assert_eq!(case.revoked(), vec![user]);
    assert!(case.stand_in.inner.lock().unwrap().nonces.is_empty(), "the nonce was used once");

    // Without `user.sleepevents`, bed in/out are not subscribed.
    case.stand_in.inner.lock().unwrap().scope = "user.info,user.metrics,user.activity".into();
    connected(&case, &app).await;
    let user = case.last_user();
    let mut applis: Vec<u32> =
        case.stand_in.subscriptions().iter().filter(|(u, _, _)| u.to_string() == user).map(|(_, a, _)| *a).collect();
    applis.sort();
    assert_eq!(applis, vec![1, 4, 16, 44]);
}

/// A scale (weight, ×10^-3; fat ratio), a cuff (systolic ×10^1, diastolic ×10^0, heart rate)
/// and a thermometer (×10^-2), announced by appli 1 and 4 notifications: valid R4 vital signs with
/// the right codes, units and values, paged through `more`/`offset`; an objective is not written.
async fn scale_cuff_and_thermometer_readings_become_valid_vital_signs(backend: Backend) {
    let case = WithingsCase::start().await;
    let app = app_for(&case, backend).await;
    let (patient, _, user) = connected(&case, &app).await;
    sync_all(&app).await;
    let uid: u64 = user.parse().unwrap();
    let t = now_ms() / 1000 - 600;
    case.stand_in.add_group(
        uid,
        t,
        1,
        json!([{"value": 72345, "type": 1, "unit": -3, "algo": 0, "fm": 1},
        {"value": 214, "type": 6, "unit": -1, "algo": 0, "fm": 1}]),
    );
    case.stand_in.add_group(
        uid,
        t + 60,
        1,
        json!([{"value": 12, "type": 10, "unit": 1}, {"value": 79, "type": 9, "unit": 0},
        {"value": 64, "type": 11, "unit": 0}]),
    );
    case.stand_in.add_group(uid, t + 120, 1, json!([{"value": 3665, "type": 71, "unit": -2}]));
    case.stand_in.add_group(uid, t + 180, 2, json!([{"value": 68, "type": 1, "unit": 0}]));
    for appli in [1, 4] {
        let (status, body) =
            deliver(&app, "withings", &case.notification(&user, appli, t, t + 120, WEBHOOK_SECRET)).await;
        assert_eq!((status, body), (S::OK, json!({"ok": true, "duplicate": false})));
    }
    sync_all(&app).await;
    let all = observations(&app, &patient).await;
    let mut codes: Vec<&str> = all.iter().map(|o| o["code"]["coding"][0]["code"].as_str().unwrap()).collect();
    codes.sort();
    assert_eq!(codes, vec!["29463-7", "41982-0", "8310-5", "85354-9", "8867-4"], "one each, the objective left out");
    let vital = |code: &str| by_code(&all, code)[0].clone();
    let weight = vital("29463-7");
    assert_eq!(
        weight["valueQuantity"],
        json!({"value": 72.345, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"})
    );
    assert_eq!(weight["category"][0]["coding"][0]["code"], "vital-signs");
    let taken = chrono::DateTime::from_timestamp(t, 0).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    assert_eq!(weight["effectiveDateTime"], taken);
    let bp = vital("85354-9");
    assert!(bp.get("valueQuantity").is_none(), "{bp}");
    assert_eq!(bp["component"][0]["code"]["coding"][0]["code"], "8480-6");
    assert_eq!(bp["component"][0]["valueQuantity"]["value"], 120);
    assert_eq!(bp["component"][0]["valueQuantity"]["code"], "mm[Hg]");
    assert_eq!(bp["component"][1]["code"]["coding"][0]["code"], "8462-4");
    assert_eq!(bp["component"][1]["valueQuantity"]["value"], 79);
    assert_eq!(vital("8867-4")["valueQuantity"]["code"], "/min");
    let temperature = vital("8310-5");
    assert_eq!(temperature["valueQuantity"]["value"], json!(36.65));
    assert_eq!(temperature["valueQuantity"]["code"], "Cel");
    let fat = vital("41982-0");
    assert_eq!(fat["valueQuantity"]["value"], json!(21.4));
    assert_eq!(fat["category"][0]["coding"][0]["code"], "exam");
    let (_, vitals) = app.get(&format!("/fhir/R4/Observation?patient=Patient/{patient}&category=vital-signs")).await;
    assert_eq!(vitals["total"], 4, "{vitals}");
    if let Some(validator) = FhirPartner::start().await {
        validator.validate_all(&all).await.unwrap_or_else(|e| panic!("invalid R4: {e}"));
    }
}

/// A measure group deleted at Withings: the notification names its range, the re-read no longer
/// has it, and what it wrote becomes `entered-in-error`; the group beside it stays final.
async fn a_deleted_measure_becomes_entered_in_error(backend: Backend) {
    let case = WithingsCase::start().await;
    let app = app_for(&case, backend).await;
    let (patient, _, user) = connected(&case, &app).await;
    let uid: u64 = user.parse().unwrap();
    let t = now_ms() / 1000 - 3_600;
    let kept = case.stand_in.add_group(uid, t, 1, json!([{"value": 81200, "type": 1, "unit": -3}]));
    let gone = case.stand_in.add_group(
        uid,
        t + 300,
        1,
        json!([{"value": 135, "type": 10, "unit": 0},
        {"value": 85, "type": 9, "unit": 0}, {"value": 71, "type": 11, "unit": 0}]),
    );
    // Taken by a scale whose clock runs 2 minutes ahead: stored before the time it is dated.
    let ahead = case.stand_in.add_group(uid, t + 300, 1, json!([{"value": 80900, "type": 1, "unit": -3}]));
    case.stand_in.set_modified(uid, ahead, t + 180);
    sync_all(&app).await;
    assert_eq!(observations(&app, &patient).await.len(), 4, "backfilled");

    case.stand_in.delete_group(uid, gone);
    let (status, body) =
        deliver(&app, "withings", &case.notification(&user, 4, t + 300, t + 300, WEBHOOK_SECRET)).await;
    assert_eq!(status, S::OK, "{body}");
    sync_all(&app).await;
    let all = observations(&app, &patient).await;
    assert_eq!(all.len(), 4, "kept, not deleted");
    for o in &all {
        let from = |grpid: u64| o["identifier"][0]["value"].as_str().unwrap().starts_with(&format!("{user}:{grpid}:"));
        let from_gone = from(gone);
        assert!(from_gone || from(kept) || from(ahead), "{o}");
        assert_eq!(o["status"], if from_gone { "entered-in-error" } else { "final" }, "{o}");
    }
    let (_, events) = app.get("/v1/wearables/events").await;
    assert_eq!(events["events"][0]["state"], "synced", "{events}");
}

/// The access token expires early: Withings answers HTTP 200 with `{"status": 401}`. The sync
/// refreshes once, stores the rotated tokens, and the retried call writes the reading.
async fn an_expired_token_in_the_envelope_is_refreshed_once(backend: Backend) {
    let case = WithingsCase::start().await;
    let app = app_for(&case, backend).await;
    let (patient, endpoint_id, user) = connected(&case, &app).await;
    sync_all(&app).await;
    case.stand_in.expire_access_tokens();
    let t = now_ms() / 1000 - 60;
    case.stand_in.add_group(user.parse().unwrap(), t, 1, json!([{"value": 7060, "type": 1, "unit": -2}]));
    let (status, body) = deliver(&app, "withings", &case.notification(&user, 1, t, t, WEBHOOK_SECRET)).await;
    assert_eq!(status, S::OK, "{body}");
    sync_all(&app).await;
    assert_eq!(case.refreshes(&user), 1);
    assert_eq!(case.stand_in.inner.lock().unwrap().refused_tokens, 1, "one refused call, then the retry worked");
    let weight = by_code(&observations(&app, &patient).await, "29463-7")[0].clone();
    assert_eq!(weight["valueQuantity"]["value"], json!(70.6));
    assert_eq!(connection(&app, &endpoint_id).await["status"], "active");
    app.assert_not_stored(&case.issued_tokens()).await;
    // The new access token was used, so only the new refresh token is alive: the one stored.
    let later = now_ms() + app.services.config.refresh.min_interval.as_millis() as i64 + 1;
    let report = wearlink::connections::refresh_due(&app.services, later + 10_900_000).await.unwrap();
    assert_eq!(report.refreshed, 1, "{report:?}");
    assert_eq!(case.refreshes(&user), 2);
}

/// Withings signs nothing: a notification naming no user of the project is refused (403) and not
/// stored, even with the right token; a body that is not Withings' form is 400.
async fn notifications_of_unknown_users_are_refused(backend: Backend) {
    let case = WithingsCase::start().await;
    let app = app_for(&case, backend).await;
    connected(&case, &app).await;
    let t = now_ms() / 1000;
    let (status, body) = deliver(&app, "withings", &case.notification("999999", 1, t, t, WEBHOOK_SECRET)).await;
    assert_eq!(status, S::FORBIDDEN, "{body}");
    let mut json_body = case.notification("1", 1, t, t, WEBHOOK_SECRET);
    json_body.body = br#"{"userid": 1}"#.to_vec();
    let (status, body) = deliver(&app, "withings", &json_body).await;
    assert_eq!(status, S::BAD_REQUEST, "{body}");
    assert_eq!(problem_code(&body, status), "malformed_json");
    let (_, events) = app.get("/v1/wearables/events").await;
    assert_eq!(events["events"], json!([]), "{events}");
}

/// Withings signs nothing, so the `?token=` of the callback URL is all a forger lacks: a project
/// that set no webhook secret gets one made at its first connect, the subscriptions carry it, and
/// a notification without it — even naming a connected user — is refused (401) and not stored.
async fn without_a_webhook_secret_the_first_connect_makes_one_and_notifications_need_it(backend: Backend) {
    let case = WithingsCase::start().await;
    let app = TestApp::spawn_with(backend, Options { env: case.env(), ..Options::default() }).await;
    let (id, secret) = case.client();
    app.configure_with("withings", &id, &secret).await;
    let (_, _, user) = connected(&case, &app).await;
    let callbacks: HashSet<String> = case.stand_in.subscriptions().iter().map(|(_, _, c)| c.clone()).collect();
    assert_eq!(callbacks.len(), 1, "{callbacks:?}");
    let callback = url::Url::parse(callbacks.iter().next().unwrap()).unwrap();
    let token = callback.query_pairs().find(|(k, _)| k == "token").map(|(_, v)| v.into_owned());
    let token = token.expect("the subscribed URL carries a token");
    assert!(token.len() >= 32, "a random secret, not a placeholder");
    let (_, secrets) = app.get("/v1/project/secrets").await;
    assert!(secrets.to_string().contains("WEARABLE_WITHINGS_WEBHOOK_SECRET"), "{secrets}");

    let t = now_ms() / 1000;
    let (status, body) = deliver(&app, "withings", &case.notification(&user, 46, t, t, "forged")).await;
    assert_eq!(status, S::UNAUTHORIZED, "{body}");
    let mut unlink = case.notification(&user, 46, t, t, "");
    unlink.query.clear();
    unlink.body = format!("userid={user}&appli=46&action=unlink").into_bytes();
    let (status, body) = deliver(&app, "withings", &unlink).await;
    assert_eq!(status, S::UNAUTHORIZED, "{body}");
    let (_, events) = app.get("/v1/wearables/events").await;
    assert_eq!(events["events"], json!([]), "nothing stored: {events}");
    let (status, body) = deliver(&app, "withings", &case.notification(&user, 1, t, t, &token)).await;
    assert_eq!(status, S::OK, "{body}");
}

/// A sleep summary (appli 44) and a day of activity (appli 16): the night's duration and stages
/// in minutes, the day's steps, distance and energy, all valid R4.
async fn a_night_and_a_day_arrive_as_valid_r4(backend: Backend) {
    let case = WithingsCase::start().await;
    let app = app_for(&case, backend).await;
    let (patient, _, user) = connected(&case, &app).await;
    sync_all(&app).await;
    let uid: u64 = user.parse().unwrap();
    let now = now_ms() / 1000;
    let (bed, up) = (now - 9 * 3600, now - 3600);
    let day = chrono::DateTime::from_timestamp(up, 0).unwrap().format("%Y-%m-%d").to_string();
    case.stand_in.add(uid, "sleep", json!({"id": case.stand_in.next_id(), "timezone": "Europe/Paris", "model": 32,
        "startdate": bed, "enddate": up, "date": day, "modified": now,
        "data": {"total_sleep_time": 25200, "deepsleepduration": 5400, "lightsleepduration": 12600, "remsleepduration": 7200, "hr_average": 58}}));
    case.stand_in.add(
        uid,
        "activity",
        json!({"date": day, "timezone": "Europe/Paris", "deviceid": null, "brand": 18,
        "is_tracker": true, "steps": 8823, "distance": 6120.5, "totalcalories": 2310.2, "modified": now}),
    );
    for (appli, start, end) in [(44, bed, up), (16, up, up)] {
        let (status, body) =
            deliver(&app, "withings", &case.notification(&user, appli, start, end, WEBHOOK_SECRET)).await;
        assert_eq!(status, S::OK, "{body}");
    }
    sync_all(&app).await;
    let all = observations(&app, &patient).await;
    let value = |code: &str| by_code(&all, code)[0]["valueQuantity"]["value"].clone();
    assert_eq!(value("93832-4"), json!(420), "7 h of sleep in minutes");
    assert_eq!((value("93831-6"), value("93830-8"), value("93829-0")), (json!(90), json!(210), json!(120)));
    assert_eq!(value("41950-7"), json!(8823));
    assert_eq!(value("41979-6"), json!(2310.2));
    assert_eq!(
        by_code(&all, "93832-4")[0]["effectivePeriod"]["end"],
        chrono::DateTime::from_timestamp(up, 0).unwrap().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    assert_eq!(all.len(), 7, "{all:?}");
    if let Some(validator) = FhirPartner::start().await {
        validator.validate_all(&all).await.unwrap_or_else(|e| panic!("invalid R4: {e}"));
    }
}
