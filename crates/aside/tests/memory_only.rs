//! The in-process store's bounds: a flood of new version keys evicts the least recently used
//! ones, and never invalidates the entries in use.
#![allow(clippy::unwrap_used)]

use aside::Cache;
use aside::store::MemoryStore;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

type Never = std::convert::Infallible;

#[tokio::test]
async fn a_flood_of_version_keys_leaves_entries_in_use_valid() {
    let capacity = 2048;
    let store = Arc::new(MemoryStore::new(capacity));
    let c = Cache::builder()
        .namespace("t")
        .store(store.clone())
        .build()
        .unwrap();
    let loads = Arc::new(AtomicUsize::new(0));
    let hot = || {
        let loads = loads.clone();
        c.get_or_load("hot:1", move || async move {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Never>(Some(1u32))
        })
    };
    assert_eq!(hot().await.unwrap(), Some(1));
    // Every key has a prefix of its own (`page:{i}:`): one new version key per request,
    // ten times the capacity.
    for i in 0..(capacity * 10) {
        let key = format!("page:{i}:x");
        let v = c
            .get_or_load(&key, move || async move { Ok::<_, Never>(Some(i)) })
            .await
            .unwrap();
        assert_eq!(v, Some(i));
        if i % 64 == 0 {
            assert_eq!(hot().await.unwrap(), Some(1));
        }
        assert!(store.version_count() <= capacity as usize, "bounded");
    }
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "the entry in use was never invalidated by the flood"
    );
    // A prefix invalidation still reaches its entries.
    c.invalidate_prefix("hot:").await.unwrap();
    assert_eq!(hot().await.unwrap(), Some(1));
    assert_eq!(loads.load(Ordering::SeqCst), 2);
}
