//! The live consistency checker: a sample of the product reads answered from the cache is
//! read again from the database a moment later, and every answer the database contradicts
//! without a change to explain it is counted and logged.
//!
//! This measures, in production, the promise the cache makes: no read is older than an
//! acknowledged write. It counts
//! `catalog_consistency_checks_total{result="consistent"|"inconsistent"}` and logs every
//! inconsistent key at `warn`; its database reads are counted as
//! `catalog_db_queries_total{source="checker"}`.
//!
//! # Which reads are checked
//! Every `1/sample`-th hit of `GET /products/{id}` (found or cached as not found), counted,
//! not drawn: a fraction of 0.01 checks exactly one hit in a hundred. At most
//! [`ConsistencyConfig::max_in_flight`] checks run at once; a hit sampled beyond that is not
//! checked (`catalog_consistency_checks_skipped_total`).
//!
//! # When a mismatch is explained
//! The answer served at the start `t0` of a read is compared, [`ConsistencyConfig::delay`]
//! later, with the row in the database. They may differ because the row changed after `t0`:
//! that is no fault. A mismatch is therefore counted as inconsistent only when no change to
//! the product (or to its category) is known to have happened after `t0 - bound`, where a
//! change is known from
//! - the row itself: its `updatedAt` (or `createdAt`), which every write through the catalog
//!   sets, on any instance;
//! - this instance: its own writes, recorded once they are acknowledged, and every change the
//!   database change feed delivers (made by anyone), recorded when it is read.
//!
//! The feed delivers a change a little after its commit, so a mismatch is looked at again
//! [`ConsistencyConfig::recheck`] later before it is counted. `bound` is the delay the
//! service promises for changes made outside it (one second): the checker reports entries
//! that stay wrong past what the service promises for any writer; a read that raced a write
//! of this very instance by less than `bound` is not told apart from a legitimate race.

use crate::db::Db;
use crate::model::{Id, Product};
use bytes::Bytes;
use chrono::{DateTime, TimeDelta, Utc};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

/// How the checker samples and judges (see the module docs).
#[derive(Clone, Debug)]
pub struct ConsistencyConfig {
    /// The fraction of cache hits checked, 0 (off) to 1 (every hit).
    pub sample: f64,
    /// How long after a read its row is read from the database.
    pub delay: Duration,
    /// How long a mismatch waits for a change to explain it before it is counted.
    pub recheck: Duration,
    /// How long before a read a change still explains a mismatch.
    pub bound: Duration,
    /// Checks running at once, at most.
    pub max_in_flight: usize,
}

impl Default for ConsistencyConfig {
    fn default() -> Self {
        Self {
            sample: 0.001,
            delay: Duration::from_millis(100),
            recheck: Duration::from_secs(1),
            bound: Duration::from_secs(1),
            max_in_flight: 64,
        }
    }
}

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The database agrees with the answer, or a change after the read explains the difference.
    Consistent,
    /// The database contradicts the answer and nothing explains it.
    Inconsistent,
}

/// The checker (see the module docs). Cheap to share: every method takes `&self`.
#[derive(Debug)]
pub struct Checker {
    config: ConsistencyConfig,
    db: Db,
    hits: AtomicU64,
    /// When each product or category (by cache key) last changed, as far as this instance
    /// knows; kept a little longer than any check can need it.
    changes: moka::sync::Cache<String, Instant>,
    /// When a change of everything (a truncated table, a lost feed position) was last seen.
    everything: std::sync::Mutex<Option<Instant>>,
    in_flight: Arc<Semaphore>,
    consistent: metrics::Counter,
    inconsistent: metrics::Counter,
    skipped: metrics::Counter,
    counts: [AtomicU64; 2],
}

/// How many checks of one [`Checker`] ended each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Checks that found the answer right, or explained.
    pub consistent: u64,
    /// Checks that found the answer contradicted and unexplained.
    pub inconsistent: u64,
}

impl Checker {
    /// A checker reading through `db` (its reads are counted with `source="checker"`).
    /// Registers its metrics with the installed recorder.
    pub fn new(db: &Db, config: ConsistencyConfig) -> Self {
        let counter =
            |result| metrics::counter!("catalog_consistency_checks_total", "result" => result);
        let (consistent, inconsistent) = (counter("consistent"), counter("inconsistent"));
        consistent.increment(0);
        inconsistent.increment(0);
        let keep = config.delay + config.recheck + config.bound + Duration::from_secs(1);
        Self {
            db: db.with_source("checker"),
            hits: AtomicU64::new(0),
            changes: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(keep)
                .build(),
            everything: std::sync::Mutex::new(None),
            in_flight: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
            consistent,
            inconsistent,
            skipped: metrics::counter!("catalog_consistency_checks_skipped_total"),
            counts: Default::default(),
            config,
        }
    }

