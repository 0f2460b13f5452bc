//! Two tiers: a bounded in-process L1 in front of the Redis store (L2), kept coherent across
//! instances by invalidation messages on a Redis pub/sub channel.
//!
//! # Reads
//! A read is answered by the L1 when it holds a valid copy, else by the L2 (and a hit is then
//! copied into the L1). A copy is valid while
//! - the invalidation channel is *live* (see below),
//! - nothing it depends on was invalidated since the L2 read that produced it began,
//! - and it has not outlived the L2 entry it was read from (its remaining TTL, read with it)
//!   nor the L1's own TTL.
//!
//! "Nothing it depends on was invalidated" is checked without scanning, by a table of
//! generation counters (`generations.rs`); tags are coarser than keys and prefixes there: an
//! invalidation of any tag voids the namespace's L1 copies (the L2 entries stay).
//!
//! # Writes and invalidations
//! `set`, `delete` and `bump` go to the L2 first, then void the local copies, then publish a
//! message naming the keys or version keys on the channel `<namespace>:l1`; every other
//! instance voids its copies when it receives it (its own echo is ignored). A write whose
//! message could not be published fails like a write Redis did not take: the engine keeps it
//! and applies it again (message included) when Redis answers. Leases (`claim`, `fill`,
//! `release`) are the L2's alone: the L1 never holds a placeholder.
//!
//! # The bound
//! A background task (`subscriber.rs`) holds the subscription and sends a `PING` on it every
//! quarter of the bound (default 100 ms). Redis answers a `PING` after every message published before it, so
//! a reply to a ping sent at `t` proves that every invalidation acknowledged before `t` has
//! been received and applied; the L1 then serves until `t + bound`. If the replies stop (Redis
//! paused, connection lost, network partition), the L1 stops serving within the bound and
//! every read goes to Redis; when the subscription is established again the L1 is voided
//! whole, since messages may have been missed. Hence:
//!
//! - on the instance that wrote, a read after the write returns never the old value;
//! - on any other instance, a read that starts more than `bound` after a write was
//!   acknowledged does not return the old value either (typically it converges in well under
//!   a millisecond on a LAN: the time for Redis to deliver the message).
//!
//! Instances that write to a namespace must all publish (use an L1, or this store without
//! reading from its L1): a write made through a plain [`RedisStore`] is not announced, and
//! L1 copies elsewhere then live until their TTL.

mod config;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing;
mod generations;
mod many;

pub use config::L1Config;
mod subscriber;

use super::client::{self, Link, bounded};
use super::{Claim, ClaimTerms, Kind, Lease, Lifetime, Lookup, RedisConfig, RedisStore, Store};
use crate::error::{BuildError, StoreError};
use crate::key::{self, EntryKey, Namespace, TagKey};
use crate::metrics::L1Metrics;
use async_trait::async_trait;
use bytes::Bytes;
use generations::{Generations, Snapshot};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};
use subscriber::Subscriber;
use tracing::{debug, warn};

/// A copy held by the L1.
struct L1Copy {
    payload: Bytes,
    snap: Snapshot,
    expires: Instant,
}

/// What the store handles and the subscriber task share.
struct Shared {
    l1: moka::sync::Cache<EntryKey, Arc<L1Copy>>,
    gens: Generations,
    /// Until when (ns since `origin`) the L1 may serve; 0 while the channel is not live.
    live_until: AtomicU64,
    origin: Instant,
    bound: Duration,
    ttl: Duration,
    /// This instance's id in the messages, to skip its own.
    id: String,
    metrics: L1Metrics,
}

impl Shared {
    /// The state of an instance `id` with no subscriber: messages are given to
    /// [`Shared::receive`] by hand.
    #[cfg(any(test, feature = "fuzzing"))]
    fn detached(id: &str) -> Self {
        Shared {
            l1: moka::sync::Cache::new(10),
            gens: Generations::new(),
            live_until: AtomicU64::new(0),
            origin: Instant::now(),
            bound: Duration::from_millis(100),
            ttl: Duration::from_secs(10),
            id: id.into(),
            metrics: L1Metrics::new("t"),
        }
    }

