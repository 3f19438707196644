//! A small in-process cache of what nearly every request reads and rarely changes: API token →
//! caller, and per project its settings and its secrets (still sealed: they are opened where used,
//! so no plaintext secret lives in the cache).
//!
//! The bounds. A change made through this instance takes effect here at once: it forgets the
//! entries, and a read that began before the change never stores what it read (a generation
//! counter, checked under the same lock). On PostgreSQL the database announces every committed
//! change (triggers and `NOTIFY`, whoever made it: another instance, the CLI, a statement typed
//! into the database), each instance listens on a connection of its own and forgets the entry as
//! soon as it hears (`heard`). A write through an instance then announces a barrier and answers
//! only once every listening instance has acknowledged it (`acks`, at most `ACK_WAIT`): each
//! instance hears announcements in commit order and acknowledges the barrier after applying
//! what came before it, so by the time the writer answers, every instance has forgotten.
//! While the listener is down (lost, reconnecting, or never up), changes go unheard and the bound
//! is `ttl` (`WEARLINK_CACHE_TTL_MS`, default 2 s) after the read that produced a value began,
//! as on every read anyway; each time the listener (re)connects the whole cache is forgotten,
//! since what it missed is unknown. SQLite has one instance, so only the local rule applies
//! (a change made straight in the database file: `ttl`). Unknown tokens are not cached, so a new
//! token works at once. `ttl` 0 turns the cache off.
//!
//! Each table holds at most `MAX_ENTRIES`; when full, expired entries go first, then everything.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::broadcast;

use crate::projects::Principal;
use crate::store::{CachedChange, SecretRecord};

/// Default bound on how stale a cached value may be.
pub const DEFAULT_TTL: Duration = Duration::from_secs(2);
const MAX_ENTRIES: usize = 10_000;
/// Longest a write waits for the instances to acknowledge its barrier (see `acks`).
pub const ACK_WAIT: Duration = Duration::from_secs(1);

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
    /// Whether this instance hears the changes made elsewhere (PostgreSQL's listener is up).
    listening: AtomicBool,
    /// The barriers acknowledged by an instance, by id, for writes waiting for them (`Acks`).
    acks: broadcast::Sender<String>,
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
            listening: AtomicBool::new(false),
            acks: broadcast::channel(1024).0,
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

    /// Call after a change is written (a token revoked, a setting or secret written).
    pub fn forget(&self, change: &CachedChange) {
        match change {
            CachedChange::Settings { project_id } => self.forget_key(&self.settings, project_id),
            CachedChange::Secrets { project_id } => self.forget_key(&self.secrets, project_id),
            // Announcements name a token by a prefix of its hash; the table is keyed by the whole hash.
            CachedChange::Token { hash_prefix } => {
                let mut entries = self.principals.entries.lock().expect("cache lock");
                self.generation.fetch_add(1, Ordering::SeqCst);
                entries.retain(|hash, _| !hash.starts_with(hash_prefix.as_str()));
            }
        }
    }

    /// A change announced by the database (made here or anywhere else).
    pub fn heard(&self, change: CachedChange) {
        self.forget(&change);
    }

    /// An instance acknowledged the barrier `id` (see `acks`).
    pub fn acked(&self, id: String) {
        let _ = self.acks.send(id); // nobody waiting is fine
    }

    /// Whether changes made elsewhere are heard. Each time it becomes true everything is
    /// forgotten: what was announced while nobody listened is unknown.
    pub fn set_listening(&self, listening: bool) {
        if listening {
            self.forget_all();
        }
        self.listening.store(listening, Ordering::SeqCst);
    }

    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::SeqCst)
    }

    /// Forgets every entry (and what reads under way would store).
    pub fn forget_all(&self) {
        let (mut principals, mut settings, mut secrets) = (
            self.principals.entries.lock().expect("cache lock"),
            self.settings.entries.lock().expect("cache lock"),
            self.secrets.entries.lock().expect("cache lock"),
        );
        self.generation.fetch_add(1, Ordering::SeqCst);
        principals.clear();
        settings.clear();
        secrets.clear();
    }

    /// Call before announcing a barrier; `Acks::wait` then counts the instances that acknowledged it.
    pub fn acks(&self) -> Acks {
        Acks(self.acks.subscribe())
    }

    fn forget_key<V>(&self, table: &Table<V>, key: &str) {
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

/// Acknowledgements of barriers, as they are heard (see `Cache::acks`).
pub struct Acks(broadcast::Receiver<String>);

impl Acks {
    /// Waits until `instances` acknowledgements of barrier `id` have been heard, at most `at_most`;
    /// answers whether they were.
    pub async fn wait(mut self, id: &str, instances: u64, at_most: Duration) -> bool {
        let mut heard = 0;
        let all = async {
            while heard < instances {
                match self.0.recv().await {
                    Ok(acked) if acked == id => heard += 1,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        };
        let _ = tokio::time::timeout(at_most, all).await;
        heard >= instances
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
        cache.forget(&CachedChange::token("h"));
        assert_eq!(load(&cache, "h", None).await, None);
    }

    #[tokio::test]
    async fn a_read_that_raced_a_change_is_not_stored() {
        let cache = Cache::new(Duration::from_secs(60));
        let stale = cache.principal("h", async {
            cache.forget(&CachedChange::token("h")); // the change lands while the read is under way
            Ok::<_, ()>(Some(principal("old")))
        });
        assert_eq!(stale.await.unwrap().unwrap().project_id, "old");
        assert_eq!(load(&cache, "h", Some("new")).await.as_deref(), Some("new"));
    }

    #[tokio::test]
    async fn a_change_heard_from_elsewhere_is_forgotten_by_its_token_fingerprint() {
        let cache = Cache::new(Duration::from_secs(60));
        let (hash, other) = ("a".repeat(64), "b".repeat(64));
        load(&cache, &hash, Some("p1")).await;
        load(&cache, &other, Some("p1")).await;
        cache.heard(CachedChange::token(&hash));
        assert_eq!(load(&cache, &hash, None).await, None, "forgotten");
        assert_eq!(load(&cache, &other, None).await.as_deref(), Some("p1"), "the other token stays cached");
    }

    #[tokio::test]
    async fn listening_again_forgets_everything() {
        let cache = Cache::new(Duration::from_secs(60));
        load(&cache, "h", Some("p1")).await;
        cache.set_listening(false);
        cache.set_listening(true);
        assert_eq!(load(&cache, "h", None).await, None);
    }

    #[tokio::test]
    async fn a_write_waits_for_every_instance_to_acknowledge_its_barrier() {
        let cache = std::sync::Arc::new(Cache::new(Duration::from_secs(60)));
        let acks = cache.acks();
        let announcer = std::sync::Arc::clone(&cache);
        tokio::spawn(async move {
            for id in ["b1", "other", "b1"] {
                announcer.acked(id.into());
            }
        });
        assert!(acks.wait("b1", 2, Duration::from_secs(5)).await);
        let acks = cache.acks();
        cache.acked("b2".into());
        assert!(!acks.wait("b2", 2, Duration::from_millis(50)).await, "bounded");
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
