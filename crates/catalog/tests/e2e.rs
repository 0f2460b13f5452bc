//! End-to-end: the real `catalog` binary on a free port, against a fresh PostgreSQL database
//! and a private `redis-server`, driven over HTTP as clients would.
#![allow(clippy::unwrap_used)]

mod support;

use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use support::Service;
use testkit::{TestCluster, TestPostgres, TestRedis, eventually, metric_sum};

struct Stack {
    svc: Service,
    redis: TestRedis,
    http: Client,
    pg: TestPostgres,
}

async fn stack(extra: &[&str]) -> Stack {
    let pg = TestPostgres::new().await;
    let redis = TestRedis::start();
    let (db_url, redis_url) = (pg.url.clone(), redis.url());
    let mut args = vec![
        "--database-url",
        &db_url,
        "--redis-url",
        &redis_url,
        "--seed-products",
        "50",
    ];
    args.extend_from_slice(extra);
    let svc = Service::start(&args);
    Stack {
        svc,
        redis,
        http: Client::new(),
        pg,
    }
}

struct Reply {
    status: StatusCode,
    x_cache: String,
    body: Value,
}

async fn get(http: &Client, url: &str) -> Reply {
    let r = http.get(url).send().await.unwrap();
    let status = r.status();
    let x_cache = r
        .headers()
        .get("x-cache")
        .map_or("", |v| v.to_str().unwrap())
        .to_owned();
    let body = r.json().await.unwrap_or(Value::Null);
    Reply {
        status,
        x_cache,
        body,
    }
}

