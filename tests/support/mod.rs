//! The test app: the real router on a random port, a temporary SQLite file, provider stand-ins.
#![allow(dead_code, unused_imports)]

pub mod fhir_partner;
pub mod receiver;
pub mod stand_in;
pub mod stand_in_data;

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use wearlink::store::Role;
use wearlink::{projects, Config, Services};

pub use fhir_partner::FhirPartner;
pub use receiver::{Behaviour, Receiver};
pub use stand_in::{StandIn, TokenMode};
pub use stand_in_data::{
    polar_daily_activity_json, polar_exercise_json, polar_sleep_json, strava_activity_json, ApiCall, ApiLog,
};

/// Which store a test runs on; every story runs on both (see `on_both_backends!`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each named `async fn(Backend)` as two tests, `<name>::sqlite` and `<name>::postgres`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::support::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if $crate::support::postgres_available() {
                    super::$name($crate::support::Backend::Postgres).await
                }
            }
        }
    )*};
}

/// The address of the PostgreSQL server tests use (for a `FlakyProxy` in front of it).
pub fn postgres_addr() -> std::net::SocketAddr {
    let url = url::Url::parse(&postgres_admin_url()).unwrap();
    format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432)).parse().unwrap()
}

/// The PostgreSQL server tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("WEARLINK_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Set to `1` (as `.ci/run` does) to make a missing PostgreSQL server fail the PostgreSQL stories
/// instead of skipping them.
pub const REQUIRE_POSTGRES_ENV: &str = "WEARLINK_TEST_REQUIRE_POSTGRES";

/// Whether the PostgreSQL stories can run: the server at `WEARLINK_TEST_POSTGRES_URL` accepts a
/// TCP connection within a second (tried once per test binary). When it does not, the caller
/// skips its story, and a notice goes to stderr: the banner once per test binary, then one line
/// per skipped story. Written to the process's stderr itself rather than with `eprintln!`, which
/// the test harness captures and shows only for failing tests. Panics instead under
/// `WEARLINK_TEST_REQUIRE_POSTGRES=1`.
pub fn postgres_available() -> bool {
    use std::io::Write;
    static PROBE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    static BANNER: std::sync::Once = std::sync::Once::new();
    let Err(why) = PROBE.get_or_init(probe_postgres) else { return true };
    let url = postgres_admin_url();
    if std::env::var(REQUIRE_POSTGRES_ENV).is_ok_and(|v| v == "1") {
        panic!("{REQUIRE_POSTGRES_ENV}=1 but PostgreSQL at {url} is not reachable: {why}");
    }
    let mut stderr = std::io::stderr().lock();
    BANNER.call_once(|| {
        let _ = writeln!(
            stderr,
            "\n**********************************************************************\n\
             ** POSTGRESQL STORIES SKIPPED: no server at {url} ({why}).\n\
             ** The SQLite stories still run; each skipped story is named below.\n\
             ** Start PostgreSQL or point WEARLINK_TEST_POSTGRES_URL at one;\n\
             ** set {REQUIRE_POSTGRES_ENV}=1 to make this a failure (CI does).\n\
             **********************************************************************"
        );
    });
    // The harness names each test's thread after the test.
    let story = std::thread::current().name().unwrap_or("a story").to_string();
    let _ = writeln!(stderr, "skipped (no PostgreSQL): {story}");
    false
}

fn probe_postgres() -> Result<(), String> {
    use std::net::ToSocketAddrs;
    let url = url::Url::parse(&postgres_admin_url()).map_err(|e| format!("bad URL: {e}"))?;
    let host = url.host_str().unwrap_or("localhost").trim_start_matches('[').trim_end_matches(']').to_string();
    let addresses = (host.as_str(), url.port().unwrap_or(5432)).to_socket_addrs().map_err(|e| e.to_string())?;
    let mut last = String::from("no address");
    for address in addresses {
        match std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("{address}: {e}"),
        }
    }
    Err(last)
}

/// A fresh database for one test: a SQLite file in a temp folder, or a new PostgreSQL database
/// dropped when the test ends.
pub struct TestDatabase {
    pub backend: Backend,
    pub url: String,
    pub dir: tempfile::TempDir,
    pg_name: Option<String>,
}

