//! Helpers for `bench/sync.sh` (not part of the service or the test suite):
//!
//! - `stand-in`: an instantly answering Strava (token endpoint and data API, no rate-limit headers),
//!   every athlete with the same number of activities, derived from the bearer token; or, with
//!   `--provider dexcom`, an instantly answering Dexcom (token, `dataRange`, `egvs` and `events`
//!   under `/us`, the 30-day limit answered 400) with an EGV every 5 minutes for `--days` days,
//!   counting the data calls it answers (`GET /calls`).
//! - `seed`: a project with Strava enabled, its credentials, an admin token and patients.
//! - `connect-patients`: connects those patients to Strava, which queues one backfill job each.
//! - `progress`: how far the backfill is (once, or polled until it is done or a time cap).
//! - `report`: merges the JSON files of a run into one JSON and one Markdown file.
//!
//! `seed`, `connect-patients` and `progress` act on the database of `Config::from_env()` (the same
//! variables as `wearlink serve`). `cargo run --release --example bench_sync -- <command> --help`

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use support::Db;
use wearlink::{Config, Services};

mod support;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Strava stand-in on 127.0.0.1; writes its address to `--addr-file`.
    StandIn {
        #[arg(long, default_value = "127.0.0.1:0")]
        bind: String,
        #[arg(long)]
        addr_file: PathBuf,
        /// Activities per athlete (at most 1000).
        #[arg(long, default_value_t = 30)]
        activities: u64,
        /// Runtime threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// `strava` or `dexcom`.
        #[arg(long, default_value = "strava")]
        provider: String,
        /// Days of readings per Dexcom user.
        #[arg(long, default_value_t = 30)]
        days: i64,
    },
    /// Create a project with Strava enabled and credentials, an admin token and `--patients`
    /// patients; prints `{projectId, adminToken, firstPatientId}` and writes the patient ids to
    /// `--patients-file`, one a line.
    Seed {
        #[arg(long, default_value_t = 1000)]
        patients: usize,
        #[arg(long)]
        patients_file: PathBuf,
        #[arg(long, default_value = "strava")]
        provider: String,
    },
    /// Connect the patients of `--patients-file` to Strava (patient i as athlete i, tokens valid
    /// for six hours so that no refresh runs): one backfill job each.
    ConnectPatients {
        #[arg(long)]
        project: String,
        #[arg(long)]
        patients_file: PathBuf,
        #[arg(long, default_value = "strava")]
        provider: String,
    },
    /// Print the backfill's progress as JSON; with `--expect`, poll until that many activities
    /// are synced and no backfill job is left, or `--timeout-s` passed.
    Progress {
        #[arg(long)]
        project: String,
        /// Activities expected in all (patients × activities).
        #[arg(long)]
        expect: Option<i64>,
        #[arg(long, default_value_t = 300.0)]
        timeout_s: f64,
        /// Epoch ms the elapsed time counts from (the server's start); default: now.
        #[arg(long)]
        since_ms: Option<i64>,
        #[arg(long, default_value_t = 100)]
        poll_ms: u64,
    },
    /// Merge `<dir>/*.json` into `--json` and `--markdown`.
    Report {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        json: PathBuf,
        #[arg(long)]
        markdown: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::StandIn { bind, addr_file, activities, threads, provider, days } => match provider.as_str() {
            "dexcom" => runtime(threads)?.block_on(dexcom_stand_in(bind, addr_file, days)),
            _ => {
                anyhow::ensure!((1..=1000).contains(&activities), "--activities must be 1 to 1000");
                runtime(threads)?.block_on(stand_in(bind, addr_file, activities))
            }
        },
        Command::Seed { patients, patients_file, provider } => {
            runtime(2)?.block_on(seed(patients, &patients_file, &provider))
        }
        Command::ConnectPatients { project, patients_file, provider } => {
            runtime(2)?.block_on(connect_patients(&project, &patients_file, &provider))
        }
        Command::Progress { project, expect, timeout_s, since_ms, poll_ms } => {
            let since = since_ms.unwrap_or_else(wearlink::time::now_ms);
            let wait = Duration::from_secs_f64(timeout_s);
            let result =
                runtime(1)?.block_on(progress(&project, expect, wait, since, Duration::from_millis(poll_ms)))?;
            println!("{result}");
            Ok(())
        }
        Command::Report { dir, json, markdown } => report(&dir, &json, &markdown),
    }
}

fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(threads.max(1)).enable_all().build()
}

// ---- stand-in ----

/// Activity ids: `ID_BASE + athlete × 1000 + k`, unique across athletes.
const ID_BASE: u64 = 10_000_000_000;
const DAY_S: i64 = 86_400;

struct Athletes {
    /// Epoch seconds the activities are placed before (the stand-in's start, to the minute).
    anchor: i64,
    activities: u64,
    /// Athletes handed out by the authorization-code exchange (connect → callback).
    next: AtomicU64,
}

impl Athletes {
    /// Activity k of the athlete starts within the last 29 days before the anchor, the newest an
    /// hour before it; the athlete's id shifts it by up to an hour.
    fn start(&self, athlete: u64, k: u64) -> i64 {
        let spacing = 29 * DAY_S / self.activities as i64;
        self.anchor - 3600 - k as i64 * spacing - (athlete % 3600) as i64
    }

    fn detail(&self, athlete: u64, k: u64) -> Value {
        let id = ID_BASE + athlete * 1000 + k;
        let start = chrono::DateTime::from_timestamp(self.start(athlete, k), 0).expect("a valid epoch");
        let local = start + chrono::Duration::seconds(3600);
        let (sport, kind, speed, max_speed, elapsed, name, device) = match k % 4 {
            0 => ("Run", "Run", 3.468, 5.1, 3012, "Morning Run", "Polar Pacer Pro"),
            1 => ("Ride", "Ride", 7.9, 14.2, 5400, "Afternoon Ride", "Garmin Edge 540"),
            2 => ("GravelRide", "Ride", 6.8, 12.5, 7200, "Gravel Loop", "Garmin Edge 540"),
            _ => ("Walk", "Walk", 1.4, 2.1, 4200, "Lunch Walk", "Polar Pacer Pro"),
        };
        let moving = elapsed * 96 / 100;
        let zulu = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
        json!({
            "id": id,
            "resource_state": 3,
            "external_id": format!("device_{id}.fit"),
            "upload_id_str": (id + 1_000_000_000).to_string(),
            "athlete": {"id": athlete, "resource_state": 1},
            "name": name,
            "distance": (speed * moving as f64 * 10.0).round() / 10.0,
            "moving_time": moving,
            "elapsed_time": elapsed,
            "total_elevation_gain": 86.0,
            "type": kind,
            "sport_type": sport,
            "workout_type": 0,
            "start_date": zulu(start),
            "start_date_local": zulu(local),
            "timezone": "(GMT+01:00) Europe/Berlin",
            "utc_offset": 3600.0,
            "trainer": false,
            "commute": false,
            "manual": false,
            "private": false,
            "average_speed": speed,
            "max_speed": max_speed,
            "has_heartrate": true,
            "average_heartrate": 140.0 + (k % 20) as f64,
            "max_heartrate": 170.0 + (k % 15) as f64,
            "calories": 400.0 + (k * 13 % 500) as f64,
            "device_name": device,
        })
    }

    /// The summary form: the detail without what only the detail carries.
    fn summary(&self, athlete: u64, k: u64) -> Value {
        let mut activity = self.detail(athlete, k);
        let fields = activity.as_object_mut().expect("an object");
        fields.remove("calories");
        fields.remove("device_name");
        fields.insert("resource_state".into(), json!(2));
        activity
    }
}

/// The athlete a bearer token (`…-<n>`) belongs to.
fn athlete_of(headers: &HeaderMap) -> Option<u64> {
    let token = headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ")?;
    token.rsplit('-').next()?.parse().ok()
}

fn unauthorized() -> Response {
    let body = json!({"message": "Authorization Error", "errors": [{"resource": "Athlete", "field": "access_token", "code": "invalid"}]});
    (StatusCode::UNAUTHORIZED, Json(body)).into_response()
}

