//! Cache-aside in front of a slow "database", on the in-process store, or on Redis when
//! `REDIS_URL` is set: `cargo run -p aside --example quickstart`.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Product {
    id: String,
    name: String,
    price: f64,
}

static QUERIES: AtomicUsize = AtomicUsize::new(0);

async fn find_product(id: &str) -> Result<Option<Product>, std::io::Error> {
    QUERIES.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(20)).await; // a slow database
    Ok(id.strip_prefix('p').map(|n| Product {
        id: id.to_owned(),
        name: format!("Product {n}"),
        price: 9.99,
    }))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut builder = aside::Cache::builder().namespace("quickstart");
    if let Ok(url) = std::env::var("REDIS_URL") {
        builder = builder.redis(url);
    }
    let cache = builder.build()?;

    for round in 1..=3 {
        let start = Instant::now();
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let cache = cache.clone();
                tokio::spawn(async move {
                    cache
                        .entry("product:p1")
                        .ttl(Duration::from_secs(300))
                        .tags(["category:c1"])
                        .fetch(|| find_product("p1"))
                        .await
                })
            })
            .collect();
        let mut statuses = std::collections::BTreeMap::new();
        for t in tasks {
            *statuses.entry(t.await??.status.as_str()).or_insert(0) += 1;
        }
        println!(
            "round {round}: 100 reads in {:?}, {statuses:?}, database queries so far: {}",
            start.elapsed(),
            QUERIES.load(Ordering::SeqCst)
        );
        if round == 2 {
            cache.invalidate_tag("category:c1").await?;
            println!("category c1 invalidated");
        }
    }
    let missing = cache.get_or_load("product:x", || find_product("x")).await?;
    let again = cache.get_or_load("product:x", || find_product("x")).await?;
    println!(
        "missing product: {missing:?} then {again:?}; database queries: {}",
        QUERIES.load(Ordering::SeqCst)
    );
    Ok(())
}
