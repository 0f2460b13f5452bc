//! Batch get-or-load (`Cache::entries`, `get_many`, `fetch_many`), run against every store:
//! one read for all keys, one loader call for the misses, and per key everything a single
//! fetch guarantees (single-flight, leases, fenced fills, negative caching, stale values).
#![allow(clippy::unwrap_used)]

mod stores;

use aside::store::{ChaosStore, Failing};
use aside::{Cache, Error, LoadError, Status};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stores::Fx;
use testkit::eventually;
use tokio::sync::{Barrier, oneshot};

type Never = std::convert::Infallible;

/// The keys of every loader call, in order.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<Vec<String>>>>);

impl Calls {
    fn record(&self, keys: &[String]) {
        self.0.lock().unwrap().push(keys.to_vec());
    }
    fn all(&self) -> Vec<Vec<String>> {
        self.0.lock().unwrap().clone()
    }
    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// A loader that finds every key not named `missing:*`, its value `<key>@<generation>`.
fn loader(
    calls: &Calls,
    generation: u32,
) -> impl Fn(Vec<String>) -> std::future::Ready<Result<HashMap<String, String>, Never>>
+ Send
+ Sync
+ 'static
+ use<> {
    let calls = calls.clone();
    move |keys: Vec<String>| {
        calls.record(&keys);
        let found = keys
            .into_iter()
            .filter(|k| !k.starts_with("missing:"))
            .map(|k| {
                let v = format!("{k}@{generation}");
                (k, v)
            })
            .collect();
        std::future::ready(Ok(found))
    }
}

/// What [`held`] loads with.
type HeldFuture = futures::future::BoxFuture<'static, Result<HashMap<String, String>, Never>>;

/// [`loader`], its first call held once it has read: `loading` says it has, `go` lets it
/// return.
fn held(
    calls: &Calls,
    generation: u32,
) -> (
    impl Fn(Vec<String>) -> HeldFuture + Send + Sync + 'static + use<>,
    oneshot::Receiver<()>,
    oneshot::Sender<()>,
) {
    let (loading_tx, loading) = oneshot::channel::<()>();
    let (go, go_rx) = oneshot::channel::<()>();
    let gate = Arc::new(Mutex::new(Some((loading_tx, go_rx))));
    let load = loader(calls, generation);
    let f = move |asked: Vec<String>| {
        let gate = gate.lock().unwrap().take();
        let found = load(asked);
        let fut: HeldFuture = Box::pin(async move {
            let found = found.await;
            if let Some((loading, go)) = gate {
                loading.send(()).unwrap();
                go.await.unwrap();
            }
            found
        });
        fut
    };
    (f, loading, go)
}

fn strings(keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| k.to_string()).collect()
}

