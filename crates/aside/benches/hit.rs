//! The hit path: `Cache::get` against a raw redis-rs `GET` + serde decode of the same value on
//! the same (private) server, and the in-process store. `cargo bench -p aside --bench hit`.
#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use std::hint::black_box;
use std::time::Duration;

#[derive(Clone, Serialize, Deserialize)]
struct Category {
    id: String,
    name: String,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Product {
    id: String,
    name: String,
    price: f64,
    category_id: String,
    category: Category,
    created_at: String,
    updated_at: String,
}

fn product() -> Product {
    Product {
        id: "p42".into(),
        name: "Product 42".into(),
        price: 42.99,
        category_id: "c2".into(),
        category: Category {
            id: "c2".into(),
            name: "Category 2".into(),
        },
        created_at: "2026-01-01T00:00:42Z".into(),
        updated_at: "2026-01-01T00:00:42Z".into(),
    }
}

fn hit_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let redis = testkit::TestRedis::start();
    let (cache, memory, mut raw) = rt.block_on(async {
        let cache = aside::Cache::builder()
            .namespace("bench")
            .redis(redis.url())
            .build()
            .unwrap();
        cache
            .entry("product:p42")
            .tag("category:c2")
            .set(&product())
            .await
            .unwrap();
        cache.set("plain:p42", &product()).await.unwrap();
        let memory = aside::Cache::builder().namespace("bench").build().unwrap();
        memory
            .entry("product:p42")
            .tag("category:c2")
            .set(&product())
            .await
            .unwrap();
        let client = redis::Client::open(redis.url()).unwrap();
        let mut raw = redis::aio::ConnectionManager::new(client).await.unwrap();
        let bytes = serde_json::to_vec(&product()).unwrap();
        let _: () = redis::cmd("SET")
            .arg("raw:product:p42")
            .arg(bytes)
            .query_async(&mut raw)
            .await
            .unwrap();
        (cache, memory, raw)
    });
    // Redis with an L1 in front; the copy is made by the first read once the L1 serves.
    let tiered = rt.block_on(async {
        let l1 = aside::store::L1Config::new(1000, Duration::from_secs(60));
        let config = aside::store::RedisConfig::new(redis.url());
        let store = aside::store::TieredStore::new("bench", &config, &l1).unwrap();
        while !store.is_live() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let cache = aside::Cache::builder()
            .namespace("bench")
            .store(std::sync::Arc::new(store))
            .build()
            .unwrap();
        cache.get::<Product>("plain:p42").await.unwrap().unwrap();
        cache
    });

    let mut g = c.benchmark_group("hit");
    g.bench_function("raw redis-rs GET + serde_json", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = raw.clone();
            async move {
                let bytes: Vec<u8> = redis::cmd("GET")
                    .arg("raw:product:p42")
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                black_box(serde_json::from_slice::<Product>(&bytes).unwrap())
            }
        })
    });
    g.bench_function("aside Cache::get (redis)", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(cache.get::<Product>("plain:p42").await.unwrap().unwrap()) })
    });
    g.bench_function("aside tagged get_or_load hit (redis)", |b| {
        b.to_async(&rt).iter(|| async {
            let v = cache
                .entry("product:p42")
                .tags(["category:c2"])
                .get_or_load(|| async { Ok::<_, std::convert::Infallible>(Some(product())) })
                .await
                .unwrap();
            black_box(v.unwrap())
        })
    });
    g.bench_function("aside Cache::get (redis + L1)", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(tiered.get::<Product>("plain:p42").await.unwrap().unwrap())
        })
    });
    g.bench_function("aside Cache::get (in-process)", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                memory
                    .entry("product:p42")
                    .tags(["category:c2"])
                    .get::<Product>()
                    .await
                    .unwrap()
                    .unwrap(),
            )
        })
    });
    g.finish();
    let _ = &mut raw;
}

criterion_group!(benches, hit_path);
criterion_main!(benches);