async fn list_activities(
    State(athletes): State<Arc<Athletes>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let Some(athlete) = athlete_of(&headers) else { return unauthorized() };
    let number = |key: &str| query.get(key).and_then(|v| v.parse::<i64>().ok());
    let after = number("after").unwrap_or(i64::MIN);
    let before = number("before").unwrap_or(i64::MAX);
    let page = number("page").unwrap_or(1).max(1) as usize;
    let per_page = number("per_page").unwrap_or(30).clamp(1, 200) as usize;
    // Oldest first, as Strava lists when `after` is given.
    let listed: Vec<Value> = (0..athletes.activities)
        .rev()
        .filter(|k| {
            let start = athletes.start(athlete, *k);
            start > after && start < before
        })
        .skip((page - 1) * per_page)
        .take(per_page)
        .map(|k| athletes.summary(athlete, k))
        .collect();
    Json(Value::Array(listed)).into_response()
}

async fn get_activity(
    State(athletes): State<Arc<Athletes>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Response {
    let Some(athlete) = athlete_of(&headers) else { return unauthorized() };
    let found = id.parse::<u64>().ok().filter(|id| *id >= ID_BASE).map(|id| ((id - ID_BASE) / 1000, id % 1000));
    match found {
        Some((owner, k)) if owner == athlete && k < athletes.activities => {
            Json(athletes.detail(athlete, k)).into_response()
        }
        _ => {
            let body = json!({"message": "Record Not Found", "errors": [{"resource": "Activity", "field": "id", "code": "invalid"}]});
            (StatusCode::NOT_FOUND, Json(body)).into_response()
        }
    }
}

/// Strava's token endpoint: a code gets a new athlete; a refresh token `…-<n>` keeps athlete n.
async fn token(State(athletes): State<Arc<Athletes>>, body: axum::body::Bytes) -> Response {
    let form: HashMap<String, String> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let athlete = match form.get("grant_type").map(String::as_str) {
        Some("refresh_token") => form.get("refresh_token").and_then(|t| t.rsplit('-').next()?.parse::<u64>().ok()),
        _ => Some(athletes.next.fetch_add(1, Ordering::Relaxed)),
    };
    let Some(id) = athlete else {
        return (StatusCode::BAD_REQUEST, Json(json!({"message": "Bad Request"}))).into_response();
    };
    let now = chrono::Utc::now().timestamp();
    Json(json!({
        "token_type": "Bearer",
        "expires_at": now + 21600,
        "expires_in": 21600,
        "refresh_token": format!("refresh-{id}"),
        "access_token": format!("access-{id}"),
        "athlete": {"id": id}
    }))
    .into_response()
}

async fn stand_in(bind: String, addr_file: PathBuf, activities: u64) -> anyhow::Result<()> {
    let now = chrono::Utc::now().timestamp();
    let athletes = Arc::new(Athletes { anchor: now - now % 60, activities, next: AtomicU64::new(1_000_000) });
    let app = Router::new()
        .route("/oauth/token", post(token))
        .route("/api/v3/athlete/activities", get(list_activities))
        .route("/api/v3/activities/{id}", get(get_activity))
        // bench/sync.sh's webhook phases create the push subscription (Strava answers its id).
        .route("/api/v3/push_subscriptions", post(|| async { axum::Json(serde_json::json!({"id": 1})) }))
        .with_state(athletes);
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    anyhow::ensure!(listener.local_addr()?.ip().is_loopback(), "the stand-in listens on 127.0.0.1 only");
    std::fs::write(&addr_file, listener.local_addr()?.to_string())?;
    axum::serve(listener, app).await?;
    Ok(())
}

// ---- the Dexcom stand-in ----

const FIVE_MINUTES_S: i64 = 300;

struct Readings {
    /// Epoch seconds of the newest reading (the stand-in's start, to the 5 minutes).
    last: i64,
    days: i64,
    calls: AtomicU64,
}

fn dexcom_time(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0).expect("a valid epoch").format("%Y-%m-%dT%H:%M:%S").to_string()
}

fn dexcom_user(headers: &HeaderMap) -> Option<u64> {
    athlete_of(headers)
}

