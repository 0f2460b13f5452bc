//! Time, injectable so that expiry, freshness and the circuit breaker can be tested without
//! sleeping.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A clock: monotonic time for timeouts and expiry in this process, and wall time for the
/// freshness stamped into shared entries (read by other processes).
pub trait Clock: Send + Sync + Debug + 'static {
    /// Time since this clock's origin (monotonic).
    fn now(&self) -> Duration;
    /// Time since the Unix epoch (wall clock; instances sharing a store should keep their
    /// clocks in sync, as NTP does, since freshness is compared across them).
    fn wall(&self) -> Duration;
}

/// The real monotonic clock.
#[derive(Debug)]
pub struct SystemClock(Instant);

impl Default for SystemClock {
    fn default() -> Self {
        Self(Instant::now())
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
    fn wall(&self) -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// A clock that only moves when told to. Clones share the same time. Its wall time starts at
/// [`MockClock::WALL_ORIGIN`] and moves with it.
///
/// ```
/// use aside::clock::{Clock, MockClock};
/// use std::time::Duration;
/// let clock = MockClock::default();
/// clock.advance(Duration::from_secs(2));
/// assert_eq!(clock.now(), Duration::from_secs(2));
/// ```
#[derive(Clone, Debug, Default)]
pub struct MockClock(Arc<AtomicU64>);

impl MockClock {
    /// The wall time of a new mock clock: 2025-01-01T00:00:00Z.
    pub const WALL_ORIGIN: Duration = Duration::from_secs(1_735_689_600);

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_nanos() as u64, Ordering::SeqCst);
    }
}

impl Clock for MockClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::SeqCst))
    }
    fn wall(&self) -> Duration {
        Self::WALL_ORIGIN + self.now()
    }
}
