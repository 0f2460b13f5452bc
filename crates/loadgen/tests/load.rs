//! Runs loadgen against a tiny in-test server on 127.0.0.1 and checks its report against
//! what the server itself counted.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use loadgen::dbstats::DbStats;
use loadgen::http::Target;
use loadgen::keys::{IdFormat, Popularity};
use loadgen::runner::{LoadSpec, run_target};

#[derive(Default)]
struct Counts {
    hits: AtomicU64,
    misses: AtomicU64,
    not_found: AtomicU64,
    puts: AtomicU64,
    lists: AtomicU64,
}

/// `p7` does not exist (404, no x-cache); even ids are hits, odd ids misses (one "query");
/// a write is one query; list pages are hits.
async fn product(State(c): State<Arc<Counts>>, Path(id): Path<String>) -> impl IntoResponse {
    if id == "p7" {
        c.not_found.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::NOT_FOUND, [("x-other", "1")], "{}").into_response();
    }
    let n: u64 = id.trim_start_matches('p').parse().unwrap();
    let cache = if n.is_multiple_of(2) {
        c.hits.fetch_add(1, Ordering::Relaxed);
        "hit"
    } else {
        c.misses.fetch_add(1, Ordering::Relaxed);
        "miss"
    };
    (
        StatusCode::OK,
        [("x-cache", cache)],
        format!(r#"{{"id":"{id}"}}"#),
    )
        .into_response()
}

async fn update(State(c): State<Arc<Counts>>, body: String) -> impl IntoResponse {
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        v.get("name").is_some() || v.get("price").is_some(),
        "{body}"
    );
    c.puts.fetch_add(1, Ordering::Relaxed);
    "{}"
}

async fn list(State(c): State<Arc<Counts>>) -> impl IntoResponse {
    c.lists.fetch_add(1, Ordering::Relaxed);
    ([("x-cache", "hit")], r#"{"products":[]}"#)
}

async fn metrics(State(c): State<Arc<Counts>>) -> String {
    format!(
        "# TYPE catalog_db_queries_total counter\n\
         catalog_db_queries_total{{kind=\"get\"}} {}\n\
         catalog_db_queries_total{{kind=\"put\"}} {}\n",
        c.misses.load(Ordering::Relaxed),
        c.puts.load(Ordering::Relaxed)
    )
}

async fn serve() -> (String, Arc<Counts>) {
    let counts = Arc::new(Counts::default());
    let app = Router::new()
        .route("/products/{id}", get(product).put(update))
        .route("/products", get(list))
        .route("/metrics", get(metrics))
        .with_state(counts.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), counts)
}