impl TestDatabase {
    pub async fn create(backend: Backend) -> Self {
        let dir = tempfile::tempdir().unwrap();
        match backend {
            Backend::Sqlite => {
                let url = format!("sqlite://{}/wearlink.db", dir.path().display());
                TestDatabase { backend, url, dir, pg_name: None }
            }
            Backend::Postgres => {
                let name = format!("wl_test_{}", uuid::Uuid::new_v4().simple());
                let admin = sqlx::PgPool::connect(&postgres_admin_url())
                    .await
                    .expect("PostgreSQL at WEARLINK_TEST_POSTGRES_URL (default 127.0.0.1:5432) is needed");
                sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.unwrap();
                admin.close().await;
                let mut url = url::Url::parse(&postgres_admin_url()).unwrap();
                url.set_path(&name);
                TestDatabase { backend, url: url.to_string(), dir, pg_name: Some(name) }
            }
        }
    }

    /// Everything stored, as bytes, to look for what must never be stored in clear.
    pub async fn stored_bytes(&self) -> Vec<u8> {
        match self.backend {
            Backend::Sqlite => {
                let mut all = Vec::new();
                for entry in std::fs::read_dir(self.dir.path()).unwrap() {
                    let path = entry.unwrap().path();
                    if path.file_name().unwrap().to_string_lossy().starts_with("wearlink.db") {
                        all.extend(std::fs::read(path).unwrap());
                    }
                }
                all
            }
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&self.url).await.unwrap();
                let tables: Vec<(String,)> = sqlx::query_as(
                    "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
                )
                .fetch_all(&pool)
                .await
                .unwrap();
                let mut all = Vec::new();
                for (table,) in tables {
                    let rows: Vec<(String,)> = sqlx::query_as(&format!("SELECT CAST(t AS TEXT) FROM {table} t"))
                        .fetch_all(&pool)
                        .await
                        .unwrap();
                    for (row,) in rows {
                        all.extend(row.into_bytes());
                    }
                }
                pool.close().await;
                all
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            // Drop runs inside the test's runtime: do the async work on a thread of its own.
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async {
                    if let Ok(admin) = sqlx::PgPool::connect(&postgres_admin_url()).await {
                        let _ =
                            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin).await;
                        admin.close().await;
                    }
                });
            })
            .join()
            .ok();
        }
    }
}

pub struct TestApp {
    pub base: String,
    pub services: Arc<Services>,
    pub stand_in: StandIn,
    pub http: reqwest::Client,
    /// The project's admin token.
    pub admin: String,
    pub project_id: String,
    pub db: Arc<TestDatabase>,
}

pub struct Options {
    pub state_ttl: Duration,
    pub provider_timeout: Duration,
    /// Reach PostgreSQL through this address (a `FlakyProxy`) instead of directly.
    pub database_via: Option<std::net::SocketAddr>,
    /// How long a request waits for a database connection before its 503.
    pub acquire_timeout: Duration,
    /// How long tokens, settings and secrets may be served from memory.
    pub cache_ttl: Duration,
    /// How long a request may take before its 503 `timeout`.
    pub request_timeout: Duration,
    /// Any other change to the configuration (sync policy, rate windows, …).
    pub tweak: fn(&mut Config),
    /// More configuration variables (another provider stand-in's `WEARLINK_PROVIDER_<SLUG>_…`).
    pub env: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            state_ttl: Duration::from_secs(600),
            provider_timeout: Duration::from_secs(2),
            database_via: None,
            acquire_timeout: Duration::from_secs(2),
            cache_ttl: wearlink::cache::DEFAULT_TTL,
            request_timeout: Duration::from_secs(30),
            tweak: |_| {},
            env: Vec::new(),
        }
    }
}

