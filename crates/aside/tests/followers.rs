//! Which callers may take the value of a load they joined in process: only those that joined
//! before the leader began the observation that produced it. A stored fill is such an
//! observation too: a write acknowledged after the fill was sent, and before the leader
//! shares its value, has deleted what the fill wrote, and a caller that joined after that
//! write must not be handed the value it replaced.
#![allow(clippy::unwrap_used)]

use aside::key::{EntryKey, TagKey};
use aside::store::{Claim, ClaimTerms, Kind, Lease, Lifetime, Lookup, MemoryStore, Store};
use aside::{Cache, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use testkit::counters;
use tokio::sync::oneshot;

type Never = std::convert::Infallible;

/// An in-process store whose next fill, once written, waits for the test before it returns.
#[derive(Debug)]
struct HeldFill {
    inner: MemoryStore,
    /// (filled, go): told once the fill is written, then waited on.
    gate: Mutex<Option<(oneshot::Sender<()>, oneshot::Receiver<()>)>>,
}

#[async_trait]
impl Store for HeldFill {
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
        clocks: &[TagKey],
        terms: ClaimTerms,
    ) -> Result<Claim, StoreError> {
        self.inner.claim(key, stamps, clocks, terms).await
    }
    async fn claim_refresh(
        &self,
        key: &EntryKey,
        fresh_until: u64,
        stamps: &[TagKey],
        clocks: &[TagKey],
        terms: ClaimTerms,
    ) -> Result<Option<Lease>, StoreError> {
        let claim = self
            .inner
            .claim_refresh(key, fresh_until, stamps, clocks, terms);
        claim.await
    }
    async fn fill(
        &self,
        key: &EntryKey,
        lease: &Lease,
        learnt: &[TagKey],
        payload: Bytes,
        life: Lifetime,
    ) -> Result<bool, StoreError> {
        let written = self.inner.fill(key, lease, learnt, payload, life).await;
        let gate = self.gate.lock().unwrap().take();
        if let Some((filled, go)) = gate {
            filled.send(()).unwrap();
            go.await.unwrap();
        }
        written
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
        self.inner.delete(keys).await
    }
    async fn bump(&self, stamps: &[TagKey]) -> Result<(), StoreError> {
        self.inner.bump(stamps).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

#[tokio::test]
async fn a_caller_joining_after_a_write_that_followed_the_fill_gets_the_new_value() {
    let (filled_tx, filled_rx) = oneshot::channel();
    let (go_tx, go_rx) = oneshot::channel();
    let memory = MemoryStore::new(100);
    let store = Arc::new(HeldFill {
        inner: memory.clone(),
        gate: Mutex::new(Some((filled_tx, go_rx))),
    });
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let reader = metrics::with_local_recorder(&recorder, || {
        Cache::builder().store(store.clone()).build().unwrap()
    });
    // Another instance on the same store (the clone shares the in-process store's data).
    let writer = Cache::builder().store(Arc::new(memory)).build().unwrap();
    let db = Arc::new(AtomicUsize::new(1));
    let read = |c: &Cache, db: &Arc<AtomicUsize>| {
        let (c, db) = (c.clone(), db.clone());
        tokio::spawn(async move {
            c.get_or_load("k", move || async move {
                Ok::<_, Never>(Some(db.load(Ordering::SeqCst)))
            })
            .await
            .unwrap()
        })
    };
    let leader = read(&reader, &db);
    // The leader's fill of the old row is written, and it has not shared its value yet.
    filled_rx.await.unwrap();
    db.store(2, Ordering::SeqCst);
    assert_eq!(
        writer.del(["k"]).await.unwrap(),
        aside::Invalidation::Applied
    );
    // A read that begins now, after the write was acknowledged, joins the leader's flight.
    let follower = read(&reader, &db);
    let mut misses = 0;
    while misses < 2 {
        tokio::task::yield_now().await;
        misses += counters(&snap)("aside_misses_total");
    }
    go_tx.send(()).unwrap();
    assert_eq!(
        leader.await.unwrap(),
        Some(1),
        "the leader gets the row it read"
    );
    assert_eq!(
        follower.await.unwrap(),
        Some(2),
        "a read that began after the write never gets the value it replaced"
    );
}
