//! The command line (documented in the README). Every flag has an environment variable; a flag wins over
//! its variable.

use crate::checker::ConsistencyConfig;
use crate::server::Limits;
use aside::store::redact;
use clap::{Args, Parser, Subcommand};
use std::fmt;
use std::time::Duration;

/// `catalog`: a product-catalog HTTP service, cached with `aside`.
#[derive(Debug, Parser)]
#[command(name = "catalog", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API until SIGINT or SIGTERM.
    Serve(Config),
}

/// The settings of `catalog serve`.
#[derive(Clone, Args)]
pub struct Config {
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, env = "CATALOG_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// Database: sqlite://PATH (created if missing), sqlite::memory:, or postgres://USER:PASS@HOST/DB.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "sqlite://catalog.db"
    )]
    pub database_url: String,

    /// Redis to cache in: redis://HOST:PORT (USER:PASS@ and /DB optional), or rediss:// for
    /// TLS. Without it, an in-process cache.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Redis Cluster to cache in, instead of --redis-url: some of its nodes, comma-separated
    /// (redis://HOST:PORT,redis://HOST:PORT; the others are discovered). USER:PASS@ and
    /// rediss:// as for --redis-url, taken from the first node.
    #[arg(
        long,
        env = "CATALOG_REDIS_CLUSTER_URLS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub redis_cluster_urls: Vec<String>,

    /// A PEM file of the CA (or CAs) to trust for rediss:// URLs (--redis-url or
    /// --redis-cluster-urls) instead of the system's roots: for a Redis whose certificate a
    /// private CA signed.
    #[arg(long, env = "CATALOG_REDIS_CA_FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,

    /// Products to seed into an empty database (with categories c1..c20).
    #[arg(long, env = "CATALOG_SEED_PRODUCTS", default_value_t = 1000)]
    pub seed_products: u32,

    /// Milliseconds added to every database round trip (to show what the cache saves).
    #[arg(long, env = "CATALOG_DB_LATENCY_MS", default_value_t = 0)]
    pub db_latency_ms: u64,

    /// Bypass the cache entirely: every read goes to the database (`x-cache: bypass`).
    #[arg(long, env = "CATALOG_NO_CACHE")]
    pub no_cache: bool,

    /// Turn off the database change feed (on by default): rows changed by other clients are
    /// then served from the cache until their TTL. The triggers stay installed; see the
    /// README for removing them once no instance runs the feed.
    #[arg(long, env = "CATALOG_NO_CHANGE_FEED")]
    pub no_change_feed: bool,

    /// Upper bound of every database round trip; beyond it the request gets a 503.
    #[arg(long, env = "CATALOG_DB_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub db_timeout: Duration,

    /// Database connection pool size.
    #[arg(long, env = "CATALOG_DB_MAX_CONNECTIONS", default_value_t = 10)]
    pub db_max_connections: u32,

    /// How long a product stays cached.
    #[arg(long, env = "CATALOG_PRODUCT_TTL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub product_ttl: Duration,

    /// How long a list page stays cached.
    #[arg(long, env = "CATALOG_LIST_TTL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub list_ttl: Duration,

    /// How long a "not found" stays cached.
    #[arg(long, env = "CATALOG_NEGATIVE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub negative_ttl: Duration,

    /// How long past its TTL an entry is still served (`x-cache: stale`) while one refresh
    /// runs in the background (0s: never).
    #[arg(long, env = "CATALOG_STALE_WHILE_REVALIDATE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub stale_while_revalidate: Duration,

    /// How long past its TTL an entry is served (`x-cache: stale`) when the database fails
    /// instead of an error (0s: never).
    #[arg(long, env = "CATALOG_STALE_IF_ERROR", default_value = "10m", value_parser = humantime::parse_duration)]
    pub stale_if_error: Duration,

    /// Early refresh (XFetch): a read of a cached entry close to the end of its TTL refreshes
    /// it in the background with a probability that grows as the end nears, so hot entries
    /// never expire under their readers. The beta factor: 1 by default, 0 turns it off, up
    /// to 10 (earlier refreshes).
    #[arg(long, env = "CATALOG_EARLY_REFRESH", default_value_t = 1.0)]
    pub early_refresh: f64,

    /// The fraction of product cache hits that the live consistency checker reads again from
    /// the database (one in a thousand by default; 0 turns it off, 1 checks every hit). A
    /// mismatch that no change explains is counted in
    /// `catalog_consistency_checks_total{result="inconsistent"}` and logged.
    #[arg(long, env = "CATALOG_CONSISTENCY_SAMPLE", default_value_t = 0.001, value_parser = fraction)]
    pub consistency_sample: f64,

    /// How long after a sampled hit the checker reads its row.
    #[arg(long, env = "CATALOG_CONSISTENCY_DELAY", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub consistency_delay: Duration,

    /// How long the checker waits for a change to explain a mismatch before it counts it.
    #[arg(long, env = "CATALOG_CONSISTENCY_RECHECK", default_value = "1s", value_parser = humantime::parse_duration)]
    pub consistency_recheck: Duration,

    /// Namespace of the cache's keys in Redis (instances sharing one see each other's entries).
    #[arg(long, env = "CATALOG_CACHE_NAMESPACE", default_value = "catalog")]
    pub cache_namespace: String,

    /// Copies to keep in an in-process L1 in front of Redis (0: no L1). Needs --redis-url.
    /// Instances keep their L1s coherent through Redis pub/sub: a write on one instance is
    /// seen by every other within 100 ms. Every instance sharing the namespace should use it.
    #[arg(long, env = "CATALOG_L1_CAPACITY", default_value_t = 0)]
    pub l1_capacity: u64,

    /// Longest life of a copy in the L1 (it never outlives its Redis entry either).
    #[arg(long, env = "CATALOG_L1_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub l1_ttl: Duration,

    /// Largest request body, in bytes (413 beyond).
    #[arg(long, env = "CATALOG_MAX_BODY_BYTES", default_value_t = 64 * 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_body_bytes: u32,

    /// Time a client has to send a request's head; also how long an idle keep-alive
    /// connection is kept. Past it the connection is closed.
    #[arg(long, env = "CATALOG_HEADER_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub header_timeout: Duration,

    /// Time a client has to send a request's body once its head is in; past it, 408 and the
    /// connection is closed.
    #[arg(long, env = "CATALOG_REQUEST_TIMEOUT", default_value = "30s", value_parser = positive_duration)]
    pub request_timeout: Duration,

    /// Most connections open at once; one more is answered with a 503 and closed.
    #[arg(long, env = "CATALOG_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Most requests handled at once; one more gets a 503 `overloaded` at once.
    #[arg(long, env = "CATALOG_MAX_IN_FLIGHT", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
}

