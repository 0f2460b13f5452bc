//! Invalidations kept while the store did not answer: nothing is filled while they are kept,
//! the engine replays them on its own as soon as the store answers (with no further call on
//! the instance that kept them), and `flush` waits for them on shutdown.
#![allow(clippy::unwrap_used)]

use aside::key::{EntryKey, TagKey};
use aside::store::{Claim, ClaimTerms, Kind, Lease, Lifetime, Lookup, MemoryStore, Store};
use aside::{Cache, Invalidation, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use testkit::{TestRedis, eventually};
use tokio::sync::oneshot;

type Never = std::convert::Infallible;

/// An in-process store whose invalidations (`delete`, `bump`) fail while `refuse` is set, as
/// a store that cannot be reached would; everything else works.
#[derive(Debug)]
struct Refusing {
    inner: MemoryStore,
    refuse: AtomicBool,
}

fn down() -> StoreError {
    StoreError::Timeout(Duration::from_millis(1))
}

#[async_trait]
impl Store for Refusing {
    fn kind(&self) -> Kind {
        self.inner.kind()
    }
    fn reads_need_stamps(&self) -> bool {
        self.inner.reads_need_stamps()
    }
    async fn get(&self, key: &EntryKey, stamps: &[TagKey]) -> Result<Lookup, StoreError> {
        self.inner.get(key, stamps).await
    }
    async fn claim(
        &self,
        key: &EntryKey,
        stamps: &[TagKey],
        clock: &TagKey,
        terms: ClaimTerms,
    ) -> Result<Claim, StoreError> {
        self.inner.claim(key, stamps, clock, terms).await
    }
    async fn claim_refresh(
        &self,
        key: &EntryKey,
        fresh_until: u64,
        stamps: &[TagKey],
        clock: &TagKey,
        terms: ClaimTerms,
    ) -> Result<Option<Lease>, StoreError> {
        let r = self
            .inner
            .claim_refresh(key, fresh_until, stamps, clock, terms);
        r.await
    }
    async fn fill(
        &self,
        key: &EntryKey,
        lease: &Lease,
        learnt: &[TagKey],
        payload: Bytes,
        life: Lifetime,
    ) -> Result<bool, StoreError> {
        self.inner.fill(key, lease, learnt, payload, life).await
    }
    async fn release(&self, key: &EntryKey, lease: &Lease) -> Result<(), StoreError> {
        self.inner.release(key, lease).await
    }
    async fn set(
        &self,
        key: &EntryKey,
        stamps: &[TagKey],
        payload: Bytes,
        life: Lifetime,
    ) -> Result<(), StoreError> {
        self.inner.set(key, stamps, payload, life).await
    }
    async fn delete(&self, keys: &[EntryKey]) -> Result<(), StoreError> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(down());
        }
        self.inner.delete(keys).await
    }
    async fn bump(&self, stamps: &[TagKey], clock: &TagKey) -> Result<(), StoreError> {
        if self.refuse.load(Ordering::SeqCst) {
            return Err(down());
        }
        self.inner.bump(stamps, clock).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

#[tokio::test]
async fn nothing_is_filled_while_an_invalidation_is_kept() {
    let store = Arc::new(Refusing {
        inner: MemoryStore::new(100),
        refuse: AtomicBool::new(false),
    });
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
    store.refuse.store(true, Ordering::SeqCst);
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
        store.inner.get(&key, &[]).await.unwrap(),
        Lookup::Miss,
        "the old value was filled while its invalidation was kept"
    );
    assert_eq!(c.health().pending_invalidations, 1);
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
    assert_eq!(writer.health().pending_invalidations, 0);
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
