//! [`Entry`]: one key's call with its own TTLs and tags, the fetch variants, and the decision
//! every read makes between fresh (a hit), stale (served, refreshed in the background) and
//! expired (loaded again, the old value kept as a fallback within stale-if-error).

use super::lease::Miss;
use super::value::{AsBytes, AsValue, Decoded, Mode, hit, stale};
use super::{Cache, Fetched, Settings, Tagged};
use crate::codec::Codec;
use crate::error::{Error, LoadError, Result};
use crate::key::EntryKey;
use crate::metrics::Op;
use crate::store::{ClaimTerms, Lifetime, Lookup, version_ttl};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::marker::PhantomData;
use std::time::Duration;
use tracing::{Instrument, debug_span};

/// The longest TTL or grace window accepted.
const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// The TTLs of one call.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ttls {
    /// How long a value is fresh.
    pub(super) ttl: Duration,
    /// How long a "not found" is fresh.
    pub(super) negative: Duration,
    /// How long past its freshness a value is served while it is refreshed.
    pub(super) stale_while_revalidate: Duration,
    /// How long past its freshness a value is served when its loader fails.
    pub(super) stale_if_error: Duration,
}

impl Ttls {
    /// The TTLs of a call: those it sets, else the cache's; refused when out of range.
    pub(super) fn resolve(
        s: &Settings,
        ttl: Option<Duration>,
        negative: Option<Duration>,
        stale_while_revalidate: Option<Duration>,
        stale_if_error: Option<Duration>,
    ) -> Result<Ttls> {
        let grace = |d: Option<Duration>, default: Duration| {
            let d = d.unwrap_or(default);
            if d > MAX_TTL {
                Err(Error::InvalidTtl(d))
            } else {
                Ok(d)
            }
        };
        Ok(Ttls {
            ttl: check_ttl(ttl.unwrap_or(s.default_ttl))?,
            negative: check_ttl(negative.unwrap_or(s.negative_ttl))?,
            stale_while_revalidate: grace(stale_while_revalidate, s.stale_while_revalidate)?,
            stale_if_error: grace(stale_if_error, s.stale_if_error)?,
        })
    }

    /// How long an entry is kept past its freshness.
    pub(super) fn grace(&self) -> Duration {
        self.stale_while_revalidate.max(self.stale_if_error)
    }

    /// The terms of a claim for an entry with these TTLs: the lease, and version keys kept
    /// alive for whatever the load may write (a value or a "not found", with its grace).
    pub(super) fn claim_terms(&self, lease: Duration) -> ClaimTerms {
        let longest = self.ttl.max(self.negative) + self.grace();
        ClaimTerms {
            lease,
            version_ttl: version_ttl(longest, lease),
        }
    }
}

/// Where an entry stands against the reader's freshness windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Age {
    /// Within its TTL: a hit.
    Fresh,
    /// Within stale-while-revalidate: served, refreshed in the background.
    Stale,
    /// Past it: reloaded; `fallback` when within stale-if-error (served if the loader fails).
    Expired { fallback: bool },
}

fn check_ttl(ttl: Duration) -> Result<Duration> {
    if ttl < Duration::from_millis(1) || ttl > MAX_TTL {
        Err(Error::InvalidTtl(ttl))
    } else {
        Ok(ttl)
    }
}

/// One key's call: TTLs and tags, then [`set`](Entry::set), [`get_or_load`](Entry::get_or_load)
/// or [`fetch`](Entry::fetch). Made by [`Cache::entry`].
#[must_use = "an Entry does nothing until set, get_or_load or fetch is awaited"]
pub struct Entry<'a, C: Codec> {
    cache: &'a Cache<C>,
    key: &'a str,
    ttl: Option<Duration>,
    negative_ttl: Option<Duration>,
    stale_while_revalidate: Option<Duration>,
    stale_if_error: Option<Duration>,
    tags: Vec<&'a str>,
}

impl<'a, C: Codec> Entry<'a, C> {
    pub(super) fn new(cache: &'a Cache<C>, key: &'a str) -> Self {
        Entry {
            cache,
            key,
            ttl: None,
            negative_ttl: None,
            stale_while_revalidate: None,
            stale_if_error: None,
            tags: Vec::new(),
        }
    }

    /// The TTL of this value (default: the cache's default TTL). Jitter applies.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The TTL of a cached "not found" (default: the cache's negative TTL).
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// How long past its TTL the value is still served while one refresh runs in the
    /// background (default: the cache's, see
    /// [`CacheBuilder::stale_while_revalidate`](crate::CacheBuilder::stale_while_revalidate)).
    pub fn stale_while_revalidate(mut self, d: Duration) -> Self {
        self.stale_while_revalidate = Some(d);
        self
    }

