//! Helpers for `bench/deliveries.sh` (not part of the service or the test suite):
//!
//! - `receiver`: an instant webhook receiver on 127.0.0.1: every request is answered 204 and
//!   counted (`GET /count` answers the count); signatures are not checked.
//! - `seed`: a project with Strava enabled, its credentials, an admin token and patients, N
//!   endpoints pointing at the receiver (`wearlink::events::endpoints::create`), and M events.
//! - `emit`: M more events for a seeded project (`Store::emit`: each queues one delivery job per
//!   endpoint; nothing is sent here).
//! - `progress`: how far the deliveries are (once, or polled until all are delivered or a time cap).
//! - `report`: merges the JSON files of a run into one JSON and one Markdown file.
//!
//! `seed`, `emit` and `progress` act on the database of `Config::from_env()` (the same variables as
//! `wearlink serve`; endpoints on 127.0.0.1 need `WEARLINK_ALLOW_LOOPBACK_TARGETS=1`).
//! `cargo run --release --example bench_deliveries -- <command> --help`

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use serde_json::{json, Value};
use support::Db;
use wearlink::events::endpoints::{self, NewEndpoint};
use wearlink::{Config, Services};

mod support;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the instant receiver on 127.0.0.1; writes its address to `--addr-file`.
    Receiver {
        #[arg(long, default_value = "127.0.0.1:0")]
        bind: String,
        #[arg(long)]
        addr_file: PathBuf,
        /// Runtime threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Create a project (Strava enabled, credentials, an admin token, `--patients` patients),
    /// register `--endpoints` endpoints at `--receiver` and emit `--events` events; prints
    /// `{projectId, adminToken, firstPatientId, endpointIds, events}`.
    Seed {
        /// The receiver's base URL (http://127.0.0.1:<port>).
        #[arg(long)]
        receiver: String,
        #[arg(long, default_value_t = 1)]
        endpoints: usize,
        #[arg(long, default_value_t = 20_000)]
        events: usize,
        #[arg(long, default_value_t = 64)]
        patients: usize,
        /// Events emitted at once (each is its own transaction).
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Emit `--events` more events for `--project`; prints `{events, seconds}`.
    Emit {
        #[arg(long)]
        project: String,
        #[arg(long, default_value_t = 20_000)]
        events: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Print the deliveries' progress as JSON (deliveries created at or after `--after-ms`); with
    /// `--expect`, wait until that many are delivered (or failed) and none is pending, or
    /// `--timeout-s` passed. While waiting it polls the receiver's count (`--receiver`), not the
    /// database, so that the polling adds no load there; the database is read once at the end.
    Progress {
        #[arg(long)]
        project: String,
        /// The receiver's base URL; required with `--expect`.
        #[arg(long)]
        receiver: Option<String>,
        /// The receiver's count when the phase started.
        #[arg(long, default_value_t = 0)]
        received_before: u64,
        /// Epoch ms: only deliveries created since (the `emit` of this phase).
        #[arg(long, default_value_t = 0)]
        after_ms: i64,
        #[arg(long)]
        expect: Option<i64>,
        #[arg(long, default_value_t = 300.0)]
        timeout_s: f64,
        /// Epoch ms the elapsed time counts from (the server's start); default: now.
        #[arg(long)]
        since_ms: Option<i64>,
        /// A window (epoch ms start, seconds), e.g. while wrk ran: deliveries attempted in it.
        #[arg(long)]
        window_start_ms: Option<i64>,
        #[arg(long)]
        window_s: Option<f64>,
        #[arg(long, default_value_t = 20)]
        poll_ms: u64,
    },
    /// Delete every OAuth state (each connect stores one) from `WEARLINK_DATABASE_URL`, so that
    /// each connect run starts on the same table, not on the hundreds of thousands the runs before
    /// left (which alone made a later run ~10 % slower on PostgreSQL).
    ClearStates,
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
        Command::Receiver { bind, addr_file, threads } => runtime(threads)?.block_on(receiver(bind, addr_file)),
        Command::Seed { receiver, endpoints, events, patients, concurrency } => {
            runtime(2)?.block_on(seed(&receiver, endpoints, events, patients, concurrency))
        }
        Command::Emit { project, events, concurrency } => {
            let seconds = runtime(2)?.block_on(async {
                let services = services().await?;
                let started = Instant::now();
                emit(&services, &project, events, concurrency).await?;
                anyhow::Ok(started.elapsed().as_secs_f64())
            })?;
            println!("{}", json!({"events": events, "seconds": round3(seconds)}));
            Ok(())
        }
        Command::Progress {
            project,
            receiver,
            received_before,
            after_ms,
            expect,
            timeout_s,
            since_ms,
            window_start_ms,
            window_s,
            poll_ms,
        } => {
            let since = since_ms.unwrap_or_else(wearlink::time::now_ms);
            let window = window_start_ms.zip(window_s);
            let query = Query { project, receiver, received_before, after_ms, expect, since, window };
            let wait = Duration::from_secs_f64(timeout_s);
            let result = runtime(1)?.block_on(progress(&query, wait, Duration::from_millis(poll_ms)))?;
            println!("{result}");
            Ok(())
        }
        Command::ClearStates => runtime(1)?.block_on(clear_states()),
        Command::Report { dir, json, markdown } => report(&dir, &json, &markdown),
    }
}

fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(threads.max(1)).enable_all().build()
}

