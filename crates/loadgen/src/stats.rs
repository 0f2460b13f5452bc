//! What a run measured: per-connection recorders, merged into one [`Summary`].
//!
//! Every connection task owns a [`Recorder`] (no sharing on the hot path). Once per second
//! of the run a recorder folds the second it just finished into the shared
//! [`Timeline`], which the plot and the JSON series come from. At the end the recorders
//! are merged and summarised.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in microseconds, up to this bound (larger values saturate).
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// The value of a response's `x-cache` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// `hit`
    Hit,
    /// `miss`
    Miss,
    /// `stale`
    Stale,
    /// `bypass`
    Bypass,
    /// Some other value.
    Other,
    /// No `x-cache` header.
    Absent,
}

impl CacheStatus {
    /// The name used in reports: the header value, `other`, or `none` when absent.
    pub fn name(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Stale => "stale",
            CacheStatus::Bypass => "bypass",
            CacheStatus::Other => "other",
            CacheStatus::Absent => "none",
        }
    }

    /// Classifies a header value (ASCII case-insensitive, surrounding spaces ignored).
    pub fn from_header(value: Option<&[u8]>) -> Self {
        let Some(v) = value else {
            return CacheStatus::Absent;
        };
        let v = v.trim_ascii();
        if v.eq_ignore_ascii_case(b"hit") {
            CacheStatus::Hit
        } else if v.eq_ignore_ascii_case(b"miss") {
            CacheStatus::Miss
        } else if v.eq_ignore_ascii_case(b"stale") {
            CacheStatus::Stale
        } else if v.eq_ignore_ascii_case(b"bypass") {
            CacheStatus::Bypass
        } else {
            CacheStatus::Other
        }
    }
}

/// A request that got no HTTP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// The TCP connection or HTTP handshake failed.
    Connect,
    /// The connection broke while sending or receiving.
    Io,
    /// No complete response within `--timeout`.
    Timeout,
}

impl Failure {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Io => "io",
            Failure::Timeout => "timeout",
        }
    }
}

/// Requests and latencies of one second of a run.
#[derive(Debug, Clone)]
pub struct Second {
    /// Responses completed in that second (any status).
    pub responses: u64,
    /// Non-2xx responses and failures in that second.
    pub errors: u64,
    /// Their latencies in microseconds (2 significant digits: enough for a p99 line).
    pub latency: Histogram<u64>,
}

impl Second {
    fn new() -> Self {
        Second {
            responses: 0,
            errors: 0,
            latency: new_histogram(2),
        }
    }
}

/// Per-second results shared by every connection of one run.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    seconds: Arc<Mutex<Vec<Second>>>,
}

impl Timeline {
    fn add(&self, index: u64, second: &Second) {
        // A poisoned lock only means another task panicked mid-add; the data is still counts.
        let mut all = self.seconds.lock().unwrap_or_else(PoisonError::into_inner);
        let index = usize::try_from(index).unwrap_or(usize::MAX).min(86_400);
        while all.len() <= index {
            all.push(Second::new());
        }
        let slot = &mut all[index];
        slot.responses += second.responses;
        slot.errors += second.errors;
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = slot.latency.add(&second.latency);
    }

    /// One point per second: throughput and p99.
    pub fn points(&self) -> Vec<Point> {
        let all = self.seconds.lock().unwrap_or_else(PoisonError::into_inner);
        all.iter()
            .enumerate()
            .map(|(i, s)| Point {
                second: i as u64,
                responses: s.responses,
                errors: s.errors,
                p99_ms: if s.latency.is_empty() {
                    None
                } else {
                    Some(us_to_ms(s.latency.value_at_quantile(0.99)))
                },
            })
            .collect()
    }
}

/// One second of a run, as reported and plotted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    /// Seconds since the measured part of the run began.
    pub second: u64,
    /// Responses completed in that second.
    pub responses: u64,
    /// Errors (non-2xx or no response) in that second.
    pub errors: u64,
    /// 99th percentile latency of that second, in milliseconds.
    pub p99_ms: Option<f64>,
}

fn new_histogram(sigfig: u8) -> Histogram<u64> {
    // Only called with sigfig 2 or 3 and constant bounds, which hdrhistogram accepts.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, sigfig).expect("valid histogram bounds")
}

/// What one connection measured.
#[derive(Debug, Clone)]
pub struct Recorder {
    latency: Histogram<u64>,
    ok: u64,
    statuses: BTreeMap<u16, u64>,
    failures: BTreeMap<Failure, u64>,
    cache: [u64; 6],
    ops: [u64; 3],
    current: u64,
    second: Second,
    timeline: Timeline,
}

