//! Benchmark (run on purpose, not a test): acknowledged webhook events per second and the
//! acknowledgement latency (p50, p99) at a fixed concurrency, against the same server's `/healthz`
//! driven the same way in the same run, with every event written to the inbox before its 200. The
//! load generator runs in the same process as the server; the sync worker is not started, so each
//! event's job stays queued and can be counted.
//!
//!     cargo run --release --example bench_webhooks -- [sqlite|postgres] [seconds] [concurrency]
//!
//! Every `BENCH_DUPLICATE_EVERY`-th send (default 10) of a sender repeats the event it acknowledged
//! last, as a provider's retry would; it must be answered `duplicate: true`. After the run the
//! store is counted: one inbox row and one job per distinct acknowledged event — nothing lost,
//! no duplicate stored. The database settings come from the environment as the server reads them
//! (`WEARLINK_DB_MAX_CONNECTIONS`, `WEARLINK_SQLITE_SYNCHRONOUS`, …). Prints one JSON line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wearlink::{Config, Services};

mod support;
use support::{database, seed, Db};

/// What one scenario's senders saw.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    errors: u64,
    /// Events answered `duplicate: false`, and repeats answered `duplicate: true`.
    new: u64,
    duplicates: u64,
    /// Answers that contradict what was sent (a first send called a duplicate, or the reverse).
    wrong_answers: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        self.new += other.new;
        self.duplicates += other.duplicates;
        self.wrong_answers += other.wrong_answers;
    }

    fn summary(mut self, elapsed: f64) -> Value {
        self.latencies.sort();
        let n = self.latencies.len();
        let pct = |p: f64| self.latencies.get(((n as f64 * p) as usize).min(n.saturating_sub(1)));
        let ms = |d: Option<&Duration>| d.map(|d| d.as_secs_f64() * 1000.0).unwrap_or(f64::NAN);
        json!({
            "requests": n, "errors": self.errors, "requests_per_second": n as f64 / elapsed,
            "p50_ms": ms(pct(0.50)), "p99_ms": ms(pct(0.99)),
            "new": self.new, "duplicates": self.duplicates, "wrong_answers": self.wrong_answers,
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let backend = args.get(1).map(String::as_str).unwrap_or("sqlite").to_string();
    let seconds: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let concurrency: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let duplicate_every: u64 =
        std::env::var("BENCH_DUPLICATE_EVERY").ok().map(|s| s.parse()).transpose()?.unwrap_or(10);

    let (db_url, cleanup) = database(&backend).await?;
    let dir = tempfile::tempdir()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut config = Config::new(addr, db_url.clone(), dir.path());
    // The pool (and the SQLite settings) as `wearlink serve` would read them for this database.
    let url = db_url.clone();
    config.pool = Config::from_vars(|name| match name {
        "WEARLINK_DATABASE_URL" => Some(url.clone()),
        _ => std::env::var(name).ok().filter(|v| !v.is_empty()),
    })?
    .pool;
    config.master_key = Some(wearlink::crypto::Keyring::generate_encoded());
    let services = Services::start(config).await?;
    let project_id = seed(&services, 1).await?;
    let subscription = json!("1");
    services
        .store
        .put_setting(&project_id, &wearlink::webhooks::subscription_setting("strava"), &subscription, 0)
        .await?;
    let router = wearlink::http::router(Arc::clone(&services));
    tokio::spawn(async move { axum::serve(listener, router).await });
    let client = reqwest::Client::new();

    // The baseline: /healthz of the same server, from the same kind of senders.
    let healthz = format!("http://{addr}/healthz");
    let probe = client.clone();
    let (baseline, baseline_s) = drive(concurrency, seconds, move |_, _: &mut ()| {
        let (client, url) = (probe.clone(), healthz.clone());
        async move {
            let mut tally = Tally::default();
            let t = Instant::now();
            match client.get(&url).send().await {
                Ok(r) if r.status().is_success() => tally.latencies.push(t.elapsed()),
                _ => tally.errors += 1,
            }
            tally
        }
    })
    .await;

    let url = format!("http://{addr}/v1/wearables/strava/webhook/{project_id}");
    let next = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&next);
    let (acks, acks_s) = drive(concurrency, seconds, move |sent, last: &mut Option<u64>| {
        // A repeat of this sender's last acknowledged event, or a new one.
        let repeat = (duplicate_every > 0 && sent % duplicate_every == duplicate_every - 1).then_some(*last).flatten();
        let object_id = repeat.unwrap_or_else(|| counter.fetch_add(1, Ordering::Relaxed));
        *last = Some(object_id);
        let (client, url) = (client.clone(), url.clone());
        async move {
            let body = json!({"aspect_type": "create", "event_time": 1764064000, "object_id": object_id,
                "object_type": "activity", "owner_id": 0, "subscription_id": 1, "updates": {}});
            let mut tally = Tally::default();
            let t = Instant::now();
            let answer = match client.post(&url).json(&body).send().await {
                Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
                _ => None,
            };
            match answer.and_then(|a| a["duplicate"].as_bool()) {
                Some(duplicate) => {
                    tally.latencies.push(t.elapsed());
                    if duplicate {
                        tally.duplicates += 1;
                    } else {
                        tally.new += 1;
                    }
                    if duplicate != repeat.is_some() {
                        tally.wrong_answers += 1;
                    }
                }
                None => tally.errors += 1,
            }
            tally
        }
    })
    .await;
    let (acks_new, acks_wrong, acks_errors) = (acks.new, acks.wrong_answers, acks.errors);

    // What the store holds: every distinct acknowledged event once, each with its queued job.
    let db = Db::open(&db_url).await?;
    let stored = db.count("SELECT COUNT(*) FROM webhook_events WHERE project_id = $1", &project_id).await?;
    let jobs =
        db.count("SELECT COUNT(*) FROM jobs WHERE project_id = $1 AND kind = 'webhook_event'", &project_id).await?;
    let sent_events = next.load(Ordering::Relaxed) as i64;
    let acks = acks.summary(acks_s);
    let baseline = baseline.summary(baseline_s);
    let ratio = acks["requests_per_second"].as_f64().unwrap_or(0.0)
        / baseline["requests_per_second"].as_f64().unwrap_or(f64::NAN);
    println!(
        "{}",
        json!({
            "backend": backend, "concurrency": concurrency, "seconds": seconds,
            "sqlite_synchronous": std::env::var("WEARLINK_SQLITE_SYNCHRONOUS").unwrap_or_else(|_| "default".into()),
            "baseline": baseline, "webhooks": acks, "ratio_to_baseline": ratio,
            "store": {
                "distinct_events_sent": sent_events, "events_stored": stored, "jobs_queued": jobs,
                // Acknowledged as new but not in the store, or stored more often than sent.
                "lost": (acks_new as i64 - stored).max(0),
                "duplicates_stored": (stored - sent_events).max(0),
                "ok": stored == acks_new as i64 && jobs == stored && acks_wrong == 0 && acks_errors == 0,
            },
        })
    );
    drop(services);
    cleanup.await;
    Ok(())
}

/// Runs `concurrency` senders for `seconds`, each calling `send(sent_so_far, its_state)` in a
/// closed loop; answers the merged tally and the elapsed seconds.
async fn drive<S, F, Fut>(concurrency: usize, seconds: u64, send: F) -> (Tally, f64)
where
    S: Default + Send + 'static,
    F: Fn(u64, &mut S) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Tally> + Send,
{
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let senders: Vec<_> = (0..concurrency)
        .map(|_| {
            let send = send.clone();
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut state = S::default();
                let mut sent = 0;
                while Instant::now() < deadline {
                    tally.merge(send(sent, &mut state).await);
                    sent += 1;
                }
                tally
            })
        })
        .collect();
    let mut tally = Tally::default();
    for s in senders {
        tally.merge(s.await.expect("a sender panicked"));
    }
    (tally, started.elapsed().as_secs_f64())
}
