//! The providers' data APIs on the stand-in: Strava API v3 activities and Polar AccessLink v3
//! exercises, sleep and daily activity (non-transactional endpoints), with each provider's rate
//! limits and rate-limit headers, and a log of every data request.
//!
//! Strava (under `/strava/api/v3`): `GET /athlete/activities` (summaries, `resource_state` 2) and
//! `GET /activities/{id}` (detailed, `resource_state` 3). Only the athlete's current access token
//! works (401 with Strava's error body otherwise). Limits per application: overall and read, each
//! per "15-minute" window (aligned to multiples of the window length since the Unix epoch, as
//! Strava's start at :00/:15/:30/:45) and per UTC day; refused requests still count.
//!
//! Polar (under `/polar/v3`): `GET /exercises[/{id}]`, `GET /users/sleep[/{date}|/available]`,
//! `GET /users/activities[/{date}]`. Only the user's current token works (401); a user who is not
//! registered (`POST /v3/users`) gets 403. Limits per client with windows that start at the first
//! request (not clock-aligned); `RateLimit-Reset` counts down to each window's end.
//!
//! Data is added by tests (`add_strava_activity`, `add_polar_exercise`, ...), with builders for
//! realistic bodies (`strava_activity_json`, `polar_exercise_json`, ...).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Duration as Days, NaiveDate, Utc};
use serde_json::{json, Value};

use super::stand_in::StandIn;

pub const STRAVA_PREFIX: &str = "/strava/api/v3";
pub const POLAR_PREFIX: &str = "/polar/v3";

/// Limits high enough that ordinary tests never meet them.
pub const DEFAULT_LIMIT: u64 = 100_000;

/// Fields only the detailed Strava activity carries; the summary form is the detail without them.
const STRAVA_DETAIL_ONLY: &[&str] = &[
    "calories",
    "device_name",
    "description",
    "segment_efforts",
    "splits_metric",
    "splits_standard",
    "laps",
    "best_efforts",
    "photos",
    "gear",
    "embed_token",
    "similar_activities",
    "available_zones",
];

// ---------------------------------------------------------------------------------------------
// State

/// One data request as the stand-in answered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiCall {
    pub method: String,
    /// The request path, without the query (e.g. `/strava/api/v3/activities/17`).
    pub path: String,
    /// The route, relative to the provider prefix (e.g. `/activities/{id}`).
    pub route: String,
    pub status: u16,
    /// Strava: the index of the short ("15-minute") window since the Unix epoch.
    /// Polar: the sequence number of the short window (0 for the first one).
    pub window: u64,
}

/// A provider's request log, with the questions tests ask of it.
#[derive(Clone, Debug, Default)]
pub struct ApiLog(pub Vec<ApiCall>);

impl ApiLog {
    pub fn requests(&self) -> usize {
        self.0.len()
    }

    pub fn count_status(&self, status: u16) -> usize {
        self.0.iter().filter(|c| c.status == status).count()
    }

    pub fn too_many(&self) -> usize {
        self.count_status(429)
    }

    /// Whether two consecutive requests in the same window were both refused with 429 (a client
    /// that retried before the window ended instead of waiting for it).
    pub fn repeated_429_in_window(&self) -> bool {
        self.0.windows(2).any(|w| w[0].status == 429 && w[1].status == 429 && w[0].window == w[1].window)
    }

    /// Requests per route (`/athlete/activities`, `/activities/{id}`, ...).
    pub fn by_route(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for call in &self.0 {
            *counts.entry(call.route.clone()).or_default() += 1;
        }
        counts
    }

    /// Requests per exact path (`/strava/api/v3/activities/17`, ...).
    pub fn by_path(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for call in &self.0 {
            *counts.entry(call.path.clone()).or_default() += 1;
        }
        counts
    }

    /// Requests to a route (`/activities/{id}`) or an exact path.
    pub fn to(&self, route_or_path: &str) -> usize {
        self.0.iter().filter(|c| c.route == route_or_path || c.path == route_or_path).count()
    }
}

struct StravaLimits {
    short: u64,
    daily: u64,
    read_short: u64,
    read_daily: u64,
    window: Duration,
    headers: bool,
    /// (short window index, overall usage, read usage)
    short_usage: (u64, u64, u64),
    /// (UTC day index, overall usage, read usage)
    daily_usage: (u64, u64, u64),
}

/// One Polar window: starts at the first request after the previous one ended.
#[derive(Default)]
struct PolarWindow {
    started: Option<Instant>,
    used: u64,
    /// How many windows were started before this one.
    sequence: u64,
}