async fn send(
    http: &Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = http.request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

/// `catalog_db_queries_total` of a service.
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

impl Stack {
    fn url(&self, path: &str) -> String {
        self.svc.url(path)
    }

    async fn put(&self, path: &str, body: Value) -> StatusCode {
        send(
            &self.http,
            reqwest::Method::PUT,
            &self.url(path),
            Some(body),
        )
        .await
        .0
    }

    async fn get(&self, path: &str) -> Reply {
        get(&self.http, &self.url(path)).await
    }

    async fn queries(&self) -> u64 {
        queries(&self.http, &self.svc).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_headers_and_writes_visible_at_once() {
    let s = stack(&[]).await;
    use reqwest::Method;
    let r = s.get("/products/p1").await;
    assert_eq!(
        (r.status, r.x_cache.as_str(), r.body["name"].as_str()),
        (StatusCode::OK, "miss", Some("Product 1"))
    );
    assert_eq!(s.get("/products/p1").await.x_cache, "hit");
    assert_eq!(s.get("/products?limit=100").await.x_cache, "miss");
    assert_eq!(s.get("/products?limit=100").await.x_cache, "hit");
    assert_eq!(s.get("/products/n1").await.status, StatusCode::NOT_FOUND);

    assert_eq!(
        s.put("/products/p1", json!({"name": "Lamp", "price": 3}))
            .await,
        StatusCode::OK
    );
    assert_eq!(s.get("/products/p1").await.body["name"], "Lamp");
    let list = s.get("/products?limit=100").await;
    let p1 = list.body["products"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "p1")
        .unwrap()
        .clone();
    assert_eq!(
        (p1["name"].as_str(), p1["price"].as_f64()),
        (Some("Lamp"), Some(3.0))
    );

    let (st, created) = send(
        &s.http,
        Method::POST,
        &s.url("/products"),
        Some(json!({"id": "n1", "name": "New", "price": 1.5, "categoryId": "c1"})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(s.get("/products/n1").await.body, created);
    assert_eq!(
        s.get("/products?limit=100").await.body["products"][0]["id"],
        "n1"
    );

    let (st, _) = send(&s.http, Method::DELETE, &s.url("/products/n1"), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(s.get("/products/n1").await.status, StatusCode::NOT_FOUND);
    let list = s.get("/products?limit=100").await;
    assert_eq!(
        (
            list.body["products"][0]["id"].as_str(),
            list.body["total"].as_u64()
        ),
        (Some("p50"), Some(50))
    );

    s.get("/products/p21").await;
    assert_eq!(
        s.put("/categories/c1", json!({"name": "Lighting"})).await,
        StatusCode::OK
    );
    for id in ["p1", "p21", "p41"] {
        assert_eq!(
            s.get(&format!("/products/{id}")).await.body["category"]["name"],
            "Lighting",
            "{id}"
        );
    }
    let list = s.get("/products?limit=100").await;
    assert!(
        list.body["products"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["categoryId"] == "c1")
            .all(|p| p["category"]["name"] == "Lighting")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_cold_reads_of_one_id_are_one_db_load() {
    let s = stack(&[]).await;
    let before = s.queries().await;
    let barrier = Arc::new(tokio::sync::Barrier::new(200));
    let url = s.url("/products/p7");
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (http, barrier, url) = (s.http.clone(), barrier.clone(), url.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                get(&http, &url).await
            })
        })
        .collect();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(
            (r.status, r.body["id"].as_str()),
            (StatusCode::OK, Some("p7"))
        );
    }
    assert_eq!(
        s.queries().await - before,
        1,
        "200 concurrent cold reads, one database load"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_id_costs_one_load_per_negative_ttl() {
    // Early refresh off: a key read in a tight loop would otherwise be refreshed before its
    // TTL ends and never go stale, which is what this test watches for.
    let s = stack(&["--negative-ttl", "3s", "--early-refresh", "0"]).await;
    let before = s.queries().await;
    let started = std::time::Instant::now();
    let mut misses = 0;
    for _ in 0..30 {
        let r = s.get("/products/ghost").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        misses += usize::from(r.x_cache == "miss");
    }
    let loads = s.queries().await - before;
    assert_eq!(
        loads, misses as u64,
        "every miss is one load, every hit none"
    );
    if started.elapsed() < Duration::from_millis(2700) {
        // Within the (jittered) TTL, only the first read loaded.
        assert_eq!(misses, 1);
    }
    // After the TTL, one more load: a "not found" has no stale window (it is never served
    // stale, and gone from the cache at its TTL), so the next read is a miss.
    let last = std::sync::Mutex::new(String::new());
    let (svc, seen) = (&s, &last);
    let expired = eventually(Duration::from_secs(20), move || async move {
        let r = svc.get("/products/ghost").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        let done = r.x_cache != "hit";
        *seen.lock().unwrap() = r.x_cache;
        done
    })
    .await;
    let after_hits = last.into_inner().unwrap();
    assert!(
        expired && after_hits == "miss",
        "the negative entry expires, never served stale (then: {after_hits:?})"
    );
    assert_eq!(s.queries().await - before, loads + 1, "one more load");
    // The miss stored a fresh "not found": hits again, with no further load.
    let r = s.get("/products/ghost").await;
    assert_eq!(
        (r.status, r.x_cache.as_str()),
        (StatusCode::NOT_FOUND, "hit")
    );
    assert_eq!(s.queries().await - before, loads + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_redis_mid_run_gives_clients_no_errors() {
    let mut s = stack(&[]).await;
    for i in 1..=50 {
        assert_eq!(
            s.get(&format!("/products/p{i}")).await.status,
            StatusCode::OK
        );
    }
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|t| {
            let (http, base, errors, done) = (
                s.http.clone(),
                s.svc.base.clone(),
                errors.clone(),
                done.clone(),
            );
            tokio::spawn(async move {
                let mut n = 0u32;
                // Bounded: at most 5000 requests per reader.
                while n < 5000 && !(done.load(std::sync::atomic::Ordering::SeqCst) && n >= 100) {
                    let path = if n.is_multiple_of(10) {
                        "/products?limit=10".to_owned()
                    } else {
                        format!("/products/p{}", (n * 7 + t) % 50 + 1)
                    };
                    let r = get(&http, &format!("{base}{path}")).await;
                    if r.status != StatusCode::OK {
                        errors
                            .lock()
                            .unwrap()
                            .push(format!("{path}: {} {}", r.status, r.body));
                    }
                    n += 1;
                }
                n
            })
        })
        .collect();
    s.redis.kill();
    // Writes while Redis is gone succeed and are visible at once.
    assert_eq!(
        s.put("/products/p3", json!({"name": "During outage"}))
            .await,
        StatusCode::OK
    );
    assert_eq!(s.get("/products/p3").await.body["name"], "During outage");
    let health = s.get("/healthz").await.body;
    assert_eq!(
        (&health["status"], &health["db"], &health["cache"]),
        (&json!("degraded"), &json!("up"), &json!("down"))
    );
    // The feed reads the database, which answers; what it applies waits for Redis.
    assert!(
        health["feed"] == "up" || health["feed"] == "behind",
        "{health}"
    );
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for r in readers {
        total += r.await.unwrap();
    }
    let errors = errors.lock().unwrap();
    assert!(
        errors.is_empty(),
        "{} of {total} requests failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_during_a_redis_pause_is_not_undone_when_it_resumes() {
    let s = stack(&[]).await;
    s.get("/products/p2").await;
    assert_eq!(s.get("/products/p2").await.x_cache, "hit");
    s.redis.pause();
    assert_eq!(
        s.put("/products/p2", json!({"name": "While paused"})).await,
        StatusCode::OK
    );
    assert_eq!(s.get("/products/p2").await.body["name"], "While paused");
    s.redis.resume();
    for _ in 0..20 {
        let r = s.get("/products/p2").await;
        assert_eq!(
            (r.status, r.body["name"].as_str()),
            (StatusCode::OK, Some("While paused"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_embedded_setup_seeds_a_sqlite_file_and_stops_on_sigterm() {
    let mut svc = Service::start(&[]);
    let http = Client::new();
    let page = get(&http, &svc.url("/products")).await;
    assert_eq!(
        (page.status, page.x_cache.as_str()),
        (StatusCode::OK, "miss")
    );
    assert_eq!(
        (
            page.body["total"].as_u64(),
            page.body["totalPages"].as_u64()
        ),
        (Some(1000), Some(50))
    );
    assert_eq!(page.body["products"][0]["id"], "p1000");
    let p = get(&http, &svc.url("/products/p1000")).await;
    assert_eq!(
        (p.body["price"].as_f64(), p.body["categoryId"].as_str()),
        (Some(0.99), Some("c20"))
    );
    assert!(svc.dir().join("catalog.db").exists());
    // The change feed runs on the SQLite file by default (it reports `behind` until its
    // first read).
    let healthy = eventually(Duration::from_secs(5), || async {
        get(&http, &svc.url("/healthz")).await.body
            == json!({"status": "ok", "db": "up", "cache": "up", "feed": "up"})
    })
    .await;
    assert!(healthy, "{}", get(&http, &svc.url("/healthz")).await.body);
    assert!(svc.terminate(), "exits with success on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_share_one_prefix_version_key() {
    let s = stack(&[]).await;
    let pages = [1_u64, 2, 3, 7, 40, 4_294_967_296, 9_007_199_254_740_991];
    for page in pages {
        for limit in [1, 20] {
            let r = s.get(&format!("/products?page={page}&limit={limit}")).await;
            assert_eq!(r.status, StatusCode::OK);
        }
    }
    let redis = s.redis.conn().await;
    let keys = |pattern: &'static str| {
        let mut redis = redis.clone();
        async move {
            let mut k: Vec<String> = redis::cmd("KEYS")
                .arg(pattern)
                .query_async(&mut redis)
                .await
                .unwrap();
            k.sort();
            k
        }
    };
    assert_eq!(
        keys("catalog:e:products:list:*").await.len(),
        pages.len() * 2
    );
    assert_eq!(
        keys("catalog:p:*").await,
        [
            "catalog:p:product:",
            "catalog:p:products:",
            "catalog:p:products:list:"
        ],
        "however many pages are read, the list pages have one prefix version key (and \
         their products, read from their own entries, one of their own)"
    );
    // Which is the one a create invalidates: every page reloads. A price update drops its
    // product's entry only (p1 is on no first page here).
    let r = s.get("/products?page=1&limit=20").await;
    assert_eq!(r.x_cache, "hit");
    assert_eq!(
        s.put("/products/p1", json!({"price": 1.5})).await,
        StatusCode::OK
    );
    let r = s.get("/products?page=1&limit=20").await;
    assert_eq!(r.x_cache, "hit", "a price update drops no page");
    let (status, _) = send(
        &s.http,
        reqwest::Method::POST,
        &s.url("/products"),
        Some(json!({"name": "New", "price": 1, "categoryId": "c1"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let r = s.get("/products?page=1&limit=20").await;
    assert_eq!(r.x_cache, "miss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_trusting_a_private_ca() {
    let redis = TestRedis::start_tls();
    let ca = redis.ca_file().display().to_string();
    let url = redis.url();
    let http = Client::new();
    let trusted = Service::start(&[
        "--database-url",
        "sqlite::memory:",
        "--redis-url",
        &url,
        "--redis-ca-file",
        &ca,
    ]);
    let health = get(&http, &trusted.url("/healthz")).await.body;
    assert_eq!(health["cache"], "up", "{health}");
    assert_eq!(
        get(&http, &trusted.url("/products/p1")).await.x_cache,
        "miss"
    );
    assert_eq!(
        get(&http, &trusted.url("/products/p1")).await.x_cache,
        "hit"
    );
    // Without the CA the certificate is refused: the service serves from the database.
    let untrusted = Service::start(&["--database-url", "sqlite::memory:", "--redis-url", &url]);
    let health = get(&http, &untrusted.url("/healthz")).await.body;
    assert_eq!(health["cache"], "down", "{health}");
    let r = get(&http, &untrusted.url("/products/p1")).await;
    assert_eq!(r.status, StatusCode::OK);
}

/// Passwords the tests below put into URLs; none may ever be shown.
const SECRETS: [&str; 4] = ["Sekr3t", "x@y", "Sekr3tQ", "Pa%2Fss"];

fn assert_no_secret(log: &str) {
    for secret in SECRETS {
        assert!(!log.contains(secret), "{secret:?} is shown:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_in_urls_never_reach_the_ready_log() {
    let pg = TestPostgres::new().await;
    let redis = TestRedis::start();
    // Trust authentication ignores the password; the default user of a Redis without
    // `requirepass` takes any.
    let database = format!("{}?sslmode=disable&password=Sekr3tQ", pg.url);
    let redis_url = redis.url().replace("redis://", "redis://default:Pa%2Fss@");
    let (svc, log) = Service::start_logged(
        &["--database-url", &database, "--redis-url", &redis_url],
        "info",
    );
    assert!(
        log.wait_for("catalog ready", Duration::from_secs(10)),
        "{}",
        log.text()
    );
    let http = Client::new();
    assert_eq!(
        get(&http, &svc.url("/products/p1")).await.status,
        StatusCode::OK
    );
    let text = log.text();
    assert!(text.contains("password=***"), "{text}");
    assert_no_secret(&text);
}

#[test]
fn passwords_in_urls_never_reach_a_start_up_error() {
    for args in [
        // Not even a URL to sqlx (the `/` ends the authority early).
        &["--database-url", "postgres://u:Sekr3t/x@y@127.0.0.1:1/db"][..],
        // Nothing listens on port 1.
        &[
            "--database-url",
            "postgres://u@127.0.0.1:1/db?password=Sekr3tQ",
            "--db-timeout",
            "200ms",
        ],
        // Not a URL to redis-rs.
        &[
            "--database-url",
            "sqlite::memory:",
            "--redis-url",
            "redis://:Sekr3t/x@y@127.0.0.1:1",
        ],
    ] {
        let (ok, log) = Service::run_to_exit(args);
        assert!(!ok, "{args:?} started");
        assert!(log.contains("Error:"), "{args:?}: {log}");
        assert_no_secret(&log);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_request_in_flight_finish() {
    let mut svc = Service::start(&["--db-latency-ms", "1500", "--seed-products", "10"]);
    let http = Client::new();
    let url = svc.url("/products/p3");
    let in_flight = tokio::spawn({
        let http = http.clone();
        async move { get(&http, &url).await }
    });
    // In flight once its query has started (the latency is spent inside it).
    let started = eventually(Duration::from_secs(10), || async {
        let text = http
            .get(svc.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .any(|l| l.starts_with(r#"catalog_db_queries_total{source="request"} "#))
    })
    .await;
    assert!(started, "the request reached the database");
    svc.sigterm();
    let r = in_flight.await.unwrap();
    assert_eq!(
        (r.status, r.body["id"].as_str()),
        (StatusCode::OK, Some("p3"))
    );
    assert!(svc.exited(Duration::from_secs(10)), "exits with success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_sharing_redis_see_each_others_writes_at_once() {
    let a = stack(&[]).await;
    let db_url = a.pg.url.clone();
    let redis_url = a.redis.url();
    let b = Service::start(&["--database-url", &db_url, "--redis-url", &redis_url]);
    let http = &a.http;

    // Cold reads spread over both instances: one database load in all (the lease).
    let (qa, qb) = (a.queries().await, queries(http, &b).await);
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let url = if i % 2 == 0 {
                a.url("/products/p9")
            } else {
                b.url("/products/p9")
            };
            let (http, barrier) = (http.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                get(&http, &url).await.status
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let qb2 = queries(http, &b).await;
    assert_eq!(
        a.queries().await - qa + qb2 - qb,
        1,
        "one load across two instances"
    );

    // A write on one instance is visible on the other at once.
    get(http, &b.url("/products/p5")).await;
    assert_eq!(get(http, &b.url("/products/p5")).await.x_cache, "hit");
    get(http, &b.url("/products?limit=50")).await;
    assert_eq!(
        a.put("/products/p5", json!({"name": "From A"})).await,
        StatusCode::OK
    );
    assert_eq!(
        get(http, &b.url("/products/p5")).await.body["name"],
        "From A"
    );
    let list = get(http, &b.url("/products?limit=50")).await;
    assert!(
        list.body["products"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "From A")
    );

    assert_eq!(
        a.put("/categories/c5", json!({"name": "Renamed on A"}))
            .await,
        StatusCode::OK
    );
    assert_eq!(
        get(http, &b.url("/products/p5")).await.body["category"]["name"],
        "Renamed on A"
    );
    assert_eq!(
        get(http, &b.url("/products/p25")).await.body["category"]["name"],
        "Renamed on A"
    );
}

async fn metrics_of(http: &Client, svc: &Service) -> String {
    http.get(svc.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The documented bound of the L1: a write on one instance is seen by the others after it.
const L1_BOUND: Duration = Duration::from_millis(100);

/// Reads `url` until `seen(body)` holds. Reads that began within the bound after the write
/// was acknowledged (`acked`) may still see the old value; one that began later must not.
/// Returns when the new value was first seen, after `acked`.
async fn seen_within_bound(
    http: &Client,
    url: &str,
    acked: std::time::Instant,
    seen: impl Fn(&Value) -> bool,
) -> Duration {
    loop {
        let began = std::time::Instant::now();
        let r = get(http, url).await;
        assert_eq!(r.status, StatusCode::OK);
        if seen(&r.body) {
            return acked.elapsed();
        }
        assert!(
            began.duration_since(acked) <= L1_BOUND,
            "{url}: still the old value in a read that began {:?} after the write",
            began.duration_since(acked)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_l1_a_write_on_one_instance_is_seen_by_another_within_the_bound() {
    // An L1 TTL far beyond the bound: only the invalidation messages can explain convergence.
    let l1 = ["--l1-capacity", "1000", "--l1-ttl", "60s"];
    let a = stack(&l1).await;
    let (db_url, redis_url) = (a.pg.url.clone(), a.redis.url());
    let b = Service::start(
        &[
            &["--database-url", &db_url, "--redis-url", &redis_url][..],
            &l1[..],
        ]
        .concat(),
    );
    let http = &a.http;

    // B serves p5, a list page and p25 (category c5) from its L1.
    let (p5, p25, list) = (
        b.url("/products/p5"),
        b.url("/products/p25"),
        b.url("/products?limit=50"),
    );
    let l1_hits = metric_sum(&metrics_of(http, &b).await, "aside_l1_hits_total");
    for _ in 0..3 {
        for url in [&p5, &p25, &list] {
            assert_eq!(get(http, url).await.status, StatusCode::OK);
        }
    }
    let served = metric_sum(&metrics_of(http, &b).await, "aside_l1_hits_total") - l1_hits;
    assert!(served > 0.0, "b's L1 served nothing");

    let mut took = Vec::new();
    assert_eq!(
        a.put("/products/p5", json!({"name": "From A"})).await,
        StatusCode::OK
    );
    let acked = std::time::Instant::now();
    took.push(seen_within_bound(http, &p5, acked, |p| p["name"] == "From A").await);
    took.push(
        seen_within_bound(http, &list, acked, |l| {
            l["products"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["name"] == "From A"))
        })
        .await,
    );

    // A category rename (a tag learnt from the product) reaches B's L1 too.
    for _ in 0..3 {
        get(http, &p25).await;
    }
    assert_eq!(
        a.put("/categories/c5", json!({"name": "Renamed on A"}))
            .await,
        StatusCode::OK
    );
    let acked = std::time::Instant::now();
    took.push(
        seen_within_bound(http, &p25, acked, |p| {
            p["category"]["name"] == "Renamed on A"
        })
        .await,
    );
    eprintln!("seen on the other instance after: {took:?}");

    // And the writer sees its own writes at once.
    assert_eq!(
        a.get("/products/p25").await.body["category"]["name"],
        "Renamed on A"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_reads_are_cached_and_writes_seen_at_once() {
    let pg = TestPostgres::new().await;
    let cluster = TestCluster::start();
    let urls = cluster.urls().join(",");
    let svc = Service::start(&[
        "--database-url",
        &pg.url,
        "--redis-cluster-urls",
        &urls,
        "--seed-products",
        "50",
    ]);
    let http = Client::new();
    let url = |p: &str| svc.url(p);
    for path in ["/products/p1", "/products?page=1&limit=100"] {
        let first = get(&http, &url(path)).await;
        let again = get(&http, &url(path)).await;
        assert_eq!(
            (first.status, first.x_cache.as_str(), again.x_cache.as_str()),
            (StatusCode::OK, "miss", "hit"),
            "{path}"
        );
        assert_eq!(first.body, again.body, "{path}");
    }
    let before = queries(&http, &svc).await;
    let (status, _) = send(
        &http,
        reqwest::Method::PUT,
        &url("/products/p1"),
        Some(json!({"name": "Renamed on a cluster"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let p = get(&http, &url("/products/p1")).await;
    assert_eq!(
        (p.x_cache.as_str(), p.body["name"].as_str()),
        ("miss", Some("Renamed on a cluster"))
    );
    // The page kept its entry (an update drops no page) and shows the new name; it is a
    // hit once p1 is cached again (the change feed drops p1 once more when it reads the
    // write from the outbox, so the first page read may have to load it).
    let renamed_page = eventually(Duration::from_secs(5), || async {
        let page = get(&http, &url("/products?page=1&limit=100")).await;
        page.x_cache == "hit"
            && page.body["products"]
                .as_array()
                .unwrap()
                .iter()
                .any(|q| q["name"] == "Renamed on a cluster")
    })
    .await;
    assert!(renamed_page, "the cached page shows the renamed product");
    // A category rename reaches the cached product through its tag, on another node. (The
    // change feed invalidates the write above once more when it reads it from the outbox:
    // the product is cached again after that.)
    let cached = eventually(Duration::from_secs(5), || async {
        get(&http, &url("/products/p1")).await.x_cache == "hit"
            && get(&http, &url("/products/p1")).await.x_cache == "hit"
    })
    .await;
    assert!(cached, "p1 is cached again");
    let (status, _) = send(
        &http,
        reqwest::Method::PUT,
        &url("/categories/c1"),
        Some(json!({"name": "Lamps"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let p = get(&http, &url("/products/p1")).await;
    assert_eq!(
        (p.x_cache.as_str(), p.body["category"]["name"].as_str()),
        ("miss", Some("Lamps"))
    );
    assert!(queries(&http, &svc).await > before);
    let health = get(&http, &url("/healthz")).await;
    assert_eq!(health.body["cache"], "up");
}

/// Writes to one product do not stop the cache from filling others: with `p1` written every
/// 10 ms, the second read of every other product is a hit, and no fill is refused (nobody
/// reads `p1`, so no fill depends on what changes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrelated_writes_do_not_stop_other_products_from_filling() {
    let s = stack(&["--db-latency-ms", "20"]).await;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (http, url, done) = (s.http.clone(), s.url("/products/p1"), done.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut n = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                tick.tick().await;
                let (st, _) = send(
                    &http,
                    reqwest::Method::PUT,
                    &url,
                    Some(json!({"price": 100 + n})),
                )
                .await;
                assert_eq!(st, StatusCode::OK);
                n += 1;
            }
            n
        })
    };
    let mut second_misses = Vec::new();
    for i in 10..=50 {
        let path = format!("/products/p{i}");
        assert_eq!(s.get(&path).await.status, StatusCode::OK);
        let again = s.get(&path).await;
        if again.x_cache != "hit" {
            second_misses.push(format!("{path}: {}", again.x_cache));
        }
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let writes = writer.await.unwrap();
    assert!(writes > 10, "the writer kept writing ({writes})");
    assert!(
        second_misses.is_empty(),
        "second reads that missed while p1 was written: {second_misses:?}"
    );
    let metrics = metrics_of(&s.http, &s.svc).await;
    assert_eq!(metric_sum(&metrics, "aside_fills_refused_total"), 0.0);
}
