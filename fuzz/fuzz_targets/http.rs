//! The catalog's HTTP API, driven in process (`tower::ServiceExt::oneshot` on the router)
//! over an in-memory SQLite database with 30 seeded products and the in-process cache.
//!
//! Input: `<METHOD> <path and query>\n<content-type>\n<body>`. Checks: nothing panics, and no
//! request gets a 5xx; every error is the API's JSON Error body (`{"error": {"code",
//! "message"}}`, nothing else); `GET /products?...` answers 200 with the page and limit that
//! `PageRequest::from_query` reads from the query, or 400 with its code; a product or
//! category id in the path is refused with 400 `invalid_id` exactly when its decoded segment
//! is not a valid `Id`; a write that succeeded returns the fields it was given, and a read
//! of the product right after it returns what the write returned (through the cache).
#![no_main]

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use catalog::config::{Cli, Command};
use catalog::model::{Id, PageRequest};
use clap::Parser;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::sync::OnceLock;
use tower::ServiceExt;

struct World {
    rt: tokio::runtime::Runtime,
    state: catalog::AppState,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        // Every setting from flags, so that the environment cannot point it at a server.
        let argv = [
            "catalog",
            "serve",
            "--database-url",
            "sqlite::memory:",
            "--redis-url",
            "",
            "--seed-products",
            "30",
            "--db-timeout",
            "60s",
        ];
        let Command::Serve(config) = Cli::try_parse_from(argv).expect("flags").command;
        let state = rt.block_on(catalog::build(&config)).expect("a catalog");
        World { rt, state }
    })
}

struct Reply {
    status: StatusCode,
    json: bool,
    body: Vec<u8>,
}

fn call(method: Method, uri: &str, content_type: &str, body: &[u8]) -> Option<Reply> {
    let mut req = Request::builder().method(method).uri(uri);
    if !content_type.is_empty() {
        req = req.header(header::CONTENT_TYPE, content_type);
    }
    let req = req.body(Body::from(body.to_vec())).ok()?;
    let w = world();
    let app = catalog::app(w.state.clone());
    Some(w.rt.block_on(async {
        let r = app.oneshot(req).await.expect("infallible");
        let status = r.status();
        let json = r
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes() == b"application/json");
        let body = r
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes()
            .to_vec();
        Reply { status, json, body }
    }))
}

/// The code of an Error body; panics if it is not one.
fn error_code(r: &Reply) -> String {
    assert!(r.json, "an error without a JSON content type: {}", r.status);
    let v: Value = serde_json::from_slice(&r.body).expect("an error body is JSON");
    let obj = v.as_object().expect("an object");
    assert_eq!(obj.len(), 1, "{v}");
    let e = v["error"].as_object().expect("an error object");
    assert_eq!(e.len(), 2, "{v}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    e["code"].as_str().expect("a code").to_owned()
}

/// A path segment percent-decoded as the router does (an escape that is not one stays).
fn decode_segment(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).expect("a JSON body")
}

fuzz_target!(|data: &[u8]| {
    let mut lines = data.splitn(3, |&b| b == b'\n');
    let (Some(line), content_type, body) = (lines.next(), lines.next(), lines.next()) else {
        return;
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return;
    };
    let content_type = content_type
        .and_then(|c| std::str::from_utf8(c).ok())
        .unwrap_or("");
    let body = body.unwrap_or_default();
    let Some((method, uri)) = line.split_once(' ') else {
        return;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let Some(r) = call(method.clone(), uri, content_type, body) else {
        return; // not a request the http crate can make
    };
    assert!(
        !r.status.is_server_error(),
        "{method} {uri}: {} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    let code = (!r.status.is_success()).then(|| error_code(&r));
    // The path and query as the router sees them (a fragment is not sent).
    let parsed: axum::http::Uri = uri.parse().expect("a request was made of it");
    let (path, query) = (parsed.path(), parsed.query());

    if method == Method::GET && path == "/products" {
        match PageRequest::from_query(query) {
            Ok(req) => {
                assert_eq!(r.status, StatusCode::OK, "{uri}");
                let page = json(&r.body);
                assert_eq!(page["page"], req.page, "{uri}");
                assert_eq!(page["limit"], req.limit, "{uri}");
                let n = page["products"].as_array().expect("products").len();
                assert!(n <= req.limit as usize);
            }
            Err(e) => {
                assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}");
                assert_eq!(code.as_deref(), Some(e.code), "{uri}");
            }
        }
    }

    if method == Method::POST && path == "/products" && r.status == StatusCode::CREATED {
        check_write(uri, body, &r, true);
    }

    let segment = path
        .strip_prefix("/products/")
        .map(|s| ("product", s))
        .or_else(|| path.strip_prefix("/categories/").map(|s| ("category", s)));
    let Some((kind, segment)) = segment.filter(|(_, s)| !s.contains('/')) else {
        return;
    };
    let routed = match kind {
        "product" => [Method::GET, Method::PUT, Method::DELETE].contains(&method),
        _ => method == Method::PUT,
    };
    // The bounds of the request (body size, time) are enforced before routing.
    if !routed
        || r.status == StatusCode::PAYLOAD_TOO_LARGE
        || r.status == StatusCode::REQUEST_TIMEOUT
    {
        return;
    }
    let id = decode_segment(segment).and_then(|s| Id::parse(&s).ok());
    let Some(id) = id else {
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(code.as_deref(), Some("invalid_id"), "{uri}");
        return;
    };
    assert_ne!(code.as_deref(), Some("invalid_id"), "{uri}: {id} is valid");
    if !r.status.is_success() || method == Method::DELETE || method == Method::GET {
        return;
    }
    check_write(uri, body, &r, kind == "product");
    assert_eq!(json(&r.body)["id"], id.as_str());
});

/// A write that succeeded: its body was a JSON object, the reply holds each field as sent,
/// and a product reads back as the write returned it.
fn check_write(uri: &str, body: &[u8], r: &Reply, product: bool) {
    let sent = json(body);
    let got = json(&r.body);
    for (field, value) in sent.as_object().expect("a body taken is an object") {
        let same = match (got[field.as_str()].as_f64(), value.as_f64()) {
            // A price is stored as a double, `-0` as `0`.
            (Some(a), Some(b)) => a == b,
            _ => got[field.as_str()] == *value,
        };
        assert!(
            same,
            "{uri}: {field} is {}, sent {value}",
            got[field.as_str()]
        );
    }
    if product {
        let id = got["id"].as_str().expect("an id");
        let read = call(Method::GET, &format!("/products/{id}"), "", b"").expect("a request");
        assert_eq!(read.status, StatusCode::OK, "{id} written, then not found");
        assert_eq!(json(&read.body), got, "a read after a write of {id}");
    }
}
