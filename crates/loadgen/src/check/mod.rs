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
//!
//! # Layout
//! - `mod.rs`: [`CheckSpec`] and [`run_check`], which runs the tasks and gathers what
//!   they leave.
//! - `prices.rs`: [`Prices`], values spelled as prices and back.
//! - `history.rs`: [`History`], the writes of one id, the [`Verdict`] on a read and what
//!   the value stored after the run says ([`Stored`]).
//! - `tasks.rs`: the HTTP: the probe before the run, the writer and reader tasks.
//! - `pause.rs`: [`Pause`] and the stopping and resuming of a process.
//! - `report.rs`: [`CheckReport`], its table, and the tally of every read's verdict.

mod history;
mod pause;
mod prices;
mod report;
mod tasks;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hyper::Uri;

pub use history::{History, Stored, Verdict};
pub use pause::Pause;
use pause::Pauser;
pub use prices::{MIN_BASE, Prices};
pub use report::{CheckReport, LISTED, Phantom, Violation, counts};
use report::{judge_one, ms};
use tasks::{ReadRecord, ReaderDone, Shared, WriterDone, probe, reader_task, writer_task};

use crate::http::Target;
use crate::keys::{IdFormat, KeyChooser, Popularity};

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

enum Done {
    Writer(WriterDone),
    Reader(ReaderDone),
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
