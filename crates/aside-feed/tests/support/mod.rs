//! Test support on top of `testkit`: the catalog-like tables with the feed's triggers,
//! SQLite files, a cache store that can be made to fail, and the cache helpers.
#![allow(dead_code, clippy::unwrap_used)]

use aside::Cache;
use aside::store::{ChaosStore, MemoryStore};
use aside_feed::{Change, Invalidations, Op};
use sqlx::{Executor, PgPool, SqlitePool};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
#[allow(unused_imports)]
pub use testkit::{TcpProxy, TestPostgres, eventually};

/// The catalog-like tables in `db`, with the feed's triggers.
pub async fn with_tables(db: TestPostgres) -> (TestPostgres, PgPool) {
    let pool = pool_at(&db.url).await;
    pool.execute(
        "CREATE TABLE categories (id text PRIMARY KEY, name text NOT NULL);
         CREATE TABLE products (id text PRIMARY KEY, name text NOT NULL,
                                category_id text NOT NULL);",
    )
    .await
    .unwrap();
    aside_feed::postgres::install(&pool, &["products", "categories"])
        .await
        .unwrap();
    (db, pool)
}

/// As [`with_tables`], with the `NOTIFY` trigger that wakes the feed at once.
pub async fn with_notified_tables(db: TestPostgres) -> (TestPostgres, PgPool) {
    let (db, pool) = with_tables(db).await;
    let tables = ["products", "categories"];
    aside_feed::postgres::install_with(&pool, &tables, aside_feed::postgres::Wakeup::Notify)
        .await
        .unwrap();
    (db, pool)
}

pub async fn pool_at(url: &str) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(url)
        .unwrap()
}

/// A SQLite database file in a directory removed on `Drop`.
pub struct TestSqlite {
    pub dir: tempfile::TempDir,
    pub path: std::path::PathBuf,
}

impl TestSqlite {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("feed.db");
        Self { dir, path }
    }

    pub fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }

    /// A pool on the file (WAL, as a service would open it).
    pub async fn pool(&self) -> SqlitePool {
        sqlite_pool(&self.path, sqlx::sqlite::SqliteJournalMode::Wal).await
    }

    /// The catalog-like tables, with the feed's triggers (columns read from the table).
    pub async fn with_tables(self) -> (Self, SqlitePool) {
        let pool = self.pool().await;
        pool.execute(
            "CREATE TABLE categories (id TEXT PRIMARY KEY, name TEXT NOT NULL);
             CREATE TABLE products (id TEXT PRIMARY KEY, name TEXT NOT NULL,
                                    category_id TEXT NOT NULL);",
        )
        .await
        .unwrap();
        aside_feed::sqlite::install_all_columns(&pool, &["products", "categories"])
            .await
            .unwrap();
        (self, pool)
    }
}

pub async fn sqlite_pool(
    path: &std::path::Path,
    journal: sqlx::sqlite::SqliteJournalMode,
) -> SqlitePool {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(journal)
        .busy_timeout(Duration::from_millis(500));
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .connect_with(options)
        .await
        .unwrap()
}

/// Logs to the test's output, filtered by `RUST_LOG`.
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// An in-process cache (and the test's logs).
pub fn cache(ns: &str) -> Cache {
    logs();
    Cache::builder().namespace(ns).build().unwrap()
}

/// The mapping of the catalog-like tables, counting the changes it is given.
pub fn mapping(seen: Arc<AtomicUsize>) -> impl Fn(&Change) -> Invalidations + Send + Sync {
    move |c: &Change| {
        seen.fetch_add(1, Ordering::SeqCst);
        if c.op == Op::Truncate {
            return Invalidations::all();
        }
        match c.table.as_str() {
            "products" => Invalidations::none()
                .keys(c.values("id").iter().map(|id| format!("product:{id}")))
                .tags(
                    c.values("category_id")
                        .iter()
                        .map(|id| format!("category:{id}")),
                ),
            "categories" => {
                Invalidations::none().tags(c.values("id").iter().map(|id| format!("category:{id}")))
            }
            _ => Invalidations::none(),
        }
    }
}

/// Whether `key` is no longer cached.
pub async fn gone(cache: &Cache, key: &str) -> bool {
    cache.get::<String>(key).await.unwrap().is_none()
}

/// Puts `key` in the cache.
pub async fn put(cache: &Cache, key: &str) {
    cache.set(key, &"cached".to_owned()).await.unwrap();
    assert!(!gone(cache, key).await);
}

/// An entry of `key` tagged `tag`.
pub async fn put_tagged(cache: &Cache, key: &str, tag: &str) {
    cache
        .entry(key)
        .tag(tag)
        .set(&"cached".to_owned())
        .await
        .unwrap();
}

/// A store that fails on demand, over memory.
pub fn chaos_store() -> Arc<ChaosStore> {
    Arc::new(ChaosStore::new(Arc::new(MemoryStore::new(10_000))))
}

/// A cache on a [`ChaosStore`], with a breaker that closes again quickly.
pub fn flaky_cache(ns: &str, store: Arc<ChaosStore>) -> Cache {
    Cache::builder()
        .namespace(ns)
        .store(store)
        .breaker(1000, Duration::from_millis(10))
        .build()
        .unwrap()
}

/// Median and 99th percentile of `samples`.
pub fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99))
}
