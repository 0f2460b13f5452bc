//! One behaviour suite, run against every store: the in-process store (on a mock clock),
//! Redis (a private `redis-server` per test), Redis with an L1 in front (two instances, each
//! with its own L1, handed out in turn to the caches a test builds) and Redis Cluster (a
//! private three-node cluster, shared by the tests running at the same time, each in its own
//! namespace).
#![allow(clippy::unwrap_used)]

mod stores;

use aside::clock::MockClock;
use aside::{Cache, Error, Invalidation, LoadError, Status, Tagged};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use stores::{Backend, Fx};
use testkit::{counters, eventually};
use tokio::sync::{Barrier, oneshot};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Product {
    id: String,
    price: f64,
    tags: Vec<String>,
}

fn product(id: &str) -> Product {
    Product {
        id: id.into(),
        price: 9.99,
        tags: vec!["a".into()],
    }
}

type Never = std::convert::Infallible;

async fn falsy_values_are_hits(fx: Fx) {
    let c = fx.cache();
    c.set("zero", &0u32).await.unwrap();
    c.set("empty", &"").await.unwrap();
    c.set("false", &false).await.unwrap();
    c.set("none", &None::<u8>).await.unwrap();
    c.set("vec", &Vec::<u8>::new()).await.unwrap();
    c.set("map", &BTreeMap::<String, u8>::new()).await.unwrap();
    assert_eq!(c.get::<u32>("zero").await.unwrap(), Some(0));
    assert_eq!(c.get::<String>("empty").await.unwrap(), Some(String::new()));
    assert_eq!(c.get::<bool>("false").await.unwrap(), Some(false));
    assert_eq!(c.get::<Option<u8>>("none").await.unwrap(), Some(None));
    assert_eq!(c.get::<Vec<u8>>("vec").await.unwrap(), Some(vec![]));
    assert_eq!(
        c.get::<BTreeMap<String, u8>>("map").await.unwrap(),
        Some(BTreeMap::new())
    );

    // And through get_or_load: a falsy value is loaded once, then served as a hit.
    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..3 {
        let calls = calls.clone();
        let f = c
            .entry("count")
            .fetch(|| async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Never>(Some(0i64))
            })
            .await
            .unwrap();
        assert_eq!(f.value, Some(0));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(c.get::<i64>("count").await.unwrap(), Some(0));
}

async fn typed_round_trip_and_delete(fx: Fx) {
    let c = fx.cache();
    c.set("product:p1", &product("p1")).await.unwrap();
    c.set("product:p2", &product("p2")).await.unwrap();
    c.set("product:p3", &product("p3")).await.unwrap();
    assert_eq!(
        c.get::<Product>("product:p1").await.unwrap(),
        Some(product("p1"))
    );
    assert_eq!(
        c.del(["product:p1", "product:p2"]).await.unwrap(),
        Invalidation::Applied
    );
    assert_eq!(
        c.del(Vec::<String>::new()).await.unwrap(),
        Invalidation::Applied
    );
    assert_eq!(c.get::<Product>("product:p1").await.unwrap(), None);
    assert_eq!(c.get::<Product>("product:p2").await.unwrap(), None);
    assert_eq!(
        c.get::<Product>("product:p3").await.unwrap(),
        Some(product("p3"))
    );
}

async fn entries_expire_and_default_ttl_applies(fx: Fx) {
    let short = fx.short();
    let c = fx.builder().default_ttl(short).build().unwrap();
    c.set("k", &1u8).await.unwrap();
    c.entry("long")
        .ttl(Duration::from_secs(3600))
        .set(&2u8)
        .await
        .unwrap();
    assert_eq!(c.get::<u8>("k").await.unwrap(), Some(1));
    fx.expire("k", short).await;
    assert_eq!(c.get::<u8>("k").await.unwrap(), None, "default TTL applies");
    assert_eq!(
        c.get::<u8>("long").await.unwrap(),
        Some(2),
        "per-call TTL applies"
    );
}

async fn negative_results_are_cached_for_the_negative_ttl(fx: Fx) {
    let short = fx.short();
    let c = fx.builder().negative_ttl(short).build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let load = || {
        let calls = calls.clone();
        || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<Option<Product>, Never>(None)
        }
    };
    for _ in 0..5 {
        assert_eq!(
            c.get_or_load("product:missing", load()).await.unwrap(),
            None
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "a 'not found' is cached");
    let f = c.entry("product:missing").fetch(load()).await.unwrap();
    assert_eq!((f.value, f.status), (None, Status::Hit));
    fx.expire("product:missing", short).await;
    c.get_or_load("product:missing", load()).await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "and loaded again once it expired"
    );
}

/// 500 tasks released together onto one cold key: one loader call. With `instances` > 1 the
/// tasks are spread over that many `Cache`s sharing the store (the lease across processes).
async fn one_load_for_a_stampede(fx: Fx, instances: usize) {
    const TASKS: usize = 500;
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let caches: Vec<Cache> =
        metrics::with_local_recorder(&recorder, || (0..instances).map(|_| fx.cache()).collect());
    // Connected first: the stampede is about single-flight, not about a first command that
    // opens the connection (and may time out on a busy machine, every task then loading).
    for c in &caches {
        let up = eventually(Duration::from_secs(10), || async {
            c.get::<Product>("product:warm-up").await.is_ok()
        })
        .await;
        assert!(up, "the store did not answer");
    }
    let barrier = Arc::new(Barrier::new(TASKS));
    let arrived = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..TASKS {
        let (c, barrier, arrived, calls) = (
            caches[i % instances].clone(),
            barrier.clone(),
            arrived.clone(),
            calls.clone(),
        );
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            arrived.fetch_add(1, Ordering::SeqCst);
            c.get_or_load("product:hot", || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                // Hold the load until every task has asked, so none can arrive after it.
                while arrived.load(Ordering::SeqCst) < TASKS {
                    tokio::task::yield_now().await;
                }
                Ok::<_, Never>(Some(product("hot")))
            })
            .await
            .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), Some(product("hot")));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // In-process single-flight: one lease request per instance, give or take the tasks that
    // read before the fill and asked after its flight ended (they find the value; on a busy
    // machine a few dozen). Without single-flight every one of the 500 tasks would ask.
    let claims: usize = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, ..)| {
            k.key().name() == "aside_backend_seconds"
                && k.key().labels().any(|l| l.value() == "claim")
        })
        .map(|(.., v)| match v {
            metrics_util::debugging::DebugValue::Histogram(h) => h.len(),
            _ => 0,
        })
        .sum();
    assert!(
        (1..=instances + 50).contains(&claims),
        "{claims} lease requests from {instances} instance(s)"
    );
}

