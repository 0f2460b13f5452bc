//! The L1 (`TieredStore`): coherence across instances sharing one private Redis, what it
//! saves, and what it does when its invalidation channel is not live.
#![allow(clippy::unwrap_used)]

use aside::store::{L1Config, Lookup, RedisConfig, RedisStore, Store, TieredStore};
use aside::{Cache, CacheBuilder};
use async_trait::async_trait;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::{TestRedis, eventually};
use tokio::sync::{Mutex, oneshot};

const NS: &str = "shop";
/// Far longer than any deadline below: a copy that stops being served did so because it
/// was invalidated, not because it expired.
const L1_TTL: Duration = Duration::from_secs(60);

fn builder(r: &TestRedis) -> CacheBuilder {
    Cache::builder()
        .namespace(NS)
        .redis_config(RedisConfig {
            command_timeout: Duration::from_millis(100),
            ..RedisConfig::new(r.url())
        })
        .breaker(3, Duration::from_millis(100))
}

/// A cache with an L1 (made by the builder), and the metrics it registers.
fn instance(r: &TestRedis) -> (Cache, Meter) {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let c =
        metrics::with_local_recorder(&recorder, || builder(r).l1(1000, L1_TTL).build().unwrap());
    (c, Meter::new(snap))
}

/// A cache over an explicit `TieredStore`, to look at it, and the L1's metrics.
fn explicit(r: &TestRedis, l2: Option<Arc<dyn Store>>) -> (Cache, TieredStore, Meter) {
    let config = RedisConfig {
        command_timeout: Duration::from_millis(100),
        ..RedisConfig::new(r.url())
    };
    let l1 = L1Config::new(1000, L1_TTL);
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let store = metrics::with_local_recorder(&recorder, || match l2 {
        Some(l2) => TieredStore::over(l2, NS, &config, &l1).unwrap(),
        None => TieredStore::new(NS, &config, &l1).unwrap(),
    });
    let c = builder(r).store(Arc::new(store.clone())).build().unwrap();
    (c, store, Meter::new(snap))
}

/// Counter totals (a snapshot of the debugging recorder drains its counters: add them up).
#[derive(Default)]
struct Meter {
    snap: Option<Snapshotter>,
    totals: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl Meter {
    fn new(snap: Snapshotter) -> Self {
        Self {
            snap: Some(snap),
            ..Self::default()
        }
    }

    fn get(&self, name: &str) -> u64 {
        let mut totals = self.totals.lock().unwrap();
        for (k, _, _, v) in self.snap.as_ref().unwrap().snapshot().into_vec() {
            if let DebugValue::Counter(n) = v {
                *totals.entry(k.key().name().to_owned()).or_default() += n;
            }
        }
        totals.get(name).copied().unwrap_or(0)
    }
}

/// Reads `key` until one read is answered by the L1 (so it is warm and serving).
async fn warm(c: &Cache, m: &Meter, key: &str) {
    let served = eventually(Duration::from_secs(5), || async {
        let before = m.get("aside_l1_hits_total");
        c.get::<String>(key).await.unwrap();
        m.get("aside_l1_hits_total") > before
    })
    .await;
    assert!(served, "{key} was never served by the L1");
}

/// Polls `c.get(key)` as fast as it answers until it is not `old`; the time it took.
async fn converge(c: &Cache, key: &str, old: &str) -> Duration {
    let start = Instant::now();
    loop {
        if c.get::<String>(key).await.unwrap().as_deref() != Some(old) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{key} still {old:?} after 2 s (the L1 TTL is {L1_TTL:?})"
        );
        tokio::task::yield_now().await;
    }
}

/// Reads of entries that reached Redis: `GET` (versions held in process) or `MGET`.
async fn entry_reads(r: &TestRedis) -> u64 {
    commandstat(r, "get").await + commandstat(r, "mget").await
}

