//! [`CacheBuilder`]: a consumed builder; `build` validates every setting.

use crate::backlog::Backlog;
use crate::breaker::Breaker;
use crate::cache::{Cache, Inner, Settings};
use crate::clock::{Clock, SystemClock};
use crate::codec::{Codec, Json};
use crate::error::BuildError;
use crate::flight::Flights;
use crate::key::Namespace;
use crate::metrics::Metrics;
use crate::store::{
    ClusterConfig, ClusterStore, L1Config, MemoryStore, RedisConfig, RedisStore, Store, TieredStore,
};
use std::sync::Arc;
use std::time::Duration;

enum Backend {
    Memory { capacity: u64 },
    Redis(RedisConfig),
    Cluster(ClusterConfig),
    Custom(Arc<dyn Store>),
}

/// Configures a [`Cache`]. Defaults: in-process store of 100,000 entries, namespace `aside`,
/// TTL 1 h, negative TTL 30 s, jitter 10 %, schema 0, lease 5 s, lease wait 1 s, command
/// timeout 250 ms, breaker 3 failures / 1 s cooldown, backlog of 10,000 invalidations, no L1.
///
/// ```
/// use std::time::Duration;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let cache = aside::Cache::builder()
///     .namespace("catalog")
///     .redis("redis://127.0.0.1:6379") // lazy: nothing is connected yet
///     .default_ttl(Duration::from_secs(300))
///     .build()
///     .expect("valid settings");
/// # });
/// ```
#[must_use = "a builder does nothing until build() is called"]
pub struct CacheBuilder<C: Codec = Json> {
    namespace: String,
    backend: Backend,
    codec: C,
    default_ttl: Duration,
    negative_ttl: Duration,
    jitter: f64,
    schema: u32,
    lease: Duration,
    lease_wait: Duration,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
    early_refresh: f64,
    command_timeout: Option<Duration>,
    threshold: u32,
    cooldown: Duration,
    backlog: usize,
    clock: Arc<dyn Clock>,
    l1: Option<L1Config>,
}

impl Default for CacheBuilder<Json> {
    fn default() -> Self {
        Self::new()
    }
}

impl CacheBuilder<Json> {
    /// The defaults.
    pub fn new() -> Self {
        Self {
            namespace: "aside".into(),
            backend: Backend::Memory { capacity: 100_000 },
            codec: Json,
            default_ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(30),
            jitter: 0.1,
            schema: 0,
            lease: Duration::from_secs(5),
            lease_wait: Duration::from_secs(1),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            early_refresh: 1.0,
            command_timeout: None,
            threshold: 3,
            cooldown: Duration::from_secs(1),
            backlog: 10_000,
            clock: Arc::new(SystemClock::default()),
            l1: None,
        }
    }
}

impl<C: Codec> CacheBuilder<C> {
    /// The namespace: the first segment of every Redis key (1 to 64 of `[A-Za-z0-9_.-]`).
    pub fn namespace(mut self, ns: impl Into<String>) -> Self {
        self.namespace = ns.into();
        self
    }

