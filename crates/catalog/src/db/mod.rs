//! The database: one [`Repository`] trait, implemented once for SQLite and PostgreSQL
//! ([`sql::SqlRepository`], with what each database does its own way in [`sqlite`] and
//! [`postgres`]), and [`Db`], which every request goes through and which counts, slows down
//! (for demonstrations) and bounds every round trip.
//!
//! Each request-path method of [`Repository`] is exactly one SQL statement, so one database
//! round trip; writes are single statements too, so each is committed when it returns.

use crate::model::{Category, Id, NewProduct, Product, ProductPatch};
use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub mod postgres;
pub mod sql;
pub mod sqlite;

/// Result with [`DbError`].
pub type Result<T, E = DbError> = std::result::Result<T, E>;

/// What went wrong with the database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// A product with this id exists already.
    #[error("a product with this id already exists")]
    Duplicate,
    /// The category referred to does not exist.
    #[error("the category does not exist")]
    UnknownCategory,
    /// The round trip did not finish in time.
    #[error("database round trip timed out after {0:?}")]
    Timeout(Duration),
    /// The database could not be reached or is overloaded.
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    /// Any other database error.
    #[error("database error")]
    Query(#[source] sqlx::Error),
    /// Migrations could not be applied.
    #[error("database migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// The change feed could not be set up.
    #[error("database change feed failed")]
    Feed(#[source] aside_feed::Error),
    /// The URL names no supported database.
    #[error("unsupported database url (use sqlite://path, sqlite::memory: or postgres://...)")]
    UnsupportedUrl,
}

impl DbError {
    /// Whether this is an outage (timeout, connection, overload) rather than a bad statement.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DbError::Timeout(_) | DbError::Unavailable(_))
    }
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match &e {
            E::Database(d) if d.is_unique_violation() => DbError::Duplicate,
            E::Database(d) if d.is_foreign_key_violation() => DbError::UnknownCategory,
            E::Database(d)
                if sqlite::is_unavailable(d.as_ref()) || postgres::is_unavailable(d.as_ref()) =>
            {
                DbError::Unavailable(e)
            }
            // A protocol error is the connection's, not the statement's: sqlx reports one
            // when the server hangs up in the middle of an exchange (at connect, the end of
            // the stream reads as an unexpected response to its SSLRequest). An outage, and
            // a write it cut off may have committed.
            E::Io(_)
            | E::Tls(_)
            | E::Protocol(_)
            | E::PoolTimedOut
            | E::PoolClosed
            | E::WorkerCrashed => DbError::Unavailable(e),
            _ => DbError::Query(e),
        }
    }
}

/// One page of products and the total count, read in one statement.
#[derive(Clone, Debug, PartialEq)]
pub struct Page {
    /// The products of the page, newest first.
    pub products: Vec<Product>,
    /// How many products there are in all.
    pub total: u64,
}

/// The ids of one page of products and the total count, read in one statement: what a list
/// page's cache entry holds (its products are cached on their own).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PageIds {
    /// The ids of the page's products, newest first.
    pub ids: Vec<String>,
    /// How many products there are in all.
    pub total: u64,
}

/// The catalog's storage. Implemented for SQLite and PostgreSQL; `tests/repository.rs` runs
/// one suite against both.
///
/// Every method except [`migrate`](Repository::migrate) and [`seed`](Repository::seed) is one
/// statement, hence one round trip, and is atomic.
#[async_trait]
pub trait Repository: Send + Sync + fmt::Debug + 'static {
    /// A product with its category, or `None`.
    async fn product(&self, id: &Id) -> Result<Option<Product>>;

    /// `limit` products after `offset`, newest first (`createdAt` descending, then id
    /// descending), and the total count.
    async fn page(&self, offset: u64, limit: u32) -> Result<Page>;

    /// The ids of `limit` products after `offset`, in the order of [`page`](Repository::page),
    /// and the total count.
    async fn page_ids(&self, offset: u64, limit: u32) -> Result<PageIds>;

    /// The products with these ids, with their categories, in no particular order; ids that
    /// name no product are left out. One statement (`WHERE id IN (...)`) for all of them.
    async fn products(&self, ids: &[Id]) -> Result<Vec<Product>>;

    /// Inserts a product. [`DbError::Duplicate`] if the id is taken,
    /// [`DbError::UnknownCategory`] if its category does not exist.
    async fn insert(&self, p: &NewProduct) -> Result<Product>;

    /// Changes a product and sets its `updatedAt`; `None` if it does not exist.
    async fn update(
        &self,
        id: &Id,
        patch: &ProductPatch,
        now: DateTime<Utc>,
    ) -> Result<Option<Product>>;

    /// Deletes a product; whether it existed.
    async fn delete(&self, id: &Id) -> Result<bool>;

    /// Renames a category; `None` if it does not exist.
    async fn rename_category(&self, id: &Id, name: &str) -> Result<Option<Category>>;

    /// Checks that the database answers.
    async fn ping(&self) -> Result<()>;

    /// Applies the migrations (startup only; many round trips).
    async fn migrate(&self) -> Result<()>;

    /// Installs the change feed's outbox and triggers (idempotent; startup only) and starts a
    /// feed applying every committed change of the catalog's tables to `cache` (see
    /// [`crate::feed`]).
    async fn change_feed(
        &self,
        cache: aside::Cache,
        config: aside_feed::FeedConfig,
        mapping: crate::feed::Mapping,
    ) -> Result<aside_feed::Feed>;

    /// Into an empty database (no categories, no products), writes the seed data in one
    /// transaction: [`seed_categories`] and [`seed_product`]`(1..=products)`. Returns whether
    /// it did (startup only).
    async fn seed(&self, products: u32) -> Result<bool>;
}

