//! Batch get-or-load: many keys read in one store round trip, the misses loaded by one call
//! of a batched loader, each key otherwise exactly as a fetch of its own (`entry`, `lease`).
//!
//! How a batch runs, and the straggler rule, are documented on [`Entries`].

mod misses;

use super::entry::{Age, Ttls};
use super::lease::Missed;
use super::value::{AsBytes, AsValue, Mode, hit, stale};
use super::{Cache, Fetched, Tagged};
use crate::codec::Codec;
use crate::error::{Error, LoadError, Result};
use crate::key::{EntryKey, TagKey};
use crate::store::Lookup;
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tracing::{Instrument, debug_span};

/// What one key of a batch comes to.
type Outcome<O, E> = Result<Fetched<O>, LoadError<E>>;

/// The keys of a batch, validated: as the caller named them, as the store names them, and
/// the stamps each entry is written with.
pub(super) struct Keys {
    users: Vec<String>,
    entries: Vec<EntryKey>,
    stamps: Vec<Vec<TagKey>>,
}

/// Many keys' call with shared TTLs and tags: [`get`](Entries::get),
/// [`get_or_load`](Entries::get_or_load) or one of the fetch variants. Made by
/// [`Cache::entries`].
///
/// # How a batch runs
/// 1. **One read.** Pending invalidations are applied, then every key is read at once
///    ([`Store::get_many`](crate::store::Store::get_many)). Each key is then fresh (a hit),
///    stale (served at once; refreshed in the background), expired within stale-if-error
///    (kept as its fallback) or missing, by the same decision a single fetch makes.
/// 2. **Join and claim.** Each missing key joins its flight in this process; for each key it
///    leads, the lease is claimed (as by a single fetch), all at once.
/// 3. **Load, and wait alongside.** The keys whose lease this batch got (and those it must
///    load without the store: the store failed, or the breaker is open) go to the loader in
///    **one call**, at once. The keys it follows (another caller in this process loads them)
///    and those whose lease another process holds are waited for *concurrently with* that
///    call, never before it: a batch that waited for its followers before loading could
///    deadlock with another batch overlapping it on keys, each waiting for what the other
///    leads. So a leader never waits on anything but the store and its own loader, and every
///    wait ends. A key whose lease holder does not fill it within `lease_wait` is loaded
///    (without the lease) as soon as the waits on other processes are over, in one more
///    loader call for all such keys.
/// 4. **Fenced fills**, per key, as a single load's: refused if the key,
///    its tags, its prefixes or the epoch were invalidated during the load; the caller gets
///    the value either way. Keys absent from the loader's map are "not found", cached for the
///    negative TTL.
///
/// # The straggler rule
/// A key whose wait fails (the load it joined was too old for it and the store has nothing
/// newer, the other process's lease lapsed unfilled, its leader went away) starts over in a
/// second round, with a second, smaller loader call for the keys that then need one. At most
/// four rounds, as a single fetch retries; what is left after them is loaded without the store.
/// So a batch calls its loader once in the common case, and more than once only for keys
/// another load was handling when the batch began.
#[must_use = "Entries do nothing until get, get_or_load or fetch is awaited"]
pub struct Entries<'a, C: Codec> {
    cache: &'a Cache<C>,
    keys: Vec<String>,
    ttl: Option<Duration>,
    negative_ttl: Option<Duration>,
    stale_while_revalidate: Option<Duration>,
    stale_if_error: Option<Duration>,
    tags: Vec<&'a str>,
}

