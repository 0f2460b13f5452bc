//! Batch reads on a private redis-server: `get_many` of 100 hits against 100 `get`s one
//! after another and 100 `get`s at once (`join_all`), and `fetch_many` of the same 100 hits.
//! `cargo bench -p aside --bench batch`.
#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use futures::future::join_all;
use std::collections::HashMap;
use std::hint::black_box;

type Never = std::convert::Infallible;

const KEYS: usize = 100;

fn value(i: usize) -> serde_json::Value {
    serde_json::json!({"id": format!("p{i}"), "name": format!("Product {i}"), "price": 1.99, "categoryId": "c1"})
}

fn hits(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let redis = testkit::TestRedis::start();
    let keys: Vec<String> = (0..KEYS).map(|i| format!("product:p{i}")).collect();
    let cache = rt.block_on(async {
        let cache = aside::Cache::builder()
            .namespace("bench")
            .redis(redis.url())
            .build()
            .unwrap();
        for (i, k) in keys.iter().enumerate() {
            cache.set(k, &value(i)).await.unwrap();
        }
        // Every key a hit, and the versions of their stamps held in process.
        let got = cache
            .get_many::<serde_json::Value, _, _>(keys.clone())
            .await
            .unwrap();
        assert!(got.iter().all(Option::is_some));
        cache
    });
    let mut g = c.benchmark_group("100 hits");
    g.bench_function("get_many (one MGET)", |b| {
        b.to_async(&rt).iter(|| async {
            let got = cache
                .get_many::<serde_json::Value, _, _>(keys.iter().map(String::as_str))
                .await
                .unwrap();
            black_box(got)
        })
    });
    g.bench_function("100 sequential get", |b| {
        b.to_async(&rt).iter(|| async {
            let mut out = Vec::with_capacity(KEYS);
            for k in &keys {
                out.push(cache.get::<serde_json::Value>(k).await.unwrap());
            }
            black_box(out)
        })
    });
    g.bench_function("100 concurrent get (join_all)", |b| {
        b.to_async(&rt).iter(|| async {
            let got = join_all(keys.iter().map(|k| cache.get::<serde_json::Value>(k))).await;
            black_box(got)
        })
    });
    g.bench_function("fetch_many (one MGET, loader not called)", |b| {
        b.to_async(&rt).iter(|| async {
            let got = cache
                .fetch_many(keys.iter().map(String::as_str), |_: Vec<String>| async {
                    Ok::<HashMap<String, serde_json::Value>, Never>(HashMap::new())
                })
                .await
                .unwrap();
            black_box(got)
        })
    });
    g.finish();
}

criterion_group!(benches, hits);
criterion_main!(benches);