/// How many categories the seed data has.
pub const SEED_CATEGORIES: u32 = 20;

/// The seed's categories: `c1`..`c20`, named `Category j`.
pub fn seed_categories() -> Vec<Category> {
    (1..=SEED_CATEGORIES)
        .map(|j| Category {
            id: format!("c{j}"),
            name: format!("Category {j}"),
        })
        .collect()
}

/// Seed product `i` (from 1): id `pi`, named `Product i`, in category `c((i-1) % 20 + 1)`,
/// priced `i % 1000 + 0.99`, created `i` seconds after 2025-01-01T00:00:00Z (so newest first
/// starts with the last one).
pub fn seed_product(i: u32) -> NewProduct {
    let base = DateTime::<Utc>::from_timestamp(1_735_689_600, 0).unwrap_or_default();
    let category = format!("c{}", (i - 1) % SEED_CATEGORIES + 1);
    NewProduct {
        id: Id::parse(&format!("p{i}")).unwrap_or_else(|_| Id::generate()),
        name: format!("Product {i}"),
        price: f64::from(i % 1000) + 0.99,
        category_id: Id::parse(&category).unwrap_or_else(|_| Id::generate()),
        created_at: base + TimeDelta::seconds(i64::from(i)),
    }
}

/// Rows per multi-row `INSERT` when seeding (6 parameters each: well under both databases'
/// parameter limits).
const SEED_BATCH: u32 = 1000;

/// The seed products `1..=products` in batches of at most [`SEED_BATCH`], one `INSERT` each.
pub(crate) fn seed_batches(products: u32) -> impl Iterator<Item = std::ops::RangeInclusive<u32>> {
    (0..products.div_ceil(SEED_BATCH)).map(move |b| {
        let first = b * SEED_BATCH + 1;
        first..=products.min(first.saturating_add(SEED_BATCH - 1))
    })
}

/// How [`Db`] treats round trips.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Added before every round trip (to demonstrate the cache against a slow database).
    pub latency: Duration,
    /// Upper bound of every round trip (and of waiting for a pooled connection).
    pub timeout: Duration,
    /// Pool size.
    pub max_connections: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            timeout: Duration::from_secs(2),
            max_connections: 10,
        }
    }
}

/// Connects to `url` (`sqlite://path`, `sqlite::memory:`, `postgres://...`), creating a
/// SQLite file that does not exist. Runs nothing else: see [`Repository::migrate`].
pub async fn connect(url: &str, options: &Options) -> Result<Arc<dyn Repository>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(
            sqlite::SqliteRepository::connect(url, options).await?,
        ))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(
            postgres::PostgresRepository::connect(url, options).await?,
        ))
    } else {
        Err(DbError::UnsupportedUrl)
    }
}

/// The database as the request path sees it: a [`Repository`] whose every round trip is
/// counted (`catalog_db_queries_total{source="request"}`), delayed by the configured latency and bounded by the
/// timeout ([`DbError::Timeout`]). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Db {
    repo: Arc<dyn Repository>,
    options: Options,
    queries: Arc<AtomicU64>,
    counter: metrics::Counter,
    /// One permit per pooled connection: a round trip holds one for its whole duration, the
    /// added latency included, as a slow query holds its connection.
    slots: Arc<tokio::sync::Semaphore>,
}