    /// How long past its TTL the value is kept to be served when the loader fails (default:
    /// the cache's, see [`CacheBuilder::stale_if_error`](crate::CacheBuilder::stale_if_error)).
    pub fn stale_if_error(mut self, d: Duration) -> Self {
        self.stale_if_error = Some(d);
        self
    }

    /// Adds a tag.
    pub fn tag(mut self, tag: &'a str) -> Self {
        self.tags.push(tag);
        self
    }

    /// Adds tags.
    pub fn tags<I: IntoIterator<Item = &'a str>>(mut self, tags: I) -> Self {
        self.tags.extend(tags);
        self
    }

    fn ttls(&self) -> Result<Ttls> {
        Ttls::resolve(
            &self.cache.inner.settings,
            self.ttl,
            self.negative_ttl,
            self.stale_while_revalidate,
            self.stale_if_error,
        )
    }

    /// Reads the entry like [`Cache::get`], naming the tags it carries. An entry is checked
    /// against every tag it carries, named or not; naming them matters only where the store
    /// reads versions with the entry: with Redis when its versions are not held in process
    /// (one `MGET` of the entry and the named versions, and a second round trip for tags not
    /// named).
    pub async fn get<T: DeserializeOwned>(self) -> Result<Option<T>> {
        let t = self.ttls()?;
        self.cache
            .get_with(self.key, &self.tags, t.stale_while_revalidate)
            .await
    }

    /// Writes a value unconditionally. Any fill in flight for this key is voided, so a load
    /// that started before this write cannot overwrite it.
    pub async fn set<T: Serialize + ?Sized>(self, value: &T) -> Result<()> {
        let cache = self.cache;
        let inner = &cache.inner;
        let t = self.ttls()?;
        let k = inner.ns.entry(self.key)?;
        let stamps = inner.ns.stamps_for(self.key, &self.tags)?;
        let (ttl, fresh_until) = cache.lifetime(t.ttl, t.grace());
        let payload = cache.encode(value, fresh_until)?;
        cache
            .call(
                Op::Set,
                inner
                    .store
                    .set(&k, &stamps, payload, Lifetime::new(ttl, Duration::ZERO)),
            )
            .await
            .map_err(Error::Backend)
    }

    /// Like [`fetch`](Entry::fetch), returning the value only.
    pub async fn get_or_load<T, E, F, Fut>(self, loader: F) -> Result<Option<T>, LoadError<E>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
    {
        Ok(self.fetch(loader).await?.value)
    }

    /// Reads the entry; on a miss runs `loader` (once per key across concurrent callers in
    /// this process, and once per key across processes while the lease holds), stores its
    /// outcome unless an invalidation of the key happened since the load began, and returns it
    /// with its [`Status`](crate::Status). `Ok(None)` from the loader is cached for the negative TTL.
    ///
    /// Past its TTL, within [`stale_while_revalidate`](Entry::stale_while_revalidate), the
    /// old value is returned at once ([`Status::Stale`](crate::Status::Stale)) and the loader runs in the
    /// background, once per key (a refresh lease keeps other processes from running theirs
    /// too). Further past it, within [`stale_if_error`](Entry::stale_if_error), the loader
    /// runs as on a miss, and if it fails the old value is returned ([`Status::Stale`](crate::Status::Stale))
    /// instead of the error. An invalidated entry is never served, stale or not.
    ///
    /// The loader owns what it uses (`move` it in, with cloned handles), since a refresh
    /// runs it on its own task.
    ///
    /// If the store fails, the loader's value is returned and not stored.
    pub async fn fetch<T, E, F, Fut>(self, loader: F) -> Result<Fetched<T>, LoadError<E>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
    {
        let span = debug_span!("aside.fetch", key = self.key);
        self.fetch_inner::<T, AsValue, E, _, _>(
            move || async move { loader().await.map(Tagged::from) },
        )
        .instrument(span)
        .await
    }

    /// Like [`fetch`](Entry::fetch), for values whose tags are known only once they are
    /// loaded (a product's category, a document's owner): the loader returns them with the
    /// value in a [`Tagged`]. Tags given with [`tags`](Entry::tags) apply too.
    ///
    /// The fill is fenced like any other: if one of these tags, or another tag of the same
    /// clock shard (one in [`CLOCK_SHARDS`](crate::key::CLOCK_SHARDS), by a hash of the tag),
    /// is invalidated while the load runs, the value is returned but not stored (the tags are
    /// not known when the load begins, so the claim reads every shard's clock). Invalidations
    /// of keys, prefixes and other shards' tags do not refuse it.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use aside::Tagged;
    /// let cache = aside::Cache::builder().build().unwrap();
    /// let load = || async { Ok::<_, std::io::Error>(Tagged::found("Lamp".to_string()).tag("category:c7")) };
    /// cache.entry("product:p1").fetch_tagged(load).await.unwrap();
    /// cache.invalidate_tag("category:c7").await.unwrap();
    /// assert_eq!(cache.get::<String>("product:p1").await.unwrap(), None);
    /// # });
    /// ```
    pub async fn fetch_tagged<T, E, F, Fut>(self, loader: F) -> Result<Fetched<T>, LoadError<E>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Tagged<T>, E>> + Send + 'static,
    {
        let span = debug_span!("aside.fetch", key = self.key);
        self.fetch_inner::<T, AsValue, E, F, Fut>(loader)
            .instrument(span)
            .await
    }

    /// [`fetch_tagged`](Entry::fetch_tagged) and [`fetch_encoded`](Entry::fetch_encoded) at once.
    pub async fn fetch_tagged_encoded<T, E, F, Fut>(
        self,
        loader: F,
    ) -> Result<Fetched<Bytes>, LoadError<E>>
    where
        T: Serialize + Send + 'static,
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Tagged<T>, E>> + Send + 'static,
    {
        let span = debug_span!("aside.fetch", key = self.key);
        self.fetch_inner::<T, AsBytes, E, F, Fut>(loader)
            .instrument(span)
            .await
    }

    /// Like [`fetch`](Entry::fetch), but hands back the value as the codec wrote it (JSON by
    /// default) instead of decoding it: a service that sends the value on as it is skips a
    /// decode and an encode per hit. The bytes are shared, not copied.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let cache = aside::Cache::builder().build().unwrap();
    /// let load = || async { Ok::<_, std::io::Error>(Some(vec![1, 2, 3])) };
    /// let first = cache.entry("k").fetch_encoded(load).await.unwrap();
    /// let again = cache.entry("k").fetch_encoded(load).await.unwrap();
    /// assert_eq!(first.value.as_deref(), Some(&b"[1,2,3]"[..]));
    /// assert_eq!((again.value, again.status), (first.value, aside::Status::Hit));
    /// # });
    /// ```
    pub async fn fetch_encoded<T, E, F, Fut>(
        self,
        loader: F,
    ) -> Result<Fetched<Bytes>, LoadError<E>>
    where
        T: Serialize + Send + 'static,
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
    {
        let span = debug_span!("aside.fetch", key = self.key);
        self.fetch_inner::<T, AsBytes, E, _, _>(
            move || async move { loader().await.map(Tagged::from) },
        )
        .instrument(span)
        .await
    }

    /// Every fetch, with its loader as a tagged one (a plain loader learns no tags).
    async fn fetch_inner<T, M, E, F, Fut>(self, loader: F) -> Result<Fetched<M::Out>, LoadError<E>>
    where
        T: Serialize + Send + 'static,
        M: Mode<T> + 'static,
        M::Out: Send + 'static,
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Tagged<T>, E>> + Send + 'static,
    {
        let cache = self.cache;
        let inner = &cache.inner;
        let m = &inner.metrics;
        let t = self.ttls()?;
        let k = inner.ns.entry(self.key)?;
        // Built before the read when the store reads with them or tags are named (which
        // validates them), else only when a miss or a refresh needs them.
        let lazy = self.tags.is_empty() && !inner.store.reads_need_stamps();
        let mut stamps = if lazy {
            Vec::new()
        } else {
            inner.ns.stamps_for(self.key, &self.tags)?
        };
        // An expired entry still within stale-if-error: served if the loader fails.
        let mut fallback = None;
        // The freshness of an expired entry to be refreshed in place.
        let mut expired = None;

        match cache.read(&k, &stamps).await {
            Ok(Lookup::Hit(p)) => {
                // An undecodable entry was removed by decode: load below.
                if let Some((d, fresh_until)) = cache.decode_as::<T, M>(&k, &p).await {
                    match cache.age(fresh_until, t.stale_while_revalidate, t.stale_if_error) {
                        Age::Fresh => {
                            m.hits.increment(1);
                            if let Some(until) = fresh_until
                                && cache.refresh_early(until)
                            {
                                if lazy {
                                    stamps = inner.ns.stamps_for(self.key, &self.tags)?;
                                }
                                cache.revalidate::<T, M, E, F, Fut>(k, until, stamps, t, loader);
                            }
                            return Ok(hit(d));
                        }
                        Age::Stale => {
                            m.stale.increment(1);
                            let until = fresh_until.unwrap_or_default();
                            if lazy {
                                stamps = inner.ns.stamps_for(self.key, &self.tags)?;
                            }
                            cache.revalidate::<T, M, E, F, Fut>(k, until, stamps, t, loader);
                            return Ok(stale(d));
                        }
                        Age::Expired { fallback: within } => {
                            expired = fresh_until;
                            fallback = within.then_some(d);
                        }
                    }
                }
            }
            Ok(Lookup::Corrupt) => cache.discard(&k, "not a record").await,
            _ => {}
        }
        m.misses.increment(1);
        if lazy {
            stamps = inner.ns.stamps_for(self.key, &self.tags)?;
        }

        // The miss path is a future of its own, boxed: a hit's future (which callers box and
        // move around) stays small.
        let miss = Miss::<C, T, M> {
            cache,
            key: k,
            stamps,
            ttls: t,
            fallback,
            expired,
            mode: PhantomData,
        };
        Box::pin(miss.run::<E, F, Fut>(loader)).await
    }
}

