//! The consistency checker behind `loadgen check`: writes increasing prices through one
//! instance of a service, reads them back through others, and reports every read that
//! returned a value older than one whose write had already been acknowledged.
//!
//! # What is checked
//!
//! The promise of a cache-aside service is: once a write is acknowledged (a 2xx), no read
//! that *begins* later, on any instance, returns the value it replaced; with a bounded
//! staleness (an in-process L1 kept coherent by messages), no read that begins more than
//! the bound later. The checker tests that from outside, over HTTP:
//!
//! - **Writers**: each id belongs to exactly one writer task, which sends
//!   `PUT /products/{id}` with `{"price": p}` one request at a time. Per id the written
//!   values are `1, 2, 3, ...`, spelled as prices by [`Prices`] (all above every price found
//!   before the run, with a fractional part of one half, so a written price never equals an
//!   earlier one). Before sending, the writer records the value as sent; after a 2xx, as
//!   acknowledged at that [`Instant`]; after anything else (another status, a broken
//!   connection, a timeout), as failed: it may or may not have been applied.
//! - **Readers**: tasks sending `GET /products/{id}` round-robin over the reader URLs, each
//!   noting the [`Instant`] before sending and after the response, the `price` of a 200
//!   and its `x-cache` header.
//! - **Judging**, once every task is done and so every [`History`] complete: a read is
//!   **stale** (a violation) when its value is lower than the highest value acknowledged
//!   before `began - bound`; a **phantom** when its value was never sent before the read
//!   ended, or is a price the checker does not write at all. Prices found before the run
//!   are value 0.
//!
//! Two kinds of older values are allowed and counted apart: one acknowledged only after
//! the read began (less the bound), which overlapped the read ([`Verdict::Concurrent`]),
//! and the value of a failed write ([`Verdict::Unsettled`]): a write the client gave up on
//! may still be applied by the server after later writes, so the service may rightly
//! return it.
//!
//! After the run, what the service holds for each id (read straight from its database,
//! say) can be judged against the id's writes ([`CheckReport::judge_stored`]): a value
//! older than the last acknowledged one that no failed write explains is a **lost write**
//! ([`Stored::Lost`]).
//!
//! The pure part ([`Prices`], [`History`], [`Verdict`], [`Stored`]) does no I/O; [`run_check`] does
//! the HTTP, the optional pausing of a process (`SIGSTOP` / `SIGCONT`, so it stalls in
//! the middle of requests as under a long GC pause or a scheduling hiccup) and the report.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hyper::{Method, Uri};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};

use crate::http::{Conn, Target};
use crate::keys::{IdFormat, KeyChooser, Popularity};
use crate::stats::CacheStatus;

/// How many violations and phantoms a report lists one by one (all are counted).
pub const LISTED: usize = 10;

/// The lowest base of [`Prices`]: above the catalog's seed prices (`i % 1000 + 0.99`).
pub const MIN_BASE: f64 = 1000.0;

/// How the checker's values are spelled as prices: value `n >= 1` is `base + n + 0.5`, and
/// every price at or below `base` (whatever was there before the run) is value 0.
///
/// The half keeps written prices apart from round ones and from the seed's `.99`; doubles
/// hold these sums exactly, so a price read back decodes to exactly the value written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prices {
    base: f64,
}

impl Prices {
    /// Prices above every price seen before the run: the base is `max_seen` rounded up to
    /// a whole number, and at least [`MIN_BASE`].
    pub fn above(max_seen: f64) -> Self {
        let base = if max_seen.is_finite() {
            max_seen.ceil().max(MIN_BASE)
        } else {
            MIN_BASE
        };
        Self { base }
    }

    /// The base: prices at or below it are value 0.
    pub fn base(&self) -> f64 {
        self.base
    }

    /// The price that spells `value` (`value >= 1`; value 0 has no price of its own, and
    /// is given the base).
    pub fn price(&self, value: u64) -> f64 {
        if value == 0 {
            self.base
        } else {
            self.base + value as f64 + 0.5
        }
    }

    /// The value a price spells: `Some(0)` at or below the base, `Some(n)` for the price of
    /// `n`, `None` for a price the checker never writes.
    pub fn decode(&self, price: f64) -> Option<u64> {
        if price <= self.base {
            return Some(0);
        }
        let n = price - self.base - 0.5;
        // Below 2^53 every whole number is a double, so the cast is exact.
        (n >= 1.0 && n.fract() == 0.0 && n < 9_007_199_254_740_992.0).then_some(n as u64)
    }
}

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