async fn loader_errors_are_shared_and_not_cached(fx: Fx) {
    #[derive(Debug)]
    struct DbDown;
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snap = Arc::new(recorder.snapshotter());
    let c = metrics::with_local_recorder(&recorder, || fx.cache());
    let barrier = Arc::new(Barrier::new(20));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (c, barrier, snap, calls) = (c.clone(), barrier.clone(), snap.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            c.get_or_load::<u8, _, _, _>("k", || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                // Hold the load until every task has missed: a miss is counted right before
                // the task joins the flight, with nothing to wait for in between, so none can
                // arrive after the error. (A snapshot takes the counts since the last one.)
                let mut misses = 0;
                loop {
                    misses += counters(&snap)("aside_misses_total");
                    if misses >= 20 {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                Err(DbDown)
            })
            .await
        }));
    }
    let mut errors = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Err(LoadError::Loader(e)) => errors.push(e),
            other => panic!("expected the loader's error, got {other:?}"),
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(
        errors.iter().all(|e| Arc::ptr_eq(e, &errors[0])),
        "one error, shared"
    );
    let v = c
        .get_or_load("k", || async { Ok::<_, DbDown>(Some(7u8)) })
        .await
        .unwrap();
    assert_eq!(v, Some(7), "a failure is not cached");
}

/// The stale-set race: a load reads the old row, the key is invalidated, the load finishes.
/// Its value goes back to its caller but must never be written.
async fn a_load_older_than_an_invalidation_is_not_written(fx: Fx, how: &str) {
    let c = fx.cache();
    let (read_tx, read_rx) = oneshot::channel();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let loader = {
        let c = c.clone();
        tokio::spawn(async move {
            c.entry("products:list:1:20")
                .tags(["category:c1"])
                .get_or_load(|| async move {
                    read_tx.send(()).unwrap(); // the old row has been read
                    go_rx.await.unwrap(); // held between its read and its write
                    Ok::<_, Never>(Some("old".to_string()))
                })
                .await
                .unwrap()
        })
    };
    read_rx.await.unwrap();
    match how {
        "del" => c.del(["products:list:1:20"]).await.unwrap(),
        "tag" => c.invalidate_tag("category:c1").await.unwrap(),
        "prefix" => c.invalidate_prefix("products:list:").await.unwrap(),
        "set" => {
            c.set("products:list:1:20", &"new").await.unwrap();
            Invalidation::Applied
        }
        _ => unreachable!(),
    };
    go_tx.send(()).unwrap();
    assert_eq!(
        loader.await.unwrap().as_deref(),
        Some("old"),
        "the caller still gets its value"
    );
    let now = c.get::<String>("products:list:1:20").await.unwrap();
    let expected = if how == "set" {
        Some("new".to_string())
    } else {
        None
    };
    assert_eq!(now, expected, "the old value was not written ({how})");
    // The next read loads the new value and caches it.
    let v = c
        .get_or_load("products:list:1:20", || async {
            Ok::<_, Never>(Some("new".to_string()))
        })
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("new"));
}

async fn a_tag_invalidates_entries_whatever_their_ttls(fx: Fx) {
    let short = fx.short();
    let c = fx.cache();
    c.entry("long")
        .ttl(Duration::from_secs(3600))
        .tags(["t", "u"])
        .set(&1u8)
        .await
        .unwrap();
    c.entry("short")
        .ttl(short)
        .tag("t")
        .set(&2u8)
        .await
        .unwrap();
    c.entry("other")
        .ttl(Duration::from_secs(3600))
        .tag("u")
        .set(&3u8)
        .await
        .unwrap();
    fx.expire("short", short).await;
    assert_eq!(c.get::<u8>("long").await.unwrap(), Some(1));
    c.invalidate_tag("t").await.unwrap();
    assert_eq!(
        c.get::<u8>("long").await.unwrap(),
        None,
        "the 1 h entry is invalidated"
    );
    assert_eq!(
        c.get::<u8>("other").await.unwrap(),
        Some(3),
        "other tags are untouched"
    );
    c.invalidate_tags(["u"]).await.unwrap();
    assert_eq!(c.get::<u8>("other").await.unwrap(), None);
    // Invalidating a tag nothing carries is fine, and later entries with it are valid.
    c.invalidate_tag("nobody").await.unwrap();
    c.entry("later").tag("t").set(&4u8).await.unwrap();
    assert_eq!(c.get::<u8>("later").await.unwrap(), Some(4));
}

/// An entry still stored but invalidated (by a tag, a prefix or the epoch) is replaced by the
/// next load, which is cached again, not left in the way.
async fn invalidated_entries_are_replaced_by_the_next_load(fx: Fx) {
    let c = fx
        .builder()
        .lease_wait(Duration::from_secs(30))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    for how in ["tag", "prefix", "all"] {
        let load = || {
            let calls = calls.clone();
            || async move { Ok::<_, Never>(Some(calls.fetch_add(1, Ordering::SeqCst))) }
        };
        let key = "products:list:1";
        c.entry(key).tag("t").get_or_load(load()).await.unwrap();
        match how {
            "tag" => drop(c.invalidate_tag("t").await.unwrap()),
            "prefix" => drop(c.invalidate_prefix("products:").await.unwrap()),
            _ => drop(c.invalidate_all().await),
        }
        let next = calls.load(Ordering::SeqCst);
        let v = c.entry(key).tag("t").get_or_load(load()).await.unwrap();
        assert_eq!(v, Some(next), "{how}: loaded again");
        assert_eq!(
            c.entry(key).tag("t").get::<usize>().await.unwrap(),
            Some(next),
            "{how}: and cached again"
        );
    }
}

