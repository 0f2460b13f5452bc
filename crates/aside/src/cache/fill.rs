//! A load and its fenced fill: the loader runs under the lease its leader claimed (or
//! without one, when the store could not be used), and its outcome is written only if no
//! invalidation touched the key since the claim, then shared with the flight's followers.
//!
//! - **Fenced fill.** The value is written only if the lease is still held and no stamp
//!   moved since the claim (the store checks both, atomically): any invalidation during the
//!   load refuses the fill, so an old value is never written after a newer write (no stale
//!   sets). The caller gets its value either way.
//! - **Nothing is filled while this instance still holds invalidations it could not send**
//!   (see `guard`): the store would not know yet that the value may be older than a write.
//! - **Release.** A load that failed gives its lease back so others need not wait for it;
//!   so does a fetch whose future is dropped while it holds the lease (the caller went away,
//!   or timed out): the lease is given back in the background.
//! - **Shared after the fill**, with the followers it is fresh for (see `crate::flight`): a
//!   stored fill is fresh for those that joined before it was sent, a value not stored only
//!   for those that joined before the load began.
//!
//! A load is begun ([`Load::begin`]: its observation taken, its lease held), its loader run,
//! and settled ([`Cache::settle`]); a batch begins many, runs one loader for all, and settles
//! each.

use super::entry::Ttls;
use super::value::{Decoded, Mode, stale};
use super::{Cache, Fetched, Status, Tagged};
use crate::codec::Codec;
use crate::envelope::{self, Body};
use crate::error::{LoadError, Result};
use crate::flight::{self, Fresh, Shared};
use crate::key::{EntryKey, TagKey};
use crate::metrics::Op;
use crate::store::{Lease, Lifetime, Store};
use bytes::Bytes;
use serde::Serialize;
use std::any::Any;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, warn};

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

/// Runs a loader (of one key or of a batch), counted and timed.
pub(super) async fn run_loader<C: Codec, R, E, F, Fut>(
    cache: &Cache<C>,
    loader: F,
) -> Result<R, Arc<E>>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<R, E>>,
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
        Arc::new(e)
    })
}
impl<C: Codec> Cache<C> {
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
        let loading = load.begin(&self.inner.store, k);
        let outcome = run_loader(self, loader).await;
        self.settle::<T, M, E>(k, loading, outcome).await
    }

    /// The rest of a load once its loader has answered: the fenced fill, and the outcome
    /// shared with the flight's followers.
    pub(super) async fn settle<T, M, E>(
        &self,
        k: &EntryKey,
        loading: Loading<'_, M::Out>,
        outcome: Result<Tagged<T>, Arc<E>>,
    ) -> Result<Fetched<M::Out>, LoadError<E>>
    where
        M: Mode<T>,
        T: Serialize + Send,
        E: Send + Sync + 'static,
    {
        let Loading {
            leader,
            mut held,
            ttls: t,
            fallback,
            began,
        } = loading;
        let inner = &self.inner;
        let Tagged { value, tags } = match outcome {
            Ok(v) => v,
            Err(e) => {
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

impl<'f, O> Load<'f, O> {
    /// Starts the load: the leader's observation is taken now (its loader runs next), and
    /// the lease is held until filled or released (given back if dropped before).
    pub(super) fn begin(self, store: &Arc<dyn Store>, k: &EntryKey) -> Loading<'f, O> {
        let began = self.leader.observe();
        Loading {
            leader: self.leader,
            held: Held {
                store: store.clone(),
                key: k.clone(),
                lease: self.lease,
            },
            ttls: self.ttls,
            fallback: self.fallback,
            began,
        }
    }
}

/// A load whose loader runs: see [`Load::begin`] and [`Cache::settle`].
pub(super) struct Loading<'f, O> {
    leader: flight::Leader<'f>,
    held: Held,
    ttls: Ttls,
    fallback: Option<Decoded<O>>,
    /// The leader's observation of the load.
    began: u64,
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
