//! The outage policy: what happens around every store call, so that a failing store is never
//! the caller's failure.
//!
//! - Every call goes through [`Cache::call`]: skipped while the circuit breaker is open
//!   (`StoreError::CircuitOpen`, no latency spent on a dead store), timed, and counted; a failure
//!   feeds the breaker. The bound on each call is the store's own (see `store::client`).
//! - An invalidation that could not be sent is kept in the backlog (bounded, deduplicated;
//!   past its capacity it becomes one bump of the namespace epoch) and the call reports
//!   [`Invalidation::Queued`]; it never fails.
//! - The backlog is replayed by the engine, not by the next request: a task of its own
//!   retries it in the background (backoff from 20 ms to 500 ms, with jitter; the breaker
//!   lets a probe through once per cooldown) until the store takes it, so an instance that
//!   receives no further request still applies what it acknowledged. [`Cache::flush`] waits
//!   for it, for graceful shutdown.
//! - Before anything is read from the store (a read, a claim), [`Cache::ready`] replays the
//!   backlog too: a read is served from the store only once every invalidation kept has been
//!   applied, so an entry that an acknowledged write invalidated is never served after the
//!   store comes back; and nothing is filled while the backlog is not empty (`lease`).

use super::{Cache, Invalidation};
use crate::codec::Codec;
use crate::error::StoreError;
use crate::key::{EntryKey, TagKey};
use crate::metrics::Op;
use crate::store::Lookup;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// The first and the longest pause between two background replays of the backlog.
const DRAIN_PAUSE: (Duration, Duration) = (Duration::from_millis(20), Duration::from_millis(500));

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
                self.call(Op::Bump, store.bump(&[self.inner.ns.epoch()]))
                    .await
            } else {
                let keys: Vec<_> = batch.keys.iter().cloned().collect();
                let stamps: Vec<_> = batch.stamps.iter().cloned().collect();
                self.call(Op::Delete, store.delete(&keys)).await?;
                self.call(Op::Bump, store.bump(&stamps)).await
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

    /// A batch read of the store, once pending invalidations are applied: one lookup per key.
    pub(super) async fn read_many(
        &self,
        keys: &[EntryKey],
        stamps: &[Vec<TagKey>],
    ) -> std::result::Result<Vec<Lookup>, StoreError> {
        self.ready().await?;
        let read = self.inner.store.get_many(keys, stamps);
        let found = self.call(Op::Get, read).await?;
        if found.len() != keys.len() {
            return Err(StoreError::Protocol("get_many: lookup count".into()));
        }
        Ok(found)
    }

    /// Deletes `keys` and bumps `stamps`; what could not be sent is kept for later.
    pub(super) async fn invalidate(&self, keys: &[EntryKey], stamps: &[TagKey]) -> Invalidation {
        self.inner.flights.invalidated(keys, stamps);
        let store = &self.inner.store;
        let sent = if self.inner.backlog.is_empty() {
            let r = if keys.is_empty() {
                Ok(())
            } else {
                self.call(Op::Delete, store.delete(keys)).await
            };
            match r {
                Ok(()) if stamps.is_empty() => Ok(()),
                Ok(()) => self.call(Op::Bump, store.bump(stamps)).await,
                Err(e) => Err(e),
            }
        } else {
            Err(StoreError::CircuitOpen)
        };
        // Again once applied: a flight that started while this invalidation was on its way
        // may have read what it removes, so callers arriving after it start afresh.
        self.inner.flights.invalidated(keys, stamps);
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
                    Err(_) => {
                        self.drain_in_background();
                        Invalidation::Queued
                    }
                }
            }
        }
    }

    /// Starts the task that replays the backlog until it is empty, unless one runs. It holds
    /// the cache weakly: a cache dropped meanwhile ends it.
    fn drain_in_background(&self) {
        if self.inner.draining.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.inner.draining.store(false, Ordering::Release);
            return;
        };
        let weak: Weak<_> = Arc::downgrade(&self.inner);
        rt.spawn(async move {
            let mut pause = DRAIN_PAUSE.0;
            loop {
                tokio::time::sleep(pause.mul_f64(0.5 + rand::random::<f64>() / 2.0)).await;
                pause = (pause * 2).min(DRAIN_PAUSE.1);
                let Some(inner) = weak.upgrade() else { return };
                let cache = Cache { inner };
                if cache.ready().await.is_err() {
                    continue;
                }
                debug!("kept invalidations replayed in the background");
                // Done, unless more came in after the replay and their pusher saw this task
                // still running.
                cache.inner.draining.store(false, Ordering::Release);
                if cache.inner.backlog.is_empty()
                    || cache.inner.draining.swap(true, Ordering::AcqRel)
                {
                    return;
                }
            }
        });
    }

    /// See [`Cache::flush`].
    pub(super) async fn flush_within(&self, within: Duration) -> Invalidation {
        let deadline = Instant::now() + within;
        let mut pause = Duration::from_millis(10);
        loop {
            if self.ready().await.is_ok() {
                return Invalidation::Applied;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Invalidation::Queued;
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }
}
