//! [`Catalog`]: the seed's `ProductService`, cache-aside over [`Db`] with `aside`.
//!
//! # Keys, TTLs, tags
//! | entry | key | TTL | tags |
//! | --- | --- | --- | --- |
//! | a product with its category | `product:{id}` | product TTL (5 min) | `category:{categoryId}`, or `category-unknown` |
//! | a missing product | `product:{id}` | negative TTL (30 s) | as above |
//! | a list page | `products:list:{page}:{limit}` | list TTL (60 s) | (the prefix `products:list:`) |
//!
//! # Writes
//! The database statement runs first; only after it has committed are the dependent entries
//! invalidated, and only then is the write acknowledged:
//! - create, update, delete: the key `product:{id}` and the prefix `products:list:`;
//! - category rename: the tags `category:{id}` and `category-unknown`, and the prefix
//!   `products:list:`.
//!
//! A write that failed for sure (not found, conflict, unknown category) leaves the cache as it
//! was. A write whose outcome is unknown (timeout, lost connection) invalidates as if it had
//! committed: dropping an entry that was still right only costs a reload.
//!
//! The engine's fenced fills make this enough: a read that loaded the old row before the
//! write cannot store it afterwards, and reads after the acknowledgement never join a load
//! that began before it.
//!
//! # Tagging a product with its category
//! Tags are given before the loader runs (the engine reads their versions first, which is what
//! makes a rename during a load void that load's fill), but a product's category is known only
//! once it is loaded. So each instance remembers the category it last saw for each product
//! (a bounded hint map). With a hint, the entry is tagged `category:{hint}`; if the loaded
//! product turned out to be in another category (moved by another instance), the value is
//! returned but not stored, and the hint corrected. Without a hint (first read of a product in
//! this process), the entry is tagged `category-unknown`, which every rename invalidates too.
//! A hint that is wrong can therefore only cost a reload, never serve an old category name.

use crate::db::{Db, DbError};
use crate::error::ApiError;
use crate::model::{
    Category, Id, NewProduct, PageRequest, Product, ProductPage, ProductPatch, now, total_pages,
};
use aside::{Cache, LoadError, Status};
use std::time::Duration;
use tracing::warn;

/// Tag of product entries loaded without knowing their category beforehand.
pub const UNKNOWN_CATEGORY_TAG: &str = "category-unknown";
/// Prefix of every list page key.
pub const LIST_PREFIX: &str = "products:list:";
/// How many product → category hints each instance keeps.
const HINTS: u64 = 200_000;

/// How long entries live.
#[derive(Clone, Copy, Debug)]
pub struct Ttls {
    /// A product (the seed's 5 minutes).
    pub product: Duration,
    /// A list page (the seed's 60 seconds).
    pub list: Duration,
    /// A "not found".
    pub negative: Duration,
}

impl Default for Ttls {
    fn default() -> Self {
        Self {
            product: Duration::from_secs(300),
            list: Duration::from_secs(60),
            negative: Duration::from_secs(30),
        }
    }
}

/// Where a read was answered from: the `x-cache` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// From the cache.
    Hit,
    /// From the database, through the cache.
    Miss,
    /// From the cache, past its freshness.
    Stale,
    /// From the database; the cache is off (`--no-cache`).
    Bypass,
}

impl CacheStatus {
    /// `hit`, `miss`, `stale` or `bypass`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Stale => "stale",
            CacheStatus::Bypass => "bypass",
        }
    }
}

impl From<Status> for CacheStatus {
    fn from(s: Status) -> Self {
        match s {
            Status::Hit => CacheStatus::Hit,
            Status::Miss => CacheStatus::Miss,
            Status::Stale => CacheStatus::Stale,
        }
    }
}

/// Why a product load did not give a value to cache.
#[derive(Debug, thiserror::Error)]
enum ProductLoad {
    #[error(transparent)]
    Db(DbError),
    /// Loaded fine, but not in the category its entry was tagged with: serve, do not store.
    #[error("product is in another category than its hint")]
    Moved(Product),
}

/// The catalog: reads through the cache, writes to the database then invalidate.
#[derive(Debug)]
pub struct Catalog {
    db: Db,
    cache: Option<Cache>,
    ttls: Ttls,
    hints: moka::sync::Cache<String, String>,
}

