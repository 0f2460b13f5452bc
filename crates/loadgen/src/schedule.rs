//! Open-loop pacing: when each request of a connection is due.
//!
//! With `--rate R` over `C` connections, every connection sends one request each `C / R`
//! seconds, and connection `w` is offset by `w / R` so the connections interleave rather than
//! fire together. Latency is measured from the *scheduled* time, not from when the request
//! actually left: if the server stalls, the requests that should have been sent meanwhile
//! count the stall in their latency (no coordinated omission). A connection that falls behind
//! sends its overdue requests back to back until it catches up.

use std::time::Duration;

/// The due times of one connection's requests, relative to the start of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    offset: Duration,
    interval: Duration,
}

impl Schedule {
    /// The schedule of connection `worker` (0-based) of `connections`, for `rate` requests
    /// per second in total. `rate` must be finite and above 0.
    pub fn new(rate: f64, connections: usize, worker: usize) -> Self {
        let per_request = 1.0 / rate;
        Schedule {
            offset: Duration::from_secs_f64(per_request * worker as f64),
            interval: Duration::from_secs_f64(per_request * connections as f64),
        }
    }

    /// When request number `k` (0-based) of this connection is due.
    pub fn due(&self, k: u64) -> Duration {
        // Multiply in nanoseconds (u128) so long runs do not drift or overflow.
        let nanos = self.offset.as_nanos() + self.interval.as_nanos() * u128::from(k);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// Time between two requests of this connection.
    pub fn interval(&self) -> Duration {
        self.interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_interleave_at_the_total_rate() {
        // 1000 req/s over 4 connections: each sends every 4 ms, offset by 1 ms.
        let s: Vec<Schedule> = (0..4).map(|w| Schedule::new(1000.0, 4, w)).collect();
        assert_eq!(s[0].interval(), Duration::from_millis(4));
        assert_eq!(s[0].due(0), Duration::ZERO);
        assert_eq!(s[1].due(0), Duration::from_millis(1));
        assert_eq!(s[3].due(2), Duration::from_millis(11));
        // Over one second the union holds exactly 1000 distinct, evenly spaced due times.
        let mut all: Vec<Duration> = s
            .iter()
            .flat_map(|s| {
                (0..)
                    .map(|k| s.due(k))
                    .take_while(|d| *d < Duration::from_secs(1))
            })
            .collect();
        all.sort();
        assert_eq!(all.len(), 1000);
        for pair in all.windows(2) {
            assert_eq!(pair[1] - pair[0], Duration::from_millis(1));
        }
    }

    #[test]
    fn does_not_drift() {
        let s = Schedule::new(3.0, 1, 0);
        // 1/3 s is not exact in nanoseconds; after a day of requests the error is under 1 ms.
        let d = s.due(3 * 86_400).as_secs_f64();
        assert!((d - 86_400.0).abs() < 1e-3, "{d}");
    }
}
