//! End-to-end: rows changed in the database by anyone (a plain SQL client here) reach every
//! instance's cache through the change feed, durably: also when the instance that wrote died
//! right after its commit while Redis was paused, and across restarts of every instance.
//! Also: a graceful shutdown sends what the cache kept during an outage.
#![allow(clippy::unwrap_used)]

mod support;

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use sqlx::{Connection, Executor};
use std::time::Duration;
use support::Service;
use testkit::{TestPostgres, TestRedis, eventually, metric_sum};

/// How long a change made elsewhere may take to reach every instance here: the feed's goal
/// is a second; the margin is for a loaded test machine.
const CONVERGED: Duration = Duration::from_secs(3);

async fn get(http: &Client, url: &str) -> (StatusCode, Value) {
    let r = http.get(url).send().await.unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

async fn put(http: &Client, url: &str, body: Value) -> StatusCode {
    http.put(url).json(&body).send().await.unwrap().status()
}

/// Whether `path` on `svc` eventually answers `status` with `field` equal to `want`.
async fn serves(svc: &Service, path: &str, status: StatusCode, field: &str, want: Value) -> bool {
    let http = Client::new();
    let url = svc.url(path);
    eventually(CONVERGED, || {
        let (http, url, want) = (http.clone(), url.clone(), want.clone());
        async move {
            let (st, body) = get(&http, &url).await;
            st == status && (field.is_empty() || body.pointer(field) == Some(&want))
        }
    })
    .await
}

/// Two instances on one PostgreSQL database and one Redis; extra flags for both.
async fn two_on_postgres(extra: &[&str]) -> (TestPostgres, TestRedis, Service, Service) {
    let pg = TestPostgres::new().await;
    let redis = TestRedis::start();
    let (db, r) = (pg.url.clone(), redis.url());
    let mut args = vec![
        "--database-url",
        &db,
        "--redis-url",
        &r,
        "--seed-products",
        "50",
    ];
    args.extend_from_slice(extra);
    let a = Service::start(&args);
    let b = Service::start(&args);
    (pg, redis, a, b)
}

/// Reads the entries the outside changes will touch through `svc`, so that they are cached.
async fn warm(svc: &Service) {
    let http = Client::new();
    for path in [
        "/products/p7",
        "/products/p8",
        "/products/p3",
        "/products?limit=5",
    ] {
        assert_eq!(get(&http, &svc.url(path)).await.0, StatusCode::OK, "{path}");
    }
    assert_eq!(
        get(&http, &svc.url("/products/ghost")).await.0,
        StatusCode::NOT_FOUND
    );
    // Cached: the second read is a hit.
    let r = http.get(svc.url("/products/p7")).send().await.unwrap();
    assert_eq!(r.headers()["x-cache"], "hit");
}

/// An `UPDATE`, an `INSERT` over a cached 404, a `DELETE` and a category rename, to be made
/// with a plain SQL connection behind the catalog's back (`now`: a time as the database
/// stores it).
fn behind_its_back(now: &str) -> Vec<String> {
    vec![
        "UPDATE products SET price = 4242 WHERE id = 'p7'".to_owned(),
        format!(
            "INSERT INTO products (id, name, price, category_id, created_at, updated_at) \
             VALUES ('ghost', 'Ghost', 1, 'c1', {now}, {now})"
        ),
        "DELETE FROM products WHERE id = 'p8'".to_owned(),
        "UPDATE categories SET name = 'Renamed in SQL' WHERE id = 'c3'".to_owned(),
    ]
}

async fn every_change_is_served(svc: &Service) {
    assert!(serves(svc, "/products/p7", StatusCode::OK, "/price", json!(4242.0)).await);
    assert!(
        serves(
            svc,
            "/products/ghost",
            StatusCode::OK,
            "/name",
            json!("Ghost")
        )
        .await
    );
    assert!(serves(svc, "/products/p8", StatusCode::NOT_FOUND, "", Value::Null).await);
    let renamed = json!("Renamed in SQL");
    assert!(
        serves(
            svc,
            "/products/p3",
            StatusCode::OK,
            "/category/name",
            renamed
        )
        .await
    );
    // The list pages too: the newest product is now the inserted one.
    let newest = json!("ghost");
    assert!(
        serves(
            svc,
            "/products?limit=5",
            StatusCode::OK,
            "/products/0/id",
            newest
        )
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_changes_reach_every_instance_on_postgres() {
    let (pg, _redis, a, b) = two_on_postgres(&[]).await;
    warm(&a).await;
    warm(&b).await;
    let mut sql = sqlx::PgConnection::connect(&pg.url).await.unwrap();
    for statement in behind_its_back("now()") {
        sql.execute(sqlx::AssertSqlSafe(statement)).await.unwrap();
    }
    every_change_is_served(&a).await;
    every_change_is_served(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_changes_reach_every_l1_on_postgres() {
    let (pg, _redis, a, b) = two_on_postgres(&["--l1-capacity", "1000"]).await;
    warm(&a).await;
    warm(&b).await;
    let mut sql = sqlx::PgConnection::connect(&pg.url).await.unwrap();
    for statement in behind_its_back("now()") {
        sql.execute(sqlx::AssertSqlSafe(statement)).await.unwrap();
    }
    every_change_is_served(&a).await;
    every_change_is_served(&b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_changes_reach_every_instance_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shared.db");
    let db = format!("sqlite://{}", file.display());
    let redis = TestRedis::start();
    let r = redis.url();
    let args = [
        "--database-url",
        &db,
        "--redis-url",
        &r,
        "--seed-products",
        "50",
    ];
    let a = Service::start(&args);
    let b = Service::start(&args);
    warm(&a).await;
    warm(&b).await;
    // Another process's connection to the same file (times are microseconds there).
    let mut sql = sqlx::SqliteConnection::connect(&db).await.unwrap();
    for statement in behind_its_back("1767225600000000") {
        sql.execute(sqlx::AssertSqlSafe(statement)).await.unwrap();
    }
    every_change_is_served(&a).await;
    every_change_is_served(&b).await;
}

/// `catalog_db_queries_total` of a service's requests.
async fn queries(http: &Client, svc: &Service) -> u64 {
    let text = http
        .get(svc.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric_sum(&text, "catalog_db_queries_total{source=\"request\"}") as u64
}

/// An outside `UPDATE` of a price is served by the list page that shows the product within
/// the bound, and leaves the page cached: the read that shows it costs one query, for that
/// product. An outside `UPDATE` of `created_at` (the list's order) drops the pages.
async fn an_outside_price_update_leaves_the_pages_cached(
    svc: &Service,
    sql: &mut (impl sqlx::Executor<'_> + Copy),
    newer: &str,
) {
    let http = Client::new();
    let page = svc.url("/products?limit=5");
    get(&http, &page).await;
    let r = http.get(&page).send().await.unwrap();
    assert_eq!(r.headers()["x-cache"], "hit");
    let before = queries(&http, svc).await;
    sql.execute("UPDATE products SET price = 4242 WHERE id = 'p48'")
        .await
        .unwrap();
    assert!(
        serves(
            svc,
            "/products?limit=5",
            StatusCode::OK,
            "/products/2/price",
            json!(4242.0)
        )
        .await
    );
    // One read of the product; two if a page read loaded it between the commit and the
    // feed's invalidation (that load's fill is refused, so the next read loads it again).
    // The page's ids are never read again.
    let reads = queries(&http, svc).await - before;
    assert!((1..=2).contains(&reads), "{reads} queries");
    let hit = eventually(Duration::from_secs(5), || async {
        http.get(&page).send().await.unwrap().headers()["x-cache"] == "hit"
    })
    .await;
    assert!(hit, "the page is served from the cache again");
    let reorder = format!("UPDATE products SET created_at = {newer} WHERE id = 'p1'");
    sql.execute(sqlx::AssertSqlSafe(reorder)).await.unwrap();
    assert!(
        serves(
            svc,
            "/products?limit=5",
            StatusCode::OK,
            "/products/0/id",
            json!("p1")
        )
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_price_update_leaves_the_pages_cached_on_postgres() {
    let (pg, _redis, a, _b) = two_on_postgres(&[]).await;
    let pool = sqlx::PgPool::connect(&pg.url).await.unwrap();
    an_outside_price_update_leaves_the_pages_cached(&a, &mut &pool, "now()").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_price_update_leaves_the_pages_cached_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("shared.db").display());
    let redis = TestRedis::start();
    let r = redis.url();
    let a = Service::start(&[
        "--database-url",
        &db,
        "--redis-url",
        &r,
        "--seed-products",
        "50",
    ]);
    let pool = sqlx::SqlitePool::connect(&db).await.unwrap();
    an_outside_price_update_leaves_the_pages_cached(&a, &mut &pool, "1767225600000000").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_dying_while_redis_is_paused_loses_no_invalidation() {
    let (_pg, redis, a, b) = two_on_postgres(&[]).await;
    let http = Client::new();
    warm(&b).await;
    redis.pause();
    // Acknowledged: committed, its invalidation kept by A since Redis does not answer.
    let st = put(&http, &a.url("/products/p7"), json!({"price": 77})).await;
    assert_eq!(st, StatusCode::OK);
    a.kill();
    redis.resume();
    assert!(
        serves(&b, "/products/p7", StatusCode::OK, "/price", json!(77.0)).await,
        "the acknowledged write was lost with its instance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_while_every_instance_was_down_is_applied_on_start() {
    let pg = TestPostgres::new().await;
    let redis = TestRedis::start();
    let (db, r) = (pg.url.clone(), redis.url());
    let args = [
        "--database-url",
        &db,
        "--redis-url",
        &r,
        "--seed-products",
        "50",
    ];
    let mut first = Service::start(&args);
    warm(&first).await;
    assert!(first.terminate());
    let mut sql = sqlx::PgConnection::connect(&pg.url).await.unwrap();
    sql.execute("UPDATE products SET price = 4242 WHERE id = 'p7'")
        .await
        .unwrap();
    // Redis still holds the old entry; the new instance resumes from the stored position.
    let again = Service::start(&args);
    assert!(
        serves(
            &again,
            "/products/p7",
            StatusCode::OK,
            "/price",
            json!(4242.0)
        )
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_sends_what_the_cache_kept() {
    // No feed: only the writer's own kept invalidation can reach Redis.
    let (_pg, redis, mut a, b) = two_on_postgres(&["--no-change-feed"]).await;
    let http = Client::new();
    warm(&b).await;
    redis.pause();
    let st = put(&http, &a.url("/products/p7"), json!({"price": 77})).await;
    assert_eq!(st, StatusCode::OK);
    a.sigterm();
    // Redis answers again only once the instance is shutting down.
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.resume();
    assert!(tokio::task::block_in_place(
        || a.exited(Duration::from_secs(10))
    ));
    let (st, body) = get(&http, &b.url("/products/p7")).await;
    assert_eq!((st, &body["price"]), (StatusCode::OK, &json!(77.0)));
}

/// Every one of 200 outside updates is served within the bound; prints how long each took to
/// be seen through HTTP (run with `--release -- --nocapture` for the README's figures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_updates_converge_one_by_one() {
    let (pg, _redis, a, _b) = two_on_postgres(&[]).await;
    let http = Client::new();
    let mut sql = sqlx::PgConnection::connect(&pg.url).await.unwrap();
    let url = a.url("/products/p5");
    let mut took = Vec::new();
    for i in 0..200u32 {
        assert_eq!(get(&http, &url).await.0, StatusCode::OK); // cached
        let price = 5000.0 + f64::from(i);
        let update = format!("UPDATE products SET price = {price} WHERE id = 'p5'");
        sql.execute(sqlx::AssertSqlSafe(update)).await.unwrap();
        let committed = std::time::Instant::now();
        let seen = eventually(CONVERGED, || {
            let (http, url) = (http.clone(), url.clone());
            async move { get(&http, &url).await.1["price"] == json!(price) }
        })
        .await;
        assert!(seen, "update {i} not served within {CONVERGED:?}");
        took.push(committed.elapsed());
    }
    took.sort();
    println!(
        "outside update to served: median {:?}, p99 {:?}, max {:?} over {} updates",
        took[took.len() / 2],
        took[took.len() * 99 / 100],
        took[took.len() - 1],
        took.len()
    );
}
