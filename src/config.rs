//! Environment → `Config`: the one place that reads `WEARLINK_*` variables.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use crate::connections::RefreshPolicy;
use crate::providers::ProviderUrls;
use crate::store::PoolSettings;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is invalid: {reason}")]
    Invalid { name: String, reason: String },
}

/// Everything the service needs to start. Tests build one by hand with [`Config::new`].
#[derive(Clone, Debug)]
pub struct Config {
    pub bind: SocketAddr,
    /// Where `/metrics` is served instead of `bind` (so it need not face the internet); `None`:
    /// on `bind`, beside the API.
    pub metrics_bind: Option<SocketAddr>,
    /// Public base URL (the spec's `APP_BASE_URL`): callbacks are `<base>/v1/wearables/<slug>/callback`.
    pub base_url: Url,
    pub database_url: String,
    /// Database pool size and how long a request waits for a connection (then 503).
    pub pool: PoolSettings,
    /// Where the embedded database and a generated master key live.
    pub data_dir: PathBuf,
    /// Base64 of 32 bytes. `None` means: use (or create) `<data_dir>/master.key`.
    pub master_key: Option<String>,
    /// Older master keys, still accepted for decryption so the key can be rotated.
    pub previous_master_keys: Vec<String>,
    /// Per-provider URL overrides, by slug (`WEARLINK_PROVIDER_<SLUG>_{AUTHORIZE,TOKEN,API}_URL`).
    pub provider_urls: HashMap<String, ProviderUrls>,
    /// Timeout of every outbound call to a provider.
    pub provider_timeout: Duration,
    /// Longest a request may take before it is answered 503 `timeout`.
    pub request_timeout: Duration,
    /// How long a connect `state` stays valid.
    pub state_ttl: Duration,
    /// How long a hosted connect page session (its link) stays valid.
    pub connect_session_ttl: Duration,
    /// How long records of finished work (deliveries, outbound events, inbox events) are kept;
    /// `None`: for ever.
    pub retention: Option<Duration>,
    /// How long API tokens, settings and secrets may be served from memory (0: not cached).
    pub cache_ttl: Duration,
    pub log_json: bool,
    /// After SIGTERM (or Ctrl-C): how long requests in flight and running jobs get to finish
    /// before the rest are cut and their job leases released.
    pub shutdown_grace: Duration,
    /// Refresh window, leases, backoff and concurrency of the token refresher.
    pub refresh: RefreshPolicy,
    /// How often each instance looks for tokens to refresh and revocations to retry.
    pub refresh_interval: Duration,
    /// Leases, concurrency, reconciliation and rate-limit share of data sync.
    pub sync: crate::sync::SyncPolicy,
    /// Where outbound events may go, and their retry schedule.
    pub outbound: crate::events::OutboundPolicy,
    /// Retries of writes into projects' own FHIR servers (the FHIR outbox).
    pub fhir_outbox: crate::fhir_server::outbox::OutboxPolicy,
}