impl Recorder {
    /// A recorder folding its seconds into `timeline`.
    pub fn new(timeline: Timeline) -> Self {
        Recorder {
            latency: new_histogram(3),
            ok: 0,
            statuses: BTreeMap::new(),
            failures: BTreeMap::new(),
            cache: [0; 6],
            ops: [0; 3],
            current: 0,
            second: Second::new(),
            timeline,
        }
    }

    fn roll(&mut self, second: u64) {
        if second != self.current {
            self.flush();
            self.current = second;
        }
    }

    /// Hands the current second to the timeline.
    pub fn flush(&mut self) {
        if self.second.responses + self.second.errors > 0 {
            self.timeline.add(self.current, &self.second);
            self.second.responses = 0;
            self.second.errors = 0;
            self.second.latency.reset();
        }
    }

    /// Records a response with `status`, `latency_us` after it was due, completed during
    /// second `second` of the run.
    pub fn response(
        &mut self,
        op: crate::mix::Op,
        status: u16,
        cache: CacheStatus,
        latency_us: u64,
        second: u64,
    ) {
        self.roll(second);
        self.latency.saturating_record(latency_us.max(1));
        self.second.latency.saturating_record(latency_us.max(1));
        self.second.responses += 1;
        self.ops[op as usize] += 1;
        self.cache[cache as usize] += 1;
        if (200..300).contains(&status) {
            self.ok += 1;
        } else {
            self.second.errors += 1;
            *self.statuses.entry(status).or_insert(0) += 1;
        }
    }

    /// Records a request that got no response.
    pub fn failure(&mut self, failure: Failure, second: u64) {
        self.roll(second);
        self.second.errors += 1;
        *self.failures.entry(failure).or_insert(0) += 1;
    }

    /// Responses recorded so far.
    pub fn responses(&self) -> u64 {
        self.latency.len()
    }

    /// Adds `other`'s totals into this one (the timelines are already shared).
    pub fn merge(&mut self, other: &Recorder) {
        let _ = self.latency.add(&other.latency);
        self.ok += other.ok;
        for (s, n) in &other.statuses {
            *self.statuses.entry(*s).or_insert(0) += n;
        }
        for (f, n) in &other.failures {
            *self.failures.entry(*f).or_insert(0) += n;
        }
        for i in 0..self.cache.len() {
            self.cache[i] += other.cache[i];
        }
        for i in 0..self.ops.len() {
            self.ops[i] += other.ops[i];
        }
    }

    /// Summarises the totals of a run that lasted `seconds`.
    pub fn summary(&self, seconds: f64) -> Summary {
        let responses = self.latency.len();
        let failures: u64 = self.failures.values().sum();
        let non_2xx: u64 = self.statuses.values().sum();
        let mut errors: BTreeMap<String, u64> = self
            .statuses
            .iter()
            .map(|(s, n)| (s.to_string(), *n))
            .collect();
        errors.extend(self.failures.iter().map(|(f, n)| (f.name().to_owned(), *n)));
        let [hit, miss, stale, bypass, other, absent] = self.cache;
        let with_header = hit + miss + stale + bypass + other;
        Summary {
            seconds,
            responses,
            ok: self.ok,
            errors_total: non_2xx + failures,
            errors,
            throughput: if seconds > 0.0 {
                responses as f64 / seconds
            } else {
                0.0
            },
            latency_ms: Latency::from_histogram(&self.latency),
            ops: Ops {
                get: self.ops[0],
                list: self.ops[1],
                put: self.ops[2],
            },
            cache: CacheCounts {
                hit,
                miss,
                stale,
                bypass,
                other,
                absent,
            },
            hit_ratio: (with_header > 0).then(|| hit as f64 / with_header as f64),
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Latency {
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Latency {
    /// Percentiles of a histogram of microseconds (all zero when it is empty).
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            mean: h.mean() / 1000.0,
            p50: us_to_ms(h.value_at_quantile(0.50)),
            p90: us_to_ms(h.value_at_quantile(0.90)),
            p99: us_to_ms(h.value_at_quantile(0.99)),
            p999: us_to_ms(h.value_at_quantile(0.999)),
            max: us_to_ms(h.max()),
        }
    }
}

/// Responses per operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Ops {
    /// `GET /products/{id}`
    pub get: u64,
    /// `GET /products?page=`
    pub list: u64,
    /// `PUT /products/{id}`
    pub put: u64,
}

/// Responses by `x-cache` header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CacheCounts {
    /// `hit`
    pub hit: u64,
    /// `miss`
    pub miss: u64,
    /// `stale`
    pub stale: u64,
    /// `bypass`
    pub bypass: u64,
    /// any other value
    pub other: u64,
    /// no header (writes, or a service that does not send it)
    pub absent: u64,
}

