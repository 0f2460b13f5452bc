//! [`Cache`]: typed get / set / get_or_load / invalidate over any [`Store`].

use crate::backlog::Backlog;
use crate::breaker::Breaker;
use crate::clock::Clock;
use crate::codec::{Codec, Json};
use crate::envelope::{self, Body};
use crate::error::{Error, LoadError, Result, StoreError};
use crate::flight::{self, Flights, Role, Shared};
use crate::key::{EntryKey, Namespace, TagKey};
use crate::metrics::{Metrics, Op};
use crate::store::{Claim, Kind, Lease, Lookup, Store};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{Instrument, debug, debug_span, warn};

const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

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
/// [`Error::Backend`] so the caller can tell a miss from an outage.
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

/// How a fetch hands its value back: decoded, or as the codec's bytes.
pub(crate) trait Mode<T> {
    type Out;
    /// Whether `loaded` needs the value's encoding.
    const ENCODED: bool;
    fn decode<C: Codec>(
        codec: &C,
        body: Bytes,
    ) -> std::result::Result<Self::Out, crate::codec::CodecError>;
    fn loaded(value: T, body: Bytes) -> Self::Out;
}

pub(crate) struct AsValue;
pub(crate) struct AsBytes;

impl<T: DeserializeOwned> Mode<T> for AsValue {
    type Out = T;
    const ENCODED: bool = false;
    fn decode<C: Codec>(
        codec: &C,
        body: Bytes,
    ) -> std::result::Result<T, crate::codec::CodecError> {
        codec.decode(&body)
    }
    fn loaded(value: T, _: Bytes) -> T {
        value
    }
}

impl<T> Mode<T> for AsBytes {
    type Out = Bytes;
    const ENCODED: bool = true;
    fn decode<C: Codec>(
        _: &C,
        body: Bytes,
    ) -> std::result::Result<Bytes, crate::codec::CodecError> {
        Ok(body)
    }
    fn loaded(_: T, body: Bytes) -> Bytes {
        body
    }
}

enum Decoded<T> {
    Value(T),
    Absent,
}

/// The TTLs of one call.
#[derive(Clone, Copy, Debug)]
struct Ttls {
    ttl: Duration,
    negative: Duration,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
}

impl Ttls {
    /// How long an entry is kept past its freshness.
    fn grace(&self) -> Duration {
        self.stale_while_revalidate.max(self.stale_if_error)
    }

    /// How long the version keys an entry is stamped with must outlive a claim.
    fn keep(&self, lease: Duration) -> Duration {
        (self.ttl.max(self.negative) + self.grace()) * 2 + lease
    }
}

/// Where an entry stands against the reader's freshness windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Age {
    Fresh,
    /// Within stale-while-revalidate: served, refreshed in the background.
    Stale,
    /// Past it: reloaded; `fallback` when within stale-if-error (served if the loader fails).
    Expired {
        fallback: bool,
    },
}

enum Waited {
    Filled(Bytes),
    Vacant,
    TimedOut,
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
    /// miss too, and is removed. A store that cannot be reached is [`Error::Backend`].
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