/// Dexcom's token endpoint: a refresh token `…-<n>` keeps user n (connections are seeded).
async fn dexcom_token(body: axum::body::Bytes) -> Response {
    let form: HashMap<String, String> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let Some(id) = form.get("refresh_token").and_then(|t| t.rsplit('-').next()?.parse::<u64>().ok()) else {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_grant"}))).into_response();
    };
    Json(json!({"access_token": format!("access-{id}"), "refresh_token": format!("refresh-{id}"),
        "expires_in": 7200, "token_type": "Bearer"}))
    .into_response()
}

async fn dexcom_data_range(State(r): State<Arc<Readings>>, headers: HeaderMap) -> Response {
    r.calls.fetch_add(1, Ordering::Relaxed);
    let Some(user) = dexcom_user(&headers) else { return StatusCode::UNAUTHORIZED.into_response() };
    let first = r.last - r.days * DAY_S + FIVE_MINUTES_S;
    let bound = |t: i64| json!({"systemTime": dexcom_time(t), "displayTime": dexcom_time(t)});
    Json(json!({"recordType": "dataRange", "recordVersion": "3.0", "userId": format!("user-{user}"),
        "egvs": {"start": bound(first), "end": bound(r.last)}}))
    .into_response()
}

async fn dexcom_records(
    State(r): State<Arc<Readings>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    kind: &'static str,
) -> Response {
    r.calls.fetch_add(1, Ordering::Relaxed);
    let Some(user) = dexcom_user(&headers) else { return StatusCode::UNAUTHORIZED.into_response() };
    let time = |key: &str| {
        let text = query.get(key)?;
        chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S").ok().map(|t| t.and_utc().timestamp())
    };
    let (Some(start), Some(end)) = (time("startDate"), time("endDate")) else {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "startDate and endDate"}))).into_response();
    };
    if end <= start || end - start > 30 * DAY_S {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "at most 30 days"}))).into_response();
    }
    let first = r.last - r.days * DAY_S + FIVE_MINUTES_S;
    let mut records = Vec::new();
    if kind == "egv" {
        // Newest first, as Dexcom sorts.
        let mut t = r.last.min(end - end.rem_euclid(FIVE_MINUTES_S));
        while t >= start.max(first) {
            let value = 70 + (t / FIVE_MINUTES_S + user as i64) % 150;
            records.push(json!({"recordId": format!("{user}-{t}"), "systemTime": dexcom_time(t),
                "displayTime": dexcom_time(t), "transmitterId": format!("TX{user}"), "transmitterTicks": t % 1_000_000,
                "value": value, "status": "ok", "trend": "flat", "trendRate": 0.1, "unit": "mg/dL",
                "rateUnit": "mg/dL/min", "displayDevice": "iOS", "transmitterGeneration": "g7"}));
            t -= FIVE_MINUTES_S;
        }
    }
    Json(json!({"recordType": kind, "recordVersion": "3.0", "userId": format!("user-{user}"), "records": records}))
        .into_response()
}

async fn dexcom_stand_in(bind: String, addr_file: PathBuf, days: i64) -> anyhow::Result<()> {
    let now = chrono::Utc::now().timestamp();
    let readings = Arc::new(Readings { last: now - now % FIVE_MINUTES_S, days, calls: AtomicU64::new(0) });
    let app = Router::new()
        .route("/us/v2/oauth2/token", post(dexcom_token))
        .route("/us/v3/users/self/dataRange", get(dexcom_data_range))
        .route("/us/v3/users/self/egvs", get(|s, h, q| dexcom_records(s, h, q, "egv")))
        .route("/us/v3/users/self/events", get(|s, h, q| dexcom_records(s, h, q, "event")))
        .route(
            "/calls",
            get(
                |State(r): State<Arc<Readings>>| async move { Json(json!({"calls": r.calls.load(Ordering::Relaxed)})) },
            ),
        )
        .with_state(readings);
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    anyhow::ensure!(listener.local_addr()?.ip().is_loopback(), "the stand-in listens on 127.0.0.1 only");
    std::fs::write(&addr_file, listener.local_addr()?.to_string())?;
    axum::serve(listener, app).await?;
    Ok(())
}

// ---- seed ----

async fn services() -> anyhow::Result<Arc<Services>> {
    Services::start(Config::from_env()?).await
}