impl PolarWindow {
    /// Counts one request at `now`; a window that has ended gives way to a new one.
    fn count(&mut self, now: Instant, length: Duration) {
        match self.started {
            Some(start) if now.duration_since(start) < length => {}
            Some(_) => {
                self.started = Some(now);
                self.used = 0;
                self.sequence += 1;
            }
            None => self.started = Some(now),
        }
        self.used += 1;
    }

    /// Whole seconds (rounded up) until this window ends.
    fn reset_in(&self, now: Instant, length: Duration) -> u64 {
        let Some(start) = self.started else { return length.as_secs() };
        let left = (start + length).saturating_duration_since(now);
        left.as_millis().div_ceil(1000) as u64
    }
}

struct PolarLimits {
    short: u64,
    long: u64,
    short_window: Duration,
    long_window: Duration,
    headers: bool,
    short_usage: PolarWindow,
    long_usage: PolarWindow,
}

struct StravaActivity {
    athlete: u64,
    detail: Value,
}

/// The data APIs' state, shared by the stand-in's clones.
pub(crate) struct Data {
    strava: BTreeMap<u64, StravaActivity>,
    /// Polar data by user id.
    polar_exercises: HashMap<u64, Vec<Value>>,
    polar_sleep: HashMap<u64, Vec<Value>>,
    polar_daily: HashMap<u64, Vec<Value>>,
    strava_limits: StravaLimits,
    polar_limits: PolarLimits,
    strava_log: Vec<ApiCall>,
    polar_log: Vec<ApiCall>,
    /// Answer every Strava data request with this status (an outage).
    strava_outage: Option<u16>,
}