    async fn get_with<T: DeserializeOwned>(
        &self,
        key: &str,
        tags: &[&str],
        stale_while_revalidate: Duration,
    ) -> Result<Option<T>> {
        let k = self.inner.ns.entry(key)?;
        let stamps = if tags.is_empty() && !self.inner.store.reads_need_stamps() {
            Vec::new()
        } else {
            self.inner.ns.stamps_for(key, tags)?
        };
        let m = &self.inner.metrics;
        match self.read(&k, &stamps).await.map_err(Error::Backend)? {
            Lookup::Hit(p) => match self.decode::<T>(&k, &p).await {
                Some((d, fresh_until)) => {
                    let age = self.age(fresh_until, stale_while_revalidate, Duration::ZERO);
                    match age {
                        Age::Fresh => m.hits.increment(1),
                        Age::Stale => m.stale.increment(1),
                        Age::Expired { .. } => {
                            m.misses.increment(1);
                            return Ok(None);
                        }
                    }
                    Ok(match d {
                        Decoded::Value(v) => Some(v),
                        Decoded::Absent => None,
                    })
                }
                None => {
                    m.misses.increment(1);
                    Ok(None)
                }
            },
            Lookup::Corrupt => {
                self.discard(&k, "not a record").await;
                self.inner.metrics.misses.increment(1);
                Ok(None)
            }
            Lookup::Miss | Lookup::Pending => {
                self.inner.metrics.misses.increment(1);
                Ok(None)
            }
        }
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
        Entry {
            cache: self,
            key,
            ttl: None,
            negative_ttl: None,
            stale_while_revalidate: None,
            stale_if_error: None,
            tags: Vec::new(),
        }
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

    /// Asks the store whether it answers (bounded by the command timeout), applying any
    /// pending invalidations first. `false` while the breaker is open.
    pub async fn ping(&self) -> bool {
        self.ready().await.is_ok() && self.call(Op::Ping, self.inner.store.ping()).await.is_ok()
    }

    // ---- internals ----

    async fn call<T>(
        &self,
        op: Op,
        fut: impl Future<Output = std::result::Result<T, StoreError>>,
    ) -> std::result::Result<T, StoreError> {
        let m = &self.inner.metrics;
        if !self.inner.breaker.allow() {
            m.skipped.increment(1);
            return Err(StoreError::CircuitOpen);
        }
        let start = Instant::now();
        let r = fut.await;
        m.backend(op).record(start.elapsed().as_secs_f64());
        match &r {
            Ok(_) => self.inner.breaker.success(),
            Err(e) => {
                self.inner.breaker.failure();
                m.backend_errors.increment(1);
                warn!(error = %e, ?op, "cache store call failed");
            }
        }
        r
    }

    /// Applies pending invalidations; reads are served from the store only once it is empty.
    async fn ready(&self) -> std::result::Result<(), StoreError> {
        if self.inner.backlog.is_empty() {
            return Ok(());
        }
        let _guard = self.inner.flush_lock.lock().await;
        if self.inner.backlog.is_empty() {
            return Ok(());
        }
        let batch = self.inner.backlog.take();
        let store = &self.inner.store;
        let r = async {
            if batch.overflowed {
                self.call(
                    Op::Bump,
                    store.bump(&[self.inner.ns.epoch()], &self.inner.ns.clock()),
                )
                .await
            } else {
                let keys: Vec<_> = batch.keys.iter().cloned().collect();
                let stamps: Vec<_> = batch.stamps.iter().cloned().collect();
                self.call(Op::Delete, store.delete(&keys)).await?;
                self.call(Op::Bump, store.bump(&stamps, &self.inner.ns.clock()))
                    .await
            }
        }
        .await;
        match r {
            Ok(()) => {
                debug!(
                    overflowed = batch.overflowed,
                    "pending invalidations applied"
                );
                self.inner.backlog.settle();
            }
            Err(_) => self.inner.backlog.restore(batch),
        }
        self.inner
            .metrics
            .pending
            .set(self.inner.backlog.len() as f64);
        if self.inner.backlog.is_empty() {
            Ok(())
        } else {
            Err(StoreError::CircuitOpen)
        }
    }

    async fn read(
        &self,
        k: &EntryKey,
        stamps: &[TagKey],
    ) -> std::result::Result<Lookup, StoreError> {
        self.ready().await?;
        self.call(Op::Get, self.inner.store.get(k, stamps)).await
    }

    async fn invalidate(&self, keys: &[EntryKey], stamps: &[TagKey]) -> Invalidation {
        self.inner.flights.invalidated();
        let store = &self.inner.store;
        let sent = if self.inner.backlog.is_empty() {
            let r = if keys.is_empty() {
                Ok(())
            } else {
                self.call(Op::Delete, store.delete(keys)).await
            };
            match r {
                Ok(()) if stamps.is_empty() => Ok(()),
                Ok(()) => {
                    self.call(Op::Bump, store.bump(stamps, &self.inner.ns.clock()))
                        .await
                }
                Err(e) => Err(e),
            }
        } else {
            Err(StoreError::CircuitOpen)
        };
        // Again once applied: a flight that started while this invalidation was on its way
        // may have read what it removes, so callers arriving after it start afresh.
        self.inner.flights.invalidated();
        match sent {
            Ok(()) => Invalidation::Applied,
            Err(_) => {
                self.inner.backlog.push(keys, stamps);
                self.inner.metrics.queued.increment(1);
                self.inner
                    .metrics
                    .pending
                    .set(self.inner.backlog.len() as f64);
                // Try right away: a store that answers again gets the whole backlog now.
                match self.ready().await {
                    Ok(()) => Invalidation::Applied,
                    Err(_) => Invalidation::Queued,
                }
            }
        }
    }

    async fn decode<T: DeserializeOwned>(
        &self,
        k: &EntryKey,
        payload: &Bytes,
    ) -> Option<(Decoded<T>, Option<u64>)> {
        self.decode_as::<T, AsValue>(k, payload).await
    }

    /// The value of an entry and until when it is fresh; `None` (and the entry removed) if it
    /// cannot be decoded.
    async fn decode_as<T, M: Mode<T>>(
        &self,
        k: &EntryKey,
        payload: &Bytes,
    ) -> Option<(Decoded<M::Out>, Option<u64>)> {
        let why = match envelope::open(payload, self.inner.settings.schema) {
            Ok(envelope::Opened {
                body: Body::Absent,
                fresh_until,
            }) => return Some((Decoded::Absent, fresh_until)),
            Ok(envelope::Opened {
                body: Body::Value(b),
                fresh_until,
            }) => {
                let body = payload.slice(payload.len() - b.len()..);
                match M::decode(&self.inner.codec, body) {
                    Ok(v) => return Some((Decoded::Value(v), fresh_until)),
                    Err(e) => e.to_string(),
                }
            }
            Err(envelope::Refused::Schema(s)) => format!("written with schema {s}"),
            Err(envelope::Refused::Corrupt) => "not an entry envelope".to_owned(),
        };
        self.discard(k, &why).await;
        None
    }

    async fn discard(&self, k: &EntryKey, why: &str) {
        self.inner.metrics.corrupt.increment(1);
        warn!(key = %k, reason = %why, "undecodable cache entry removed");
        let _ = self
            .call(Op::Delete, self.inner.store.delete(std::slice::from_ref(k)))
            .await;
    }

    /// Where an entry fresh until `fresh_until` stands now.
    fn age(
        &self,
        fresh_until: Option<u64>,
        stale_while_revalidate: Duration,
        stale_if_error: Duration,
    ) -> Age {
        let Some(until) = fresh_until else {
            return Age::Fresh;
        };
        let now = self.inner.clock.wall().as_millis() as u64;
        let past = |d: Duration| until.saturating_add(d.as_millis() as u64);
        if now < until {
            Age::Fresh
        } else if now < past(stale_while_revalidate) {
            Age::Stale
        } else {
            Age::Expired {
                fallback: now < past(stale_if_error),
            }
        }
    }

    /// The store TTL of an entry written now and until when it is fresh: the TTL (jittered),
    /// plus the grace it is kept for past its freshness, if any.
    fn lifetime(&self, ttl: Duration, grace: Duration) -> (Duration, Option<u64>) {
        let ttl = self.jittered(ttl);
        if grace.is_zero() {
            return (ttl, None);
        }
        let fresh_until = (self.inner.clock.wall() + ttl).as_millis() as u64;
        (ttl + grace, Some(fresh_until))
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T, fresh_until: Option<u64>) -> Result<Bytes> {
        let mut out = envelope::value_header(self.inner.settings.schema, fresh_until);
        self.inner
            .codec
            .encode(value, &mut out)
            .map_err(Error::Encode)?;
        Ok(Bytes::from(out))
    }

    fn jittered(&self, ttl: Duration) -> Duration {
        let j = self.inner.settings.jitter;
        if j <= 0.0 {
            return ttl;
        }
        let cut = ttl.mul_f64(rand::random::<f64>() * j);
        (ttl - cut).max(Duration::from_millis(1))
    }

    async fn wait_for_fill(&self, k: &EntryKey, stamps: &[TagKey]) -> Waited {
        let deadline = Instant::now() + self.inner.settings.lease_wait;
        let mut pause = Duration::from_millis(2);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Waited::TimedOut;
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_millis(50));
            match self.read(k, stamps).await {
                Ok(Lookup::Hit(p)) => return Waited::Filled(p),
                Ok(Lookup::Pending) => {}
                Ok(Lookup::Miss | Lookup::Corrupt) => return Waited::Vacant,
                Err(_) => return Waited::TimedOut,
            }
        }
    }
}

