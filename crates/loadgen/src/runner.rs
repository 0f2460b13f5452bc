//! Running the load against one target.
//!
//! A run has up to three phases on one timeline: *prefill* (every id read once, so the
//! cache is warm before anything is measured), *warm-up* (the real mix, not recorded) and
//! the *measured* part. `--connections` tasks each own one keep-alive connection; in
//! closed-loop mode each sends its next request as soon as the previous one completed, in
//! open-loop mode (`--rate`) each follows its [`Schedule`] and latency counts from the due
//! time. Every loop ends at the run's deadline, and in `--requests` mode also when the
//! shared ticket counter runs out.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hyper::{Method, Uri};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::Serialize;

use crate::cpu;
use crate::dbstats::{self, DbStats};
use crate::http::{Conn, Target};
use crate::keys::{IdFormat, KeyChooser, Popularity};
use crate::mix::{self, Mix, Op};
use crate::schedule::Schedule;
use crate::stats::{Failure, Point, Recorder, Summary, Timeline};

/// How long a run lasts when neither `--duration` nor `--requests` is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// The time cap of a `--requests` run without `--duration`.
pub const REQUESTS_TIME_CAP: Duration = Duration::from_secs(300);

/// Everything that shapes the load (the same for every target of a comparison).
#[derive(Debug, Clone, Serialize)]
pub struct LoadSpec {
    /// Proportions of get / list / put.
    #[serde(serialize_with = "display")]
    pub mix: Mix,
    /// Ids are numbered `1..=ids`.
    pub ids: u64,
    /// How a number becomes an id.
    #[serde(serialize_with = "display")]
    pub id_format: IdFormat,
    /// Key popularity.
    #[serde(serialize_with = "popularity")]
    pub popularity: Popularity,
    /// List reads pick a page in `1..=pages`.
    pub pages: u64,
    /// `limit` of list reads.
    pub limit: u32,
    /// Concurrent connections.
    pub connections: usize,
    /// Measured time (when `requests` is unset, or as a cap when it is set).
    #[serde(serialize_with = "opt_seconds")]
    pub duration: Option<Duration>,
    /// Measured requests.
    pub requests: Option<u64>,
    /// Unrecorded load before the measured part.
    #[serde(serialize_with = "seconds")]
    pub warmup: Duration,
    /// Open-loop total request rate; `None` is closed-loop.
    pub rate: Option<f64>,
    /// Per-request timeout.
    #[serde(serialize_with = "seconds")]
    pub timeout: Duration,
    /// Read every id once before the run.
    pub prefill: bool,
    /// RNG seed (connection `w` uses `seed + w`), so runs are repeatable.
    pub seed: u64,
    /// Where to count database queries.
    pub db_stats: DbStats,
    /// Show a progress bar on stderr.
    #[serde(skip)]
    pub progress: bool,
}

fn display<S: serde::Serializer, T: std::fmt::Display>(m: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(m)
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn opt_seconds<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

fn popularity<S: serde::Serializer>(p: &Popularity, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Popularity::Uniform => s.serialize_str("uniform"),
        Popularity::Zipf(e) => s.collect_str(&format_args!("zipf({e})")),
    }
}

impl LoadSpec {
    /// Checks the values that clap cannot.
    pub fn validate(&self) -> Result<()> {
        if self.connections == 0 || self.connections > 10_000 {
            bail!("--connections must be in 1..=10000");
        }
        if self.pages == 0 {
            bail!("--pages must be at least 1");
        }
        if !(1..=100).contains(&self.limit) {
            bail!("--limit must be in 1..=100");
        }
        if let Some(rate) = self.rate
            && (!rate.is_finite() || rate <= 0.0)
        {
            bail!("--rate must be above 0");
        }
        if self.requests == Some(0) {
            bail!("--requests must be at least 1");
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            bail!("--duration must be above 0");
        }
        if self.timeout.is_zero() {
            bail!("--timeout must be above 0");
        }
        KeyChooser::new(self.ids, self.popularity)?;
        Ok(())
    }

    fn measured_time_cap(&self) -> Duration {
        match (self.duration, self.requests) {
            (Some(d), _) => d,
            (None, Some(_)) => REQUESTS_TIME_CAP,
            (None, None) => DEFAULT_DURATION,
        }
    }
}