impl Db {
    /// Wraps a repository. Registers `catalog_db_queries_total` with the installed metrics
    /// recorder (install it first).
    pub fn new(repo: Arc<dyn Repository>, options: Options) -> Self {
        let counter = metrics::counter!("catalog_db_queries_total", "source" => "request");
        counter.increment(0);
        Self {
            repo,
            options,
            queries: Arc::default(),
            counter,
            slots: Arc::new(tokio::sync::Semaphore::new(
                options.max_connections.max(1) as usize
            )),
        }
    }

    /// The same database, its round trips counted apart: as
    /// `catalog_db_queries_total{source}` and in [`queries`](Db::queries) of the new handle
    /// only. It shares the connection slots.
    pub fn with_source(&self, source: &'static str) -> Self {
        let counter = metrics::counter!("catalog_db_queries_total", "source" => source);
        counter.increment(0);
        Self {
            queries: Arc::default(),
            counter,
            ..self.clone()
        }
    }

    /// Round trips made through this handle (and its clones) so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// The repository, for startup work that is not counted (migrations, seeding).
    pub fn repository(&self) -> &Arc<dyn Repository> {
        &self.repo
    }

    async fn trip<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        self.counter.increment(1);
        let timeout = DbError::Timeout(self.options.timeout);
        // Waiting for a connection counts against the timeout, as it does in the pool.
        let Ok(Ok(_slot)) = tokio::time::timeout(self.options.timeout, self.slots.acquire()).await
        else {
            return Err(timeout);
        };
        if !self.options.latency.is_zero() {
            tokio::time::sleep(self.options.latency).await;
        }
        tokio::time::timeout(self.options.timeout, fut)
            .await
            .unwrap_or(Err(timeout))
    }

    /// See [`Repository::product`].
    pub async fn product(&self, id: &Id) -> Result<Option<Product>> {
        self.trip(self.repo.product(id)).await
    }

    /// See [`Repository::page`].
    pub async fn page(&self, offset: u64, limit: u32) -> Result<Page> {
        self.trip(self.repo.page(offset, limit)).await
    }

    /// See [`Repository::page_ids`].
    pub async fn page_ids(&self, offset: u64, limit: u32) -> Result<PageIds> {
        self.trip(self.repo.page_ids(offset, limit)).await
    }

    /// See [`Repository::products`]; no round trip for no ids.
    pub async fn products(&self, ids: &[Id]) -> Result<Vec<Product>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.trip(self.repo.products(ids)).await
    }

    /// See [`Repository::insert`].
    pub async fn insert(&self, p: &NewProduct) -> Result<Product> {
        self.trip(self.repo.insert(p)).await
    }

    /// See [`Repository::update`].
    pub async fn update(
        &self,
        id: &Id,
        patch: &ProductPatch,
        now: DateTime<Utc>,
    ) -> Result<Option<Product>> {
        self.trip(self.repo.update(id, patch, now)).await
    }

    /// See [`Repository::delete`].
    pub async fn delete(&self, id: &Id) -> Result<bool> {
        self.trip(self.repo.delete(id)).await
    }

    /// See [`Repository::rename_category`].
    pub async fn rename_category(&self, id: &Id, name: &str) -> Result<Option<Category>> {
        self.trip(self.repo.rename_category(id, name)).await
    }

    /// See [`Repository::ping`].
    pub async fn ping(&self) -> Result<()> {
        self.trip(self.repo.ping()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_follows_the_contract() {
        let p = seed_product(1);
        assert_eq!(
            (p.id.as_str(), p.name.as_str(), p.category_id.as_str()),
            ("p1", "Product 1", "c1")
        );
        assert_eq!(p.price, 1.99);
        assert_eq!(seed_product(20).category_id.as_str(), "c20");
        assert_eq!(seed_product(21).category_id.as_str(), "c1");
        assert_eq!(seed_product(1000).price, 0.99);
        assert!(seed_product(2).created_at > p.created_at);
        assert_eq!(
            seed_categories()[19],
            Category {
                id: "c20".into(),
                name: "Category 20".into()
            }
        );
    }

    #[test]
    fn seed_batches_cover_every_product_once() {
        assert_eq!(seed_batches(0).count(), 0);
        assert_eq!(seed_batches(1).collect::<Vec<_>>(), [1..=1]);
        assert_eq!(
            seed_batches(2500).collect::<Vec<_>>(),
            [1..=1000, 1001..=2000, 2001..=2500]
        );
        assert_eq!(
            seed_batches(u32::MAX).last().map(|r| *r.end()),
            Some(u32::MAX)
        );
    }
}
