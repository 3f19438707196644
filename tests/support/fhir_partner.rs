//! A FHIR R4 validator for tests: the in-memory FHIR server in `tests/fhir-partner` (Medplum's
//! router and StructureDefinition validator on Node 22), started on a free port of 127.0.0.1 and
//! stopped when dropped. Resources are written to it; a 400 answer's OperationOutcome is the
//! validation error.
//!
//! Its `node_modules` are not in git: `(cd tests/fhir-partner && npm ci)` installs them. Without
//! them `FhirPartner::start` answers `None` (and says so on stderr, once), unless
//! `WEARLINK_TEST_REQUIRE_FHIR_VALIDATOR=1`, which makes it panic instead.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const REQUIRE_ENV: &str = "WEARLINK_TEST_REQUIRE_FHIR_VALIDATOR";

/// How long the server may take to answer `/metadata` (it loads the R4 definitions first).
const START_TIMEOUT: Duration = Duration::from_secs(60);

static SKIP_NOTICE: Once = Once::new();

pub struct FhirPartner {
    /// `http://127.0.0.1:<port>/fhir/R4`
    pub base: String,
    child: Child,
    http: reqwest::Client,
    _log: tempfile::NamedTempFile,
}

impl FhirPartner {
    /// The folder with `server.mjs` and `package.json`.
    pub fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fhir-partner")
    }

    /// Starts the server and waits until it answers; `None` when its `node_modules` are not
    /// installed (unless `WEARLINK_TEST_REQUIRE_FHIR_VALIDATOR=1`: then it panics). Panics when an
    /// installed server does not start.
    pub async fn start() -> Option<FhirPartner> {
        Self::start_with(&[]).await
    }

    /// `start` with more of the server's variables (`FHIR_AUTH`, `FHIR_MEDPLUM_CAPS`, … see its README).
    pub async fn start_with(env: &[(&str, &str)]) -> Option<FhirPartner> {
        let dir = Self::dir();
        let node = dir.join("node_modules").join(".bin").join("node");
        if !node.exists() {
            let how = format!("(cd {} && npm ci)", dir.display());
            if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") {
                panic!("{REQUIRE_ENV}=1 but the FHIR validator is not installed: run {how}");
            }
            SKIP_NOTICE.call_once(|| {
                eprintln!(
                    "\n**********************************************************************\n\
                     ** FHIR VALIDATION SKIPPED: {} is missing.\n\
                     ** Enable it with:  (cd tests/fhir-partner && npm ci)\n\
                     ** Set {REQUIRE_ENV}=1 to make this a failure.\n\
                     **********************************************************************\n",
                    node.display()
                );
            });
            return None;
        }
        let mut last_error = String::new();
        // A free port is found by binding and releasing it; another process may take it in
        // between, so try a few times.
        for _ in 0..3 {
            match Self::spawn(&dir, &node, env).await {
                Ok(partner) => return Some(partner),
                Err(error) => last_error = error,
            }
        }
        panic!("the FHIR validator in {} did not start: {last_error}", dir.display());
    }

    async fn spawn(dir: &std::path::Path, node: &std::path::Path, env: &[(&str, &str)]) -> Result<FhirPartner, String> {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
        let log = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
        let out = log.reopen().map_err(|e| e.to_string())?;
        let err = log.reopen().map_err(|e| e.to_string())?;
        let child = Command::new(node)
            .arg("server.mjs")
            .current_dir(dir)
            .env("PORT", port.to_string())
            .env("HOST", "127.0.0.1")
            .env("FHIR_BASE", "/fhir/R4")
            .env("FHIR_REF_CHECK", "0")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", node.display()))?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        let mut partner = FhirPartner { base: format!("http://127.0.0.1:{port}/fhir/R4"), child, http, _log: log };
        let started = Instant::now();
        loop {
            let answer = partner.http.get(format!("{}/metadata", partner.base)).send().await;
            if answer.is_ok_and(|r| r.status().is_success()) {
                return Ok(partner);
            }
            if let Ok(Some(status)) = partner.child.try_wait() {
                return Err(format!("the server exited with {status}: {}", partner.log()));
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(format!("no answer on {} within {START_TIMEOUT:?}: {}", partner.base, partner.log()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `http://127.0.0.1:<port>`: where the test hooks and the token URL are.
    pub fn origin(&self) -> String {
        self.base.trim_end_matches("/fhir/R4").to_string()
    }

    /// `GET /_partner/stats`: requests, 401s, token requests, tokens issued, token errors, writes.
    pub async fn stats(&self) -> Value {
        self.http.get(format!("{}/_partner/stats", self.origin())).send().await.unwrap().json().await.unwrap()
    }

    /// `POST /_partner/revoke-tokens`: the server forgets every token it issued.
    pub async fn revoke_tokens(&self) {
        let answer = self.http.post(format!("{}/_partner/revoke-tokens", self.origin())).send().await.unwrap();
        assert!(answer.status().is_success());
    }

    /// What the server printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._log.path()).unwrap_or_default()
    }

    /// Writes the resource, which validates it: PUT `/{type}/{id}` when it has an id, POST
    /// `/{type}` otherwise (`meta.versionId`/`lastUpdated` are the server's and left out). `Err`
    /// is the OperationOutcome's issues as text (or the body) on a non-2xx answer.
    pub async fn validate(&self, resource: &Value) -> Result<(), String> {
        let kind = resource["resourceType"].as_str().ok_or("no resourceType")?;
        let mut body = resource.clone();
        if let Some(meta) = body.get_mut("meta").and_then(|m| m.as_object_mut()) {
            meta.remove("versionId");
            meta.remove("lastUpdated");
            if meta.is_empty() {
                body.as_object_mut().unwrap().remove("meta");
            }
        }
        let request = match body["id"].as_str() {
            Some(id) => self.http.put(format!("{}/{kind}/{id}", self.base)),
            None => self.http.post(format!("{}/{kind}", self.base)),
        };
        let answer = request
            .header("content-type", "application/fhir+json")
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("the FHIR validator did not answer: {e}"))?;
        let status = answer.status();
        if status.is_success() {
            return Ok(());
        }
        let text = answer.text().await.unwrap_or_default();
        Err(format!("{status}: {}", outcome_text(&text)))
    }

    /// Validates each resource; all the failures, one a line, prefixed by their index.
    pub async fn validate_all(&self, resources: &[Value]) -> Result<(), String> {
        let mut failures = Vec::new();
        for (i, resource) in resources.iter().enumerate() {
            if let Err(e) = self.validate(resource).await {
                failures.push(format!("[{i}] {}: {e}", resource["resourceType"].as_str().unwrap_or("?")));
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("\n"))
        }
    }
}

/// An OperationOutcome's issues as `severity code at expression: text` lines; the body as it is
/// when it is not one.
fn outcome_text(body: &str) -> String {
    let Ok(outcome) = serde_json::from_str::<Value>(body) else { return body.to_string() };
    let Some(issues) = outcome["issue"].as_array() else { return body.to_string() };
    issues
        .iter()
        .map(|issue| {
            let text = issue["details"]["text"].as_str().or(issue["diagnostics"].as_str()).unwrap_or("");
            let at = issue["expression"]
                .as_array()
                .map(|e| e.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            format!(
                "{} {} at {at}: {text}",
                issue["severity"].as_str().unwrap_or("?"),
                issue["code"].as_str().unwrap_or("?")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl Drop for FhirPartner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