/// A TCP proxy to a database that can be cut (every connection dropped, new ones refused) and
/// restored: the database "going away" without disturbing other tests.
pub struct FlakyProxy {
    pub addr: std::net::SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl FlakyProxy {
    pub async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = FlakyProxy {
            addr: listener.local_addr().unwrap(),
            up: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            connections: Arc::default(),
        };
        let (up, connections) = (Arc::clone(&proxy.up), Arc::clone(&proxy.connections));
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection closed
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                connections.lock().unwrap().push(task);
            }
        });
        proxy
    }

    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for task in self.connections.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, Options::default()).await
    }

    pub async fn spawn_with(backend: Backend, options: Options) -> Self {
        // Logs of the code under test, shown for failing tests (RUST_LOG to choose).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "wearlink=info".into()),
            )
            .with_test_writer()
            .with_ansi(false)
            .try_init();
        let stand_in = StandIn::start().await;
        let db = Arc::new(TestDatabase::create(backend).await);
        let mut env: Vec<(String, String)> = options.env.clone();
        env.extend(stand_in.provider_env());
        let mut database_url = url::Url::parse(&db.url).unwrap();
        if let Some(via) = options.database_via {
            database_url.set_ip_host(via.ip()).unwrap();
            database_url.set_port(Some(via.port())).unwrap();
        }
        let mut config = Config::from_vars(|name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).or_else(|| match name {
                "WEARLINK_DATABASE_URL" => Some(database_url.to_string()),
                "WEARLINK_DATA_DIR" => Some(db.dir.path().display().to_string()),
                _ => None,
            })
        })
        .unwrap();
        config.master_key = Some(wearlink::crypto::Keyring::generate_encoded());
        config.state_ttl = options.state_ttl;
        config.provider_timeout = options.provider_timeout;
        config.cache_ttl = options.cache_ttl;
        config.request_timeout = options.request_timeout;
        config.pool.acquire_timeout = options.acquire_timeout;
        (options.tweak)(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        config.base_url = wearlink::config::base_url_for(listener.local_addr().unwrap());
        let (base, services) = serve(config, listener).await;
        let (project_id, admin) = projects::create_project(&services, "clinic").await.unwrap();
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        TestApp { base, services, stand_in, http, admin, project_id, db }
    }

    /// Another instance of the service on the same database and public base URL, as behind a
    /// load balancer. Answers its own address.
    pub async fn second_instance(&self) -> (String, Arc<Services>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        serve(self.services.config.clone(), listener).await
    }

    /// Another instance as `second_instance`, with a change to its configuration.
    pub async fn second_instance_with(&self, tweak: impl FnOnce(&mut Config)) -> (String, Arc<Services>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = self.services.config.clone();
        tweak(&mut config);
        serve(config, listener).await
    }

    /// Runs the sync worker's due jobs now (the test app starts no background worker).
    pub async fn sync(&self) -> usize {
        wearlink::sync::run_due(&self.services, wearlink::time::now_ms()).await.unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn member_token(&self) -> String {
        projects::create_token(&self.services, &self.project_id, Role::Member).await.unwrap()
    }

    /// A second project in the same service, with its own admin token.
    pub async fn other_project(&self) -> (String, String) {
        projects::create_project(&self.services, "other clinic").await.unwrap()
    }

    pub async fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method.parse().unwrap(), self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send("GET", path, Some(&self.admin.clone()), None).await
    }

    /// Enables the provider and stores the stand-in's client credentials for it.
    pub async fn configure(&self, provider: &str) {
        let (id, secret) = match provider {
            "strava" => (stand_in::STRAVA_CLIENT_ID, stand_in::STRAVA_CLIENT_SECRET),
            _ => (stand_in::POLAR_CLIENT_ID, stand_in::POLAR_CLIENT_SECRET),
        };
        self.configure_with(provider, id, secret).await
    }

    /// Enables the provider and stores these client credentials for it.
    pub async fn configure_with(&self, provider: &str, id: &str, secret: &str) {
        let key = format!("WEARABLE_{}_ENABLED", provider.to_uppercase());
        let admin = self.admin.clone();
        let (s, _) = self
            .send("PUT", &format!("/v1/project/settings/{key}"), Some(&admin), Some(json!({"enabled": true})))
            .await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = self
            .send(
                "PUT",
                &format!("/v1/wearables/{provider}/credentials"),
                Some(&admin),
                Some(json!({"clientId": id, "clientSecret": secret})),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
    }

    pub async fn create_patient(&self) -> String {
        let admin = self.admin.clone();
        let (s, body) = self
            .send(
                "POST",
                "/fhir/R4/Patient",
                Some(&admin),
                Some(json!({"resourceType": "Patient", "name": [{"family": "Runner", "given": ["Ada"]}]})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    /// POST connect; answers the status and body.
    pub async fn connect(&self, provider: &str, body: Value) -> (StatusCode, Value) {
        let admin = self.admin.clone();
        self.send("POST", &format!("/v1/wearables/{provider}/connect"), Some(&admin), Some(body)).await
    }

    /// The user at the provider's authorize page: answers the callback URL the provider sends them to.
    pub async fn approve(&self, authorization_url: &str) -> String {
        let response = self.http.get(authorization_url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::FOUND, "authorize page refused: {}", response.text().await.unwrap());
        response.headers()["location"].to_str().unwrap().to_string()
    }

    /// Follows the provider's redirect to our callback; answers status, Location and body.
    pub async fn callback(&self, callback_url: &str) -> (StatusCode, Option<url::Url>, Value) {
        let response = self.http.get(callback_url).send().await.unwrap();
        let status = response.status();
        let location = response.headers().get("location").map(|l| url::Url::parse(l.to_str().unwrap()).unwrap());
        let text = response.text().await.unwrap();
        (status, location, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Connect, approve, callback: the whole story for one patient.
    pub async fn connect_and_approve(&self, provider: &str, body: Value) -> (StatusCode, Option<url::Url>, Value) {
        let (status, started) = self.connect(provider, body).await;
        assert_eq!(status, StatusCode::OK, "{started}");
        let callback = self.approve(started["authorizationUrl"].as_str().unwrap()).await;
        self.callback(&callback).await
    }

    pub async fn endpoints_of(&self, patient_id: &str) -> Value {
        let (status, bundle) = self.get(&format!("/fhir/R4/Endpoint?patient=Patient/{patient_id}")).await;
        assert_eq!(status, StatusCode::OK, "{bundle}");
        bundle
    }

    /// Asserts that none of `values` is stored in clear (as text or hex) anywhere in the database.
    pub async fn assert_not_stored(&self, values: &[String]) {
        let stored = self.db.stored_bytes().await;
        assert!(!stored.is_empty());
        for value in values {
            assert!(!contains(&stored, value), "stored in clear: {value}");
            assert!(!contains(&stored, &hex::encode(value)), "stored in clear (hex): {value}");
        }
    }
}

/// Starts the router for `config` on `listener`; answers its base URL and services.
async fn serve(config: Config, listener: tokio::net::TcpListener) -> (String, Arc<Services>) {
    let addr = listener.local_addr().unwrap();
    let services = Services::start(config).await.unwrap();
    let router = wearlink::http::router(Arc::clone(&services));
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("http://{addr}"), services)
}

/// The query of a URL as a map.
pub fn query_map(url: &url::Url) -> std::collections::HashMap<String, String> {
    url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Asserts the stable problem+json shape and answers its `code`.
pub fn problem_code(body: &Value, status: StatusCode) -> String {
    assert_eq!(body["status"], status.as_u16(), "{body}");
    for field in ["type", "title", "detail", "code"] {
        assert!(body[field].is_string(), "problem without {field}: {body}");
    }
    body["code"].as_str().unwrap().to_string()
}

/// Asserts the OperationOutcome every error under /fhir/R4 is, and answers our stable code
/// (in `issue[0].details.coding`).
pub fn outcome_code(body: &Value, expected_issue_type: &str) -> String {
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    let issue = &body["issue"][0];
    assert_eq!(issue["severity"], "error", "{body}");
    assert_eq!(issue["code"], expected_issue_type, "{body}");
    assert!(issue["details"]["text"].is_string(), "{body}");
    let coding = &issue["details"]["coding"][0];
    assert_eq!(coding["system"], "https://wearlink.dev/problems", "{body}");
    coding["code"].as_str().unwrap().to_string()
}
