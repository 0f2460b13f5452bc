//! Handler tests: `app(state).oneshot(request)` over an in-memory SQLite database (30 seeded
//! products) and the in-process cache, for every route, status code and validation rule of
//! the HTTP contract of the README.
#![allow(clippy::unwrap_used)]

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use catalog::config::{Cli, Command};
use catalog::db::{self, Db, Page, Repository};
use catalog::model::{Category, Id, NewProduct, Product, ProductPatch};
use catalog::service::{Catalog, Ttls};
use catalog::{AppState, app};
use chrono::{DateTime, Utc};
use clap::Parser;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use testkit::eventually;
use tower::ServiceExt;

async fn state_with(args: &[&str]) -> AppState {
    // Every setting from flags (an empty --redis-url: the in-process store, whatever REDIS_URL
    // says), so the environment cannot point these tests at a shared server.
    let mut argv = vec![
        "catalog",
        "serve",
        "--database-url",
        "sqlite::memory:",
        "--redis-url",
        "",
        "--seed-products",
        "30",
    ];
    argv.extend_from_slice(args);
    let Command::Serve(config) = Cli::try_parse_from(argv).unwrap().command;
    catalog::build(&config).await.unwrap()
}

async fn state() -> AppState {
    state_with(&[]).await
}

/// Like [`state`], with `products` seeded products.
async fn seeded(products: &str) -> AppState {
    let argv = [
        "catalog",
        "serve",
        "--database-url",
        "sqlite::memory:",
        "--redis-url",
        "",
        "--seed-products",
        products,
    ];
    let Command::Serve(config) = Cli::try_parse_from(argv).unwrap().command;
    catalog::build(&config).await.unwrap()
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn x_cache(&self) -> &str {
        self.headers
            .get("x-cache")
            .map_or("", |v| v.to_str().unwrap())
    }

    /// Asserts the Error body shape and returns its code.
    fn error_code(&self) -> &str {
        let e = &self.body["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "no message: {}",
            self.body
        );
        assert_eq!(self.body.as_object().unwrap().len(), 1, "{}", self.body);
        e["code"]
            .as_str()
            .unwrap_or_else(|| panic!("not an Error body: {}", self.body))
    }
}

