//! Invalidations kept while the store did not answer: nothing is filled while they are kept,
//! the engine replays them on its own as soon as the store answers (with no further call on
//! the instance that kept them), and `flush` waits for them on shutdown.
#![allow(clippy::unwrap_used)]

use aside::store::{ChaosStore, Failing, Lookup, MemoryStore, Store};
use aside::{Cache, Invalidation};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use testkit::{TestRedis, eventually};
use tokio::sync::oneshot;

type Never = std::convert::Infallible;

#[tokio::test]
async fn nothing_is_filled_while_an_invalidation_is_kept() {
    let memory = Arc::new(MemoryStore::new(100));
    let store = Arc::new(ChaosStore::new(memory.clone()));
    let c = Cache::builder()
        .store(store.clone())
        .breaker(1000, Duration::from_secs(1))
        .build()
        .unwrap();
    let (read_tx, read_rx) = oneshot::channel();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let load = {
        let c = c.clone();
        tokio::spawn(async move {
            c.get_or_load("k", || async move {
                read_tx.send(()).unwrap(); // the old row has been read, the lease is held
                go_rx.await.unwrap();
                Ok::<_, Never>(Some("old".to_string()))
            })
            .await
            .unwrap()
        })
    };
    read_rx.await.unwrap();
    // The write's invalidation cannot be sent: it is kept, and the placeholder stays.
    store.fail(Failing::Invalidations);
    assert_eq!(c.del(["k"]).await.unwrap(), Invalidation::Queued);
    go_tx.send(()).unwrap();
    assert_eq!(load.await.unwrap().as_deref(), Some("old"));
    // The store itself (not through the cache, whose reads wait for the backlog) holds no
    // entry: the fill was not attempted while the invalidation was kept.
    let key = aside::key::Namespace::new("aside")
        .unwrap()
        .entry("k")
        .unwrap();
    assert_eq!(
        memory.get(&key, &[]).await.unwrap(),
        Lookup::Miss,
        "the old value was filled while its invalidation was kept"
    );
    assert_eq!(c.health().pending_invalidations, 1);
}

/// The store answers again while the breaker, opened by the outage, waits out its cooldown
/// (the mocked clock does not move): reads still skip the store, but a write's invalidation
/// is sent and applied before it is acknowledged. Skipped by the breaker, it would be kept
/// while other instances, whose breakers had closed, served the entry it was to remove.
#[tokio::test]
async fn an_invalidation_is_sent_while_the_breaker_is_still_open() {
    let memory = Arc::new(MemoryStore::new(100));
    let store = Arc::new(ChaosStore::new(memory.clone()));
    let c = Cache::builder()
        .store(store.clone())
        .clock(Arc::new(aside::clock::MockClock::default()))
        .breaker(3, Duration::from_secs(1))
        .build()
        .unwrap();
    c.set("k", &1u32).await.unwrap();
    store.fail(Failing::Everything);
    for _ in 0..3 {
        assert!(c.get::<u32>("k").await.is_err());
    }
    store.fail(Failing::Nothing);
    assert!(c.get::<u32>("k").await.is_err(), "the breaker is open");
    assert_eq!(c.del(["k"]).await.unwrap(), Invalidation::Applied);
    let key = aside::key::Namespace::new("aside")
        .unwrap()
        .entry("k")
        .unwrap();
    assert_eq!(memory.get(&key, &[]).await.unwrap(), Lookup::Miss);
    assert_eq!(c.health().pending_invalidations, 0);
}

/// A private Redis, a writer instance and a reader instance on it, `k` cached as 1.
async fn two_instances() -> (TestRedis, Cache, Cache, Arc<AtomicUsize>) {
    let r = TestRedis::start();
    let build = || {
        Cache::builder()
            .namespace("t")
            .redis(r.url())
            .command_timeout(Duration::from_millis(100))
            .breaker(3, Duration::from_millis(200))
            .build()
            .unwrap()
    };
    let (writer, reader) = (build(), build());
    let db = Arc::new(AtomicUsize::new(1));
    assert_eq!(read(&reader, &db).await, 1);
    assert_eq!(read(&reader, &db).await, 1);
    (r, writer, reader, db)
}

async fn read(c: &Cache, db: &Arc<AtomicUsize>) -> usize {
    let db = db.clone();
    c.get_or_load("k", move || async move {
        Ok::<_, Never>(Some(db.load(Ordering::SeqCst)))
    })
    .await
    .unwrap()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_is_replayed_with_no_further_call_on_its_instance() {
    let (r, writer, reader, db) = two_instances().await;
    r.pause();
    db.store(2, Ordering::SeqCst);
    assert_eq!(writer.del(["k"]).await.unwrap(), Invalidation::Queued);
    r.resume();
    // Only the other instance reads from now on: the writer is never called again.
    let seen = eventually(Duration::from_secs(5), || async {
        read(&reader, &db).await == 2
    })
    .await;
    assert!(seen, "the kept invalidation never reached Redis");
    // The replay marks the backlog settled right after Redis took it.
    let settled = eventually(Duration::from_secs(5), || async {
        writer.health().pending_invalidations == 0
    })
    .await;
    assert!(settled);
}

#[tokio::test]
async fn flush_waits_for_the_store_and_says_what_is_left() {
    let (r, writer, reader, db) = two_instances().await;
    r.pause();
    db.store(2, Ordering::SeqCst);
    assert_eq!(writer.del(["k"]).await.unwrap(), Invalidation::Queued);
    assert_eq!(
        writer.flush(Duration::from_millis(300)).await,
        Invalidation::Queued,
        "still paused: kept"
    );
    r.resume();
    assert_eq!(
        writer.flush(Duration::from_secs(5)).await,
        Invalidation::Applied
    );
    assert_eq!(read(&reader, &db).await, 2);
}