    fn now(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    fn live(&self) -> bool {
        self.now() < self.live_until.load(SeqCst)
    }

    /// Every invalidation acknowledged before `sent` has been applied.
    fn confirm(&self, sent: Instant) {
        let until = (sent + self.bound).duration_since(self.origin).as_nanos() as u64;
        self.live_until.fetch_max(until, SeqCst);
        self.metrics.live.set(1.0);
    }

    /// The channel is not live (any more): stop serving and void everything.
    fn lost(&self) {
        self.live_until.store(0, SeqCst);
        self.metrics.live.set(0.0);
        self.resync();
    }

    /// Voids every copy: a new era, then the memory freed.
    fn resync(&self) {
        self.gens.new_era();
        self.l1.invalidate_all();
        self.metrics.resyncs.increment(1);
    }

    fn void_keys(&self, keys: &[EntryKey]) {
        for k in keys {
            self.gens.void(k.as_str());
            self.l1.invalidate(k);
        }
    }

    /// Applies a message: `<origin> k <entry key>...` or `<origin> s <version key>...`.
    /// Anything not understood voids the whole L1 (it is only ever too careful).
    fn receive(&self, payload: &[u8]) {
        let Ok(text) = std::str::from_utf8(payload) else {
            return self.not_understood(payload);
        };
        let mut parts = text.split(' ');
        let (Some(origin), Some(op)) = (parts.next(), parts.next()) else {
            return self.not_understood(payload);
        };
        if origin == self.id {
            return;
        }
        self.metrics.invalidations.increment(1);
        let understood = match op {
            "k" => {
                let mut ok = true;
                for k in parts {
                    match key::layout(k) {
                        Some((_, b'e')) => self.gens.void(k),
                        _ => ok = false,
                    }
                }
                ok
            }
            "s" => self.gens.void_stamps(parts),
            _ => false,
        };
        if !understood {
            self.not_understood(payload);
        }
    }

    fn not_understood(&self, payload: &[u8]) {
        warn!(
            message = %String::from_utf8_lossy(&payload[..payload.len().min(200)]),
            "invalidation message not understood; the L1 is voided"
        );
        self.resync();
    }
}

/// A [`Store`] with a bounded in-process L1 in front of a Redis store, coherent across
/// instances (see the [module documentation](self) for the protocol and its bound).
///
/// Usually made by the builder:
///
/// ```no_run
/// use std::time::Duration;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let cache = aside::Cache::builder()
///     .namespace("catalog")
///     .redis("redis://127.0.0.1:6379")
///     .l1(10_000, Duration::from_secs(10)) // 10,000 copies, each kept at most 10 s
///     .build()
///     .expect("valid settings");
/// # });
/// ```
///
/// Clones share everything. The subscriber task ends when the last clone is dropped.
#[derive(Clone)]
pub struct TieredStore {
    inner: Arc<Inner>,
}

struct Inner {
    l2: Arc<dyn Store>,
    shared: Arc<Shared>,
    /// For `PUBLISH` and `PTTL`.
    bus: Link,
    channel: String,
    timeout: Duration,
    capacity: u64,
    /// Dropped with the last handle: ends the subscriber task.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl fmt::Debug for TieredStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredStore")
            .field("l2", &self.inner.l2)
            .field("channel", &self.inner.channel)
            .field("capacity", &self.inner.capacity)
            .field("ttl", &self.inner.shared.ttl)
            .field("bound", &self.inner.shared.bound)
            .field("live", &self.is_live())
            .finish()
    }
}

impl TieredStore {
    /// An L1 in front of a new [`RedisStore`] on `redis`, publishing and subscribing on the
    /// channel `<namespace>:l1` (the namespace also labels the L1's metrics). Must be called
    /// inside a Tokio runtime: the subscriber task starts at once, in the background (the
    /// call does not wait for Redis). Fails only on invalid settings.
    ///
    /// ```no_run
    /// use aside::store::{L1Config, RedisConfig, TieredStore};
    /// use std::{sync::Arc, time::Duration};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let redis = RedisConfig::new("redis://127.0.0.1:6379");
    /// let store = TieredStore::new("shop", &redis, &L1Config::new(1000, Duration::from_secs(5)))
    ///     .expect("valid settings");
    /// let cache = aside::Cache::builder().namespace("shop").store(Arc::new(store)).build();
    /// assert!(cache.is_ok());
    /// # });
    /// ```
    pub fn new(namespace: &str, redis: &RedisConfig, l1: &L1Config) -> Result<Self, BuildError> {
        let l2 = RedisStore::new(redis)?;
        Self::over(Arc::new(l2), namespace, redis, l1)
    }

