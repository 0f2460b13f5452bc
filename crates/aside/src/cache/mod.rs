//! [`Cache`]: the front door. Typed get / set / get_or_load / invalidate over any [`Store`].
//!
//! The cache composes the pieces of the engine; each of its jobs has a file of its own:
//!
//! - this file: [`Cache`], its public types, and the calls on whole keys, tags and prefixes
//!   (`get`, `set`, `del`, `invalidate_*`, `health`, `ping`);
//! - `entry`: [`Entry`] (one key's call with its TTLs and tags), the fetch variants, and the
//!   decision between hit, stale and expired;
//! - `batch`: [`Entries`] (many keys' call): one store read for all of them, one call of a
//!   batched loader for the misses, each key otherwise as `entry` and `lease` handle it;
//! - `lease`: the miss path: joining an in-process flight, claiming the store's lease,
//!   waiting for another loader's fill;
//! - `fill`: a load under its lease: running the loader, the fenced fill, the release;
//! - `refresh`: stale-while-revalidate, a refresh on its own task;
//! - `guard`: the outage policy around every store call: timeouts, the circuit breaker, the
//!   backlog of invalidations that could not be sent and its replay;
//! - `value`: values to entries and back (codec, envelope, freshness, TTL jitter).

mod batch;
mod entry;
mod fill;
mod guard;
mod lease;
mod refresh;
mod value;

pub use batch::Entries;
pub use entry::Entry;

use crate::backlog::Backlog;
use crate::breaker::Breaker;
use crate::clock::Clock;
use crate::codec::{Codec, Json};
use crate::error::{LoadError, Result};
use crate::flight::Flights;
use crate::key::Namespace;
use crate::metrics::{Metrics, Op};
use crate::store::{Kind, Store};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A cache-aside cache. Cheap to clone: clones share everything.
///
/// Built with [`Cache::builder`]. Values are typed per call and encoded with the cache's
/// [`Codec`] (JSON by default).
///
/// # Concurrent calls on the same key
/// Concurrent [`get_or_load`](Cache::get_or_load) misses of one key in one process run the
/// loader once; the others wait for its outcome (a loader error reaches all of them, shared
/// in an `Arc`). Across processes sharing a Redis store, a lease lets one loader run per key;
/// the others poll briefly (see [`CacheBuilder::lease_wait`](crate::CacheBuilder::lease_wait))
/// and then load themselves without writing.
///
/// # When the store fails
/// Every store call is bounded by a timeout; repeated failures open a circuit breaker that
/// skips the store for a cooldown. `get_or_load` then runs its loader, invalidations are kept
/// and applied before the next read is served from the store, and `get`/`set` report
/// [`Error::Backend`](crate::Error::Backend) so the caller can tell a miss from an outage.
pub struct Cache<C: Codec = Json> {
    inner: Arc<Inner<C>>,
}

impl<C: Codec> Clone for Cache<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<C: Codec> fmt::Debug for Cache<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("namespace", &self.inner.ns.as_str())
            .field("store", &self.inner.store)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Settings {
    pub(crate) default_ttl: Duration,
    pub(crate) negative_ttl: Duration,
    pub(crate) jitter: f64,
    pub(crate) schema: u32,
    pub(crate) lease: Duration,
    pub(crate) lease_wait: Duration,
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) stale_if_error: Duration,
    /// XFetch's beta (0: off).
    pub(crate) early_refresh: f64,
}

pub(crate) struct Inner<C> {
    pub(crate) ns: Namespace,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) codec: C,
    pub(crate) settings: Settings,
    pub(crate) flights: Flights,
    pub(crate) breaker: Breaker,
    pub(crate) backlog: Backlog,
    pub(crate) flush_lock: tokio::sync::Mutex<()>,
    /// Whether a task is replaying the backlog in the background.
    pub(crate) draining: std::sync::atomic::AtomicBool,
    /// A running average of how long loads take, in µs (for early refresh).
    pub(crate) load_time: std::sync::atomic::AtomicU64,
    pub(crate) metrics: Metrics,
    pub(crate) clock: Arc<dyn Clock>,
}

