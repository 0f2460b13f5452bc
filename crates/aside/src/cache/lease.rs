//! The miss path: an entry that is not in the store (or expired) is loaded once per key.
//!
//! 1. **Flight.** In this process, the first caller of a key leads and the others wait for
//!    its outcome (`crate::flight`).
//! 2. **Claim.** Once pending invalidations are applied (`guard`), the leader claims the
//!    store's lease for the key: a placeholder in the entry's place, with the versions of its
//!    stamps read at that moment. Across processes, only one claim is granted; the others
//!    find the placeholder and wait for the fill (polling with backoff, for at most
//!    `lease_wait`), or find the entry after all.
//! 3. **Load** under the lease, and the fenced fill: see `fill`.
//!
//! Callers that joined the flight take its value only when it is not older than their own
//! read's start (see `crate::flight`): a value read or loaded before they joined reaches them
//! only if its fill was stored; otherwise they start over.
//!
//! The steps a key goes through (`Cache::start`: join and claim; `Cache::wait`: another
//! process's fill; `Cache::follow`: this process's load) are shared by a single fetch
//! (`Miss::run`, one after the other) and a batch (`batch`, every key's at once).
//!
//! An expired entry still in the store is refreshed in place (a refresh lease) when possible,
//! so it stays readable for other processes while it is reloaded.

use super::entry::{Age, Ttls};
use super::fill::{Load, run_loader};
use super::value::{Decoded, Mode, hit, loaded, stale};
use super::{Cache, Fetched, Status, Tagged};
use crate::codec::Codec;
use crate::error::{LoadError, Result};
use crate::flight::{self, Followed, Fresh, Role, Shared};
use crate::key::{EntryKey, TagKey};
use crate::metrics::Op;
use crate::store::{Claim, Lookup};
use bytes::Bytes;
use serde::Serialize;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

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

/// Where one key of a miss stands after a step that needs nothing but the store.
pub(super) enum Next<'f, O, E> {
    /// Answered: a value, a "not found", a stale fallback, or the loader's error.
    Done(Result<Fetched<O>, LoadError<E>>),
    /// To be loaded now, under its lease (or without one: not stored).
    Load(Load<'f, O>),
    /// To start over: join a flight again (the one joined went away, its value was not for
    /// this caller, or an entry found was undecodable).
    Again,
}

