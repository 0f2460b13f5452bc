//! The settings of the L1.

use crate::error::BuildError;
use std::time::Duration;

/// Settings of the L1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L1Config {
    /// Most copies held (least recently used ones are dropped beyond it).
    pub capacity: u64,
    /// Longest life of a copy, whatever the TTL of its entry (default 10 s): bounds what the
    /// L1 costs in memory, and how long a copy could outlive a write not announced.
    pub ttl: Duration,
    /// How far behind the invalidation channel may be before the L1 stops serving
    /// (default 100 ms): a write on another instance is seen here at most this long after it
    /// was acknowledged. A `PING` is sent on the channel every quarter of it.
    pub bound: Duration,
}

impl L1Config {
    /// At most `capacity` copies, each kept at most `ttl`; a bound of 100 ms.
    ///
    /// ```
    /// use std::time::Duration;
    /// let l1 = aside::store::L1Config::new(10_000, Duration::from_secs(10));
    /// assert_eq!(l1.bound, Duration::from_millis(100));
    /// ```
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        Self {
            capacity,
            ttl,
            bound: Duration::from_millis(100),
        }
    }

    /// Checks the ranges: capacity at least 1, TTL from 1 ms to 1 day, bound from 10 ms to 60 s.
    pub fn check(&self) -> Result<(), BuildError> {
        let invalid = |reason: &str| BuildError::Invalid {
            name: "l1",
            reason: reason.to_owned(),
        };
        if self.capacity == 0 {
            return Err(invalid("capacity must be at least 1"));
        }
        if self.ttl < Duration::from_millis(1) || self.ttl > Duration::from_secs(24 * 3600) {
            return Err(invalid("ttl must be between 1 ms and 1 day"));
        }
        if self.bound < Duration::from_millis(10) || self.bound > Duration::from_secs(60) {
            return Err(invalid("bound must be between 10 ms and 60 s"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        let ok = L1Config::new(1, Duration::from_secs(1));
        assert!(ok.check().is_ok());
        for bad in [
            L1Config::new(0, Duration::from_secs(1)),
            L1Config::new(1, Duration::ZERO),
            L1Config::new(1, Duration::from_secs(2 * 24 * 3600)),
            L1Config {
                bound: Duration::from_millis(1),
                ..ok.clone()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }
}
