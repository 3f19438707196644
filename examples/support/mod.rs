//! What the benchmarks share: a fresh database, and a project seeded with Strava connections.
#![allow(dead_code)]

use futures::StreamExt;
use wearlink::connections::{endpoint_body, endpoint_owner, TokenMaterial};
use wearlink::projects::{self, NewCredentials, Principal};
use wearlink::store::{ConnectionRecord, Role};
use wearlink::Services;

/// A project with Strava credentials and `n` connections whose tokens expire in ten minutes.
pub async fn seed(services: &Services, n: usize) -> anyhow::Result<String> {
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
    Ok(project_id)
}

/// A fresh database URL for one run, and what drops it afterwards.
pub async fn database(
    backend: &str,
) -> anyhow::Result<(String, std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>)> {
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
