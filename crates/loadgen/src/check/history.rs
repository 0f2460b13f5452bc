//! The record of one id's writes (sent, acknowledged, failed) and the verdict it gives on
//! a read of that id.

use std::time::{Duration, Instant};

/// The writes of one id, as its (single) writer saw them. Values only increase: each
/// call's `value` must be above the previous call's of the same kind.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// `(sent at, value)`, oldest first.
    sent: Vec<(Instant, u64)>,
    /// `(acknowledged at, value)`, oldest first.
    acked: Vec<(Instant, u64)>,
    /// Values whose write failed, increasing.
    failed: Vec<u64>,
}

/// What the value a service holds after the run says about the writes of its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// The last acknowledged value, or a later one whose write failed (it may have been
    /// applied).
    Kept,
    /// Older than the last acknowledged value, but the value of a failed write, which the
    /// server may have applied after later writes. Allowed.
    Unsettled,
    /// A lost write: older than the last acknowledged value, and no failed write explains
    /// it.
    Lost {
        /// The last acknowledged value.
        acknowledged: u64,
    },
    /// Never sent: a bug of the service or of the checker.
    Phantom {
        /// The highest value sent (0: none).
        highest_sent: u64,
    },
}

/// What a read's value says about the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// At least as new as every value acknowledged before the read began (less the bound).
    Fresh,
    /// Older than a value that was acknowledged only after the read began (less the
    /// bound): the write overlapped the read, or fell within the bound. Allowed.
    Concurrent,
    /// Older than an acknowledged value, but the value of a failed write, which the server
    /// may have applied after later writes. Allowed.
    Unsettled,
    /// A violation: older than a value acknowledged before the read began (less the bound).
    Stale {
        /// The highest value acknowledged before the read began (less the bound).
        acknowledged: u64,
        /// How long before the read began that value had been acknowledged.
        acknowledged_ago: Duration,
        /// How long before the read began the value read was first replaced by an
        /// acknowledged write (at least `acknowledged_ago`).
        replaced_ago: Duration,
    },
    /// Never sent before the read ended: a bug of the service or of the checker.
    Phantom {
        /// The highest value sent before the read ended (0: none).
        highest_sent: u64,
    },
}

impl History {
    /// An id nothing was written to yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// `value` is about to be sent, at `at` (before the request leaves).
    pub fn sent(&mut self, at: Instant, value: u64) {
        debug_assert!(self.sent.last().is_none_or(|&(_, v)| v < value));
        self.sent.push((at, value));
    }

    /// The write of `value` was acknowledged (a 2xx received) at `at`.
    pub fn acknowledge(&mut self, at: Instant, value: u64) {
        debug_assert!(self.acked.last().is_none_or(|&(t, v)| v < value && t <= at));
        self.acked.push((at, value));
    }

    /// The write of `value` failed (another status, a broken connection, a timeout): it
    /// may or may not have been applied, and may still be.
    pub fn failed(&mut self, value: u64) {
        debug_assert!(self.failed.last().is_none_or(|&v| v < value));
        self.failed.push(value);
    }

    /// Values acknowledged.
    pub fn acknowledged(&self) -> usize {
        self.acked.len()
    }

    /// Values whose write failed.
    pub fn failures(&self) -> usize {
        self.failed.len()
    }

    /// The highest value acknowledged (0: none).
    pub fn last_acknowledged(&self) -> u64 {
        self.acked.last().map_or(0, |&(_, v)| v)
    }

    /// Judges `value`, the value the service holds for this id once every write has been
    /// answered (for instance its row, read straight from the database after the run).
    pub fn judge_stored(&self, value: u64) -> Stored {
        let highest_sent = self.sent.last().map_or(0, |&(_, v)| v);
        let acknowledged = self.last_acknowledged();
        if value > highest_sent {
            Stored::Phantom { highest_sent }
        } else if value >= acknowledged {
            Stored::Kept
        } else if self.failed.binary_search(&value).is_ok() {
            Stored::Unsettled
        } else {
            Stored::Lost { acknowledged }
        }
    }