/// Totals of the measured part of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Length of the measured part, in seconds.
    pub seconds: f64,
    /// Responses received (any status).
    pub responses: u64,
    /// 2xx responses.
    pub ok: u64,
    /// Non-2xx responses plus requests that got no response.
    pub errors_total: u64,
    /// Errors by HTTP status (`"404"`) or failure (`"connect"`, `"io"`, `"timeout"`).
    pub errors: BTreeMap<String, u64>,
    /// Responses per second.
    pub throughput: f64,
    /// Latency from when each request was due to its last response byte.
    pub latency_ms: Latency,
    /// Responses per operation.
    pub ops: Ops,
    /// Responses by `x-cache` value.
    pub cache: CacheCounts,
    /// `hit / (hit + miss + stale + bypass + other)` over responses with an `x-cache` header.
    pub hit_ratio: Option<f64>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::mix::Op;

    #[test]
    fn classifies_cache_headers() {
        assert_eq!(CacheStatus::from_header(Some(b"hit")), CacheStatus::Hit);
        assert_eq!(CacheStatus::from_header(Some(b" MISS ")), CacheStatus::Miss);
        assert_eq!(CacheStatus::from_header(Some(b"stale")), CacheStatus::Stale);
        assert_eq!(
            CacheStatus::from_header(Some(b"bypass")),
            CacheStatus::Bypass
        );
        assert_eq!(
            CacheStatus::from_header(Some(b"HIT-L1")),
            CacheStatus::Other
        );
        assert_eq!(CacheStatus::from_header(None), CacheStatus::Absent);
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut r = Recorder::new(Timeline::default());
        for us in 1..=10_000u64 {
            r.response(Op::Get, 200, CacheStatus::Hit, us, 0);
        }
        let s = r.summary(2.0);
        let l = s.latency_ms;
        let near = |got: f64, want: f64| (got - want).abs() / want < 0.01;
        assert!(near(l.p50, 5.0), "{l:?}");
        assert!(near(l.p90, 9.0), "{l:?}");
        assert!(near(l.p99, 9.9), "{l:?}");
        assert!(near(l.p999, 9.99), "{l:?}");
        assert!(near(l.max, 10.0), "{l:?}");
        assert!(near(l.mean, 5.0), "{l:?}");
        assert_eq!(s.responses, 10_000);
        assert_eq!(s.throughput, 5_000.0);
    }

    #[test]
    fn errors_hits_and_merging() {
        let timeline = Timeline::default();
        let mut a = Recorder::new(timeline.clone());
        let mut b = Recorder::new(timeline.clone());
        a.response(Op::Get, 200, CacheStatus::Hit, 100, 0);
        a.response(Op::Get, 200, CacheStatus::Miss, 900, 0);
        a.response(Op::Get, 404, CacheStatus::Hit, 100, 1);
        b.response(Op::Put, 200, CacheStatus::Absent, 500, 0);
        b.response(Op::List, 500, CacheStatus::Absent, 500, 1);
        b.failure(Failure::Timeout, 2);
        a.flush();
        b.flush();
        a.merge(&b);
        let s = a.summary(1.0);
        assert_eq!(s.responses, 5);
        assert_eq!(s.ok, 3);
        assert_eq!(s.errors_total, 3);
        assert_eq!(s.errors.get("404"), Some(&1));
        assert_eq!(s.errors.get("500"), Some(&1));
        assert_eq!(s.errors.get("timeout"), Some(&1));
        assert_eq!(
            s.ops,
            Ops {
                get: 3,
                list: 1,
                put: 1
            }
        );
        assert_eq!(s.cache.hit, 2);
        assert_eq!(s.cache.absent, 2);
        assert!((s.hit_ratio.unwrap() - 2.0 / 3.0).abs() < 1e-9);

        let points = timeline.points();
        assert_eq!(points.len(), 3);
        assert_eq!((points[0].responses, points[0].errors), (3, 0));
        assert_eq!((points[1].responses, points[1].errors), (2, 2));
        assert_eq!(
            (points[2].responses, points[2].errors, points[2].p99_ms),
            (0, 1, None)
        );
        assert!((points[0].p99_ms.unwrap() - 0.9).abs() < 0.01);
    }

    #[test]
    fn no_header_means_no_hit_ratio() {
        let mut r = Recorder::new(Timeline::default());
        r.response(Op::Get, 200, CacheStatus::Absent, 10, 0);
        assert_eq!(r.summary(1.0).hit_ratio, None);
        assert_eq!(
            Recorder::new(Timeline::default()).summary(1.0).latency_ms,
            Latency::default()
        );
    }
}
