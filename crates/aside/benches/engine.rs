//! Engine benchmarks on a private redis-server: miss + fill, `get_or_load` with 64 concurrent
//! callers on one cold key, and tag / prefix invalidation with 0 and 1,000,000 other keys
//! (against a `KEYS` + `DEL` of every matching key). `cargo bench -p aside --bench engine`.
#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

type Never = std::convert::Infallible;

fn value() -> serde_json::Value {
    serde_json::json!({"id": "p1", "name": "Product 1", "price": 1.99, "categoryId": "c1"})
}

fn miss_and_fill(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let redis = testkit::TestRedis::start();
    let (cache, raw) = rt.block_on(async {
        let cache = aside::Cache::builder()
            .namespace("bench")
            .redis(redis.url())
            .build()
            .unwrap();
        let raw = redis::aio::ConnectionManager::new(redis::Client::open(redis.url()).unwrap())
            .await
            .unwrap();
        (cache, raw)
    });
    let n = AtomicU64::new(0);
    let mut g = c.benchmark_group("miss+fill");
    g.bench_function("seed: GET nil + SETEX", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = raw.clone();
            let key = format!("raw:{}", n.fetch_add(1, Ordering::Relaxed));
            async move {
                let got: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                assert!(got.is_none());
                let bytes = serde_json::to_vec(&value()).unwrap();
                let _: () = redis::cmd("SETEX")
                    .arg(&key)
                    .arg(300)
                    .arg(bytes)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
        })
    });
    g.bench_function("aside get_or_load (read, claim, fill)", |b| {
        b.to_async(&rt).iter(|| {
            let key = format!("product:{}", n.fetch_add(1, Ordering::Relaxed));
            let cache = &cache;
            async move {
                let v = cache
                    .entry(&key)
                    .tags(["category:c1"])
                    .get_or_load(|| async { Ok::<_, Never>(Some(value())) })
                    .await
                    .unwrap();
                black_box(v)
            }
        })
    });
    g.finish();
}

fn stampede(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let redis = testkit::TestRedis::start();
    let cache = rt.block_on(async {
        aside::Cache::builder()
            .namespace("bench")
            .redis(redis.url())
            .build()
            .unwrap()
    });
    let loads = Arc::new(AtomicU64::new(0));
    let rounds = Arc::new(AtomicU64::new(0));
    let mut g = c.benchmark_group("stampede");
    g.bench_function("64 concurrent get_or_load on one cold key", |b| {
        b.to_async(&rt).iter(|| {
            let (cache, loads) = (cache.clone(), loads.clone());
            rounds.fetch_add(1, Ordering::Relaxed);
            async move {
                cache.del(["product:hot"]).await.unwrap();
                let tasks: Vec<_> = (0..64)
                    .map(|_| {
                        let (cache, loads) = (cache.clone(), loads.clone());
                        tokio::spawn(async move {
                            cache
                                .get_or_load("product:hot", || async move {
                                    loads.fetch_add(1, Ordering::Relaxed);
                                    Ok::<_, Never>(Some(value()))
                                })
                                .await
                                .unwrap()
                        })
                    })
                    .collect();
                for t in tasks {
                    black_box(t.await.unwrap());
                }
            }
        })
    });
    g.finish();
    let (l, r) = (
        loads.load(Ordering::Relaxed),
        rounds.load(Ordering::Relaxed),
    );
    println!(
        "stampede: {l} loader calls over {r} rounds of 64 callers ({:.3} per round)",
        l as f64 / r.max(1) as f64
    );
}

fn invalidation(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("invalidation");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    for keys in [0u64, 1_000_000] {
        let redis = testkit::TestRedis::start_with(&["--enable-debug-command", "yes"]);
        let (cache, raw) = rt.block_on(async {
            let cache = aside::Cache::builder()
                .namespace("bench")
                .redis(redis.url())
                .build()
                .unwrap();
            let mut raw = redis::aio::ConnectionManager::new_with_config(
                redis::Client::open(redis.url()).unwrap(),
                redis::aio::ConnectionManagerConfig::new().set_response_timeout(None),
            )
            .await
            .unwrap();
            if keys > 0 {
                // Half are list pages and tagged products of this cache, half other keys.
                for i in 0..1000 {
                    cache
                        .entry(&format!("products:list:{i}:20"))
                        .set(&i)
                        .await
                        .unwrap();
                    cache
                        .entry(&format!("product:p{i}"))
                        .tag("category:c1")
                        .set(&i)
                        .await
                        .unwrap();
                }
                for (n, prefix) in [(keys / 2, "bench:e:products:list:x"), (keys / 2, "other")] {
                    let ok = std::process::Command::new("redis-cli")
                        .args([
                            "-p",
                            &redis.port.to_string(),
                            "DEBUG",
                            "POPULATE",
                            &n.to_string(),
                            prefix,
                        ])
                        .stdout(std::process::Stdio::null())
                        .status()
                        .unwrap()
                        .success();
                    assert!(ok, "DEBUG POPULATE failed");
                }
                let size: u64 = redis::cmd("DBSIZE").query_async(&mut raw).await.unwrap();
                assert!(size >= keys, "{size} keys");
            }
            (cache, raw)
        });
        g.bench_with_input(
            BenchmarkId::new("aside invalidate_prefix", keys),
            &keys,
            |b, _| {
                b.to_async(&rt)
                    .iter(|| async { cache.invalidate_prefix("products:list:").await.unwrap() })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("aside invalidate_tag", keys),
            &keys,
            |b, _| {
                b.to_async(&rt)
                    .iter(|| async { cache.invalidate_tag("category:c1").await.unwrap() })
            },
        );
        g.bench_with_input(
            BenchmarkId::new("seed delPattern (KEYS + DEL)", keys),
            &keys,
            |b, _| {
                b.to_async(&rt).iter(|| {
                    let mut conn = raw.clone();
                    async move {
                        // A pattern that matches nothing: the cost is KEYS walking every key.
                        let found: Vec<String> = redis::cmd("KEYS")
                            .arg("nothing:list:*")
                            .query_async(&mut conn)
                            .await
                            .unwrap();
                        black_box(found)
                    }
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, miss_and_fill, stampede, invalidation);
criterion_main!(benches);