impl<C: Codec> Cache<C> {
    pub(super) async fn get_with<T: DeserializeOwned>(
        &self,
        key: &str,
        tags: &[&str],
        stale_while_revalidate: Duration,
    ) -> Result<Option<T>> {
        let k = self.inner.ns.entry(key)?;
        let stamps = if tags.is_empty() && !self.inner.store.reads_need_stamps() {
            Vec::new()
        } else {
            self.inner.ns.stamps_for(key, tags)?
        };
        let lookup = self.read(&k, &stamps).await.map_err(Error::Backend)?;
        Ok(self.answer(&k, lookup, stale_while_revalidate).await)
    }

    /// What a plain read answers for `k` from what the store found (counted): a value served
    /// fresh or, within `stale_while_revalidate`, stale; `None` otherwise (an undecodable or
    /// corrupt entry is removed).
    pub(super) async fn answer<T: DeserializeOwned>(
        &self,
        k: &EntryKey,
        lookup: Lookup,
        stale_while_revalidate: Duration,
    ) -> Option<T> {
        let m = &self.inner.metrics;
        match lookup {
            Lookup::Hit(p) => match self.decode::<T>(k, &p).await {
                Some((d, fresh_until)) => {
                    let age = self.age(fresh_until, stale_while_revalidate, Duration::ZERO);
                    match age {
                        Age::Fresh => m.hits.increment(1),
                        Age::Stale => m.stale.increment(1),
                        Age::Expired { .. } => {
                            m.misses.increment(1);
                            return None;
                        }
                    }
                    match d {
                        Decoded::Value(v) => Some(v),
                        Decoded::Absent => None,
                    }
                }
                None => {
                    m.misses.increment(1);
                    None
                }
            },
            Lookup::Corrupt => {
                self.discard(k, "not a record").await;
                m.misses.increment(1);
                None
            }
            Lookup::Miss | Lookup::Pending => {
                m.misses.increment(1);
                None
            }
        }
    }