    /// An L1 in front of any store `l2` that keeps its data in the Redis reached by `redis`
    /// (for instance a [`RedisStore`] wrapped for instrumentation): the channel and the
    /// remaining TTLs of entries are on that Redis.
    pub fn over(
        l2: Arc<dyn Store>,
        namespace: &str,
        redis: &RedisConfig,
        l1: &L1Config,
    ) -> Result<Self, BuildError> {
        l1.check()?;
        let ns = Namespace::new(namespace).map_err(BuildError::Namespace)?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(BuildError::Invalid {
                name: "l1",
                reason: "must be built inside a Tokio runtime".into(),
            });
        }
        let client = client::open(&redis.url, redis.tls_ca_file.as_deref())?;
        let bus = Link::new(client.clone(), redis.connect_timeout)?;
        let shared = Arc::new(Shared {
            l1: moka::sync::Cache::builder()
                .max_capacity(l1.capacity)
                .time_to_live(l1.ttl)
                .build(),
            gens: Generations::new(),
            live_until: AtomicU64::new(0),
            origin: Instant::now(),
            bound: l1.bound,
            ttl: l1.ttl,
            id: format!("{:016x}", rand::random::<u64>()),
            metrics: L1Metrics::new(ns.as_str()),
        });
        shared.metrics.live.set(0.0);
        let channel = format!("{}:l1", ns.as_str());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let subscriber = Subscriber {
            shared: shared.clone(),
            client,
            channel: channel.clone(),
            // A reply later than this means the connection is gone (the L1 stopped serving
            // long before, at the bound).
            patience: redis.connect_timeout.max(l1.bound),
            beat: (l1.bound / 4).max(Duration::from_millis(2)),
        };
        tokio::spawn(async move {
            tokio::select! {
                _ = subscriber.run() => {}
                _ = stopped => debug!("L1 subscriber stopped"),
            }
        });
        Ok(Self {
            inner: Arc::new(Inner {
                l2,
                shared,
                bus,
                channel,
                timeout: redis.command_timeout,
                capacity: l1.capacity,
                _stop: stop,
            }),
        })
    }

    /// Whether the L1 serves now: its invalidation channel was confirmed live within the bound.
    pub fn is_live(&self) -> bool {
        self.inner.shared.live()
    }

    /// The pub/sub channel of the invalidation messages.
    pub fn channel(&self) -> &str {
        &self.inner.channel
    }

    async fn bounded<T>(
        &self,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let r = bounded(self.inner.timeout, fut).await;
        self.inner.bus.record(&r);
        r
    }

    /// Tells the other instances: `op` is `k` (entry keys) or `s` (version keys).
    async fn publish<'a>(
        &self,
        op: char,
        names: impl Iterator<Item = &'a str>,
    ) -> Result<(), StoreError> {
        let mut msg = format!("{} {op}", self.inner.shared.id);
        for n in names {
            msg.push(' ');
            msg.push_str(n);
        }
        let mut conn = self.inner.bus.get();
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(&self.inner.channel).arg(msg);
        match self.bounded(cmd.query_async::<i64>(&mut conn)).await {
            // A connection found broken (Redis restarted, the connection was killed) is
            // made again on the next command: once more, so the message is not lost to it.
            Err(StoreError::Backend(_)) => {
                let _: i64 = self.bounded(cmd.query_async(&mut conn)).await?;
                Ok(())
            }
            r => r.map(drop),
        }
    }

    /// The remaining TTL of an entry in the L2, in milliseconds (0 or less: none).
    async fn pttl(&self, key: &EntryKey) -> Result<i64, StoreError> {
        let mut conn = self.inner.bus.get();
        let mut cmd = redis::cmd("PTTL");
        cmd.arg(key.as_str());
        self.bounded(cmd.query_async(&mut conn)).await
    }
}

#[async_trait]
impl Store for TieredStore {
    fn kind(&self) -> Kind {
        self.inner.l2.kind()
    }

    async fn get(&self, key: &EntryKey, stamps: &[TagKey]) -> Result<Lookup, StoreError> {
        let s = &self.inner.shared;
        let l2 = &self.inner.l2;
        if !s.live() {
            s.metrics.bypassed.increment(1);
            return l2.get(key, stamps).await;
        }
        if let Some(c) = s.l1.get(key) {
            if c.expires > Instant::now() && s.gens.current(&c.snap) {
                s.metrics.hits.increment(1);
                return Ok(Lookup::Hit(c.payload.clone()));
            }
            s.l1.invalidate(key);
        }
        s.metrics.misses.increment(1);
        let Some(deps) = s.gens.deps(key, stamps) else {
            return l2.get(key, stamps).await;
        };
        // Before the L2 read: an invalidation from now on refuses this copy.
        let snap = s.gens.snapshot(deps);
        let start = Instant::now();
        let (read, ttl) = tokio::join!(l2.get(key, stamps), self.pttl(key));
        if let (Ok(Lookup::Hit(p)), Ok(ms)) = (&read, ttl)
            && ms > 0
            && s.gens.current(&snap)
        {
            // `start` is before Redis read the TTL: the copy never outlives the entry.
            let life = Duration::from_millis(ms as u64).min(s.ttl);
            let copy = L1Copy {
                payload: p.clone(),
                snap,
                expires: start + life,
            };
            s.l1.insert(key.clone(), Arc::new(copy));
        }
        read
    }

    /// Valid L1 copies, then the rest in one batch read of the L2 (see `many.rs`).
    async fn get_many(
        &self,
        keys: &[EntryKey],
        stamps: &[Vec<TagKey>],
    ) -> Result<Vec<Lookup>, StoreError> {
        self.read_many(keys, stamps).await
    }

