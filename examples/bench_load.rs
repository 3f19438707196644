//! Helpers for `bench/run.sh` (not part of the service or the test suite):
//!
//! - `stand-in`: an instantly answering Strava token endpoint (`POST /oauth/token`) and push
//!   subscription creation (`POST /api/v3/push_subscriptions`).
//! - `seed`: enables Strava in a project, stores its credentials and creates patients.
//! - `callback`: a closed-loop driver of the full connect → callback story at a fixed concurrency
//!   for a fixed time; prints JSON (flows/s, latency percentiles, errors).
//! - `webhooks`: a closed-loop driver of Strava webhook deliveries for the project's connected
//!   athletes (every 10th send a provider's retry), which then counts the project's inbox: every
//!   event acknowledged as new is stored once, every retry answered as a duplicate.
//! - `report`: merges the per-scenario JSON files of a run into one JSON and one Markdown file.
//!
//! `cargo run --release --example bench_load -- <command> --help`

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::{Json, Router};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

mod support;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve an instant Strava token endpoint; writes its address to `--addr-file`.
    StandIn {
        #[arg(long, default_value = "127.0.0.1:0")]
        bind: String,
        #[arg(long)]
        addr_file: PathBuf,
    },
    /// Enable Strava, store its credentials and create `--patients` patients; prints their ids (JSON).
    Seed {
        #[arg(long)]
        url: String,
        #[arg(long)]
        token: String,
        #[arg(long, default_value_t = 64)]
        patients: usize,
    },
    /// Drive connect → callback at a fixed concurrency for a fixed time; prints JSON.
    Callback {
        #[arg(long)]
        url: String,
        #[arg(long)]
        token: String,
        /// Comma-separated patient ids; worker i uses patient i mod n.
        #[arg(long)]
        patients: String,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Client runtime threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Drive Strava webhook deliveries at a fixed concurrency for a fixed time; prints JSON.
    Webhooks {
        #[arg(long)]
        url: String,
        /// An admin token (lists the connections, creates the push subscription when missing).
        #[arg(long)]
        token: String,
        #[arg(long)]
        project: String,
        /// The server's database, to count the inbox before and after (read-only).
        #[arg(long)]
        database_url: String,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Every n-th send of a worker repeats its last event (0: never).
        #[arg(long, default_value_t = 10)]
        duplicate_every: u64,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Events of an athlete no connection has (stored `ignored`, no job): the acknowledgement
        /// alone, without the sync work the events would queue (bench/sync.sh, beside a backfill).
        #[arg(long)]
        unknown_athlete: bool,
    },
    /// Merge `<dir>/*.json` scenario results into `--json` and `--markdown`.
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
        Command::StandIn { bind, addr_file } => runtime(1)?.block_on(stand_in(bind, addr_file)),
        Command::Seed { url, token, patients } => runtime(1)?.block_on(seed(url, token, patients)),
        Command::Callback { url, token, patients, concurrency, seconds, threads } => {
            let patients: Vec<String> = patients.split(',').filter(|p| !p.is_empty()).map(String::from).collect();
            anyhow::ensure!(!patients.is_empty(), "--patients is empty");
            let result = runtime(threads)?.block_on(drive_callbacks(
                url,
                token,
                patients,
                concurrency,
                Duration::from_secs_f64(seconds),
            ))?;
            println!("{result}");
            Ok(())
        }
        Command::Webhooks {
            url,
            token,
            project,
            database_url,
            concurrency,
            seconds,
            duplicate_every,
            threads,
            unknown_athlete,
        } => {
            let result = runtime(threads)?.block_on(drive_webhooks(
                url,
                token,
                project,
                database_url,
                concurrency,
                Duration::from_secs_f64(seconds),
                duplicate_every,
                unknown_athlete,
            ))?;
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

async fn stand_in(bind: String, addr_file: PathBuf) -> anyhow::Result<()> {
    let athletes = Arc::new(AtomicU64::new(1_000_000));
    let app = Router::new().route("/api/v3/push_subscriptions", post(|| async { Json(json!({"id": 1})) })).route(
        "/oauth/token",
        post(move |_form: axum::body::Bytes| {
            let athletes = Arc::clone(&athletes);
            async move {
                let id = athletes.fetch_add(1, Ordering::Relaxed);
                let now = chrono::Utc::now().timestamp();
                Json(json!({
                    "token_type": "Bearer",
                    "expires_at": now + 21600,
                    "expires_in": 21600,
                    "refresh_token": format!("bench-refresh-{id}"),
                    "access_token": format!("bench-access-{id}"),
                    "athlete": {"id": id}
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    std::fs::write(&addr_file, listener.local_addr()?.to_string())?;
    axum::serve(listener, app).await?;
    Ok(())
}

// ---- seed ----

async fn seed(url: String, token: String, patients: usize) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let send = |method: reqwest::Method, path: &str, body: Value| {
        http.request(method, format!("{url}{path}")).bearer_auth(&token).json(&body).send()
    };
    let r =
        send(reqwest::Method::PUT, "/v1/project/settings/WEARABLE_STRAVA_ENABLED", json!({"enabled": true})).await?;
    anyhow::ensure!(r.status().is_success(), "enabling strava: {}", r.status());
    let r = send(
        reqwest::Method::PUT,
        "/v1/wearables/strava/credentials",
        json!({"clientId": "bench-client", "clientSecret": "bench-client-secret"}),
    )
    .await?;
    anyhow::ensure!(r.status().is_success(), "storing credentials: {}", r.status());
    let mut ids = Vec::with_capacity(patients);
    for _ in 0..patients {
        let r = send(reqwest::Method::POST, "/fhir/R4/Patient", json!({"resourceType": "Patient"})).await?;
        anyhow::ensure!(r.status().is_success(), "creating a patient: {}", r.status());
        let body: Value = r.json().await?;
        ids.push(body["id"].as_str().unwrap_or_default().to_string());
    }
    println!("{}", ids.join(","));
    Ok(())
}

// ---- callback driver ----

#[derive(Default)]
struct WorkerStats {
    flows: u64,
    errors: u64,
    /// Callback latencies, microseconds.
    callback_us: Vec<u32>,
    connect_us: Vec<u32>,
    first_error: Option<String>,
}

async fn drive_callbacks(
    url: String,
    token: String,
    patients: Vec<String>,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<Value> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(5))
        .build()?;
    let connect_url = format!("{url}/v1/wearables/strava/connect");
    let callback_url = format!("{url}/v1/wearables/strava/callback");
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = Vec::with_capacity(concurrency);
    for i in 0..concurrency {
        let (http, connect_url, callback_url, token) =
            (http.clone(), connect_url.clone(), callback_url.clone(), token.clone());
        let patient = patients[i % patients.len()].clone();
        workers.push(tokio::spawn(async move {
            let mut stats = WorkerStats::default();
            let body = json!({"patientId": patient, "redirectUri": "https://app.example/connected"}).to_string();
            while Instant::now() < deadline {
                match one_flow(&http, &connect_url, &callback_url, &token, &body, &mut stats).await {
                    Ok(()) => stats.flows += 1,
                    Err(e) => {
                        stats.errors += 1;
                        stats.first_error.get_or_insert(e);
                    }
                }
            }
            stats
        }));
    }
    let mut all = WorkerStats::default();
    for worker in workers {
        let stats = worker.await?;
        all.flows += stats.flows;
        all.errors += stats.errors;
        all.callback_us.extend(stats.callback_us);
        all.connect_us.extend(stats.connect_us);
        if all.first_error.is_none() {
            all.first_error = stats.first_error;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(json!({
        "requests": all.flows,
        "seconds": elapsed,
        "rps": all.flows as f64 / elapsed,
        "p50_ms": percentile_ms(&mut all.callback_us, 50.0),
        "p99_ms": percentile_ms(&mut all.callback_us, 99.0),
        "max_ms": percentile_ms(&mut all.callback_us, 100.0),
        "errors": all.errors,
        "first_error": all.first_error,
        "connect_p50_ms": percentile_ms(&mut all.connect_us, 50.0),
        "connect_p99_ms": percentile_ms(&mut all.connect_us, 99.0),
        "http_requests_per_s": (all.connect_us.len() + all.callback_us.len()) as f64 / elapsed,
    }))
}

/// Connect, then the provider's redirect to our callback with a code and that state; expects 303
/// to the redirectUri with `status=connected`.
async fn one_flow(
    http: &reqwest::Client,
    connect_url: &str,
    callback_url: &str,
    token: &str,
    body: &str,
    stats: &mut WorkerStats,
) -> Result<(), String> {
    let t = Instant::now();
    let response = http
        .post(connect_url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let status = response.status();
    let text = response.text().await.map_err(|e| format!("connect body: {e}"))?;
    stats.connect_us.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
    if status != reqwest::StatusCode::OK {
        return Err(format!("connect: {status} {text}"));
    }
    let started: Value = serde_json::from_str(&text).map_err(|e| format!("connect answer: {e}"))?;
    let state = started["state"].as_str().ok_or("connect answer without state")?;

    let t = Instant::now();
    let response = http
        .get(callback_url)
        .query(&[("code", "bench-code"), ("state", state), ("scope", "read,activity:read_all")])
        .send()
        .await
        .map_err(|e| format!("callback: {e}"))?;
    let status = response.status();
    let location = response.headers().get("location").and_then(|l| l.to_str().ok()).unwrap_or_default().to_string();
    let _ = response.bytes().await;
    stats.callback_us.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
    if status != reqwest::StatusCode::SEE_OTHER || !location.contains("status=connected") {
        return Err(format!("callback: {status} {location}"));
    }
    Ok(())
}

fn percentile_ms(samples: &mut [u32], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1] as f64 / 1000.0
}

// ---- webhooks driver ----

// The driver's settings, as the command line gives them.
#[allow(clippy::too_many_arguments)]
async fn drive_webhooks(
    url: String,
    token: String,
    project: String,
    database_url: String,
    concurrency: usize,
    duration: Duration,
    duplicate_every: u64,
    unknown_athlete: bool,
) -> anyhow::Result<Value> {
    let http =
        reqwest::Client::builder().pool_max_idle_per_host(concurrency).timeout(Duration::from_secs(5)).build()?;
    // The subscription (recorded once; the stand-in answers id 1) and the athletes connected so far.
    let r = http.post(format!("{url}/v1/wearables/strava/webhook-subscription")).bearer_auth(&token).send().await?;
    anyhow::ensure!(r.status().is_success(), "creating the push subscription: {}", r.status());
    let connections: Value =
        http.get(format!("{url}/v1/wearables/connections")).bearer_auth(&token).send().await?.json().await?;
    let mut athletes: Vec<u64> = connections["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["remoteUserId"].as_str()?.parse().ok())
        .collect();
    if unknown_athlete {
        athletes = vec![u64::from(u32::MAX)]; // beyond every stand-in's athletes
    }
    if athletes.is_empty() {
        athletes.push(1); // unknown: its events are stored as `ignored`
    }
    let db = support::Db::open(&database_url).await?;
    let count = "SELECT COUNT(*) FROM webhook_events WHERE project_id = $1";
    let stored_before = db.count(count, &project).await?;

    let webhook_url = format!("{url}/v1/wearables/strava/webhook/{project}");
    // Object ids of this run: distinct from the warm-up's and earlier runs'.
    let next = Arc::new(AtomicU64::new((chrono::Utc::now().timestamp_micros() as u64) << 8));
    let athletes = Arc::new(athletes);
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (http, webhook_url, next, athletes) =
            (http.clone(), webhook_url.clone(), Arc::clone(&next), Arc::clone(&athletes));
        workers.push(tokio::spawn(async move {
            let mut stats = WebhookStats::default();
            let mut last: Option<(u64, u64)> = None;
            let mut sent = 0u64;
            while Instant::now() < deadline {
                let repeat =
                    (duplicate_every > 0 && sent % duplicate_every == duplicate_every - 1).then_some(last).flatten();
                let (object, owner) = repeat.unwrap_or_else(|| {
                    let object = next.fetch_add(1, Ordering::Relaxed);
                    (object, athletes[object as usize % athletes.len()])
                });
                last = Some((object, owner));
                sent += 1;
                let body = json!({"aspect_type": "create", "event_time": 1764064000, "object_id": object,
                    "object_type": "activity", "owner_id": owner, "subscription_id": 1, "updates": {}});
                let t = Instant::now();
                let answer = match http.post(&webhook_url).json(&body).send().await {
                    Ok(r) if r.status().is_success() => r.json::<Value>().await.map_err(|e| e.to_string()),
                    Ok(r) => Err(format!("{}", r.status())),
                    Err(e) => Err(e.to_string()),
                };
                match answer.map(|a| a["duplicate"].as_bool()) {
                    Ok(Some(duplicate)) => {
                        stats.latency_us.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        if duplicate {
                            stats.duplicates += 1
                        } else {
                            stats.new += 1
                        }
                        if duplicate != repeat.is_some() {
                            stats.wrong_answers += 1;
                        }
                    }
                    Ok(None) => stats.errors += 1,
                    Err(e) => {
                        stats.errors += 1;
                        stats.first_error.get_or_insert(e);
                    }
                }
            }
            stats
        }));
    }
    let mut all = WebhookStats::default();
    for worker in workers {
        let stats = worker.await?;
        all.new += stats.new;
        all.duplicates += stats.duplicates;
        all.wrong_answers += stats.wrong_answers;
        all.errors += stats.errors;
        all.latency_us.extend(stats.latency_us);
        if all.first_error.is_none() {
            all.first_error = stats.first_error;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let stored = db.count(count, &project).await? - stored_before;
    let acknowledged = all.latency_us.len();
    Ok(json!({
        "requests": acknowledged,
        "seconds": elapsed,
        "rps": acknowledged as f64 / elapsed,
        "p50_ms": percentile_ms(&mut all.latency_us, 50.0),
        "p99_ms": percentile_ms(&mut all.latency_us, 99.0),
        "max_ms": percentile_ms(&mut all.latency_us, 100.0),
        "errors": all.errors,
        "first_error": all.first_error,
        "new": all.new,
        "duplicates": all.duplicates,
        "wrong_answers": all.wrong_answers,
        "stored": stored,
        // Nothing lost, nothing stored twice, every answer true (no errors, whose fate is unknown).
        "store_ok": stored == all.new as i64 && all.wrong_answers == 0 && all.errors == 0,
    }))
}

#[derive(Default)]
struct WebhookStats {
    new: u64,
    duplicates: u64,
    wrong_answers: u64,
    errors: u64,
    latency_us: Vec<u32>,
    first_error: Option<String>,
}

// ---- report ----

/// Merges `<backend>-<scenario>.json` files (each with rps, p50_ms, p99_ms, errors, peak_rss_kib)
/// and `meta.json` into one JSON document and a Markdown table with ratios to the baseline.
fn report(dir: &std::path::Path, json_out: &std::path::Path, markdown_out: &std::path::Path) -> anyhow::Result<()> {
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json"))?)?;
    let mut backends = serde_json::Map::new();
    let mut md = String::new();
    let mut store_checks = String::new();
    md.push_str(&format!(
        "# Wearlink benchmark {}\n\ncommit `{}`, {}; {} connections, {} s per scenario (after {} s warm-up); {}; \
         logs: {}; before the run {} cores were busy with other work\n\n",
        meta["date"].as_str().unwrap_or_default(),
        meta["commit"].as_str().unwrap_or_default(),
        meta["machine"].as_str().unwrap_or_default(),
        meta["concurrency"],
        meta["seconds"],
        meta["warmup_seconds"],
        meta["pinning"].as_str().unwrap_or_default(),
        meta["rust_log"].as_str().unwrap_or_default(),
        meta["background_busy_cores"],
    ));
    md.push_str(
        "| backend | scenario | requests/s | × baseline | p50 ms | p99 ms | errors | peak RSS MiB | server CPU s | machine busy cores |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for backend in ["sqlite", "sqlite-normal", "postgres"] {
        let mut scenarios = serde_json::Map::new();
        let mut baseline_rps = None;
        for scenario in ["baseline", "connect", "callback", "webhooks"] {
            let path = dir.join(format!("{backend}-{scenario}.json"));
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            let mut result: Value = serde_json::from_str(&text)?;
            if let Ok(server) = std::fs::read_to_string(dir.join(format!("{backend}-{scenario}.server.json"))) {
                if let Value::Object(fields) = serde_json::from_str(&server)? {
                    result.as_object_mut().expect("a result is an object").extend(fields);
                }
            }
            let rps = result["rps"].as_f64().unwrap_or_default();
            if scenario == "baseline" {
                baseline_rps = Some(rps);
            }
            let ratio = baseline_rps.filter(|b| *b > 0.0).map(|b| rps / b);
            result["ratio_to_baseline"] = json!(ratio.map(|r| (r * 1000.0).round() / 1000.0));
            let mib = result["peak_rss_kib"].as_f64().unwrap_or_default() / 1024.0;
            md.push_str(&format!(
                "| {backend} | {scenario} | {rps:.0} | {} | {:.2} | {:.2} | {} | {mib:.1} | {} | {} |\n",
                ratio.map(|r| format!("{:.1}%", r * 100.0)).unwrap_or_default(),
                result["p50_ms"].as_f64().unwrap_or_default(),
                result["p99_ms"].as_f64().unwrap_or_default(),
                result["errors"],
                result["server_cpu_s"],
                result["machine_busy_cores"],
            ));
            if scenario == "webhooks" {
                store_checks.push_str(&format!(
                    "- {backend}: {} acknowledged as new, {} retries answered as duplicates ({} wrong answers), \
                     {} events stored: {}\n",
                    result["new"],
                    result["duplicates"],
                    result["wrong_answers"],
                    result["stored"],
                    if result["store_ok"] == true { "nothing lost, none stored twice" } else { "**MISMATCH**" },
                ));
            }
            scenarios.insert(scenario.into(), result);
        }
        // BENCH_ROUNDS > 1: the figures above are medians; the ratios of each round.
        if let Ok(text) = std::fs::read_to_string(dir.join(format!("{backend}-rounds-summary.json"))) {
            let summary: Value = serde_json::from_str(&text)?;
            store_checks.push_str(&format!(
                "- {backend}, connect / baseline in each round (alternating): requests/s {}, p99 {}; medians {} and {}\n",
                summary["connect_rps_over_baseline"],
                summary["connect_p99_over_baseline"],
                summary["median_rps_ratio"],
                summary["median_p99_ratio"],
            ));
            scenarios.insert("rounds".into(), summary);
        }
        if !scenarios.is_empty() {
            if let Ok(text) = std::fs::read_to_string(dir.join(format!("{backend}-server.json"))) {
                scenarios.insert("server".into(), serde_json::from_str(&text)?);
            }
            backends.insert(backend.into(), Value::Object(scenarios));
        }
    }
    if !store_checks.is_empty() {
        md.push_str("\nWebhook inbox after the measured run (warm-up excluded) and rounds:\n\n");
        md.push_str(&store_checks);
    }
    md.push_str(
        "\nbaseline and connect: wrk (`-t2`); callback: `examples/bench_load.rs callback` (connect, then the \
         callback with that state; the rate counts completed flows, latencies are the callback's); webhooks: \
         `examples/bench_load.rs webhooks` (Strava events for the connected athletes, every 10th send a retry). Errors: \
         transport errors, timeouts and unexpected statuses. Peak RSS: the server's VmHWM during the scenario \
         (reset before its warm-up). Server CPU: user + system seconds of the server process while measured; machine busy cores: all \
         processes (server, load generator, database, anything else).\n",
    );
    let doc = json!({"meta": meta, "results": backends});
    std::fs::write(json_out, serde_json::to_string_pretty(&doc)? + "\n")?;
    std::fs::write(markdown_out, md)?;
    Ok(())
}
