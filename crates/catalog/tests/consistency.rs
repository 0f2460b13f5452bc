//! Consistency across instances, checked from outside with `loadgen check`: two real
//! `catalog` binaries share one fresh PostgreSQL database and one private cache; A takes
//! the writes, B (and A) the reads, and B is stopped (SIGSTOP) for a few milliseconds now
//! and then, so it stalls in the middle of loads, fills and replies. No read that begins
//! after a write was acknowledged (or, with an L1, more than its 100 ms bound after) may
//! return the value it replaced.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use loadgen::check::{CheckReport, CheckSpec, Pause, run_check};
use loadgen::http::Target;
use loadgen::keys::{IdFormat, Popularity};
use support::Service;
use testkit::{TestCluster, TestPostgres, TestRedis};

/// The longest each variant writes and reads (it stops sooner once it has checked
/// `GOAL_READS`); long enough for the slowest variant (the cluster) to pass `MIN_READS` on a
/// busy machine.
const DURATION: Duration = Duration::from_secs(45);
/// Reads each variant must check at least; a run that checks fewer proves too little.
const MIN_READS: u64 = 20_000;
/// The goal: a run stops once this many reads are checked.
const GOAL_READS: u64 = 50_000;
/// The staleness an L1 is allowed (see `catalog serve --help`, `--l1-capacity`).
const L1_BOUND: Duration = Duration::from_millis(100);

/// The variants run one at a time: on a small machine two at once would share the CPU and
/// each check far fewer reads.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Starts A and B with `cache` (the cache flags) and runs the checker against them, B
/// stopped now and then.
async fn check(cache: &[&str], bound: Duration) -> CheckReport {
    check_with(cache, bound, true).await
}

/// As [`check`]; `pause`: whether B is stopped now and then.
async fn check_with(cache: &[&str], bound: Duration, pause: bool) -> CheckReport {
    let _turn = ONE_AT_A_TIME.lock().await;
    let pg = TestPostgres::new().await;
    let args = [
        &["--database-url", &pg.url, "--seed-products", "1000"][..],
        cache,
    ]
    .concat();
    // One after the other: A seeds the empty database before B looks at it.
    let a = Service::start(&args);
    let b = Service::start(&args);
    let spec = CheckSpec {
        writer: Target::parse(&a.base).unwrap(),
        // Reads alternate between B and A: while B is stopped, the reader tasks whose read
        // on A completes go on to begin reads on B, after writes acknowledged during the
        // stop, and those reach B together with the work it was stopped in.
        readers: vec![
            Target::parse(&b.base).unwrap(),
            Target::parse(&a.base).unwrap(),
        ],
        // Few ids, many readers: each id is written often while many reads of it overlap,
        // so B's loads of it have followers that joined after a write.
        ids: 4,
        id_format: IdFormat::parse("p{}").unwrap(),
        popularity: Popularity::Uniform,
        duration: DURATION,
        reads: Some(GOAL_READS),
        bound,
        writers: 2,
        reader_tasks: 32,
        timeout: Duration::from_secs(5),
        pause: pause.then(|| Pause {
            pid: b.pid(),
            every: Duration::from_millis(20),
            length: Duration::from_millis(5),
        }),
        min_reads: MIN_READS,
        seed: 1,
    };
    let report = run_check(&spec).await.unwrap();
    eprintln!("{}", report.table());
    report
}

fn assert_consistent(r: &CheckReport) {
    assert_eq!(r.violations, 0, "stale reads: {:#?}", r.first_violations);
    assert_eq!(r.phantoms, 0, "phantom reads: {:#?}", r.first_phantoms);
    assert!(
        r.reads >= MIN_READS,
        "only {} reads checked in {:.1} s",
        r.reads,
        r.seconds
    );
    assert!(r.writes_acknowledged > 0, "{}", r.table());
    assert!(r.passed, "{:?}", r.failures());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_reads_across_instances_with_one_redis() {
    let redis = TestRedis::start();
    let url = redis.url();
    let report = check(&["--redis-url", &url], Duration::ZERO).await;
    assert!(report.pauses > 0, "{}", report.table());
    assert_consistent(&report);
}

/// Unstopped, B's loads and fills interleave with A's writes at full speed: the window
/// between a fill and the end of its flight is reached more often than when B stalls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_reads_across_instances_with_one_redis_unpaused() {
    let redis = TestRedis::start();
    let url = redis.url();
    let report = check_with(&["--redis-url", &url], Duration::ZERO, false).await;
    assert_consistent(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stale_reads_across_instances_on_a_redis_cluster() {
    let cluster = TestCluster::start();
    let urls = cluster.urls().join(",");
    assert_consistent(&check(&["--redis-cluster-urls", &urls], Duration::ZERO).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_l1_no_read_is_staler_than_the_bound() {
    let redis = TestRedis::start();
    let url = redis.url();
    let cache = ["--redis-url", &url, "--l1-capacity", "10000"];
    assert_consistent(&check(&cache, L1_BOUND).await);
}
