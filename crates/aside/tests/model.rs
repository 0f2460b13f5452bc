//! Model-based test: random sequences of sets, deletes, tag and prefix invalidations against
//! a `HashMap` model, on the in-process store and on Redis, where one instance writes and
//! another reads (so every read depends on what Redis told the reader about the writes).
#![allow(clippy::unwrap_used)]

use aside::Cache;
use proptest::prelude::*;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};

const KEYS: [&str; 5] = ["a", "b", "x:1", "x:2", "y:1"];
const TAGS: [&str; 2] = ["t1", "t2"];
const PREFIXES: [&str; 2] = ["x:", "y:"];

#[derive(Clone, Debug)]
enum Op {
    Set(usize, i64, Vec<usize>),
    Get(usize),
    Del(Vec<usize>),
    Tag(usize),
    Prefix(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            0..KEYS.len(),
            any::<i64>(),
            prop::collection::vec(0..TAGS.len(), 0..3)
        )
            .prop_map(|(k, v, t)| Op::Set(k, v, t)),
        (0..KEYS.len()).prop_map(Op::Get),
        prop::collection::vec(0..KEYS.len(), 0..3).prop_map(Op::Del),
        (0..TAGS.len()).prop_map(Op::Tag),
        (0..PREFIXES.len()).prop_map(Op::Prefix),
    ]
}

/// Runs `ops`: writes and invalidations through `cache`, reads through `reader`, each after
/// the previous call returned.
async fn run(cache: Cache, reader: Cache, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut model: HashMap<&str, (i64, BTreeSet<usize>)> = HashMap::new();
    for op in ops {
        match op {
            Op::Set(k, v, tags) => {
                let names: Vec<&str> = tags.iter().map(|&t| TAGS[t]).collect();
                cache.entry(KEYS[k]).tags(names).set(&v).await.unwrap();
                model.insert(KEYS[k], (v, tags.into_iter().collect()));
            }
            Op::Get(k) => {
                let got = reader.get::<i64>(KEYS[k]).await.unwrap();
                prop_assert_eq!(got, model.get(KEYS[k]).map(|e| e.0), "get {}", KEYS[k]);
            }
            Op::Del(ks) => {
                cache.del(ks.iter().map(|&k| KEYS[k])).await.unwrap();
                for k in ks {
                    model.remove(KEYS[k]);
                }
            }
            Op::Tag(t) => {
                cache.invalidate_tag(TAGS[t]).await.unwrap();
                model.retain(|_, e| !e.1.contains(&t));
            }
            Op::Prefix(p) => {
                cache.invalidate_prefix(PREFIXES[p]).await.unwrap();
                model.retain(|k, _| !k.starts_with(PREFIXES[p]));
            }
        }
    }
    for k in KEYS {
        prop_assert_eq!(
            reader.get::<i64>(k).await.unwrap(),
            model.get(k).map(|e| e.0),
            "final {}",
            k
        );
    }
    Ok(())
}

proptest! {
    #[test]
    fn memory_store_matches_the_model(ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let cache = Cache::builder().build().unwrap();
        rt.block_on(run(cache.clone(), cache, ops))?;
    }
}

static NS: AtomicUsize = AtomicUsize::new(0);

#[test]
fn redis_store_matches_the_model() {
    let redis = testkit::TestRedis::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(48));
    runner
        .run(&prop::collection::vec(op(), 1..40), |ops| {
            rt.block_on(async {
                let ns = format!("m{}", NS.fetch_add(1, Ordering::Relaxed));
                let cache = |ns: &str| {
                    Cache::builder()
                        .namespace(ns)
                        .redis(redis.url())
                        .build()
                        .unwrap()
                };
                run(cache(&ns), cache(&ns), ops).await
            })
        })
        .unwrap();
}

/// The same with long-lived instances, so the reader's versions are held in process (its
/// tracking connection is up) and every invalidation reaches it as a message from Redis.
#[test]
fn redis_store_with_versions_held_matches_the_model() {
    let redis = testkit::TestRedis::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (writer, reader) = rt.block_on(async {
        let cache = || {
            Cache::builder()
                .namespace("held")
                .redis(redis.url())
                .build()
                .unwrap()
        };
        let (writer, reader) = (cache(), cache());
        let tracking = || async {
            reader.get::<i64>("a").await.unwrap();
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut redis.conn().await)
                .await
                .unwrap();
            list.contains("flags=t")
        };
        assert!(
            testkit::eventually(std::time::Duration::from_secs(5), tracking).await,
            "the reader's tracking connection comes up"
        );
        (writer, reader)
    });
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(48));
    runner
        .run(&prop::collection::vec(op(), 1..40), |ops| {
            rt.block_on(async {
                // Each case starts from nothing valid.
                writer.invalidate_all().await;
                run(writer.clone(), reader.clone(), ops).await
            })
        })
        .unwrap();
}
