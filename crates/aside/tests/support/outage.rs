//! The killed-server scenario, run on a standalone Redis and on one node of a cluster.

use super::{TestCluster, TestRedis, eventually};
use aside::{Cache, Invalidation};
use metrics_util::debugging::{DebugValue, Snapshotter};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

type Never = std::convert::Infallible;

/// A server a test can kill and start again.
pub trait Server {
    fn kill(&mut self);
    fn restart(&mut self);
}

impl Server for TestRedis {
    fn kill(&mut self) {
        TestRedis::kill(self)
    }
    fn restart(&mut self) {
        TestRedis::restart(self)
    }
}

/// One node of a cluster (it keeps its slots across a restart: its cluster config survives).
pub struct Node<'a>(pub &'a mut TestCluster, pub usize);

impl Server for Node<'_> {
    fn kill(&mut self) {
        self.0.nodes[self.1].kill()
    }
    fn restart(&mut self) {
        self.0.nodes[self.1].restart()
    }
}

/// The sum of a counter's values over its labels.
pub fn counter(snap: &Snapshotter, name: &str) -> u64 {
    snap.snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, ..)| k.key().name() == name)
        .map(|(.., v)| match v {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum()
}

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
        counter(snap, "aside_backend_skipped_total") > 0,
        "and calls were skipped"
    );
    assert!(
        counter(snap, "aside_backend_errors_total") <= 6,
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