async fn seed(patients: usize, patients_file: &Path, provider: &str) -> anyhow::Result<()> {
    let services = services().await?;
    let seeded = support::seed_project_with(&services, "bench-sync", patients, provider).await?;
    if provider == "dexcom" {
        // The stand-in's readings start 30 days before it did: a day more reaches them all.
        let days = wearlink::projects::SettingChange { enabled: None, value: Some(json!(31)) };
        wearlink::projects::put_setting(&services, &seeded.admin, wearlink::sync::BACKFILL_DAYS_SETTING, days).await?;
    }
    let ids = seeded.patient_ids;
    std::fs::write(patients_file, ids.join("\n") + "\n")?;
    println!(
        "{}",
        json!({"projectId": seeded.project_id, "adminToken": seeded.admin_token, "firstPatientId": ids.first()})
    );
    Ok(())
}

async fn connect_patients(project: &str, patients_file: &Path, provider: &str) -> anyhow::Result<()> {
    let services = services().await?;
    let patients: Vec<String> =
        std::fs::read_to_string(patients_file)?.lines().filter(|l| !l.is_empty()).map(String::from).collect();
    let expires = wearlink::time::now_ms() + 6 * 3_600_000;
    support::connect_patients_to(&services, project, &patients, expires, 100, provider).await
}

// ---- progress ----

/// The backfill's counts, on the shared read-only access.
impl Db {
    /// (activities synced, backfill jobs left)
    async fn progress(&self, project: &str) -> anyhow::Result<(i64, i64)> {
        let done = self
            .count("SELECT COALESCE(SUM(backfill_done), 0) FROM sync_status WHERE project_id = $1", project)
            .await?;
        let left = self.count("SELECT COUNT(*) FROM jobs WHERE project_id = $1 AND kind = 'backfill'", project).await?;
        Ok((done, left))
    }

    async fn resources(&self, project: &str, resource_type: &str) -> anyhow::Result<i64> {
        let sql =
            format!("SELECT COUNT(*) FROM fhir_resources WHERE project_id = $1 AND resource_type = '{resource_type}'");
        self.count(&sql, project).await
    }
}