async fn send(s: &AppState, req: Request<Body>) -> Reply {
    let resp = app(s.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    Reply {
        status,
        headers,
        body,
    }
}

async fn call(s: &AppState, method: Method, uri: &str, body: Option<&str>) -> Reply {
    let mut b = Request::builder().method(method).uri(uri);
    if body.is_some() {
        b = b.header(header::CONTENT_TYPE, "application/json");
    }
    send(
        s,
        b.body(Body::from(body.unwrap_or("").to_owned())).unwrap(),
    )
    .await
}

async fn get(s: &AppState, uri: &str) -> Reply {
    call(s, Method::GET, uri, None).await
}

/// Everything in the database, read without going through the cache or the query counter.
async fn snapshot(s: &AppState) -> Page {
    s.catalog.db().repository().page(0, 1000).await.unwrap()
}

#[tokio::test]
async fn get_product_returns_the_contract_shape_then_hits() {
    let s = state().await;
    let r = get(&s, "/products/p1").await;
    assert_eq!((r.status, r.x_cache()), (StatusCode::OK, "miss"));
    assert_eq!(
        r.body,
        json!({
            "id": "p1", "name": "Product 1", "price": 1.99, "categoryId": "c1",
            "category": { "id": "c1", "name": "Category 1" },
            "createdAt": "2025-01-01T00:00:01Z", "updatedAt": "2025-01-01T00:00:01Z"
        })
    );
    let again = get(&s, "/products/p1").await;
    assert_eq!((again.status, again.x_cache()), (StatusCode::OK, "hit"));
    assert_eq!(again.body, r.body);
    assert_eq!(s.catalog.db().queries(), 1);
}

#[tokio::test]
async fn missing_product_is_404_and_negatively_cached() {
    let s = state().await;
    let r = get(&s, "/products/nope").await;
    assert_eq!(
        (r.status, r.x_cache(), r.error_code()),
        (StatusCode::NOT_FOUND, "miss", "not_found")
    );
    for _ in 0..20 {
        let r = get(&s, "/products/nope").await;
        assert_eq!((r.status, r.x_cache()), (StatusCode::NOT_FOUND, "hit"));
    }
    assert_eq!(
        s.catalog.db().queries(),
        1,
        "one database read for 21 requests"
    );
}

#[tokio::test]
async fn cold_concurrent_reads_load_once() {
    let s = state().await;
    let barrier = Arc::new(tokio::sync::Barrier::new(200));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (s, barrier) = (s.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                get(&s, "/products/p7").await
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
    assert_eq!(s.catalog.db().queries(), 1);
}

#[tokio::test]
async fn list_pages_newest_first() {
    let s = state().await;
    let r = get(&s, "/products").await;
    assert_eq!((r.status, r.x_cache()), (StatusCode::OK, "miss"));
    assert_eq!(
        (r.body["total"].as_u64(), r.body["page"].as_u64()),
        (Some(30), Some(1))
    );
    assert_eq!(
        (r.body["limit"].as_u64(), r.body["totalPages"].as_u64()),
        (Some(20), Some(2))
    );
    let products = r.body["products"].as_array().unwrap();
    assert_eq!(products.len(), 20);
    assert_eq!(products[0]["id"], "p30");
    assert_eq!(products[0]["category"]["name"], "Category 10");
    assert_eq!(get(&s, "/products").await.x_cache(), "hit");

    let r = get(&s, "/products?page=2&limit=20").await;
    let ids: Vec<_> = r.body["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 10);
    assert_eq!((ids[0], ids[9]), ("p10", "p1"));

    let past = get(&s, "/products?page=9&limit=7").await;
    assert_eq!(past.status, StatusCode::OK);
    assert_eq!(past.body["products"], json!([]));
    assert_eq!(
        (
            past.body["total"].as_u64(),
            past.body["totalPages"].as_u64()
        ),
        (Some(30), Some(5))
    );

    let big = get(&s, "/products?limit=100").await;
    assert_eq!(big.body["products"].as_array().unwrap().len(), 30);

    // Any page a JSON client can send: past 2^32, up to 2^53 - 1.
    for page in [4_294_967_296_u64, 99_999_999_999, 9_007_199_254_740_991] {
        for limit in [1, 100] {
            let r = get(&s, &format!("/products?page={page}&limit={limit}")).await;
            assert_eq!(r.status, StatusCode::OK, "page {page}: {}", r.body);
            assert_eq!(r.body["products"], json!([]));
            assert_eq!(
                (r.body["page"].as_u64(), r.body["total"].as_u64()),
                (Some(page), Some(30))
            );
        }
    }
    let r = get(&s, "/products?page=9007199254740992&limit=1").await;
    assert_eq!(
        (r.status, r.error_code()),
        (StatusCode::BAD_REQUEST, "invalid_page")
    );
}

/// A list page caches its ids; its products come from their own entries. So price updates of
/// products on two of 50 warm pages cost, when all 50 are read again, one query per page
/// that holds an updated product (its products that missed, in one `IN`) and no list query;
/// those pages are misses, the others hits, and every page shows the new prices.
#[tokio::test]
async fn price_updates_drop_no_list_page() {
    let s = seeded("1000").await;
    let pages = 1..=50u32;
    for page in pages.clone() {
        let r = get(&s, &format!("/products?page={page}&limit=20")).await;
        assert_eq!(
            (r.status, r.x_cache()),
            (StatusCode::OK, "miss"),
            "page {page}"
        );
    }
    for page in pages.clone() {
        let r = get(&s, &format!("/products?page={page}&limit=20")).await;
        assert_eq!(r.x_cache(), "hit", "page {page}");
    }
    // p1000..p998 are on page 1, p880 on page 7.
    let updated = ["p1000", "p999", "p998", "p880"];
    for id in updated {
        let r = call(
            &s,
            Method::PUT,
            &format!("/products/{id}"),
            Some(r#"{"price":4242.5}"#),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let before = s.catalog.db().queries();
    for page in pages {
        let r = get(&s, &format!("/products?page={page}&limit=20")).await;
        let products = r.body["products"].as_array().unwrap();
        assert_eq!(products.len(), 20, "page {page}");
        let changed: Vec<&str> = products
            .iter()
            .filter(|p| updated.contains(&p["id"].as_str().unwrap()))
            .inspect(|p| assert_eq!(p["price"], 4242.5, "page {page}: {p}"))
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        let want = if changed.is_empty() { "hit" } else { "miss" };
        assert_eq!(r.x_cache(), want, "page {page}");
    }
    assert_eq!(
        s.catalog.db().queries() - before,
        2,
        "one product query for page 1, one for page 7, no list query"
    );
}

/// A create or a delete changes the list's order and total: every page is listed again.
#[tokio::test]
async fn creates_and_deletes_drop_the_list_pages() {
    let s = state().await;
    for page in ["/products?limit=5", "/products?page=2&limit=5"] {
        get(&s, page).await;
        assert_eq!(get(&s, page).await.x_cache(), "hit");
    }
    let r = call(
        &s,
        Method::POST,
        "/products",
        Some(r#"{"id":"n1","name":"New","price":1,"categoryId":"c1"}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let first = get(&s, "/products?limit=5").await;
    assert_eq!(first.x_cache(), "miss");
    assert_eq!(
        (
            first.body["products"][0]["id"].as_str(),
            first.body["total"].as_u64()
        ),
        (Some("n1"), Some(31))
    );
    let second = get(&s, "/products?page=2&limit=5").await;
    assert_eq!(
        (second.x_cache(), second.body["products"][0]["id"].as_str()),
        ("miss", Some("p26")),
        "the second page moved by one"
    );
    assert_eq!(
        call(&s, Method::DELETE, "/products/n1", None).await.status,
        StatusCode::NO_CONTENT
    );
    let first = get(&s, "/products?limit=5").await;
    assert_eq!(
        (
            first.x_cache(),
            first.body["products"][0]["id"].as_str(),
            first.body["total"].as_u64()
        ),
        ("miss", Some("p30"), Some(30))
    );
}

/// A product gone between the read of a page's ids and the read of its products (deleted by
/// another client, its entry dropped) is left out of the page: no error, the cached total.
#[tokio::test]
async fn a_product_gone_under_a_cached_page_is_left_out() {
    let s = state().await;
    get(&s, "/products?limit=3").await;
    // Deleted behind the catalog's back (no feed on an in-memory database), its entry
    // dropped as the feed would drop it.
    assert!(
        s.catalog
            .db()
            .repository()
            .delete(&Id::parse("p29").unwrap())
            .await
            .unwrap()
    );
    s.catalog
        .cache()
        .unwrap()
        .del(["product:p29"])
        .await
        .unwrap();
    let r = get(&s, "/products?limit=3").await;
    assert_eq!(r.status, StatusCode::OK);
    let ids: Vec<&str> = r.body["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["p30", "p28"]);
    assert_eq!(r.body["total"], 30, "the total the page was listed with");
}

#[tokio::test]
async fn create_is_201_and_visible_at_once() {
    let s = state().await;
    assert_eq!(get(&s, "/products/n1").await.status, StatusCode::NOT_FOUND); // cached "not found"
    get(&s, "/products?limit=5").await; // cached page
    let r = call(
        &s,
        Method::POST,
        "/products",
        Some(r#"{"id":"n1","name":"Lamp","price":0,"categoryId":"c2"}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        (r.body["id"].as_str(), r.body["price"].as_f64()),
        (Some("n1"), Some(0.0))
    );
    assert_eq!(
        r.body["category"],
        json!({"id": "c2", "name": "Category 2"})
    );
    assert_eq!(r.body["createdAt"], r.body["updatedAt"]);

    let got = get(&s, "/products/n1").await;
    assert_eq!((got.status, &got.body), (StatusCode::OK, &r.body));
    let page = get(&s, "/products?limit=5").await;
    assert_eq!(page.body["products"][0]["id"], "n1");
    assert_eq!(page.body["total"], 31);

    let generated = call(
        &s,
        Method::POST,
        "/products",
        Some(r#"{"name":"Desk","price":3.5,"categoryId":"c3"}"#),
    )
    .await;
    assert_eq!(generated.status, StatusCode::CREATED);
    let id = generated.body["id"].as_str().unwrap();
    assert!(Id::parse(id).is_ok());
    assert_eq!(
        get(&s, &format!("/products/{id}")).await.body["name"],
        "Desk"
    );

    let dup = call(
        &s,
        Method::POST,
        "/products",
        Some(r#"{"id":"n1","name":"Other","price":1,"categoryId":"c1"}"#),
    )
    .await;
    assert_eq!(
        (dup.status, dup.error_code()),
        (StatusCode::CONFLICT, "conflict")
    );
    assert_eq!(get(&s, "/products/n1").await.body["name"], "Lamp");
}

#[tokio::test]
async fn update_is_visible_at_once_in_product_and_lists() {
    let s = state().await;
    get(&s, "/products/p30").await;
    assert_eq!(get(&s, "/products/p30").await.x_cache(), "hit");
    get(&s, "/products?limit=3").await;
    let r = call(
        &s,
        Method::PUT,
        "/products/p30",
        Some(r#"{"name":"Renamed","price":5}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        (r.body["name"].as_str(), r.body["price"].as_f64()),
        (Some("Renamed"), Some(5.0))
    );
    assert_ne!(r.body["updatedAt"], r.body["createdAt"]);
    let got = get(&s, "/products/p30").await;
    assert_eq!(got.body, r.body);
    let page = get(&s, "/products?limit=3").await;
    assert_eq!(page.body["products"][0], r.body);

    let moved = call(
        &s,
        Method::PUT,
        "/products/p30",
        Some(r#"{"categoryId":"c4"}"#),
    )
    .await;
    assert_eq!(
        moved.body["category"],
        json!({"id": "c4", "name": "Category 4"})
    );
    assert_eq!(get(&s, "/products/p30").await.body["category"]["id"], "c4");

    let missing = call(&s, Method::PUT, "/products/nope", Some(r#"{"name":"x"}"#)).await;
    assert_eq!(
        (missing.status, missing.error_code()),
        (StatusCode::NOT_FOUND, "not_found")
    );
}

#[tokio::test]
async fn delete_is_204_then_404() {
    let s = state().await;
    get(&s, "/products/p30").await;
    get(&s, "/products?limit=2").await;
    let r = call(&s, Method::DELETE, "/products/p30", None).await;
    assert_eq!((r.status, &r.body), (StatusCode::NO_CONTENT, &Value::Null));
    assert_eq!(get(&s, "/products/p30").await.status, StatusCode::NOT_FOUND);
    let page = get(&s, "/products?limit=2").await;
    assert_eq!(
        (
            page.body["products"][0]["id"].as_str(),
            page.body["total"].as_u64()
        ),
        (Some("p29"), Some(29))
    );
    let again = call(&s, Method::DELETE, "/products/p30", None).await;
    assert_eq!(
        (again.status, again.error_code()),
        (StatusCode::NOT_FOUND, "not_found")
    );
}

#[tokio::test]
async fn category_rename_reaches_cached_products_and_lists() {
    let s = state().await;
    // p1 and p21 in category c1 (tagged category:c1 from the loaded rows), p2 in another
    // category, and a list page.
    for uri in [
        "/products/p1",
        "/products/p1",
        "/products/p21",
        "/products/p2",
        "/products?limit=30",
    ] {
        get(&s, uri).await;
    }
    assert_eq!(get(&s, "/products/p1").await.x_cache(), "hit");
    let r = call(
        &s,
        Method::PUT,
        "/categories/c1",
        Some(r#"{"name":"Lamps"}"#),
    )
    .await;
    assert_eq!(
        (r.status, &r.body),
        (StatusCode::OK, &json!({"id": "c1", "name": "Lamps"}))
    );
    for id in ["p1", "p21"] {
        let p = get(&s, &format!("/products/{id}")).await;
        assert_eq!(p.body["category"]["name"], "Lamps", "{id}");
    }
    let p2 = get(&s, "/products/p2").await;
    assert_eq!(
        (p2.x_cache(), &p2.body["category"]["name"]),
        ("hit", &json!("Category 2")),
        "other categories stay cached"
    );
    let page = get(&s, "/products?limit=30").await;
    let renamed = page.body["products"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["categoryId"] == "c1");
    assert!(
        renamed
            .map(|p| &p["category"]["name"])
            .all(|n| n == "Lamps")
    );

    let missing = call(&s, Method::PUT, "/categories/c99", Some(r#"{"name":"x"}"#)).await;
    assert_eq!(
        (missing.status, missing.error_code()),
        (StatusCode::NOT_FOUND, "not_found")
    );
}

#[tokio::test]
async fn a_product_moved_elsewhere_is_not_cached_under_its_old_category() {
    // Two instances sharing one cache and one database: B moves p1 to c2 after A cached it
    // in c1, then B renames c2. A must show the new name.
    let a = state().await;
    let b = AppState::new(Catalog::new(
        a.catalog.db().clone(),
        a.catalog.cache().cloned(),
        Ttls::default(),
    ));
    get(&a, "/products/p1").await;
    assert_eq!(get(&a, "/products/p1").await.x_cache(), "hit");
    let moved = call(
        &b,
        Method::PUT,
        "/products/p1",
        Some(r#"{"categoryId":"c2"}"#),
    )
    .await;
    assert_eq!(moved.status, StatusCode::OK);
    let r = get(&a, "/products/p1").await;
    assert_eq!(
        (r.x_cache(), r.body["category"]["id"].as_str()),
        ("miss", Some("c2"))
    );
    assert_eq!(
        get(&a, "/products/p1").await.x_cache(),
        "hit",
        "cached again, now tagged with its new category"
    );
    call(
        &b,
        Method::PUT,
        "/categories/c2",
        Some(r#"{"name":"Gadgets"}"#),
    )
    .await;
    assert_eq!(
        get(&a, "/products/p1").await.body["category"]["name"],
        "Gadgets"
    );
}

#[tokio::test]
async fn failed_writes_leave_the_cache_as_it_was() {
    let s = state().await;
    get(&s, "/products/p1").await;
    get(&s, "/products?limit=5").await;
    let writes = [
        (
            Method::PUT,
            "/products/p1",
            Some(r#"{"categoryId":"c99"}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/products/nope",
            Some(r#"{"name":"x"}"#),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::DELETE,
            "/products/nope",
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            "/products",
            Some(r#"{"id":"p1","name":"x","price":1,"categoryId":"c1"}"#),
            StatusCode::CONFLICT,
        ),
        (
            Method::POST,
            "/products",
            Some(r#"{"name":"x","price":1,"categoryId":"c99"}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PUT,
            "/categories/c99",
            Some(r#"{"name":"x"}"#),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (m, uri, body, want) in writes {
        assert_eq!(call(&s, m, uri, body).await.status, want, "{uri}");
        assert_eq!(
            get(&s, "/products/p1").await.x_cache(),
            "hit",
            "after {uri}"
        );
        assert_eq!(
            get(&s, "/products?limit=5").await.x_cache(),
            "hit",
            "after {uri}"
        );
    }
}

#[tokio::test]
async fn bad_inputs_are_4xx_with_an_error_body_and_change_nothing() {
    let s = state().await;
    let before = snapshot(&s).await;
    let long_name = format!(r#"{{"name":"{}"}}"#, "x".repeat(201));
    let long_id = format!("/products/{}", "x".repeat(65));
    let mut cases: Vec<(Method, String, Option<String>)> = Vec::new();
    for uri in [
        "/products/p%2A",
        "/products/p*",
        "/products/p%3A1",
        "/products/a%2Fb",
        "/products/%20",
        "/products/%C3%A9",
        "/products/p1%00",
        "/products/..%2F..",
        "/products/%FF",
        "/products/p%3F",
        "/products/%7Bp1%7D",
        "/products/products:list:1:20",
        "/products/",
        long_id.as_str(),
        "/products?page=0",
        "/products?page=-1",
        "/products?page=abc",
        "/products?page=1.5",
        "/products?limit=0",
        "/products?limit=101",
        "/products?limit=x",
        "/products?page=",
        "/products?page=1&page=2",
        "/products?page=9007199254740992",
        "/products?page=18446744073709551616",
        "/products?limit=1e2",
    ] {
        cases.push((Method::GET, uri.to_owned(), None));
    }
    for body in [
        "{}",
        r#"{"name":""}"#,
        &long_name,
        r#"{"name":null}"#,
        r#"{"name":1}"#,
        r#"{"name":["a"]}"#,
        r#"{"price":-1}"#,
        r#"{"price":-0.000001}"#,
        r#"{"price":"1"}"#,
        r#"{"price":1e400}"#,
        r#"{"price":null}"#,
        r#"{"price":true}"#,
        r#"{"categoryId":"c*"}"#,
        r#"{"categoryId":"c99"}"#,
        r#"{"categoryId":""}"#,
        r#"{"categoryId":5}"#,
        r#"{"extra":1}"#,
        r#"{"name":"ok","extra":1}"#,
        r#"{"id":"p2"}"#,
        r#"{"createdAt":"2020-01-01T00:00:00Z"}"#,
        "not json",
        "[]",
        "null",
        "",
        r#"{"name":"a\u0000b"}"#,
        r#"{"name":"\ud800"}"#,
        r#"{"name":"ok""#,
        r#"{"name":"ok"} {}"#,
        r#"{"name":"a","name":"b"}"#,
    ] {
        cases.push((Method::PUT, "/products/p1".into(), Some(body.to_owned())));
    }
    for body in [
        "{}",
        r#"{"name":"x","price":1}"#,
        r#"{"name":"x","categoryId":"c1"}"#,
        r#"{"price":1,"categoryId":"c1"}"#,
        r#"{"id":"bad id","name":"x","price":1,"categoryId":"c1"}"#,
        r#"{"id":"","name":"x","price":1,"categoryId":"c1"}"#,
        r#"{"id":"p:1","name":"x","price":1,"categoryId":"c1"}"#,
        r#"{"id":null,"name":"x","price":1,"categoryId":"c1"}"#,
        r#"{"id":7,"name":"x","price":1,"categoryId":"c1"}"#,
        r#"{"name":"","price":1,"categoryId":"c1"}"#,
        r#"{"name":"x","price":-0.5,"categoryId":"c1"}"#,
        r#"{"name":"x","price":1e999,"categoryId":"c1"}"#,
        r#"{"name":"x","price":"NaN","categoryId":"c1"}"#,
        r#"{"name":"x","price":1,"categoryId":"c99"}"#,
        r#"{"name":"x","price":1,"categoryId":"c1","color":"red"}"#,
        r#"{"id":"p1","name":"x","price":1,"categoryId":"c1"}"#,
        r#"{"name":{"a":1},"price":1,"categoryId":"c1"}"#,
        "[1,2]",
        "\"x\"",
        "",
    ] {
        cases.push((Method::POST, "/products".into(), Some(body.to_owned())));
    }
    for (uri, body) in [
        ("/categories/c1", "{}"),
        ("/categories/c1", r#"{"name":""}"#),
        ("/categories/c1", r#"{"name":7}"#),
        ("/categories/c1", r#"{"name":"x","id":"c2"}"#),
        ("/categories/c1", &long_name),
        ("/categories/c1", r#"{"name":null}"#),
        ("/categories/c%2A", r#"{"name":"x"}"#),
        ("/categories/c99", r#"{"name":"x"}"#),
        ("/categories/", r#"{"name":"x"}"#),
    ] {
        cases.push((Method::PUT, uri.into(), Some(body.to_owned())));
    }
    for uri in ["/products/p%2A", "/products/", "/products/nope"] {
        cases.push((Method::DELETE, uri.into(), None));
    }
    for (m, uri, body) in cases {
        let r = call(&s, m.clone(), &uri, body.as_deref()).await;
        assert!(
            r.status.is_client_error(),
            "{m} {uri} {body:?}: {} {}",
            r.status,
            r.body
        );
        r.error_code();
        assert_own_message(&r, &format!("{m} {uri} {body:?}"));
    }
    // Bodies that are not declared JSON.
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut b = Request::builder().method(Method::POST).uri("/products");
        if let Some(ct) = ct {
            b = b.header(header::CONTENT_TYPE, ct);
        }
        let r = send(
            &s,
            b.body(Body::from(r#"{"name":"x","price":1,"categoryId":"c1"}"#))
                .unwrap(),
        )
        .await;
        assert_eq!(
            (r.status, r.error_code()),
            (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
        );
    }
    assert_eq!(snapshot(&s).await, before, "the database is unchanged");
}

/// The message of a 4xx is the API's own: no serde wording, Rust type names or positions in
/// the body.
fn assert_own_message(r: &Reply, what: &str) {
    let message = r.body["error"]["message"].as_str().unwrap();
    for serde_said in [
        "line ",
        "column",
        "invalid type",
        "invalid value",
        "expected `",
        "struct ",
        "f64",
        "u32",
        "u64",
        "String",
        "Option",
        "sequence",
        "Failed to",
        "serde",
    ] {
        assert!(
            !message.contains(serde_said),
            "{what}: {message:?} says {serde_said:?}"
        );
    }
}

#[tokio::test]
async fn bodies_are_json_objects_read_field_by_field() {
    let s = state().await;
    let before = snapshot(&s).await;
    for body in [
        r#"["x","n",1,"c1"]"#,
        r#"["n",1,"c1"]"#,
        "1",
        "true",
        "null",
        r#""x""#,
    ] {
        let r = call(&s, Method::POST, "/products", Some(body)).await;
        assert_eq!(
            (r.status, r.error_code()),
            (StatusCode::BAD_REQUEST, "invalid_body"),
            "{body}: {}",
            r.body
        );
        assert_eq!(
            r.body["error"]["message"], "the body must be a JSON object",
            "{body}"
        );
    }
    for (uri, body) in [
        ("/products/p1", r#"["renamed"]"#),
        ("/products/p1", r#"["renamed", 3.5, "c2"]"#),
        ("/categories/c1", r#"["renamed"]"#),
    ] {
        let r = call(&s, Method::PUT, uri, Some(body)).await;
        assert_eq!(
            (r.status, r.error_code()),
            (StatusCode::BAD_REQUEST, "invalid_body"),
            "{uri} {body}"
        );
    }
    assert_eq!(snapshot(&s).await, before, "nothing was written");
    assert_eq!(get(&s, "/products/x").await.status, StatusCode::NOT_FOUND);

    // Messages say which field and what it must be.
    for (m, uri, body, message) in [
        (
            Method::POST,
            "/products",
            r#"{"name":"x","price":"1","categoryId":"c1"}"#,
            "the field price must be a number, not a string",
        ),
        (
            Method::POST,
            "/products",
            r#"{"name":"x","categoryId":"c1"}"#,
            "the field price is required",
        ),
        (
            Method::PUT,
            "/products/p1",
            r#"{"name":null}"#,
            "the field name must be a string, not null",
        ),
        (
            Method::PUT,
            "/products/p1",
            r#"{"name":"a","name":"b"}"#,
            "the field \"name\" is given twice",
        ),
        (
            Method::PUT,
            "/products/p1",
            r#"{"color":"red"}"#,
            "unknown field \"color\": the fields are name, price, categoryId",
        ),
        (
            Method::PUT,
            "/categories/c1",
            r#"{"name":{"a":1}}"#,
            "the field name must be a string, not an object",
        ),
        (
            Method::PUT,
            "/products/p1",
            r#"{"name":"x""#,
            "the body is not valid JSON (one JSON object, UTF-8)",
        ),
    ] {
        let r = call(&s, m, uri, Some(body)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(r.body["error"]["message"], message, "{body}");
    }
}

#[tokio::test]
async fn specific_validation_codes() {
    let s = state().await;
    let cases = [
        (Method::GET, "/products/p*", None, "invalid_id"),
        (Method::GET, "/products?page=0", None, "invalid_page"),
        (Method::GET, "/products?limit=101", None, "invalid_limit"),
        (Method::PUT, "/products/p1", Some("{}"), "empty_update"),
        (
            Method::PUT,
            "/products/p1",
            Some(r#"{"name":""}"#),
            "invalid_name",
        ),
        (
            Method::PUT,
            "/products/p1",
            Some(r#"{"price":-1}"#),
            "invalid_price",
        ),
        (
            Method::PUT,
            "/products/p1",
            Some(r#"{"categoryId":"c*"}"#),
            "invalid_category_id",
        ),
        (
            Method::PUT,
            "/products/p1",
            Some(r#"{"categoryId":"c99"}"#),
            "unknown_category",
        ),
        (
            Method::PUT,
            "/products/p1",
            Some(r#"{"nope":1}"#),
            "invalid_body",
        ),
        (Method::PUT, "/products/p1", Some("{"), "invalid_json"),
    ];
    for (m, uri, body, code) in cases {
        let r = call(&s, m, uri, body).await;
        assert_eq!(
            (r.status, r.error_code()),
            (StatusCode::BAD_REQUEST, code),
            "{uri} {body:?}"
        );
    }
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let s = state().await;
    let body = format!(r#"{{"name":"{}"}}"#, "x".repeat(70 * 1024));
    let r = call(&s, Method::PUT, "/products/p1", Some(&body)).await;
    assert_eq!(
        (r.status, r.error_code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    let r = call(&s, Method::POST, "/products", Some(&body)).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Just under the limit is read (and refused for its content, not its size).
    let body = format!(r#"{{"name":"{}"}}"#, "x".repeat(60 * 1024));
    assert_eq!(
        call(&s, Method::PUT, "/products/p1", Some(&body))
            .await
            .error_code(),
        "invalid_name"
    );
}

#[tokio::test]
async fn the_body_limit_is_a_flag() {
    let s = state_with(&["--max-body-bytes", "100"]).await;
    let body = format!(r#"{{"name":"{}"}}"#, "x".repeat(100));
    let r = call(&s, Method::PUT, "/products/p1", Some(&body)).await;
    assert_eq!(
        (r.status, r.error_code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("100 bytes")
    );
    let r = call(&s, Method::PUT, "/products/p1", Some(r#"{"name":"ok"}"#)).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn unknown_routes_and_methods_get_error_bodies() {
    let s = state().await;
    let r = get(&s, "/nothing/here").await;
    assert_eq!(
        (r.status, r.error_code()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let r = call(&s, Method::PATCH, "/products/p1", Some("{}")).await;
    assert_eq!(
        (r.status, r.error_code()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    let r = call(&s, Method::DELETE, "/products", None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    let r = get(&s, "/categories/c1").await;
    assert_eq!(
        (r.status, r.error_code()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
}

#[tokio::test]
async fn an_l1_without_redis_is_refused_at_start() {
    let argv = [
        "catalog",
        "serve",
        "--database-url",
        "sqlite::memory:",
        "--redis-url",
        "",
        "--l1-capacity",
        "100",
    ];
    let Command::Serve(config) = Cli::try_parse_from(argv).unwrap().command;
    let err = catalog::build(&config).await.err().unwrap();
    assert!(
        err.to_string().contains("--l1-capacity needs --redis-url"),
        "{err}"
    );
}

#[tokio::test]
async fn healthz_reports_db_and_cache() {
    let s = state().await;
    let r = get(&s, "/healthz").await;
    assert_eq!(
        (r.status, &r.body),
        (
            StatusCode::OK,
            &json!({"status": "ok", "db": "up", "cache": "up", "feed": "off"})
        )
    );
    let off = state_with(&["--no-cache"]).await;
    assert_eq!(
        get(&off, "/healthz").await.body,
        json!({"status": "ok", "db": "up", "cache": "off", "feed": "off"})
    );
}

#[tokio::test]
async fn metrics_expose_db_queries_and_cache_counters() {
    let s = state().await;
    get(&s, "/products/p1").await;
    get(&s, "/products/p1").await;
    let resp = app(s.clone())
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    for name in [
        "catalog_db_queries_total{source=\"request\"} ",
        "aside_hits_total{",
        "aside_misses_total{",
        "aside_loads_total{",
        "aside_stale_total{",
        "aside_backend_errors_total{",
        // Latencies are histograms, with buckets, not summaries.
        "aside_backend_seconds_bucket{",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} missing from:\n{text}"
        );
    }
}

#[tokio::test]
async fn no_cache_bypasses_the_cache() {
    let s = state_with(&["--no-cache"]).await;
    for _ in 0..3 {
        let r = get(&s, "/products/p1").await;
        assert_eq!((r.status, r.x_cache()), (StatusCode::OK, "bypass"));
        assert_eq!(get(&s, "/products?limit=2").await.x_cache(), "bypass");
        assert_eq!(get(&s, "/products/nope").await.x_cache(), "bypass");
    }
    assert_eq!(
        s.catalog.db().queries(),
        9,
        "every read went to the database"
    );
    let r = call(&s, Method::PUT, "/products/p1", Some(r#"{"name":"N"}"#)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(get(&s, "/products/p1").await.body["name"], "N");
}

/// A database that fails every request-path call: it never answers, or it panics (a bug).
#[derive(Debug)]
enum Broken {
    Hangs,
    Panics,
}

impl Broken {
    async fn fail<T>(&self) -> T {
        match self {
            Broken::Hangs => std::future::pending().await,
            Broken::Panics => panic!("secret internal detail"),
        }
    }
}

#[async_trait]
impl Repository for Broken {
    async fn product(&self, _: &Id) -> db::Result<Option<Product>> {
        self.fail().await
    }
    async fn page(&self, _: u64, _: u32) -> db::Result<Page> {
        self.fail().await
    }
    async fn page_ids(&self, _: u64, _: u32) -> db::Result<db::PageIds> {
        self.fail().await
    }
    async fn products(&self, _: &[Id]) -> db::Result<Vec<Product>> {
        self.fail().await
    }
    async fn insert(&self, _: &NewProduct) -> db::Result<Product> {
        self.fail().await
    }
    async fn update(
        &self,
        _: &Id,
        _: &ProductPatch,
        _: DateTime<Utc>,
    ) -> db::Result<Option<Product>> {
        self.fail().await
    }
    async fn delete(&self, _: &Id) -> db::Result<bool> {
        self.fail().await
    }
    async fn rename_category(&self, _: &Id, _: &str) -> db::Result<Option<Category>> {
        self.fail().await
    }
    async fn ping(&self) -> db::Result<()> {
        self.fail().await
    }
    async fn migrate(&self) -> db::Result<()> {
        Ok(())
    }
    async fn seed(&self, _: u32) -> db::Result<bool> {
        Ok(false)
    }
    async fn change_feed(
        &self,
        _: aside::Cache,
        _: aside_feed::FeedConfig,
        _: catalog::feed::Mapping,
    ) -> db::Result<aside_feed::Feed> {
        self.fail().await
    }
}

#[tokio::test]
async fn a_panic_is_a_generic_500_error_body() {
    let cache = aside::Cache::builder().build().unwrap();
    let s = AppState::new(Catalog::new(
        Db::new(Arc::new(Broken::Panics), db::Options::default()),
        Some(cache),
        Ttls::default(),
    ));
    for (m, uri, body) in [
        (Method::GET, "/products/p1", None),
        (Method::GET, "/products", None),
        (Method::DELETE, "/products/p1", None),
        (Method::PUT, "/categories/c1", Some(r#"{"name":"x"}"#)),
    ] {
        let r = call(&s, m, uri, body).await;
        assert_eq!(
            (r.status, r.error_code()),
            (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            "{uri}"
        );
        assert!(!r.body.to_string().contains("secret"), "{}", r.body);
    }
    // The service goes on serving.
    assert_eq!(get(&s, "/nothing").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_hung_database_is_a_503_not_a_hang() {
    let options = db::Options {
        timeout: Duration::from_millis(50),
        ..Default::default()
    };
    let cache = aside::Cache::builder().build().unwrap();
    let s = AppState::new(Catalog::new(
        Db::new(Arc::new(Broken::Hangs), options),
        Some(cache),
        Ttls::default(),
    ));
    let reads = ["/products/p1", "/products"];
    for uri in reads {
        let r = get(&s, uri).await;
        assert_eq!(
            (r.status, r.error_code()),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            "{uri}"
        );
    }
    let r = call(&s, Method::PUT, "/products/p1", Some(r#"{"name":"x"}"#)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let r = call(
        &s,
        Method::POST,
        "/products",
        Some(r#"{"name":"x","price":1,"categoryId":"c1"}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let r = get(&s, "/healthz").await;
    assert_eq!(
        r.body,
        json!({"status": "degraded", "db": "down", "cache": "up", "feed": "off"})
    );
}

#[tokio::test]
async fn a_closed_database_is_a_503_and_cached_reads_go_on() {
    let (s, pool, _clock) = closable(Duration::ZERO, Duration::ZERO).await;
    assert_eq!(get(&s, "/products/p1").await.status, StatusCode::OK);
    pool.close().await;
    let cached = get(&s, "/products/p1").await;
    assert_eq!((cached.status, cached.x_cache()), (StatusCode::OK, "hit"));
    let r = get(&s, "/products/p2").await;
    assert_eq!(
        (r.status, r.error_code()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );
    assert!(
        !r.body.to_string().contains("pool"),
        "no internals in 5xx bodies: {}",
        r.body
    );
    let r = call(&s, Method::DELETE, "/products/p1", None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(get(&s, "/healthz").await.body["db"], "down");
}

#[tokio::test]
async fn db_latency_is_added_to_every_round_trip() {
    let s = state_with(&["--no-cache", "--db-latency-ms", "150"]).await;
    let started = std::time::Instant::now();
    assert_eq!(get(&s, "/products/p1").await.status, StatusCode::OK);
    assert_eq!(get(&s, "/products").await.status, StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_slow_round_trip_holds_its_connection() {
    // One connection, 300 ms per round trip, 100 ms to get a connection: of two concurrent
    // uncached reads, one holds the connection and the other gives up waiting for it.
    let s = state_with(&[
        "--no-cache",
        "--db-latency-ms",
        "300",
        "--db-max-connections",
        "1",
        "--db-timeout",
        "100ms",
    ])
    .await;
    let (a, b) = tokio::join!(get(&s, "/products/p1"), get(&s, "/products/p2"));
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE],
        "the second read waited for the only connection"
    );
}

/// A catalog over an in-memory SQLite pool it can close, cached in process on a mock clock.
async fn closable(
    swr: Duration,
    sie: Duration,
) -> (AppState, sqlx::SqlitePool, aside::clock::MockClock) {
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect("sqlite::memory:")
        .await
        .unwrap();
    let repo = db::sqlite::SqliteRepository::from_pool(pool.clone());
    repo.migrate().await.unwrap();
    repo.seed(5).await.unwrap();
    let clock = aside::clock::MockClock::default();
    let cache = aside::Cache::builder()
        .clock(Arc::new(clock.clone()))
        .stale_while_revalidate(swr)
        .stale_if_error(sie)
        .build()
        .unwrap();
    let s = AppState::new(Catalog::new(
        Db::new(Arc::new(repo), db::Options::default()),
        Some(cache),
        Ttls::default(),
    ));
    (s, pool, clock)
}

#[tokio::test]
async fn a_failed_database_serves_expired_entries_as_stale() {
    let (s, pool, clock) = closable(Duration::ZERO, Duration::from_secs(3600)).await;
    let product = get(&s, "/products/p1").await;
    let page = get(&s, "/products?page=1&limit=2").await;
    assert_eq!((product.x_cache(), page.x_cache()), ("miss", "miss"));
    // Past both TTLs (product 5 min, list 60 s), with the database gone.
    clock.advance(Duration::from_secs(301));
    pool.close().await;
    for (uri, before) in [
        ("/products/p1", &product),
        ("/products?page=1&limit=2", &page),
    ] {
        let r = get(&s, uri).await;
        assert_eq!((r.status, r.x_cache()), (StatusCode::OK, "stale"), "{uri}");
        assert_eq!(r.body, before.body, "{uri}");
    }
    // Never cached: nothing to fall back on.
    let r = get(&s, "/products/p2").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    // Beyond the grace period: the error.
    clock.advance(Duration::from_secs(3600));
    let r = get(&s, "/products/p1").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn without_stale_if_error_a_failed_database_is_a_503() {
    let (s, pool, clock) = closable(Duration::ZERO, Duration::ZERO).await;
    assert_eq!(get(&s, "/products/p1").await.status, StatusCode::OK);
    clock.advance(Duration::from_secs(301));
    pool.close().await;
    assert_eq!(
        get(&s, "/products/p1").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_entries_are_refreshed_in_the_background() {
    let (s, _pool, clock) = closable(Duration::from_secs(60), Duration::ZERO).await;
    assert_eq!(get(&s, "/products/p1").await.x_cache(), "miss");
    let r = call(
        &s,
        Method::PUT,
        "/products/p1",
        Some(r#"{"name":"Renamed"}"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(get(&s, "/products/p1").await.body["name"], "Renamed");
    let queries = || s.catalog.db().queries();
    let before = queries();
    clock.advance(Duration::from_secs(301));
    let r = get(&s, "/products/p1").await;
    assert_eq!((r.status, r.x_cache()), (StatusCode::OK, "stale"));
    assert_eq!(r.body["name"], "Renamed");
    // One refresh in the background; then fresh hits again.
    let refreshed = eventually(Duration::from_secs(5), || async {
        get(&s, "/products/p1").await.x_cache() == "hit"
    })
    .await;
    assert!(refreshed, "the refresh stored a fresh entry");
    assert_eq!(queries() - before, 1, "one database read");
}

#[tokio::test]
async fn the_served_openapi_document_is_the_one_in_the_repository() {
    let s = state().await;
    let resp = app(s.clone())
        .oneshot(Request::get("/openapi.json").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    let served = resp.into_body().collect().await.unwrap().to_bytes();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    // `UPDATE_OPENAPI=1 cargo test -p catalog --test api openapi` rewrites the file.
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(path, &served).unwrap();
    }
    let kept = std::fs::read(path).unwrap_or_default();
    assert!(
        served == kept,
        "crates/catalog/openapi.json differs from the served document: \
         run UPDATE_OPENAPI=1 cargo test -p catalog --test api openapi"
    );
    let doc: Value = serde_json::from_slice(&served).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    for route in [
        "/products",
        "/products/{id}",
        "/categories/{id}",
        "/healthz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(paths.contains_key(route), "{route} is documented");
    }
    let schemas = &doc["components"]["schemas"];
    for body in ["CreateProduct", "UpdateProduct", "RenameCategory"] {
        assert_eq!(
            schemas[body]["additionalProperties"],
            json!(false),
            "{body}"
        );
    }
}
