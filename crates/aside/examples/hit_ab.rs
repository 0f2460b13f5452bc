//! The hit path measured call by call against a raw redis-rs `GET` of the same bytes, and
//! against a raw `MGET` of as many keys as the hit path reads (the entry and its three stamp
//! versions), alternating the three so that drift on a busy machine hits them alike:
//! `cargo run --release -p aside --example hit_ab -- redis://127.0.0.1:6379/`.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".into());
    let cache = aside::Cache::builder()
        .namespace("hit-ab")
        .redis(url.clone())
        .build()?;
    let value = serde_json::json!({"id": "p42", "name": "Product 42", "price": 42.99, "categoryId": "c2",
        "category": {"id": "c2", "name": "Category 2"}, "createdAt": "2026-01-01T00:00:42Z"});
    cache
        .entry("product:p42")
        .tag("category:c2")
        .set(&value)
        .await?;
    let mut raw = redis::aio::ConnectionManager::new(redis::Client::open(url)?).await?;
    let _: () = redis::cmd("SET")
        .arg("hit-ab:raw")
        .arg(serde_json::to_vec(&value)?)
        .query_async(&mut raw)
        .await?;
    let mget = [
        "hit-ab:raw",
        "hit-ab:g",
        "hit-ab:p:product:",
        "hit-ab:t:category:c2",
    ];
    const N: u32 = 20_000;
    for round in 1..=5 {
        let (mut a, mut b, mut m) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        for _ in 0..N {
            let t = Instant::now();
            let bytes: Vec<u8> = redis::cmd("GET")
                .arg("hit-ab:raw")
                .query_async(&mut raw)
                .await?;
            std::hint::black_box(serde_json::from_slice::<serde_json::Value>(&bytes)?);
            a += t.elapsed();
            let t = Instant::now();
            let v = cache
                .entry("product:p42")
                .tag("category:c2")
                .get::<serde_json::Value>()
                .await?;
            std::hint::black_box(v);
            b += t.elapsed();
            let t = Instant::now();
            let vals: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(&mget[..])
                .query_async(&mut raw)
                .await?;
            let bytes = vals.into_iter().next().flatten().unwrap_or_default();
            std::hint::black_box(serde_json::from_slice::<serde_json::Value>(&bytes)?);
            m += t.elapsed();
        }
        println!(
            "round {round}: raw GET {:?}, raw MGET(4) {:?}, aside {:?} per call; aside/GET {:.3}, MGET/GET {:.3}",
            a / N,
            m / N,
            b / N,
            b.as_secs_f64() / a.as_secs_f64(),
            m.as_secs_f64() / a.as_secs_f64()
        );
    }
    Ok(())
}