async fn a_prefix_invalidates_only_keys_under_it(fx: Fx) {
    let c = fx.cache();
    for k in [
        "products:list:1:20",
        "products:list:2:20",
        "products:listing",
        "product:p1",
        "products:x",
    ] {
        c.set(k, &k).await.unwrap();
    }
    c.invalidate_prefix("products:list:").await.unwrap();
    assert_eq!(c.get::<String>("products:list:1:20").await.unwrap(), None);
    assert_eq!(c.get::<String>("products:list:2:20").await.unwrap(), None);
    for k in ["products:listing", "product:p1", "products:x"] {
        assert_eq!(
            c.get::<String>(k).await.unwrap().as_deref(),
            Some(k),
            "{k} untouched"
        );
    }
    c.invalidate_prefix("products:").await.unwrap();
    assert_eq!(c.get::<String>("products:x").await.unwrap(), None);
    assert_eq!(
        c.get::<String>("product:p1").await.unwrap().as_deref(),
        Some("product:p1")
    );
    assert!(matches!(
        c.invalidate_prefix("products").await,
        Err(Error::InvalidPrefix(_))
    ));
    assert!(matches!(
        c.invalidate_prefix("a:b:c:d:e:").await,
        Err(Error::InvalidPrefix(_))
    ));
    c.invalidate_all().await;
    assert_eq!(
        c.get::<String>("product:p1").await.unwrap(),
        None,
        "invalidate_all"
    );
}

async fn incompatible_entries_are_misses_removed_and_counted(fx: Fx) {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let old = fx.builder().schema_version(1).build().unwrap();
    let new = metrics::with_local_recorder(&recorder, || {
        fx.builder().schema_version(2).build().unwrap()
    });
    old.set("product:p1", &product("p1")).await.unwrap();
    old.set("product:p2", &"not a product").await.unwrap();
    assert_eq!(
        new.get::<Product>("product:p1").await.unwrap(),
        None,
        "another schema is a miss"
    );
    assert_eq!(
        old.get::<Product>("product:p1").await.unwrap(),
        None,
        "and was removed"
    );
    assert_eq!(new.get::<Product>("product:p2").await.unwrap(), None);
    let v = old
        .get_or_load("product:p2", || async {
            Ok::<_, Never>(Some(product("p2")))
        })
        .await
        .unwrap();
    assert_eq!(
        v,
        Some(product("p2")),
        "an undecodable value is reloaded, not an error"
    );
    let corrupt = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(k, ..)| k.key().name() == "aside_corrupt_total")
        .map(|(.., v)| v);
    assert!(
        matches!(
            corrupt,
            Some(metrics_util::debugging::DebugValue::Counter(2))
        ),
        "counted: {corrupt:?}"
    );
}

async fn bad_input_is_an_error_and_changes_nothing(fx: Fx) {
    let c = fx.cache();
    assert!(matches!(
        c.get::<u8>("").await,
        Err(Error::InvalidKey { .. })
    ));
    assert!(matches!(
        c.set(&"k".repeat(1025), &1u8).await,
        Err(Error::InvalidKey { .. })
    ));
    assert!(matches!(
        c.entry("k").ttl(Duration::ZERO).set(&1u8).await,
        Err(Error::InvalidTtl(_))
    ));
    assert!(matches!(
        c.entry("k").tag("").set(&1u8).await,
        Err(Error::InvalidKey { .. })
    ));
    assert!(matches!(
        c.del(["ok", ""]).await,
        Err(Error::InvalidKey { .. })
    ));
    assert!(matches!(
        c.invalidate_tag("").await,
        Err(Error::InvalidKey { .. })
    ));
    let r = c
        .get_or_load("", || async { Ok::<_, Never>(Some(1u8)) })
        .await;
    assert!(matches!(r, Err(LoadError::Cache(Error::InvalidKey { .. }))));
    assert_eq!(c.get::<u8>("k").await.unwrap(), None, "nothing was written");
    // Glob and separator characters are plain characters in a key.
    c.set("a*", &1u8).await.unwrap();
    c.set("a?b[c]{d} e\n", &2u8).await.unwrap();
    assert_eq!(c.get::<u8>("ab").await.unwrap(), None);
    assert_eq!(c.get::<u8>("a*").await.unwrap(), Some(1));
    assert_eq!(c.get::<u8>("a?b[c]{d} e\n").await.unwrap(), Some(2));
    assert!(Cache::builder().namespace("a:b").build().is_err());
    assert!(Cache::builder().jitter(0.9).build().is_err());
    for beta in [-1.0, 11.0, f64::NAN] {
        assert!(
            Cache::builder().early_refresh(beta).build().is_err(),
            "early_refresh({beta})"
        );
    }
    assert!(
        Cache::builder()
            .default_ttl(Duration::ZERO)
            .build()
            .is_err()
    );
}

async fn namespaces_are_isolated(fx: Fx) {
    let a = fx.cache();
    let b = fx
        .builder()
        .namespace(format!("{}x", fx.ns))
        .build()
        .unwrap();
    a.set("k", &1u8).await.unwrap();
    assert_eq!(b.get::<u8>("k").await.unwrap(), None);
    b.set("k", &2u8).await.unwrap();
    b.invalidate_all().await;
    assert_eq!(a.get::<u8>("k").await.unwrap(), Some(1));
}