/// A fraction from 0 to 1.
fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        Ok(_) => Err("must be from 0 to 1".into()),
        Err(_) => Err("must be a number from 0 to 1".into()),
    }
}

/// A duration above zero (`0s` would close every connection at once).
fn positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be above 0".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// Where the cache keeps its entries.
#[derive(Debug, PartialEq, Eq)]
pub enum CacheStore<'a> {
    /// In this process.
    Memory,
    /// A standalone Redis server (`--redis-url`).
    Redis(&'a str),
    /// A Redis Cluster, through some of its nodes (`--redis-cluster-urls`).
    Cluster(Vec<&'a str>),
}

impl Config {
    /// The Redis URL, if one is set and not empty.
    pub fn redis(&self) -> Option<&str> {
        self.redis_url.as_deref().filter(|u| !u.trim().is_empty())
    }

    /// The L1 asked for, as (capacity, TTL); `None` without `--l1-capacity` (or with
    /// `--no-cache`, which bypasses every tier). An L1 without Redis is refused: the
    /// in-process cache is already in process, there is nothing to put it in front of.
    pub fn l1(&self) -> Result<Option<(u64, Duration)>, String> {
        if self.l1_capacity == 0 || self.no_cache {
            return Ok(None);
        }
        if self.redis().is_none() {
            return Err(
                "--l1-capacity needs --redis-url (the L1 sits in front of Redis; \
                 without Redis the cache is in process already)"
                    .into(),
            );
        }
        Ok(Some((self.l1_capacity, self.l1_ttl)))
    }

    /// The live consistency checker's settings.
    pub fn consistency(&self) -> ConsistencyConfig {
        ConsistencyConfig {
            sample: self.consistency_sample,
            delay: self.consistency_delay,
            recheck: self.consistency_recheck,
            ..ConsistencyConfig::default()
        }
    }

    /// The bounds of the server and of each request.
    pub fn limits(&self) -> Limits {
        let mut limits = Limits::with_max_in_flight(self.max_in_flight as usize);
        limits.max_body = self.max_body_bytes as usize;
        limits.header_timeout = self.header_timeout;
        limits.request_timeout = self.request_timeout;
        limits.max_connections = self.max_connections as usize;
        limits
    }

    /// The cache's store; an error if both a Redis URL and cluster URLs are given.
    pub fn cache_store(&self) -> Result<CacheStore<'_>, String> {
        let cluster: Vec<&str> = self
            .redis_cluster_urls
            .iter()
            .map(|u| u.trim())
            .filter(|u| !u.is_empty())
            .collect();
        match (self.redis(), cluster.is_empty()) {
            (Some(_), false) => Err("--redis-url (REDIS_URL) and --redis-cluster-urls \
                 (CATALOG_REDIS_CLUSTER_URLS) are both set: give one of them"
                .into()),
            (Some(url), true) => Ok(CacheStore::Redis(url)),
            (None, false) => Ok(CacheStore::Cluster(cluster)),
            (None, true) => Ok(CacheStore::Memory),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("database_url", &redact(&self.database_url))
            .field("redis_url", &self.redis_url.as_deref().map(redact))
            .field(
                "redis_cluster_urls",
                &self
                    .redis_cluster_urls
                    .iter()
                    .map(|u| redact(u))
                    .collect::<Vec<_>>(),
            )
            .field("redis_ca_file", &self.redis_ca_file)
            .field("seed_products", &self.seed_products)
            .field("db_latency_ms", &self.db_latency_ms)
            .field("no_cache", &self.no_cache)
            .field("no_change_feed", &self.no_change_feed)
            .field("db_timeout", &self.db_timeout)
            .field("db_max_connections", &self.db_max_connections)
            .field("product_ttl", &self.product_ttl)
            .field("list_ttl", &self.list_ttl)
            .field("negative_ttl", &self.negative_ttl)
            .field("stale_while_revalidate", &self.stale_while_revalidate)
            .field("stale_if_error", &self.stale_if_error)
            .field("early_refresh", &self.early_refresh)
            .field("consistency_sample", &self.consistency_sample)
            .field("consistency_delay", &self.consistency_delay)
            .field("consistency_recheck", &self.consistency_recheck)
            .field("cache_namespace", &self.cache_namespace)
            .field("l1_capacity", &self.l1_capacity)
            .field("l1_ttl", &self.l1_ttl)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("header_timeout", &self.header_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("max_connections", &self.max_connections)
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn debug_output_hides_every_password() {
        let c = serve(&[
            "--database-url",
            "postgres://u@h/db?sslmode=require&password=Sekr/et@1",
            "--redis-url",
            "redis://default:p@ss/w0rd@h:6379",
        ]);
        let shown = format!("{c:?}");
        for secret in ["Sekr/et@1", "Sekr", "p@ss/w0rd", "ss/w0"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("sslmode=require"), "{shown}");
    }

    #[test]
    fn defaults_follow_the_contract() {
        let Command::Serve(c) = Cli::try_parse_from(["catalog", "serve"])
            .map(|c| c.command)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.listen, "127.0.0.1:8080");
        assert_eq!(c.seed_products, 1000);
        assert!(!c.no_cache);
        assert!(!c.no_change_feed, "the change feed is on by default");
        assert_eq!(c.product_ttl, Duration::from_secs(300));
        assert_eq!(c.list_ttl, Duration::from_secs(60));
        assert_eq!(c.consistency_sample, 0.001, "the checker is on by default");
        let Command::Serve(c) = Cli::try_parse_from([
            "catalog",
            "serve",
            "--listen",
            "0.0.0.0:1",
            "--no-cache",
            "--db-latency-ms",
            "5",
            "--negative-ttl",
            "200ms",
            "--seed-products",
            "7",
        ])
        .map(|c| c.command)
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (
                c.listen.as_str(),
                c.no_cache,
                c.db_latency_ms,
                c.seed_products
            ),
            ("0.0.0.0:1", true, 5, 7)
        );
        assert_eq!(c.negative_ttl, Duration::from_millis(200));
    }

    fn serve(args: &[&str]) -> Config {
        let argv = ["catalog", "serve"].iter().chain(args);
        match Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(Command::Serve(c)) => c,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn the_l1_is_off_by_default_and_needs_redis() {
        // Flags only (an empty --redis-url is no Redis), whatever the environment says.
        let none = ["--redis-url", "", "--l1-capacity", "0"];
        assert_eq!(serve(&none).l1(), Ok(None));
        let redis = ["--redis-url", "redis://h:6379", "--l1-capacity", "500"];
        assert_eq!(serve(&redis).l1(), Ok(Some((500, Duration::from_secs(10)))));
        let ttl = serve(&[&redis[..], &["--l1-ttl", "250ms"]].concat()).l1();
        assert_eq!(ttl, Ok(Some((500, Duration::from_millis(250)))));
        let without = serve(&["--redis-url", "", "--l1-capacity", "500"]).l1();
        assert!(without.is_err_and(|e| e.contains("--redis-url")));
        let off = serve(&["--redis-url", "", "--l1-capacity", "500", "--no-cache"]).l1();
        assert_eq!(off, Ok(None), "--no-cache bypasses every tier");
        assert!(Cli::try_parse_from(["catalog", "serve", "--l1-capacity", "-1"]).is_err());
        assert!(Cli::try_parse_from(["catalog", "serve", "--l1-ttl", "soon"]).is_err());
    }

    #[test]
    fn the_consistency_sample_is_a_fraction() {
        assert_eq!(
            serve(&["--consistency-sample", "0.25"])
                .consistency()
                .sample,
            0.25
        );
        assert_eq!(
            serve(&["--consistency-sample", "0"]).consistency().sample,
            0.0
        );
        for bad in ["-0.1", "1.5", "often", "NaN"] {
            let flag = format!("--consistency-sample={bad}");
            let e = Cli::try_parse_from(["catalog", "serve", flag.as_str()]);
            assert!(
                e.is_err_and(|e| e.to_string().contains("from 0 to 1")),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn one_redis_or_one_cluster() {
        assert_eq!(serve(&[]).cache_store(), Ok(CacheStore::Memory));
        assert_eq!(
            serve(&["--redis-url", "redis://h:1"]).cache_store(),
            Ok(CacheStore::Redis("redis://h:1"))
        );
        let c = serve(&["--redis-cluster-urls", "redis://a:1,redis://u:pw@b:2"]);
        assert_eq!(
            c.cache_store(),
            Ok(CacheStore::Cluster(vec!["redis://a:1", "redis://u:pw@b:2"]))
        );
        assert!(!format!("{c:?}").contains("pw"), "redacted: {c:?}");
        let both = serve(&[
            "--redis-url",
            "redis://h:1",
            "--redis-cluster-urls",
            "redis://a:1",
        ]);
        let err = both.cache_store().unwrap_err();
        assert!(
            err.contains("--redis-url") && err.contains("--redis-cluster-urls"),
            "{err}"
        );
    }
}
