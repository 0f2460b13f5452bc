//! Counters and histograms through the `metrics` facade, registered once per cache (the hot
//! path only increments handles). Every metric carries the label `cache` (the namespace).
//!
//! | metric | kind | meaning |
//! | --- | --- | --- |
//! | `aside_hits_total` | counter | reads answered from the store (values and cached "not found") |
//! | `aside_misses_total` | counter | reads that found nothing valid |
//! | `aside_stale_total` | counter | stale values served |
//! | `aside_loads_total` | counter | loader runs |
//! | `aside_load_errors_total` | counter | loader runs that failed |
//! | `aside_backend_errors_total` | counter | store calls that failed or timed out |
//! | `aside_backend_skipped_total` | counter | store calls skipped by the open circuit breaker |
//! | `aside_corrupt_total` | counter | undecodable or incompatible entries (removed) |
//! | `aside_fills_refused_total` | counter | fills voided by an invalidation during their load |
//! | `aside_invalidations_queued_total` | counter | invalidations kept for later (store unreachable) |
//! | `aside_pending_invalidations` | gauge | invalidations waiting for the store |
//! | `aside_backend_seconds` | histogram | store call latency, label `op` |
//! | `aside_load_seconds` | histogram | loader latency |
//!
//! With an L1 ([`TieredStore`](crate::store::TieredStore)), also:
//!
//! | metric | kind | meaning |
//! | --- | --- | --- |
//! | `aside_l1_hits_total` | counter | reads answered by the L1 (counted in `aside_hits_total` too) |
//! | `aside_l1_misses_total` | counter | reads the L1 could not answer (read from Redis) |
//! | `aside_l1_bypassed_total` | counter | reads that skipped the L1: its invalidation channel was not confirmed live |
//! | `aside_l1_invalidations_total` | counter | invalidation messages received from other instances |
//! | `aside_l1_resyncs_total` | counter | times the L1 was voided whole (channel (re)established, or a message not understood) |
//! | `aside_l1_live` | gauge | 1 while the L1 serves (channel confirmed live within its bound), else 0 |

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

#[derive(Clone, Copy, Debug)]
pub(crate) enum Op {
    Get = 0,
    Claim,
    Fill,
    Release,
    Set,
    Delete,
    Bump,
    Ping,
}

const OPS: [&str; 8] = [
    "get", "claim", "fill", "release", "set", "delete", "bump", "ping",
];

#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) hits: Counter,
    pub(crate) misses: Counter,
    #[allow(dead_code)]
    pub(crate) stale: Counter,
    pub(crate) loads: Counter,
    pub(crate) load_errors: Counter,
    pub(crate) backend_errors: Counter,
    pub(crate) skipped: Counter,
    pub(crate) corrupt: Counter,
    pub(crate) fills_refused: Counter,
    pub(crate) queued: Counter,
    pub(crate) pending: Gauge,
    pub(crate) load_seconds: Histogram,
    backend_seconds: Vec<Histogram>,
}

impl Metrics {
    pub(crate) fn new(cache: &str) -> Self {
        let c = cache.to_owned();
        Self {
            hits: counter!("aside_hits_total", "cache" => c.clone()),
            misses: counter!("aside_misses_total", "cache" => c.clone()),
            stale: counter!("aside_stale_total", "cache" => c.clone()),
            loads: counter!("aside_loads_total", "cache" => c.clone()),
            load_errors: counter!("aside_load_errors_total", "cache" => c.clone()),
            backend_errors: counter!("aside_backend_errors_total", "cache" => c.clone()),
            skipped: counter!("aside_backend_skipped_total", "cache" => c.clone()),
            corrupt: counter!("aside_corrupt_total", "cache" => c.clone()),
            fills_refused: counter!("aside_fills_refused_total", "cache" => c.clone()),
            queued: counter!("aside_invalidations_queued_total", "cache" => c.clone()),
            pending: gauge!("aside_pending_invalidations", "cache" => c.clone()),
            load_seconds: histogram!("aside_load_seconds", "cache" => c.clone()),
            backend_seconds: OPS
                .iter()
                .map(|op| histogram!("aside_backend_seconds", "cache" => c.clone(), "op" => *op))
                .collect(),
        }
    }

    pub(crate) fn backend(&self, op: Op) -> &Histogram {
        &self.backend_seconds[op as usize]
    }
}

/// The L1's metrics (see the table above).
#[derive(Debug)]
pub(crate) struct L1Metrics {
    pub(crate) hits: Counter,
    pub(crate) misses: Counter,
    pub(crate) bypassed: Counter,
    pub(crate) invalidations: Counter,
    pub(crate) resyncs: Counter,
    pub(crate) live: Gauge,
}

impl L1Metrics {
    pub(crate) fn new(cache: &str) -> Self {
        let c = cache.to_owned();
        Self {
            hits: counter!("aside_l1_hits_total", "cache" => c.clone()),
            misses: counter!("aside_l1_misses_total", "cache" => c.clone()),
            bypassed: counter!("aside_l1_bypassed_total", "cache" => c.clone()),
            invalidations: counter!("aside_l1_invalidations_total", "cache" => c.clone()),
            resyncs: counter!("aside_l1_resyncs_total", "cache" => c.clone()),
            live: gauge!("aside_l1_live", "cache" => c),
        }
    }
}