/// Where one key of a miss stands once it joined a flight and, as its leader, claimed.
pub(super) enum Step<'f, O, E> {
    /// See [`Next`].
    Now(Next<'f, O, E>),
    /// Another process holds the lease: wait for its fill ([`Cache::wait`]).
    Wait(flight::Leader<'f>),
    /// A load of the key runs in this process: wait for its outcome ([`Cache::follow`]).
    Follow(flight::Follower),
}

/// What a key of a miss carries from one step to the next.
pub(super) struct Missed<O> {
    /// An expired entry still within stale-if-error: served if the loader fails.
    pub(super) fallback: Option<Decoded<O>>,
    /// The freshness of an expired entry to refresh in place (tried once).
    pub(super) expired: Option<u64>,
}

impl<O> Default for Missed<O> {
    fn default() -> Self {
        Self {
            fallback: None,
            expired: None,
        }
    }
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
            fallback,
            expired,
            ..
        } = self;
        let mut missed = Missed { fallback, expired };
        for _ in 0..4 {
            let next = match cache.start::<T, M, E>(&k, &stamps, t, &mut missed).await {
                Step::Now(next) => next,
                Step::Wait(leader) => {
                    cache
                        .wait::<T, M, E>(&k, &stamps, t, leader, &mut missed)
                        .await
                }
                Step::Follow(f) => match cache.follow::<T, M, E>(&k, &stamps, f, &mut missed).await
                {
                    Some(r) => Next::Done(r),
                    None => Next::Again,
                },
            };
            match next {
                Next::Done(r) => return r,
                Next::Load(load) => return cache.load::<T, M, E, F, Fut>(&k, load, loader).await,
                Next::Again => {}
            }
        }
        // Retries exhausted (entries kept turning out undecodable, or leaders kept vanishing):
        // load without the store.
        let value = match (run_loader(cache, loader).await, missed.fallback) {
            (Ok(v), _) => v.value,
            (Err(_), Some(d)) => {
                cache.inner.metrics.stale.increment(1);
                return Ok(stale(d));
            }
            (Err(e), None) => return Err(LoadError::Loader(e)),
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
}

impl<C: Codec> Cache<C> {
    /// The first step of a miss of `k`: joins the key's flight; as its leader, once pending
    /// invalidations are applied, claims the lease (or, for an expired entry, the refresh
    /// lease first). Waits on nothing but the store.
    pub(super) async fn start<T, M, E>(
        &self,
        k: &EntryKey,
        stamps: &[TagKey],
        t: Ttls,
        missed: &mut Missed<M::Out>,
    ) -> Step<'_, M::Out, E>
    where
        M: Mode<T>,
    {
        let inner = &self.inner;
        let leader = match inner.flights.join(k) {
            Role::Leader(l) => l,
            Role::Follower(f) => return Step::Follow(f),
        };
        let terms = t.claim_terms(inner.settings.lease);
        // Like every read, a claim waits until pending invalidations are applied.
        let ready = self.ready().await;
        if let Some(until) = missed.expired.take()
            && ready.is_ok()
        {
            // Refresh in place, the expired entry staying readable meanwhile; if another
            // process is refreshing it (or it is gone), claim as on a miss below.
            let clocks = inner.ns.clocks();
            let refresh = inner.store.claim_refresh(k, until, stamps, clocks, terms);
            if let Ok(Some(lease)) = self.call(Op::Claim, refresh).await {
                return Step::Now(Next::Load(Load {
                    leader,
                    lease: Some(lease),
                    ttls: t,
                    fallback: missed.fallback.take(),
                }));
            }
        }
        let seen = leader.observe();
        let claim = match ready {
            Ok(()) => {
                let clocks = inner.ns.clocks();
                let claim = inner.store.claim(k, stamps, clocks, terms);
                self.call(Op::Claim, claim).await
            }
            Err(e) => Err(e),
        };
        let lease = match claim {
            // An entry found while claiming (filled meanwhile) is shared with the followers
            // that joined before it was read.
            Ok(Claim::Hit(p)) => {
                return Step::Now(self.found::<T, M, E>(k, p, Status::Hit, seen, leader).await);
            }
            Ok(Claim::Pending) => return Step::Wait(leader),
            Ok(Claim::Granted(lease)) => Some(lease),
            Err(_) => None,
        };
        Step::Now(Next::Load(Load {
            leader,
            lease,
            ttls: t,
            fallback: missed.fallback.take(),
        }))
    }

    /// Waits for the fill of another process holding the lease of `k` (see
    /// [`Cache::wait_for_fill`]): its entry, or a load without the lease once `lease_wait`
    /// has passed, or a new start if the lease went away unfilled.
    pub(super) async fn wait<'f, T, M, E>(
        &'f self,
        k: &EntryKey,
        stamps: &[TagKey],
        t: Ttls,
        leader: flight::Leader<'f>,
        missed: &mut Missed<M::Out>,
    ) -> Next<'f, M::Out, E>
    where
        M: Mode<T>,
    {
        match self.wait_for_fill(k, stamps, &leader).await {
            Waited::Filled(p, seen) => {
                self.found::<T, M, E>(k, p, Status::Miss, seen, leader)
                    .await
            }
            Waited::Vacant => Next::Again,
            Waited::TimedOut => Next::Load(Load {
                leader,
                lease: None,
                ttls: t,
                fallback: missed.fallback.take(),
            }),
        }
    }

    /// Waits for the outcome of this process's load of `k`, and takes it if it is for this
    /// caller (see `crate::flight`); a value too old for it is read again from the store.
    /// `None`: start over.
    pub(super) async fn follow<T, M, E>(
        &self,
        k: &EntryKey,
        stamps: &[TagKey],
        follower: flight::Follower,
        missed: &mut Missed<M::Out>,
    ) -> Option<Result<Fetched<M::Out>, LoadError<E>>>
    where
        M: Mode<T>,
        E: Send + Sync + 'static,
    {
        match follower.wait().await {
            Followed::Taken(Shared::Value(p)) => {
                let (d, _) = self.decode_as::<T, M>(k, &p).await?;
                Some(Ok(loaded(d)))
            }
            Followed::Taken(Shared::Absent) => Some(Ok(loaded(Decoded::Absent))),
            Followed::Taken(Shared::Failed(e)) => {
                if let Some(d) = missed.fallback.take() {
                    self.inner.metrics.stale.increment(1);
                    return Some(Ok(stale(d)));
                }
                e.downcast::<E>().ok().map(|e| Err(LoadError::Loader(e)))
            }
            Followed::TooOld => self.reread::<T, M>(k, stamps).await.map(|d| Ok(hit(d))),
            Followed::Taken(Shared::Unshared) | Followed::Gone => None,
        }
    }

    /// An entry the leader of `k` found while claiming or waiting, read by its observation
    /// `seen`: shared with the followers that joined before, and returned.
    async fn found<'f, T, M, E>(
        &'f self,
        k: &EntryKey,
        p: Bytes,
        status: Status,
        seen: u64,
        leader: flight::Leader<'f>,
    ) -> Next<'f, M::Out, E>
    where
        M: Mode<T>,
    {
        let Some((d, fresh_until)) = self.decode_as::<T, M>(k, &p).await else {
            return Next::Again;
        };
        let shared = match &d {
            Decoded::Value(_) => Shared::Value(p),
            Decoded::Absent => Shared::Absent,
        };
        leader.finish(shared, Fresh::JoinedBefore(seen));
        // Still past its freshness: another process holds its refresh lease.
        let status = match self.age(fresh_until, Duration::ZERO, Duration::ZERO) {
            Age::Fresh => status,
            _ => {
                self.inner.metrics.stale.increment(1);
                Status::Stale
            }
        };
        Next::Done(Ok(Fetched { status, ..hit(d) }))
    }
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
}
