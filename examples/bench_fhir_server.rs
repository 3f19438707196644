//! Helper for `bench/fhir_server.sh` (not part of the service or the test suite): how fast the
//! FHIR outbox writes into a FHIR server over HTTP, one request per resource against transaction
//! Bundles.
//!
//! For each bundle size it makes a fresh project (SQLite in a temporary folder) that points at
//! `--base` with a bearer token, creates the Patient on both sides, switches the project to the
//! server, stores `--resources` Observations (they enter the outbox with the write), then times
//! the drain (`sync::run_due_of`, the drain job only) until the outbox is empty. Prints one JSON
//! line per size: resources, seconds, resources/s, the server's requests and transactions.
//!
//! `cargo run --release --example bench_fhir_server -- --base http://127.0.0.1:18300/fhir/R4 --token T`

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use serde_json::{json, Value};
use wearlink::projects::{self, Principal, SettingChange};
use wearlink::store::sync::{ResourceWrite, SearchIndex};
use wearlink::store::Role;
use wearlink::{Config, Services};

#[derive(Parser)]
struct Cli {
    /// The FHIR server's base (the partner: `http://127.0.0.1:<port>/fhir/R4`).
    #[arg(long)]
    base: String,
    /// Its bearer token.
    #[arg(long)]
    token: String,
    /// Resources written per size.
    #[arg(long, default_value_t = 400)]
    resources: usize,
    /// Bundle sizes, comma-separated (1 = one conditional PUT per resource).
    #[arg(long, default_value = "1,8,50")]
    sizes: String,
    /// Round-trip time added by a TCP relay in front of the server (each chunk each way waits
    /// half), milliseconds: a server across a network rather than on loopback. 0: none.
    #[arg(long, default_value_t = 0)]
    rtt_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let dir = tempfile::tempdir()?;
    let mut config = Config::new(
        "127.0.0.1:0".parse()?,
        format!("sqlite://{}/bench.db", dir.path().display()),
        dir.path().to_path_buf(),
    );
    config.outbound.allow_loopback = true;
    config.master_key = Some(wearlink::crypto::Keyring::generate_encoded());
    let services = Services::start(config).await?;
    let origin = cli.base.trim_end_matches("/fhir/R4").to_string();
    let http = reqwest::Client::new();
    // Wearlink reaches the server through the relay; the bench's own calls go direct.
    let base = match cli.rtt_ms {
        0 => cli.base.clone(),
        rtt => {
            let target: std::net::SocketAddr = url::Url::parse(&cli.base)?.socket_addrs(|| None)?[0];
            let relay = relay(target, std::time::Duration::from_millis(rtt / 2)).await?;
            cli.base.replacen(&target.to_string(), &relay.to_string(), 1)
        }
    };
    for size in cli.sizes.split(',').map(|s| s.trim().parse::<usize>()) {
        let size = size?;
        let (project_id, _) = projects::create_project(&services, &format!("bench {size}")).await?;
        let admin = Principal { project_id: project_id.clone(), role: Role::Admin, token_fingerprint: "bench".into() };
        let value = |v: Value| SettingChange { enabled: None, value: Some(v) };
        projects::put_setting(&services, &admin, "FHIR_SERVER_URL", value(json!(base))).await?;
        projects::put_setting(&services, &admin, "FHIR_SERVER_AUTH", value(json!("bearer"))).await?;
        projects::put_secret(&services, &admin, "FHIR_SERVER_TOKEN", &cli.token).await?;
        projects::put_setting(&services, &admin, "FHIR_SERVER_BUNDLE_SIZE", value(json!(size))).await?;
        let patient = wearlink::fhir::create_patient(&services, &admin, json!({"resourceType": "Patient"})).await?;
        let answer = http
            .put(format!("{}/Patient/{}", cli.base, patient.id))
            .bearer_auth(&cli.token)
            .header("content-type", "application/fhir+json")
            .body(json!({"resourceType": "Patient", "id": patient.id}).to_string())
            .send()
            .await?;
        anyhow::ensure!(answer.status().is_success(), "the Patient on the server: {}", answer.status());
        wearlink::fhir_server::outbox::switch(&services, &admin, "server").await?;
        let writes: Vec<ResourceWrite> = (0..cli.resources).map(|i| observation(&project_id, &patient.id, i)).collect();
        for chunk in writes.chunks(200) {
            services.store.write_resources(&project_id, chunk, wearlink::time::now_ms(), None).await?;
        }
        warm_up(&http, &cli.base, &cli.token, &patient.id).await?;
        let before: Value = http.get(format!("{origin}/_partner/stats")).send().await?.json().await?;
        let started = Instant::now();
        loop {
            let ran = wearlink::sync::run_due_of(&services, wearlink::time::now_ms(), &["fhir_outbox"]).await?;
            let pending = outbox_rows(&services).await?;
            if pending == 0 {
                break;
            }
            anyhow::ensure!(ran > 0 || started.elapsed().as_secs() < 120, "the drain stalled with {pending} rows");
            if ran == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let after: Value = http.get(format!("{origin}/_partner/stats")).send().await?.json().await?;
        let delta = |k: &str| after[k].as_u64().unwrap_or(0) - before[k].as_u64().unwrap_or(0);
        let line = json!({
            "bundleSize": size,
            "rttMs": cli.rtt_ms,
            "resources": cli.resources,
            "seconds": (seconds * 1000.0).round() / 1000.0,
            "resourcesPerSecond": (cli.resources as f64 / seconds * 10.0).round() / 10.0,
            "requests": delta("requests"),
            "writeRequests": delta("writes"),
            "transactions": delta("transactions"),
        });
        println!("{line}");
    }
    drop(Arc::clone(&services));
    Ok(())
}

/// A fresh partner's first writes compile its validator and search paths (a second or more on
/// this machine): 40 conditional updates and two transactions, outside the measurement, with
/// identifiers of their own.
async fn warm_up(http: &reqwest::Client, base: &str, token: &str, patient_id: &str) -> anyhow::Result<()> {
    let warm = |i: usize| {
        let mut body = observation("warm-up", patient_id, i).body;
        body["identifier"][0]["system"] = json!("urn:warm-up");
        body
    };
    for i in 0..40 {
        let url = format!("{base}/Observation?identifier=urn:warm-up|{i}");
        let answer = http.put(url).bearer_auth(token).header("content-type", "application/fhir+json");
        answer.body(warm(i).to_string()).send().await?.error_for_status()?;
    }
    for b in 0..2 {
        let entries: Vec<Value> = (100 + b * 8..108 + b * 8)
            .map(|i| {
                json!({
                    "fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
                    "resource": warm(i),
                    "request": { "method": "PUT", "url": format!("Observation?identifier=urn:warm-up|{i}") }
                })
            })
            .collect();
        let bundle = json!({ "resourceType": "Bundle", "type": "transaction", "entry": entries });
        let answer = http.post(base).bearer_auth(token).header("content-type", "application/fhir+json");
        answer.body(bundle.to_string()).send().await?.error_for_status()?;
    }
    Ok(())
}

/// A TCP relay to `target` that holds each chunk `delay` in each direction.
async fn relay(target: std::net::SocketAddr, delay: std::time::Duration) -> anyhow::Result<std::net::SocketAddr> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(target).await else { return };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let up = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = client_read.read(&mut buf).await {
                        tokio::time::sleep(delay).await;
                        if server_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                let down = async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = server_read.read(&mut buf).await {
                        tokio::time::sleep(delay).await;
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                };
                tokio::join!(up, down);
            });
        }
    });
    Ok(addr)
}

/// Pending and dead rows of the outbox (all projects: one project at a time here).
async fn outbox_rows(services: &Services) -> anyhow::Result<i64> {
    Ok(services.store.outbox_depth().await?.iter().map(|(_, n, _)| n).sum())
}

/// A heart-rate Observation, valid R4, unique per project and index.
fn observation(project_id: &str, patient_id: &str, i: usize) -> ResourceWrite {
    let at = 1_767_225_600_000 + i as i64 * 60_000;
    ResourceWrite {
        resource_type: "Observation".into(),
        id: wearlink::fhir::draft::derived_id(project_id, "Observation", "urn:bench", &i.to_string()),
        patient_id: Some(patient_id.into()),
        body: json!({
            "resourceType": "Observation",
            "identifier": [{ "system": "urn:bench", "value": i.to_string() }],
            "status": "final",
            "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs" }] }],
            "code": { "coding": [{ "system": "http://loinc.org", "code": "8867-4", "display": "Heart rate" }] },
            "subject": { "reference": format!("Patient/{patient_id}") },
            "effectiveDateTime": wearlink::time::to_rfc3339(at),
            "valueQuantity": { "value": 60 + (i % 40), "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min" }
        }),
        index: SearchIndex::default(),
    }
}