async fn jitter_spreads_expiry(fx: Fx) {
    let Backend::Memory { clock, .. } = &fx.backend else {
        unreachable!("the Redis variant reads TTLs directly (redis_only.rs)")
    };
    let c = fx.builder().jitter(0.5).build().unwrap();
    for i in 0..64 {
        c.entry(&i.to_string())
            .ttl(Duration::from_secs(100))
            .set(&i)
            .await
            .unwrap();
    }
    clock.advance(Duration::from_secs(75));
    let mut alive = 0;
    for i in 0..64 {
        alive += c.get::<i32>(&i.to_string()).await.unwrap().is_some() as usize;
    }
    assert!(
        alive > 0 && alive < 64,
        "{alive} of 64 alive after 3/4 of the TTL"
    );
    clock.advance(Duration::from_secs(26));
    assert_eq!(
        c.get::<i32>("0").await.unwrap(),
        None,
        "nothing outlives its TTL"
    );
}

async fn counters_tell_hits_misses_and_loads(fx: Fx) {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let c = metrics::with_local_recorder(&recorder, || fx.cache());
    let load = || async { Ok::<_, &str>(Some(1u8)) };
    c.get_or_load("a", load).await.unwrap(); // miss + load
    c.get_or_load("a", load).await.unwrap(); // hit
    c.get::<u8>("a").await.unwrap(); // hit
    c.get::<u8>("b").await.unwrap(); // miss
    let _ = c
        .get_or_load::<u8, _, _, _>("c", || async { Err("boom") })
        .await; // miss + load error
    let values: std::collections::HashMap<String, u64> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(k, _, _, v)| match v {
            metrics_util::debugging::DebugValue::Counter(n) => {
                Some((k.key().name().to_string(), n))
            }
            _ => None,
        })
        .collect();
    assert_eq!(values["aside_hits_total"], 2);
    assert_eq!(values["aside_misses_total"], 3);
    assert_eq!(values["aside_loads_total"], 2);
    assert_eq!(values["aside_load_errors_total"], 1);
    assert_eq!(values["aside_backend_errors_total"], 0);
}

async fn encoded_values_are_the_codec_bytes(fx: Fx) {
    let c = fx.cache();
    let calls = Arc::new(AtomicUsize::new(0));
    let load = || {
        let calls = calls.clone();
        || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Never>(Some(product("p1")))
        }
    };
    let first = c
        .entry("product:p1")
        .tag("category:c1")
        .fetch_encoded(load())
        .await
        .unwrap();
    let again = c
        .entry("product:p1")
        .tag("category:c1")
        .fetch_encoded(load())
        .await
        .unwrap();
    assert_eq!((first.status, again.status), (Status::Miss, Status::Hit));
    let bytes = first.value.unwrap();
    assert_eq!(bytes, serde_json::to_vec(&product("p1")).unwrap());
    assert_eq!(again.value.unwrap(), bytes);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The typed and the encoded forms read the same entry.
    assert_eq!(
        c.get::<Product>("product:p1").await.unwrap(),
        Some(product("p1"))
    );
    let missing = c
        .entry("product:none")
        .fetch_encoded(|| async { Ok::<Option<Product>, Never>(None) })
        .await
        .unwrap();
    assert_eq!(missing.value, None);
    c.invalidate_tag("category:c1").await.unwrap();
    let reloaded = c
        .entry("product:p1")
        .tag("category:c1")
        .fetch_encoded(load())
        .await
        .unwrap();
    assert_eq!(
        (reloaded.status, calls.load(Ordering::SeqCst)),
        (Status::Miss, 2)
    );
}

async fn tags_learnt_from_the_value(fx: Fx) {
    let c = fx.cache();
    let calls = Arc::new(AtomicUsize::new(0));
    let load = || {
        let calls = calls.clone();
        || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Never>(Tagged::found(product("p1")).tag("category:c7"))
        }
    };
    let first = c.entry("product:p1").fetch_tagged(load()).await.unwrap();
    let again = c.entry("product:p1").fetch_tagged(load()).await.unwrap();
    assert_eq!((first.status, again.status), (Status::Miss, Status::Hit));
    assert_eq!(again.value, Some(product("p1")));
    c.invalidate_tag("category:other").await.unwrap();
    assert_eq!(
        c.get::<Product>("product:p1").await.unwrap(),
        Some(product("p1")),
        "other tags do not matter"
    );
    c.invalidate_tag("category:c7").await.unwrap();
    assert_eq!(
        c.get::<Product>("product:p1").await.unwrap(),
        None,
        "the learnt tag invalidates it"
    );
    let bytes = c
        .entry("product:p1")
        .fetch_tagged_encoded(load())
        .await
        .unwrap();
    assert_eq!(
        bytes.value.unwrap(),
        serde_json::to_vec(&product("p1")).unwrap()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let bad = c
        .entry("product:p2")
        .fetch_tagged(|| async { Ok::<_, Never>(Tagged::found(1u8).tag("")) })
        .await;
    assert!(
        matches!(bad, Err(LoadError::Cache(Error::InvalidKey { .. }))),
        "{bad:?}"
    );
    assert_eq!(
        c.get::<u8>("product:p2").await.unwrap(),
        None,
        "nothing stored"
    );
}

/// The stale-set race for a tag known only after the load: the product is read in category
/// c1 with its old name, category c1 is renamed, then the load finishes.
async fn a_load_older_than_an_invalidation_of_a_learnt_tag_is_not_written(fx: Fx) {
    let c = fx.cache();
    let (read_tx, read_rx) = oneshot::channel();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let loader = {
        let c = c.clone();
        tokio::spawn(async move {
            c.entry("product:p1")
                .fetch_tagged(|| async move {
                    read_tx.send(()).unwrap();
                    go_rx.await.unwrap();
                    Ok::<_, Never>(Tagged::found("old name".to_string()).tag("category:c1"))
                })
                .await
                .unwrap()
        })
    };
    read_rx.await.unwrap();
    c.invalidate_tag("category:c1").await.unwrap();
    go_tx.send(()).unwrap();
    assert_eq!(loader.await.unwrap().value.as_deref(), Some("old name"));
    assert_eq!(
        c.get::<String>("product:p1").await.unwrap(),
        None,
        "the old name was not written"
    );
}