    /// Use Redis at `url` (`redis://`, `rediss://` for TLS; `user:password@` for ACL users).
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.backend = Backend::Redis(RedisConfig::new(url));
        self
    }

    /// Use Redis with a full configuration.
    pub fn redis_config(mut self, config: RedisConfig) -> Self {
        self.backend = Backend::Redis(config);
        self
    }

    /// Use a Redis Cluster, reached through some of its nodes (the others are discovered).
    /// Credentials (`user:password@`) and TLS (`rediss://`) are taken from the first URL.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let cache = aside::Cache::builder()
    ///     .namespace("catalog")
    ///     .redis_cluster(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]) // lazy, too
    ///     .build()
    ///     .expect("valid settings");
    /// # });
    /// ```
    pub fn redis_cluster<S: Into<String>>(mut self, urls: impl IntoIterator<Item = S>) -> Self {
        self.backend = Backend::Cluster(ClusterConfig::new(urls));
        self
    }

    /// Use a Redis Cluster with a full configuration.
    pub fn redis_cluster_config(mut self, config: ClusterConfig) -> Self {
        self.backend = Backend::Cluster(config);
        self
    }

    /// Use the in-process store, holding at most `capacity` entries (the default).
    pub fn memory(mut self, capacity: u64) -> Self {
        self.backend = Backend::Memory { capacity };
        self
    }

    /// Adds an in-process L1 in front of Redis: at most `capacity` copies, each kept at most
    /// `ttl`, coherent across instances within 100 ms (see [`TieredStore`]). Needs
    /// [`redis`](Self::redis) or [`redis_config`](Self::redis_config): `build` refuses it
    /// with another store.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// // Builds while Redis is down; a background task subscribes as soon as it answers.
    /// let cache = aside::Cache::builder()
    ///     .redis("redis://127.0.0.1:6379")
    ///     .l1(10_000, Duration::from_secs(10))
    ///     .build();
    /// assert!(cache.is_ok());
    /// # });
    /// ```
    ///
    /// ```
    /// # use std::time::Duration;
    /// let in_process = aside::Cache::builder().l1(10_000, Duration::from_secs(10)).build();
    /// assert!(in_process.is_err(), "an L1 in front of the in-process store makes no sense");
    /// ```
    pub fn l1(self, capacity: u64, ttl: Duration) -> Self {
        self.l1_config(L1Config::new(capacity, ttl))
    }

    /// Adds an L1 with a full configuration (its coherence bound included).
    pub fn l1_config(mut self, config: L1Config) -> Self {
        self.l1 = Some(config);
        self
    }

    /// Use any [`Store`].
    pub fn store(mut self, store: Arc<dyn Store>) -> Self {
        self.backend = Backend::Custom(store);
        self
    }

    /// Use another codec.
    pub fn codec<C2: Codec>(self, codec: C2) -> CacheBuilder<C2> {
        CacheBuilder {
            namespace: self.namespace,
            backend: self.backend,
            codec,
            default_ttl: self.default_ttl,
            negative_ttl: self.negative_ttl,
            jitter: self.jitter,
            schema: self.schema,
            lease: self.lease,
            lease_wait: self.lease_wait,
            stale_while_revalidate: self.stale_while_revalidate,
            stale_if_error: self.stale_if_error,
            early_refresh: self.early_refresh,
            command_timeout: self.command_timeout,
            threshold: self.threshold,
            cooldown: self.cooldown,
            backlog: self.backlog,
            clock: self.clock,
            l1: self.l1,
        }
    }

    /// TTL of values when a call gives none.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// TTL of a cached "not found" when a call gives none. A "not found" is kept for this long
    /// only: the stale windows are for values.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// Fraction (0 to 0.5) by which each TTL is shortened at random, so entries written
    /// together do not expire together.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction;
        self
    }

    /// Version of the cached types. Entries written under another version are misses (and
    /// removed): bump it when a cached type changes incompatibly.
    pub fn schema_version(mut self, v: u32) -> Self {
        self.schema = v;
        self
    }

    /// How long a loader's lease holds the key before others may load (bounds a loader that died).
    pub fn lease(mut self, d: Duration) -> Self {
        self.lease = d;
        self
    }

    /// How long a caller waits for another process's loader before loading itself (not stored).
    pub fn lease_wait(mut self, d: Duration) -> Self {
        self.lease_wait = d;
        self
    }

    /// How long past its TTL an entry is still served while one refresh runs in the
    /// background (default 0: never). The store keeps entries this much longer.
    ///
    /// ```
    /// use std::time::Duration;
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let cache = aside::Cache::builder()
    ///     .default_ttl(Duration::from_secs(60))
    ///     .stale_while_revalidate(Duration::from_secs(30)) // seconds 60-90: stale + refresh
    ///     .stale_if_error(Duration::from_secs(3600)) // up to 1 h: stale if the loader fails
    ///     .build()
    ///     .unwrap();
    /// # });
    /// ```
    pub fn stale_while_revalidate(mut self, d: Duration) -> Self {
        self.stale_while_revalidate = d;
        self
    }

    /// Probabilistic early refresh (XFetch, Vattani et al., VLDB 2015): a read of an entry
    /// that is still fresh but close to the end of its TTL starts its refresh in the
    /// background, with a probability that grows as the end nears and as loads take longer,
    /// so that a hot key is refreshed once, shortly before it expires, and its readers never
    /// meet the expiry. A read at `gap` before the end refreshes when
    /// `load_time × beta × −ln(u) ≥ gap` (`u` uniform in (0, 1]; `load_time` the cache's
    /// running average of its loads). Default 1.0; 0 turns it off; at most 10. It applies to
    /// entries that carry their freshness, i.e. when [`stale_while_revalidate`] or
    /// [`stale_if_error`] is set (an entry without it simply leaves the store at its TTL),
    /// and to reads with a loader (`fetch`, `get_or_load`).
    ///
    /// [`stale_while_revalidate`]: CacheBuilder::stale_while_revalidate
    /// [`stale_if_error`]: CacheBuilder::stale_if_error
    pub fn early_refresh(mut self, beta: f64) -> Self {
        self.early_refresh = beta;
        self
    }

    /// How long past its TTL an entry is kept to be served when its loader fails (default 0:
    /// never). The store keeps entries this much longer.
    pub fn stale_if_error(mut self, d: Duration) -> Self {
        self.stale_if_error = d;
        self
    }

    /// Upper bound of every Redis command (overrides the Redis configuration's). A command
    /// still waiting then fails within 5 ms of the bound.
    pub fn command_timeout(mut self, d: Duration) -> Self {
        self.command_timeout = Some(d);
        self
    }

    /// Consecutive store failures that open the circuit breaker, and how long it stays open
    /// before one probe call.
    pub fn breaker(mut self, failures: u32, cooldown: Duration) -> Self {
        self.threshold = failures;
        self.cooldown = cooldown;
        self
    }

    /// How many distinct invalidations are kept while the store is unreachable; beyond it the
    /// whole namespace is invalidated when the store returns.
    pub fn backlog_capacity(mut self, n: usize) -> Self {
        self.backlog = n;
        self
    }

    /// The clock for expiry (in-process store), freshness and the breaker.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Validates the settings and builds the cache. Nothing is connected: a Redis store
    /// connects on first use, so this succeeds while Redis is down (with an L1, a background
    /// task starts subscribing to its invalidation channel, and keeps trying). A Redis store
    /// must be built inside a Tokio runtime.
    pub fn build(self) -> Result<Cache<C>, BuildError> {
        let invalid = |name, reason: &str| BuildError::Invalid {
            name,
            reason: reason.to_owned(),
        };
        let ns = Namespace::new(&self.namespace).map_err(BuildError::Namespace)?;
        let year = Duration::from_secs(365 * 24 * 3600);
        for (name, d) in [
            ("default_ttl", self.default_ttl),
            ("negative_ttl", self.negative_ttl),
        ] {
            if d < Duration::from_millis(1) || d > year {
                return Err(invalid(name, "must be between 1 ms and 365 days"));
            }
        }
        for (name, d) in [
            ("stale_while_revalidate", self.stale_while_revalidate),
            ("stale_if_error", self.stale_if_error),
        ] {
            if d > year {
                return Err(invalid(name, "must be at most 365 days"));
            }
        }
        if !(0.0..=0.5).contains(&self.jitter) {
            return Err(invalid("jitter", "must be between 0 and 0.5"));
        }
        if !(0.0..=10.0).contains(&self.early_refresh) {
            return Err(invalid("early_refresh", "must be between 0 and 10"));
        }
        if self.lease < Duration::from_millis(1) {
            return Err(invalid("lease", "must be at least 1 ms"));
        }
        if self.command_timeout.is_some_and(|d| d.is_zero()) {
            return Err(invalid("command_timeout", "must be more than zero"));
        }
        if self.threshold == 0 {
            return Err(invalid("breaker", "needs at least one failure to open"));
        }
        if let Some(l1) = &self.l1 {
            l1.check()?;
            if !matches!(self.backend, Backend::Redis(_)) {
                return Err(invalid(
                    "l1",
                    "needs a Redis store (redis or redis_config): an L1 sits in front of a shared store",
                ));
            }
        }
        let store: Arc<dyn Store> = match self.backend {
            Backend::Memory { capacity } => {
                if capacity == 0 {
                    return Err(invalid("memory", "capacity must be at least 1"));
                }
                Arc::new(MemoryStore::with_clock(capacity, self.clock.clone()))
            }
            Backend::Redis(mut config) => {
                if let Some(t) = self.command_timeout {
                    config.command_timeout = t;
                }
                if tokio::runtime::Handle::try_current().is_err() {
                    return Err(invalid("redis", "must be built inside a Tokio runtime"));
                }
                match &self.l1 {
                    Some(l1) => Arc::new(TieredStore::new(ns.as_str(), &config, l1)?),
                    None => Arc::new(RedisStore::new(&config)?),
                }
            }
            Backend::Cluster(mut config) => {
                if let Some(t) = self.command_timeout {
                    config.command_timeout = t;
                }
                Arc::new(ClusterStore::new(&config)?)
            }
            Backend::Custom(s) => s,
        };
        Ok(Cache::from_inner(Inner {
            metrics: Metrics::new(ns.as_str()),
            ns,
            store,
            codec: self.codec,
            settings: Settings {
                default_ttl: self.default_ttl,
                negative_ttl: self.negative_ttl,
                jitter: self.jitter,
                schema: self.schema,
                lease: self.lease,
                lease_wait: self.lease_wait,
                stale_while_revalidate: self.stale_while_revalidate,
                stale_if_error: self.stale_if_error,
                early_refresh: self.early_refresh,
            },
            flights: Flights::default(),
            breaker: Breaker::new(self.clock.clone(), self.threshold, self.cooldown),
            clock: self.clock,
            backlog: Backlog::new(self.backlog),
            flush_lock: tokio::sync::Mutex::new(()),
            draining: std::sync::atomic::AtomicBool::new(false),
            load_time: std::sync::atomic::AtomicU64::new(0),
        }))
    }
}
