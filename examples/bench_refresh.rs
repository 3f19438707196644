//! Benchmark (run on purpose, not a test): how long one instance takes to refresh N expiring
//! Strava connections against a stand-in that answers at once, and how that scales with two.
//!
//!     cargo run --release --example bench_refresh -- [sqlite|postgres] [N]
//!
//! PostgreSQL: a fresh database on WEARLINK_TEST_POSTGRES_URL's server (default
//! postgres://postgres@127.0.0.1:5432/test), dropped afterwards. Prints one JSON line per run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::routing::post;
use axum::{Form, Json, Router};
use serde_json::json;
use wearlink::connections::refresh_due;
use wearlink::{Config, Services};

mod support;
use support::{database, seed};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let backend = args.get(1).map(String::as_str).unwrap_or("sqlite").to_string();
    let n: usize = args.get(2).map(|n| n.parse()).transpose()?.unwrap_or(10_000);

    // The instant stand-in: every refresh answers a new token pair.
    let counter = Arc::new(AtomicU64::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let token_url = format!("http://{}/oauth/token", listener.local_addr()?);
    let c = Arc::clone(&counter);
    let app = Router::new().route(
        "/oauth/token",
        post(move |Form(_form): Form<std::collections::HashMap<String, String>>| {
            let i = c.fetch_add(1, Ordering::Relaxed);
            async move {
                Json(json!({"token_type": "Bearer", "access_token": format!("a{i}"), "refresh_token": format!("r{i}"),
                    "expires_in": 21600, "expires_at": chrono::Utc::now().timestamp() + 21600}))
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut results = Vec::new();
    for instances in [1usize, 2] {
        let (db_url, cleanup) = database(&backend).await?;
        let dir = tempfile::tempdir()?;
        let mut config = Config::new("127.0.0.1:0".parse()?, db_url.clone(), dir.path());
        config.master_key = Some(wearlink::crypto::Keyring::generate_encoded());
        config.provider_urls.entry("strava".into()).or_default().token = Some(token_url.parse()?);
        config.pool.max_connections = 16;
        let services: Vec<Arc<Services>> = {
            let mut v = Vec::new();
            for _ in 0..instances {
                v.push(Services::start(config.clone()).await?);
            }
            v
        };
        seed(&services[0], n).await?;
        let before = counter.load(Ordering::Relaxed);
        let now = wearlink::time::now_ms();
        let started = Instant::now();
        let passes = services.iter().map(|s| refresh_due(s, now));
        let reports = futures::future::join_all(passes).await;
        let elapsed = started.elapsed();
        let refreshed: usize = reports.iter().map(|r| r.as_ref().map(|r| r.refreshed).unwrap_or(0)).sum();
        let provider_calls = counter.load(Ordering::Relaxed) - before;
        let line = json!({
            "backend": backend, "instances": instances, "connections": n, "refreshed": refreshed,
            "provider_refreshes": provider_calls, "seconds": elapsed.as_secs_f64(),
            "per_second": refreshed as f64 / elapsed.as_secs_f64(),
        });
        println!("{line}");
        results.push(line);
        for s in services {
            drop(s);
        }
        cleanup.await;
    }
    Ok(())
}