// ---- receiver ----

async fn receiver(bind: String, addr_file: PathBuf) -> anyhow::Result<()> {
    let count = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route(
            "/count",
            get(|State(count): State<Arc<AtomicU64>>| async move {
                Json(json!({"received": count.load(Ordering::Relaxed)}))
            }),
        )
        .fallback(|State(count): State<Arc<AtomicU64>>| async move {
            count.fetch_add(1, Ordering::Relaxed);
            StatusCode::NO_CONTENT
        })
        .with_state(count);
    let listener = tokio::net::TcpListener::bind(&bind).await?;
    anyhow::ensure!(listener.local_addr()?.ip().is_loopback(), "the receiver listens on 127.0.0.1 only");
    std::fs::write(&addr_file, listener.local_addr()?.to_string())?;
    axum::serve(listener, app).await?;
    Ok(())
}

// ---- seed and emit ----

async fn clear_states() -> anyhow::Result<()> {
    let url = std::env::var("WEARLINK_DATABASE_URL")?;
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(&url).await?;
        sqlx::query("DELETE FROM oauth_states").execute(&pool).await?;
        sqlx::query("VACUUM").execute(&pool).await?;
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(&url).await?;
        sqlx::query("TRUNCATE oauth_states").execute(&pool).await?;
        pool.close().await;
    }
    Ok(())
}

async fn services() -> anyhow::Result<Arc<Services>> {
    Services::start(Config::from_env()?).await
}

async fn seed(
    receiver: &str,
    n_endpoints: usize,
    events: usize,
    patients: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let url = url::Url::parse(receiver)?;
    anyhow::ensure!(
        url.host_str().is_some_and(|h| h == "127.0.0.1" || h == "localhost"),
        "the receiver must be on 127.0.0.1"
    );
    let services = services().await?;
    let seeded = support::seed_project(&services, "bench-deliveries", patients).await?;
    let mut endpoint_ids = Vec::new();
    for i in 0..n_endpoints {
        let new = NewEndpoint {
            url: format!("{}/hooks/{i}", receiver.trim_end_matches('/')),
            events: None,
            description: Some(format!("bench receiver {i}")),
        };
        let (endpoint, _secret) = endpoints::create(&services, &seeded.admin, new).await?;
        endpoint_ids.push(endpoint.id);
    }
    let started = Instant::now();
    emit(&services, &seeded.project_id, events, concurrency).await?;
    println!(
        "{}",
        json!({
            "projectId": seeded.project_id,
            "adminToken": seeded.admin_token,
            "firstPatientId": seeded.patient_ids.first(),
            "endpointIds": endpoint_ids,
            "events": events,
            "emitSeconds": round3(started.elapsed().as_secs_f64()),
        })
    );
    Ok(())
}

