//! The outage policy: what happens around every store call, so that a failing store is never
//! the caller's failure.
//!
//! - Every call goes through [`Cache::call`]: skipped while the circuit breaker is open
//!   (`StoreError::CircuitOpen`, no latency spent on a dead store), timed, and counted; a failure
//!   feeds the breaker. The bound on each call is the store's own (see `store::client`).
//! - An invalidation that could not be sent is kept in the backlog (bounded, deduplicated;
//!   past its capacity it becomes one bump of the namespace epoch) and the call reports
//!   [`Invalidation::Queued`]; it never fails.
//! - Before anything is read from the store (a read, a claim), [`Cache::ready`] replays the
//!   backlog: a read is served from the store only once every invalidation kept has been
//!   applied, so an entry that an acknowledged write invalidated is never served after the
//!   store comes back.

use super::{Cache, Invalidation};
use crate::codec::Codec;
use crate::error::StoreError;
use crate::key::{EntryKey, TagKey};
use crate::metrics::Op;
use crate::store::Lookup;
use std::time::Instant;
use tracing::{debug, warn};

impl<C: Codec> Cache<C> {
    /// One store call: skipped while the breaker is open, timed, counted.
    pub(super) async fn call<T>(
        &self,
        op: Op,
        fut: impl Future<Output = std::result::Result<T, StoreError>>,
    ) -> std::result::Result<T, StoreError> {
        let m = &self.inner.metrics;
        if !self.inner.breaker.allow() {
            m.skipped.increment(1);
            return Err(StoreError::CircuitOpen);
        }
        let start = Instant::now();
        let r = fut.await;
        m.backend(op).record(start.elapsed().as_secs_f64());
        match &r {
            Ok(_) => self.inner.breaker.success(),
            Err(e) => {
                self.inner.breaker.failure();
                m.backend_errors.increment(1);
                warn!(error = %e, ?op, "cache store call failed");
            }
        }
        r
    }

    /// Applies pending invalidations; reads are served from the store only once it is empty.
    pub(super) async fn ready(&self) -> std::result::Result<(), StoreError> {
        if self.inner.backlog.is_empty() {
            return Ok(());
        }
        let _guard = self.inner.flush_lock.lock().await;
        if self.inner.backlog.is_empty() {
            return Ok(());
        }
        let batch = self.inner.backlog.take();
        let store = &self.inner.store;
        let r = async {
            if batch.overflowed {
                self.call(
                    Op::Bump,
                    store.bump(&[self.inner.ns.epoch()], &self.inner.ns.clock()),
                )
                .await
            } else {
                let keys: Vec<_> = batch.keys.iter().cloned().collect();
                let stamps: Vec<_> = batch.stamps.iter().cloned().collect();
                self.call(Op::Delete, store.delete(&keys)).await?;
                self.call(Op::Bump, store.bump(&stamps, &self.inner.ns.clock()))
                    .await
            }
        }
        .await;
        match r {
            Ok(()) => {
                debug!(
                    overflowed = batch.overflowed,
                    "pending invalidations applied"
                );
                self.inner.backlog.settle();
            }
            Err(_) => self.inner.backlog.restore(batch),
        }
        self.inner
            .metrics
            .pending
            .set(self.inner.backlog.len() as f64);
        if self.inner.backlog.is_empty() {
            Ok(())
        } else {
            Err(StoreError::CircuitOpen)
        }
    }

    /// A read of the store, once pending invalidations are applied.
    pub(super) async fn read(
        &self,
        k: &EntryKey,
        stamps: &[TagKey],
    ) -> std::result::Result<Lookup, StoreError> {
        self.ready().await?;
        self.call(Op::Get, self.inner.store.get(k, stamps)).await
    }

    /// Deletes `keys` and bumps `stamps`; what could not be sent is kept for later.
    pub(super) async fn invalidate(&self, keys: &[EntryKey], stamps: &[TagKey]) -> Invalidation {
        self.inner.flights.invalidated();
        let store = &self.inner.store;
        let sent = if self.inner.backlog.is_empty() {
            let r = if keys.is_empty() {
                Ok(())
            } else {
                self.call(Op::Delete, store.delete(keys)).await
            };
            match r {
                Ok(()) if stamps.is_empty() => Ok(()),
                Ok(()) => {
                    self.call(Op::Bump, store.bump(stamps, &self.inner.ns.clock()))
                        .await
                }
                Err(e) => Err(e),
            }
        } else {
            Err(StoreError::CircuitOpen)
        };
        // Again once applied: a flight that started while this invalidation was on its way
        // may have read what it removes, so callers arriving after it start afresh.
        self.inner.flights.invalidated();
        match sent {
            Ok(()) => Invalidation::Applied,
            Err(_) => {
                self.inner.backlog.push(keys, stamps);
                self.inner.metrics.queued.increment(1);
                self.inner
                    .metrics
                    .pending
                    .set(self.inner.backlog.len() as f64);
                // Try right away: a store that answers again gets the whole backlog now.
                match self.ready().await {
                    Ok(()) => Invalidation::Applied,
                    Err(_) => Invalidation::Queued,
                }
            }
        }
    }
}