async fn progress(
    project: &str,
    expect: Option<i64>,
    wait: Duration,
    since: i64,
    poll: Duration,
) -> anyhow::Result<Value> {
    let config = Config::from_env()?;
    let db = Db::open(&config.database_url).await?;
    let started = Instant::now();
    let mut last_log = Instant::now();
    let (mut activities, mut jobs_left) = db.progress(project).await?;
    // The first time each tenth of the expected activities was reached (s since `since`).
    let mut milestones: Vec<Value> = Vec::new();
    let mut done = false;
    if let Some(expect) = expect {
        loop {
            let elapsed = (wearlink::time::now_ms() - since) as f64 / 1000.0;
            while expect > 0 && (milestones.len() as i64 + 1) * expect <= activities * 10 && milestones.len() < 10 {
                milestones.push(json!({"percent": (milestones.len() + 1) * 10, "at_s": round3(elapsed)}));
            }
            if jobs_left == 0 && activities >= expect {
                done = true;
                break;
            }
            if started.elapsed() >= wait {
                break;
            }
            if last_log.elapsed() >= Duration::from_secs(5) {
                eprintln!("[bench]   {elapsed:.1} s: {activities} of {expect} activities synced, {jobs_left} backfill jobs left");
                last_log = Instant::now();
            }
            tokio::time::sleep(poll).await;
            (activities, jobs_left) = db.progress(project).await?;
        }
    }
    let elapsed_s = (wearlink::time::now_ms() - since) as f64 / 1000.0;
    let procedures = db.resources(project, "Procedure").await?;
    let observations = db.resources(project, "Observation").await?;
    let resources = procedures + observations;
    if expect.is_none() {
        return Ok(json!({"activities": activities, "backfill_jobs_left": jobs_left, "procedures": procedures,
            "observations": observations, "resources": resources}));
    }
    Ok(json!({
        "done": done,
        "elapsed_s": round3(elapsed_s),
        "expected_activities": expect,
        "activities": activities,
        "backfill_jobs_left": jobs_left,
        "procedures": procedures,
        "observations": observations,
        "resources": resources,
        "activities_per_s": round1(activities as f64 / elapsed_s),
        "resources_per_s": round1(resources as f64 / elapsed_s),
        "milestones": milestones,
    }))
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

// ---- report ----

/// Per backend: `<backend>-alone.json` and `<backend>-during.json` (wrk summaries of connect),
/// `<backend>-alone.server.json` (server facts while connect ran alone), `<backend>-sync.json`
/// (progress at the end, with the server's peak RSS and CPU); and `meta.json`.
fn report(dir: &Path, json_out: &Path, markdown_out: &Path) -> anyhow::Result<()> {
    let read = |name: &str| -> anyhow::Result<Option<Value>> {
        match std::fs::read_to_string(dir.join(name)) {
            Ok(text) => Ok(Some(serde_json::from_str(&text)?)),
            Err(_) => Ok(None),
        }
    };
    let meta = read("meta.json")?.unwrap_or(Value::Null);
    let mut md = format!(
        "# Wearlink sync benchmark {}\n\ncommit `{}`, {}; {} patients × {} activities from an instantly answering \
         Strava stand-in (no rate-limit headers); sync concurrency {}; connect: wrk, {} connections, {} s \
         (alone: after {} s warm-up, sync off; during the backfill: from the server's start); {}; logs: {}; \
         before the run {} cores were busy with other work\n\n",
        meta["date"].as_str().unwrap_or_default(),
        meta["commit"].as_str().unwrap_or_default(),
        meta["machine"].as_str().unwrap_or_default(),
        meta["patients"],
        meta["activities"],
        meta["sync_concurrency"].as_str().unwrap_or("default (8)"),
        meta["concurrency"],
        meta["seconds"],
        meta["warmup_seconds"],
        meta["pinning"].as_str().unwrap_or_default(),
        meta["rust_log"].as_str().unwrap_or_default(),
        meta["background_busy_cores"],
    );
    md.push_str(
        "| backend | synced | elapsed s | activities/s | resources/s | peak RSS MiB (backfill) | server CPU s | busy cores | \
         connect alone req/s | p99 ms | peak RSS MiB | connect during backfill req/s | p99 ms | p99 × alone | errors |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut goals = String::new();
    let mut backends = serde_json::Map::new();
    for backend in ["sqlite", "postgres"] {
        let Some(sync) = read(&format!("{backend}-sync.json"))? else { continue };
        let alone = read(&format!("{backend}-alone.json"))?.unwrap_or(Value::Null);
        let alone_server = read(&format!("{backend}-alone.server.json"))?.unwrap_or(Value::Null);
        let during = read(&format!("{backend}-during.json"))?.unwrap_or(Value::Null);
        let f = |v: &Value, key: &str| v[key].as_f64().unwrap_or(f64::NAN);
        let p99_ratio = f(&during, "p99_ms") / f(&alone, "p99_ms");
        let rss_mib = f(&sync, "peak_rss_kib") / 1024.0;
        let errors = alone["errors"].as_i64().unwrap_or(0) + during["errors"].as_i64().unwrap_or(0);
        md.push_str(&format!(
            "| {backend} | {}/{} | {:.2} | {:.0} | {:.0} | {rss_mib:.1} | {} | {} | {:.0} | {:.2} | {:.1} | {:.0} | {:.2} | {p99_ratio:.2} | {errors} |\n",
            sync["activities"],
            sync["expected_activities"],
            f(&sync, "elapsed_s"),
            f(&sync, "activities_per_s"),
            f(&sync, "resources_per_s"),
            sync["server_cpu_s"],
            sync["machine_busy_cores"],
            f(&alone, "rps"),
            f(&alone, "p99_ms"),
            f(&alone_server, "peak_rss_kib") / 1024.0,
            f(&during, "rps"),
            f(&during, "p99_ms"),
        ));
        let activity_goal = if backend == "sqlite" { 1000.0 } else { 500.0 };
        let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
        let done = sync["done"].as_bool().unwrap_or(false);
        goals.push_str(&format!(
            "- {backend}: all activities synced: {}; ≥ {activity_goal:.0} activities/s: {} ({:.0}); peak RSS < 128 MiB: {} \
             ({rss_mib:.1}); connect p99 during the backfill < 2× alone: {} ({p99_ratio:.2}×){}\n",
            verdict(done),
            verdict(done && f(&sync, "activities_per_s") >= activity_goal),
            f(&sync, "activities_per_s"),
            verdict(rss_mib < 128.0),
            verdict(p99_ratio < 2.0),
            if sync["backfill_outlasted_wrk"].as_bool() == Some(false) {
                "; the backfill ended before wrk did, so part of \"during\" ran without it"
            } else {
                ""
            },
        ));
        // Connect's throughput kept, the backfill's speed while the load ran, webhook acks.
        let kept = f(&during, "rps") / f(&alone, "rps");
        let mut extra = if during.is_null() {
            "no load during the backfill (BENCH_DURING empty): its speed alone".to_string()
        } else {
            format!(
                "connect during the backfill kept {:.1} % of its alone throughput (goal ≥ 70 %: {})",
                kept * 100.0,
                verdict(kept >= 0.7)
            )
        };
        let under_load = read(&format!("{backend}-under-load.json"))?.unwrap_or(Value::Null);
        if let (Some(done), Some(at_ms)) = (under_load["activities"].as_f64(), under_load["at_ms"].as_f64()) {
            extra.push_str(&format!(
                "; the backfill under that load: {done:.0} activities in its first {:.1} s ({:.0}/s)",
                at_ms / 1000.0,
                done / (at_ms / 1000.0)
            ));
        }
        let hooks_alone = read(&format!("{backend}-webhooks-alone.json"))?.unwrap_or(Value::Null);
        let hooks_during = read(&format!("{backend}-webhooks-during.json"))?.unwrap_or(Value::Null);
        if !hooks_during.is_null() {
            let ratio = f(&hooks_during, "p99_ms") / f(&hooks_alone, "p99_ms");
            extra.push_str(&format!(
                "; webhook acks alone (after the backfill) {:.0}/s p99 {:.2} ms, during the backfill {:.0}/s p99 {:.2} ms: \
                 p99 {ratio:.2}× alone (goal < 2×: {}); errors {} and {}, store checks {} and {}",
                f(&hooks_alone, "rps"),
                f(&hooks_alone, "p99_ms"),
                f(&hooks_during, "rps"),
                f(&hooks_during, "p99_ms"),
                verdict(ratio < 2.0),
                hooks_alone["errors"],
                hooks_during["errors"],
                hooks_alone["store_ok"],
                hooks_during["store_ok"],
            ));
        }
        goals.push_str(&format!("- {backend}: {extra}\n"));
        let mut alone_all = alone.clone();
        if let (Value::Object(a), Value::Object(s)) = (&mut alone_all, alone_server.clone()) {
            a.extend(s);
        }
        backends.insert(
            backend.into(),
            json!({"sync": sync, "connect_alone": alone_all, "connect_during_backfill": during, "p99_ratio": p99_ratio,
                "connect_kept": kept, "under_load": under_load, "webhooks_alone": hooks_alone,
                "webhooks_during_backfill": hooks_during}),
        );
    }
    md.push_str("\nGoals (issue): ≥ 1,000 activities/s on SQLite, ≥ 500/s on PostgreSQL, peak RSS < 128 MiB, connect's p99 during the backfill < 2× alone.\n\n");
    md.push_str(&goals);
    md.push_str(
        "\nElapsed: from launching `wearlink serve` until every backfill job was gone and all activities were counted \
         in `sync_status` (polled every 100 ms). Resources: Procedure + Observation rows of the project at the end. \
         Peak RSS: the server's VmHWM, reset once it answered `/readyz`. Server CPU: user + system seconds of the server \
         from its start to the end of the backfill; busy cores: the whole machine (server, database, wrk, stand-in) over \
         the same time. Errors: wrk's transport errors, timeouts and non-2xx answers.\n",
    );
    let doc = json!({"meta": meta, "results": backends});
    std::fs::write(json_out, serde_json::to_string_pretty(&doc)? + "\n")?;
    std::fs::write(markdown_out, md)?;
    Ok(())
}