/// Hits, cached "not found"s, misses and a fill refused by a delete during the load, in one
/// batch: one loader call, with the keys that missed only; each key's outcome as a fetch of
/// its own would have it.
async fn a_mixed_batch_makes_one_loader_call(fx: Fx) {
    let c = fx.cache();
    c.set("hit:1", &"hit:1@0").await.unwrap();
    let none = c
        .get_or_load("missing:cached", || async {
            Ok::<Option<String>, Never>(None)
        })
        .await
        .unwrap();
    assert_eq!(none, None);

    let keys = [
        "hit:1",
        "miss:1",
        "missing:cached",
        "refused:1",
        "missing:new",
        "miss:2",
    ];
    let calls = Calls::default();
    let (held, loading_rx, go_tx) = held(&calls, 1);
    let batch = {
        let c = c.clone();
        tokio::spawn(async move { c.entries(keys).fetch(held).await.unwrap() })
    };
    loading_rx.await.unwrap();
    // The load has read the database; this key is written meanwhile.
    c.del(["refused:1"]).await.unwrap();
    go_tx.send(()).unwrap();
    let got = batch.await.unwrap();
    let seen: Vec<(Option<&str>, Status)> =
        got.iter().map(|f| (f.value.as_deref(), f.status)).collect();
    assert_eq!(
        seen,
        [
            (Some("hit:1@0"), Status::Hit),
            (Some("miss:1@1"), Status::Miss),
            (None, Status::Hit),
            (Some("refused:1@1"), Status::Miss),
            (None, Status::Miss),
            (Some("miss:2@1"), Status::Miss),
        ],
        "the caller gets every value, the refused one included"
    );
    assert_eq!(
        calls.all(),
        [strings(&["miss:1", "refused:1", "missing:new", "miss:2"])],
        "one call, with the keys that missed"
    );

    // Stored: the misses and the new "not found"; not stored: the refused fill.
    let again = c.entries(keys).fetch(loader(&calls, 2)).await.unwrap();
    let seen: Vec<(Option<&str>, Status)> = again
        .iter()
        .map(|f| (f.value.as_deref(), f.status))
        .collect();
    assert_eq!(
        seen,
        [
            (Some("hit:1@0"), Status::Hit),
            (Some("miss:1@1"), Status::Hit),
            (None, Status::Hit),
            (Some("refused:1@2"), Status::Miss),
            (None, Status::Hit),
            (Some("miss:2@1"), Status::Hit),
        ]
    );
    assert_eq!(calls.all()[1], strings(&["refused:1"]));
    let plain: Vec<Option<String>> = c.get_many(keys).await.unwrap();
    assert_eq!(
        plain,
        [
            Some("hit:1@0".into()),
            Some("miss:1@1".into()),
            None,
            Some("refused:1@2".into()),
            None,
            Some("miss:2@1".into()),
        ]
    );
}