    async fn claim(
        &self,
        key: &EntryKey,
        stamps: &[TagKey],
        clocks: &[TagKey],
        terms: ClaimTerms,
    ) -> Result<Claim, StoreError> {
        self.inner.l2.claim(key, stamps, clocks, terms).await
    }

    async fn claim_refresh(
        &self,
        key: &EntryKey,
        fresh_until: u64,
        stamps: &[TagKey],
        clocks: &[TagKey],
        terms: ClaimTerms,
    ) -> Result<Option<Lease>, StoreError> {
        self.inner
            .l2
            .claim_refresh(key, fresh_until, stamps, clocks, terms)
            .await
    }

    /// A fill under a placeholder writes only where no valid entry was (its lease stood in
    /// the entry's place), so there is no copy to void here or elsewhere. A refresh replaces
    /// a valid (stale) entry in place: its copies are voided like after a `set`.
    async fn fill(
        &self,
        key: &EntryKey,
        lease: &Lease,
        learnt: &[TagKey],
        payload: Bytes,
        life: Lifetime,
    ) -> Result<bool, StoreError> {
        let written = self.inner.l2.fill(key, lease, learnt, payload, life).await;
        if lease.refresh && matches!(written, Ok(true)) {
            self.inner.shared.void_keys(std::slice::from_ref(key));
            self.publish('k', std::iter::once(key.as_str())).await?;
        }
        written
    }

    async fn release(&self, key: &EntryKey, lease: &Lease) -> Result<(), StoreError> {
        self.inner.l2.release(key, lease).await
    }

    async fn set(
        &self,
        key: &EntryKey,
        stamps: &[TagKey],
        payload: Bytes,
        life: Lifetime,
    ) -> Result<(), StoreError> {
        let r = self.inner.l2.set(key, stamps, payload, life).await;
        // After the L2 write: a read that began before it cannot keep what it read.
        self.inner.shared.void_keys(std::slice::from_ref(key));
        r?;
        self.publish('k', std::iter::once(key.as_str())).await
    }

    async fn delete(&self, keys: &[EntryKey]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let r = self.inner.l2.delete(keys).await;
        self.inner.shared.void_keys(keys);
        r?;
        self.publish('k', keys.iter().map(EntryKey::as_str)).await
    }

    async fn bump(&self, stamps: &[TagKey]) -> Result<(), StoreError> {
        if stamps.is_empty() {
            return Ok(());
        }
        let r = self.inner.l2.bump(stamps).await;
        if !self
            .inner
            .shared
            .gens
            .void_stamps(stamps.iter().map(TagKey::as_str))
        {
            self.inner.shared.resync();
        }
        r?;
        self.publish('s', stamps.iter().map(TagKey::as_str)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.l2.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Shared::detached("me")
    }

    fn ns() -> Namespace {
        Namespace::new("app").unwrap()
    }

    #[test]
    fn snapshots_are_voided_by_what_they_depend_on_only() {
        let s = shared();
        let ns = ns();
        let k = ns.entry("products:list:1").unwrap();
        let stamps = ns.stamps_for("products:list:1", &["x"]).unwrap();
        let snap = || s.gens.snapshot(s.gens.deps(&k, &stamps).unwrap());
        let cases: [(&str, &[u8]); 7] = [
            ("key", b"o k app:e:products:list:1"),
            ("prefix", b"o s app:p:products:list:"),
            ("epoch", b"o s app:g"),
            ("a named tag", b"o s app:t:x"),
            ("an unnamed tag", b"o s app:t:learnt"),
            ("garbage", b"o q what"),
            ("not utf-8", b"\xff\xfe"),
        ];
        for (what, msg) in cases {
            let before = snap();
            assert!(s.gens.current(&before));
            s.receive(msg);
            assert!(!s.gens.current(&before), "{what} voids it");
        }
        let before = snap();
        for msg in [
            &b"o k app:e:products:list:2"[..],
            b"o s app:p:other:",
            b"o s other:t:x",
            b"me s app:g",
        ] {
            s.receive(msg);
        }
        assert!(
            s.gens.current(&before),
            "others' keys, prefixes, namespaces and our own echo leave it"
        );
        s.lost();
        assert!(!s.gens.current(&before), "a lost channel voids it");
    }

    #[test]
    fn the_l1_serves_only_within_the_bound_of_a_confirmation() {
        let s = shared();
        assert!(!s.live(), "not before the first confirmation");
        s.confirm(Instant::now());
        assert!(s.live());
        s.confirm(Instant::now() - Duration::from_millis(150));
        assert!(s.live(), "an older confirmation never shortens a newer one");
        s.lost();
        assert!(!s.live());
        s.confirm(Instant::now() - Duration::from_millis(150));
        assert!(
            !s.live(),
            "a confirmation older than the bound does not count"
        );
    }
}