/// Database queries during the measured part.
#[derive(Debug, Clone, Serialize)]
pub struct DbReport {
    /// Where they were read (`metrics` or `seed`).
    pub source: DbStats,
    /// Queries made.
    pub queries: u64,
    /// Queries per response.
    pub per_request: f64,
}

/// Service CPU time during the measured part.
#[derive(Debug, Clone, Serialize)]
pub struct CpuReport {
    /// The processes measured.
    pub pids: Vec<u32>,
    /// User + system seconds.
    pub seconds: f64,
    /// Milliseconds of CPU per 100,000 responses.
    pub ms_per_100k: f64,
}

/// Everything measured against one target.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    /// Target name.
    pub name: String,
    /// Base URL.
    pub url: String,
    /// The id format used for this target.
    pub id_format: String,
    /// Prefill responses that were not 2xx (0 when prefill was off).
    pub prefill_errors: u64,
    /// Totals of the measured part.
    pub summary: Summary,
    /// Database queries, when the target exposes a counter.
    pub db: Option<DbReport>,
    /// Service CPU time, when pids were given.
    pub cpu: Option<CpuReport>,
    /// Per-second throughput and p99.
    pub series: Vec<Point>,
}

/// What all connection tasks of a run share (read-only but for the counters).
struct Shared {
    spec: LoadSpec,
    target: Target,
    keys: KeyChooser,
    products: Vec<Uri>,
    pages: Vec<Uri>,
    start: Instant,
    measure_start: Instant,
    deadline: Instant,
    /// Measured requests started, in `--requests` mode.
    tickets: AtomicU64,
    /// Requests completed (any phase, any outcome): drives the progress bar.
    completed: AtomicU64,
    errors: AtomicU64,
    timeline: Timeline,
}

fn product_uri(format: &IdFormat, n: u64) -> Result<Uri> {
    Ok(format!("/products/{}", format.id(n)).parse()?)
}

fn page_uri(page: u64, limit: u32) -> Result<Uri> {
    Ok(format!("/products?page={page}&limit={limit}").parse()?)
}

/// Runs the load against `target` and measures it. `pids` are the service's processes,
/// whose CPU time is reported (empty: not measured).
pub async fn run_target(target: &Target, spec: &LoadSpec, pids: &[u32]) -> Result<TargetReport> {
    spec.validate()?;
    let keys = KeyChooser::new(spec.ids, spec.popularity)?;
    let products = (1..=spec.ids)
        .map(|n| product_uri(&spec.id_format, n))
        .collect::<Result<Vec<_>>>()?;
    let pages = (1..=spec.pages)
        .map(|p| page_uri(p, spec.limit))
        .collect::<Result<Vec<_>>>()?;
    // Fail early and clearly when nothing listens.
    drop(
        target
            .connect()
            .await
            .with_context(|| format!("target {}", target.name))?,
    );

    let prefill_errors = if spec.prefill {
        prefill(target, spec, &products).await?
    } else {
        0
    };

    let ticks = cpu::ticks_per_second();
    let cap = spec.measured_time_cap();
    let now = Instant::now();
    let shared = Arc::new(Shared {
        spec: spec.clone(),
        target: target.clone(),
        keys,
        products,
        pages,
        start: now,
        measure_start: now + spec.warmup,
        deadline: now + spec.warmup + cap,
        tickets: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        timeline: Timeline::default(),
    });

    let bar = progress_bar(spec, &target.name);
    let mut db_before = None;
    let mut cpu_before = None;
    if spec.warmup.is_zero() {
        db_before = dbstats::scrape(target, spec.db_stats).await?;
        cpu_before = cpu_now(pids, ticks)?;
    }

    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..spec.connections {
        let shared = shared.clone();
        tasks.spawn(async move { connection_task(w, shared).await });
    }
    let ticker = tokio::spawn(tick(shared.clone(), bar.clone()));

    if !spec.warmup.is_zero() {
        tokio::time::sleep_until(shared.measure_start.into()).await;
        db_before = dbstats::scrape(target, spec.db_stats).await?;
        cpu_before = cpu_now(pids, ticks)?;
    }

    let mut total = Recorder::new(shared.timeline.clone());
    while let Some(done) = tasks.join_next().await {
        total.merge(&done.context("a connection task panicked")?);
    }
    let measured = shared.measure_start.elapsed().as_secs_f64();
    ticker.abort();
    bar.finish_and_clear();
    let cpu_after = cpu_now(pids, ticks)?;
    let summary = total.summary(measured);

    let db = match db_before {
        Some((source, before)) => match dbstats::scrape(target, source).await? {
            Some((_, after)) => {
                let queries = after.saturating_sub(before);
                Some(DbReport {
                    source,
                    queries,
                    per_request: ratio(queries, summary.responses),
                })
            }
            None => None,
        },
        None => None,
    };
    let cpu = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) => {
            let seconds = a.saturating_sub(b).as_secs_f64();
            Some(CpuReport {
                pids: pids.to_vec(),
                seconds,
                ms_per_100k: ratio_f(seconds * 1000.0 * 100_000.0, summary.responses),
            })
        }
        _ => None,
    };
    Ok(TargetReport {
        name: target.name.clone(),
        url: target.url.clone(),
        id_format: spec.id_format.to_string(),
        prefill_errors,
        series: shared.timeline.points(),
        summary,
        db,
        cpu,
    })
}

