//! What a check found: the report, its terminal table, and the tally of each read's
//! verdict into it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::CheckSpec;
use super::history::{History, Stored, Verdict};
use super::pause::Pause;
use super::prices::Prices;
use super::tasks::ReadRecord;

/// How many violations and phantoms a report lists one by one (all are counted).
pub const LISTED: usize = 10;

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

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(super) fn judge_one(
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