fn spec(requests: u64) -> LoadSpec {
    LoadSpec {
        mix: "get=80,list=10,put=10".parse().unwrap(),
        ids: 10,
        id_format: IdFormat::parse("p{}").unwrap(),
        popularity: Popularity::Uniform,
        pages: 3,
        limit: 20,
        connections: 4,
        duration: Some(Duration::from_secs(60)),
        requests: Some(requests),
        warmup: Duration::ZERO,
        rate: None,
        timeout: Duration::from_secs(5),
        prefill: false,
        seed: 3,
        db_stats: DbStats::Auto,
        progress: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_matches_what_the_server_saw() {
    let (url, c) = serve().await;
    let target = Target::parse(&format!("tiny={url}")).unwrap();
    let r = run_target(&target, &spec(2000), &[std::process::id()])
        .await
        .unwrap();
    let s = &r.summary;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (hits, misses, not_found) = (load(&c.hits), load(&c.misses), load(&c.not_found));
    let (puts, lists) = (load(&c.puts), load(&c.lists));

    assert_eq!(s.responses, 2000);
    assert_eq!(hits + misses + not_found + puts + lists, 2000);
    assert!(not_found > 0 && puts > 0 && lists > 0 && misses > 0);
    assert_eq!(s.errors_total, not_found);
    assert_eq!(s.errors.get("404"), Some(&not_found));
    assert_eq!(s.errors.len(), 1);
    assert_eq!(s.ok, 2000 - not_found);
    assert_eq!(s.ops.put, puts);
    assert_eq!(s.ops.list, lists);
    assert_eq!(s.ops.get, hits + misses + not_found);
    assert_eq!(s.cache.hit, hits + lists);
    assert_eq!(s.cache.miss, misses);
    assert_eq!(s.cache.absent, puts + not_found);
    let ratio = (hits + lists) as f64 / (hits + lists + misses) as f64;
    assert!((s.hit_ratio.unwrap() - ratio).abs() < 1e-9);

    let db = r.db.expect("the metrics counter was found");
    assert_eq!(db.source, DbStats::Metrics);
    assert_eq!(db.queries, misses + puts);
    assert!(r.cpu.is_some());
    assert_eq!(r.series.iter().map(|p| p.responses).sum::<u64>(), 2000);
    assert!(s.latency_ms.p50 > 0.0 && s.latency_ms.p50 <= s.latency_ms.p99);
    assert!(s.latency_ms.p99 <= s.latency_ms.max);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_sends_on_schedule() {
    let (url, _) = serve().await;
    let target = Target::parse(&url).unwrap();
    // 300 requests at 1500 req/s: about 0.2 s.
    let mut spec = spec(300);
    spec.rate = Some(1500.0);
    spec.mix = "get=1".parse().unwrap();
    spec.db_stats = DbStats::None;
    let started = std::time::Instant::now();
    let r = run_target(&target, &spec, &[]).await.unwrap();
    let took = started.elapsed();
    assert_eq!(r.summary.responses, 300);
    assert!(r.db.is_none());
    // It cannot finish faster than its schedule allows (the last request is due at ~0.2 s).
    assert!(took >= Duration::from_millis(190), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_that_close_connections_cost_no_errors() {
    // Every response says `connection: close`: loadgen must reconnect, not count errors.
    let served = Arc::new(AtomicU64::new(0));
    let counter = served.clone();
    let app = Router::new().route(
        "/products/{id}",
        get(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                ([("connection", "close"), ("x-cache", "hit")], "{}")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let target = Target::parse(&format!("http://{addr}")).unwrap();
    let mut spec = spec(200);
    spec.mix = "get=1".parse().unwrap();
    spec.db_stats = DbStats::None;
    let r = run_target(&target, &spec, &[]).await.unwrap();
    assert_eq!(r.summary.errors_total, 0, "{:?}", r.summary.errors);
    assert_eq!(r.summary.responses, 200);
    assert_eq!(served.load(Ordering::Relaxed), 200);
}

/// A server whose first response takes 200 ms, the rest answer at once.
async fn stall_once() -> String {
    let first = Arc::new(AtomicU64::new(0));
    let app = Router::new().route(
        "/products/{id}",
        get(move || {
            let first = first.clone();
            async move {
                if first.fetch_add(1, Ordering::Relaxed) == 0 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_counts_a_stall_in_the_requests_it_delayed() {
    // One connection, 50 requests. Open loop at 100 req/s: the ~19 requests due during the
    // 200 ms stall wait behind it, and their latency counts from when they were due, so
    // the 90th percentile is far above the normal sub-millisecond answer. Closed loop: only
    // the stalled request is slow, so p90 stays small (coordinated omission, by design).
    let mut spec = spec(50);
    spec.connections = 1;
    spec.mix = "get=1".parse().unwrap();
    spec.db_stats = DbStats::None;

    let open = Target::parse(&stall_once().await).unwrap();
    spec.rate = Some(100.0);
    let r = run_target(&open, &spec, &[]).await.unwrap();
    assert_eq!(r.summary.responses, 50);
    assert!(
        r.summary.latency_ms.p90 >= 100.0,
        "{:?}",
        r.summary.latency_ms
    );
    assert!(
        r.summary.latency_ms.max >= 190.0,
        "{:?}",
        r.summary.latency_ms
    );

    let closed = Target::parse(&stall_once().await).unwrap();
    spec.rate = None;
    let r = run_target(&closed, &spec, &[]).await.unwrap();
    assert_eq!(r.summary.responses, 50);
    assert!(
        r.summary.latency_ms.max >= 190.0,
        "{:?}",
        r.summary.latency_ms
    );
    assert!(
        r.summary.latency_ms.p90 < 50.0,
        "{:?}",
        r.summary.latency_ms
    );
}

#[tokio::test]
async fn nothing_listening_is_an_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let target = Target::parse(&format!("http://{addr}")).unwrap();
    assert!(run_target(&target, &spec(10), &[]).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_prints_json_and_draws_a_plot() {
    let (url, _) = serve().await;
    let plot = std::env::temp_dir().join(format!("loadgen-test-{}.png", std::process::id()));
    let plot_arg = plot.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .args([
                "compare",
                "--target",
                &format!("a={url}"),
                "--target",
                &format!("b={url}"),
            ])
            .args(["-n", "200", "-c", "2", "--pause", "0s", "--json", "--plot"])
            .arg(&plot_arg)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["targets"].as_array().unwrap().len(), 2);
    assert_eq!(doc["targets"][1]["summary"]["responses"], 200);
    assert_eq!(doc["baseline"], "a");
    assert_eq!(doc["load"]["warmup"], 0.0);
    assert_eq!(doc["load"]["id_format"], "p{}");
    assert_eq!(doc["ratios"][0]["throughput"], 1.0);
    let png = std::fs::read(&plot).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let _ = std::fs::remove_file(&plot);
}
