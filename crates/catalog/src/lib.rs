//! `catalog`: a product-catalog service (a `ProductService`), over SQLite or
//! PostgreSQL, cached with `aside` in process or in Redis.
//!
//! The README documents the HTTP contract and the command line.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use clap::Parser;
//! let catalog::config::Cli { command: catalog::config::Command::Serve(config) } =
//!     catalog::config::Cli::parse();
//! let listener = tokio::net::TcpListener::bind(&config.listen).await?;
//! catalog::run(listener, config, std::future::pending()).await
//! # }
//! ```
//!
//! # Layout
//! - [`config`]: the command line and its environment variables.
//! - [`model`]: what the API returns and accepts, and its validation rules.
//! - [`db`]: the [`Repository`](db::Repository) trait and [`Db`](db::Db), which counts,
//!   delays and bounds every round trip; [`db::sql`], the statements both databases share in
//!   one implementation; [`db::sqlite`] and [`db::postgres`], what each does its own way.
//! - [`service`]: [`Catalog`], cache-aside reads and write-then-invalidate
//!   writes; its docs list every key, TTL and tag.
//! - [`checker`]: the live consistency checker: a sample of cache hits read again from the
//!   database, mismatches no change explains counted and logged.
//! - [`feed`]: the change feed's mapping from a committed row change (by anyone) to what it
//!   invalidates.
//! - [`routes`]: the handlers; [`extract`] and [`error`] turn every rejection into the API's
//!   Error body.
//! - [`openapi`]: the OpenAPI document, generated from the handlers.
//! - [`server`]: the HTTP server and its bounds (timeouts, body size), and the layer that
//!   enforces the bounds of each request.

pub mod checker;
pub mod config;
pub mod db;
pub mod error;
pub mod extract;
pub mod feed;
pub mod model;
pub mod openapi;
pub mod routes;
pub mod server;
pub mod service;

use crate::config::Config;
use crate::service::{Catalog, Ttls};
use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tracing::info;

/// What every handler shares. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The catalog.
    pub catalog: Arc<Catalog>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// The database change feed, when it runs.
    pub feed: Option<Arc<aside_feed::Feed>>,
    /// The bounds of each request (and of the server, for [`run`]).
    pub limits: server::Limits,
}

impl AppState {
    /// State over `catalog`, rendering metrics from the process's recorder, with no change
    /// feed.
    pub fn new(catalog: Catalog) -> Self {
        Self {
            catalog: Arc::new(catalog),
            metrics: metrics_recorder(),
            feed: None,
            limits: server::Limits::default(),
        }
    }
}

/// The HTTP API: a [`tower::Service`] for requests (serve it with
/// [`into_make_service`](axum::ServiceExt::into_make_service), or call it with
/// [`tower::ServiceExt::oneshot`]).
pub fn app(
    state: AppState,
) -> impl tower::Service<
    axum::extract::Request,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ Sync
+ 'static {
    routes::router(state)
}

/// Bucket bounds, in seconds, of every exported histogram (`aside_backend_seconds`,
/// `aside_load_seconds`): from 100 µs, a Redis round trip on a quiet machine, to 2.5 s.
/// Histograms rather than summaries: their buckets add up across instances, and recording a
/// sample only finds its bucket.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The process's Prometheus recorder, installed on first call. Install it before building a
/// cache or a [`Db`](db::Db): metrics registered before it are lost.
pub fn metrics_recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = match PrometheusBuilder::new().set_buckets(LATENCY_BUCKETS) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "latency buckets refused; exporting summaries");
                    PrometheusBuilder::new()
                }
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was installed already; /metrics will be empty");
            }
            handle
        })
        .clone()
}

/// How often the histogram samples recorded since the last pass are folded into the
/// exported distributions. The recorder keeps every sample until then, so without this a
/// service that nobody scrapes would grow by a few bytes per request.
pub const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// Runs `f` every `period` (first after one period) on its own task, until the returned
/// guard is dropped.
pub fn every(period: Duration, mut f: impl FnMut() + Send + 'static) -> Periodic {
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            f();
        }
    });
    Periodic(task.abort_handle())
}

/// The task of [`every`]; dropping it stops the task.
#[derive(Debug)]
pub struct Periodic(tokio::task::AbortHandle);

