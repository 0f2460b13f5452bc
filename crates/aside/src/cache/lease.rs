//! The miss path: an entry that is not in the store (or expired) is loaded once per key.
//!
//! 1. **Flight.** In this process, the first caller of a key leads and the others wait for
//!    its outcome (`crate::flight`).
//! 2. **Claim.** Once pending invalidations are applied (`guard`), the leader claims the
//!    store's lease for the key: a placeholder in the entry's place, with the versions of its
//!    stamps read at that moment. Across processes, only one claim is granted; the others
//!    find the placeholder and wait for the fill (polling with backoff, for at most
//!    `lease_wait`), or find the entry after all.
//! 3. **Load.** The holder runs the loader.
//! 4. **Fenced fill.** The value is written only if the lease is still held and no stamp
//!    moved since the claim (the store checks both, atomically): any invalidation during the
//!    load refuses the fill, so an old value is never written after a newer write (no stale
//!    sets). The caller gets its value either way.
//! 5. **Release.** A load that failed gives its lease back so others need not wait for it;
//!    so does a fetch whose future is dropped while it holds the lease (the caller went away,
//!    or timed out): the lease is given back in the background.
//!
//! Nothing is filled while this instance still holds invalidations it could not send (see
//! `guard`): the store would not know yet that the value may be older than a write.
//!
//! Callers that joined the flight take its value only when it is not older than their own
//! read's start (see `crate::flight`): a value read or loaded before they joined reaches them
//! only if its fill was stored; otherwise they start over.
//!
//! An expired entry still in the store is refreshed in place (a refresh lease) when possible,
//! so it stays readable for other processes while it is reloaded.

use super::entry::{Age, Ttls};
use super::value::{Decoded, Mode, hit, loaded, stale};
use super::{Cache, Fetched, Status, Tagged};
use crate::codec::Codec;
use crate::envelope::{self, Body};
use crate::error::{Error, LoadError, Result, StoreError};
use crate::flight::{self, Followed, Fresh, Role, Shared};
use crate::key::{EntryKey, TagKey};
use crate::metrics::Op;
use crate::store::{Claim, Lease, Lifetime, Lookup, Store};
use bytes::Bytes;
use serde::Serialize;
use std::any::Any;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// A read that found nothing fresh, on its way to a value.
pub(super) struct Miss<'a, C: Codec, T, M: Mode<T>> {
    pub(super) cache: &'a Cache<C>,
    pub(super) key: EntryKey,
    /// What the entry will be stamped with: the epoch, its prefixes, the tags named.
    pub(super) stamps: Vec<TagKey>,
    pub(super) ttls: Ttls,
    /// An expired entry still within stale-if-error: served if the loader fails.
    pub(super) fallback: Option<Decoded<M::Out>>,
    /// The freshness of an expired entry to refresh in place.
    pub(super) expired: Option<u64>,
    pub(super) mode: PhantomData<fn() -> T>,
}

/// What waiting for another process's fill came to.
enum Waited {
    /// The entry it wrote, read by the leader's observation with this number.
    Filled(Bytes, u64),
    /// The lease went away without a fill: claim again.
    Vacant,
    /// Still not filled after `lease_wait` (or the store failed): load without it.
    TimedOut,
}

/// One run of the loader under a lease (or without one, when the store could not be used).
pub(super) struct Load<'f, O> {
    /// This process's flight for the key: its followers get the outcome.
    pub(super) leader: flight::Leader<'f>,
    /// The lease to fill with; `None`: the value is returned and not stored.
    pub(super) lease: Option<Lease>,
    pub(super) ttls: Ttls,
    /// Served instead of a loader error (stale-if-error).
    pub(super) fallback: Option<Decoded<O>>,
}

