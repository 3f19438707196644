//! What the benchmarks share: a fresh database, a project seeded with Strava enabled, credentials,
//! patients (and connections), and read-only counts on the server's database.
#![allow(dead_code)]

use std::str::FromStr;

use futures::StreamExt;
use wearlink::connections::{endpoint_body, endpoint_owner, TokenMaterial};
use wearlink::projects::{self, NewCredentials, Principal, SettingChange};
use wearlink::store::{ConnectionRecord, Role};
use wearlink::Services;

/// A project as the benchmark scripts seed it.
pub struct SeededProject {
    pub project_id: String,
    /// Printed once, like `wearlink project create` does.
    pub admin_token: String,
    /// The admin, for calling the service's functions in process.
    pub admin: Principal,
    pub patient_ids: Vec<String>,
}

/// A project named `name` with Strava enabled, its credentials, an admin token and `patients`
/// FHIR Patients (created 8 at a time).
pub async fn seed_project(services: &Services, name: &str, patients: usize) -> anyhow::Result<SeededProject> {
    seed_project_with(services, name, patients, "strava").await
}

/// `seed_project` with `provider` enabled instead of Strava.
pub async fn seed_project_with(
    services: &Services,
    name: &str,
    patients: usize,
    provider: &str,
) -> anyhow::Result<SeededProject> {
    let (project_id, admin_token) = projects::create_project(services, name).await?;
    let admin = Principal { project_id: project_id.clone(), role: Role::Admin, token_fingerprint: "bench".into() };
    let toggle = projects::enabled_setting(provider);
    projects::put_setting(services, &admin, &toggle, SettingChange { enabled: Some(true), value: None }).await?;
    let creds = NewCredentials {
        client_id: "bench-client".into(),
        client_secret: "bench-client-secret".into(),
        webhook_secret: None,
    };
    projects::put_credentials(services, &admin, provider, &creds).await?;
    let created = futures::stream::iter(0..patients)
        .map(|_| wearlink::fhir::create_patient(services, &admin, serde_json::json!({"resourceType": "Patient"})))
        .buffered(8)
        .collect::<Vec<_>>()
        .await;
    let patient_ids = created.into_iter().map(|r| r.map(|p| p.id)).collect::<Result<Vec<_>, _>>()?;
    Ok(SeededProject { project_id, admin_token, admin, patient_ids })
}

/// Read-only access to the server's database, for the few counts the progress commands need.
pub enum Db {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Db {
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("postgres") {
            let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(url).await?;
            Ok(Db::Postgres(pool))
        } else {
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?.read_only(true);
            let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect_with(options).await?;
            Ok(Db::Sqlite(pool))
        }
    }

    /// `sql` (one scalar; `$1` is `project`) as an i64.
    pub async fn count(&self, sql: &str, project: &str) -> anyhow::Result<i64> {
        let sql = format!("SELECT CAST(({sql}) AS BIGINT)");
        Ok(match self {
            Db::Sqlite(pool) => sqlx::query_scalar::<_, i64>(&sql).bind(project).fetch_one(pool).await?,
            Db::Postgres(pool) => sqlx::query_scalar::<_, i64>(&sql).bind(project).fetch_one(pool).await?,
        })
    }

    /// `sql` (one scalar; `$1` is `project`, `$2` is `n`) as an i64.
    pub async fn count_with(&self, sql: &str, project: &str, n: i64) -> anyhow::Result<i64> {
        let sql = format!("SELECT CAST(({sql}) AS BIGINT)");
        Ok(match self {
            Db::Sqlite(pool) => sqlx::query_scalar::<_, i64>(&sql).bind(project).bind(n).fetch_one(pool).await?,
            Db::Postgres(pool) => sqlx::query_scalar::<_, i64>(&sql).bind(project).bind(n).fetch_one(pool).await?,
        })
    }
}

/// A project with Strava credentials and `n` connections whose tokens expire in ten minutes.
pub async fn seed(services: &Services, n: usize) -> anyhow::Result<String> {
    let (project_id, _) = projects::create_project(services, "bench").await?;
    let admin = Principal { project_id: project_id.clone(), role: Role::Admin, token_fingerprint: "bench".into() };
    let creds = NewCredentials { client_id: "1".into(), client_secret: "s".into(), webhook_secret: None };
    projects::put_credentials(services, &admin, "strava", &creds).await?;
    let expires = wearlink::time::now_ms() + 600_000;
    let seeded = futures::stream::iter(0..n)
        .map(|i| {
            let record = strava_connection(services, &project_id, &format!("patient-{i}"), i as u64, expires);
            async move { save(services, record).await }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    for r in seeded {
        r?;
    }
    Ok(project_id)
}

/// Connects each of `patients` to Strava, patient i as athlete i (tokens `access-<i>` and
/// `refresh-<i>`, expiring at `expires_at`), `chunk` connections per transaction. Saving a
/// connection queues its backfill job.
pub async fn connect_patients(
    services: &Services,
    project_id: &str,
    patients: &[String],
    expires_at: i64,
    chunk: usize,
) -> anyhow::Result<()> {
    connect_patients_to(services, project_id, patients, expires_at, chunk, "strava").await
}

/// `connect_patients` to `slug` (the connection otherwise alike: user i, tokens `access-<i>`).
pub async fn connect_patients_to(
    services: &Services,
    project_id: &str,
    patients: &[String],
    expires_at: i64,
    chunk: usize,
    slug: &str,
) -> anyhow::Result<()> {
    let provider = services.providers.get(slug).unwrap().clone();
    for (c, ids) in patients.chunks(chunk.max(1)).enumerate() {
        let items: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(j, patient)| {
                let mut record = strava_connection(services, project_id, patient, (c * chunk + j) as u64, expires_at);
                record.provider = slug.into();
                let endpoint = endpoint_body(provider.as_ref(), &record);
                (record, endpoint)
            })
            .collect();
        services.store.save_connections(&items).await?;
    }
    Ok(())
}

/// An active Strava connection of `patient_id` as `athlete`, its tokens sealed.
pub fn strava_connection(
    services: &Services,
    project_id: &str,
    patient_id: &str,
    athlete: u64,
    expires_at: i64,
) -> ConnectionRecord {
    let endpoint_id = uuid::Uuid::new_v4().to_string();
    let material = TokenMaterial {
        access_token: format!("access-{athlete}").into(),
        refresh_token: Some(format!("refresh-{athlete}").into()),
        token_type: "Bearer".into(),
    };
    let now = wearlink::time::now_ms();
    ConnectionRecord {
        tokens: Some(material.seal(&services.keyring, &endpoint_owner(project_id, &endpoint_id))),
        endpoint_id,
        project_id: project_id.into(),
        patient_id: patient_id.into(),
        provider: "strava".into(),
        remote_user_id: athlete.to_string(),
        scopes: vec!["read".into()],
        status: "active".into(),
        has_refresh_token: true,
        expires_at: Some(expires_at),
        connected_at: now,
        updated_at: now,
        last_refreshed_at: None,
        last_error: None,
        refresh_failures: 0,
        next_attempt_at: None,
        region: None,
    }
}

async fn save(services: &Services, record: ConnectionRecord) -> anyhow::Result<()> {
    let provider = services.providers.get("strava").unwrap().clone();
    let endpoint = endpoint_body(provider.as_ref(), &record);
    services.store.save_connection(&record, endpoint).await?;
    Ok(())
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
