//! The circuit breaker: after `threshold` consecutive store failures the store is skipped
//! (no latency spent on a dead Redis) for `cooldown`; then one call is let through as a probe.
//! A success closes the breaker, a failure opens it for another cooldown.
//!
//! Lock-free: the probe is whoever wins a compare-and-swap that pushes the next probe time
//! one cooldown later, so a probe whose future was dropped cannot wedge the breaker open.

use crate::clock::Clock;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug)]
pub(crate) struct Breaker {
    clock: Arc<dyn Clock>,
    threshold: u32,
    cooldown: Duration,
    failures: AtomicU32,
    /// 0 when closed, else the clock time (ns, at least 1) of the next probe.
    open_until: AtomicU64,
}

impl Breaker {
    pub(crate) fn new(clock: Arc<dyn Clock>, threshold: u32, cooldown: Duration) -> Self {
        Self {
            clock,
            threshold: threshold.max(1),
            cooldown,
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.clock.now().as_nanos() as u64
    }

    /// Whether a call may go to the store now.
    pub(crate) fn allow(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = self.now();
        now >= until
            && self
                .open_until
                .compare_exchange(
                    until,
                    self.reopen_at(now),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
    }

    pub(crate) fn success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.open_until.load(Ordering::Relaxed) != 0 {
            self.open_until.store(0, Ordering::Release);
        }
    }

    pub(crate) fn failure(&self) {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= self.threshold || self.is_open() {
            self.open_until
                .store(self.reopen_at(self.now()), Ordering::Release);
        }
    }

    fn reopen_at(&self, now: u64) -> u64 {
        (now + self.cooldown.as_nanos() as u64).max(1)
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::MockClock;

    #[test]
    fn opens_after_threshold_probes_after_cooldown_and_closes_on_success() {
        let clock = MockClock::default();
        let b = Breaker::new(Arc::new(clock.clone()), 3, Duration::from_secs(1));
        b.failure();
        b.failure();
        assert!(b.allow(), "two failures are not enough");
        b.failure();
        assert!(!b.allow(), "open after three");
        clock.advance(Duration::from_millis(999));
        assert!(!b.allow());
        clock.advance(Duration::from_millis(1));
        assert!(b.allow(), "one probe after the cooldown");
        assert!(!b.allow(), "only one");
        b.failure();
        clock.advance(Duration::from_millis(500));
        assert!(!b.allow(), "a failed probe reopens for a full cooldown");
        clock.advance(Duration::from_millis(500));
        assert!(b.allow());
        b.success();
        assert!(b.allow() && b.allow() && !b.is_open());
    }

    #[test]
    fn a_lost_probe_does_not_wedge_it_open() {
        let clock = MockClock::default();
        let b = Breaker::new(Arc::new(clock.clone()), 1, Duration::from_secs(1));
        b.failure();
        clock.advance(Duration::from_secs(1));
        assert!(b.allow()); // the probe's future is dropped: no success, no failure
        clock.advance(Duration::from_secs(1));
        assert!(b.allow(), "another probe one cooldown later");
    }

    #[test]
    fn successes_reset_the_count() {
        let b = Breaker::new(Arc::new(MockClock::default()), 2, Duration::from_secs(1));
        b.failure();
        b.success();
        b.failure();
        assert!(b.allow());
    }
}