/// One read as a reader task recorded it, judged once every [`History`] is complete.
#[derive(Debug, Clone, Copy)]
struct ReadRecord {
    /// Key number (`1..=ids`).
    key: u64,
    /// Which reader URL.
    reader: usize,
    began: Instant,
    ended: Instant,
    price: f64,
    cache: CacheStatus,
}

/// Periodically stops a process with `SIGSTOP` and resumes it with `SIGCONT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Pause {
    /// The process.
    pub pid: u32,
    /// Time between two pauses (from one resume to the next stop).
    #[serde(rename = "every_ms", serialize_with = "millis")]
    pub every: Duration,
    /// How long each pause lasts.
    #[serde(rename = "length_ms", serialize_with = "millis")]
    pub length: Duration,
}

/// Everything that shapes a check.
#[derive(Debug, Clone)]
pub struct CheckSpec {
    /// Where the writes go.
    pub writer: Target,
    /// Where the reads go, round-robin (it may include the writer).
    pub readers: Vec<Target>,
    /// Ids are numbered `1..=ids`.
    pub ids: u64,
    /// How a number becomes an id.
    pub id_format: IdFormat,
    /// Which ids the readers (and, within their own ids, the writers) pick.
    pub popularity: Popularity,
    /// How long writers and readers run.
    pub duration: Duration,
    /// Stop once this many reads were checked (the duration is then a cap).
    pub reads: Option<u64>,
    /// Staleness allowed: a value acknowledged less than this before a read began may
    /// still be replaced by an older one.
    pub bound: Duration,
    /// Writer tasks (each owns the ids `n` with `(n - 1) % writers == w`).
    pub writers: usize,
    /// Reader tasks.
    pub reader_tasks: usize,
    /// Per-request timeout.
    pub timeout: Duration,
    /// A process to pause now and then during the run.
    pub pause: Option<Pause>,
    /// The check fails when fewer reads than this were checked.
    pub min_reads: u64,
    /// Random seed (task `t` uses `seed + t`).
    pub seed: u64,
}

impl CheckSpec {
    /// Checks the values the command line cannot.
    pub fn validate(&self) -> Result<()> {
        if self.readers.is_empty() {
            bail!("give at least one --reader");
        }
        if self.writers == 0 || self.writers > 1000 {
            bail!("--writers must be in 1..=1000");
        }
        if self.writers as u64 > self.ids {
            bail!("--writers must not exceed --ids (each writer owns some ids)");
        }
        if self.reader_tasks == 0 || self.reader_tasks > 10_000 {
            bail!("--readers must be in 1..=10000");
        }
        if self.duration.is_zero() {
            bail!("--duration must be above 0");
        }
        if self.timeout.is_zero() {
            bail!("--timeout must be above 0");
        }
        if self.reads == Some(0) {
            bail!("--reads must be at least 1");
        }
        if let Some(p) = &self.pause {
            if p.pid == 0 || i32::try_from(p.pid).is_err() {
                bail!("--pause-pid {} is not a process id", p.pid);
            }
            if p.every.is_zero() || p.length.is_zero() {
                bail!("--pause-every and --pause-for must be above 0");
            }
        }
        KeyChooser::new(self.ids, self.popularity)?;
        Ok(())
    }
}

/// A stale read, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    /// The product id.
    pub id: String,
    /// The reader URL it was read from.
    pub reader: String,
    /// Seconds from the start of the run to the read's beginning.
    pub began_s: f64,
    /// How long the read took, in milliseconds.
    pub read_ms: f64,
    /// The price read.
    pub price: f64,
    /// The value it spells (0: the price from before the run).
    pub value: u64,
    /// The highest value acknowledged before the read began (less the bound).
    pub acknowledged: u64,
    /// Its price.
    pub acknowledged_price: f64,
    /// How long before the read began that value had been acknowledged, in milliseconds.
    pub acknowledged_ms_before: f64,
    /// How long before the read began the value read was first replaced by an
    /// acknowledged write, in milliseconds.
    pub replaced_ms_before: f64,
    /// The read's `x-cache` header.
    pub cache: String,
}

/// A phantom read, as reported.
#[derive(Debug, Clone, Serialize)]
pub struct Phantom {
    /// The product id.
    pub id: String,
    /// The reader URL it was read from.
    pub reader: String,
    /// Seconds from the start of the run to the read's beginning.
    pub began_s: f64,
    /// The price read.
    pub price: f64,
    /// The value it spells, if it is a price the checker writes.
    pub value: Option<u64>,
    /// The highest value sent before the read ended.
    pub highest_sent: u64,
    /// The read's `x-cache` header.
    pub cache: String,
}

