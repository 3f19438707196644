//! A small in-process cache of what nearly every request reads and rarely changes: API token →
//! caller, and per project its settings and its secrets (still sealed: they are opened where used,
//! so no plaintext secret lives in the cache).
//!
//! The bound: a cached value is used for at most `ttl` (`WEARLINK_CACHE_TTL_MS`, default 2 s)
//! after the database read that produced it began. So a change made elsewhere — by another
//! instance, by the CLI, or straight in the database (revoking an API token) — takes effect within
//! `ttl`. A change made through this instance (settings, secrets, credentials) takes effect at once:
//! it forgets the project's entries, and a read that began before the change never stores what it
//! read (a generation counter, checked under the same lock). Unknown tokens are not cached, so a
//! new token works at once. `ttl` 0 turns the cache off.
//!
//! Each table holds at most `MAX_ENTRIES`; when full, expired entries go first, then everything.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::projects::Principal;
use crate::store::SecretRecord;

/// Default bound on how stale a cached value may be.
pub const DEFAULT_TTL: Duration = Duration::from_secs(2);
const MAX_ENTRIES: usize = 10_000;

/// A project's settings as stored: `(key, value)`.
pub type Settings = Arc<Vec<(String, Value)>>;
/// A project's secrets as stored (sealed).
pub type Secrets = Arc<Vec<SecretRecord>>;

pub struct Cache {
    ttl: Duration,
    /// Bumped by every local change; a read that saw another generation does not store.
    generation: AtomicU64,
    principals: Table<Principal>,
    settings: Table<Settings>,
    secrets: Table<Secrets>,
}

struct Table<V> {
    entries: Mutex<HashMap<String, (Instant, V)>>,
}

impl<V> Default for Table<V> {
    fn default() -> Self {
        Self { entries: Mutex::new(HashMap::new()) }
    }
}

impl Cache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            generation: AtomicU64::new(0),
            principals: Table::default(),
            settings: Table::default(),
            secrets: Table::default(),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The caller holding the token with this hash; `load` reads it when not cached (`None`: unknown).
    pub async fn principal<E>(
        &self,
        token_hash: &str,
        load: impl Future<Output = Result<Option<Principal>, E>>,
    ) -> Result<Option<Principal>, E> {
        self.through(&self.principals, token_hash, load).await
    }

    pub async fn settings<E>(
        &self,
        project_id: &str,
        load: impl Future<Output = Result<Settings, E>>,
    ) -> Result<Settings, E> {
        let found = self.through(&self.settings, project_id, async { load.await.map(Some) }).await?;
        Ok(found.expect("settings are always loaded"))
    }

    pub async fn secrets<E>(
        &self,
        project_id: &str,
        load: impl Future<Output = Result<Secrets, E>>,
    ) -> Result<Secrets, E> {
        let found = self.through(&self.secrets, project_id, async { load.await.map(Some) }).await?;
        Ok(found.expect("secrets are always loaded"))
    }

    /// Call after changing a project's settings or secrets (once the change is written).
    pub fn forget_project(&self, project_id: &str) {
        self.forget(&self.settings, project_id);
        self.forget(&self.secrets, project_id);
    }

    /// Call after revoking or changing an API token (once the change is written).
    pub fn forget_token(&self, token_hash: &str) {
        self.forget(&self.principals, token_hash);
    }

    fn forget<V>(&self, table: &Table<V>, key: &str) {
        let mut entries = table.entries.lock().expect("cache lock");
        self.generation.fetch_add(1, Ordering::SeqCst);
        entries.remove(key);
    }

    async fn through<V: Clone, E>(
        &self,
        table: &Table<V>,
        key: &str,
        load: impl Future<Output = Result<Option<V>, E>>,
    ) -> Result<Option<V>, E> {
        if self.ttl.is_zero() {
            return load.await;
        }
        if let Some((read_at, value)) = table.entries.lock().expect("cache lock").get(key) {
            if read_at.elapsed() < self.ttl {
                return Ok(Some(value.clone()));
            }
        }
        let (read_at, generation) = (Instant::now(), self.generation.load(Ordering::SeqCst));
        let value = load.await?;
        if let Some(value) = &value {
            let mut entries = table.entries.lock().expect("cache lock");
            if self.generation.load(Ordering::SeqCst) == generation {
                if entries.len() >= MAX_ENTRIES {
                    entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
                    if entries.len() >= MAX_ENTRIES {
                        entries.clear();
                    }
                }
                entries.insert(key.to_string(), (read_at, value.clone()));
            }
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Role;

    fn principal(project: &str) -> Principal {
        Principal { project_id: project.into(), role: Role::Member, token_fingerprint: "f".into() }
    }

    async fn load(cache: &Cache, hash: &str, answer: Option<&str>) -> Option<String> {
        let answer = answer.map(principal);
        cache.principal(hash, async { Ok::<_, ()>(answer) }).await.unwrap().map(|p| p.project_id)
    }

    #[tokio::test]
    async fn a_value_is_reused_until_it_expires() {
        let cache = Cache::new(Duration::from_millis(500));
        assert_eq!(load(&cache, "h", Some("p1")).await.as_deref(), Some("p1"));
        assert_eq!(load(&cache, "h", Some("p2")).await.as_deref(), Some("p1"), "cached");
        tokio::time::sleep(Duration::from_millis(510)).await;
        assert_eq!(load(&cache, "h", None).await, None, "expired: read again");
    }

    #[tokio::test]
    async fn unknown_tokens_are_not_cached() {
        let cache = Cache::new(Duration::from_secs(60));
        assert_eq!(load(&cache, "h", None).await, None);
        assert_eq!(load(&cache, "h", Some("p1")).await.as_deref(), Some("p1"));
    }

    #[tokio::test]
    async fn forgetting_takes_effect_at_once() {
        let cache = Cache::new(Duration::from_secs(60));
        load(&cache, "h", Some("p1")).await;
        cache.forget_token("h");
        assert_eq!(load(&cache, "h", None).await, None);
    }

    #[tokio::test]
    async fn a_read_that_raced_a_change_is_not_stored() {
        let cache = Cache::new(Duration::from_secs(60));
        let stale = cache.principal("h", async {
            cache.forget_token("h"); // the change lands while the read is under way
            Ok::<_, ()>(Some(principal("old")))
        });
        assert_eq!(stale.await.unwrap().unwrap().project_id, "old");
        assert_eq!(load(&cache, "h", Some("new")).await.as_deref(), Some("new"));
    }

    #[tokio::test]
    async fn zero_ttl_turns_it_off() {
        let cache = Cache::new(Duration::ZERO);
        load(&cache, "h", Some("p1")).await;
        assert_eq!(load(&cache, "h", Some("p2")).await.as_deref(), Some("p2"));
    }

    #[tokio::test]
    async fn the_tables_are_bounded() {
        let cache = Cache::new(Duration::from_secs(60));
        for i in 0..MAX_ENTRIES + 5 {
            load(&cache, &i.to_string(), Some("p")).await;
        }
        assert!(cache.principals.entries.lock().unwrap().len() <= MAX_ENTRIES);
    }
}