async fn commandstat(r: &TestRedis, cmd: &str) -> u64 {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut r.conn().await)
        .await
        .unwrap();
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_one_instance_reach_the_others_l1_within_the_bound() {
    let r = TestRedis::start();
    let (a, snap_a) = instance(&r);
    let (b, snap_b) = instance(&r);
    let mut times = Vec::new();
    for (i, how) in ["set", "del", "tag", "prefix", "all"]
        .into_iter()
        .enumerate()
    {
        let key = format!("products:list:{i}");
        let old = format!("old {i}");
        a.entry(&key).tag("category:c1").set(&old).await.unwrap();
        warm(&a, &snap_a, &key).await;
        warm(&b, &snap_b, &key).await;
        match how {
            "set" => a.set(&key, "new").await.unwrap(),
            "del" => drop(a.del([&key]).await.unwrap()),
            "tag" => drop(a.invalidate_tag("category:c1").await.unwrap()),
            "prefix" => drop(a.invalidate_prefix("products:list:").await.unwrap()),
            "all" => drop(a.invalidate_all().await),
            _ => unreachable!(),
        }
        // The writer's own L1: at once.
        let now = a.get::<String>(&key).await.unwrap();
        assert_ne!(now.as_deref(), Some(old.as_str()), "{how}: the writer");
        // Another instance: once the message is there.
        let took = converge(&b, &key, &old).await;
        times.push((how, took));
    }
    eprintln!("convergence on the other instance: {times:?}");
    assert!(snap_b.get("aside_l1_invalidations_total") >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_hits_do_not_reach_redis() {
    let r = TestRedis::start();
    let (c, snap) = instance(&r);
    c.set("product:p1", "Lamp").await.unwrap();
    warm(&c, &snap, "product:p1").await;
    let (reads, pttls) = (entry_reads(&r).await, commandstat(&r, "pttl").await);
    let hits = snap.get("aside_l1_hits_total");
    let start = Instant::now();
    for _ in 0..1000 {
        assert_eq!(
            c.get::<String>("product:p1").await.unwrap().as_deref(),
            Some("Lamp")
        );
    }
    let l1 = start.elapsed() / 1000;
    assert_eq!(snap.get("aside_l1_hits_total") - hits, 1000);
    assert_eq!(entry_reads(&r).await, reads, "no read reached Redis");
    assert_eq!(commandstat(&r, "pttl").await, pttls);
    // For comparison, the same reads without an L1.
    let plain = builder(&r).build().unwrap();
    let start = Instant::now();
    for _ in 0..1000 {
        plain.get::<String>("product:p1").await.unwrap();
    }
    let l2 = start.elapsed() / 1000;
    assert!(entry_reads(&r).await >= reads + 1000);
    eprintln!("mean read: {l1:?} from the L1, {l2:?} from Redis");
}

/// An L2 that holds one read of `key` between its reply and its return, as a slow network
/// would: the read has seen the old value; an invalidation lands before the value is back.
#[derive(Debug)]
struct Held {
    inner: RedisStore,
    gate: Mutex<Option<Gate>>,
}

/// The entry key held, the signal that it was read, and the permission to return.
type Gate = (String, oneshot::Sender<()>, oneshot::Receiver<()>);

impl Held {
    /// Holds the next read of `key`: `read` fires once it has been read, `go` lets it return.
    async fn hold(&self, key: &str) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (read_tx, read_rx) = oneshot::channel();
        let (go_tx, go_rx) = oneshot::channel();
        *self.gate.lock().await = Some((format!("{NS}:e:{key}"), read_tx, go_rx));
        (read_rx, go_tx)
    }
}

#[async_trait]
impl Store for Held {
    fn kind(&self) -> aside::Kind {
        self.inner.kind()
    }
    async fn get(
        &self,
        key: &aside::key::EntryKey,
        stamps: &[aside::key::TagKey],
    ) -> Result<Lookup, aside::StoreError> {
        let read = self.inner.get(key, stamps).await;
        let mut gate = self.gate.lock().await;
        if gate.as_ref().is_some_and(|(k, ..)| k == key.as_str()) {
            let (_, read_tx, go_rx) = gate.take().unwrap();
            drop(gate);
            read_tx.send(()).unwrap();
            go_rx.await.unwrap();
        }
        read
    }
    async fn claim(
        &self,
        key: &aside::key::EntryKey,
        stamps: &[aside::key::TagKey],
        clocks: &[aside::key::TagKey],
        terms: aside::store::ClaimTerms,
    ) -> Result<aside::store::Claim, aside::StoreError> {
        self.inner.claim(key, stamps, clocks, terms).await
    }
    async fn claim_refresh(
        &self,
        key: &aside::key::EntryKey,
        fresh_until: u64,
        stamps: &[aside::key::TagKey],
        clocks: &[aside::key::TagKey],
        terms: aside::store::ClaimTerms,
    ) -> Result<Option<aside::store::Lease>, aside::StoreError> {
        self.inner
            .claim_refresh(key, fresh_until, stamps, clocks, terms)
            .await
    }
    async fn fill(
        &self,
        key: &aside::key::EntryKey,
        lease: &aside::store::Lease,
        learnt: &[aside::key::TagKey],
        payload: bytes::Bytes,
        life: aside::store::Lifetime,
    ) -> Result<bool, aside::StoreError> {
        self.inner.fill(key, lease, learnt, payload, life).await
    }
    async fn release(
        &self,
        key: &aside::key::EntryKey,
        lease: &aside::store::Lease,
    ) -> Result<(), aside::StoreError> {
        self.inner.release(key, lease).await
    }
    async fn set(
        &self,
        key: &aside::key::EntryKey,
        stamps: &[aside::key::TagKey],
        payload: bytes::Bytes,
        life: aside::store::Lifetime,
    ) -> Result<(), aside::StoreError> {
        self.inner.set(key, stamps, payload, life).await
    }
    async fn delete(&self, keys: &[aside::key::EntryKey]) -> Result<(), aside::StoreError> {
        self.inner.delete(keys).await
    }
    async fn bump(&self, stamps: &[aside::key::TagKey]) -> Result<(), aside::StoreError> {
        self.inner.bump(stamps).await
    }
    async fn ping(&self) -> Result<(), aside::StoreError> {
        self.inner.ping().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_older_than_an_invalidation_is_not_kept_in_the_l1() {
    let r = TestRedis::start();
    let held = Arc::new(Held {
        inner: RedisStore::new(&RedisConfig::new(r.url())).unwrap(),
        gate: Mutex::new(None),
    });
    let (b, store_b, _) = explicit(&r, Some(held.clone()));
    let (a, ..) = explicit(&r, None);
    assert!(eventually(Duration::from_secs(5), || async { store_b.is_live() }).await);

    // Invalidated by this instance while its read is on the way.
    b.set("k1", "old").await.unwrap();
    let (read, go) = held.hold("k1").await;
    let reader = tokio::spawn({
        let b = b.clone();
        async move { b.get::<String>("k1").await.unwrap() }
    });
    read.await.unwrap();
    b.set("k1", "new").await.unwrap();
    go.send(()).unwrap();
    assert_eq!(
        reader.await.unwrap().as_deref(),
        Some("old"),
        "it read first"
    );
    assert_eq!(
        b.get::<String>("k1").await.unwrap().as_deref(),
        Some("new"),
        "the old value was not kept"
    );

    // Invalidated by another instance while the read is on the way: the read returns only
    // after the message has arrived (seen through a probe deleted by the same message).
    b.set("k2", "old").await.unwrap();
    b.set("probe", "here").await.unwrap();
    for _ in 0..3 {
        b.get::<String>("probe").await.unwrap();
    }
    let (read, go) = held.hold("k2").await;
    let reader = tokio::spawn({
        let b = b.clone();
        async move { b.get::<String>("k2").await.unwrap() }
    });
    read.await.unwrap();
    a.del(["k2", "probe"]).await.unwrap();
    let arrived = eventually(Duration::from_secs(2), || async {
        b.get::<String>("probe").await.unwrap().is_none()
    })
    .await;
    assert!(arrived, "the message reached the other instance");
    go.send(()).unwrap();
    assert_eq!(reader.await.unwrap().as_deref(), Some("old"));
    assert_eq!(
        b.get::<String>("k2").await.unwrap(),
        None,
        "the old value was not kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_stops_the_l1_within_the_bound() {
    let r = TestRedis::start();
    let (c, store, _) = explicit(&r, None);
    c.set("k", "v").await.unwrap();
    assert!(eventually(Duration::from_secs(5), || async { store.is_live() }).await);
    for _ in 0..3 {
        assert_eq!(c.get::<String>("k").await.unwrap().as_deref(), Some("v"));
    }
    let mgets = commandstat(&r, "mget").await;
    assert_eq!(c.get::<String>("k").await.unwrap().as_deref(), Some("v"));
    assert_eq!(commandstat(&r, "mget").await, mgets, "served by the L1");

    r.pause();
    let paused = Instant::now();
    let stopped = eventually(Duration::from_secs(2), || async { !store.is_live() }).await;
    let took = paused.elapsed();
    assert!(stopped, "the L1 still serves with Redis paused");
    eprintln!("the L1 stopped serving {took:?} after Redis was paused");
    // Now reads go to Redis, which does not answer: an error, never the L1's copy.
    let r1 = c.get::<String>("k").await;
    assert!(r1.is_err(), "{r1:?}");

    r.resume();
    assert!(eventually(Duration::from_secs(5), || async { store.is_live() }).await);
    let back = eventually(Duration::from_secs(5), || async {
        matches!(c.get::<String>("k").await, Ok(Some(v)) if v == "v")
    })
    .await;
    assert!(back, "reads work again once Redis answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_voids_the_l1_and_messages_flow_again() {
    let mut r = TestRedis::start();
    let (a, store_a, _) = explicit(&r, None);
    let (b, store_b, snap_b) = explicit(&r, None);
    for s in [&store_a, &store_b] {
        assert!(eventually(Duration::from_secs(5), || async { s.is_live() }).await);
    }
    a.set("k", "before").await.unwrap();
    for _ in 0..3 {
        assert_eq!(
            b.get::<String>("k").await.unwrap().as_deref(),
            Some("before")
        );
    }

    let resyncs = snap_b.get("aside_l1_resyncs_total");
    r.restart(); // empty: nothing was persisted
    // The subscriber notices the loss, then subscribes again.
    let again = eventually(Duration::from_secs(10), || async {
        snap_b.get("aside_l1_resyncs_total") > resyncs && store_b.is_live()
    })
    .await;
    assert!(again, "the subscription was not established again");
    // Errors are fine while the breaker closes again; the old copy is not.
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        assert!(Instant::now() < deadline, "b never served again");
        if let Ok(v) = b.get::<String>("k").await {
            break vec![v];
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(seen, vec![None], "the copy made before the restart is gone");

    // Messages flow again (a's connections notice the restart on their first command).
    let written = eventually(Duration::from_secs(5), || async {
        a.set("k", "after").await.is_ok()
    })
    .await;
    assert!(written && eventually(Duration::from_secs(5), || async { store_a.is_live() }).await);
    for _ in 0..3 {
        assert_eq!(
            b.get::<String>("k").await.unwrap().as_deref(),
            Some("after")
        );
    }
    a.set("k", "again").await.unwrap();
    let converged = eventually(Duration::from_secs(2), || async {
        b.get::<String>("k").await.unwrap().as_deref() == Some("again")
    })
    .await;
    assert!(converged);
}

#[tokio::test]
async fn the_subscriber_ends_with_the_last_handle() {
    let r = TestRedis::start();
    let conn = r.conn().await;
    let subscribers = |conn: &redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        async move {
            let v: (String, u64) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(format!("{NS}:l1"))
                .query_async(&mut conn)
                .await
                .unwrap();
            v.1
        }
    };
    let (c, _) = instance(&r);
    let other = c.clone();
    let one = eventually(Duration::from_secs(5), || async {
        subscribers(&conn).await == 1
    })
    .await;
    assert!(one, "subscribed");
    drop(c);
    other.set("k", "v").await.unwrap();
    assert_eq!(subscribers(&conn).await, 1, "a clone keeps it");
    drop(other);
    let none = eventually(Duration::from_secs(5), || async {
        subscribers(&conn).await == 0
    })
    .await;
    assert!(none, "the subscription outlived the cache");
}

#[tokio::test]
async fn an_l1_needs_redis_and_valid_settings() {
    let r = TestRedis::start();
    let err = |b: CacheBuilder| b.build().unwrap_err().to_string();
    let in_process = err(Cache::builder().l1(10, L1_TTL));
    assert!(in_process.contains("needs a Redis store"), "{in_process}");
    let custom = err(Cache::builder()
        .store(Arc::new(aside::store::MemoryStore::new(10)))
        .l1(10, L1_TTL));
    assert!(custom.contains("needs a Redis store"), "{custom}");
    assert!(err(builder(&r).l1(0, L1_TTL)).contains("capacity"));
    assert!(err(builder(&r).l1(10, Duration::ZERO)).contains("ttl"));
    let bound = L1Config {
        bound: Duration::ZERO,
        ..L1Config::new(10, L1_TTL)
    };
    assert!(err(builder(&r).l1_config(bound)).contains("bound"));
    assert!(builder(&r).l1(10, L1_TTL).build().is_ok());
}