impl Catalog {
    /// A catalog over `db`, cached with `cache` (`None`: every read goes to the database).
    pub fn new(db: Db, cache: Option<Cache>, ttls: Ttls) -> Self {
        Self {
            db,
            cache,
            ttls,
            hints: moka::sync::Cache::new(HINTS),
        }
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The cache, unless it is off.
    pub fn cache(&self) -> Option<&Cache> {
        self.cache.as_ref()
    }

    /// `GET /products/{id}`: the product (`None`: it does not exist, possibly a cached answer).
    pub async fn product(&self, id: &Id) -> Result<(Option<Product>, CacheStatus), ApiError> {
        let Some(cache) = &self.cache else {
            return Ok((self.db.product(id).await?, CacheStatus::Bypass));
        };
        let key = format!("product:{id}");
        let hint = self.hints.get(id.as_str());
        let tag = match &hint {
            Some(c) => format!("category:{c}"),
            None => UNKNOWN_CATEGORY_TAG.to_owned(),
        };
        let fetched = cache
            .entry(&key)
            .ttl(self.ttls.product)
            .negative_ttl(self.ttls.negative)
            .tag(&tag)
            .fetch(|| async {
                let p = self.db.product(id).await.map_err(ProductLoad::Db)?;
                match (p, &hint) {
                    (Some(p), Some(c)) if p.category_id != *c => Err(ProductLoad::Moved(p)),
                    (p, _) => Ok(p),
                }
            })
            .await;
        match fetched {
            Ok(f) => {
                if let Some(p) = &f.value
                    && hint.as_deref() != Some(p.category_id.as_str())
                {
                    self.hints.insert(p.id.clone(), p.category_id.clone());
                }
                Ok((f.value, f.status.into()))
            }
            Err(LoadError::Loader(e)) => match &*e {
                ProductLoad::Moved(p) => {
                    self.hints.insert(p.id.clone(), p.category_id.clone());
                    Ok((Some(p.clone()), CacheStatus::Miss))
                }
                ProductLoad::Db(e) => Err(ApiError::from_db(e)),
            },
            Err(LoadError::Cache(e)) => Err(cache_bug(&e)),
        }
    }

    /// `GET /products?page=&limit=`: one page, newest first.
    pub async fn page(&self, req: PageRequest) -> Result<(ProductPage, CacheStatus), ApiError> {
        let load = || async {
            let page = self.db.page(req.offset(), req.limit).await?;
            Ok::<_, DbError>(ProductPage {
                total_pages: total_pages(page.total, req.limit),
                total: page.total,
                products: page.products,
                page: req.page,
                limit: req.limit,
            })
        };
        let Some(cache) = &self.cache else {
            return Ok((load().await?, CacheStatus::Bypass));
        };
        let key = format!("{LIST_PREFIX}{}:{}", req.page, req.limit);
        let fetched = cache
            .entry(&key)
            .ttl(self.ttls.list)
            .fetch(|| async { load().await.map(Some) })
            .await;
        match fetched {
            Ok(f) => match f.value {
                Some(page) => Ok((page, f.status.into())),
                None => {
                    // Only reachable if something outside this service wrote the key.
                    warn!(key, "list page cached as not found; reading the database");
                    Ok((load().await?, CacheStatus::Miss))
                }
            },
            Err(LoadError::Loader(e)) => Err(ApiError::from_db(&e)),
            Err(LoadError::Cache(e)) => Err(cache_bug(&e)),
        }
    }

    /// `POST /products`.
    pub async fn create(&self, p: NewProduct) -> Result<Product, ApiError> {
        let r = self.db.insert(&p).await;
        self.after_product_write(&p.id, wrote(&r, |_| true)).await;
        let created = r?;
        self.hints
            .insert(created.id.clone(), created.category_id.clone());
        Ok(created)
    }

    /// `PUT /products/{id}`; `None` if there is no such product.
    pub async fn update(&self, id: &Id, patch: &ProductPatch) -> Result<Option<Product>, ApiError> {
        let r = self.db.update(id, patch, now()).await;
        self.after_product_write(id, wrote(&r, Option::is_some))
            .await;
        let updated = r?;
        if let Some(p) = &updated {
            self.hints.insert(p.id.clone(), p.category_id.clone());
        }
        Ok(updated)
    }

    /// `DELETE /products/{id}`; whether it existed.
    pub async fn delete(&self, id: &Id) -> Result<bool, ApiError> {
        let r = self.db.delete(id).await;
        self.after_product_write(id, wrote(&r, |existed| *existed))
            .await;
        let existed = r?;
        if existed {
            self.hints.invalidate(id.as_str());
        }
        Ok(existed)
    }

    /// `PUT /categories/{id}`; `None` if there is no such category.
    pub async fn rename_category(&self, id: &Id, name: &str) -> Result<Option<Category>, ApiError> {
        let r = self.db.rename_category(id, name).await;
        if wrote(&r, Option::is_some)
            && let Some(cache) = &self.cache
        {
            let tag = format!("category:{id}");
            log_invalidation(
                cache
                    .invalidate_tags([tag.as_str(), UNKNOWN_CATEGORY_TAG])
                    .await,
            );
            log_invalidation(cache.invalidate_prefix(LIST_PREFIX).await);
        }
        Ok(r?)
    }

    /// After a product write that changed something (or may have): invalidate its entry and
    /// every list page.
    async fn after_product_write(&self, id: &Id, changed: bool) {
        if changed && let Some(cache) = &self.cache {
            log_invalidation(cache.del([format!("product:{id}")]).await);
            log_invalidation(cache.invalidate_prefix(LIST_PREFIX).await);
        }
    }
}

/// Whether a write changed the database or may have: `changed` of its result, or an error
/// that leaves the outcome unknown (timeout, lost connection).
fn wrote<T>(r: &Result<T, DbError>, changed: impl FnOnce(&T) -> bool) -> bool {
    match r {
        Ok(v) => changed(v),
        Err(e) => e.is_unavailable(),
    }
}

fn log_invalidation(r: aside::Result<aside::Invalidation>) {
    match r {
        Ok(aside::Invalidation::Applied) => {}
        Ok(aside::Invalidation::Queued) => {
            warn!("cache unreachable: invalidation queued until it answers");
        }
        Err(e) => warn!(error = %e, "invalidation refused"),
    }
}

fn cache_bug(e: &aside::Error) -> ApiError {
    tracing::error!(error = %e, "cache refused a call");
    ApiError::Internal
}