/// `connection.updated` events (ids like real ones, so bodies have the real size), `concurrency`
/// transactions at a time. Each queues one delivery job per endpoint; nothing is sent here.
async fn emit(services: &Services, project_id: &str, events: usize, concurrency: usize) -> anyhow::Result<()> {
    let emitted = futures::stream::iter(0..events)
        .map(|_| {
            let data = json!({
                "projectId": project_id,
                "patientId": uuid::Uuid::new_v4().to_string(),
                "provider": "strava",
                "endpointId": uuid::Uuid::new_v4().to_string(),
                "status": "active",
            });
            let now = wearlink::time::now_ms();
            let event = wearlink::events::event(project_id, wearlink::events::CONNECTION_UPDATED, data, now);
            async move { services.store.emit(&event, None).await }
        })
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    for r in emitted {
        r?;
    }
    Ok(())
}

// ---- progress ----

struct Query {
    project: String,
    receiver: Option<String>,
    received_before: u64,
    after_ms: i64,
    expect: Option<i64>,
    since: i64,
    window: Option<(i64, f64)>,
}

/// The deliveries' counts, on the shared read-only access.
impl Db {
    /// (delivered, failed, pending) of the project's deliveries created since `after_ms`.
    async fn deliveries(&self, project: &str, after_ms: i64) -> anyhow::Result<(i64, i64, i64)> {
        let of = |state: &str| {
            format!(
                "SELECT COUNT(*) FROM webhook_deliveries WHERE project_id = $1 AND created_at >= $2 AND state = '{state}'"
            )
        };
        let delivered = self.count_with(&of("delivered"), project, after_ms).await?;
        let failed = self.count_with(&of("failed"), project, after_ms).await?;
        let pending = self.count_with(&of("pending"), project, after_ms).await?;
        Ok((delivered, failed, pending))
    }
}

/// The receiver's count of requests so far.
async fn received(client: &reqwest::Client, receiver: &str) -> anyhow::Result<u64> {
    let count: Value = client.get(format!("{}/count", receiver.trim_end_matches('/'))).send().await?.json().await?;
    count["received"].as_u64().ok_or_else(|| anyhow::anyhow!("the receiver answered {count}"))
}