impl<C: Codec, T, M> Miss<'_, C, T, M>
where
    T: Serialize + Send + 'static,
    M: Mode<T> + 'static,
    M::Out: Send + 'static,
{
    pub(super) async fn run<E, F, Fut>(self, loader: F) -> Result<Fetched<M::Out>, LoadError<E>>
    where
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Tagged<T>, E>> + Send + 'static,
    {
        let Miss {
            cache,
            key: k,
            stamps,
            ttls: t,
            mut fallback,
            mut expired,
            ..
        } = self;
        let inner = &cache.inner;
        let m = &inner.metrics;
        let mut loader = Some(loader);
        for _ in 0..4 {
            let leader = match inner.flights.join(&k) {
                Role::Leader(l) => l,
                Role::Follower(follower) => match follower.wait().await {
                    Followed::Taken(Shared::Value(p)) => {
                        match cache.decode_as::<T, M>(&k, &p).await {
                            Some((d, _)) => return Ok(loaded(d)),
                            None => continue,
                        }
                    }
                    Followed::Taken(Shared::Absent) => return Ok(loaded(Decoded::Absent)),
                    Followed::Taken(Shared::Failed(e)) => {
                        if let Some(d) = fallback.take() {
                            m.stale.increment(1);
                            return Ok(stale(d));
                        }
                        match e.downcast::<E>() {
                            Ok(e) => return Err(LoadError::Loader(e)),
                            Err(_) => continue,
                        }
                    }
                    Followed::TooOld => match cache.reread::<T, M>(&k, &stamps).await {
                        Some(d) => return Ok(hit(d)),
                        None => continue,
                    },
                    Followed::Taken(Shared::Unshared) | Followed::Gone => continue,
                },
            };
            let terms = t.claim_terms(inner.settings.lease);
            // Like every read, a claim waits until pending invalidations are applied.
            let ready = cache.ready().await;
            if let Some(until) = expired.take()
                && ready.is_ok()
            {
                // Refresh in place, the expired entry staying readable meanwhile; if another
                // process is refreshing it (or it is gone), claim as on a miss below.
                let clocks = inner.ns.clocks();
                let refresh = inner.store.claim_refresh(&k, until, &stamps, clocks, terms);
                if let Ok(Some(lease)) = cache.call(Op::Claim, refresh).await
                    && let Some(loader) = loader.take()
                {
                    let load = Load {
                        leader,
                        lease: Some(lease),
                        ttls: t,
                        fallback,
                    };
                    return cache.load::<T, M, E, F, Fut>(&k, load, loader).await;
                }
            }
            let seen = leader.observe();
            let claim = match ready {
                Ok(()) => {
                    let clocks = inner.ns.clocks();
                    let claim = inner.store.claim(&k, &stamps, clocks, terms);
                    cache.call(Op::Claim, claim).await
                }
                Err(e) => Err(e),
            };
            // An entry found while claiming (filled meanwhile, or by the lease holder we
            // waited for) is shared with the followers that joined before it was read.
            let (found, lease) = match claim {
                Ok(Claim::Hit(p)) => (Some((p, Status::Hit, seen)), None),
                Ok(Claim::Pending) => match cache.wait_for_fill(&k, &stamps, &leader).await {
                    Waited::Filled(p, seen) => (Some((p, Status::Miss, seen)), None),
                    Waited::Vacant => continue,
                    Waited::TimedOut => (None, None),
                },
                Ok(Claim::Granted(lease)) => (None, Some(lease)),
                Err(_) => (None, None),
            };
            if let Some((p, status, seen)) = found {
                let Some((d, fresh_until)) = cache.decode_as::<T, M>(&k, &p).await else {
                    continue;
                };
                let shared = match &d {
                    Decoded::Value(_) => Shared::Value(p),
                    Decoded::Absent => Shared::Absent,
                };
                leader.finish(shared, Fresh::JoinedBefore(seen));
                // Still past its freshness: another process holds its refresh lease.
                let status = match cache.age(fresh_until, Duration::ZERO, Duration::ZERO) {
                    Age::Fresh => status,
                    _ => {
                        m.stale.increment(1);
                        Status::Stale
                    }
                };
                return Ok(Fetched { status, ..hit(d) });
            }
            let Some(loader) = loader.take() else { break };
            let load = Load {
                leader,
                lease,
                ttls: t,
                fallback,
            };
            return cache.load::<T, M, E, F, Fut>(&k, load, loader).await;
        }
        // Retries exhausted (entries kept turning out undecodable, or leaders kept vanishing):
        // load without the store.
        match loader.take() {
            Some(loader) => {
                let value = match (run_loader(cache, loader).await, fallback) {
                    (Ok(v), _) => v.value,
                    (Err(LoadError::Loader(_)), Some(d)) => {
                        m.stale.increment(1);
                        return Ok(stale(d));
                    }
                    (Err(e), _) => return Err(e),
                };
                let value = match value {
                    Some(v) => Some(cache.output::<T, M>(v).map_err(LoadError::Cache)?),
                    None => None,
                };
                Ok(Fetched {
                    value,
                    status: Status::Miss,
                })
            }
            None => Err(LoadError::Cache(Error::Backend(StoreError::Protocol(
                "load could not be completed".into(),
            )))),
        }
    }
}