/// What a check found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The writer's URL.
    pub writer: String,
    /// The readers' URLs.
    pub readers: Vec<String>,
    /// Ids written and read.
    pub ids: u64,
    /// Writer tasks.
    pub writers: usize,
    /// Reader tasks.
    pub reader_tasks: usize,
    /// The staleness allowed, in milliseconds.
    pub bound_ms: f64,
    /// Prices at or below this are value 0 (what was there before the run).
    pub price_base: f64,
    /// Seconds from the first request of the run to the last response.
    pub seconds: f64,
    /// Reads checked: 200s with a price.
    pub reads: u64,
    /// Reads that gave no price, by HTTP status or failure (`connect`, `io`, `timeout`,
    /// `body`).
    pub read_errors: BTreeMap<String, u64>,
    /// The same, for each reader URL apart (in the order of `readers`).
    pub read_errors_by_reader: Vec<BTreeMap<String, u64>>,
    /// Checked reads by `x-cache` header (`none`: absent).
    pub reads_by_cache: BTreeMap<String, u64>,
    /// Writes that got a 2xx.
    pub writes_acknowledged: u64,
    /// Writes that did not (their value may or may not have been applied).
    pub writes_failed: u64,
    /// Why writes failed, by HTTP status or failure (`io`, `timeout`), and the writers'
    /// failed attempts to connect (`connect`: nothing was sent, so these are not in
    /// `writes_failed`).
    pub write_errors: BTreeMap<String, u64>,
    /// Reads of a value older than one acknowledged during the read or within the bound
    /// (allowed).
    pub concurrent: u64,
    /// Reads of an older value that a failed write had sent (allowed).
    pub unsettled: u64,
    /// Stale reads.
    pub violations: u64,
    /// The first [`LISTED`] stale reads, by the time they began.
    pub first_violations: Vec<Violation>,
    /// Reads of values never sent.
    pub phantoms: u64,
    /// The first [`LISTED`] phantoms, by the time they began.
    pub first_phantoms: Vec<Phantom>,
    /// The paused process, if any.
    pub pause: Option<Pause>,
    /// Pauses done.
    pub pauses: u64,
    /// Fewer checked reads than this fail the check.
    pub min_reads: u64,
    /// No violation, no phantom, and at least `min_reads` reads.
    pub passed: bool,
    /// Every id's writes, by key number - 1 (id `n` at `n - 1`), to judge what the service
    /// holds after the run with [`CheckReport::judge_stored`]. Not in the JSON report.
    #[serde(skip)]
    pub histories: Vec<History>,
}