    /// How many checks ended each way so far.
    pub fn counts(&self) -> Counts {
        Counts {
            consistent: self.counts[0].load(Ordering::Relaxed),
            inconsistent: self.counts[1].load(Ordering::Relaxed),
        }
    }

    /// Records that the entries under `key` (`product:{id}` or `category:{id}`) changed now.
    pub fn changed(&self, key: &str) {
        self.changes.insert(key.to_owned(), Instant::now());
    }

    /// Records that everything changed now.
    pub fn changed_everything(&self) {
        *self.everything.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// Whether this hit is one of the sampled ones (counts it).
    fn sampled(&self) -> bool {
        let f = self.config.sample;
        if f <= 0.0 {
            return false;
        }
        let n = self.hits.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * f).floor() > (n * f).floor()
    }

    /// A hit of `product:{id}` served `served` (the product's JSON, or `None` for a cached
    /// "not found") to a read that began at `began` (`began_at` on the wall clock): checks it
    /// in the background if it is sampled. Must be called inside a Tokio runtime.
    pub fn hit(
        self: &Arc<Self>,
        id: &Id,
        served: Option<&Bytes>,
        began: Instant,
        began_at: DateTime<Utc>,
    ) {
        if !self.sampled() {
            return;
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            self.skipped.increment(1);
            return;
        };
        let (me, id, served) = (self.clone(), id.clone(), served.cloned());
        tokio::spawn(async move {
            let _permit = permit;
            let verdict = me.check(&id, served.as_ref(), began, began_at).await;
            let (counter, i) = match verdict {
                Some(Verdict::Consistent) => (&me.consistent, 0),
                Some(Verdict::Inconsistent) => (&me.inconsistent, 1),
                None => return,
            };
            counter.increment(1);
            me.counts[i].fetch_add(1, Ordering::Relaxed);
        });
    }

    /// Checks one answer; `None` if the database could not be read (nothing is counted).
    pub async fn check(
        &self,
        id: &Id,
        served: Option<&Bytes>,
        began: Instant,
        began_at: DateTime<Utc>,
    ) -> Option<Verdict> {
        tokio::time::sleep(self.config.delay).await;
        let served: Option<serde_json::Value> = match served.map(|b| serde_json::from_slice(b)) {
            None => None,
            Some(Ok(v)) => Some(v),
            Some(Err(e)) => {
                warn!(%id, error = %e, "consistency check: the cached product is not JSON");
                return Some(Verdict::Inconsistent);
            }
        };
        let row = match self.db.product(id).await {
            Ok(row) => row,
            Err(e) => {
                debug!(%id, error = %e, "consistency check skipped: the database did not answer");
                return None;
            }
        };
        let current = row.as_ref().and_then(|p| serde_json::to_value(p).ok());
        if served == current {
            return Some(Verdict::Consistent);
        }
        let since = began.checked_sub(self.config.bound).unwrap_or(began);
        let since_at = began_at - TimeDelta::from_std(self.config.bound).unwrap_or_default();
        if row.as_ref().is_some_and(|p| touched_since(p, since_at)) || self.known(id, &row, since) {
            return Some(Verdict::Consistent);
        }
        // The feed may not have delivered a change committed just before the database read.
        tokio::time::sleep(self.config.recheck).await;
        if self.known(id, &row, since) {
            return Some(Verdict::Consistent);
        }
        warn!(
            key = %format_args!("product:{id}"),
            served = %served.map_or("not found".to_owned(), |v| v.to_string()),
            database = %current.map_or("not found".to_owned(), |v| v.to_string()),
            "consistency check: the cache served what the database contradicts"
        );
        Some(Verdict::Inconsistent)
    }

    /// Whether this instance knows of a change to the product, its category, or everything
    /// at or after `since`.
    fn known(&self, id: &Id, row: &Option<Product>, since: Instant) -> bool {
        let after = |key: &str| self.changes.get(key).is_some_and(|at| at >= since);
        let everything = *self.everything.lock().unwrap_or_else(|e| e.into_inner());
        after(&format!("product:{id}"))
            || row
                .as_ref()
                .is_some_and(|p| after(&format!("category:{}", p.category_id)))
            || everything.is_some_and(|at| at >= since)
    }
}

fn touched_since(p: &Product, since: DateTime<Utc>) -> bool {
    p.updated_at >= since || p.created_at >= since
}