impl<C: Codec> Cache<C> {
    /// Starts a call on many keys with their own TTLs and tags (the same for every key).
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use aside::{Status, Tagged};
    /// use std::collections::HashMap;
    /// let cache = aside::Cache::builder().build().unwrap();
    /// cache.set("product:p1", &"Lamp").await.unwrap();
    /// let got = cache
    ///     .entries(["product:p1", "product:p2", "product:p3"])
    ///     .ttl(std::time::Duration::from_secs(300))
    ///     .fetch_tagged(|missing: Vec<String>| async move {
    ///         // One query for every key that missed: here p2 and p3; p3 does not exist.
    ///         assert_eq!(missing, ["product:p2", "product:p3"]);
    ///         let found = HashMap::from([("product:p2".to_string(), Tagged::found("Desk".to_string()).tag("category:c1"))]);
    ///         Ok::<_, std::io::Error>(found)
    ///     })
    ///     .await
    ///     .unwrap();
    /// let seen: Vec<_> = got.iter().map(|f| (f.value.as_deref(), f.status)).collect();
    /// assert_eq!(seen, [(Some("Lamp"), Status::Hit), (Some("Desk"), Status::Miss), (None, Status::Miss)]);
    /// # });
    /// ```
    pub fn entries<I, S>(&self, keys: I) -> Entries<'_, C>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Entries {
            cache: self,
            keys: keys.into_iter().map(Into::into).collect(),
            ttl: None,
            negative_ttl: None,
            stale_while_revalidate: None,
            stale_if_error: None,
            tags: Vec::new(),
        }
    }

    /// Reads many values in one store round trip, like [`Cache::get`] each, in the order of
    /// `keys`. A store that cannot be reached is [`Error::Backend`].
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let cache = aside::Cache::builder().build().unwrap();
    /// cache.set("a", &1u32).await.unwrap();
    /// assert_eq!(cache.get_many::<u32, _, _>(["a", "b"]).await.unwrap(), [Some(1), None]);
    /// # });
    /// ```
    pub async fn get_many<T, I, S>(&self, keys: I) -> Result<Vec<Option<T>>>
    where
        T: DeserializeOwned,
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.entries(keys).get().await
    }

    /// Loads many keys through the cache with the default TTLs and no tags: the hits are
    /// returned as they are, and the misses loaded by one call of `loader` with the keys that
    /// missed (a key absent from its map is "not found", cached for the negative TTL). See
    /// [`Entries::fetch`].
    pub async fn get_or_load_many<T, E, I, S, L, Fut>(
        &self,
        keys: I,
        loader: L,
    ) -> Result<Vec<Option<T>>, LoadError<E>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Send + Sync + 'static,
        I: IntoIterator<Item = S>,
        S: Into<String>,
        L: Fn(Vec<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<HashMap<String, T>, E>> + Send + 'static,
    {
        self.entries(keys).get_or_load(loader).await
    }

    /// Like [`get_or_load_many`](Cache::get_or_load_many), saying for each key whether it
    /// was a hit, a miss or stale.
    pub async fn fetch_many<T, E, I, S, L, Fut>(
        &self,
        keys: I,
        loader: L,
    ) -> Result<Vec<Fetched<T>>, LoadError<E>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Send + Sync + 'static,
        I: IntoIterator<Item = S>,
        S: Into<String>,
        L: Fn(Vec<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<HashMap<String, T>, E>> + Send + 'static,
    {
        self.entries(keys).fetch(loader).await
    }
}

/// Plain values as [`Tagged`] ones (without tags).
type Tagging<T> = fn(HashMap<String, T>) -> HashMap<String, Tagged<T>>;

/// A loader of plain values as a loader of [`Tagged`] ones.
fn tagging<T, E, L, Fut>(
    loader: L,
) -> impl Fn(Vec<String>) -> futures::future::MapOk<Fut, Tagging<T>> + Send + Sync + 'static
where
    L: Fn(Vec<String>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::result::Result<HashMap<String, T>, E>>,
{
    use futures::TryFutureExt;
    fn tag_none<T>(m: HashMap<String, T>) -> HashMap<String, Tagged<T>> {
        m.into_iter().map(|(k, v)| (k, Tagged::found(v))).collect()
    }
    move |keys| loader(keys).map_ok(tag_none::<T> as Tagging<T>)
}

impl<'a, C: Codec> Entries<'a, C> {
    /// The TTL of the values (default: the cache's default TTL). Jitter applies.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// The TTL of a cached "not found" (default: the cache's negative TTL).
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// See [`Entry::stale_while_revalidate`](crate::Entry::stale_while_revalidate).
    pub fn stale_while_revalidate(mut self, d: Duration) -> Self {
        self.stale_while_revalidate = Some(d);
        self
    }

    /// See [`Entry::stale_if_error`](crate::Entry::stale_if_error).
    pub fn stale_if_error(mut self, d: Duration) -> Self {
        self.stale_if_error = Some(d);
        self
    }

    /// Adds a tag to every key.
    pub fn tag(mut self, tag: &'a str) -> Self {
        self.tags.push(tag);
        self
    }

    /// Adds tags to every key.
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

    /// Validates the keys and tags; a key given twice is refused (each key of a batch has
    /// one answer).
    fn keys(&mut self) -> Result<Keys> {
        let ns = &self.cache.inner.ns;
        let mut seen = HashSet::with_capacity(self.keys.len());
        if self.keys.iter().any(|k| !seen.insert(k.as_str())) {
            return Err(Error::InvalidKey {
                what: "key",
                reason: "is given twice in one batch",
            });
        }
        let entries = self
            .keys
            .iter()
            .map(|k| ns.entry(k))
            .collect::<Result<Vec<_>>>()?;
        let stamps = self
            .keys
            .iter()
            .map(|k| ns.stamps_for(k, &self.tags))
            .collect::<Result<Vec<_>>>()?;
        Ok(Keys {
            users: std::mem::take(&mut self.keys),
            entries,
            stamps,
        })
    }

    /// The stamps to name in the read: none, unless the store reads with them or tags are
    /// named (as a single read).
    fn named<'k>(&self, keys: &'k Keys) -> &'k [Vec<TagKey>] {
        if self.tags.is_empty() && !self.cache.inner.store.reads_need_stamps() {
            &[]
        } else {
            &keys.stamps
        }
    }

    /// Reads every key like [`Cache::get`] in one store round trip, naming the tags
    /// (see [`Entry::get`](crate::Entry::get)). In the order of the keys.
    pub async fn get<T: DeserializeOwned>(mut self) -> Result<Vec<Option<T>>> {
        let t = self.ttls()?;
        let keys = self.keys()?;
        let cache = self.cache;
        if keys.users.is_empty() {
            return Ok(Vec::new());
        }
        let found = cache
            .read_many(&keys.entries, self.named(&keys))
            .await
            .map_err(Error::Backend)?;
        let mut out = Vec::with_capacity(found.len());
        for (k, lookup) in keys.entries.iter().zip(found) {
            out.push(cache.answer(k, lookup, t.stale_while_revalidate).await);
        }
        Ok(out)
    }

    /// Like [`fetch`](Entries::fetch), returning the values only.
    pub async fn get_or_load<T, E, L, Fut>(self, loader: L) -> Result<Vec<Option<T>>, LoadError<E>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Send + Sync + 'static,
        L: Fn(Vec<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<HashMap<String, T>, E>> + Send + 'static,
    {
        let got = self.fetch(loader).await?;
        Ok(got.into_iter().map(|f| f.value).collect())
    }

    /// Reads every key in one store round trip; the keys that missed are loaded by **one**
    /// call of `loader` with those keys (see [`Entries`] for when there is a second
    /// one), each under its own flight, lease and fenced fill, exactly as
    /// [`Entry::fetch`](crate::Entry::fetch) would load it alone. The loader's map holds the
    /// values found; a key absent from it is "not found", cached for the negative TTL.
    /// Stale-while-revalidate and stale-if-error apply per key (the stale keys of a batch are
    /// refreshed together, in the background, by one more loader call).
    ///
    /// One [`Fetched`] per key, in their order. The call fails only if the loader (or the
    /// load a key waited for) failed for a key that has no stale value to fall back on; a
    /// store failure is never the caller's (the loader runs without the store). The loader
    /// may be called more than once (a background refresh, a straggler), hence `Fn`; it owns
    /// what it uses.
    pub async fn fetch<T, E, L, Fut>(self, loader: L) -> Result<Vec<Fetched<T>>, LoadError<E>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Send + Sync + 'static,
        L: Fn(Vec<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<HashMap<String, T>, E>> + Send + 'static,
    {
        self.fetch_inner::<T, AsValue, E, _, _>(tagging(loader))
            .await
    }

    /// Like [`fetch`](Entries::fetch), with tags known only once the values are loaded (see
    /// [`Entry::fetch_tagged`](crate::Entry::fetch_tagged)): the loader's map holds a
    /// [`Tagged`] per key found.
    pub async fn fetch_tagged<T, E, L, Fut>(
        self,
        loader: L,
    ) -> Result<Vec<Fetched<T>>, LoadError<E>>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Send + Sync + 'static,
        L: Fn(Vec<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<HashMap<String, Tagged<T>>, E>> + Send + 'static,
    {
        self.fetch_inner::<T, AsValue, E, L, Fut>(loader).await
    }

    /// Like [`fetch`](Entries::fetch), handing back each value as the codec wrote it (see
    /// [`Entry::fetch_encoded`](crate::Entry::fetch_encoded)).
    pub async fn fetch_encoded<T, E, L, Fut>(
        self,
        loader: L,
    ) -> Result<Vec<Fetched<Bytes>>, LoadError<E>>
    where
        T: Serialize + Send + 'static,
        E: Send + Sync + 'static,
        L: Fn(Vec<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<HashMap<String, T>, E>> + Send + 'static,
    {
        self.fetch_inner::<T, AsBytes, E, _, _>(tagging(loader))
            .await
    }

    /// [`fetch_tagged`](Entries::fetch_tagged) and [`fetch_encoded`](Entries::fetch_encoded)
    /// at once.
    pub async fn fetch_tagged_encoded<T, E, L, Fut>(
        self,
        loader: L,
    ) -> Result<Vec<Fetched<Bytes>>, LoadError<E>>
    where
        T: Serialize + Send + 'static,
        E: Send + Sync + 'static,
        L: Fn(Vec<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<HashMap<String, Tagged<T>>, E>> + Send + 'static,
    {
        self.fetch_inner::<T, AsBytes, E, L, Fut>(loader).await
    }

    /// Every batch fetch, with its loader as a tagged one.
    async fn fetch_inner<T, M, E, L, Fut>(
        self,
        loader: L,
    ) -> Result<Vec<Fetched<M::Out>>, LoadError<E>>
    where
        T: Serialize + Send + 'static,
        M: Mode<T> + 'static,
        M::Out: Send + 'static,
        E: Send + Sync + 'static,
        L: Fn(Vec<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<HashMap<String, Tagged<T>>, E>> + Send + 'static,
    {
        let span = debug_span!("aside.fetch_many", keys = self.keys.len());
        self.fetch_spanned::<T, M, E, L, Fut>(loader)
            .instrument(span)
            .await
    }

    async fn fetch_spanned<T, M, E, L, Fut>(
        mut self,
        loader: L,
    ) -> Result<Vec<Fetched<M::Out>>, LoadError<E>>
    where
        T: Serialize + Send + 'static,
        M: Mode<T> + 'static,
        M::Out: Send + 'static,
        E: Send + Sync + 'static,
        L: Fn(Vec<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<HashMap<String, Tagged<T>>, E>> + Send + 'static,
    {
        let t = self.ttls()?;
        let keys = self.keys()?;
        let cache = self.cache;
        let n = keys.users.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let m = &cache.inner.metrics;
        // A store that fails is no answer: every key is then a miss, loaded without it.
        let mut found = match cache.read_many(&keys.entries, self.named(&keys)).await {
            Ok(found) => found,
            Err(_) => vec![Lookup::Miss; n],
        };
        let mut out: Vec<Option<Outcome<M::Out, E>>> = (0..n).map(|_| None).collect();
        let mut missed: Vec<Missed<M::Out>> = (0..n).map(|_| Missed::default()).collect();
        let mut todo = Vec::new();
        let mut refresh = Vec::new();
        for i in 0..n {
            let k = &keys.entries[i];
            match std::mem::replace(&mut found[i], Lookup::Miss) {
                Lookup::Hit(p) => {
                    // An undecodable entry was removed by decode: load it below.
                    if let Some((d, fresh_until)) = cache.decode_as::<T, M>(k, &p).await {
                        match cache.age(fresh_until, t.stale_while_revalidate, t.stale_if_error) {
                            Age::Fresh => {
                                m.hits.increment(1);
                                if let Some(until) = fresh_until
                                    && cache.refresh_early(until)
                                {
                                    refresh.push((i, until));
                                }
                                out[i] = Some(Ok(hit(d)));
                                continue;
                            }
                            Age::Stale => {
                                m.stale.increment(1);
                                refresh.push((i, fresh_until.unwrap_or_default()));
                                out[i] = Some(Ok(stale(d)));
                                continue;
                            }
                            Age::Expired { fallback } => {
                                missed[i].expired = fresh_until;
                                missed[i].fallback = fallback.then_some(d);
                            }
                        }
                    }
                }
                Lookup::Corrupt => cache.discard(k, "not a record").await,
                Lookup::Miss | Lookup::Pending => {}
            }
            m.misses.increment(1);
            todo.push(i);
        }
        let loader = Arc::new(loader);
        if !refresh.is_empty() {
            cache.revalidate_many::<T, M, E, L, Fut>(&keys, &refresh, t, loader.clone());
        }
        if !todo.is_empty() {
            // Boxed, as a single fetch's miss path: a batch of hits stays a small future.
            Box::pin(
                cache.miss_many::<T, M, E, L, Fut>(&keys, t, todo, missed, &*loader, &mut out),
            )
            .await;
        }
        out.into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    Err(LoadError::Cache(Error::Backend(
                        crate::StoreError::Protocol("batch key left unanswered".into()),
                    )))
                })
            })
            .collect()
    }
}