async fn progress(q: &Query, wait: Duration, poll: Duration) -> anyhow::Result<Value> {
    let config = Config::from_env()?;
    let db = Db::open(&config.database_url).await?;
    let started = Instant::now();
    let mut milestones: Vec<Value> = Vec::new();
    let mut done = false;
    if let Some(expect) = q.expect {
        let receiver = q.receiver.as_deref().ok_or_else(|| anyhow::anyhow!("--expect needs --receiver"))?;
        let client = reqwest::Client::new();
        let mut last_log = Instant::now();
        // Until the receiver has had them all (cheap to ask), then until the database has
        // recorded them all (few reads: the outcomes trail the requests by a commit).
        loop {
            let got = received(&client, receiver).await?.saturating_sub(q.received_before) as i64;
            let elapsed = (wearlink::time::now_ms() - q.since) as f64 / 1000.0;
            while expect > 0 && (milestones.len() as i64 + 1) * expect <= got * 10 && milestones.len() < 10 {
                milestones.push(json!({"percent": (milestones.len() + 1) * 10, "at_s": round3(elapsed)}));
            }
            if got >= expect || started.elapsed() >= wait {
                break;
            }
            if last_log.elapsed() >= Duration::from_secs(5) {
                eprintln!("[bench]   {elapsed:.1} s: the receiver has {got} of {expect}");
                last_log = Instant::now();
            }
            tokio::time::sleep(poll).await;
        }
        loop {
            let (delivered, failed, pending) = db.deliveries(&q.project, q.after_ms).await?;
            if pending == 0 && delivered + failed >= expect {
                done = true;
                break;
            }
            if started.elapsed() >= wait {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (delivered, failed, pending) = db.deliveries(&q.project, q.after_ms).await?;
    let seen_s = (wearlink::time::now_ms() - q.since) as f64 / 1000.0;
    // `delivered_at` is the attempt's start (the worker's clock): first and last delivery.
    let bound = |agg: &str| {
        format!(
            "SELECT COALESCE({agg}(delivered_at), 0) FROM webhook_deliveries
             WHERE project_id = $1 AND created_at >= $2 AND state = 'delivered'"
        )
    };
    let first_ms = db.count_with(&bound("MIN"), &q.project, q.after_ms).await?;
    let last_ms = db.count_with(&bound("MAX"), &q.project, q.after_ms).await?;
    let attempts = db
        .count_with(
            "SELECT COALESCE(SUM(attempts), 0) FROM webhook_deliveries WHERE project_id = $1 AND created_at >= $2",
            &q.project,
            q.after_ms,
        )
        .await?;
    let mut out = json!({
        "delivered": delivered,
        "failed": failed,
        "pending": pending,
        "attempts": attempts,
    });
    let Some(expect) = q.expect else { return Ok(out) };
    // From the server's start to the last delivery's attempt; "steady": first to last delivery.
    let elapsed_s = if last_ms > 0 { (last_ms - q.since) as f64 / 1000.0 } else { seen_s };
    let steady_s = (last_ms - first_ms) as f64 / 1000.0;
    out["done"] = json!(done);
    out["expected"] = json!(expect);
    out["elapsed_s"] = json!(round3(elapsed_s));
    out["seen_done_s"] = json!(round3(seen_s));
    out["first_delivery_s"] = json!(round3((first_ms - q.since) as f64 / 1000.0));
    out["deliveries_per_s"] = json!(round1(delivered as f64 / elapsed_s.max(0.001)));
    out["steady_deliveries_per_s"] = json!(round1((delivered - 1).max(0) as f64 / steady_s.max(0.001)));
    out["milestones"] = json!(milestones);
    if let Some((start, seconds)) = q.window {
        let end = start + (seconds * 1000.0) as i64;
        let sql = format!(
            "SELECT COUNT(*) FROM webhook_deliveries WHERE project_id = $1 AND created_at >= $2
               AND state = 'delivered' AND delivered_at >= {start} AND delivered_at < {end}"
        );
        let in_window = db.count_with(&sql, &q.project, q.after_ms).await?;
        // The part of the window deliveries actually ran in (they may end before it does).
        let busy_end = if done && last_ms > 0 { last_ms.min(end) } else { end };
        let busy_s = (busy_end - start).max(1) as f64 / 1000.0;
        out["window"] = json!({
            "start_ms": start,
            "seconds": seconds,
            "delivered": in_window,
            "deliveries_per_s": round1(in_window as f64 / busy_s),
            "deliveries_outlasted_window": !done || last_ms >= end,
        });
    }
    Ok(out)
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

// ---- report ----

/// Per backend: `<backend>-healthz.json`, `<backend>-alone.json` (wrk: /healthz and connect with
/// no delivery pending), `<backend>-alone.server.json` (server facts then), `<backend>-drain.json`
/// (deliveries with no other load; optional), `<backend>-control.json` (wrk: connect from a cold
/// start with the phase's deliveries pending and no worker), `<backend>-during.json` (wrk: connect while
/// deliveries run), `<backend>-deliveries.json` (their progress at the end, with the server's peak
/// RSS, CPU and per-thread CPU); and `meta.json`.
fn report(dir: &Path, json_out: &Path, markdown_out: &Path) -> anyhow::Result<()> {
    let read = |name: &str| -> anyhow::Result<Option<Value>> {
        match std::fs::read_to_string(dir.join(name)) {
            Ok(text) => Ok(Some(serde_json::from_str(&text)?)),
            Err(_) => Ok(None),
        }
    };
    let meta = read("meta.json")?.unwrap_or(Value::Null);
    let mut md = format!(
        "# Wearlink deliveries benchmark {}\n\ncommit `{}`, {}; {} events × {} endpoint(s) to an instant receiver \
         (204) on 127.0.0.1; delivery concurrency {}; busy pace {}; wrk {} connections, {} s measured ({} s warm-up before the runs \
         alone; connect during the deliveries from the server's start); {}; logs: {}; before the run {} cores were \
         busy with other work\n\n",
        meta["date"].as_str().unwrap_or_default(),
        meta["commit"].as_str().unwrap_or_default(),
        meta["machine"].as_str().unwrap_or_default(),
        meta["events"],
        meta["endpoints"],
        meta["outbound_concurrency"].as_str().unwrap_or("8 (the sync concurrency, before the delivery lane)"),
        meta["busy_rate"].as_str().unwrap_or("default (25/s)"),
        meta["concurrency"],
        meta["seconds"],
        meta["warmup_seconds"],
        meta["pinning"].as_str().unwrap_or_default(),
        meta["rust_log"].as_str().unwrap_or_default(),
        meta["background_busy_cores"],
    );
    md.push_str(
        "| backend | /healthz req/s | connect alone req/s | p99 ms | deliveries alone /s | elapsed s | \
         deliveries during connect /s | in wrk's window /s | elapsed s | connect control req/s | p99 ms | \
         connect during req/s | p99 ms | connect drop (vs alone) | peak RSS MiB | server CPU s | busy cores | errors |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut goals = String::new();
    let mut threads_md = String::new();
    let mut backends = serde_json::Map::new();
    for backend in ["sqlite", "postgres"] {
        let Some(deliveries) = read(&format!("{backend}-deliveries.json"))? else { continue };
        let healthz = read(&format!("{backend}-healthz.json"))?.unwrap_or(Value::Null);
        let alone = read(&format!("{backend}-alone.json"))?.unwrap_or(Value::Null);
        let alone_server = read(&format!("{backend}-alone.server.json"))?.unwrap_or(Value::Null);
        let drain = read(&format!("{backend}-drain.json"))?.unwrap_or(Value::Null);
        let during = read(&format!("{backend}-during.json"))?.unwrap_or(Value::Null);
        let control = read(&format!("{backend}-control.json"))?.unwrap_or(Value::Null);
        let f = |v: &Value, key: &str| v[key].as_f64().unwrap_or(f64::NAN);
        // Against the control (same cold start, same pending rows, no worker); phase 1 beside it.
        let drop = 1.0 - f(&during, "rps") / f(&control, "rps");
        let drop_vs_alone = 1.0 - f(&during, "rps") / f(&alone, "rps");
        let rss_mib = f(&deliveries, "peak_rss_kib") / 1024.0;
        let errors =
            [&healthz, &alone, &control, &during].iter().map(|v| v["errors"].as_i64().unwrap_or(0)).sum::<i64>();
        md.push_str(&format!(
            "| {backend} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} | {:.0} | {:.2} | {:.1}% ({:.1}%) | {rss_mib:.1} | {} | {} | {errors} |\n",
            f(&healthz, "rps"),
            f(&alone, "rps"),
            f(&alone, "p99_ms"),
            f(&drain, "deliveries_per_s"),
            f(&drain, "elapsed_s"),
            f(&deliveries, "deliveries_per_s"),
            f(&deliveries["window"], "deliveries_per_s"),
            f(&deliveries, "elapsed_s"),
            f(&control, "rps"),
            f(&control, "p99_ms"),
            f(&during, "rps"),
            f(&during, "p99_ms"),
            drop * 100.0,
            drop_vs_alone * 100.0,
            deliveries["server_cpu_s"],
            deliveries["machine_busy_cores"],
        ));
        let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
        let done = deliveries["done"].as_bool().unwrap_or(false);
        let drain_done = drain["done"].as_bool().unwrap_or(false);
        goals.push_str(&format!(
            "- {backend}: all delivered: {}{}; ≥ 2,000 deliveries/s alone: {}; while connect runs: {} ({:.0}/s over the \
             drain, {:.0}/s in wrk's window); connect's throughput drop < 10 %: {} ({:.1}% against the control, p99 {:.2} → {:.2} ms; {:.1}% against phase 1){}\n",
            verdict(done),
            if drain.is_null() { String::new() } else { format!(" (alone: {})", verdict(drain_done)) },
            if drain.is_null() {
                "not run".to_string()
            } else {
                format!("{} ({:.0}/s)", verdict(drain_done && f(&drain, "deliveries_per_s") >= 2000.0), f(&drain, "deliveries_per_s"))
            },
            verdict(done && f(&deliveries, "deliveries_per_s") >= 2000.0),
            f(&deliveries, "deliveries_per_s"),
            f(&deliveries["window"], "deliveries_per_s"),
            verdict(drop < 0.10),
            drop * 100.0,
            f(&control, "p99_ms"),
            f(&during, "p99_ms"),
            drop_vs_alone * 100.0,
            if deliveries["window"]["deliveries_outlasted_window"].as_bool() == Some(false) {
                "; the deliveries ended before wrk did, so part of \"during\" ran without them"
            } else {
                ""
            },
        ));
        for (phase, value) in [("deliveries alone", &drain), ("deliveries during connect", &deliveries)] {
            if let Some(threads) = value["threads_cpu_s"].as_object() {
                let mut list: Vec<_> = threads.iter().map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(0.0))).collect();
                list.sort_by(|a, b| b.1.total_cmp(&a.1));
                let parts: Vec<String> = list.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
                threads_md.push_str(&format!("- {backend}, {phase}: {}\n", parts.join(", ")));
            }
        }
        let mut alone_all = alone.clone();
        if let (Value::Object(a), Value::Object(s)) = (&mut alone_all, alone_server.clone()) {
            a.extend(s);
        }
        backends.insert(
            backend.into(),
            json!({"healthz": healthz, "connect_alone": alone_all, "deliveries_alone": drain,
                   "deliveries_during_connect": deliveries, "connect_control": control,
                   "connect_during_deliveries": during, "connect_drop": drop, "connect_drop_vs_alone": drop_vs_alone}),
        );
    }
    md.push_str(
        "\nGoals (issue): ≥ 2,000 deliveries/s on SQLite and PostgreSQL; connect's throughput drops by less than 10 % \
         while deliveries run.\n\n",
    );
    md.push_str(&goals);
    if !threads_md.is_empty() {
        md.push_str(
            "\nServer CPU seconds per thread name (from `/proc/<pid>/task/*/stat`, start to end of the phase):\n\n",
        );
        md.push_str(&threads_md);
    }
    md.push_str(
        "\nDeliveries/s: delivered ÷ (last delivery's attempt − launch of `wearlink serve`), so the server's start-up \
         counts; \"in wrk's window\": deliveries attempted while wrk ran ÷ the part of the window they ran in. Connect \
         control: phase 3 without the worker (same events pending, same cold start, wrk from the server's start). \
         Connect drop: 1 − during ÷ control (req/s); in brackets 1 − during ÷ alone. Peak RSS: the server's VmHWM, reset once it answered `/readyz`, read at the \
         end of the deliveries. Server CPU: user + system seconds of the server from its start to the end of the \
         deliveries; busy cores: the whole machine (server, database, wrk, receiver) over the same time. Errors: \
         wrk's transport errors, timeouts and non-2xx answers.\n",
    );
    let doc = json!({"meta": meta, "results": backends});
    std::fs::write(json_out, serde_json::to_string_pretty(&doc)? + "\n")?;
    std::fs::write(markdown_out, md)?;
    Ok(())
}
