//! Stale-while-revalidate: an entry past its TTL but within its window is served at once, and
//! refreshed on a task of its own, once per key in this process (the flight) and once per key
//! across processes (a refresh lease on the entry, which stays readable meanwhile). The
//! refresh is fenced like any fill: a delete, write or invalidation during it voids it.

use super::entry::Ttls;
use super::fill::Load;
use super::value::Mode;
use super::{Cache, Tagged};
use crate::codec::Codec;
use crate::flight::{self, Role};
use crate::key::{EntryKey, TagKey};
use crate::metrics::Op;
use serde::Serialize;
use tracing::{Instrument, debug, debug_span};

impl<C: Codec> Cache<C> {
    /// Refreshes a stale entry on its own task, unless a load of it is already running here.
    pub(super) fn revalidate<T, M, E, F, Fut>(
        &self,
        k: EntryKey,
        fresh_until: u64,
        stamps: Vec<TagKey>,
        t: Ttls,
        loader: F,
    ) where
        T: Serialize + Send + 'static,
        M: Mode<T> + 'static,
        M::Out: Send + 'static,
        E: Send + Sync + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Tagged<T>, E>> + Send + 'static,
    {
        if self.inner.flights.running(&k) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let cache = self.clone();
        let span = debug_span!("aside.refresh", key = %k);
        rt.spawn(
            async move {
                let Role::Leader(leader) = cache.inner.flights.join(&k) else {
                    return;
                };
                let Some(load) = cache
                    .refresh_load(leader, &k, fresh_until, &stamps, t)
                    .await
                else {
                    return;
                };
                if cache
                    .load::<T, M, E, F, Fut>(&k, load, loader)
                    .await
                    .is_err()
                {
                    debug!(key = %k, "background refresh failed; the stale value stays");
                }
            }
            .instrument(span),
        );
    }

    /// As the leader of `k`'s flight, claims the refresh lease of its stale entry (the one
    /// fresh until `fresh_until`): the load to run, or `None` when another process refreshes
    /// it, it is gone (the next read loads it), or the store does not answer. Dropping the
    /// leader then lets anyone who joined meanwhile load.
    pub(super) async fn refresh_load<'f, O>(
        &'f self,
        leader: flight::Leader<'f>,
        k: &EntryKey,
        fresh_until: u64,
        stamps: &[TagKey],
        t: Ttls,
    ) -> Option<Load<'f, O>> {
        let inner = &self.inner;
        self.ready().await.ok()?;
        let terms = t.claim_terms(inner.settings.lease);
        let clocks = inner.ns.clocks();
        let claim = inner
            .store
            .claim_refresh(k, fresh_until, stamps, clocks, terms);
        let lease = self.call(Op::Claim, claim).await.ok()??;
        Some(Load {
            leader,
            lease: Some(lease),
            ttls: t,
            fallback: None,
        })
    }
}
