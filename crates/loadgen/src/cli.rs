//! The command line: `loadgen run`, `loadgen compare` and `loadgen check`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};

use crate::check::{self, CheckSpec, Pause};
use crate::dbstats::DbStats;
use crate::http::Target;
use crate::keys::{IdFormat, Popularity};
use crate::mix::Mix;
use crate::report::{self, JsonReport};
use crate::runner::{self, LoadSpec, TargetReport};

/// Drives HTTP product-catalog services with a mix of reads and writes and reports
/// throughput, latency percentiles, cache hit ratio, database queries and service CPU.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load one or more targets, one after another, and report each.
    Run(RunArgs),
    /// Load several targets with the same load, one after another, and print ratios to a
    /// baseline.
    Compare(CompareArgs),
    /// Check that no read returns a value older than an acknowledged write: write through
    /// one instance, read through others, report stale and phantom reads. Exits non-zero on
    /// any, or when too few reads were checked.
    Check(CheckArgs),
}

/// `loadgen check`
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Base URL of the instance the writes go to.
    #[arg(long, value_name = "URL")]
    pub writer: String,
    /// Base URL of an instance to read from; repeat for several (reads go round-robin).
    #[arg(long = "reader", required = true, value_name = "URL")]
    pub reader_urls: Vec<String>,
    /// Ids are numbered 1..=N; every one must exist.
    #[arg(long, default_value_t = 1000)]
    pub ids: u64,
    /// How a number becomes an id: `p{}` for the catalog (p1..pN).
    #[arg(long, default_value = "p{}")]
    pub id_format: String,
    /// Zipf exponent of the ids read and written (id 1 the most popular); uniform when
    /// absent.
    #[arg(long, value_name = "EXPONENT")]
    pub zipf: Option<f64>,
    /// How long to write and read (a duration, as for `run --duration`).
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Stop once this many reads were checked (`--duration` is then a cap).
    #[arg(long, value_name = "N")]
    pub reads: Option<u64>,
    /// Staleness allowed: a read may return a replaced value if its replacement was
    /// acknowledged less than this before the read began (`100ms` with an L1).
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    pub bound: Duration,
    /// Writer tasks; each id has exactly one, which writes it one request at a time.
    #[arg(long, default_value_t = 2)]
    pub writers: usize,
    /// Reader tasks.
    #[arg(long, default_value_t = 8)]
    pub readers: usize,
    /// Per-request timeout (a duration).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// A process to stop (SIGSTOP) now and then during the run, and resume (SIGCONT): one
    /// of the instances, to stall it in the middle of requests.
    #[arg(long, value_name = "PID")]
    pub pause_pid: Option<u32>,
    /// Time between two pauses.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub pause_every: Duration,
    /// How long each pause lasts.
    #[arg(long, default_value = "5ms", value_parser = parse_duration)]
    pub pause_for: Duration,
    /// Fail when fewer reads than this were checked.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub min_reads: u64,
    /// Random seed of the id choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON document on stdout instead of tables.
    #[arg(long)]
    pub json: bool,
}

