//! [`Catalog`]: the product service, cache-aside over [`Db`] with `aside`.
//!
//! # Keys, TTLs, tags
//! | entry | key | TTL | tags |
//! | --- | --- | --- | --- |
//! | a product with its category | `product:{id}` | product TTL (5 min) | `category:{categoryId}` (learnt from the loaded product) |
//! | a missing product | `product:{id}` | negative TTL (30 s) | as above |
//! | a list page: its product ids and the total | `products:list:{page}_{limit}` | list TTL (60 s) | (the prefix `products:list:`) |
//!
//! A list page is assembled from its entry (ids, total) and its products' own entries, read
//! in one batch (`Cache::entries`), the missing ones loaded by one query; see
//! [`Catalog::page`].
//!
//! # Writes
//! The database statement runs first; only after it has committed are the dependent entries
//! invalidated, and only then is the write acknowledged:
//! - create, delete: the key `product:{id}` and the prefix `products:list:` (the list's
//!   order and total change);
//! - update (name, price, category): the key `product:{id}` only (an update never changes
//!   `createdAt`, the list's order);
//! - category rename: the tag `category:{id}` (the products of the category; pages hold
//!   ids only).
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
//! A product's category is known only once it is loaded, so the loader hands the tag back
//! with the value (`fetch_tagged_encoded`). The engine fences such fills with the clock of
//! the tag's shard: a rename that happens while a product is being loaded voids that load's
//! fill, so an old category name is never stored; writes of other products do not.
//!
//! # Hits are served as stored
//! Reads hand back the cached JSON bytes as they are (`fetch_*_encoded`): a hit costs no decode
//! and no re-encode.

use crate::checker::Checker;
use crate::db::{Db, DbError};
use crate::error::ApiError;
use crate::model::{
    Category, Id, NewProduct, PageRequest, Product, ProductPage, ProductPatch, now, total_pages,
};
use aside::{Cache, Fetched, LoadError, Status, Tagged};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::warn;

/// Prefix of every list page key.
pub const LIST_PREFIX: &str = "products:list:";

/// Prefix of every product key.
pub const PRODUCT_PREFIX: &str = "product:";

/// How long entries live.
#[derive(Clone, Copy, Debug)]
pub struct Ttls {
    /// A product (5 minutes).
    pub product: Duration,
    /// A list page (60 seconds).
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

/// A loaded product, tagged with its category.
fn tagged(p: Product) -> Tagged<Product> {
    let tag = format!("category:{}", p.category_id);
    Tagged::found(p).tag(tag)
}

/// The `x-cache` of a response assembled from several entries: `hit` if every one was a hit,
/// `stale` if any was stale, else `miss`.
fn page_status(statuses: impl Iterator<Item = Status>) -> CacheStatus {
    let mut all_hits = true;
    for s in statuses {
        match s {
            Status::Stale => return CacheStatus::Stale,
            Status::Miss => all_hits = false,
            Status::Hit => {}
        }
    }
    if all_hits {
        CacheStatus::Hit
    } else {
        CacheStatus::Miss
    }
}

/// A JSON body, ready to send.
fn json<T: serde::Serialize>(v: &T) -> Result<Bytes, ApiError> {
    serde_json::to_vec(v).map(Bytes::from).map_err(|e| {
        tracing::error!(error = %e, "response could not be encoded");
        ApiError::Internal
    })
}

/// The catalog: reads through the cache, writes to the database then invalidate.
#[derive(Debug)]
pub struct Catalog {
    db: Db,
    cache: Option<Cache>,
    ttls: Ttls,
    checker: Option<Arc<Checker>>,
}

impl Catalog {
    /// A catalog over `db`, cached with `cache` (`None`: every read goes to the database).
    pub fn new(db: Db, cache: Option<Cache>, ttls: Ttls) -> Self {
        Self {
            db,
            cache,
            ttls,
            checker: None,
        }
    }

    /// The same catalog, a sample of its product hits checked by `checker`, which is also
    /// told of every write it makes.
    pub fn with_checker(mut self, checker: Arc<Checker>) -> Self {
        self.checker = Some(checker);
        self
    }

