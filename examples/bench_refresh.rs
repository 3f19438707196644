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
use wearlink::connections::{endpoint_body, endpoint_owner, refresh_due, TokenMaterial};
use wearlink::projects::{self, NewCredentials, Principal};
use wearlink::store::{ConnectionRecord, Role};
use wearlink::{Config, Services};

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

/// A project with Strava credentials and `n` connections whose tokens expire in ten minutes.
async fn seed(services: &Services, n: usize) -> anyhow::Result<()> {
    let (project_id, _) = projects::create_project(services, "bench").await?;
    let admin = Principal { project_id: project_id.clone(), role: Role::Admin, token_fingerprint: "bench".into() };
    let creds = NewCredentials { client_id: "1".into(), client_secret: "s".into(), webhook_secret: None };
    projects::put_credentials(services, &admin, "strava", &creds).await?;
    let provider = services.providers.get("strava").unwrap().clone();
    let expires = wearlink::time::now_ms() + 600_000;
    let seeded = futures::stream::iter(0..n)
        .map(|i| {
            let (project_id, provider) = (project_id.clone(), provider.clone());
            async move {
                let endpoint_id = uuid::Uuid::new_v4().to_string();
                let material = TokenMaterial {
                    access_token: format!("access-{i}").into(),
                    refresh_token: Some(format!("refresh-{i}").into()),
                    token_type: "Bearer".into(),
                };
                let now = wearlink::time::now_ms();
                let record = ConnectionRecord {
                    tokens: Some(material.seal(&services.keyring, &endpoint_owner(&project_id, &endpoint_id))),
                    endpoint_id,
                    project_id,
                    patient_id: format!("patient-{i}"),
                    provider: "strava".into(),
                    remote_user_id: i.to_string(),
                    scopes: vec!["read".into()],
                    status: "active".into(),
                    has_refresh_token: true,
                    expires_at: Some(expires),
                    connected_at: now,
                    updated_at: now,
                    last_refreshed_at: None,
                    last_error: None,
                    refresh_failures: 0,
                    next_attempt_at: None,
                };
                services.store.save_connection(&record, endpoint_body(provider.as_ref(), &record)).await.map(|_| ())
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    for r in seeded {
        r?;
    }
    Ok(())
}

use futures::StreamExt;

/// A fresh database URL for one run, and what drops it afterwards.
async fn database(backend: &str) -> anyhow::Result<(String, std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>)> {
    if backend == "postgres" {
        let admin_url = std::env::var("WEARLINK_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let name = format!("wl_bench_{}", uuid::Uuid::new_v4().simple());
        let admin = sqlx::PgPool::connect(&admin_url).await?;
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await?;
        let mut url = url::Url::parse(&admin_url)?;
        url.set_path(&name);
        let cleanup = Box::pin(async move {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin).await;
        });
        Ok((url.to_string(), cleanup))
    } else {
        let dir = tempfile::tempdir()?.keep();
        let url = format!("sqlite://{}/bench.db", dir.display());
        Ok((
            url,
            Box::pin(async move {
                let _ = std::fs::remove_dir_all(dir);
            }),
        ))
    }
}