impl CheckReport {
    /// Why the check failed (empty when it passed).
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.violations > 0 {
            out.push(format!("{} stale reads", self.violations));
        }
        if self.phantoms > 0 {
            out.push(format!("{} phantom reads", self.phantoms));
        }
        if self.reads < self.min_reads {
            out.push(format!(
                "{} reads checked, fewer than --min-reads {}",
                self.reads, self.min_reads
            ));
        }
        out
    }

    /// The prices this run wrote.
    pub fn prices(&self) -> Prices {
        Prices::above(self.price_base)
    }

    /// Judges `price`, what the service holds for key number `key` (`1..=ids`) once the
    /// run is over, against the writes of that id: `None` for a key outside the run.
    pub fn judge_stored(&self, key: u64, price: f64) -> Option<Stored> {
        let history = self
            .histories
            .get(usize::try_from(key.checked_sub(1)?).ok()?)?;
        Some(match self.prices().decode(price) {
            Some(value) => history.judge_stored(value),
            None => Stored::Phantom {
                highest_sent: history.highest_sent(Instant::now()),
            },
        })
    }

    /// The report as tables for a terminal.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let by_cache = self
            .reads_by_cache
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let errors = counts(&self.read_errors);
        let pause = match &self.pause {
            Some(p) => format!(
                "pid {} stopped every {} ms for {} ms: {} pauses",
                p.pid,
                p.every.as_millis(),
                p.length.as_millis(),
                self.pauses
            ),
            None => "none".to_owned(),
        };
        let _ = writeln!(s, "consistency check");
        let _ = writeln!(s, "  writer       {}", self.writer);
        let _ = writeln!(s, "  readers      {}", self.readers.join(", "));
        let _ = writeln!(
            s,
            "  load         {} writers, {} readers, {} ids, {:.2} s, bound {} ms",
            self.writers, self.reader_tasks, self.ids, self.seconds, self.bound_ms
        );
        let _ = writeln!(s, "  pauses       {pause}");
        let _ = writeln!(
            s,
            "  writes       {} acknowledged, {} failed",
            self.writes_acknowledged, self.writes_failed
        );
        let _ = writeln!(s, "  write errors {}", counts(&self.write_errors));
        let _ = writeln!(s, "  reads        {} checked ({by_cache})", self.reads);
        let _ = writeln!(s, "  read errors  {errors}");
        if !self.read_errors.is_empty() {
            for (url, by) in self.readers.iter().zip(&self.read_errors_by_reader) {
                let _ = writeln!(s, "    from {url}: {}", counts(by));
            }
        }
        let _ = writeln!(
            s,
            "  older values {} while a newer write was acknowledged (allowed), {} of failed writes (allowed)",
            self.concurrent, self.unsettled
        );
        let _ = writeln!(s, "  violations   {}", self.violations);
        let _ = writeln!(s, "  phantoms     {}", self.phantoms);
        if !self.first_violations.is_empty() {
            let _ = writeln!(
                s,
                "\n  stale reads (first {}):\n  {:>9} {:>8} {:>8} {:>10} {:>10} {:>12} {:>11} {:>8}  reader",
                self.first_violations.len(),
                "at s",
                "id",
                "read ms",
                "value",
                "acked",
                "acked ms ago",
                "replaced ms",
                "x-cache",
            );
            for v in &self.first_violations {
                let _ = writeln!(
                    s,
                    "  {:>9.3} {:>8} {:>8.2} {:>10} {:>10} {:>12.2} {:>11.2} {:>8}  {}",
                    v.began_s,
                    v.id,
                    v.read_ms,
                    v.value,
                    v.acknowledged,
                    v.acknowledged_ms_before,
                    v.replaced_ms_before,
                    v.cache,
                    v.reader
                );
            }
        }
        if !self.first_phantoms.is_empty() {
            let _ = writeln!(s, "\n  phantoms (first {}):", self.first_phantoms.len());
            for p in &self.first_phantoms {
                let _ = writeln!(
                    s,
                    "  {:>9.3} {:>8} price {} (value {}) highest sent {} x-cache {} from {}",
                    p.began_s,
                    p.id,
                    p.price,
                    p.value.map_or("-".to_owned(), |v| v.to_string()),
                    p.highest_sent,
                    p.cache,
                    p.reader
                );
            }
        }
        let failures = self.failures();
        if failures.is_empty() {
            let _ = write!(s, "  result       passed");
        } else {
            let _ = write!(s, "  result       FAILED: {}", failures.join(", "));
        }
        s
    }
}

/// Counts by kind as `kind n, kind n` (`none` when there are none), as the report's
/// tables show errors.
pub fn counts(counts: &BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".to_owned();
    }
    counts
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What all tasks of a check share.
struct Shared {
    spec: CheckSpec,
    keys: KeyChooser,
    products: Vec<Uri>,
    prices: Prices,
    deadline: Instant,
    /// Set when the reads asked for are in, or the readers are all done.
    stop: AtomicBool,
    checked: AtomicU64,
}

impl Shared {
    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed) && Instant::now() < self.deadline
    }
}

/// What one writer task leaves: the histories of its ids (local index `(n - 1) / writers`).
struct WriterDone {
    w: usize,
    histories: Vec<History>,
    acknowledged: u64,
    failed: u64,
    errors: BTreeMap<String, u64>,
}

/// What one reader task leaves.
struct ReaderDone {
    reads: Vec<ReadRecord>,
    /// By reader URL (its index), then kind.
    errors: BTreeMap<(usize, String), u64>,
}

enum Done {
    Writer(WriterDone),
    Reader(ReaderDone),
}

#[derive(Deserialize)]
struct Priced {
    price: f64,
}