    /// The live consistency checker, if there is one.
    pub fn checker(&self) -> Option<&Arc<Checker>> {
        self.checker.as_ref()
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The cache, unless it is off.
    pub fn cache(&self) -> Option<&Cache> {
        self.cache.as_ref()
    }

    /// `GET /products/{id}`: the product as JSON (`None`: it does not exist, possibly a
    /// cached answer).
    pub async fn product(&self, id: &Id) -> Result<(Option<Bytes>, CacheStatus), ApiError> {
        let Some(cache) = &self.cache else {
            let p = self.db.product(id).await?;
            return Ok((p.as_ref().map(json).transpose()?, CacheStatus::Bypass));
        };
        let began = self
            .checker
            .as_ref()
            .map(|_| (Instant::now(), chrono::Utc::now()));
        let key = format!("{PRODUCT_PREFIX}{id}");
        let (db, loaded_id) = (self.db.clone(), id.clone());
        let fetched = cache
            .entry(&key)
            .ttl(self.ttls.product)
            .negative_ttl(self.ttls.negative)
            .fetch_tagged_encoded(|| async move {
                let p = db.product(&loaded_id).await?;
                Ok::<_, DbError>(p.map_or_else(Tagged::missing, tagged))
            })
            .await;
        match fetched {
            Ok(f) => {
                if let (Some(checker), Some((at, at_wall)), Status::Hit) =
                    (&self.checker, began, f.status)
                {
                    checker.hit(id, f.value.as_ref(), at, at_wall);
                }
                Ok((f.value, f.status.into()))
            }
            Err(LoadError::Loader(e)) => Err(ApiError::from_db(&e)),
            Err(LoadError::Cache(e)) => Err(cache_bug(&e)),
        }
    }

    /// `GET /products?page=&limit=`: one page, newest first, as JSON.
    ///
    /// Cached in two parts: the page's entry holds its product ids and the total only, and
    /// its products come from their own entries (`product:{id}`, the ones `GET
    /// /products/{id}` uses), all read in one batch, those that missed loaded by one query.
    /// So a product's update drops its own entry and no page. The `x-cache` of a page is
    /// `hit` only if the page's entry and every product's were hits, `stale` if any of them
    /// was stale, else `miss`. A product deleted between the two reads (its delete drops the
    /// pages too, so the next read lists the page anew) is left out: the page has one product
    /// fewer and a total one higher than the database now says, as if it had been read just
    /// before the delete.
    pub async fn page(&self, req: PageRequest) -> Result<(Bytes, CacheStatus), ApiError> {
        let Some(cache) = &self.cache else {
            let page = self.db.page(req.offset(), req.limit).await?;
            let page = ProductPage {
                total_pages: total_pages(page.total, req.limit),
                total: page.total,
                products: page.products,
                page: req.page,
                limit: req.limit,
            };
            return Ok((json(&page)?, CacheStatus::Bypass));
        };
        // No `:` after the prefix: the engine keeps a version key for every prefix of a key
        // that ends at a `:`, and `products:list:{page}:` would make one per page number,
        // so one request per page would fill the store with them.
        let key = format!("{LIST_PREFIX}{}_{}", req.page, req.limit);
        let db = self.db.clone();
        let listed = cache
            .entry(&key)
            .ttl(self.ttls.list)
            .fetch(move || async move { db.page_ids(req.offset(), req.limit).await.map(Some) })
            .await;
        let (ids, listed_status) = match listed {
            Ok(Fetched {
                value: Some(ids),
                status,
            }) => (ids, status),
            Ok(Fetched { value: None, .. }) => {
                // Only reachable if something outside this service wrote the key.
                warn!(key, "list page cached as not found; reading the database");
                let ids = self.db.page_ids(req.offset(), req.limit).await?;
                (ids, Status::Miss)
            }
            Err(LoadError::Loader(e)) => return Err(ApiError::from_db(&e)),
            Err(LoadError::Cache(e)) => return Err(cache_bug(&e)),
        };
        // Ids written by another client that this API would refuse cannot be cache keys
        // (nor read one by one): they are not listed.
        let keys: Vec<String> = ids
            .ids
            .iter()
            .filter(|id| Id::parse(id).is_ok())
            .map(|id| format!("{PRODUCT_PREFIX}{id}"))
            .collect();
        let db = self.db.clone();
        let products = cache
            .entries(keys)
            .ttl(self.ttls.product)
            .negative_ttl(self.ttls.negative)
            .fetch_tagged_encoded(move |missed: Vec<String>| {
                let db = db.clone();
                async move {
                    let ids: Vec<Id> = missed
                        .iter()
                        .filter_map(|k| Id::parse(k.strip_prefix(PRODUCT_PREFIX)?).ok())
                        .collect();
                    let found = db.products(&ids).await?;
                    Ok::<_, DbError>(
                        found
                            .into_iter()
                            .map(|p| (format!("{PRODUCT_PREFIX}{}", p.id), tagged(p)))
                            .collect::<HashMap<_, _>>(),
                    )
                }
            })
            .await;
        let products = match products {
            Ok(p) => p,
            Err(LoadError::Loader(e)) => return Err(ApiError::from_db(&e)),
            Err(LoadError::Cache(e)) => return Err(cache_bug(&e)),
        };
        let statuses = std::iter::once(listed_status).chain(products.iter().map(|f| f.status));
        let status = page_status(statuses);
        let mut body = Vec::with_capacity(
            64 + products
                .iter()
                .map(|f| f.value.as_ref().map_or(0, |b| b.len() + 1))
                .sum::<usize>(),
        );
        body.extend_from_slice(b"{\"products\":[");
        let mut first = true;
        for p in products.iter().filter_map(|f| f.value.as_ref()) {
            if !first {
                body.push(b',');
            }
            first = false;
            body.extend_from_slice(p);
        }
        body.extend_from_slice(
            format!(
                "],\"total\":{},\"page\":{},\"limit\":{},\"totalPages\":{}}}",
                ids.total,
                req.page,
                req.limit,
                total_pages(ids.total, req.limit)
            )
            .as_bytes(),
        );
        Ok((Bytes::from(body), status))
    }

    /// `POST /products`.
    pub async fn create(&self, p: NewProduct) -> Result<Product, ApiError> {
        let r = self.db.insert(&p).await;
        self.after_product_write(&p.id, wrote(&r, |_| true)).await;
        Ok(r?)
    }

    /// `PUT /products/{id}`; `None` if there is no such product. An update never changes a
    /// product's `createdAt` (the order of the list), so it drops no list page.
    pub async fn update(&self, id: &Id, patch: &ProductPatch) -> Result<Option<Product>, ApiError> {
        let r = self.db.update(id, patch, now()).await;
        if wrote(&r, Option::is_some)
            && let Some(cache) = &self.cache
        {
            let key = format!("{PRODUCT_PREFIX}{id}");
            log_invalidation(cache.del([key.as_str()]).await);
            if let Some(checker) = &self.checker {
                checker.changed(&key);
            }
        }
        Ok(r?)
    }

    /// `DELETE /products/{id}`; whether it existed.
    pub async fn delete(&self, id: &Id) -> Result<bool, ApiError> {
        let r = self.db.delete(id).await;
        self.after_product_write(id, wrote(&r, |existed| *existed))
            .await;
        Ok(r?)
    }

    /// `PUT /categories/{id}`; `None` if there is no such category.
    pub async fn rename_category(&self, id: &Id, name: &str) -> Result<Option<Category>, ApiError> {
        let r = self.db.rename_category(id, name).await;
        if wrote(&r, Option::is_some)
            && let Some(cache) = &self.cache
        {
            // The products of the category carry its tag; list pages hold ids only.
            let tag = format!("category:{id}");
            log_invalidation(cache.invalidate_tag(&tag).await);
            if let Some(checker) = &self.checker {
                checker.changed(&tag);
            }
        }
        Ok(r?)
    }

    /// After a create or a delete that changed something (or may have): invalidate the
    /// product's entry and every list page (the list's order and total changed).
    async fn after_product_write(&self, id: &Id, changed: bool) {
        if changed && let Some(cache) = &self.cache {
            let key = format!("{PRODUCT_PREFIX}{id}");
            log_invalidation(cache.del([key.as_str()]).await);
            log_invalidation(cache.invalidate_prefix(LIST_PREFIX).await);
            if let Some(checker) = &self.checker {
                checker.changed(&key);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_is_a_hit_only_if_every_entry_was() {
        use Status::{Hit, Miss, Stale};
        let of = |s: &[Status]| page_status(s.iter().copied());
        assert_eq!(of(&[Hit, Hit, Hit]), CacheStatus::Hit);
        assert_eq!(of(&[Hit]), CacheStatus::Hit, "an empty page: its entry");
        assert_eq!(of(&[Hit, Miss, Hit]), CacheStatus::Miss);
        assert_eq!(of(&[Miss, Hit]), CacheStatus::Miss);
        assert_eq!(of(&[Hit, Miss, Stale]), CacheStatus::Stale);
        assert_eq!(of(&[Stale, Hit]), CacheStatus::Stale);
    }
}
