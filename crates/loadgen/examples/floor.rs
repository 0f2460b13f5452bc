//! The floor of the comparison: the least a service can do per cached read over HTTP.
//!
//! `GET /products/{id}` does one redis-rs `GET` and returns the stored bytes as they are
//! (no decoding, no database, no cache logic). A real cache-aside service cannot beat it
//! on the same machine, so `catalog`'s throughput is reported as a fraction of it.
//!
//! ```text
//! cargo run --release -p loadgen --example floor -- --listen 127.0.0.1:3200 \
//!     --redis-url redis://127.0.0.1:6379 --ids 1000
//! ```
//! At start it stores a product-shaped JSON document (like the catalog's) under
//! `floor:product:{id}` for ids `p1..pN` (see `--id-format`).

use anyhow::Context;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Parser;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

/// A minimal axum server: one Redis GET per request.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3200")]
    listen: String,
    /// Redis to read from.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// Products stored at start: ids 1..=N.
    #[arg(long, default_value_t = 1000)]
    ids: u64,
    /// How a number becomes an id (`p{}` like the catalog).
    #[arg(long, default_value = "p{}")]
    id_format: String,
}

const PREFIX: &str = "floor:product:";

/// A document the size and shape of a catalog product.
fn product(id: &str, n: u64) -> String {
    let c = (n - 1) % 20 + 1;
    format!(
        r#"{{"id":"{id}","name":"Product {n}","price":{}.99,"categoryId":"c{c}","category":{{"id":"c{c}","name":"Category {c}"}},"createdAt":"2026-01-01T00:00:00.000Z","updatedAt":"2026-01-01T00:00:00.000Z"}}"#,
        n % 1000
    )
}

async fn get_product(
    State(redis): State<MultiplexedConnection>,
    Path(id): Path<String>,
) -> Response {
    // The multiplexed connection is a cheap handle; clones share one socket.
    let mut redis = redis;
    match redis
        .get::<_, Option<Vec<u8>>>(format!("{PREFIX}{id}"))
        .await
    {
        Ok(Some(bytes)) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::HeaderName::from_static("x-cache"), "hit"),
            ],
            Bytes::from(bytes),
        )
            .into_response(),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            r#"{"error":{"code":"not_found","message":"no such product"}}"#,
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"error":{"code":"unavailable","message":"redis"}}"#,
        )
            .into_response(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let format = loadgen::keys::IdFormat::parse(&args.id_format)?;
    let client = redis::Client::open(args.redis_url.as_str()).context("bad --redis-url")?;
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis")?;
    for chunk in (1..=args.ids).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for &n in chunk {
            let id = format.id(n);
            pipe.set(format!("{PREFIX}{id}"), product(&id, n)).ignore();
        }
        pipe.query_async::<()>(&mut redis)
            .await
            .context("storing products")?;
    }
    let app = Router::new()
        .route("/products/{id}", get(get_product))
        .with_state(redis);
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    println!("floor listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        })
        .await?;
    Ok(())
}