/// 500 batches at once over 40 keys, overlapping (each asks for 10 neighbouring keys, half of
/// them in reverse order), spread over two instances: every key is loaded exactly once, and
/// no batch waits for another forever (a batch waiting for the keys it follows before loading
/// those it leads would deadlock here).
async fn overlapping_batches_load_each_key_once(fx: Fx) {
    const TASKS: usize = 500;
    const KEYS: usize = 40;
    // Calls, leases and waits for another instance's fill bounded generously: the test is
    // about single-flight and leases, not about a machine too busy to answer 500 batches
    // within the default bounds.
    let caches: Vec<Cache> = (0..2)
        .map(|_| {
            fx.builder()
                .command_timeout(Duration::from_secs(5))
                .lease(Duration::from_secs(60))
                .lease_wait(Duration::from_secs(30))
                .build()
                .unwrap()
        })
        .collect();
    for c in &caches {
        let up = eventually(Duration::from_secs(10), || async {
            c.get_many::<u8, _, _>(["warm-up"]).await.is_ok()
        })
        .await;
        assert!(up, "the store did not answer");
    }
    let loads: Arc<Vec<AtomicUsize>> = Arc::new((0..KEYS).map(|_| AtomicUsize::new(0)).collect());
    let (arrived, all_asked) = tokio::sync::watch::channel(0usize);
    let arrived = Arc::new(arrived);
    let barrier = Arc::new(Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (c, loads, arrived, all_asked, barrier) = (
            caches[t % 2].clone(),
            loads.clone(),
            arrived.clone(),
            all_asked.clone(),
            barrier.clone(),
        );
        let mut mine: Vec<usize> = (0..10).map(|j| (t + j * 3) % KEYS).collect();
        if t % 2 == 1 {
            mine.reverse();
        }
        tasks.push(tokio::spawn(async move {
            let keys: Vec<String> = mine.iter().map(|i| format!("k:{i}")).collect();
            barrier.wait().await;
            arrived.send_modify(|n| *n += 1);
            let got = c
                .get_or_load_many(keys.clone(), move |asked: Vec<String>| {
                    let (loads, mut all_asked) = (loads.clone(), all_asked.clone());
                    async move {
                        for k in &asked {
                            let i: usize = k[2..].parse().unwrap();
                            loads[i].fetch_add(1, Ordering::SeqCst);
                        }
                        // Held until every batch has asked, so none can come after a fill.
                        all_asked.wait_for(|n| *n >= TASKS).await.unwrap();
                        Ok::<_, Never>(asked.into_iter().map(|k| (k.clone(), k)).collect())
                    }
                })
                .await
                .unwrap();
            assert_eq!(got, keys.into_iter().map(Some).collect::<Vec<_>>());
        }));
    }
    let all = async {
        for t in tasks {
            t.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(120), all)
        .await
        .expect("batches deadlocked");
    let counts: Vec<usize> = loads.iter().map(|l| l.load(Ordering::SeqCst)).collect();
    assert_eq!(counts, vec![1; KEYS], "loads per key");
}

/// A batch that leads some keys and follows others (another caller here is loading them)
/// calls its loader for the keys it leads at once, not after the keys it follows: two
/// batches overlapping on keys, each waiting for the other's before loading its own, would
/// wait for ever.
async fn a_batch_loads_its_keys_while_it_waits_for_others(fx: Fx) {
    let c = fx.cache();
    let calls = Calls::default();
    let (first, loading, go) = held(&calls, 1);
    let a = {
        let c = c.clone();
        tokio::spawn(async move { c.entries(["x"]).fetch(first).await.unwrap() })
    };
    loading.await.unwrap();
    // `x` is being loaded by the first batch, held until `go`.
    let (asked_tx, asked_rx) = oneshot::channel::<Vec<String>>();
    let asked_tx = Mutex::new(Some(asked_tx));
    let second = move |asked: Vec<String>| {
        if let Some(tx) = asked_tx.lock().unwrap().take() {
            tx.send(asked.clone()).unwrap();
        }
        let found = asked.into_iter().map(|k| (k.clone(), format!("{k}@2")));
        std::future::ready(Ok::<_, Never>(found.collect::<HashMap<_, _>>()))
    };
    let b = {
        let c = c.clone();
        tokio::spawn(async move { c.entries(["y", "x"]).fetch(second).await.unwrap() })
    };
    let asked = tokio::time::timeout(Duration::from_secs(30), asked_rx)
        .await
        .expect("the batch waited for the key it follows before loading the one it leads")
        .unwrap();
    assert_eq!(asked, strings(&["y"]));
    go.send(()).unwrap();
    let got = b.await.unwrap();
    let seen: Vec<Option<&str>> = got.iter().map(|f| f.value.as_deref()).collect();
    assert_eq!(
        seen,
        [Some("y@2"), Some("x@1")],
        "x came from the first batch's load"
    );
    assert_eq!(a.await.unwrap()[0].value.as_deref(), Some("x@1"));
}

/// A store that fails every call: the batch still answers, from the loader (one call for
/// every key), and stores nothing; a plain batch read says the store is down.
async fn a_failing_store_costs_the_batch_nothing(fx: Fx) {
    let chaos = Arc::new(ChaosStore::new(fx.store()));
    // A breaker that stays closed: the test is about what each failing call costs.
    let c = fx
        .builder()
        .store(chaos.clone())
        .breaker(1000, Duration::from_secs(1))
        .build()
        .unwrap();
    c.set("cached:1", &"cached:1@0").await.unwrap();
    chaos.fail(Failing::Everything);
    let calls = Calls::default();
    let keys = ["cached:1", "new:1", "missing:1"];
    let got = c.entries(keys).fetch(loader(&calls, 1)).await.unwrap();
    let seen: Vec<(Option<&str>, Status)> =
        got.iter().map(|f| (f.value.as_deref(), f.status)).collect();
    assert_eq!(
        seen,
        [
            (Some("cached:1@1"), Status::Miss),
            (Some("new:1@1"), Status::Miss),
            (None, Status::Miss),
        ]
    );
    assert_eq!(calls.all(), [strings(&keys)]);
    assert!(matches!(
        c.get_many::<String, _, _>(keys).await,
        Err(Error::Backend(_))
    ));
    chaos.fail(Failing::Nothing);
    assert_eq!(
        c.get_many::<String, _, _>(keys).await.unwrap(),
        [Some("cached:1@0".to_string()), None, None],
        "nothing was stored while the store failed"
    );
}

const TTL: Duration = Duration::from_secs(10);

/// Past their TTL, within stale-while-revalidate, the stale keys of a batch are served at
/// once and refreshed together in the background (one more loader call), while its misses
/// are loaded as usual.
async fn stale_keys_are_served_and_refreshed_together(fx: Fx) {
    let (b, clock) = fx.timed();
    let c = b
        .default_ttl(TTL)
        .stale_while_revalidate(Duration::from_secs(60))
        .build()
        .unwrap();
    let calls = Calls::default();
    c.entries(["s:1", "s:2"])
        .fetch(loader(&calls, 1))
        .await
        .unwrap();
    clock.advance(TTL + Duration::from_secs(1));
    let got = c
        .entries(["s:1", "new:1", "s:2"])
        .fetch(loader(&calls, 2))
        .await
        .unwrap();
    let seen: Vec<(Option<&str>, Status)> =
        got.iter().map(|f| (f.value.as_deref(), f.status)).collect();
    assert_eq!(
        seen,
        [
            (Some("s:1@1"), Status::Stale),
            (Some("new:1@2"), Status::Miss),
            (Some("s:2@1"), Status::Stale),
        ]
    );
    let refreshed = eventually(Duration::from_secs(10), || async {
        let now = c
            .entries(["s:1", "s:2"])
            .fetch(loader(&calls, 3))
            .await
            .unwrap();
        now.iter().all(|f| {
            f.status == Status::Hit && f.value.as_deref().is_some_and(|v| v.ends_with("@2"))
        })
    })
    .await;
    assert!(refreshed, "the refresh stored both keys");
    let mut calls = calls.all();
    calls[1..].sort();
    assert_eq!(
        calls,
        [
            strings(&["s:1", "s:2"]),
            strings(&["new:1"]),
            strings(&["s:1", "s:2"]),
        ],
        "the first load, the miss, one refresh for both stale keys"
    );
}

/// Past their TTL, within stale-if-error, keys whose load fails are served stale, each on its
/// own: a batch whose failing load also had a key with nothing to fall back on fails.
async fn stale_if_error_applies_per_key(fx: Fx) {
    let (b, clock) = fx.timed();
    let c = b
        .default_ttl(TTL)
        .stale_if_error(Duration::from_secs(3600))
        .build()
        .unwrap();
    let calls = Calls::default();
    c.entries(["e:1", "e:2"])
        .fetch(loader(&calls, 1))
        .await
        .unwrap();
    clock.advance(TTL + Duration::from_secs(1));
    let failing = |_: Vec<String>| async { Err::<HashMap<String, String>, _>("db down") };
    let got = c.entries(["e:1", "e:2"]).fetch(failing).await.unwrap();
    let seen: Vec<(Option<&str>, Status)> =
        got.iter().map(|f| (f.value.as_deref(), f.status)).collect();
    assert_eq!(
        seen,
        [
            (Some("e:1@1"), Status::Stale),
            (Some("e:2@1"), Status::Stale)
        ]
    );
    let e = c.entries(["e:1", "e:3"]).fetch(failing).await;
    assert!(
        matches!(&e, Err(LoadError::Loader(m)) if **m == "db down"),
        "{e:?}"
    );
}

/// A prefix invalidated while a batch loads refuses the fills of the keys under it only.
async fn an_invalidation_during_a_batch_refuses_its_keys_only(fx: Fx) {
    let c = fx.cache();
    let calls = Calls::default();
    let (held, loading_rx, go_tx) = held(&calls, 1);
    let keys = ["list:1", "item:1", "list:2", "item:2"];
    let batch = {
        let c = c.clone();
        tokio::spawn(async move { c.entries(keys).fetch(held).await.unwrap() })
    };
    loading_rx.await.unwrap();
    c.invalidate_prefix("list:").await.unwrap();
    go_tx.send(()).unwrap();
    let got = batch.await.unwrap();
    assert!(got.iter().all(|f| f.status == Status::Miss));
    assert_eq!(
        c.get_many::<String, _, _>(keys).await.unwrap(),
        [None, Some("item:1@1".into()), None, Some("item:2@1".into())],
        "only the keys under the prefix were refused"
    );
}

/// A key given twice is refused before anything runs; an empty batch is empty.
async fn bad_batches_are_refused(fx: Fx) {
    let c = fx.cache();
    let calls = Calls::default();
    let e = c.entries(["a", "b", "a"]).fetch(loader(&calls, 1)).await;
    assert!(
        matches!(e, Err(LoadError::Cache(Error::InvalidKey { .. }))),
        "{e:?}"
    );
    let e = c.entries(["a", ""]).fetch(loader(&calls, 1)).await;
    assert!(
        matches!(e, Err(LoadError::Cache(Error::InvalidKey { .. }))),
        "{e:?}"
    );
    let e = c
        .entries(["a"])
        .ttl(Duration::ZERO)
        .fetch(loader(&calls, 1))
        .await;
    assert!(
        matches!(e, Err(LoadError::Cache(Error::InvalidTtl(_)))),
        "{e:?}"
    );
    assert_eq!(calls.count(), 0, "the loader never ran");
    let none: Vec<String> = Vec::new();
    assert!(
        c.entries(none)
            .fetch(loader(&calls, 1))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(c.get_many::<u8, _, _>(["x", "x"]).await.is_err());
}

/// Encoded batches hand back the codec's bytes, tagged ones stamp each entry with the tags
/// learnt from its value.
async fn encoded_and_tagged_batches(fx: Fx) {
    let c = fx.cache();
    let got = c
        .entries(["p:1", "p:2"])
        .fetch_tagged_encoded(|asked: Vec<String>| async move {
            Ok::<_, Never>(
                asked
                    .into_iter()
                    .map(|k| {
                        let tag = format!("owner:{k}");
                        (k.clone(), aside::Tagged::found(vec![k.len()]).tag(tag))
                    })
                    .collect::<HashMap<_, _>>(),
            )
        })
        .await
        .unwrap();
    assert_eq!(got[0].value.as_deref(), Some(&b"[3]"[..]));
    c.invalidate_tag("owner:p:1").await.unwrap();
    assert_eq!(
        c.get_many::<Vec<usize>, _, _>(["p:1", "p:2"])
            .await
            .unwrap(),
        [None, Some(vec![3])],
        "the learnt tag invalidates its entry only"
    );
}

macro_rules! suite {
    ($store:ident, $fx:expr) => {
        mod $store {
            use super::*;
            #[tokio::test]
            async fn a_mixed_batch_makes_one_loader_call() {
                super::a_mixed_batch_makes_one_loader_call($fx).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn overlapping_batches_load_each_key_once() {
                super::overlapping_batches_load_each_key_once($fx).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_batch_loads_its_keys_while_it_waits_for_others() {
                super::a_batch_loads_its_keys_while_it_waits_for_others($fx).await
            }
            #[tokio::test]
            async fn a_failing_store_costs_the_batch_nothing() {
                super::a_failing_store_costs_the_batch_nothing($fx).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn stale_keys_are_served_and_refreshed_together() {
                super::stale_keys_are_served_and_refreshed_together($fx).await
            }
            #[tokio::test]
            async fn stale_if_error_applies_per_key() {
                super::stale_if_error_applies_per_key($fx).await
            }
            #[tokio::test]
            async fn an_invalidation_during_a_batch_refuses_its_keys_only() {
                super::an_invalidation_during_a_batch_refuses_its_keys_only($fx).await
            }
            #[tokio::test]
            async fn bad_batches_are_refused() {
                super::bad_batches_are_refused($fx).await
            }
            #[tokio::test]
            async fn encoded_and_tagged_batches() {
                super::encoded_and_tagged_batches($fx).await
            }
        }
    };
}

suite!(memory_store, Fx::memory());
suite!(redis_store, Fx::redis());
suite!(tiered_store, Fx::tiered().await);
suite!(cluster_store, Fx::cluster());