/// What an invalidation made while a product with a learnt tag is being loaded does to its
/// fill: `invalidate` runs between the load's read of the row and its end; the fill must be
/// stored exactly when `stored` says.
async fn a_learnt_tag_fill_during(fx: Fx, stored: bool, invalidate: &str) {
    let c = fx.cache();
    let other = fx.cache();
    let (read_tx, read_rx) = oneshot::channel();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let loader = {
        let c = c.clone();
        tokio::spawn(async move {
            c.entry("product:p250")
                .fetch_tagged(|| async move {
                    read_tx.send(()).unwrap();
                    go_rx.await.unwrap();
                    Ok::<_, Never>(Tagged::found("Product 250".to_string()).tag("category:c10"))
                })
                .await
                .unwrap()
        })
    };
    read_rx.await.unwrap();
    let ns = aside::key::Namespace::new(&fx.ns).unwrap();
    let shard = |t: &str| ns.tag(t).unwrap().clock_shard();
    match invalidate {
        // A writer of another product, through another instance, in a loop: its key and
        // every list page.
        "other product" => {
            for _ in 0..20 {
                other.del(["product:p1"]).await.unwrap();
                other.invalidate_prefix("products:list:").await.unwrap();
            }
        }
        // A tag of another entry, in another clock shard than the learnt one.
        "other tag" => {
            let tag = (0..)
                .map(|i| format!("category:x{i}"))
                .find(|t| shard(t) != shard("category:c10"))
                .unwrap();
            other.invalidate_tag(&tag).await.unwrap();
        }
        "the learnt tag" => drop(other.invalidate_tag("category:c10").await.unwrap()),
        "the epoch" => drop(other.invalidate_all().await),
        _ => unreachable!(),
    }
    go_tx.send(()).unwrap();
    assert_eq!(loader.await.unwrap().value.as_deref(), Some("Product 250"));
    let now = c.get::<String>("product:p250").await.unwrap();
    assert_eq!(
        now.is_some(),
        stored,
        "after invalidating {invalidate} during the load, stored: {:?}",
        now
    );
}

/// Misses and lease requests counted since the last snapshot of `snap` (a snapshot drains
/// what it reads).
fn misses_and_claims(snap: &metrics_util::debugging::Snapshotter) -> (u64, usize) {
    let (mut misses, mut claims) = (0, 0);
    for (k, _, _, v) in snap.snapshot().into_vec() {
        match v {
            metrics_util::debugging::DebugValue::Counter(n)
                if k.key().name() == "aside_misses_total" =>
            {
                misses += n
            }
            metrics_util::debugging::DebugValue::Histogram(h)
                if k.key().name() == "aside_backend_seconds"
                    && k.key().labels().any(|l| l.value() == "claim") =>
            {
                claims += h.len()
            }
            _ => {}
        }
    }
    (misses, claims)
}

/// An invalidation of other keys through this instance does not stop callers from joining a
/// load of this key: one lease request, one load, for both.
async fn an_invalidation_of_other_keys_leaves_a_load_joinable(fx: Fx) {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let c = metrics::with_local_recorder(&recorder, || fx.cache());
    let calls = Arc::new(AtomicUsize::new(0));
    let (read_tx, read_rx) = oneshot::channel();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let leader = {
        let (c, calls) = (c.clone(), calls.clone());
        tokio::spawn(async move {
            c.get_or_load("product:p1", move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                read_tx.send(()).unwrap();
                go_rx.await.unwrap();
                Ok::<_, Never>(Some(1u8))
            })
            .await
            .unwrap()
        })
    };
    read_rx.await.unwrap();
    c.del(["product:p2"]).await.unwrap();
    c.invalidate_prefix("products:list:").await.unwrap();
    let follower = {
        let (c, calls) = (c.clone(), calls.clone());
        tokio::spawn(async move {
            c.get_or_load("product:p1", move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Never>(Some(2u8))
            })
            .await
            .unwrap()
        })
    };
    // A miss is counted right before the caller joins the flight (see above).
    let (mut misses, mut claims) = (0, 0);
    while misses < 2 {
        tokio::task::yield_now().await;
        let (m, c) = misses_and_claims(&snap);
        (misses, claims) = (misses + m, claims + c);
    }
    go_tx.send(()).unwrap();
    assert_eq!(leader.await.unwrap(), Some(1));
    assert_eq!(
        follower.await.unwrap(),
        Some(1),
        "the follower joined the load"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    claims += misses_and_claims(&snap).1;
    assert_eq!(claims, 1, "one lease request between them");
}

// ---- stale-while-revalidate and stale-if-error ----

type Counted = std::pin::Pin<Box<dyn Future<Output = Result<Option<u64>, Never>> + Send>>;

/// A loader returning the number of loads started so far (1, 2, ...), waiting for a permit
/// of `gate` (when one is given) between counting and returning.
fn counting(
    calls: &Arc<AtomicUsize>,
    gate: Option<&Arc<tokio::sync::Semaphore>>,
) -> impl FnOnce() -> Counted + Send + 'static {
    let (calls, gate) = (calls.clone(), gate.cloned());
    move || {
        Box::pin(async move {
            let n = calls.fetch_add(1, Ordering::SeqCst) as u64 + 1;
            if let Some(g) = gate {
                g.acquire().await.unwrap().forget();
            }
            Ok(Some(n))
        })
    }
}

#[derive(Debug)]
struct DbDown;

fn failing() -> impl FnOnce() -> std::future::Ready<Result<Option<u64>, DbDown>> + Send + 'static {
    || std::future::ready(Err(DbDown))
}

const TTL: Duration = Duration::from_secs(10);