    /// The highest value sent at or before `by` (0: none).
    pub fn highest_sent(&self, by: Instant) -> u64 {
        let i = self.sent.partition_point(|&(at, _)| at <= by);
        i.checked_sub(1).map_or(0, |i| self.sent[i].1)
    }

    /// Judges a read that began at `began`, got its response at `ended` and returned
    /// `value`, allowing values acknowledged less than `bound` before it began.
    pub fn judge(&self, began: Instant, ended: Instant, value: u64, bound: Duration) -> Verdict {
        let highest_sent = self.highest_sent(ended);
        if value > highest_sent {
            return Verdict::Phantom { highest_sent };
        }
        // A bound reaching before the clock's origin: nothing was acknowledged that early.
        let settled = began.checked_sub(bound).map_or(0, |cutoff| {
            self.acked.partition_point(|&(at, _)| at < cutoff)
        });
        let newest_settled = settled.checked_sub(1).map(|i| self.acked[i]);
        match newest_settled {
            Some((at, acknowledged)) if value < acknowledged => {
                if self.failed.binary_search(&value).is_ok() {
                    return Verdict::Unsettled;
                }
                let replaced = self.acked.partition_point(|&(_, v)| v <= value);
                let replaced_at = self.acked.get(replaced).map_or(at, |&(t, _)| t);
                Verdict::Stale {
                    acknowledged,
                    acknowledged_ago: began.saturating_duration_since(at),
                    replaced_ago: began.saturating_duration_since(replaced_at),
                }
            }
            _ => {
                let by_the_end = self.acked.partition_point(|&(at, _)| at <= ended);
                let newer_by_the_end = by_the_end
                    .checked_sub(1)
                    .is_some_and(|i| self.acked[i].1 > value);
                if newer_by_the_end {
                    if self.failed.binary_search(&value).is_ok() {
                        Verdict::Unsettled
                    } else {
                        Verdict::Concurrent
                    }
                } else {
                    Verdict::Fresh
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const NO_BOUND: Duration = Duration::ZERO;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A history where `value` was sent at `t0 + sent` and acknowledged at `t0 + acked` (ms).
    fn written(t0: Instant, writes: &[(u64, u64, u64)]) -> History {
        let mut h = History::new();
        for &(value, sent, acked) in writes {
            h.sent(t0 + ms(sent), value);
            h.acknowledge(t0 + ms(acked), value);
        }
        h
    }

    #[test]
    fn an_old_value_read_after_the_ack_is_stale() {
        let t0 = Instant::now();
        let h = written(t0, &[(1, 0, 10)]);
        assert_eq!(
            h.judge(t0 + ms(15), t0 + ms(16), 0, NO_BOUND),
            Verdict::Stale {
                acknowledged: 1,
                acknowledged_ago: ms(5),
                replaced_ago: ms(5),
            }
        );
        assert_eq!(
            h.judge(t0 + ms(15), t0 + ms(16), 1, NO_BOUND),
            Verdict::Fresh
        );
    }

    #[test]
    fn a_read_that_began_before_the_ack_may_see_either_value() {
        let t0 = Instant::now();
        let h = written(t0, &[(1, 0, 10)]);
        // Began before the write was sent, ended after its ack.
        assert_eq!(h.judge(t0, t0 + ms(12), 0, NO_BOUND), Verdict::Concurrent);
        // Began while the write was in flight.
        assert_eq!(
            h.judge(t0 + ms(5), t0 + ms(12), 0, NO_BOUND),
            Verdict::Concurrent
        );
        assert_eq!(
            h.judge(t0 + ms(5), t0 + ms(12), 1, NO_BOUND),
            Verdict::Fresh
        );
        // Began at the very instant of the ack: not after it.
        assert_eq!(
            h.judge(t0 + ms(10), t0 + ms(12), 0, NO_BOUND),
            Verdict::Concurrent
        );
        // Ended before the ack: the old value is simply current.
        assert_eq!(h.judge(t0 + ms(2), t0 + ms(8), 0, NO_BOUND), Verdict::Fresh);
    }

    #[test]
    fn the_bound_is_honoured() {
        let t0 = Instant::now();
        let h = written(t0, &[(1, 0, 10), (2, 20, 30)]);
        let bound = ms(100);
        // 50 ms after the ack of 2: within the bound, even value 0 is allowed.
        assert_eq!(
            h.judge(t0 + ms(80), t0 + ms(81), 0, bound),
            Verdict::Concurrent
        );
        assert_eq!(
            h.judge(t0 + ms(80), t0 + ms(81), 1, bound),
            Verdict::Concurrent
        );
        // 105 ms after the ack of 1 but only 95 after that of 2: 0 is stale, 1 is not.
        assert_eq!(
            h.judge(t0 + ms(115), t0 + ms(116), 0, bound),
            Verdict::Stale {
                acknowledged: 1,
                acknowledged_ago: ms(105),
                replaced_ago: ms(105),
            }
        );
        assert_eq!(
            h.judge(t0 + ms(115), t0 + ms(116), 1, bound),
            Verdict::Concurrent
        );
        // Past the bound of both.
        assert_eq!(
            h.judge(t0 + ms(131), t0 + ms(132), 1, bound),
            Verdict::Stale {
                acknowledged: 2,
                acknowledged_ago: ms(101),
                replaced_ago: ms(101),
            }
        );
        assert_eq!(
            h.judge(t0 + ms(131), t0 + ms(132), 2, bound),
            Verdict::Fresh
        );
    }

    #[test]
    fn how_long_ago_the_value_read_was_replaced() {
        let t0 = Instant::now();
        let h = written(t0, &[(1, 0, 10), (2, 20, 30), (3, 40, 50)]);
        assert_eq!(
            h.judge(t0 + ms(60), t0 + ms(61), 1, NO_BOUND),
            Verdict::Stale {
                acknowledged: 3,
                acknowledged_ago: ms(10),
                replaced_ago: ms(30),
            }
        );
    }

    #[test]
    fn values_of_failed_writes_may_be_read_later() {
        let t0 = Instant::now();
        let mut h = written(t0, &[(1, 0, 10)]);
        h.sent(t0 + ms(20), 2);
        h.failed(2);
        h.sent(t0 + ms(30), 3);
        h.acknowledge(t0 + ms(40), 3);
        // 2 may have been applied after 3: allowed, but counted apart.
        assert_eq!(
            h.judge(t0 + ms(50), t0 + ms(51), 2, NO_BOUND),
            Verdict::Unsettled
        );
        // Before 3 was acknowledged, 2 is as good as any.
        assert_eq!(
            h.judge(t0 + ms(25), t0 + ms(26), 2, NO_BOUND),
            Verdict::Fresh
        );
        assert_eq!(
            h.judge(t0 + ms(25), t0 + ms(45), 2, NO_BOUND),
            Verdict::Unsettled
        );
        // 1 was replaced by 3 whatever became of 2.
        assert!(matches!(
            h.judge(t0 + ms(50), t0 + ms(51), 1, NO_BOUND),
            Verdict::Stale {
                acknowledged: 3,
                ..
            }
        ));
        assert_eq!(h.acknowledged(), 2);
        assert_eq!(h.failures(), 1);
        // A failed write that is the newest: its value is simply new.
        let mut h = written(t0, &[(1, 0, 10)]);
        h.sent(t0 + ms(20), 2);
        h.failed(2);
        assert_eq!(
            h.judge(t0 + ms(50), t0 + ms(51), 2, NO_BOUND),
            Verdict::Fresh
        );
        assert!(matches!(
            h.judge(t0 + ms(50), t0 + ms(51), 0, NO_BOUND),
            Verdict::Stale {
                acknowledged: 1,
                ..
            }
        ));
    }

    #[test]
    fn a_stored_value_older_than_the_last_ack_is_a_lost_write() {
        let t0 = Instant::now();
        let mut h = written(t0, &[(1, 0, 10), (2, 20, 30)]);
        h.sent(t0 + ms(40), 3);
        h.failed(3);
        h.sent(t0 + ms(50), 4);
        h.acknowledge(t0 + ms(60), 4);
        h.sent(t0 + ms(70), 5);
        h.failed(5);
        assert_eq!(h.last_acknowledged(), 4);
        assert_eq!(h.judge_stored(4), Stored::Kept);
        // The failed write after the last ack may have been applied.
        assert_eq!(h.judge_stored(5), Stored::Kept);
        // The failed write before it may have been applied late, over it.
        assert_eq!(h.judge_stored(3), Stored::Unsettled);
        // An acknowledged value that was replaced, or what was there before the run.
        assert_eq!(h.judge_stored(2), Stored::Lost { acknowledged: 4 });
        assert_eq!(h.judge_stored(0), Stored::Lost { acknowledged: 4 });
        assert_eq!(h.judge_stored(6), Stored::Phantom { highest_sent: 5 });
        // An id never written keeps the value from before the run.
        let empty = History::new();
        assert_eq!(empty.last_acknowledged(), 0);
        assert_eq!(empty.judge_stored(0), Stored::Kept);
        assert_eq!(empty.judge_stored(1), Stored::Phantom { highest_sent: 0 });
    }

    #[test]
    fn values_never_sent_are_phantoms() {
        let t0 = Instant::now();
        let h = written(t0, &[(1, 10, 20)]);
        assert_eq!(
            h.judge(t0 + ms(30), t0 + ms(31), 2, NO_BOUND),
            Verdict::Phantom { highest_sent: 1 }
        );
        // Read back before it was even sent.
        assert_eq!(
            h.judge(t0, t0 + ms(5), 1, NO_BOUND),
            Verdict::Phantom { highest_sent: 0 }
        );
        // Once sent, the value may be read back before its ack.
        assert_eq!(h.judge(t0, t0 + ms(15), 1, NO_BOUND), Verdict::Fresh);
        // An id never written: only the value from before the run.
        let empty = History::new();
        assert_eq!(empty.judge(t0, t0 + ms(1), 0, NO_BOUND), Verdict::Fresh);
        assert_eq!(
            empty.judge(t0, t0 + ms(1), 1, NO_BOUND),
            Verdict::Phantom { highest_sent: 0 }
        );
    }

    #[test]
    fn ids_are_judged_by_their_own_history() {
        let t0 = Instant::now();
        let a = written(t0, &[(1, 0, 10), (2, 10, 20)]);
        let b = written(t0, &[(1, 100, 110)]);
        // Value 1 is stale for a at 30 ms, fresh for b, which a's writes do not concern.
        assert!(matches!(
            a.judge(t0 + ms(30), t0 + ms(31), 1, NO_BOUND),
            Verdict::Stale { .. }
        ));
        assert_eq!(
            b.judge(t0 + ms(30), t0 + ms(31), 0, NO_BOUND),
            Verdict::Fresh
        );
        assert_eq!(
            b.judge(t0 + ms(30), t0 + ms(31), 1, NO_BOUND),
            Verdict::Phantom { highest_sent: 0 }
        );
        assert_eq!(
            b.judge(t0 + ms(120), t0 + ms(121), 1, NO_BOUND),
            Verdict::Fresh
        );
    }

    #[test]
    fn a_bound_longer_than_the_clock_allows_everything_older() {
        let t0 = Instant::now();
        let h = written(t0, &[(1, 0, 1)]);
        let huge = Duration::from_secs(100 * 365 * 86_400);
        assert_eq!(
            h.judge(t0 + ms(5), t0 + ms(6), 0, huge),
            Verdict::Concurrent
        );
    }
}
