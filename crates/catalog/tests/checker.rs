//! The live consistency checker, over an in-memory SQLite database and the in-process cache:
//! an answer planted in the cache behind the service's back is counted, a clean run counts
//! nothing, and a change after the read explains a mismatch.
#![allow(clippy::unwrap_used)]

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use catalog::checker::{Checker, ConsistencyConfig, Counts, Verdict};
use catalog::config::{Cli, Command};
use catalog::model::{Id, ProductPatch};
use catalog::{AppState, app};
use chrono::Utc;
use clap::Parser;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::eventually;
use tower::ServiceExt;

/// A catalog of 30 products that checks every hit (`sample`) at once, mismatches rechecked
/// after 10 ms.
async fn state(sample: &str) -> AppState {
    let argv = [
        "catalog",
        "serve",
        "--database-url",
        "sqlite::memory:",
        "--redis-url",
        "",
        "--seed-products",
        "30",
        "--consistency-sample",
        sample,
        "--consistency-delay",
        "0s",
        "--consistency-recheck",
        "10ms",
    ];
    let Command::Serve(config) = Cli::try_parse_from(argv).unwrap().command;
    catalog::build(&config).await.unwrap()
}

async fn call(s: &AppState, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    let req = Request::builder().method(method).uri(uri);
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    };
    let resp = app(s.clone()).oneshot(req.unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn get(s: &AppState, uri: &str) -> Value {
    let (status, body) = call(s, Method::GET, uri, None).await;
    assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    body
}

fn checker(s: &AppState) -> &Arc<Checker> {
    s.catalog.checker().expect("the checker is on")
}

/// Waits until `n` checks have ended, and returns how.
async fn settled(s: &AppState, n: u64) -> Counts {
    let done = eventually(Duration::from_secs(10), || async {
        let c = checker(s).counts();
        c.consistent + c.inconsistent >= n
    })
    .await;
    let counts = checker(s).counts();
    assert!(done, "{n} checks did not end: {counts:?}");
    counts
}

#[tokio::test]
async fn a_value_planted_in_the_cache_is_counted_and_exported() {
    let s = state("1").await;
    let mut planted = get(&s, "/products/p1").await;
    planted["price"] = json!(4242.0);
    // Behind the service's back: the database still says 1.99.
    let cache = s.catalog.cache().unwrap();
    cache.set("product:p1", &planted).await.unwrap();
    assert_eq!(get(&s, "/products/p1").await["price"], json!(4242.0));
    let counts = settled(&s, 1).await;
    assert_eq!(
        counts,
        Counts {
            consistent: 0,
            inconsistent: 1
        }
    );
    let req = Request::get("/metrics").body(Body::empty()).unwrap();
    let resp = app(s.clone()).oneshot(req).await.unwrap();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let inconsistent: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("catalog_consistency_checks_total{result=\"inconsistent\"}"))
        .collect();
    assert_eq!(inconsistent.len(), 1, "{text}");
    let n: f64 = inconsistent[0].rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 1.0, "{text}");
    assert!(
        testkit::metric_sum(&text, "catalog_db_queries_total") > 0.0
            && text.contains("source=\"checker\""),
        "the checker's reads are counted apart: {text}"
    );
}

#[tokio::test]
async fn a_clean_run_with_writes_is_consistent() {
    let s = state("1").await;
    for i in 1..=30 {
        get(&s, &format!("/products/p{i}")).await;
    }
    let before = s.catalog.db().queries();
    for i in 1..=30 {
        get(&s, &format!("/products/p{i}")).await;
    }
    assert_eq!(
        s.catalog.db().queries(),
        before,
        "all hits; checks are not counted as requests"
    );
    let (status, _) = call(
        &s,
        Method::PUT,
        "/products/p5",
        Some(json!({"price": 12.5, "name": "Renamed"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    get(&s, "/products/p5").await; // a miss: the write dropped it
    assert_eq!(get(&s, "/products/p5").await["price"], json!(12.5));
    let counts = settled(&s, 31).await;
    assert_eq!(
        counts,
        Counts {
            consistent: 31,
            inconsistent: 0
        }
    );
}

#[tokio::test]
async fn a_cached_not_found_contradicted_by_the_database_is_counted() {
    let s = state("1").await;
    let (status, _) = call(&s, Method::GET, "/products/late", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Inserted behind the service's back, long enough ago that it explains nothing.
    let mut row = catalog::db::seed_product(1);
    row.id = Id::parse("late").unwrap();
    row.created_at = Utc::now() - chrono::TimeDelta::hours(1);
    let repo = s.catalog.db().repository().clone();
    repo.insert(&row).await.unwrap();
    let (status, _) = call(&s, Method::GET, "/products/late", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a cached not found");
    let counts = settled(&s, 1).await;
    assert_eq!(counts.inconsistent, 1, "{counts:?}");
}

#[tokio::test]
async fn a_change_after_the_read_explains_a_mismatch() {
    let s = state("0").await;
    assert!(s.catalog.checker().is_none(), "0 turns the checker off");
    let config = ConsistencyConfig {
        sample: 1.0,
        delay: Duration::ZERO,
        recheck: Duration::from_millis(10),
        ..ConsistencyConfig::default()
    };
    let checker = Checker::new(s.catalog.db(), config);
    let served = bytes::Bytes::from(get(&s, "/products/p2").await.to_string());
    let id = Id::parse("p2").unwrap();
    let repo = s.catalog.db().repository().clone();
    let (began, began_at) = (Instant::now(), Utc::now());
    let agrees = checker.check(&id, Some(&served), began, began_at).await;
    assert_eq!(agrees, Some(Verdict::Consistent));

    // A category renamed behind the service's back changes no product row: unexplained...
    repo.rename_category(&Id::parse("c2").unwrap(), "Elsewhere")
        .await
        .unwrap();
    let renamed = checker.check(&id, Some(&served), began, began_at).await;
    assert_eq!(renamed, Some(Verdict::Inconsistent));
    // ...until the instance learns of it (the change feed tells it so).
    checker.changed("category:c2");
    let renamed = checker.check(&id, Some(&served), began, began_at).await;
    assert_eq!(renamed, Some(Verdict::Consistent));

    // An update stamps the row: a read that began before it is explained by it.
    let p3 = Id::parse("p3").unwrap();
    let served = bytes::Bytes::from(get(&s, "/products/p3").await.to_string());
    let (began, began_at) = (Instant::now(), Utc::now());
    let patch = ProductPatch {
        price: Some(99.0),
        ..ProductPatch::default()
    };
    repo.update(&p3, &patch, Utc::now()).await.unwrap();
    let updated = checker.check(&p3, Some(&served), began, began_at).await;
    assert_eq!(updated, Some(Verdict::Consistent));
    // The same mismatch, for a read long after that update, is not explained.
    let (later, later_at) = (
        Instant::now() + Duration::from_secs(5),
        Utc::now() + chrono::TimeDelta::seconds(5),
    );
    let stale = checker.check(&p3, Some(&served), later, later_at).await;
    assert_eq!(stale, Some(Verdict::Inconsistent));
}

#[tokio::test]
async fn the_sample_is_the_asked_fraction_of_hits() {
    let s = state("0.25").await;
    get(&s, "/products/p1").await;
    for _ in 0..40 {
        get(&s, "/products/p1").await;
    }
    let counts = settled(&s, 10).await;
    assert_eq!(
        counts,
        Counts {
            consistent: 10,
            inconsistent: 0
        }
    );
}