async fn stale_values_are_served_while_one_refresh_runs(fx: Fx) {
    let (b, clock) = fx.timed();
    let b = b
        .default_ttl(TTL)
        .stale_while_revalidate(Duration::from_secs(60));
    // Two instances sharing the store: the refresh lease is what keeps the second from
    // refreshing too.
    let (a, other) = (b.build().unwrap(), fx.timed_twin(&clock));
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let first = a.entry("k").fetch(counting(&calls, None)).await.unwrap();
    assert_eq!((first.value, first.status), (Some(1), Status::Miss));
    let hit = a.entry("k").fetch(counting(&calls, None)).await.unwrap();
    assert_eq!((hit.value, hit.status), (Some(1), Status::Hit), "fresh");

    clock.advance(TTL + Duration::from_secs(1));
    for c in [&a, &other, &a, &other] {
        let f = c
            .entry("k")
            .fetch(counting(&calls, Some(&gate)))
            .await
            .unwrap();
        assert_eq!(
            (f.value, f.status),
            (Some(1), Status::Stale),
            "served at once"
        );
    }
    assert_eq!(
        a.get::<u64>("k").await.unwrap(),
        Some(1),
        "get serves it too"
    );
    // One refresh is running, held at the gate.
    assert!(
        eventually(Duration::from_secs(5), || async {
            calls.load(Ordering::SeqCst) == 2
        })
        .await
    );
    gate.add_permits(10);
    let refreshed = eventually(Duration::from_secs(5), || async {
        let f = a.entry("k").fetch(counting(&calls, None)).await.unwrap();
        f.value == Some(2)
    })
    .await;
    assert!(refreshed, "the refresh stored its value");
    // The other instance too (with an L1, once the refresh's invalidation message arrived).
    let fresh = eventually(Duration::from_secs(5), || async {
        let f = other
            .entry("k")
            .fetch(counting(&calls, None))
            .await
            .unwrap();
        (f.value, f.status) == (Some(2), Status::Hit)
    })
    .await;
    assert!(fresh, "fresh again");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one refresh for four stale reads"
    );
}

impl Fx {
    /// A second cache on the same store and namespace, on the same mock clock.
    fn timed_twin(&self, clock: &MockClock) -> Cache {
        let b = match &self.backend {
            Backend::Memory { .. } => self.builder(),
            Backend::Redis(_) | Backend::Tiered { .. } | Backend::Cluster(_) => {
                self.builder().clock(Arc::new(clock.clone()))
            }
        };
        b.default_ttl(TTL)
            .stale_while_revalidate(Duration::from_secs(60))
            .build()
            .unwrap()
    }
}

async fn stale_values_are_served_when_the_loader_fails(fx: Fx) {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (b, clock) = fx.timed();
    let grace = Duration::from_secs(3600);
    let c = metrics::with_local_recorder(&recorder, || {
        b.default_ttl(TTL).stale_if_error(grace).build().unwrap()
    });
    let calls = Arc::new(AtomicUsize::new(0));
    c.entry("k").fetch(counting(&calls, None)).await.unwrap();
    // Fresh: the loader is not asked, so its failure does not matter.
    let f = c.entry("k").fetch(failing()).await.unwrap();
    assert_eq!((f.value, f.status), (Some(1), Status::Hit));

    clock.advance(TTL + Duration::from_secs(1));
    let f = c.entry("k").fetch(failing()).await.unwrap();
    assert_eq!(
        (f.value, f.status),
        (Some(1), Status::Stale),
        "the old value instead of the error"
    );
    assert_eq!(
        c.get::<u64>("k").await.unwrap(),
        None,
        "past its TTL, get does not serve it"
    );
    // Past its TTL the loader is asked every time, and its value replaces the old one.
    let f = c.entry("k").fetch(counting(&calls, None)).await.unwrap();
    assert_eq!((f.value, f.status), (Some(2), Status::Miss));
    let f = c.entry("k").fetch(failing()).await.unwrap();
    assert_eq!((f.value, f.status), (Some(2), Status::Hit));

    // Beyond the grace period the error is the caller's.
    clock.advance(TTL + grace);
    let e = c.entry("k").fetch(failing()).await;
    assert!(matches!(e, Err(LoadError::Loader(_))), "{e:?}");
    assert_eq!(
        counters(&snapshotter)("aside_stale_total"),
        1,
        "stale values served are counted"
    );
}

async fn invalidated_entries_are_never_served_stale(fx: Fx) {
    let (b, clock) = fx.timed();
    let c = b
        .default_ttl(TTL)
        .stale_while_revalidate(Duration::from_secs(60))
        .stale_if_error(Duration::from_secs(3600))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    for (key, how) in [
        ("d:1", "del"),
        ("t:1", "tag"),
        ("p:x:1", "prefix"),
        ("a:1", "all"),
    ] {
        c.entry(key)
            .tag("t")
            .fetch(counting(&calls, None))
            .await
            .unwrap();
        match how {
            "del" => c.del([key]).await.map(|_| ()).unwrap(),
            "tag" => c.invalidate_tag("t").await.map(|_| ()).unwrap(),
            "prefix" => c.invalidate_prefix("p:x:").await.map(|_| ()).unwrap(),
            _ => drop(c.invalidate_all().await),
        }
        for age in [Duration::ZERO, TTL + Duration::from_secs(1)] {
            clock.advance(age);
            let e = c.entry(key).tag("t").fetch(failing()).await;
            assert!(
                matches!(e, Err(LoadError::Loader(_))),
                "{how}: {e:?} after {age:?}"
            );
        }
    }
}