fn check_ttl(ttl: Duration) -> Result<Duration> {
    if ttl < Duration::from_millis(1) || ttl > MAX_TTL {
        Err(Error::InvalidTtl(ttl))
    } else {
        Ok(ttl)
    }
}

/// One key's call: TTLs and tags, then [`set`](Entry::set), [`get_or_load`](Entry::get_or_load)
/// or [`fetch`](Entry::fetch). Made by [`Cache::entry`].
#[must_use = "an Entry does nothing until set, get_or_load or fetch is awaited"]
pub struct Entry<'a, C: Codec> {
    cache: &'a Cache<C>,
    key: &'a str,
    ttl: Option<Duration>,
    negative_ttl: Option<Duration>,
    stale_while_revalidate: Option<Duration>,
    stale_if_error: Option<Duration>,
    tags: Vec<&'a str>,
}

impl<'a, C: Codec> Entry<'a, C> {
    /// The TTL of this value (default: the cache's default TTL). Jitter applies.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The TTL of a cached "not found" (default: the cache's negative TTL).
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// How long past its TTL the value is still served while one refresh runs in the
    /// background (default: the cache's, see
    /// [`CacheBuilder::stale_while_revalidate`](crate::CacheBuilder::stale_while_revalidate)).
    pub fn stale_while_revalidate(mut self, d: Duration) -> Self {
        self.stale_while_revalidate = Some(d);
        self
    }

