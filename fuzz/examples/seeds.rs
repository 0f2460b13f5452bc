//! Writes the seed corpora of the fuzz targets (`corpus/<target>/`) from the real encoders:
//! the engine's envelopes and records, the keys a namespace makes, the L1's messages, and
//! requests of the HTTP contract with bodies written by `serde_json`.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds` (from the repository root).

// The instrumented build of the targets needs libFuzzer's coverage callbacks linked in.
use libfuzzer_sys as _;

use aside::envelope;
use aside::fuzzing;
use aside::key::Namespace;
use serde_json::json;
use std::path::Path;

fn write(target: &str, seeds: &[Vec<u8>]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("a corpus directory");
    for (i, seed) in seeds.iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), seed).expect("a seed");
    }
}

fn product(id: &str) -> serde_json::Value {
    json!({"id": id, "name": "Product 1", "price": 12.5, "categoryId": "c1",
           "category": {"id": "c1", "name": "Category 1"},
           "createdAt": "2026-01-01T00:00:00Z", "updatedAt": "2026-01-01T00:00:00Z"})
}

/// Entries as the stores hold them: records of envelopes, envelopes alone, leases.
fn entries(ns: &Namespace) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let key = "product:p1";
    let stamps = ns.stamps_for(key, &["category:c1"]).expect("valid");
    let named: Vec<(&str, i64)> = stamps
        .iter()
        .zip(1_764_150_000_123_456_i64..)
        .map(|(s, v)| (s.as_str(), v))
        .collect();
    let value = serde_json::to_vec(&product("p1")).expect("json");
    for (schema, fresh) in [
        (0, None),
        (3, None),
        (0, Some(1_764_150_300_000_u64)),
        (7, Some(0)),
    ] {
        let mut v = envelope::value_header(schema, fresh);
        v.extend_from_slice(&value);
        out.push(fuzzing::encode_record(&named, &v));
        out.push(fuzzing::encode_record(
            &named[..1],
            &envelope::absent(schema, fresh),
        ));
        out.push(v);
        out.push(envelope::absent(schema, fresh).to_vec());
    }
    for v in [
        b"null".to_vec(),
        b"0".to_vec(),
        b"\"\"".to_vec(),
        b"[]".to_vec(),
    ] {
        let mut e = envelope::value_header(0, None);
        e.extend_from_slice(&v);
        out.push(fuzzing::encode_record(&named[..2], &e));
    }
    out.push(b"L 1764150000123456789".to_vec());
    out.push(b"L 1".to_vec());
    out
}

fn stamp_lines(ns: &Namespace) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (key, tags) in [
        ("product:p1", &["category:c1"][..]),
        ("products:list:1:20", &[][..]),
        ("a:b:c:d:e:f", &["x", "y", "z"][..]),
        ("k", &[][..]),
    ] {
        let stamps = ns.stamps_for(key, tags).expect("valid");
        for base in [0_i64, 1, 1_764_150_000_123_456, i64::MAX - 8] {
            let named: Vec<(&str, i64)> = stamps
                .iter()
                .enumerate()
                .map(|(i, s)| (s.as_str(), base + i as i64))
                .collect();
            out.push(fuzzing::encode_record(&named, b"1 0 v\n{}"));
        }
    }
    out.extend([b"17".to_vec(), b"L 42".to_vec(), b"-3".to_vec()]);
    out
}

fn l1_messages(ns: &Namespace) -> Vec<Vec<u8>> {
    let key = "products:list:1:20";
    let entry = ns.entry(key).expect("valid");
    let stamps = ns.stamps_for(key, &["x", "category:c1"]).expect("valid");
    let mut messages = vec![
        format!("other k {entry}"),
        format!("other k {} {entry}", ns.entry("product:p1").expect("valid")),
        format!("me k {entry}"),
        format!("other q {entry}"),
    ];
    for s in &stamps {
        messages.push(format!("other s {s}"));
    }
    let all: Vec<&str> = stamps.iter().map(|s| s.as_str()).collect();
    messages.push(format!("other s {}", all.join(" ")));
    messages.push(format!("other s {}", ns.clocks()[3]));
    let mut out: Vec<Vec<u8>> = Vec::new();
    for m in messages {
        for k in [key, "product:p1", "a b:c"] {
            let mut seed = k.as_bytes().to_vec();
            seed.push(0xFF);
            seed.extend_from_slice(m.as_bytes());
            out.push(seed);
        }
    }
    out
}

/// Fields joined by the byte 0xFF, which UTF-8 never holds.
fn fields(f: &[&str]) -> Vec<u8> {
    f.iter()
        .map(|f| f.as_bytes().to_vec())
        .collect::<Vec<_>>()
        .join(&0xFF_u8)
}

