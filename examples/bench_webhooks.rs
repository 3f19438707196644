//! Benchmark (run on purpose, not a test): acknowledged webhook events per second and the
//! acknowledgement latency (p50, p99) at a fixed concurrency, with every event written to the
//! inbox before its 200. The load generator runs in the same process as the server.
//!
//!     cargo run --release --example bench_webhooks -- [sqlite|postgres] [seconds] [concurrency]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use wearlink::{Config, Services};

mod support;
use support::{database, seed};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let backend = args.get(1).map(String::as_str).unwrap_or("sqlite").to_string();
    let seconds: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let concurrency: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(64);

    let (db_url, cleanup) = database(&backend).await?;
    let dir = tempfile::tempdir()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut config = Config::new(addr, db_url, dir.path());
    config.master_key = Some(wearlink::crypto::Keyring::generate_encoded());
    let services = Services::start(config).await?;
    let project_id = seed(&services, 1).await?;
    let subscription = json!("1");
    services.store.put_setting(&project_id, wearlink::webhooks::STRAVA_SUBSCRIPTION_SETTING, &subscription, 0).await?;
    let router = wearlink::http::router(Arc::clone(&services));
    tokio::spawn(async move { axum::serve(listener, router).await });

    let url = format!("http://{addr}/v1/wearables/strava/webhook/{project_id}");
    let client = reqwest::Client::new();
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url, next) = (client.clone(), url.clone(), Arc::clone(&next));
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < deadline {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let body = json!({"aspect_type": "create", "event_time": 1764064000, "object_id": i,
                        "object_type": "activity", "owner_id": 0, "subscription_id": 1, "updates": {}});
                    let t = Instant::now();
                    match client.post(&url).json(&body).send().await {
                        Ok(r) if r.status().is_success() => latencies.push(t.elapsed()),
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (l, e) = w.await?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| latencies.get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)));
    let ms = |d: Option<&Duration>| d.map(|d| d.as_secs_f64() * 1000.0).unwrap_or(f64::NAN);
    let stored: i64 = services.store.count_events(&project_id).await?.iter().map(|(_, n)| n).sum();
    println!(
        "{}",
        json!({
            "backend": backend, "concurrency": concurrency, "seconds": elapsed,
            "acknowledged": latencies.len(), "errors": errors, "stored": stored,
            "acknowledged_per_second": latencies.len() as f64 / elapsed,
            "p50_ms": ms(pct(0.50)), "p99_ms": ms(pct(0.99)),
        })
    );
    drop(services);
    cleanup.await;
    Ok(())
}