    /// Where an entry fresh until `fresh_until` stands now.
    /// XFetch (see [`CacheBuilder::early_refresh`](crate::CacheBuilder::early_refresh)):
    /// whether a read of an entry fresh until `until` (ms since the epoch) should start its
    /// refresh now.
    pub(super) fn refresh_early(&self, until: u64) -> bool {
        let beta = self.inner.settings.early_refresh;
        let load_us = self
            .inner
            .load_time
            .load(std::sync::atomic::Ordering::Relaxed);
        if beta <= 0.0 || load_us == 0 {
            return false;
        }
        let now = self.inner.clock.wall().as_millis() as u64;
        let gap = until.saturating_sub(now) as f64 / 1e3;
        let scale = load_us as f64 / 1e6 * beta;
        // Past 40 scales the chance is below e^-40: not worth a random number.
        if gap > 40.0 * scale {
            return false;
        }
        let u = rand::random::<f64>().max(f64::MIN_POSITIVE);
        -u.ln() * scale >= gap
    }

    pub(super) fn age(
        &self,
        fresh_until: Option<u64>,
        stale_while_revalidate: Duration,
        stale_if_error: Duration,
    ) -> Age {
        let Some(until) = fresh_until else {
            return Age::Fresh;
        };
        let now = self.inner.clock.wall().as_millis() as u64;
        let past = |d: Duration| until.saturating_add(d.as_millis() as u64);
        if now < until {
            Age::Fresh
        } else if now < past(stale_while_revalidate) {
            Age::Stale
        } else {
            Age::Expired {
                fallback: now < past(stale_if_error),
            }
        }
    }
}