/// Runs a loader, counted and timed.
pub(super) async fn run_loader<C: Codec, T, E, F, Fut>(
    cache: &Cache<C>,
    loader: F,
) -> Result<Tagged<T>, LoadError<E>>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Tagged<T>, E>>,
{
    let inner = &cache.inner;
    let m = &inner.metrics;
    m.loads.increment(1);
    let start = inner.clock.now();
    let r = loader().await;
    let took = inner.clock.now().saturating_sub(start);
    m.load_seconds.record(took.as_secs_f64());
    // An average over the last loads (a weight of 1/8 for the newest); the first one counts
    // whole. Racing updates may lose one sample, which is harmless.
    let us = took.as_micros().min(u128::from(u64::MAX / 8)) as u64;
    let old = inner.load_time.load(std::sync::atomic::Ordering::Relaxed);
    let avg = if old == 0 {
        us.max(1)
    } else {
        (old * 7 + us) / 8
    };
    inner
        .load_time
        .store(avg.max(1), std::sync::atomic::Ordering::Relaxed);
    r.map_err(|e| {
        m.load_errors.increment(1);
        LoadError::Loader(Arc::new(e))
    })
}

impl<C: Codec> Cache<C> {
    /// Polls a key another process holds the lease of, until it is filled, the lease goes
    /// away, or `lease_wait` has passed. Each poll is an observation of `leader`'s.
    async fn wait_for_fill(
        &self,
        k: &EntryKey,
        stamps: &[TagKey],
        leader: &flight::Leader<'_>,
    ) -> Waited {
        let deadline = Instant::now() + self.inner.settings.lease_wait;
        let mut pause = Duration::from_millis(2);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Waited::TimedOut;
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_millis(50));
            let seen = leader.observe();
            match self.read(k, stamps).await {
                Ok(Lookup::Hit(p)) => return Waited::Filled(p, seen),
                Ok(Lookup::Pending) => {}
                Ok(Lookup::Miss | Lookup::Corrupt) => return Waited::Vacant,
                Err(_) => return Waited::TimedOut,
            }
        }
    }

    /// A read of its own by a follower whose leader's value was too old for it: a fresh
    /// valid entry, or `None` (the follower then leads or follows a flight again).
    async fn reread<T, M: Mode<T>>(
        &self,
        k: &EntryKey,
        stamps: &[TagKey],
    ) -> Option<Decoded<M::Out>> {
        let Ok(Lookup::Hit(p)) = self.read(k, stamps).await else {
            return None;
        };
        let (d, fresh_until) = self.decode_as::<T, M>(k, &p).await?;
        (self.age(fresh_until, Duration::ZERO, Duration::ZERO) == Age::Fresh).then_some(d)
    }

    /// Validates tags learnt from a loaded value; drops those the lease already stamps.
    fn learnt_tags(&self, names: Vec<String>, lease: Option<&Lease>) -> Result<Vec<TagKey>> {
        let mut keys: Vec<TagKey> = Vec::with_capacity(names.len());
        for n in &names {
            let k = self.inner.ns.tag(n)?;
            let stamped = lease.is_some_and(|l| l.stamps.iter().any(|s| s.key == k));
            if !stamped && !keys.contains(&k) {
                keys.push(k);
            }
        }
        Ok(keys)
    }

    /// Gives a lease back now (the load failed or its value cannot be stored).
    async fn release(&self, k: &EntryKey, held: &mut Held) {
        if let Some(lease) = held.lease.take() {
            let _ = self
                .call(Op::Release, self.inner.store.release(k, &lease))
                .await;
        }
    }

    /// Runs the loader under `load`'s lease, fills (fenced), and shares the outcome with the
    /// flight's followers.
    pub(super) async fn load<T, M, E, F, Fut>(
        &self,
        k: &EntryKey,
        load: Load<'_, M::Out>,
        loader: F,
    ) -> Result<Fetched<M::Out>, LoadError<E>>
    where
        M: Mode<T>,
        T: Serialize + Send,
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Tagged<T>, E>>,
    {
        let Load {
            leader,
            lease,
            ttls: t,
            fallback,
        } = load;
        let inner = &self.inner;
        let mut held = Held {
            store: inner.store.clone(),
            key: k.clone(),
            lease,
        };
        let began = leader.observe();
        let Tagged { value, tags } = match run_loader(self, loader).await {
            Ok(v) => v,
            Err(LoadError::Loader(e)) => {
                self.release(k, &mut held).await;
                let failed = Shared::Failed(e.clone() as Arc<dyn Any + Send + Sync>);
                leader.finish(failed, Fresh::All);
                if let Some(d) = fallback {
                    inner.metrics.stale.increment(1);
                    warn!(key = %k, "loader failed; serving the stale value");
                    return Ok(stale(d));
                }
                return Err(LoadError::Loader(e));
            }
            Err(e) => return Err(e),
        };
        let learnt = match self.learnt_tags(tags, held.lease.as_ref()) {
            Ok(learnt) => learnt,
            Err(e) => {
                self.release(k, &mut held).await;
                leader.finish(Shared::Unshared, Fresh::All);
                return Err(LoadError::Cache(e));
            }
        };
        let mut body = Bytes::new();
        // A "not found" gets no grace: it is never served stale, and keeping it past its
        // negative TTL would only let one request per unknown key hold memory for the
        // stale windows.
        let (ttl, grace) = match value {
            Some(_) => (t.ttl, t.grace()),
            None => (t.negative, Duration::ZERO),
        };
        let (ttl, fresh_until) = self.lifetime(ttl, grace);
        let (payload, shared) = match &value {
            Some(v) => match self.encode(v, fresh_until) {
                Ok(p) => {
                    if let Ok(envelope::Opened {
                        body: Body::Value(b),
                        ..
                    }) = envelope::open(&p, inner.settings.schema)
                    {
                        body = p.slice(p.len() - b.len()..);
                    }
                    (Some(p.clone()), Shared::Value(p))
                }
                Err(e) => {
                    warn!(key = %k, error = %e, "loaded value could not be encoded; not cached");
                    if M::ENCODED {
                        self.release(k, &mut held).await;
                        leader.finish(Shared::Unshared, Fresh::All);
                        return Err(LoadError::Cache(e));
                    }
                    (None, Shared::Unshared)
                }
            },
            None => (
                Some(envelope::absent(inner.settings.schema, fresh_until)),
                Shared::Absent,
            ),
        };
        let mut filled_at = began;
        let stored = match (&held.lease, payload) {
            (Some(_), None) => {
                self.release(k, &mut held).await;
                false
            }
            (Some(_), Some(_)) if !inner.backlog.is_empty() => {
                // Invalidations this instance could not send yet may concern this value.
                self.release(k, &mut held).await;
                inner.metrics.fills_refused.increment(1);
                debug!(key = %k, "fill not attempted: invalidations are still queued");
                false
            }
            (Some(lease), Some(p)) => {
                let life = Lifetime::new(ttl, inner.settings.lease);
                // A stored fill is fresh for the followers that joined before it was sent: a
                // write acknowledged after that may have found nothing to refuse.
                filled_at = leader.observe();
                let fill = inner.store.fill(k, lease, &learnt, p, life);
                match self.call(Op::Fill, fill).await {
                    Ok(written) => {
                        // Filled, or refused (the store dropped the placeholder): either way
                        // there is no lease left to give back.
                        held.lease = None;
                        if !written {
                            inner.metrics.fills_refused.increment(1);
                            debug!(key = %k, "fill refused: the key was invalidated during the load");
                        }
                        written
                    }
                    // Unknown outcome: `held` gives the lease back (a no-op if it was filled).
                    Err(_) => false,
                }
            }
            (None, _) => false,
        };
        // Shared after the fill, so callers arriving now find the entry instead of a lease.
        let fresh = Fresh::JoinedBefore(if stored { filled_at } else { began });
        leader.finish(shared, fresh);
        Ok(Fetched {
            value: value.map(|v| M::loaded(v, body)),
            status: Status::Miss,
        })
    }
}

/// A lease held by a load: given back on drop unless it was filled or released, so that a
/// fetch whose future is dropped mid-load (its caller gone, or timed out) does not make other
/// instances wait `lease_wait` for a lease nobody will fill. The release runs on a task of its
/// own (bounded like every store call); outside a runtime the lease lapses by itself.
struct Held {
    store: Arc<dyn Store>,
    key: EntryKey,
    lease: Option<Lease>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (store, key) = (self.store.clone(), self.key.clone());
            rt.spawn(async move {
                let _ = store.release(&key, &lease).await;
            });
        }
    }
}