    /// How long past its TTL the value is kept to be served when the loader fails (default:
    /// the cache's, see [`CacheBuilder::stale_if_error`](crate::CacheBuilder::stale_if_error)).
    pub fn stale_if_error(mut self, d: Duration) -> Self {
        self.stale_if_error = Some(d);
        self
    }

    /// Adds a tag.
    pub fn tag(mut self, tag: &'a str) -> Self {
        self.tags.push(tag);
        self
    }

    /// Adds tags.
    pub fn tags<I: IntoIterator<Item = &'a str>>(mut self, tags: I) -> Self {
        self.tags.extend(tags);
        self
    }

    fn ttls(&self) -> Result<Ttls> {
        let s = &self.cache.inner.settings;
        let grace = |d: Option<Duration>, default: Duration| {
            let d = d.unwrap_or(default);
            if d > MAX_TTL {
                Err(Error::InvalidTtl(d))
            } else {
                Ok(d)
            }
        };
        Ok(Ttls {
            ttl: check_ttl(self.ttl.unwrap_or(s.default_ttl))?,
            negative: check_ttl(self.negative_ttl.unwrap_or(s.negative_ttl))?,
            stale_while_revalidate: grace(self.stale_while_revalidate, s.stale_while_revalidate)?,
            stale_if_error: grace(self.stale_if_error, s.stale_if_error)?,
        })
    }

    /// Reads the entry like [`Cache::get`], naming the tags it carries. An entry is checked
    /// against every tag it carries, named or not; naming them matters only where the store
    /// reads versions with the entry: with Redis when its versions are not held in process
    /// (one `MGET` of the entry and the named versions, and a second round trip for tags not
    /// named).
    pub async fn get<T: DeserializeOwned>(self) -> Result<Option<T>> {
        let t = self.ttls()?;
        self.cache
            .get_with(self.key, &self.tags, t.stale_while_revalidate)
            .await
    }

    /// Writes a value unconditionally. Any fill in flight for this key is voided, so a load
    /// that started before this write cannot overwrite it.
    pub async fn set<T: Serialize + ?Sized>(self, value: &T) -> Result<()> {
        let cache = self.cache;
        let inner = &cache.inner;
        let t = self.ttls()?;
        let k = inner.ns.entry(self.key)?;
        let stamps = inner.ns.stamps_for(self.key, &self.tags)?;
        let (ttl, fresh_until) = cache.lifetime(t.ttl, t.grace());
        let payload = cache.encode(value, fresh_until)?;
        cache
            .call(Op::Set, inner.store.set(&k, &stamps, payload, ttl))
            .await
            .map_err(Error::Backend)
    }

    /// Like [`fetch`](Entry::fetch), returning the value only.
    pub async fn get_or_load<T, E, F, Fut>(self, loader: F) -> Result<Option<T>, LoadError<E>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
    {
        Ok(self.fetch(loader).await?.value)
    }

    /// Reads the entry; on a miss runs `loader` (once per key across concurrent callers in
    /// this process, and once per key across processes while the lease holds), stores its
    /// outcome unless an invalidation of the key happened since the load began, and returns it
    /// with its [`Status`]. `Ok(None)` from the loader is cached for the negative TTL.
    ///
    /// Past its TTL, within [`stale_while_revalidate`](Entry::stale_while_revalidate), the
    /// old value is returned at once ([`Status::Stale`]) and the loader runs in the
    /// background, once per key (a refresh lease keeps other processes from running theirs
    /// too). Further past it, within [`stale_if_error`](Entry::stale_if_error), the loader
    /// runs as on a miss, and if it fails the old value is returned ([`Status::Stale`])
    /// instead of the error. An invalidated entry is never served, stale or not.
    ///
    /// The loader owns what it uses (`move` it in, with cloned handles), since a refresh
    /// runs it on its own task.
    ///
    /// If the store fails, the loader's value is returned and not stored.
    pub async fn fetch<T, E, F, Fut>(self, loader: F) -> Result<Fetched<T>, LoadError<E>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
    {
        let span = debug_span!("aside.fetch", key = self.key);
        self.fetch_inner::<T, AsValue, E, _, _>(
            move || async move { loader().await.map(Tagged::from) },
        )
        .instrument(span)
        .await
    }

    /// Like [`fetch`](Entry::fetch), for values whose tags are known only once they are
    /// loaded (a product's category, a document's owner): the loader returns them with the
    /// value in a [`Tagged`]. Tags given with [`tags`](Entry::tags) apply too.
    ///
    /// The fill is fenced like any other: if any tag of the namespace is invalidated while the
    /// load runs, the value is returned but not stored (the engine cannot know whether the
    /// invalidated tag was one of these).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use aside::Tagged;
    /// let cache = aside::Cache::builder().build().unwrap();
    /// let load = || async { Ok::<_, std::io::Error>(Tagged::found("Lamp".to_string()).tag("category:c7")) };
    /// cache.entry("product:p1").fetch_tagged(load).await.unwrap();
    /// cache.invalidate_tag("category:c7").await.unwrap();
    /// assert_eq!(cache.get::<String>("product:p1").await.unwrap(), None);
    /// # });
    /// ```
    pub async fn fetch_tagged<T, E, F, Fut>(self, loader: F) -> Result<Fetched<T>, LoadError<E>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Tagged<T>, E>> + Send + 'static,
    {
        let span = debug_span!("aside.fetch", key = self.key);
        self.fetch_inner::<T, AsValue, E, F, Fut>(loader)
            .instrument(span)
            .await
    }

    /// [`fetch_tagged`](Entry::fetch_tagged) and [`fetch_encoded`](Entry::fetch_encoded) at once.
    pub async fn fetch_tagged_encoded<T, E, F, Fut>(
        self,
        loader: F,
    ) -> Result<Fetched<Bytes>, LoadError<E>>
    where
        T: Serialize + Send + 'static,
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Tagged<T>, E>> + Send + 'static,
    {
        let span = debug_span!("aside.fetch", key = self.key);
        self.fetch_inner::<T, AsBytes, E, F, Fut>(loader)
            .instrument(span)
            .await
    }

    /// Like [`fetch`](Entry::fetch), but hands back the value as the codec wrote it (JSON by
    /// default) instead of decoding it: a service that sends the value on as it is skips a
    /// decode and an encode per hit. The bytes are shared, not copied.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let cache = aside::Cache::builder().build().unwrap();
    /// let load = || async { Ok::<_, std::io::Error>(Some(vec![1, 2, 3])) };
    /// let first = cache.entry("k").fetch_encoded(load).await.unwrap();
    /// let again = cache.entry("k").fetch_encoded(load).await.unwrap();
    /// assert_eq!(first.value.as_deref(), Some(&b"[1,2,3]"[..]));
    /// assert_eq!((again.value, again.status), (first.value, aside::Status::Hit));
    /// # });
    /// ```
    pub async fn fetch_encoded<T, E, F, Fut>(
        self,
        loader: F,
    ) -> Result<Fetched<Bytes>, LoadError<E>>
    where
        T: Serialize + Send + 'static,
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
    {
        let span = debug_span!("aside.fetch", key = self.key);
        self.fetch_inner::<T, AsBytes, E, _, _>(
            move || async move { loader().await.map(Tagged::from) },
        )
        .instrument(span)
        .await
    }

    /// Every fetch, with its loader as a tagged one (a plain loader learns no tags).
    async fn fetch_inner<T, M, E, F, Fut>(self, loader: F) -> Result<Fetched<M::Out>, LoadError<E>>
    where
        T: Serialize + Send + 'static,
        M: Mode<T> + 'static,
        M::Out: Send + 'static,
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Tagged<T>, E>> + Send + 'static,
    {
        let cache = self.cache;
        let inner = &cache.inner;
        let m = &inner.metrics;
        let t = self.ttls()?;
        let k = inner.ns.entry(self.key)?;
        // Built before the read when the store reads with them or tags are named (which
        // validates them), else only when a miss or a refresh needs them.
        let lazy = self.tags.is_empty() && !inner.store.reads_need_stamps();
        let mut stamps = if lazy {
            Vec::new()
        } else {
            inner.ns.stamps_for(self.key, &self.tags)?
        };
        // An expired entry still within stale-if-error: served if the loader fails.
        let mut fallback = None;
        // The freshness of an expired entry to be refreshed in place.
        let mut expired = None;

        match cache.read(&k, &stamps).await {
            Ok(Lookup::Hit(p)) => {
                // An undecodable entry was removed by decode: load below.
                if let Some((d, fresh_until)) = cache.decode_as::<T, M>(&k, &p).await {
                    match cache.age(fresh_until, t.stale_while_revalidate, t.stale_if_error) {
                        Age::Fresh => {
                            m.hits.increment(1);
                            return Ok(hit(d));
                        }
                        Age::Stale => {
                            m.stale.increment(1);
                            let until = fresh_until.unwrap_or_default();
                            if lazy {
                                stamps = inner.ns.stamps_for(self.key, &self.tags)?;
                            }
                            cache.revalidate::<T, M, E, F, Fut>(k, until, stamps, t, loader);
                            return Ok(stale(d));
                        }
                        Age::Expired { fallback: keep } => {
                            expired = fresh_until;
                            fallback = keep.then_some(d);
                        }
                    }
                }
            }
            Ok(Lookup::Corrupt) => cache.discard(&k, "not a record").await,
            _ => {}
        }
        m.misses.increment(1);
        if lazy {
            stamps = inner.ns.stamps_for(self.key, &self.tags)?;
        }

        // The miss path is a future of its own, boxed: a hit's future (which callers box and
        // move around) stays small.
        Box::pin(async move {
            let mut loader = Some(loader);
            for _ in 0..4 {
                let leader = match inner.flights.join(&k) {
                    Role::Leader(l) => l,
                    Role::Follower(rx) => match flight::wait(rx).await {
                        Some(Shared::Value(p)) => match cache.decode_as::<T, M>(&k, &p).await {
                            Some((d, _)) => return Ok(loaded(d)),
                            None => continue,
                        },
                        Some(Shared::Absent) => return Ok(loaded(Decoded::Absent)),
                        Some(Shared::Failed(e)) => {
                            if let Some(d) = fallback.take() {
                                m.stale.increment(1);
                                return Ok(stale(d));
                            }
                            match e.downcast::<E>() {
                                Ok(e) => return Err(LoadError::Loader(e)),
                                Err(_) => continue,
                            }
                        }
                        Some(Shared::Unshared) | None => continue,
                    },
                };
                let keep = t.keep(inner.settings.lease);
                // Like every read, a claim waits until pending invalidations are applied.
                let ready = cache.ready().await;
                if let Some(until) = expired.take()
                    && ready.is_ok()
                {
                    // Refresh in place, the expired entry staying readable meanwhile; if another
                    // process is refreshing it (or it is gone), claim as on a miss below.
                    let clock = inner.ns.clock();
                    let refresh = inner.store.claim_refresh(
                        &k,
                        until,
                        &stamps,
                        &clock,
                        inner.settings.lease,
                        keep,
                    );
                    if let Ok(Some(lease)) = cache.call(Op::Claim, refresh).await
                        && let Some(loader) = loader.take()
                    {
                        return cache
                            .load::<T, M, E, F, Fut>(leader, &k, Some(lease), t, loader, fallback)
                            .await;
                    }
                }
                let claim = match ready {
                    Ok(()) => {
                        cache
                            .call(
                                Op::Claim,
                                inner.store.claim(
                                    &k,
                                    &stamps,
                                    &inner.ns.clock(),
                                    inner.settings.lease,
                                    keep,
                                ),
                            )
                            .await
                    }
                    Err(e) => Err(e),
                };
                // An entry found while claiming (filled meanwhile, or by the lease holder we
                // waited for) is shared with this flight's followers as is.
                let (found, lease) = match claim {
                    Ok(Claim::Hit(p)) => (Some((p, Status::Hit)), None),
                    Ok(Claim::Pending) => match cache.wait_for_fill(&k, &stamps).await {
                        Waited::Filled(p) => (Some((p, Status::Miss)), None),
                        Waited::Vacant => continue,
                        Waited::TimedOut => (None, None),
                    },
                    Ok(Claim::Granted(lease)) => (None, Some(lease)),
                    Err(_) => (None, None),
                };
                if let Some((p, status)) = found {
                    let Some((d, fresh_until)) = cache.decode_as::<T, M>(&k, &p).await else {
                        continue;
                    };
                    leader.finish(match &d {
                        Decoded::Value(_) => Shared::Value(p),
                        Decoded::Absent => Shared::Absent,
                    });
                    // Still past its freshness: another process holds its refresh lease.
                    let status = match cache.age(fresh_until, Duration::ZERO, Duration::ZERO) {
                        Age::Fresh => status,
                        _ => {
                            m.stale.increment(1);
                            Status::Stale
                        }
                    };
                    return Ok(Fetched { status, ..hit(d) });
                }
                let Some(loader) = loader.take() else { break };
                return cache
                    .load::<T, M, E, F, Fut>(leader, &k, lease, t, loader, fallback)
                    .await;
            }
            // Retries exhausted (entries kept turning out undecodable, or leaders kept vanishing):
            // load without the store.
            match loader.take() {
                Some(loader) => {
                    let value = match (run(cache, loader).await, fallback) {
                        (Ok(v), _) => v.value,
                        (Err(LoadError::Loader(_)), Some(d)) => {
                            m.stale.increment(1);
                            return Ok(stale(d));
                        }
                        (Err(e), _) => return Err(e),
                    };
                    let value = match value {
                        Some(v) => Some(cache.output::<T, M>(v).map_err(LoadError::Cache)?),
                        None => None,
                    };
                    Ok(Fetched {
                        value,
                        status: Status::Miss,
                    })
                }
                None => Err(LoadError::Cache(Error::Backend(StoreError::Protocol(
                    "load could not be completed".into(),
                )))),
            }
        })
        .await
    }
}