async fn a_refresh_older_than_an_invalidation_is_not_written(fx: Fx, how: &str) {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (b, clock) = fx.timed();
    let c = metrics::with_local_recorder(&recorder, || {
        b.default_ttl(TTL)
            .stale_while_revalidate(Duration::from_secs(60))
            .build()
            .unwrap()
    });
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    c.entry("k").fetch(counting(&calls, None)).await.unwrap();
    clock.advance(TTL + Duration::from_secs(1));
    let f = c
        .entry("k")
        .fetch(counting(&calls, Some(&gate)))
        .await
        .unwrap();
    assert_eq!(f.status, Status::Stale);
    // The refresh has started its load (it waits at the gate): now invalidate, then let it go.
    assert!(
        eventually(Duration::from_secs(5), || async {
            calls.load(Ordering::SeqCst) == 2
        })
        .await
    );
    match how {
        "del" => drop(c.del(["k"]).await.unwrap()),
        _ => c.set("k", &100u64).await.unwrap(),
    }
    gate.add_permits(1);
    let refused = eventually(Duration::from_secs(5), || async {
        counters(&snapshotter)("aside_fills_refused_total") == 1
    })
    .await;
    let expected = if how == "del" { None } else { Some(100) };
    assert_eq!(
        c.get::<u64>("k").await.unwrap(),
        expected,
        "{how}: the refresh must not overwrite it"
    );
    assert!(refused, "{how}: the refresh's fill was refused");
}

/// A read that begins after a write was acknowledged through another instance must not be
/// handed the value of a load that began before the write, even by joining that load in
/// process: its fill is refused, so it is not for callers that joined after it began.
async fn a_follower_after_a_write_elsewhere_gets_the_new_value(fx: Fx) {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let reader = metrics::with_local_recorder(&recorder, || fx.cache());
    let writer = fx.cache();
    let db = Arc::new(AtomicUsize::new(1));
    let (read_tx, read_rx) = oneshot::channel();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let leader = {
        let (reader, db) = (reader.clone(), db.clone());
        tokio::spawn(async move {
            reader
                .entry("k")
                .fetch(move || async move {
                    let v = db.load(Ordering::SeqCst);
                    read_tx.send(()).unwrap(); // the old row has been read
                    go_rx.await.unwrap();
                    Ok::<_, Never>(Some(v))
                })
                .await
                .unwrap()
        })
    };
    read_rx.await.unwrap();
    // The write: committed, then invalidated through the other instance, then acknowledged.
    db.store(2, Ordering::SeqCst);
    assert_eq!(writer.del(["k"]).await.unwrap(), Invalidation::Applied);
    // A read that begins now, on the reader's instance, while its load of the old row runs.
    let follower = {
        let (reader, db) = (reader.clone(), db.clone());
        tokio::spawn(async move {
            reader
                .entry("k")
                .fetch(move || async move { Ok::<_, Never>(Some(db.load(Ordering::SeqCst))) })
                .await
                .unwrap()
        })
    };
    // A miss is counted right before the caller joins the flight, with nothing to wait for
    // in between: once the second miss is counted, the follower waits on the leader.
    let count = counters(&snap);
    let mut misses = count("aside_misses_total");
    while misses < 2 {
        tokio::task::yield_now().await;
        misses += counters(&snap)("aside_misses_total");
    }
    go_tx.send(()).unwrap();
    let old = leader.await.unwrap();
    assert_eq!(old.value, Some(1), "the leader gets the row it read");
    let new = follower.await.unwrap();
    assert_eq!(
        new.value,
        Some(2),
        "a read that began after the write never gets the value it replaced"
    );
    assert_eq!(reader.get::<usize>("k").await.unwrap(), Some(2));
}

/// A fetch whose future is dropped while it holds the lease gives the lease back, so another
/// instance loads and fills at once instead of waiting for a lease nobody will fill.
async fn a_dropped_fetch_gives_its_lease_back(fx: Fx) {
    let first = fx.cache();
    let other = fx
        .builder()
        .lease_wait(Duration::from_millis(300))
        .build()
        .unwrap();
    let (started_tx, started_rx) = oneshot::channel();
    let abandoned = {
        let first = first.clone();
        tokio::spawn(async move {
            first
                .get_or_load("k", move || async move {
                    started_tx.send(()).unwrap();
                    std::future::pending::<()>().await;
                    Ok::<_, Never>(Some(1u8))
                })
                .await
        })
    };
    started_rx.await.unwrap();
    abandoned.abort();
    assert!(abandoned.await.unwrap_err().is_cancelled());
    let v = other
        .get_or_load("k", || async { Ok::<_, Never>(Some(2u8)) })
        .await
        .unwrap();
    assert_eq!(v, Some(2));
    // Stored, so the other instance held the lease: without the release it would have waited
    // out `lease_wait` and loaded without writing.
    assert_eq!(other.get::<u8>("k").await.unwrap(), Some(2));
}

/// XFetch: a hot key is refreshed once, shortly before its TTL ends, and its readers never
/// meet the expiry (no stale, no miss). The first load takes 200 ms of the mock clock (the
/// refresh takes none: a background load moving the clock would age what the test reads).
async fn a_hot_key_is_refreshed_once_before_it_expires(fx: Fx) {
    let (b, clock) = fx.timed();
    let c = b
        .default_ttl(TTL)
        .stale_while_revalidate(Duration::from_secs(60))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let fetch = || {
        let (calls, clock) = (calls.clone(), clock.clone());
        c.entry("hot").fetch(move || async move {
            let n = calls.fetch_add(1, Ordering::SeqCst) as u64 + 1;
            if n == 1 {
                clock.advance(Duration::from_millis(200));
            }
            Ok::<_, Never>(Some(n))
        })
    };
    assert_eq!(fetch().await.unwrap().status, Status::Miss);
    // Far from the end (5 s to go, 25 loads' time): no early refresh.
    clock.advance(TTL / 2);
    for _ in 0..200 {
        assert_eq!(fetch().await.unwrap().status, Status::Hit);
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "no refresh far from the end"
    );
    // 10 ms before the end: each read refreshes with a probability of 95 %.
    clock.advance(TTL / 2 - Duration::from_millis(10));
    for _ in 0..20 {
        let f = fetch().await.unwrap();
        // The old value, or already the refreshed one: a hit either way.
        assert_eq!(f.status, Status::Hit, "still fresh");
    }
    let refreshed = eventually(Duration::from_secs(5), || async {
        c.entry("hot")
            .fetch(|| async { Ok::<_, Never>(Some(0u64)) })
            .await
            .unwrap()
            .value
            == Some(2)
    })
    .await;
    assert!(refreshed, "refreshed before the end");
    // Past the old end: the refreshed entry is fresh; the hot key never went stale.
    clock.advance(Duration::from_millis(20));
    let f = fetch().await.unwrap();
    assert_eq!((f.value, f.status), (Some(2), Status::Hit));
    assert_eq!(calls.load(Ordering::SeqCst), 2, "exactly one refresh");
}