fn ratio(n: u64, d: u64) -> f64 {
    ratio_f(n as f64, d)
}

fn ratio_f(n: f64, d: u64) -> f64 {
    if d == 0 { 0.0 } else { n / d as f64 }
}

fn cpu_now(pids: &[u32], ticks: u64) -> Result<Option<Duration>> {
    if pids.is_empty() {
        return Ok(None);
    }
    Ok(Some(cpu::cpu_time(pids, ticks)?))
}

/// Reads every product once, over `connections` connections. Returns how many reads were
/// not 2xx. Bounded by the request timeout for each read and 10 minutes in all.
async fn prefill(target: &Target, spec: &LoadSpec, products: &[Uri]) -> Result<u64> {
    let products: Arc<Vec<Uri>> = Arc::new(products.to_vec());
    let next = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(600);
    let bar = progress_bar_len(
        spec,
        products.len() as u64,
        &format!("{} prefill", target.name),
    );
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..spec.connections.min(products.len()) {
        let (products, next, bad, target, bar) = (
            products.clone(),
            next.clone(),
            bad.clone(),
            target.clone(),
            bar.clone(),
        );
        let timeout = spec.timeout;
        tasks.spawn(async move {
            let mut conn = target.connect().await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= products.len() || Instant::now() >= deadline {
                    return anyhow::Ok(());
                }
                if !conn.is_open() {
                    conn = target.connect().await?;
                }
                let sent = conn.send(Method::GET, products[i].clone(), None);
                match tokio::time::timeout(timeout, sent).await {
                    Ok(Ok(o)) if (200..300).contains(&o.status) => {}
                    Ok(Ok(_)) => {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        bad.fetch_add(1, Ordering::Relaxed);
                        conn = target.connect().await?;
                    }
                }
                bar.inc(1);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a prefill task panicked")?
            .context("prefill")?;
    }
    bar.finish_and_clear();
    Ok(bad.load(Ordering::Relaxed))
}

fn progress_bar_len(spec: &LoadSpec, len: u64, prefix: &str) -> ProgressBar {
    if !spec.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(4));
    if let Ok(style) = ProgressStyle::with_template("{prefix:>16} [{bar:32}] {pos}/{len} {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(prefix.to_owned());
    bar
}

fn progress_bar(spec: &LoadSpec, name: &str) -> ProgressBar {
    // Duration mode: the bar is time; requests mode: the bar is requests.
    let len = match spec.requests {
        Some(n) => n,
        None => (spec.warmup + spec.measured_time_cap()).as_millis() as u64,
    };
    let bar = progress_bar_len(spec, len, name);
    if spec.progress {
        let template = if spec.requests.is_some() {
            "{prefix:>16} [{bar:32}] {pos}/{len} {msg}"
        } else {
            "{prefix:>16} [{bar:32}] {elapsed:>4} {msg}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
    }
    bar
}

/// Updates the progress bar four times a second with the live throughput.
async fn tick(shared: Arc<Shared>, bar: ProgressBar) {
    let mut every = tokio::time::interval(Duration::from_millis(250));
    let (mut last_n, mut last_t) = (0u64, Instant::now());
    loop {
        every.tick().await;
        let now = Instant::now();
        let n = shared.completed.load(Ordering::Relaxed);
        let rate = (n - last_n) as f64 / now.duration_since(last_t).as_secs_f64().max(1e-3);
        (last_n, last_t) = (n, now);
        let phase = if now < shared.measure_start {
            "warm-up "
        } else {
            ""
        };
        let errors = shared.errors.load(Ordering::Relaxed);
        bar.set_message(format!(
            "{phase}{rate:>9.0} req/s  {n} done  {errors} errors"
        ));
        match shared.spec.requests {
            Some(max) => bar.set_position(shared.tickets.load(Ordering::Relaxed).min(max)),
            None => bar.set_position(now.duration_since(shared.start).as_millis() as u64),
        }
    }
}

/// One connection's loop. Returns what it measured.
async fn connection_task(w: usize, shared: Arc<Shared>) -> Recorder {
    let spec = &shared.spec;
    let mut rec = Recorder::new(shared.timeline.clone());
    let mut rng = SmallRng::seed_from_u64(spec.seed.wrapping_add(w as u64));
    let schedule = spec.rate.map(|r| Schedule::new(r, spec.connections, w));
    let mut conn: Option<Conn> = None;
    let mut k = 0u64;
    let mut puts = 0u64;
    loop {
        let due = match schedule {
            Some(s) => {
                let due = shared.start + s.due(k);
                k += 1;
                if due >= shared.deadline {
                    break;
                }
                tokio::time::sleep_until(due.into()).await;
                due
            }
            None => {
                let now = Instant::now();
                if now >= shared.deadline {
                    break;
                }
                now
            }
        };
        let measured = due >= shared.measure_start;
        if measured
            && let Some(max) = spec.requests
            && shared.tickets.fetch_add(1, Ordering::Relaxed) >= max
        {
            break;
        }
        let second = |t: Instant| t.saturating_duration_since(shared.measure_start).as_secs();

        if conn.as_ref().is_some_and(|c| !c.is_open()) {
            // Closed by the server after its last response: reconnect, no error.
            conn = None;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match tokio::time::timeout(spec.timeout, shared.target.connect()).await {
                Ok(Ok(c)) => conn.insert(c),
                _ => {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    shared.completed.fetch_add(1, Ordering::Relaxed);
                    if measured {
                        rec.failure(Failure::Connect, second(Instant::now()));
                    }
                    // Do not spin on a dead target; the deadline still bounds the loop.
                    let pause = Instant::now() + Duration::from_millis(50);
                    tokio::time::sleep_until(pause.min(shared.deadline).into()).await;
                    continue;
                }
            },
        };

        let op = spec.mix.pick(&mut rng);
        let (method, uri, body) = match op {
            Op::Get => (
                Method::GET,
                shared.products[key_index(&shared, &mut rng)].clone(),
                None,
            ),
            Op::List => {
                let page = rand::Rng::random_range(&mut rng, 0..shared.pages.len());
                (Method::GET, shared.pages[page].clone(), None)
            }
            Op::Put => {
                let n = shared.keys.sample(&mut rng);
                let id = spec.id_format.id(n);
                // Distinct values across connections, so no write is a no-op.
                puts += 1;
                let seq = puts * spec.connections as u64 + w as u64;
                let body = mix::put_body(&id, seq, rand::Rng::random(&mut rng));
                (
                    Method::PUT,
                    shared.products[(n - 1) as usize].clone(),
                    Some(Bytes::from(body)),
                )
            }
        };
        let result = tokio::time::timeout(spec.timeout, c.send(method, uri, body)).await;
        let done = Instant::now();
        shared.completed.fetch_add(1, Ordering::Relaxed);
        let failure = match result {
            Ok(Ok(o)) => {
                if !(200..300).contains(&o.status) {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                }
                if measured {
                    let us =
                        u64::try_from(done.duration_since(due).as_micros()).unwrap_or(u64::MAX);
                    rec.response(op, o.status, o.cache, us, second(done));
                }
                None
            }
            Ok(Err(_)) => Some(Failure::Io),
            Err(_) => Some(Failure::Timeout),
        };
        if let Some(f) = failure {
            // The connection's state is unknown: start a new one.
            conn = None;
            shared.errors.fetch_add(1, Ordering::Relaxed);
            if measured {
                rec.failure(f, second(done));
            }
        }
    }
    rec.flush();
    rec
}

fn key_index(shared: &Shared, rng: &mut SmallRng) -> usize {
    (shared.keys.sample(rng) - 1) as usize
}
