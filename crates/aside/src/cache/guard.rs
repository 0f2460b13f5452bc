//! The outage policy: what happens around every store call, so that a failing store is never
//! the caller's failure.
//!
//! - Every call goes through [`Cache::call`]: skipped while the circuit breaker is open
//!   (`StoreError::CircuitOpen`, no latency spent on a dead store), timed, and counted; a failure
//!   feeds the breaker. The bound on each call is the store's own (see `store::client`).
//! - Invalidations are the exception: they are sent even while the breaker is open
//!   ([`Gate::Always`]). The breaker is opened by failed calls and closed by a probe once per
//!   cooldown, so it can still be open when the store answers again; an invalidation it
//!   skipped would be acknowledged while other instances, whose breakers have closed, read
//!   the entry it was to remove. Sending it costs a write at most one command timeout (and
//!   the wait for another invalidation's attempt, [`REPLAY_WAIT`]) while the store is down;
//!   reads keep the breaker's protection.
//! - An invalidation that could not be sent is kept in the backlog (bounded, deduplicated;
//!   past its capacity it becomes one bump of the namespace epoch) and the call reports
//!   [`Invalidation::Queued`]; it never fails.
//! - The backlog is replayed by the engine, not by the next request: a task of its own
//!   retries it in the background (backoff from 20 ms to 100 ms, with jitter, whatever the
//!   breaker says) until the store takes it, so an instance that receives no further request
//!   still applies what it acknowledged, and within about one pause of the store's return.
//!   [`Cache::flush`] waits for it, for graceful shutdown. Until then another instance that
//!   reaches the store may serve an entry such a write replaced: a write acknowledged while
//!   the store could not be reached is visible everywhere once the backlog is replayed (or
//!   the database change feed applies it), not at once.
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
const DRAIN_PAUSE: (Duration, Duration) = (Duration::from_millis(20), Duration::from_millis(100));

/// How long an invalidation waits for a replay of the backlog already under way before it
/// is reported [`Invalidation::Queued`] (the replay goes on in the background).
pub(super) const REPLAY_WAIT: Duration = Duration::from_millis(250);

/// Whether a store call may be skipped by an open circuit breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Gate {
    /// Skipped while the breaker is open (reads, claims, fills).
    Breaker,
    /// Always sent (invalidations and their replay; see the module docs).
    Always,
}

impl<C: Codec> Cache<C> {
    /// One store call: skipped while the breaker is open, timed, counted.
    pub(super) async fn call<T>(
        &self,
        op: Op,
        fut: impl Future<Output = std::result::Result<T, StoreError>>,
    ) -> std::result::Result<T, StoreError> {
        self.call_through(Gate::Breaker, op, fut).await
    }

    /// One store call, skipped while the breaker is open only through [`Gate::Breaker`].
    async fn call_through<T>(
        &self,
        gate: Gate,
        op: Op,
        fut: impl Future<Output = std::result::Result<T, StoreError>>,
    ) -> std::result::Result<T, StoreError> {
        let m = &self.inner.metrics;
        if gate == Gate::Breaker && !self.inner.breaker.allow() {
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
        self.replay(Gate::Breaker, None).await
    }

    /// Sends the backlog through `gate`, after waiting at most `wait` (forever: `None`) for a
    /// replay already under way.
    async fn replay(
        &self,
        gate: Gate,
        wait: Option<Duration>,
    ) -> std::result::Result<(), StoreError> {
        if self.inner.backlog.is_empty() {
            return Ok(());
        }
        let lock = self.inner.flush_lock.lock();
        let _guard = match wait {
            None => lock.await,
            Some(d) => match tokio::time::timeout(d, lock).await {
                Ok(guard) => guard,
                Err(_) => return Err(StoreError::CircuitOpen),
            },
        };
        if self.inner.backlog.is_empty() {
            return Ok(());
        }
        let batch = self.inner.backlog.take();
        let store = &self.inner.store;
        let r = async {
            if batch.overflowed {
                self.call_through(gate, Op::Bump, store.bump(&[self.inner.ns.epoch()]))
                    .await
            } else {
                let keys: Vec<_> = batch.keys.iter().cloned().collect();
                let stamps: Vec<_> = batch.stamps.iter().cloned().collect();
                self.call_through(gate, Op::Delete, store.delete(&keys))
                    .await?;
                self.call_through(gate, Op::Bump, store.bump(&stamps)).await
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
        // `None`: not sent, since older invalidations are still kept (sent with them below).
        let sent = if self.inner.backlog.is_empty() {
            let r = if keys.is_empty() {
                Ok(())
            } else {
                let delete = store.delete(keys);
                self.call_through(Gate::Always, Op::Delete, delete).await
            };
            Some(match r {
                Ok(()) if stamps.is_empty() => Ok(()),
                Ok(()) => {
                    let bump = store.bump(stamps);
                    self.call_through(Gate::Always, Op::Bump, bump).await
                }
                Err(e) => Err(e),
            })
        } else {
            None
        };
        // Again once applied: a flight that started while this invalidation was on its way
        // may have read what it removes, so callers arriving after it start afresh.
        self.inner.flights.invalidated(keys, stamps);
        if let Some(Ok(())) = sent {
            return Invalidation::Applied;
        }
        self.inner.backlog.push(keys, stamps);
        self.inner.metrics.queued.increment(1);
        self.inner
            .metrics
            .pending
            .set(self.inner.backlog.len() as f64);
        // Not sent yet: sent now with the older ones (a store that answers again takes the
        // whole backlog). Sent and failed: not tried twice in a row, the replay is left to
        // the background.
        if sent.is_none() && self.replay(Gate::Always, Some(REPLAY_WAIT)).await.is_ok() {
            return Invalidation::Applied;
        }
        self.drain_in_background();
        Invalidation::Queued
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
                if cache.replay(Gate::Always, None).await.is_err() {
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
            if self.replay(Gate::Always, None).await.is_ok() {
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