/// How a value was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Served from the store.
    Hit,
    /// Not in the store: loaded (by this call, or by the call it waited for).
    Miss,
    /// Served past its freshness: while a refresh runs (stale-while-revalidate), or because
    /// the loader failed (stale-if-error).
    Stale,
}

impl Status {
    /// `hit`, `miss` or `stale`, as in an `x-cache` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Hit => "hit",
            Status::Miss => "miss",
            Status::Stale => "stale",
        }
    }
}

/// A value from [`Entry::fetch`] with how it was obtained. `None` is a (cached) "not found".
#[derive(Clone, Debug, PartialEq)]
pub struct Fetched<T> {
    /// The value, or `None` when the loader found nothing.
    pub value: Option<T>,
    /// Where it came from.
    pub status: Status,
}

/// Whether an invalidation reached the store now or was kept for when it answers again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalidation {
    /// Applied to the store.
    Applied,
    /// The store did not answer: kept, and applied before anything is read from it again.
    Queued,
}

/// A snapshot of the cache's health, for readiness endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    /// The kind of store.
    pub kind: Kind,
    /// Whether the circuit breaker is open (the store is being skipped).
    pub breaker_open: bool,
    /// Invalidations waiting for the store.
    pub pending_invalidations: usize,
}

/// A loaded value with tags known only once it is loaded; see [`Entry::fetch_tagged`].
#[derive(Clone, Debug, PartialEq)]
pub struct Tagged<T> {
    /// The value, or `None` for "not found".
    pub value: Option<T>,
    /// Tags of the entry.
    pub tags: Vec<String>,
}

impl<T> Tagged<T> {
    /// A value, without tags yet.
    pub fn found(value: T) -> Self {
        Self {
            value: Some(value),
            tags: Vec::new(),
        }
    }

    /// "Not found", without tags yet.
    pub fn missing() -> Self {
        Self {
            value: None,
            tags: Vec::new(),
        }
    }

    /// Adds a tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }
}

impl<T> From<Option<T>> for Tagged<T> {
    fn from(value: Option<T>) -> Self {
        Self {
            value,
            tags: Vec::new(),
        }
    }
}

impl Cache<Json> {
    /// Starts a [`CacheBuilder`](crate::CacheBuilder) (in-process store, JSON, namespace `aside`).
    pub fn builder() -> crate::CacheBuilder<Json> {
        crate::CacheBuilder::new()
    }
}

impl<C: Codec> Cache<C> {
    pub(crate) fn from_inner(inner: Inner<C>) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The namespace every key of this cache lives under.
    pub fn namespace(&self) -> &str {
        self.inner.ns.as_str()
    }