impl Config {
    /// Defaults for everything; `base_url` derived from `bind`.
    pub fn new(bind: SocketAddr, database_url: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            bind,
            metrics_bind: None,
            base_url: base_url_for(bind),
            database_url: database_url.into(),
            pool: PoolSettings::default(),
            data_dir: data_dir.into(),
            master_key: None,
            previous_master_keys: Vec::new(),
            provider_urls: HashMap::new(),
            provider_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            state_ttl: Duration::from_secs(600),
            connect_session_ttl: Duration::from_secs(1800),
            retention: Some(Duration::from_secs(30 * 86_400)),
            cache_ttl: crate::cache::DEFAULT_TTL,
            log_json: false,
            shutdown_grace: Duration::from_secs(5),
            refresh: RefreshPolicy::default(),
            refresh_interval: Duration::from_secs(60),
            sync: crate::sync::SyncPolicy::default(),
            outbound: crate::events::OutboundPolicy::default(),
            fhir_outbox: crate::fhir_server::outbox::OutboxPolicy::default(),
        }
    }

    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// Reads configuration through `var`, so tests can feed a map instead of the process environment.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let bind: SocketAddr = parse_var(&var, "WEARLINK_BIND", "127.0.0.1:8080")?;
        let data_dir = PathBuf::from(var("WEARLINK_DATA_DIR").unwrap_or_else(|| "wearlink-data".into()));
        let database_url =
            var("WEARLINK_DATABASE_URL").unwrap_or_else(|| format!("sqlite://{}/wearlink.db", data_dir.display()));
        let mut config = Config::new(bind, database_url, data_dir);
        if var("WEARLINK_METRICS_BIND").is_some() {
            config.metrics_bind = Some(parse_var(&var, "WEARLINK_METRICS_BIND", "")?);
        }
        if let Some(base) = var("WEARLINK_BASE_URL") {
            config.base_url = parse_url("WEARLINK_BASE_URL", &base)?;
        }
        // SQLite: the read-only connections beside its one writing connection.
        let pool_default = if config.database_url.starts_with("sqlite:") { "4" } else { "10" };
        config.pool.max_connections = parse_var(&var, "WEARLINK_DB_MAX_CONNECTIONS", pool_default)?;
        config.pool.acquire_timeout = Duration::from_millis(parse_var(&var, "WEARLINK_DB_ACQUIRE_TIMEOUT_MS", "2000")?);
        if let Some(raw) = var("WEARLINK_SQLITE_SYNCHRONOUS") {
            config.pool.sqlite_durability = raw
                .parse()
                .map_err(|reason| ConfigError::Invalid { name: "WEARLINK_SQLITE_SYNCHRONOUS".into(), reason })?;
        }
        config.master_key = var("WEARLINK_MASTER_KEY");
        config.previous_master_keys = var("WEARLINK_MASTER_KEY_PREVIOUS")
            .map(|v| v.split(',').map(|k| k.trim().to_string()).filter(|k| !k.is_empty()).collect())
            .unwrap_or_default();
        config.provider_timeout = Duration::from_millis(parse_var(&var, "WEARLINK_PROVIDER_TIMEOUT_MS", "10000")?);
        config.request_timeout = Duration::from_millis(parse_var(&var, "WEARLINK_REQUEST_TIMEOUT_MS", "30000")?);
        config.state_ttl = Duration::from_secs(parse_var(&var, "WEARLINK_STATE_TTL_SECS", "600")?);
        config.cache_ttl = Duration::from_millis(parse_var(&var, "WEARLINK_CACHE_TTL_MS", "2000")?);
        config.connect_session_ttl = Duration::from_secs(parse_var(&var, "WEARLINK_CONNECT_SESSION_TTL_SECS", "1800")?);
        if config.connect_session_ttl.is_zero() {
            return Err(ConfigError::Invalid {
                name: "WEARLINK_CONNECT_SESSION_TTL_SECS".into(),
                reason: "must be at least 1".into(),
            });
        }
        config.retention = match parse_var::<u64>(&var, "WEARLINK_RETENTION_DAYS", "30")? {
            0 => None,
            days => Some(Duration::from_secs(days * 86_400)),
        };
        config.refresh.window = Duration::from_secs(parse_var(&var, "WEARLINK_REFRESH_WINDOW_SECS", "1800")?);
        config.refresh.lease = Duration::from_secs(parse_var(&var, "WEARLINK_REFRESH_LEASE_SECS", "120")?);
        config.refresh.concurrency = parse_var(&var, "WEARLINK_REFRESH_CONCURRENCY", "16")?;
        config.refresh_interval = Duration::from_secs(parse_var(&var, "WEARLINK_REFRESH_INTERVAL_SECS", "60")?);
        config.sync.lease = Duration::from_secs(parse_var(&var, "WEARLINK_SYNC_LEASE_SECS", "120")?);
        config.sync.concurrency = parse_var(&var, "WEARLINK_SYNC_CONCURRENCY", "8")?;
        config.sync.busy_rate = parse_var(&var, "WEARLINK_SYNC_BUSY_RATE", "25")?;
        config.sync.busy_requests = parse_var(&var, "WEARLINK_SYNC_BUSY_REQUESTS", "8")?;
        config.sync.busy_share_percent = parse_var(&var, "WEARLINK_SYNC_BUSY_SHARE_PERCENT", "25")?;
        if !(1..=100).contains(&config.sync.busy_share_percent) {
            return Err(ConfigError::Invalid {
                name: "WEARLINK_SYNC_BUSY_SHARE_PERCENT".into(),
                reason: "must be 1-100".into(),
            });
        }
        config.sync.reconcile_every =
            Duration::from_secs(parse_var(&var, "WEARLINK_SYNC_RECONCILE_INTERVAL_SECS", "21600")?);
        config.sync.reconcile_window =
            Duration::from_secs(parse_var(&var, "WEARLINK_SYNC_RECONCILE_WINDOW_SECS", "172800")?);
        config.sync.background_share_percent = parse_var(&var, "WEARLINK_SYNC_BACKGROUND_SHARE_PERCENT", "90")?;
        if !(1..=100).contains(&config.sync.background_share_percent) {
            return Err(ConfigError::Invalid {
                name: "WEARLINK_SYNC_BACKGROUND_SHARE_PERCENT".into(),
                reason: "must be 1-100".into(),
            });
        }
        config.outbound.allow_loopback =
            var("WEARLINK_ALLOW_LOOPBACK_TARGETS").is_some_and(|v| v == "1" || v == "true");
        if let Some(raw) = var("WEARLINK_OUTBOUND_ALLOW_CIDRS") {
            config.outbound.allow_cidrs = crate::events::target::TargetPolicy::parse_cidrs(&raw)
                .map_err(|reason| ConfigError::Invalid { name: "WEARLINK_OUTBOUND_ALLOW_CIDRS".into(), reason })?;
        }
        config.outbound.timeout = Duration::from_millis(parse_var(&var, "WEARLINK_DELIVERY_TIMEOUT_MS", "10000")?);
        config.outbound.concurrency = parse_var(&var, "WEARLINK_OUTBOUND_CONCURRENCY", "32")?;
        if let Some(raw) = var("WEARLINK_DELIVERY_SCHEDULE_SECS") {
            config.outbound.schedule = raw
                .split(',')
                .map(|s| {
                    s.trim().parse::<f64>().ok().filter(|s| *s >= 0.0 && s.is_finite()).map(Duration::from_secs_f64)
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| ConfigError::Invalid {
                    name: "WEARLINK_DELIVERY_SCHEDULE_SECS".into(),
                    reason: "comma-separated seconds, e.g. 5,300,1800".into(),
                })?;
        }
        config.outbound.secret_overlap =
            Duration::from_secs(parse_var(&var, "WEARLINK_WEBHOOK_SECRET_OVERLAP_SECS", "86400")?);
        config.outbound.disable_after =
            Duration::from_secs(parse_var(&var, "WEARLINK_ENDPOINT_DISABLE_AFTER_SECS", "432000")?);
        config.fhir_outbox.retry_base =
            Duration::from_millis(parse_var::<u64>(&var, "WEARLINK_FHIR_OUTBOX_RETRY_MS", "1000")?.max(1));
        config.fhir_outbox.retry_max =
            Duration::from_millis(parse_var::<u64>(&var, "WEARLINK_FHIR_OUTBOX_RETRY_MAX_MS", "300000")?.max(1));
        config.log_json = var("WEARLINK_LOG_FORMAT").is_some_and(|f| f.eq_ignore_ascii_case("json"));
        config.shutdown_grace = Duration::from_secs(parse_var(&var, "WEARLINK_SHUTDOWN_GRACE_SECS", "5")?);
        for slug in crate::providers::SLUGS {
            let upper = slug.to_ascii_uppercase();
            let mut urls = ProviderUrls::default();
            for (field, suffix) in [
                (&mut urls.authorize, "AUTHORIZE_URL"),
                (&mut urls.token, "TOKEN_URL"),
                (&mut urls.api, "API_URL"),
                (&mut urls.revoke, "REVOKE_URL"),
                (&mut urls.user, "USER_URL"),
            ] {
                let name = format!("WEARLINK_PROVIDER_{upper}_{suffix}");
                if let Some(value) = var(&name) {
                    *field = Some(parse_url(&name, &value)?);
                }
            }
            let regions = crate::providers::REGIONS.iter().filter(|(s, _)| s == slug).flat_map(|(_, r)| r.iter());
            for region in regions {
                let name = format!("WEARLINK_PROVIDER_{upper}_REGION_{}_URL", region.to_ascii_uppercase());
                if let Some(value) = var(&name) {
                    urls.regions.insert(region.to_string(), parse_url(&name, &value)?);
                }
            }
            urls.signature_key = var(&format!("WEARLINK_PROVIDER_{upper}_SIGNATURE_KEY"));
            let window = format!("WEARLINK_PROVIDER_{upper}_RATE_WINDOW_SECS");
            if var(&window).is_some() {
                urls.short_rate_window = Some(Duration::from_secs(parse_var(&var, &window, "900")?));
            }
            config.provider_urls.insert(slug.to_string(), urls);
        }
        Ok(config)
    }
}

