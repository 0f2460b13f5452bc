//! Test support: a fresh PostgreSQL database per test, a TCP proxy that can cut a pool off
//! the server, SQLite files, a cache store that can be made to fail, and polling helpers.
#![allow(dead_code, clippy::unwrap_used)]

use aside::store::{Claim, Kind, Lease, Lookup, MemoryStore, Store};
use aside::{Cache, StoreError};
use aside_feed::{Change, Invalidations, Op};
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection, PgPool, SqlitePool};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The server's administrative database (override with `ASIDE_FEED_TEST_POSTGRES`).
pub fn postgres_admin_url() -> String {
    std::env::var("ASIDE_FEED_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database with a random name on the local PostgreSQL, dropped on `Drop`.
pub struct TestPostgres {
    pub url: String,
    pub name: String,
}

impl TestPostgres {
    pub async fn new() -> Self {
        let admin = postgres_admin_url();
        let name = format!("aside_feed_test_{:016x}", rand::random::<u64>());
        let mut conn = PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL must answer at {admin}: {e}"));
        conn.execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }

    /// The URL of this database through another host:port (a proxy).
    pub fn url_via(&self, port: u16) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/{}", self.name)
    }

    pub async fn pool(&self) -> PgPool {
        pool_at(&self.url).await
    }

    /// The catalog-like tables, with the feed's triggers.
    pub async fn with_tables(self) -> (Self, PgPool) {
        let pool = self.pool().await;
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
        (self, pool)
    }
}

pub async fn pool_at(url: &str) -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(url)
        .unwrap()
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside a runtime in async tests: do the async work on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut c) = PgConnection::connect(&postgres_admin_url()).await {
                    let _ = c
                        .execute(AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .await;
                }
            });
        })
        .join();
    }
}

/// A TCP proxy to 127.0.0.1:5432 that can be cut (live connections closed, new ones refused
/// at once) and restored.
pub struct Proxy {
    pub port: u16,
    up: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (up, up_rx) = watch::channel(true);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let mut up = up_rx.clone();
                if !*up.borrow() {
                    drop(client);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect("127.0.0.1:5432").await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = up.wait_for(|u| !*u) => {}
                    }
                });
            }
        });
        Self { port, up, task }
    }

    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.set_up(false);
        self.task.abort();
    }
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

/// Polls `cond` every 2 ms until it holds or `limit` passes; whether it held.
pub async fn eventually<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
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

/// A memory store whose invalidations and pings fail while it is "down".
#[derive(Debug)]
pub struct FlakyStore {
    inner: MemoryStore,
    pub down: AtomicBool,
}

impl FlakyStore {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: MemoryStore::new(10_000),
            down: AtomicBool::new(false),
        })
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Protocol("down for the test".to_owned()))
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl Store for FlakyStore {
    fn kind(&self) -> Kind {
        Kind::Memory
    }
    async fn get(
        &self,
        key: &aside::key::EntryKey,
        stamps: &[aside::key::TagKey],
    ) -> Result<Lookup, StoreError> {
        self.check()?;
        self.inner.get(key, stamps).await
    }
    fn reads_need_stamps(&self) -> bool {
        self.inner.reads_need_stamps()
    }
    async fn claim(
        &self,
        key: &aside::key::EntryKey,
        stamps: &[aside::key::TagKey],
        clock: &aside::key::TagKey,
        lease: Duration,
        keep: Duration,
    ) -> Result<Claim, StoreError> {
        self.check()?;
        self.inner.claim(key, stamps, clock, lease, keep).await
    }
    async fn claim_refresh(
        &self,
        key: &aside::key::EntryKey,
        fresh_until: u64,
        stamps: &[aside::key::TagKey],
        clock: &aside::key::TagKey,
        lease: Duration,
        keep: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        self.check()?;
        self.inner
            .claim_refresh(key, fresh_until, stamps, clock, lease, keep)
            .await
    }
    async fn fill(
        &self,
        key: &aside::key::EntryKey,
        lease: &Lease,
        late: &[aside::key::TagKey],
        payload: bytes::Bytes,
        ttl: Duration,
        keep: Duration,
    ) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.fill(key, lease, late, payload, ttl, keep).await
    }
    async fn release(&self, key: &aside::key::EntryKey, lease: &Lease) -> Result<(), StoreError> {
        self.inner.release(key, lease).await
    }
    async fn set(
        &self,
        key: &aside::key::EntryKey,
        stamps: &[aside::key::TagKey],
        payload: bytes::Bytes,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.check()?;
        self.inner.set(key, stamps, payload, ttl).await
    }
    async fn delete(&self, keys: &[aside::key::EntryKey]) -> Result<(), StoreError> {
        self.check()?;
        self.inner.delete(keys).await
    }
    async fn bump(
        &self,
        stamps: &[aside::key::TagKey],
        clock: &aside::key::TagKey,
    ) -> Result<(), StoreError> {
        self.check()?;
        self.inner.bump(stamps, clock).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.check()
    }
}

/// A cache on a [`FlakyStore`], with a breaker that closes again quickly.
pub fn flaky_cache(ns: &str, store: Arc<FlakyStore>) -> Cache {
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