fn hit<T>(d: Decoded<T>) -> Fetched<T> {
    Fetched {
        value: match d {
            Decoded::Value(v) => Some(v),
            Decoded::Absent => None,
        },
        status: Status::Hit,
    }
}

fn stale<T>(d: Decoded<T>) -> Fetched<T> {
    Fetched {
        status: Status::Stale,
        ..hit(d)
    }
}

fn loaded<T>(d: Decoded<T>) -> Fetched<T> {
    Fetched {
        status: Status::Miss,
        ..hit(d)
    }
}

async fn run<C: Codec, T, E, F, Fut>(cache: &Cache<C>, loader: F) -> Result<Tagged<T>, LoadError<E>>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Tagged<T>, E>>,
{
    let m = &cache.inner.metrics;
    m.loads.increment(1);
    let start = Instant::now();
    let r = loader().await;
    m.load_seconds.record(start.elapsed().as_secs_f64());
    r.map_err(|e| {
        m.load_errors.increment(1);
        LoadError::Loader(Arc::new(e))
    })
}

impl<C: Codec> Cache<C> {
    /// Validates tags learnt from a loaded value; drops those the lease already stamps.
    fn late_tags(&self, names: Vec<String>, lease: Option<&Lease>) -> Result<Vec<TagKey>> {
        let mut keys: Vec<TagKey> = Vec::with_capacity(names.len());
        for n in &names {
            let k = self.inner.ns.tag(n)?;
            let stamped = lease.is_some_and(|l| l.stamps.iter().any(|(s, _)| *s == k));
            if !stamped && !keys.contains(&k) {
                keys.push(k);
            }
        }
        Ok(keys)
    }