impl Drop for Periodic {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connects the database, applies migrations, seeds an empty database and builds the cache.
pub async fn build(config: &Config) -> anyhow::Result<AppState> {
    let l1 = config.l1().map_err(anyhow::Error::msg)?;
    // Checked before anything is connected.
    let store = config.cache_store().map_err(anyhow::Error::msg)?;
    let metrics = metrics_recorder();
    let options = db::Options {
        latency: Duration::from_millis(config.db_latency_ms),
        timeout: config.db_timeout,
        max_connections: config.db_max_connections,
    };
    let url = aside::store::redact(&config.database_url);
    let repo = db::connect(&config.database_url, &options)
        .await
        .with_context(|| format!("cannot open the database {url}"))?;
    repo.migrate()
        .await
        .context("cannot migrate the database")?;
    if repo
        .seed(config.seed_products)
        .await
        .context("cannot seed the database")?
    {
        info!(products = config.seed_products, "seeded an empty database");
    }
    let cache = if config.no_cache {
        None
    } else {
        let mut b = aside::Cache::builder()
            .namespace(config.cache_namespace.as_str())
            .default_ttl(config.product_ttl)
            .negative_ttl(config.negative_ttl)
            .stale_while_revalidate(config.stale_while_revalidate)
            .stale_if_error(config.stale_if_error)
            .early_refresh(config.early_refresh);
        match store {
            config::CacheStore::Memory => {}
            config::CacheStore::Redis(url) => {
                b = b.redis_config(aside::store::RedisConfig {
                    tls_ca_file: config.redis_ca_file.clone(),
                    ..aside::store::RedisConfig::new(url)
                });
                if let Some((capacity, ttl)) = l1 {
                    b = b.l1(capacity, ttl);
                }
            }
            config::CacheStore::Cluster(urls) => {
                b = b.redis_cluster_config(aside::store::ClusterConfig {
                    tls_ca_file: config.redis_ca_file.clone(),
                    ..aside::store::ClusterConfig::new(urls)
                });
            }
        }
        Some(b.build().context("invalid cache settings")?)
    };
    let db = db::Db::new(repo.clone(), options);
    let checker = match &cache {
        Some(_) if config.consistency_sample > 0.0 => {
            Some(Arc::new(checker::Checker::new(&db, config.consistency())))
        }
        _ => None,
    };
    let feed = match &cache {
        Some(cache) if !config.no_change_feed => {
            if db::sqlite::is_memory(&config.database_url) {
                info!("in-memory SQLite: no change feed (no other client can reach it)");
                None
            } else {
                let settings = aside_feed::FeedConfig::new(feed::NAME)
                    .timeout(config.db_timeout)
                    .count_queries(
                        metrics::counter!("catalog_db_queries_total", "source" => "feed"),
                    );
                let mapping = feed::mapping(checker.clone());
                let started = repo.change_feed(cache.clone(), settings, mapping).await;
                Some(Arc::new(started.context("cannot start the change feed")?))
            }
        }
        _ => None,
    };
    let ttls = Ttls {
        product: config.product_ttl,
        list: config.list_ttl,
        negative: config.negative_ttl,
    };
    Ok(AppState {
        catalog: Arc::new(match checker {
            Some(checker) => Catalog::new(db, cache, ttls).with_checker(checker),
            None => Catalog::new(db, cache, ttls),
        }),
        metrics,
        feed,
        limits: config.limits(),
    })
}

/// How long a graceful shutdown waits for the cache to take the invalidations it kept while
/// it could not be reached.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(5);

/// Builds the service, prints `listening on http://ADDR` on stdout once it is ready, and
/// serves on `listener` until `shutdown` completes; requests in flight are finished, then the
/// invalidations the cache kept during an outage are sent (for at most [`SHUTDOWN_FLUSH`]).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = build(&config).await?;
    let addr = listener.local_addr()?;
    info!(config = ?config, %addr, "catalog ready");
    println!("listening on http://{addr}");
    let metrics = state.metrics.clone();
    let _upkeep = every(METRICS_UPKEEP, move || metrics.run_upkeep());
    let catalog = state.catalog.clone();
    let feed = state.feed.clone();
    let limits = state.limits.clone();
    server::serve(listener, app(state), &limits, shutdown).await;
    // The feed first: it applies what it has read and records how far it got.
    if let Some(feed) = feed.and_then(|f| Arc::try_unwrap(f).ok())
        && let Err(e) = feed.shutdown().await
    {
        tracing::warn!(error = %e, "the change feed did not stop cleanly; it resumes from its stored position");
    }
    if let Some(cache) = catalog.cache()
        && cache.flush(SHUTDOWN_FLUSH).await == aside::Invalidation::Queued
    {
        tracing::warn!(
            pending = cache.health().pending_invalidations,
            "shutting down with invalidations the cache did not take; the change feed applies them"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn every_runs_once_per_period_until_dropped() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let period = Duration::from_secs(5);
        let guard = every(period, move || {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        tokio::time::sleep(period / 2).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            0,
            "not before the first period"
        );
        tokio::time::sleep(period * 3).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        drop(guard);
        tokio::time::sleep(period * 3).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "stopped once dropped");
    }
}
