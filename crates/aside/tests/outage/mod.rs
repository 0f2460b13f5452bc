//! The killed-server scenario, run on a standalone Redis and on one node of a cluster.

use aside::{Cache, Invalidation};
use metrics_util::debugging::Snapshotter;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use testkit::{Server, counters, eventually};

type Never = std::convert::Infallible;

/// `server`, which holds key `k` of `cache`, is killed: every read falls back to the loader in
/// bounded time, the breaker opens and skips the store, a set says it could not write and a
/// delete is queued. Once `server` is back the cache reconnects, replays the delete and caches
/// again. `cache` is built under the recorder of `snap`, with a breaker of 3 failures and a
/// cooldown longer than the loop below (so no probe lands in it, whatever the machine's speed).
pub async fn a_killed_server_costs_callers_nothing(
    cache: &Cache,
    snap: &Snapshotter,
    server: &mut impl Server,
) {
    let loads = Arc::new(AtomicUsize::new(0));
    let load = || {
        let loads = loads.clone();
        || async move {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Never>(Some("from db".to_string()))
        }
    };
    assert_eq!(
        cache.get_or_load("k", load()).await.unwrap().as_deref(),
        Some("from db")
    );
    server.kill();
    let start = Instant::now();
    for _ in 0..50 {
        assert_eq!(
            cache.get_or_load("k", load()).await.unwrap().as_deref(),
            Some("from db")
        );
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "bounded by timeouts and the breaker: {:?}",
        start.elapsed()
    );
    assert_eq!(
        loads.load(Ordering::SeqCst),
        51,
        "every read fell back to the loader"
    );
    assert!(cache.health().breaker_open, "the breaker opened");
    assert!(
        counters(snap)("aside_backend_skipped_total") > 0,
        "and calls were skipped"
    );
    assert!(
        counters(snap)("aside_backend_errors_total") <= 6,
        "only a few calls paid for the outage"
    );
    assert!(
        cache.set("k", &"x").await.is_err(),
        "set says it could not write"
    );
    assert_eq!(cache.del(["k"]).await.unwrap(), Invalidation::Queued);

    server.restart();
    assert!(
        eventually(Duration::from_secs(20), || cache.ping()).await,
        "the cache reconnects"
    );
    assert_eq!(cache.health().pending_invalidations, 0);
    cache.get_or_load("k", load()).await.unwrap();
    let before = loads.load(Ordering::SeqCst);
    cache.get_or_load("k", load()).await.unwrap();
    assert_eq!(
        loads.load(Ordering::SeqCst),
        before,
        "cached again once the server is back"
    );
}
