//! The stores every suite runs against: the in-process store (on a mock clock), Redis (a
//! private `redis-server` per test), Redis with an L1 in front (two instances, each with its
//! own L1, handed out in turn to the caches a test builds) and Redis Cluster (a private
//! three-node cluster, shared by the tests running at the same time, each in its own
//! namespace).
#![allow(dead_code, clippy::unwrap_used)]

use aside::clock::MockClock;
use aside::store::{
    ClusterConfig, ClusterStore, L1Config, MemoryStore, RedisConfig, RedisStore, Store, TieredStore,
};
use aside::{Cache, CacheBuilder};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use testkit::{TestCluster, TestRedis, eventually};

pub enum Backend {
    Memory {
        store: Arc<MemoryStore>,
        clock: MockClock,
    },
    Redis(TestRedis),
    /// Redis with an L1 per instance: `builder` hands out the instances in turn.
    Tiered {
        redis: TestRedis,
        instances: Vec<TieredStore>,
        next: AtomicUsize,
    },
    Cluster(Arc<TestCluster>),
}

pub struct Fx {
    pub backend: Backend,
    pub ns: String,
}

static NS: AtomicUsize = AtomicUsize::new(0);

impl Fx {
    pub fn memory() -> Self {
        let clock = MockClock::default();
        Self {
            backend: Backend::Memory {
                store: Arc::new(MemoryStore::with_clock(10_000, Arc::new(clock.clone()))),
                clock,
            },
            ns: format!("m{}", NS.fetch_add(1, Ordering::Relaxed)),
        }
    }

    pub fn redis() -> Self {
        Self {
            backend: Backend::Redis(TestRedis::start()),
            ns: format!("r{}", NS.fetch_add(1, Ordering::Relaxed)),
        }
    }

    /// Two instances with an L1 each, sharing one Redis, both serving from their L1 already.
    pub async fn tiered() -> Self {
        let redis = TestRedis::start();
        let ns = format!("t{}", NS.fetch_add(1, Ordering::Relaxed));
        let l1 = L1Config::new(10_000, Duration::from_secs(30));
        let instances: Vec<TieredStore> = (0..2)
            .map(|_| TieredStore::new(&ns, &RedisConfig::new(redis.url()), &l1).unwrap())
            .collect();
        for t in &instances {
            let live = eventually(Duration::from_secs(5), || async { t.is_live() }).await;
            assert!(live, "the L1 did not start serving");
        }
        Self {
            backend: Backend::Tiered {
                redis,
                instances,
                next: AtomicUsize::new(0),
            },
            ns,
        }
    }

    pub fn cluster() -> Self {
        Self {
            backend: Backend::Cluster(TestCluster::shared()),
            ns: format!("c{}", NS.fetch_add(1, Ordering::Relaxed)),
        }
    }

    pub fn builder(&self) -> CacheBuilder {
        let b = Cache::builder().namespace(&self.ns).jitter(0.0);
        match &self.backend {
            Backend::Memory { store, clock } => {
                b.store(store.clone()).clock(Arc::new(clock.clone()))
            }
            Backend::Redis(r) => b.redis(r.url()),
            Backend::Tiered {
                instances, next, ..
            } => {
                let i = next.fetch_add(1, Ordering::Relaxed) % instances.len();
                b.store(Arc::new(instances[i].clone()))
            }
            Backend::Cluster(c) => b.redis_cluster(c.urls()),
        }
    }

    /// A store of this backend of its own (a new connection; the same data), to wrap.
    pub fn store(&self) -> Arc<dyn Store> {
        match &self.backend {
            Backend::Memory { store, .. } => store.clone(),
            Backend::Redis(r) => Arc::new(RedisStore::new(&RedisConfig::new(r.url())).unwrap()),
            Backend::Tiered { instances, .. } => Arc::new(instances[0].clone()),
            Backend::Cluster(c) => {
                Arc::new(ClusterStore::new(&ClusterConfig::new(c.urls())).unwrap())
            }
        }
    }

    /// A builder whose freshness runs on a mock clock (the in-process store's own clock, or a
    /// new one for Redis, where entries still live by the server's time).
    pub fn timed(&self) -> (CacheBuilder, MockClock) {
        match &self.backend {
            Backend::Memory { clock, .. } => (self.builder(), clock.clone()),
            Backend::Redis(_) | Backend::Tiered { .. } | Backend::Cluster(_) => {
                let clock = MockClock::default();
                (self.builder().clock(Arc::new(clock.clone())), clock)
            }
        }
    }

    pub fn cache(&self) -> Cache {
        self.builder().build().unwrap()
    }

    /// Lets an entry written with `ttl` under `key` expire.
    pub async fn expire(&self, key: &str, ttl: Duration) {
        match &self.backend {
            Backend::Memory { clock, .. } => clock.advance(ttl + Duration::from_millis(1)),
            Backend::Redis(r) | Backend::Tiered { redis: r, .. } => {
                let raw = format!("{}:e:{key}", self.ns);
                let c = r.conn().await;
                assert!(gone(c, &raw, ttl).await, "{raw} did not expire");
            }
            Backend::Cluster(cl) => {
                let raw = format!("{}:e:{{{key}}}", self.ns);
                let c = cl.conn().await;
                assert!(gone(c, &raw, ttl).await, "{raw} did not expire");
            }
        }
    }

    pub fn short(&self) -> Duration {
        match self.backend {
            Backend::Memory { .. } => Duration::from_secs(1),
            Backend::Redis(_) | Backend::Tiered { .. } | Backend::Cluster(_) => {
                Duration::from_millis(150)
            }
        }
    }
}

/// Waits until Redis no longer holds `raw`, written with `ttl`.
pub async fn gone<C>(c: C, raw: &str, ttl: Duration) -> bool
where
    C: redis::aio::ConnectionLike + Clone + Send + Sync,
{
    eventually(ttl * 4 + Duration::from_secs(2), || {
        let mut c = c.clone();
        async move {
            !redis::cmd("EXISTS")
                .arg(raw)
                .query_async::<bool>(&mut c)
                .await
                .unwrap()
        }
    })
    .await
}