fn keys(ns: &Namespace) -> Vec<Vec<u8>> {
    let made = [
        ns.entry("product:p1").expect("valid").to_string(),
        ns.epoch().to_string(),
        ns.clocks()[15].to_string(),
        ns.prefix("products:").expect("valid").to_string(),
    ];
    let made: Vec<&str> = made.iter().map(String::as_str).collect();
    let seeds: [&[&str]; 11] = [
        &["app", "product:p1", "product:", "category:c1"],
        &[
            "catalog",
            "products:list:1:20",
            "products:list:",
            "x",
            "x",
            "y",
        ],
        &["catalog-v2.eu_1", "a*b{c}", "a*", "t"],
        &["app", "a b:c", "a b:", "tag with space"],
        &["a:b", "k", "k"],
        &["app", "%41", "A", "%"],
        &["app", "caf\u{e9}:\u{1f600}", "caf\u{e9}:"],
        &["app", "a:b:c:d:e:f", "a:b:c:d:", ""],
        &["", "", ""],
        &["app", "app:e:x", "app:t:x", "app:c:{app}:3"],
        &made,
    ];
    seeds.iter().map(|f| fields(f)).collect()
}

fn requests() -> Vec<Vec<u8>> {
    let body = |v: serde_json::Value| serde_json::to_string(&v).expect("json");
    let json = "application/json";
    let reqs: Vec<(&str, &str, &str, String)> = vec![
        ("GET", "/products/p1", "", String::new()),
        ("GET", "/products/nope", "", String::new()),
        ("GET", "/products/a%2Fb", "", String::new()),
        ("GET", "/products/", "", String::new()),
        ("GET", "/products", "", String::new()),
        ("GET", "/products?page=2&limit=5", "", String::new()),
        (
            "GET",
            "/products?page=9007199254740991&limit=100",
            "",
            String::new(),
        ),
        ("GET", "/products?page=0", "", String::new()),
        ("GET", "/products?limit=101&x=1", "", String::new()),
        ("GET", "/products?page=1&page=2", "", String::new()),
        ("GET", "/products?page=%FF", "", String::new()),
        ("DELETE", "/products/p30", "", String::new()),
        ("PUT", "/products/p1", json, body(json!({"price": 9.5}))),
        (
            "PUT",
            "/products/p2",
            json,
            body(json!({"name": "Lamp", "price": 0, "categoryId": "c2"})),
        ),
        (
            "PUT",
            "/products/p3",
            json,
            body(json!({"categoryId": "nope"})),
        ),
        ("PUT", "/products/p4", json, body(json!({}))),
        ("PUT", "/products/p5", json, body(json!({"name": null}))),
        (
            "PUT",
            "/products/p6",
            "text/plain",
            body(json!({"price": 1})),
        ),
        (
            "PUT",
            "/products/p7",
            "application/merge-patch+json",
            body(json!({"price": -0.0})),
        ),
        (
            "POST",
            "/products",
            json,
            body(json!({"id": "fz1", "name": "Fuzz", "price": 1.25, "categoryId": "c1"})),
        ),
        (
            "POST",
            "/products",
            json,
            body(json!({"name": "No id", "price": 3, "categoryId": "c3"})),
        ),
        (
            "POST",
            "/products",
            json,
            body(json!({"id": "p1", "name": "Dup", "price": 1, "categoryId": "c1"})),
        ),
        ("POST", "/products", json, body(json!(["x", "n", 1, "c1"]))),
        (
            "POST",
            "/products",
            json,
            "{\"name\":\"a\",\"name\":\"b\"}".into(),
        ),
        (
            "PUT",
            "/categories/c1",
            json,
            body(json!({"name": "Lighting"})),
        ),
        (
            "PUT",
            "/categories/c9999",
            json,
            body(json!({"name": "None"})),
        ),
        (
            "PUT",
            "/categories/c2",
            json,
            body(json!({"name": "tab\there"})),
        ),
        ("PATCH", "/products/p1", json, body(json!({"price": 1}))),
        ("GET", "/healthz", "", String::new()),
        ("GET", "/nothing", "", String::new()),
    ];
    reqs.into_iter()
        .map(|(m, uri, ct, body)| format!("{m} {uri}\n{ct}\n{body}").into_bytes())
        .collect()
}

fn main() {
    let ns = Namespace::new("app").expect("valid");
    write("entry", &entries(&ns));
    write("stamps", &stamp_lines(&ns));
    write("l1_messages", &l1_messages(&ns));
    write("key", &keys(&ns));
    write("http", &requests());
}