impl Default for Data {
    fn default() -> Self {
        Data {
            strava: BTreeMap::new(),
            polar_exercises: HashMap::new(),
            polar_sleep: HashMap::new(),
            polar_daily: HashMap::new(),
            strava_outage: None,
            strava_limits: StravaLimits {
                short: DEFAULT_LIMIT,
                daily: DEFAULT_LIMIT,
                read_short: DEFAULT_LIMIT,
                read_daily: DEFAULT_LIMIT,
                window: Duration::from_secs(900),
                headers: true,
                short_usage: (0, 0, 0),
                daily_usage: (0, 0, 0),
            },
            polar_limits: PolarLimits {
                short: DEFAULT_LIMIT,
                long: DEFAULT_LIMIT,
                short_window: Duration::from_secs(15 * 60),
                long_window: Duration::from_secs(24 * 3600),
                headers: true,
                short_usage: PolarWindow::default(),
                long_usage: PolarWindow::default(),
            },
            strava_log: Vec::new(),
            polar_log: Vec::new(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Test-facing API

impl StandIn {
    // --- Strava data ---

    /// Adds a detailed activity (as `GET /activities/{id}` answers it, e.g. from
    /// [`strava_activity_json`]) for the athlete; sets its `athlete` and `resource_state` 3.
    /// Answers the activity id.
    pub fn add_strava_activity(&self, athlete_id: u64, mut activity: Value) -> u64 {
        let id = activity["id"].as_u64().expect("a Strava activity has a numeric id");
        activity["athlete"] = json!({"id": athlete_id, "resource_state": 1});
        activity["resource_state"] = json!(3);
        let mut data = self.data.lock().unwrap();
        assert!(!data.strava.contains_key(&id), "Strava activity {id} exists already");
        data.strava.insert(id, StravaActivity { athlete: athlete_id, detail: activity });
        id
    }

    /// Changes an activity as the athlete would (title, sport type, privacy...): `patch` is a JSON
    /// merge patch (RFC 7396: `null` removes a field). Panics when the activity does not exist.
    pub fn update_strava_activity(&self, id: u64, patch: Value) {
        let mut data = self.data.lock().unwrap();
        let activity = data.strava.get_mut(&id).unwrap_or_else(|| panic!("no Strava activity {id}"));
        merge_patch(&mut activity.detail, &patch);
        activity.detail["id"] = json!(id);
    }

    /// Deletes an activity: it leaves the list and `GET /activities/{id}` answers 404.
    pub fn delete_strava_activity(&self, id: u64) -> bool {
        self.data.lock().unwrap().strava.remove(&id).is_some()
    }

    /// The stored detailed form of an activity.
    pub fn strava_activity(&self, id: u64) -> Option<Value> {
        self.data.lock().unwrap().strava.get(&id).map(|a| a.detail.clone())
    }

    /// Strava's per-application limits: overall 15-minute and daily, read 15-minute and daily.
    pub fn set_strava_limits(&self, short: u64, daily: u64, read_short: u64, read_daily: u64) {
        let limits = &mut self.data.lock().unwrap().strava_limits;
        (limits.short, limits.daily, limits.read_short, limits.read_daily) = (short, daily, read_short, read_daily);
    }

    /// The length of the "15-minute" window (time compression for tests); windows stay aligned
    /// to multiples of it since the Unix epoch. Usage of the current window starts afresh.
    pub fn set_strava_window(&self, window: Duration) {
        assert!(window.as_millis() > 0);
        let limits = &mut self.data.lock().unwrap().strava_limits;
        limits.window = window;
        limits.short_usage = (u64::MAX, 0, 0);
    }

    /// Whether answers carry the `X-RateLimit-*` / `X-ReadRateLimit-*` headers (default true).
    pub fn set_strava_rate_headers(&self, on: bool) {
        self.data.lock().unwrap().strava_limits.headers = on;
    }

    /// The index of the current short Strava window (what [`ApiCall::window`] records).
    pub fn strava_window_now(&self) -> u64 {
        let window = self.data.lock().unwrap().strava_limits.window;
        strava_window_index(window)
    }

    /// Every Strava data request answers `status` (e.g. 503) until set back to `None`.
    pub fn set_strava_outage(&self, status: Option<u16>) {
        self.data.lock().unwrap().strava_outage = status;
    }

    pub fn strava_api_log(&self) -> ApiLog {
        ApiLog(self.data.lock().unwrap().strava_log.clone())
    }

    /// Strava data API requests answered so far (including 401s and 429s).
    pub fn strava_api_requests(&self) -> usize {
        self.data.lock().unwrap().strava_log.len()
    }

    pub fn strava_429s(&self) -> usize {
        self.strava_api_log().too_many()
    }

    pub fn strava_repeated_429_in_window(&self) -> bool {
        self.strava_api_log().repeated_429_in_window()
    }

    /// Strava requests per route (`/athlete/activities`, `/activities/{id}`).
    pub fn strava_api_requests_by_route(&self) -> BTreeMap<String, usize> {
        self.strava_api_log().by_route()
    }

    // --- Polar data ---

    /// Adds an exercise (e.g. from [`polar_exercise_json`]) for the Polar user; sets `polar_user`
    /// when absent. Listed while its `upload_time` is within the last 30 days.
    pub fn add_polar_exercise(&self, user_id: u64, mut exercise: Value) {
        assert!(exercise["id"].is_string(), "a Polar exercise has a (hashed) string id");
        if exercise.get("polar_user").is_none() {
            exercise["polar_user"] = json!(self.url(&format!("{POLAR_PREFIX}/users/{user_id}")));
        }
        self.data.lock().unwrap().polar_exercises.entry(user_id).or_default().push(exercise);
    }

    /// Adds a night (e.g. from [`polar_sleep_json`]); replaces one of the same `date`.
    pub fn add_polar_sleep(&self, user_id: u64, mut night: Value) {
        let date = night["date"].as_str().expect("a Polar sleep has a date").to_string();
        if night.get("polar_user").is_none() {
            night["polar_user"] = json!(self.url(&format!("{POLAR_PREFIX}/users/{user_id}")));
        }
        let mut data = self.data.lock().unwrap();
        let nights = data.polar_sleep.entry(user_id).or_default();
        nights.retain(|n| n["date"].as_str() != Some(&date));
        nights.push(night);
    }

    /// Adds a daily activity summary (e.g. from [`polar_daily_activity_json`]); its day is the
    /// date of `start_time`. Replaces one of the same day.
    pub fn add_polar_daily_activity(&self, user_id: u64, summary: Value) {
        let day = polar_activity_day(&summary).expect("a Polar daily activity has a start_time");
        let mut data = self.data.lock().unwrap();
        let days = data.polar_daily.entry(user_id).or_default();
        days.retain(|d| polar_activity_day(d) != Some(day));
        days.push(summary);
    }

    /// Polar's per-client limits for the short and the long window.
    pub fn set_polar_limits(&self, short: u64, long: u64) {
        let limits = &mut self.data.lock().unwrap().polar_limits;
        (limits.short, limits.long) = (short, long);
    }

    /// The lengths of Polar's windows (default 15 minutes and 24 hours).
    pub fn set_polar_windows(&self, short: Duration, long: Duration) {
        let limits = &mut self.data.lock().unwrap().polar_limits;
        (limits.short_window, limits.long_window) = (short, long);
    }

    /// Whether answers carry the `RateLimit-*` headers (default true).
    pub fn set_polar_rate_headers(&self, on: bool) {
        self.data.lock().unwrap().polar_limits.headers = on;
    }

    pub fn polar_api_log(&self) -> ApiLog {
        ApiLog(self.data.lock().unwrap().polar_log.clone())
    }

    /// Polar data API requests answered so far (including 401s, 403s and 429s).
    pub fn polar_api_requests(&self) -> usize {
        self.data.lock().unwrap().polar_log.len()
    }

    pub fn polar_429s(&self) -> usize {
        self.polar_api_log().too_many()
    }

    pub fn polar_repeated_429_in_window(&self) -> bool {
        self.polar_api_log().repeated_429_in_window()
    }
}

/// The data API routes, to merge into the stand-in's router.
pub(crate) fn routes(stand_in: StandIn) -> Router<StandIn> {
    let strava = Router::new()
        .route(&format!("{STRAVA_PREFIX}/athlete/activities"), get(strava_list))
        .route(&format!("{STRAVA_PREFIX}/activities/{{id}}"), get(strava_get))
        .route_layer(middleware::from_fn_with_state(stand_in.clone(), strava_limits));
    let polar = Router::new()
        .route(&format!("{POLAR_PREFIX}/exercises"), get(polar_exercises))
        .route(&format!("{POLAR_PREFIX}/exercises/{{id}}"), get(polar_exercise))
        .route(&format!("{POLAR_PREFIX}/users/sleep"), get(polar_nights))
        .route(&format!("{POLAR_PREFIX}/users/sleep/available"), get(polar_sleep_available))
        .route(&format!("{POLAR_PREFIX}/users/sleep/{{date}}"), get(polar_night))
        .route(&format!("{POLAR_PREFIX}/users/activities"), get(polar_activities))
        .route(&format!("{POLAR_PREFIX}/users/activities/{{date}}"), get(polar_activity))
        .route_layer(middleware::from_fn_with_state(stand_in, polar_limits));
    strava.merge(polar)
}

// ---------------------------------------------------------------------------------------------
// Builders

/// A realistic detailed Strava activity (the shape of the spec's sample), starting at
/// `start_epoch_s` (UTC) in Europe/Berlin (+01:00). Distances and speeds follow the sport type;
/// change fields with `update_strava_activity` or by editing the value before adding it.
pub fn strava_activity_json(id: u64, start_epoch_s: i64, sport_type: &str) -> Value {
    let start = DateTime::from_timestamp(start_epoch_s, 0).expect("a valid epoch");
    let offset = 3600;
    let local = start + Days::seconds(offset);
    let (speed, max_speed, elapsed, name, device) = match sport_type {
        "Ride" | "VirtualRide" | "MountainBikeRide" | "GravelRide" | "EBikeRide" => {
            (7.9, 14.2, 5400, "Afternoon Ride", "Garmin Edge 540")
        }
        "Swim" => (0.9, 1.3, 2400, "Pool Swim", "Garmin Forerunner 965"),
        "Walk" | "Hike" => (1.4, 2.1, 4200, "Lunch Walk", "Polar Pacer Pro"),
        _ => (3.468, 5.1, 3012, "Morning Run", "Polar Pacer Pro"),
    };
    let moving = elapsed * 96 / 100;
    let distance = (speed * moving as f64 * 10.0).round() / 10.0;
    let kind = match sport_type {
        "MountainBikeRide" | "GravelRide" => "Ride",
        other => other,
    };
    let zulu = |t: DateTime<Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    json!({
        "id": id,
        "resource_state": 3,
        "external_id": format!("device_{id}.fit"),
        "upload_id_str": (id + 1_000_000_000).to_string(),
        "athlete": {"id": 0, "resource_state": 1},
        "name": name,
        "distance": distance,
        "moving_time": moving,
        "elapsed_time": elapsed,
        "total_elevation_gain": 86.0,
        "type": kind,
        "sport_type": sport_type,
        "workout_type": 0,
        "start_date": zulu(start),
        "start_date_local": zulu(local),
        "timezone": "(GMT+01:00) Europe/Berlin",
        "utc_offset": offset as f64,
        "trainer": false,
        "commute": false,
        "manual": false,
        "private": false,
        "average_speed": speed,
        "max_speed": max_speed,
        "has_heartrate": true,
        "average_heartrate": 151.2,
        "max_heartrate": 178.0,
        "calories": 742.0,
        "device_name": device,
    })
}

/// A Polar exercise (the spec's sample; OpenAPI `exerciseHashId` field names) that started at
/// `start_utc`, where the local offset was `utc_offset_min` minutes: `start_time` is the local time
/// without offset (UTC = `start_time` − `start_time_utc_offset`). Uploaded two hours after the start.
pub fn polar_exercise_json(id: &str, start_utc: DateTime<Utc>, utc_offset_min: i64, duration: &str) -> Value {
    let local = start_utc + Days::minutes(utc_offset_min);
    let upload = start_utc + Days::hours(2);
    json!({
        "id": id,
        "upload_time": upload.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        "device": "Polar Pacer Pro",
        "device_id": "1111AAAA",
        "start_time": local.format("%Y-%m-%dT%H:%M:%S").to_string(),
        "start_time_utc_offset": utc_offset_min,
        "duration": duration,
        "calories": 742,
        "distance": 10021.4,
        "heart_rate": {"average": 151, "maximum": 178},
        "training_load": 143.22,
        "sport": "RUNNING",
        "has_route": true,
        "detailed_sport_info": "RUNNING",
    })
}

/// A Polar night (the spec's sample; OpenAPI `sleep` field names) for `date` (the morning the
/// night ends), from 23:41:07 the evening before to 07:12:37, at `utc_offset` (e.g. `+01:00`).
pub fn polar_sleep_json(date: NaiveDate, utc_offset: &str) -> Value {
    let evening = date.pred_opt().unwrap();
    json!({
        "date": date.to_string(),
        "sleep_start_time": format!("{evening}T23:41:07{utc_offset}"),
        "sleep_end_time": format!("{date}T07:12:37{utc_offset}"),
        "device_id": "1111AAAA",
        "continuity": 3.1,
        "continuity_class": 3,
        "light_sleep": 14400,
        "deep_sleep": 5400,
        "rem_sleep": 5040,
        "unrecognized_sleep_stage": 360,
        "sleep_score": 78,
        "total_interruption_duration": 1890,
        "sleep_charge": 3,
        "sleep_goal": 28800,
        "sleep_rating": 0,
        "short_interruption_duration": 1290,
        "long_interruption_duration": 600,
        "sleep_cycles": 5,
        "group_duration_score": 100.0,
        "group_solidity_score": 75.0,
        "group_regeneration_score": 54.2,
        "hypnogram": {"23:41": 2, "23:59": 3, "01:02": 1},
        "heart_rate_samples": {"23:45": 62, "23:50": 60, "23:55": 58},
    })
}

/// A Polar daily activity summary (OpenAPI `activity-summary-with-all-samples`: no `date` field,
/// the day is that of `start_time`; `calories` and `active_calories` in kcal; durations ISO 8601).
pub fn polar_daily_activity_json(date: NaiveDate, steps: u64, calories: u64, active_duration: &str) -> Value {
    json!({
        "start_time": format!("{date}T00:00:00"),
        "end_time": format!("{date}T23:59:59"),
        "active_duration": active_duration,
        "inactive_duration": "PT18H23M30S",
        "daily_activity": 89.1,
        "calories": calories,
        "active_calories": calories * 3 / 5,
        "steps": steps,
        "inactivity_alert_count": 1,
        "distance_from_steps": (steps as f64 * 0.52 * 100.0).round() / 100.0,
    })
}

// ---------------------------------------------------------------------------------------------
// Strava

fn strava_window_index(window: Duration) -> u64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    (now.as_millis() / window.as_millis()) as u64
}

fn strava_day_index() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() / 86_400
}

fn strava_error(status: StatusCode, message: &str, resource: &str, field: &str, code: &str) -> Response {
    (status, Json(json!({"message": message, "errors": [{"resource": resource, "field": field, "code": code}]})))
        .into_response()
}

/// Counts the request against the application's limits, refuses it with 429 when over any of
/// them, adds the rate-limit headers and logs the answer.
async fn strava_limits(State(s): State<StandIn>, matched: MatchedPath, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let method = request.method().to_string();
    let route = matched.as_str().trim_start_matches(STRAVA_PREFIX).to_string();
    // Every endpoint here is a read ("non-upload"); it counts towards both limits.
    let (over, headers, window, outage) = {
        let mut data = s.data.lock().unwrap();
        let outage = data.strava_outage;
        let l = &mut data.strava_limits;
        let window = strava_window_index(l.window);
        let day = strava_day_index();
        if l.short_usage.0 != window {
            l.short_usage = (window, 0, 0);
        }
        if l.daily_usage.0 != day {
            l.daily_usage = (day, 0, 0);
        }
        l.short_usage.1 += 1;
        l.short_usage.2 += 1;
        l.daily_usage.1 += 1;
        l.daily_usage.2 += 1;
        let over = l.short_usage.1 > l.short
            || l.daily_usage.1 > l.daily
            || l.short_usage.2 > l.read_short
            || l.daily_usage.2 > l.read_daily;
        let headers = l.headers.then(|| {
            [
                ("x-ratelimit-limit", format!("{},{}", l.short, l.daily)),
                ("x-ratelimit-usage", format!("{},{}", l.short_usage.1, l.daily_usage.1)),
                ("x-readratelimit-limit", format!("{},{}", l.read_short, l.read_daily)),
                ("x-readratelimit-usage", format!("{},{}", l.short_usage.2, l.daily_usage.2)),
            ]
        });
        (over, headers, window, outage)
    };
    let mut response = if over {
        strava_error(StatusCode::TOO_MANY_REQUESTS, "Rate Limit Exceeded", "Application", "rate limit", "exceeded")
    } else if let Some(status) = outage {
        (StatusCode::from_u16(status).unwrap(), Json(json!({"message": "Server Error", "errors": []}))).into_response()
    } else {
        next.run(request).await
    };
    for (name, value) in headers.into_iter().flatten() {
        response.headers_mut().insert(name, HeaderValue::from_str(&value).unwrap());
    }
    let status = response.status().as_u16();
    s.data.lock().unwrap().strava_log.push(ApiCall { method, path, route, status, window });
    response
}

fn bearer(headers: &HeaderMap) -> String {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string()
}

/// The athlete whose current access token the request carries.
fn strava_athlete(s: &StandIn, headers: &HeaderMap) -> Option<u64> {
    s.current_token_user("strava", &bearer(headers))
}

fn strava_unauthorized() -> Response {
    strava_error(StatusCode::UNAUTHORIZED, "Authorization Error", "Athlete", "access_token", "invalid")
}

fn strava_summary(detail: &Value) -> Value {
    let mut summary = detail.clone();
    if let Some(fields) = summary.as_object_mut() {
        for field in STRAVA_DETAIL_ONLY {
            fields.remove(*field);
        }
        fields.insert("resource_state".into(), json!(2));
    }
    summary
}

fn strava_start(activity: &Value) -> i64 {
    activity["start_date"]
        .as_str()
        .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
        .map(|d| d.timestamp())
        .unwrap_or_default()
}

/// `GET /athlete/activities?before=&after=&page=&per_page=`: the athlete's summary activities
/// whose `start_date` is after `after` and before `before`, newest first — oldest first when only
/// `after` is given — `per_page` (default 30, at most 200) per 1-based `page`.
async fn strava_list(
    State(s): State<StandIn>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(athlete) = strava_athlete(&s, &headers) else { return strava_unauthorized() };
    let mut numbers = [None; 4];
    for (i, name) in ["after", "before", "page", "per_page"].into_iter().enumerate() {
        if let Some(v) = q.get(name).filter(|v| !v.is_empty()) {
            let Ok(n) = v.parse::<i64>() else {
                return strava_error(StatusCode::BAD_REQUEST, "Bad Request", "Application", name, "invalid");
            };
            numbers[i] = Some(n);
        }
    }
    let [after, before, page, per_page] = numbers;
    let page = page.unwrap_or(1).max(1) as usize;
    let per_page = per_page.unwrap_or(30).clamp(1, 200) as usize;
    let data = s.data.lock().unwrap();
    let mut mine: Vec<&Value> = data
        .strava
        .values()
        .filter(|a| a.athlete == athlete)
        .map(|a| &a.detail)
        .filter(|a| after.is_none_or(|after| strava_start(a) > after))
        .filter(|a| before.is_none_or(|before| strava_start(a) < before))
        .collect();
    mine.sort_by_key(|a| (strava_start(a), a["id"].as_u64()));
    if !(after.is_some() && before.is_none()) {
        mine.reverse();
    }
    let page: Vec<Value> = mine.into_iter().skip((page - 1) * per_page).take(per_page).map(strava_summary).collect();
    Json(page).into_response()
}

/// `GET /activities/{id}`: the detailed activity, if it is the athlete's.
async fn strava_get(State(s): State<StandIn>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let Some(athlete) = strava_athlete(&s, &headers) else { return strava_unauthorized() };
    let not_found = || strava_error(StatusCode::NOT_FOUND, "Record Not Found", "Activity", "id", "invalid");
    let Ok(id) = id.parse::<u64>() else { return not_found() };
    let data = s.data.lock().unwrap();
    match data.strava.get(&id) {
        Some(activity) if activity.athlete == athlete => Json(activity.detail.clone()).into_response(),
        _ => not_found(),
    }
}

/// RFC 7396 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(patch) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let fields = target.as_object_mut().unwrap();
    for (key, value) in patch {
        if value.is_null() {
            fields.remove(key);
        } else {
            merge_patch(fields.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Polar

/// Counts the request in the client's windows, refuses it with 429 when over a limit, adds the
/// `RateLimit-*` headers and logs the answer.
async fn polar_limits(State(s): State<StandIn>, matched: MatchedPath, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let method = request.method().to_string();
    let route = matched.as_str().trim_start_matches(POLAR_PREFIX).to_string();
    let (over, headers, window) = {
        let mut data = s.data.lock().unwrap();
        let l = &mut data.polar_limits;
        let now = Instant::now();
        l.short_usage.count(now, l.short_window);
        l.long_usage.count(now, l.long_window);
        let over = l.short_usage.used > l.short || l.long_usage.used > l.long;
        let headers = l.headers.then(|| {
            [
                ("ratelimit-usage", format!("{},{}", l.short_usage.used, l.long_usage.used)),
                ("ratelimit-limit", format!("{},{}", l.short, l.long)),
                (
                    "ratelimit-reset",
                    format!(
                        "{},{}",
                        l.short_usage.reset_in(now, l.short_window),
                        l.long_usage.reset_in(now, l.long_window)
                    ),
                ),
            ]
        });
        (over, headers, l.short_usage.sequence)
    };
    let mut response = if over { StatusCode::TOO_MANY_REQUESTS.into_response() } else { next.run(request).await };
    for (name, value) in headers.into_iter().flatten() {
        response.headers_mut().insert(name, HeaderValue::from_str(&value).unwrap());
    }
    let status = response.status().as_u16();
    s.data.lock().unwrap().polar_log.push(ApiCall { method, path, route, status, window });
    response
}

/// The registered user whose current access token the request carries: 401 for another token,
/// 403 for a user who is not registered (or has not accepted the consents).
fn polar_user(s: &StandIn, headers: &HeaderMap) -> Result<u64, StatusCode> {
    let user = s.current_token_user("polar", &bearer(headers)).ok_or(StatusCode::UNAUTHORIZED)?;
    if !s.polar_is_registered(user) {
        return Err(StatusCode::FORBIDDEN);
    }
    Ok(user)
}

fn today() -> NaiveDate {
    Utc::now().date_naive()
}

fn flag(q: &HashMap<String, String>, name: &str) -> bool {
    q.get(name).is_some_and(|v| v == "true")
}

/// An exercise as listed: optional parts only when asked for (`samples`, `zones`, `route`).
fn polar_exercise_view(exercise: &Value, q: &HashMap<String, String>) -> Value {
    let mut view = exercise.clone();
    if let Some(fields) = view.as_object_mut() {
        for (param, field) in [("samples", "samples"), ("zones", "heart_rate_zones"), ("route", "route")] {
            if !flag(q, param) {
                fields.remove(field);
            }
        }
    }
    view
}

/// Uploaded within the last 30 days (exercises without a readable `upload_time` count as recent).
fn polar_recent(exercise: &Value) -> bool {
    exercise["upload_time"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .is_none_or(|t| t.with_timezone(&Utc) >= Utc::now() - Days::days(30))
}

/// `GET /exercises`: the user's exercises uploaded in the last 30 days.
async fn polar_exercises(
    State(s): State<StandIn>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let user = match polar_user(&s, &headers) {
        Ok(u) => u,
        Err(status) => return status.into_response(),
    };
    let data = s.data.lock().unwrap();
    let list: Vec<Value> = data
        .polar_exercises
        .get(&user)
        .into_iter()
        .flatten()
        .filter(|e| polar_recent(e))
        .map(|e| polar_exercise_view(e, &q))
        .collect();
    Json(list).into_response()
}

/// `GET /exercises/{exerciseId}`: 404 when it is not one of the user's recent exercises.
async fn polar_exercise(
    State(s): State<StandIn>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let user = match polar_user(&s, &headers) {
        Ok(u) => u,
        Err(status) => return status.into_response(),
    };
    let data = s.data.lock().unwrap();
    let found = data.polar_exercises.get(&user).into_iter().flatten().find(|e| e["id"] == id.as_str());
    match found {
        Some(e) if polar_recent(e) => Json(polar_exercise_view(e, &q)).into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

fn polar_date(value: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(value, "%Y-%m-%d").ok()
}

/// The user's nights of the last 28 days, by date.
fn polar_recent_nights(s: &StandIn, user: u64) -> Vec<Value> {
    let since = today() - Days::days(28);
    let data = s.data.lock().unwrap();
    let mut nights: Vec<Value> = data
        .polar_sleep
        .get(&user)
        .into_iter()
        .flatten()
        .filter(|n| n["date"].as_str().and_then(polar_date).is_some_and(|d| d >= since))
        .cloned()
        .collect();
    nights.sort_by(|a, b| a["date"].as_str().cmp(&b["date"].as_str()));
    nights
}

/// `GET /users/sleep`: `{"nights": [...]}` of the last 28 days.
async fn polar_nights(State(s): State<StandIn>, headers: HeaderMap) -> Response {
    match polar_user(&s, &headers) {
        Ok(user) => Json(json!({ "nights": polar_recent_nights(&s, user) })).into_response(),
        Err(status) => status.into_response(),
    }
}

/// `GET /users/sleep/available`: `{"available": [{date, start_time, end_time}]}`.
async fn polar_sleep_available(State(s): State<StandIn>, headers: HeaderMap) -> Response {
    let user = match polar_user(&s, &headers) {
        Ok(u) => u,
        Err(status) => return status.into_response(),
    };
    let available: Vec<Value> = polar_recent_nights(&s, user)
        .iter()
        .map(|n| json!({"date": n["date"], "start_time": n["sleep_start_time"], "end_time": n["sleep_end_time"]}))
        .collect();
    Json(json!({ "available": available })).into_response()
}

/// `GET /users/sleep/{date}`: 400 for an invalid date, 404 when there is no night.
async fn polar_night(State(s): State<StandIn>, headers: HeaderMap, Path(date): Path<String>) -> Response {
    let user = match polar_user(&s, &headers) {
        Ok(u) => u,
        Err(status) => return status.into_response(),
    };
    if polar_date(&date).is_none() {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let data = s.data.lock().unwrap();
    match data.polar_sleep.get(&user).into_iter().flatten().find(|n| n["date"] == date.as_str()) {
        Some(night) => Json(night.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The day of a daily activity summary: the date of its `start_time`.
fn polar_activity_day(summary: &Value) -> Option<NaiveDate> {
    summary["start_time"].as_str().and_then(|t| t.get(..10)).and_then(polar_date)
}

/// A summary as listed: `samples` only when asked for (`steps`, `activity_zones`,
/// `inactivity_stamps`), with just the parts asked for.
fn polar_activity_view(summary: &Value, q: &HashMap<String, String>) -> Value {
    let mut view = summary.clone();
    let wanted: Vec<&str> =
        ["steps", "activity_zones", "inactivity_stamps"].into_iter().filter(|p| flag(q, p)).collect();
    if let Some(fields) = view.as_object_mut() {
        if wanted.is_empty() {
            fields.remove("samples");
        } else if let Some(samples) = fields.get_mut("samples").and_then(|s| s.as_object_mut()) {
            samples.retain(|k, _| k == "date" || wanted.contains(&k.as_str()));
        }
    }
    view
}

/// A date the daily-activity endpoints accept: valid and at most 365 days back.
fn polar_activity_date(value: &str) -> Option<NaiveDate> {
    polar_date(value).filter(|d| *d >= today() - Days::days(365))
}

/// `GET /users/activities?from=&to=`: the summaries of the days from `from` (default 28 days
/// ago) to `to` (default today); 400 for an invalid date, `from` older than 365 days, or a range
/// longer than 28 days.
async fn polar_activities(
    State(s): State<StandIn>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let user = match polar_user(&s, &headers) {
        Ok(u) => u,
        Err(status) => return status.into_response(),
    };
    let from = match q.get("from") {
        Some(v) => polar_activity_date(v),
        None => Some(today() - Days::days(28)),
    };
    let to = match q.get("to") {
        Some(v) => polar_date(v),
        None => Some(today()),
    };
    let (Some(from), Some(to)) = (from, to) else { return StatusCode::BAD_REQUEST.into_response() };
    if to < from || (to - from).num_days() > 28 {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let data = s.data.lock().unwrap();
    let mut days: Vec<&Value> = data
        .polar_daily
        .get(&user)
        .into_iter()
        .flatten()
        .filter(|d| polar_activity_day(d).is_some_and(|day| from <= day && day <= to))
        .collect();
    days.sort_by_key(|d| polar_activity_day(d));
    Json(days.into_iter().map(|d| polar_activity_view(d, &q)).collect::<Vec<_>>()).into_response()
}

/// `GET /users/activities/{date}`: the day's summary; 204 when there is none, 400 for an invalid
/// or too old date.
async fn polar_activity(
    State(s): State<StandIn>,
    headers: HeaderMap,
    Path(date): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let user = match polar_user(&s, &headers) {
        Ok(u) => u,
        Err(status) => return status.into_response(),
    };
    let Some(day) = polar_activity_date(&date) else { return StatusCode::BAD_REQUEST.into_response() };
    let data = s.data.lock().unwrap();
    match data.polar_daily.get(&user).into_iter().flatten().find(|d| polar_activity_day(d) == Some(day)) {
        Some(summary) => Json(polar_activity_view(summary, &q)).into_response(),
        None => StatusCode::NO_CONTENT.into_response(),
    }
}