macro_rules! suite {
    ($store:ident, $fx:expr) => {
        mod $store {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn falsy_values_are_hits() {
                super::falsy_values_are_hits($fx).await
            }
            #[tokio::test]
            async fn typed_round_trip_and_delete() {
                super::typed_round_trip_and_delete($fx).await
            }
            #[tokio::test]
            async fn entries_expire_and_default_ttl_applies() {
                super::entries_expire_and_default_ttl_applies($fx).await
            }
            #[tokio::test]
            async fn negative_results_are_cached() {
                super::negative_results_are_cached_for_the_negative_ttl($fx).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn one_load_for_500_tasks() {
                super::one_load_for_a_stampede($fx, 1).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn one_load_for_500_tasks_over_two_instances() {
                super::one_load_for_a_stampede($fx, 2).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn loader_errors_are_shared() {
                super::loader_errors_are_shared_and_not_cached($fx).await
            }
            #[tokio::test]
            async fn fence_against_del() {
                super::a_load_older_than_an_invalidation_is_not_written($fx, "del").await
            }
            #[tokio::test]
            async fn fence_against_tag() {
                super::a_load_older_than_an_invalidation_is_not_written($fx, "tag").await
            }
            #[tokio::test]
            async fn fence_against_prefix() {
                super::a_load_older_than_an_invalidation_is_not_written($fx, "prefix").await
            }
            #[tokio::test]
            async fn fence_against_set() {
                super::a_load_older_than_an_invalidation_is_not_written($fx, "set").await
            }
            #[tokio::test]
            async fn tags_whatever_the_ttls() {
                super::a_tag_invalidates_entries_whatever_their_ttls($fx).await
            }
            #[tokio::test]
            async fn invalidated_entries_are_replaced() {
                super::invalidated_entries_are_replaced_by_the_next_load($fx).await
            }
            #[tokio::test]
            async fn prefixes() {
                super::a_prefix_invalidates_only_keys_under_it($fx).await
            }
            #[tokio::test]
            async fn incompatible_entries() {
                super::incompatible_entries_are_misses_removed_and_counted($fx).await
            }
            #[tokio::test]
            async fn bad_input() {
                super::bad_input_is_an_error_and_changes_nothing($fx).await
            }
            #[tokio::test]
            async fn namespaces() {
                super::namespaces_are_isolated($fx).await
            }
            #[tokio::test]
            async fn encoded() {
                super::encoded_values_are_the_codec_bytes($fx).await
            }
            #[tokio::test]
            async fn learnt_tags() {
                super::tags_learnt_from_the_value($fx).await
            }
            #[tokio::test]
            async fn fence_against_learnt_tag() {
                super::a_load_older_than_an_invalidation_of_a_learnt_tag_is_not_written($fx).await
            }
            #[tokio::test]
            async fn counters() {
                super::counters_tell_hits_misses_and_loads($fx).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn stale_while_revalidate() {
                super::stale_values_are_served_while_one_refresh_runs($fx).await
            }
            #[tokio::test]
            async fn stale_if_error() {
                super::stale_values_are_served_when_the_loader_fails($fx).await
            }
            #[tokio::test]
            async fn never_stale_after_invalidation() {
                super::invalidated_entries_are_never_served_stale($fx).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn refresh_fence_against_del() {
                super::a_refresh_older_than_an_invalidation_is_not_written($fx, "del").await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn refresh_fence_against_set() {
                super::a_refresh_older_than_an_invalidation_is_not_written($fx, "set").await
            }
            #[tokio::test]
            async fn unrelated_writes_do_not_refuse_a_fill() {
                super::a_learnt_tag_fill_during($fx, true, "other product").await
            }
            #[tokio::test]
            async fn another_entry_s_tag_does_not_refuse_a_fill() {
                super::a_learnt_tag_fill_during($fx, true, "other tag").await
            }
            #[tokio::test]
            async fn the_learnt_tag_refuses_its_fill() {
                super::a_learnt_tag_fill_during($fx, false, "the learnt tag").await
            }
            #[tokio::test]
            async fn the_epoch_refuses_every_fill() {
                super::a_learnt_tag_fill_during($fx, false, "the epoch").await
            }
            #[tokio::test]
            async fn other_keys_invalidated_leave_a_load_joinable() {
                super::an_invalidation_of_other_keys_leaves_a_load_joinable($fx).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn early_refresh_before_the_ttl_ends() {
                super::a_hot_key_is_refreshed_once_before_it_expires($fx).await
            }
            #[tokio::test]
            async fn late_follower_after_a_write_elsewhere() {
                super::a_follower_after_a_write_elsewhere_gets_the_new_value($fx).await
            }
            #[tokio::test]
            async fn dropped_fetch_releases_its_lease() {
                super::a_dropped_fetch_gives_its_lease_back($fx).await
            }
        }
    };
}

suite!(memory_store, Fx::memory());
suite!(redis_store, Fx::redis());
suite!(tiered_store, Fx::tiered().await);
suite!(cluster_store, Fx::cluster());

#[tokio::test]
async fn memory_jitter_spreads_expiry() {
    jitter_spreads_expiry(Fx::memory()).await
}