    /// The caller's form of a loaded value: itself, or its encoding.
    fn output<T: Serialize, M: Mode<T>>(&self, value: T) -> Result<M::Out> {
        if !M::ENCODED {
            return Ok(M::loaded(value, Bytes::new()));
        }
        let p = self.encode(&value, None)?;
        let body = match envelope::open(&p, self.inner.settings.schema) {
            Ok(envelope::Opened {
                body: Body::Value(b),
                ..
            }) => p.slice(p.len() - b.len()..),
            _ => Bytes::new(),
        };
        Ok(M::loaded(value, body))
    }

    /// Refreshes a stale entry on its own task, unless a load of it is already running here.
    fn revalidate<T, M, E, F, Fut>(
        &self,
        k: EntryKey,
        fresh_until: u64,
        stamps: Vec<TagKey>,
        t: Ttls,
        loader: F,
    ) where
        T: Serialize + Send + 'static,
        M: Mode<T> + 'static,
        M::Out: Send + 'static,
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Tagged<T>, E>> + Send + 'static,
    {
        if self.inner.flights.running(&k) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let cache = self.clone();
        let span = debug_span!("aside.refresh", key = %k);
        rt.spawn(
            async move {
                let inner = &cache.inner;
                let Role::Leader(leader) = inner.flights.join(&k) else {
                    return;
                };
                if cache.ready().await.is_err() {
                    return;
                }
                let keep = t.keep(inner.settings.lease);
                let clock = inner.ns.clock();
                let claim = inner.store.claim_refresh(
                    &k,
                    fresh_until,
                    &stamps,
                    &clock,
                    inner.settings.lease,
                    keep,
                );
                // Not granted: another process refreshes it, or it is gone (the next read
                // loads it). Dropping the leader lets anyone who joined meanwhile load.
                let Ok(Some(lease)) = cache.call(Op::Claim, claim).await else {
                    return;
                };
                let r = cache
                    .load::<T, M, E, F, Fut>(leader, &k, Some(lease), t, loader, None)
                    .await;
                if r.is_err() {
                    debug!(key = %k, "background refresh failed; the stale value stays");
                }
            }
            .instrument(span),
        );
    }