/// `http://<bind>`, with an unspecified address (0.0.0.0) shown as localhost.
pub fn base_url_for(bind: SocketAddr) -> Url {
    let host = if bind.ip().is_unspecified() { "localhost".to_string() } else { bind.ip().to_string() };
    let host = if bind.is_ipv6() && !bind.ip().is_unspecified() { format!("[{host}]") } else { host };
    Url::parse(&format!("http://{host}:{}", bind.port())).expect("a socket address makes a valid URL")
}

fn parse_var<T: std::str::FromStr>(
    var: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: &str,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    let raw = var(name).unwrap_or_else(|| default.to_string());
    raw.parse().map_err(|e: T::Err| ConfigError::Invalid { name: name.into(), reason: e.to_string() })
}

fn parse_url(name: &str, value: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(value).map_err(|e| ConfigError::Invalid { name: name.into(), reason: e.to_string() })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::Invalid { name: name.into(), reason: "must be an http(s) URL".into() });
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_readme() {
        let config = Config::from_vars(|_| None).unwrap();
        assert_eq!(config.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(config.base_url.as_str(), "http://127.0.0.1:8080/");
        assert_eq!(config.database_url, "sqlite://wearlink-data/wearlink.db");
        assert_eq!(config.state_ttl, Duration::from_secs(600));
        assert_eq!(config.connect_session_ttl, Duration::from_secs(1800));
        assert_eq!(config.pool.max_connections, 4, "SQLite readers");
        assert_eq!(config.cache_ttl, Duration::from_secs(2));
        assert_eq!((config.sync.concurrency, config.outbound.concurrency), (8, 32), "the worker's two lanes");
        assert_eq!(config.retention, Some(Duration::from_secs(30 * 86_400)));
        assert_eq!(config.shutdown_grace, Duration::from_secs(5), "well inside Kubernetes' 30 s");
        let forever = Config::from_vars(|name| (name == "WEARLINK_RETENTION_DAYS").then(|| "0".into())).unwrap();
        assert_eq!(forever.retention, None);
        let postgres =
            Config::from_vars(|name| (name == "WEARLINK_DATABASE_URL").then(|| "postgres://db/w".into())).unwrap();
        assert_eq!(postgres.pool.max_connections, 10);
    }

    #[test]
    fn provider_urls_are_overridable() {
        let config = Config::from_vars(|name| {
            (name == "WEARLINK_PROVIDER_STRAVA_TOKEN_URL").then(|| "http://127.0.0.1:9/token".to_string())
        })
        .unwrap();
        let strava = &config.provider_urls["strava"];
        assert_eq!(strava.token.as_ref().unwrap().as_str(), "http://127.0.0.1:9/token");
        assert!(strava.authorize.is_none());
    }

    #[test]
    fn metrics_move_to_their_own_listener_only_when_asked() {
        assert_eq!(Config::from_vars(|_| None).unwrap().metrics_bind, None);
        let config =
            Config::from_vars(|name| (name == "WEARLINK_METRICS_BIND").then(|| "10.0.0.5:9090".to_string())).unwrap();
        assert_eq!(config.metrics_bind, Some("10.0.0.5:9090".parse().unwrap()));
        let err = Config::from_vars(|name| (name == "WEARLINK_METRICS_BIND").then(|| "9090".into())).unwrap_err();
        assert!(err.to_string().contains("WEARLINK_METRICS_BIND"));
    }

    #[test]
    fn sqlite_commits_are_durable_unless_the_faster_mode_is_asked_for() {
        use crate::store::SqliteDurability;
        let with = |value: &'static str| {
            Config::from_vars(|name| (name == "WEARLINK_SQLITE_SYNCHRONOUS").then(|| value.to_string()))
        };
        assert_eq!(Config::from_vars(|_| None).unwrap().pool.sqlite_durability, SqliteDurability::Full);
        assert_eq!(with("normal").unwrap().pool.sqlite_durability, SqliteDurability::Normal);
        assert_eq!(with("full").unwrap().pool.sqlite_durability, SqliteDurability::Full);
        let err = with("off").unwrap_err().to_string();
        assert!(err.contains("WEARLINK_SQLITE_SYNCHRONOUS"), "{err}");
    }

    #[test]
    fn a_bad_value_names_the_variable() {
        let err = Config::from_vars(|name| (name == "WEARLINK_BIND").then(|| "nope".to_string())).unwrap_err();
        assert!(err.to_string().contains("WEARLINK_BIND"));
    }
}