impl CheckArgs {
    /// The check these flags describe.
    pub fn spec(&self) -> Result<CheckSpec> {
        let spec = CheckSpec {
            writer: Target::parse(&self.writer)?,
            readers: self
                .reader_urls
                .iter()
                .map(|t| Target::parse(t))
                .collect::<Result<Vec<_>>>()?,
            ids: self.ids,
            id_format: IdFormat::parse(&self.id_format)?,
            popularity: self.zipf.map_or(Popularity::Uniform, Popularity::Zipf),
            duration: self.duration,
            reads: self.reads,
            bound: self.bound,
            writers: self.writers,
            reader_tasks: self.readers,
            timeout: self.timeout,
            pause: self.pause_pid.map(|pid| Pause {
                pid,
                every: self.pause_every,
                length: self.pause_for,
            }),
            min_reads: self.min_reads,
            seed: self.seed,
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// `loadgen run`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Base URL of a service (`http://127.0.0.1:8080`), optionally named: `NAME=URL`.
    #[arg(required = true, value_name = "[NAME=]URL")]
    pub targets: Vec<String>,
    /// Process id of the service, to report its CPU time per 100k requests (repeat to sum
    /// several processes; with several targets, use `compare`).
    #[arg(long, value_name = "PID")]
    pub pid: Vec<u32>,
    /// The load.
    #[command(flatten)]
    pub load: LoadArgs,
    /// The output.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `loadgen compare`
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// A target as `NAME=URL`; repeat for each (they run in this order).
    #[arg(long = "target", required = true, value_name = "NAME=URL")]
    pub targets: Vec<String>,
    /// The target the ratios are relative to (default: the first).
    #[arg(long)]
    pub baseline: Option<String>,
    /// A service process as `NAME=PID`, to report its CPU time per 100k requests; repeat a
    /// name to sum several processes (a service and its own Redis, say).
    #[arg(long = "pid", value_name = "NAME=PID")]
    pub pids: Vec<String>,
    /// The id format of one target, when it differs from `--id-format`, as `NAME=TEMPLATE`
    /// (e.g. `seed={}` while the catalog targets use `p{}`).
    #[arg(long = "id-format-of", value_name = "NAME=TEMPLATE")]
    pub id_formats: Vec<String>,
    /// Pause between two targets, so one's tail does not leak into the next (a duration,
    /// as for `--duration`).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub pause: Duration,
    /// The load.
    #[command(flatten)]
    pub load: LoadArgs,
    /// The output.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// The load, the same for every target.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Operation weights: `get` (GET /products/{id}), `list` (GET /products?page=),
    /// `put` (PUT /products/{id}).
    #[arg(long, default_value = "get=100")]
    pub mix: Mix,
    /// Ids are numbered 1..=N.
    #[arg(long, default_value_t = 1000)]
    pub ids: u64,
    /// How a number becomes an id: `p{}` for the catalog (p1..pN), `{}` for the seed (1..N).
    #[arg(long, default_value = "p{}")]
    pub id_format: String,
    /// Zipf exponent of key popularity (id 1 the most popular); uniform when absent.
    #[arg(long, value_name = "EXPONENT")]
    pub zipf: Option<f64>,
    /// List reads pick a page in 1..=N.
    #[arg(long, default_value_t = 10)]
    pub pages: u64,
    /// `limit` of list reads.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Concurrent keep-alive connections.
    #[arg(short = 'c', long, default_value_t = 64)]
    pub connections: usize,
    /// Measured time (`10s`, `500ms`, `1.5s`, `2m`, `1m 30s`; a bare number is seconds);
    /// with `--requests`, a cap. Default 10s.
    #[arg(short = 'd', long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Measured requests (then the run ends after this many, or after 300 s).
    #[arg(short = 'n', long)]
    pub requests: Option<u64>,
    /// Unrecorded load before measuring (a duration, as for `--duration`).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Open loop: total requests per second, sent on schedule; latency counts from each
    /// request's scheduled time (no coordinated omission). Closed loop when absent.
    #[arg(long, value_name = "REQ_PER_S")]
    pub rate: Option<f64>,
    /// Per-request timeout (a duration, as for `--duration`).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Read every id once before warm-up, so the cache holds them all.
    #[arg(long)]
    pub prefill: bool,
    /// Random seed: the same seed gives the same key sequence per connection.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where to count database queries during the run.
    #[arg(long, value_enum, default_value = "auto")]
    pub db_stats: DbStats,
}

/// What to print and draw.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Print one JSON document on stdout instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Draw throughput and p99 per second into this PNG.
    #[arg(long, value_name = "FILE.png")]
    pub plot: Option<PathBuf>,
    /// Also write the JSON document to this file (tables still go to stdout).
    #[arg(long, value_name = "FILE.json")]
    pub save: Option<PathBuf>,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Parses a duration with [`humantime::parse_duration`] (`10s`, `250ms`, `1.5s`, `2m`,
/// `1h 30m`, ...), or a bare number as seconds (`1.5`).
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let bare_seconds = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let text = if bare_seconds {
        format!("{s}s")
    } else {
        s.to_owned()
    };
    humantime::parse_duration(&text)
        .map_err(|e| anyhow!("{s:?} is not a duration like 10s, 250ms, 2m or 1.5 (seconds): {e}"))
}

impl LoadArgs {
    /// The load spec these flags describe.
    pub fn spec(&self, output: &OutputArgs) -> Result<LoadSpec> {
        let spec = LoadSpec {
            mix: self.mix,
            ids: self.ids,
            id_format: IdFormat::parse(&self.id_format)?,
            popularity: self.zipf.map_or(Popularity::Uniform, Popularity::Zipf),
            pages: self.pages,
            limit: self.limit,
            connections: self.connections,
            duration: self.duration,
            requests: self.requests,
            warmup: self.warmup,
            rate: self.rate,
            timeout: self.timeout,
            prefill: self.prefill,
            seed: self.seed,
            db_stats: self.db_stats,
            progress: !output.quiet && std::io::stderr().is_terminal(),
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// Parses `NAME=PID` pairs into pids per name.
pub fn parse_pids(pairs: &[String]) -> Result<BTreeMap<String, Vec<u32>>> {
    let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for pair in pairs {
        let (name, pid) = pair
            .split_once('=')
            .with_context(|| format!("--pid {pair:?} is not NAME=PID"))?;
        let pid: u32 = pid
            .trim()
            .parse()
            .with_context(|| format!("--pid {pair:?}: bad pid"))?;
        out.entry(name.trim().to_owned()).or_default().push(pid);
    }
    Ok(out)
}

/// Runs the command line.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => {
            let spec = args.load.spec(&args.output)?;
            let targets = args
                .targets
                .iter()
                .map(|t| Target::parse(t))
                .collect::<Result<Vec<_>>>()?;
            let mut reports = Vec::new();
            for (i, target) in targets.iter().enumerate() {
                let pids = if targets.len() == 1 {
                    args.pid.as_slice()
                } else {
                    &[]
                };
                if i > 0 && !args.pid.is_empty() {
                    eprintln!(
                        "note: --pid applies to a single target; use `compare --pid NAME=PID`"
                    );
                }
                let report = runner::run_target(target, &spec, pids).await?;
                if !args.output.json {
                    println!("{}", report::detail(&spec, &report));
                }
                reports.push(report);
            }
            finish(&spec, &reports, None, &args.output)
        }
        Command::Compare(args) => {
            let spec = args.load.spec(&args.output)?;
            let targets = args
                .targets
                .iter()
                .map(|t| Target::parse(t))
                .collect::<Result<Vec<_>>>()?;
            let mut names = std::collections::BTreeSet::new();
            for t in &targets {
                if !names.insert(t.name.as_str()) {
                    bail!("two targets are named {:?}", t.name);
                }
            }
            let pids = parse_pids(&args.pids)?;
            if let Some(unknown) = pids.keys().find(|n| !names.contains(n.as_str())) {
                bail!("--pid names {unknown:?}, which is not a target");
            }
            let mut id_formats = BTreeMap::new();
            for pair in &args.id_formats {
                let (name, template) = pair
                    .split_once('=')
                    .with_context(|| format!("--id-format-of {pair:?} is not NAME=TEMPLATE"))?;
                if !names.contains(name) {
                    bail!("--id-format-of names {name:?}, which is not a target");
                }
                id_formats.insert(name.to_owned(), IdFormat::parse(template)?);
            }
            let baseline = match &args.baseline {
                Some(b) if names.contains(b.as_str()) => b.clone(),
                Some(b) => bail!("--baseline {b:?} is not a target"),
                None => targets.first().map(|t| t.name.clone()).unwrap_or_default(),
            };
            let mut reports = Vec::new();
            for (i, target) in targets.iter().enumerate() {
                if i > 0 {
                    tokio::time::sleep(args.pause).await;
                }
                let pids = pids.get(&target.name).map(Vec::as_slice).unwrap_or(&[]);
                let mut spec = spec.clone();
                if let Some(format) = id_formats.get(&target.name) {
                    spec.id_format = format.clone();
                }
                let report = runner::run_target(target, &spec, pids).await?;
                if !args.output.json {
                    println!("{}", report::detail(&spec, &report));
                }
                reports.push(report);
            }
            if !args.output.json {
                println!("{}", report::comparison(&reports, &baseline));
            }
            finish(&spec, &reports, Some(&baseline), &args.output)
        }
        Command::Check(args) => {
            let spec = args.spec()?;
            // On Ctrl-C the check's future is dropped, which resumes a paused process.
            let report = tokio::select! {
                report = check::run_check(&spec) => report?,
                _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            };
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{}", report.table());
            }
            let failures = report.failures();
            if !failures.is_empty() {
                bail!("consistency check failed: {}", failures.join(", "));
            }
            Ok(())
        }
    }
}

fn finish(
    spec: &LoadSpec,
    reports: &[TargetReport],
    baseline: Option<&str>,
    output: &OutputArgs,
) -> Result<()> {
    if let Some(path) = &output.plot {
        crate::plot::draw(path, reports)?;
        if !output.json {
            println!("plot written to {}", path.display());
        }
    }
    if output.json || output.save.is_some() {
        let doc = JsonReport {
            load: spec,
            baseline,
            targets: reports,
            ratios: baseline.and_then(|b| report::ratios(reports, b)),
        };
        let text = serde_json::to_string_pretty(&doc)?;
        if let Some(path) = &output.save {
            std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
        }
        if output.json {
            println!("{text}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("2min").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1m 30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration(" 5s ").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(
            parse_duration("5d").unwrap(),
            Duration::from_secs(5 * 86_400)
        );
    }

    #[test]
    fn bare_numbers_are_seconds() {
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("0.25").unwrap(), Duration::from_millis(250));
    }

    #[test]
    fn bad_durations_say_what_is_wrong() {
        for bad in ["ten", "5x", "", "-1s", "1.2.3", "10s5"] {
            let err = parse_duration(bad).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("{bad:?} is not a duration like 10s")),
                "{bad:?}: {err}"
            );
        }
        let err = parse_duration("5x").unwrap_err().to_string();
        assert!(err.contains("unknown time unit \"x\""), "{err}");
        let err = Cli::try_parse_from(["loadgen", "run", "http://127.0.0.1:1", "-d", "ten"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"ten\" is not a duration like 10s"), "{err}");
    }

    #[test]
    fn pids_by_name() {
        let p = parse_pids(&["a=1".into(), "b=2".into(), "a=3".into()]).unwrap();
        assert_eq!(p["a"], vec![1, 3]);
        assert_eq!(p["b"], vec![2]);
        assert!(parse_pids(&["a".into()]).is_err());
        assert!(parse_pids(&["a=x".into()]).is_err());
    }

    #[test]
    fn command_line_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "loadgen",
            "compare",
            "--target",
            "a=http://127.0.0.1:1",
            "--target",
            "b=http://127.0.0.1:2",
            "--pid",
            "a=5",
            "--zipf",
            "1.0",
            "--mix",
            "get=9,put=1",
            "-c",
            "8",
            "-d",
            "2s",
        ])
        .unwrap();
        let Command::Compare(args) = cli.command else {
            panic!("not compare")
        };
        assert_eq!(args.targets.len(), 2);
        let spec = args.load.spec(&args.output).unwrap();
        assert_eq!(spec.popularity, Popularity::Zipf(1.0));
        assert_eq!(spec.connections, 8);
        assert_eq!(spec.duration, Some(Duration::from_secs(2)));
        assert!(Cli::try_parse_from(["loadgen", "run"]).is_err());
    }

    #[test]
    fn check_command_line_parses() {
        let parse = |extra: &[&str]| {
            let mut argv = vec![
                "loadgen",
                "check",
                "--writer",
                "http://127.0.0.1:1",
                "--reader",
                "http://127.0.0.1:2",
            ];
            argv.extend_from_slice(extra);
            let Command::Check(args) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("not check")
            };
            args.spec()
        };
        let spec = parse(&[
            "--reader",
            "http://127.0.0.1:3",
            "--ids",
            "50",
            "-d",
            "3s",
            "--bound",
            "100ms",
            "--writers",
            "3",
            "--readers",
            "5",
            "--pause-pid",
            "42",
            "--pause-every",
            "150ms",
            "--min-reads",
            "10",
        ])
        .unwrap();
        assert_eq!(spec.readers.len(), 2);
        assert_eq!(spec.ids, 50);
        assert_eq!(spec.duration, Duration::from_secs(3));
        assert_eq!(spec.bound, Duration::from_millis(100));
        assert_eq!((spec.writers, spec.reader_tasks), (3, 5));
        assert_eq!(
            spec.pause,
            Some(Pause {
                pid: 42,
                every: Duration::from_millis(150),
                length: Duration::from_millis(5),
            })
        );
        assert_eq!(spec.min_reads, 10);
        let spec = parse(&[]).unwrap();
        assert_eq!(
            (spec.bound, spec.pause, spec.min_reads),
            (Duration::ZERO, None, 1)
        );
        assert!(parse(&["--ids", "2", "--writers", "3"]).is_err());
        assert!(parse(&["--readers", "0"]).is_err());
        assert!(parse(&["--pause-pid", "0"]).is_err());
        assert!(parse(&["--pause-pid", "1", "--pause-for", "0s"]).is_err());
        assert!(
            Cli::try_parse_from(["loadgen", "check", "--writer", "http://127.0.0.1:1"]).is_err(),
            "a reader is required"
        );
    }
}