    #[allow(clippy::too_many_arguments)]
    async fn load<T, M, E, F, Fut>(
        &self,
        leader: flight::Leader<'_>,
        k: &EntryKey,
        lease: Option<Lease>,
        t: Ttls,
        loader: F,
        fallback: Option<Decoded<M::Out>>,
    ) -> Result<Fetched<M::Out>, LoadError<E>>
    where
        M: Mode<T>,
        T: Serialize + Send,
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Tagged<T>, E>>,
    {
        let inner = &self.inner;
        let Tagged { value, tags } = match run(self, loader).await {
            Ok(v) => v,
            Err(LoadError::Loader(e)) => {
                if let Some(lease) = &lease {
                    let _ = self.call(Op::Release, inner.store.release(k, lease)).await;
                }
                leader.finish(Shared::Failed(e.clone() as Arc<dyn Any + Send + Sync>));
                if let Some(d) = fallback {
                    inner.metrics.stale.increment(1);
                    warn!(key = %k, "loader failed; serving the stale value");
                    return Ok(stale(d));
                }
                return Err(LoadError::Loader(e));
            }
            Err(e) => return Err(e),
        };
        let late = match self.late_tags(tags, lease.as_ref()) {
            Ok(late) => late,
            Err(e) => {
                if let Some(lease) = &lease {
                    let _ = self.call(Op::Release, inner.store.release(k, lease)).await;
                }
                leader.finish(Shared::Unshared);
                return Err(LoadError::Cache(e));
            }
        };
        let mut body = Bytes::new();
        let ttl = if value.is_some() { t.ttl } else { t.negative };
        let (ttl, fresh_until) = self.lifetime(ttl, t.grace());
        let (payload, shared) = match &value {
            Some(v) => match self.encode(v, fresh_until) {
                Ok(p) => {
                    if let Ok(envelope::Opened {
                        body: Body::Value(b),
                        ..
                    }) = envelope::open(&p, inner.settings.schema)
                    {
                        body = p.slice(p.len() - b.len()..);
                    }
                    (Some(p.clone()), Shared::Value(p))
                }
                Err(e) => {
                    warn!(key = %k, error = %e, "loaded value could not be encoded; not cached");
                    if M::ENCODED {
                        if let Some(lease) = &lease {
                            let _ = self.call(Op::Release, inner.store.release(k, lease)).await;
                        }
                        leader.finish(Shared::Unshared);
                        return Err(LoadError::Cache(e));
                    }
                    (None, Shared::Unshared)
                }
            },
            None => (
                Some(envelope::absent(inner.settings.schema, fresh_until)),
                Shared::Absent,
            ),
        };
        if let Some(lease) = &lease {
            match payload {
                Some(p) => {
                    let keep = ttl * 2 + inner.settings.lease;
                    match self
                        .call(Op::Fill, inner.store.fill(k, lease, &late, p, ttl, keep))
                        .await
                    {
                        Ok(true) => {}
                        Ok(false) => {
                            inner.metrics.fills_refused.increment(1);
                            debug!(key = %k, "fill refused: the key was invalidated during the load");
                        }
                        Err(_) => {}
                    }
                }
                None => {
                    let _ = self.call(Op::Release, inner.store.release(k, lease)).await;
                }
            }
        }
        // Shared after the fill, so callers arriving now find the entry instead of a lease.
        leader.finish(shared);
        Ok(Fetched {
            value: value.map(|v| M::loaded(v, body)),
            status: Status::Miss,
        })
    }
}