    /// Reads a value. `Ok(None)` is a miss (or a cached "not found"); an undecodable entry is a
    /// miss too, and is removed. A store that cannot be reached is [`Error::Backend`](crate::Error::Backend).
    /// For an entry with tags, `cache.entry(key).tags(..).get()` saves a round trip on Redis.
    /// An entry past its TTL is returned while within the cache's stale-while-revalidate
    /// window (counted as stale; nothing refreshes it), and is a miss after.
    ///
    /// ```
    /// # tokio_test_main(async {
    /// let cache = aside::Cache::builder().build().unwrap();
    /// cache.set("answer", &42u32).await.unwrap();
    /// assert_eq!(cache.get::<u32>("answer").await.unwrap(), Some(42));
    /// assert_eq!(cache.get::<u32>("question").await.unwrap(), None);
    /// # });
    /// # fn tokio_test_main(f: impl std::future::Future) { tokio::runtime::Runtime::new().unwrap().block_on(f); }
    /// ```
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.get_with(key, &[], self.inner.settings.stale_while_revalidate)
            .await
    }

    /// Writes a value with the default TTL (and jitter), no tags. See [`Cache::entry`] for more.
    pub async fn set<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<()> {
        self.entry(key).set(value).await
    }

    /// Loads through the cache with the default TTLs and no tags: a hit is returned as is; on a
    /// miss `loader` runs (once per key across concurrent callers) and its value, or its "not
    /// found" (`Ok(None)`, cached for the negative TTL), is stored. See [`Cache::entry`].
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let cache = aside::Cache::builder().build().unwrap();
    /// let v = cache
    ///     .get_or_load("user:1", || async { Ok::<_, std::io::Error>(Some("Ada".to_string())) })
    ///     .await
    ///     .unwrap();
    /// assert_eq!(v.as_deref(), Some("Ada"));
    /// # });
    /// ```
    pub async fn get_or_load<T, E, F, Fut>(
        &self,
        key: &str,
        loader: F,
    ) -> Result<Option<T>, LoadError<E>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
    {
        Ok(self.entry(key).fetch(loader).await?.value)
    }

    /// Starts a call on one key with its own TTLs and tags.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use std::time::Duration;
    /// let cache = aside::Cache::builder().build().unwrap();
    /// cache
    ///     .entry("product:p1")
    ///     .ttl(Duration::from_secs(300))
    ///     .tags(["category:c1"])
    ///     .set(&"Product 1")
    ///     .await
    ///     .unwrap();
    /// cache.invalidate_tag("category:c1").await.unwrap();
    /// assert_eq!(cache.get::<String>("product:p1").await.unwrap(), None);
    /// # });
    /// ```
    pub fn entry<'a>(&'a self, key: &'a str) -> Entry<'a, C> {
        Entry::new(self, key)
    }

    /// Deletes entries (any number; an empty list does nothing).
    pub async fn del<I, S>(&self, keys: I) -> Result<Invalidation>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let keys = keys
            .into_iter()
            .map(|k| self.inner.ns.entry(k.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        if keys.is_empty() {
            return Ok(Invalidation::Applied);
        }
        Ok(self.invalidate(&keys, &[]).await)
    }

    /// Invalidates every entry carrying `tag`, whatever their number and TTLs (one version bump).
    pub async fn invalidate_tag(&self, tag: &str) -> Result<Invalidation> {
        self.invalidate_tags([tag]).await
    }

    /// Invalidates every entry carrying any of `tags`.
    pub async fn invalidate_tags<I, S>(&self, tags: I) -> Result<Invalidation>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let stamps = tags
            .into_iter()
            .map(|t| self.inner.ns.tag(t.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        Ok(self.invalidate(&[], &stamps).await)
    }

    /// Invalidates every entry whose key starts with `prefix` (which must end with `:`, at
    /// most 4 segments deep: `products:list:`), in one version bump: no `KEYS`, no `SCAN`.
    pub async fn invalidate_prefix(&self, prefix: &str) -> Result<Invalidation> {
        let p = self.inner.ns.prefix(prefix)?;
        Ok(self.invalidate(&[], &[p]).await)
    }

    /// Invalidates every entry of this namespace (one version bump).
    pub async fn invalidate_all(&self) -> Invalidation {
        self.invalidate(&[], &[self.inner.ns.epoch()]).await
    }

    /// The cache's health, without calling the store.
    pub fn health(&self) -> Health {
        Health {
            kind: self.inner.store.kind(),
            breaker_open: self.inner.breaker.is_open(),
            pending_invalidations: self.inner.backlog.len(),
        }
    }

    /// Applies the invalidations kept while the store did not answer, retrying (with a short
    /// backoff) until the store takes them or `within` has passed; [`Invalidation::Applied`]
    /// if none is left. Call it on graceful shutdown, so that what this instance could not
    /// send is not lost with it. (Kept invalidations are also replayed in the background, on
    /// their own, as soon as the store answers again; this waits for that.)
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let cache = aside::Cache::builder().build().unwrap();
    /// let left = cache.flush(std::time::Duration::from_secs(2)).await;
    /// assert_eq!(left, aside::Invalidation::Applied);
    /// # });
    /// ```
    pub async fn flush(&self, within: Duration) -> Invalidation {
        self.flush_within(within).await
    }

    /// Asks the store whether it answers (bounded by the command timeout), applying any
    /// pending invalidations first. `false` while the breaker is open.
    pub async fn ping(&self) -> bool {
        self.ready().await.is_ok() && self.call(Op::Ping, self.inner.store.ping()).await.is_ok()
    }
}