/// Runs a check: probes every id (for the price base), runs the writers and readers for
/// the spec's duration (pausing its process, if any), then judges every read.
pub async fn run_check(spec: &CheckSpec) -> Result<CheckReport> {
    spec.validate()?;
    let keys = KeyChooser::new(spec.ids, spec.popularity)?;
    let products = (1..=spec.ids)
        .map(|n| Ok(format!("/products/{}", spec.id_format.id(n)).parse::<Uri>()?))
        .collect::<Result<Vec<_>>>()?;
    let mut max_seen = f64::NEG_INFINITY;
    for target in std::iter::once(&spec.writer).chain(&spec.readers) {
        max_seen = max_seen.max(probe(target, &products, spec.timeout).await?);
    }
    let prices = Prices::above(max_seen);
    let mut pauser = spec.pause.map(Pauser::new).transpose()?;

    let start = Instant::now();
    let shared = Arc::new(Shared {
        spec: spec.clone(),
        keys,
        products,
        prices,
        deadline: start + spec.duration,
        stop: AtomicBool::new(false),
        checked: AtomicU64::new(0),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..spec.writers {
        let shared = shared.clone();
        tasks.spawn(async move { Done::Writer(writer_task(w, shared).await) });
    }
    for r in 0..spec.reader_tasks {
        let shared = shared.clone();
        tasks.spawn(async move { Done::Reader(reader_task(r, shared).await) });
    }

    let mut writers = Vec::new();
    let mut readers = Vec::new();
    // The pauser is polled here rather than spawned, so that however this future ends
    // (done, an error, or dropped on Ctrl-C) its drop resumes the process.
    loop {
        let step = async {
            match pauser.as_mut() {
                Some(p) => p.step().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            done = tasks.join_next() => match done {
                None => break,
                Some(done) => match done.context("a check task panicked")? {
                    Done::Writer(w) => writers.push(w),
                    Done::Reader(r) => {
                        readers.push(r);
                        if readers.len() == spec.reader_tasks {
                            shared.stop.store(true, Ordering::Relaxed);
                        }
                    }
                },
            },
            stepped = step => stepped?,
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let pauses = pauser.as_ref().map_or(0, |p| p.pauses);
    drop(pauser);

    // Every id's history, by key number - 1.
    let mut histories = vec![History::new(); spec.ids as usize];
    let (mut acknowledged, mut failed) = (0, 0);
    let mut write_errors = BTreeMap::new();
    for done in writers {
        acknowledged += done.acknowledged;
        failed += done.failed;
        for (k, n) in done.errors {
            *write_errors.entry(k).or_default() += n;
        }
        for (i, h) in done.histories.into_iter().enumerate() {
            let key = i * spec.writers + done.w;
            if let Some(slot) = histories.get_mut(key) {
                *slot = h;
            }
        }
    }
    let mut report = CheckReport {
        writer: spec.writer.url.clone(),
        readers: spec.readers.iter().map(|t| t.url.clone()).collect(),
        ids: spec.ids,
        writers: spec.writers,
        reader_tasks: spec.reader_tasks,
        bound_ms: ms(spec.bound),
        price_base: prices.base(),
        seconds,
        reads: 0,
        read_errors: BTreeMap::new(),
        read_errors_by_reader: vec![BTreeMap::new(); spec.readers.len()],
        reads_by_cache: BTreeMap::new(),
        writes_acknowledged: acknowledged,
        writes_failed: failed,
        write_errors,
        concurrent: 0,
        unsettled: 0,
        violations: 0,
        first_violations: Vec::new(),
        phantoms: 0,
        first_phantoms: Vec::new(),
        pause: spec.pause,
        pauses,
        min_reads: spec.min_reads,
        passed: false,
        histories: Vec::new(),
    };
    let mut reads: Vec<ReadRecord> = Vec::new();
    for done in readers {
        for ((reader, k), n) in done.errors {
            *report.read_errors.entry(k.clone()).or_default() += n;
            if let Some(by) = report.read_errors_by_reader.get_mut(reader) {
                *by.entry(k).or_default() += n;
            }
        }
        reads.extend(done.reads);
    }
    reads.sort_by_key(|r| r.began);
    for read in &reads {
        judge_one(&mut report, spec, &histories, prices, start, read);
    }
    report.passed = report.failures().is_empty();
    report.histories = histories;
    Ok(report)
}

fn judge_one(
    report: &mut CheckReport,
    spec: &CheckSpec,
    histories: &[History],
    prices: Prices,
    start: Instant,
    read: &ReadRecord,
) {
    report.reads += 1;
    *report
        .reads_by_cache
        .entry(read.cache.name().to_owned())
        .or_default() += 1;
    let Some(history) = histories.get((read.key - 1) as usize) else {
        return;
    };
    let id = || spec.id_format.id(read.key);
    let reader = || {
        spec.readers
            .get(read.reader)
            .map_or_else(String::new, |t| t.url.clone())
    };
    let began_s = read.began.saturating_duration_since(start).as_secs_f64();
    let verdict = match prices.decode(read.price) {
        Some(value) => history.judge(read.began, read.ended, value, spec.bound),
        None => Verdict::Phantom {
            highest_sent: history.highest_sent(read.ended),
        },
    };
    match verdict {
        Verdict::Fresh => {}
        Verdict::Concurrent => report.concurrent += 1,
        Verdict::Unsettled => report.unsettled += 1,
        Verdict::Stale {
            acknowledged,
            acknowledged_ago,
            replaced_ago,
        } => {
            report.violations += 1;
            if report.first_violations.len() < LISTED {
                report.first_violations.push(Violation {
                    id: id(),
                    reader: reader(),
                    began_s,
                    read_ms: ms(read.ended.saturating_duration_since(read.began)),
                    price: read.price,
                    value: prices.decode(read.price).unwrap_or(0),
                    acknowledged,
                    acknowledged_price: prices.price(acknowledged),
                    acknowledged_ms_before: ms(acknowledged_ago),
                    replaced_ms_before: ms(replaced_ago),
                    cache: read.cache.name().to_owned(),
                });
            }
        }
        Verdict::Phantom { highest_sent } => {
            report.phantoms += 1;
            if report.first_phantoms.len() < LISTED {
                report.first_phantoms.push(Phantom {
                    id: id(),
                    reader: reader(),
                    began_s,
                    price: read.price,
                    value: prices.decode(read.price),
                    highest_sent,
                    cache: read.cache.name().to_owned(),
                });
            }
        }
    }
}

/// Reads every product once from `target` (over a few connections) and returns the
/// highest price found. Fails when an id does not exist there: it could not be written.
async fn probe(target: &Target, products: &[Uri], timeout: Duration) -> Result<f64> {
    let products = Arc::new(products.to_vec());
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..products.len().min(8) {
        let (products, next, target) = (products.clone(), next.clone(), target.clone());
        tasks.spawn(async move {
            let mut conn = tokio::time::timeout(timeout, target.connect())
                .await
                .with_context(|| format!("connecting to {} timed out", target.url))??;
            let mut max = f64::NEG_INFINITY;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(uri) = products.get(i) else {
                    return anyhow::Ok(max);
                };
                if !conn.is_open() {
                    conn = target.connect().await?;
                }
                let (outcome, body) = tokio::time::timeout(
                    timeout,
                    conn.send_collect(Method::GET, uri.clone(), None),
                )
                .await
                .with_context(|| format!("GET {}{uri} timed out", target.url))?
                .with_context(|| format!("GET {}{uri}", target.url))?;
                if outcome.status != 200 {
                    bail!(
                        "GET {}{uri} gave {}: every id must exist before a check",
                        target.url,
                        outcome.status
                    );
                }
                let priced: Priced = serde_json::from_slice(&body)
                    .with_context(|| format!("GET {}{uri}: no price in the body", target.url))?;
                max = max.max(priced.price);
            }
        });
    }
    let mut max = f64::NEG_INFINITY;
    while let Some(done) = tasks.join_next().await {
        max = max.max(done.context("a probe task panicked")??);
    }
    Ok(max)
}

/// Connects within the timeout; `None` (after a short pause, so a dead target is not
/// hammered) when that fails.
async fn connect(target: &Target, shared: &Shared) -> Option<Conn> {
    match tokio::time::timeout(shared.spec.timeout, target.connect()).await {
        Ok(Ok(c)) => Some(c),
        _ => {
            let pause = Instant::now() + Duration::from_millis(50);
            tokio::time::sleep_until(pause.min(shared.deadline).into()).await;
            None
        }
    }
}

/// Picks one of writer `w`'s own keys (`(n - 1) % writers == w`) with the spec's
/// popularity, falling back to a uniform pick among them when the draws keep missing.
fn own_key(shared: &Shared, w: usize, rng: &mut SmallRng) -> u64 {
    let writers = shared.spec.writers as u64;
    for _ in 0..64 {
        let n = shared.keys.sample(rng);
        if (n - 1) % writers == w as u64 {
            return n;
        }
    }
    let owned = (shared.spec.ids - 1 - w as u64) / writers + 1;
    let i = rand::Rng::random_range(rng, 0..owned);
    i * writers + w as u64 + 1
}

async fn writer_task(w: usize, shared: Arc<Shared>) -> WriterDone {
    let spec = &shared.spec;
    let owned = ((spec.ids - 1 - w as u64) / spec.writers as u64 + 1) as usize;
    let mut done = WriterDone {
        w,
        histories: vec![History::new(); owned],
        acknowledged: 0,
        failed: 0,
        errors: BTreeMap::new(),
    };
    let mut next = vec![0u64; owned];
    let mut rng = SmallRng::seed_from_u64(spec.seed.wrapping_add(1_000_000 + w as u64));
    let mut conn: Option<Conn> = None;
    while shared.running() {
        if conn.as_ref().is_some_and(|c| !c.is_open()) {
            conn = None;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match connect(&spec.writer, &shared).await {
                Some(c) => conn.insert(c),
                None => {
                    *done.errors.entry("connect".to_owned()).or_default() += 1;
                    continue;
                }
            },
        };
        let n = own_key(&shared, w, &mut rng);
        let local = ((n - 1) / spec.writers as u64) as usize;
        let (Some(history), Some(counter)) = (done.histories.get_mut(local), next.get_mut(local))
        else {
            continue;
        };
        *counter += 1;
        let value = *counter;
        let body = Bytes::from(format!(r#"{{"price":{}}}"#, shared.prices.price(value)));
        let uri = shared.products[(n - 1) as usize].clone();
        history.sent(Instant::now(), value);
        let result = tokio::time::timeout(spec.timeout, c.send(Method::PUT, uri, Some(body))).await;
        let at = Instant::now();
        match result {
            Ok(Ok(o)) if (200..300).contains(&o.status) => {
                history.acknowledge(at, value);
                done.acknowledged += 1;
            }
            Ok(Ok(o)) => {
                history.failed(value);
                done.failed += 1;
                *done.errors.entry(o.status.to_string()).or_default() += 1;
            }
            Ok(Err(_)) => {
                history.failed(value);
                done.failed += 1;
                *done.errors.entry("io".to_owned()).or_default() += 1;
                conn = None;
            }
            Err(_) => {
                history.failed(value);
                done.failed += 1;
                *done.errors.entry("timeout".to_owned()).or_default() += 1;
                conn = None;
            }
        }
    }
    done
}

async fn reader_task(r: usize, shared: Arc<Shared>) -> ReaderDone {
    let spec = &shared.spec;
    let mut done = ReaderDone {
        reads: Vec::new(),
        errors: BTreeMap::new(),
    };
    let mut rng = SmallRng::seed_from_u64(spec.seed.wrapping_add(r as u64));
    let mut conns: Vec<Option<Conn>> = spec.readers.iter().map(|_| None).collect();
    let mut turn = r;
    let error = |done: &mut ReaderDone, reader: usize, what: String| {
        *done.errors.entry((reader, what)).or_default() += 1;
    };
    while shared.running() {
        let reader = turn % spec.readers.len();
        turn += 1;
        let target = &spec.readers[reader];
        let slot = &mut conns[reader];
        if slot.as_ref().is_some_and(|c| !c.is_open()) {
            *slot = None;
        }
        let c = match slot.as_mut() {
            Some(c) => c,
            None => match connect(target, &shared).await {
                Some(c) => slot.insert(c),
                None => {
                    error(&mut done, reader, "connect".to_owned());
                    continue;
                }
            },
        };
        let key = shared.keys.sample(&mut rng);
        let uri = shared.products[(key - 1) as usize].clone();
        let began = Instant::now();
        let result =
            tokio::time::timeout(spec.timeout, c.send_collect(Method::GET, uri, None)).await;
        let ended = Instant::now();
        match result {
            Ok(Ok((o, body))) if o.status == 200 => match serde_json::from_slice::<Priced>(&body) {
                Ok(p) => {
                    done.reads.push(ReadRecord {
                        key,
                        reader,
                        began,
                        ended,
                        price: p.price,
                        cache: o.cache,
                    });
                    let checked = shared.checked.fetch_add(1, Ordering::Relaxed) + 1;
                    if spec.reads.is_some_and(|max| checked >= max) {
                        shared.stop.store(true, Ordering::Relaxed);
                    }
                }
                Err(_) => error(&mut done, reader, "body".to_owned()),
            },
            Ok(Ok((o, _))) => error(&mut done, reader, o.status.to_string()),
            Ok(Err(_)) => {
                error(&mut done, reader, "io".to_owned());
                *slot = None;
            }
            Err(_) => {
                error(&mut done, reader, "timeout".to_owned());
                *slot = None;
            }
        }
    }
    done
}

/// Stops and resumes a process on a schedule; resumes it when dropped.
struct Pauser {
    pid: rustix::process::Pid,
    pause: Pause,
    stopped: bool,
    next: Instant,
    pauses: u64,
}

impl Pauser {
    fn new(pause: Pause) -> Result<Self> {
        let pid = i32::try_from(pause.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .with_context(|| format!("--pause-pid {} is not a process id", pause.pid))?;
        rustix::process::test_kill_process(pid)
            .with_context(|| format!("--pause-pid {}: cannot signal it", pause.pid))?;
        Ok(Self {
            pid,
            pause,
            stopped: false,
            next: Instant::now() + pause.every,
            pauses: 0,
        })
    }

    /// Waits for the next change and makes it: a stop after `every`, a resume after
    /// `length`. Cancel-safe: the schedule lives in `self`.
    async fn step(&mut self) -> Result<()> {
        tokio::time::sleep_until(self.next.into()).await;
        if self.stopped {
            self.resume()?;
            self.next = Instant::now() + self.pause.every;
        } else {
            rustix::process::kill_process(self.pid, rustix::process::Signal::STOP)
                .with_context(|| format!("SIGSTOP to {}", self.pause.pid))?;
            self.stopped = true;
            self.pauses += 1;
            self.next = Instant::now() + self.pause.length;
        }
        Ok(())
    }

    fn resume(&mut self) -> Result<()> {
        rustix::process::kill_process(self.pid, rustix::process::Signal::CONT)
            .with_context(|| format!("SIGCONT to {}", self.pause.pid))?;
        self.stopped = false;
        Ok(())
    }
}

impl Drop for Pauser {
    fn drop(&mut self) {
        // Always resume, even when not known to be stopped: a stop sent just before a
        // cancellation must not leave the process stopped, and SIGCONT to a running
        // process does nothing.
        let _ = rustix::process::kill_process(self.pid, rustix::process::Signal::CONT);
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

    #[test]
    fn prices_round_trip_and_stay_above_the_seed() {
        let p = Prices::above(999.99);
        assert_eq!(p.base(), 1000.0);
        assert_eq!(p.price(1), 1001.5);
        for v in [1, 2, 17, 123_456_789] {
            assert_eq!(p.decode(p.price(v)), Some(v));
            // Through JSON as the service sends it back.
            let text = serde_json::to_string(&serde_json::json!({ "price": p.price(v) })).unwrap();
            let back: Priced = serde_json::from_str(&text).unwrap();
            assert_eq!(p.decode(back.price), Some(v));
        }
        for seed in [0.0, 0.99, 42.99, 999.99, 1000.0] {
            assert_eq!(p.decode(seed), Some(0));
        }
        for foreign in [1000.5, 1001.0, 1001.25, 1002.99, f64::NAN, f64::INFINITY] {
            assert_eq!(p.decode(foreign), None, "{foreign}");
        }
        assert_eq!(Prices::above(f64::NEG_INFINITY).base(), 1000.0);
        // After an earlier run: above what it left.
        let p = Prices::above(5123.5);
        assert_eq!(p.base(), 5124.0);
        assert_eq!(p.decode(5123.5), Some(0));
        assert_eq!(p.decode(p.price(1)), Some(1));
    }

    #[test]
    fn own_keys_partition_the_ids() {
        let spec_keys = |ids: u64, writers: usize, popularity| {
            let keys = KeyChooser::new(ids, popularity).unwrap();
            Shared {
                spec: CheckSpec {
                    writer: Target::parse("http://127.0.0.1:1").unwrap(),
                    readers: vec![Target::parse("http://127.0.0.1:1").unwrap()],
                    ids,
                    id_format: IdFormat::parse("p{}").unwrap(),
                    popularity,
                    duration: ms(1),
                    reads: None,
                    bound: NO_BOUND,
                    writers,
                    reader_tasks: 1,
                    timeout: ms(1),
                    pause: None,
                    min_reads: 0,
                    seed: 1,
                },
                keys,
                products: Vec::new(),
                prices: Prices::above(0.0),
                deadline: Instant::now(),
                stop: AtomicBool::new(false),
                checked: AtomicU64::new(0),
            }
        };
        for (ids, writers, pop) in [
            (10, 3, Popularity::Uniform),
            (7, 7, Popularity::Uniform),
            (1000, 4, Popularity::Zipf(1.2)),
            (5, 2, Popularity::Zipf(8.0)),
        ] {
            let shared = spec_keys(ids, writers, pop);
            let mut rng = SmallRng::seed_from_u64(3);
            let mut seen = std::collections::BTreeSet::new();
            for w in 0..writers {
                for _ in 0..2000 {
                    let n = own_key(&shared, w, &mut rng);
                    assert!((1..=ids).contains(&n), "{n}");
                    assert_eq!((n - 1) % writers as u64, w as u64);
                    seen.insert(n);
                }
            }
            if pop == Popularity::Uniform {
                assert_eq!(seen.len() as u64, ids, "every id has a writer");
            }
        }
    }
}
