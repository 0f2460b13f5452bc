//! Redis-specific behaviour: outages (killed and paused servers), lazy connect, TLS, ACL users,
//! raw corrupt bytes, and what the engine sends to Redis.
#![allow(clippy::unwrap_used)]

mod outage;

use aside::store::RedisConfig;
use aside::{Cache, CacheBuilder, Invalidation, LoadError};
use std::sync::Arc;
use std::time::Duration;
use testkit::{TcpProxy, TestRedis, counters, eventually, free_port};

type Never = std::convert::Infallible;

/// A cache on `r` with short timeouts, in namespace `t`.
fn builder(r: &TestRedis) -> CacheBuilder {
    Cache::builder()
        .namespace("t")
        .redis(r.url())
        .command_timeout(Duration::from_millis(100))
}

fn cache(r: &TestRedis) -> Cache {
    builder(r)
        .breaker(3, Duration::from_millis(200))
        .build()
        .unwrap()
}

async fn redis_get(r: &TestRedis, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut r.conn().await)
        .await
        .unwrap()
}

#[tokio::test]
async fn values_are_readable_json_in_redis() {
    let r = TestRedis::start();
    let c = cache(&r);
    c.entry("product:p1")
        .tag("category:c1")
        .set(&serde_json::json!({"id": "p1"}))
        .await
        .unwrap();
    let raw = String::from_utf8(redis_get(&r, "t:e:product:p1").await.unwrap()).unwrap();
    let (stamps, payload) = raw.split_once('\n').unwrap();
    assert!(stamps.starts_with("3 t:g "), "{stamps}");
    assert!(
        stamps.contains("t:p:product: ") && stamps.contains("t:t:category:c1 "),
        "{stamps}"
    );
    assert_eq!(payload, "1 0 v\n{\"id\":\"p1\"}");
}

#[tokio::test]
async fn ttls_are_set_with_jitter_and_tags_outlive_their_entries() {
    let r = TestRedis::start();
    let c = Cache::builder()
        .namespace("t")
        .redis(r.url())
        .jitter(0.5)
        .build()
        .unwrap();
    let mut conn = r.conn().await;
    let mut ttls = Vec::new();
    for i in 0..32 {
        c.entry(&format!("k{i}"))
            .ttl(Duration::from_secs(100))
            .tag("x")
            .set(&i)
            .await
            .unwrap();
        let pttl: i64 = redis::cmd("PTTL")
            .arg(format!("t:e:k{i}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            (50_000..=100_000).contains(&pttl),
            "ttl {pttl} outside [50 s, 100 s]"
        );
        ttls.push(pttl / 1000);
    }
    ttls.sort();
    ttls.dedup();
    assert!(ttls.len() > 4, "jitter spreads TTLs: {ttls:?}");
    let tag_ttl: i64 = redis::cmd("PTTL")
        .arg("t:t:x")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        tag_ttl >= 100_000,
        "the tag version outlives its entries: {tag_ttl}"
    );
}

#[tokio::test]
async fn a_cached_not_found_is_kept_for_its_negative_ttl_only() {
    let r = TestRedis::start();
    let c = Cache::builder()
        .namespace("t")
        .redis(r.url())
        .jitter(0.0)
        .default_ttl(Duration::from_secs(300))
        .negative_ttl(Duration::from_secs(30))
        .stale_while_revalidate(Duration::from_secs(30))
        .stale_if_error(Duration::from_secs(600))
        .build()
        .unwrap();
    let pttl = |key: &'static str| {
        let r = &r;
        async move {
            let ms: i64 = redis::cmd("PTTL")
                .arg(key)
                .query_async(&mut r.conn().await)
                .await
                .unwrap();
            ms
        }
    };
    let missing: Option<u32> = c
        .get_or_load("missing", || async { Ok::<_, Never>(None) })
        .await
        .unwrap();
    assert_eq!(missing, None);
    let ms = pttl("t:e:missing").await;
    assert!(
        (1..=30_000).contains(&ms),
        "a not found lives its negative TTL, without the stale windows: {ms} ms"
    );
    // A value keeps its grace: it may be served stale.
    let found = c
        .get_or_load("found", || async { Ok::<_, Never>(Some(1u32)) })
        .await
        .unwrap();
    assert_eq!(found, Some(1));
    let ms = pttl("t:e:found").await;
    assert!(ms > 300_000, "a value is kept past its TTL: {ms} ms");
}

#[tokio::test]
async fn corrupt_bytes_are_a_miss_removed_and_counted() {
    let r = TestRedis::start();
    let rec = metrics_util::debugging::DebuggingRecorder::new();
    let snap = rec.snapshotter();
    let c = metrics::with_local_recorder(&rec, || cache(&r));
    let mut conn = r.conn().await;
    c.set("good", &1u8).await.unwrap();
    let good = redis_get(&r, "t:e:good").await.unwrap();
    let stamps = String::from_utf8(good)
        .unwrap()
        .split_once('\n')
        .unwrap()
        .0
        .to_owned();
    for (key, bytes) in [
        ("garbage", b"\x00\xff{not json".to_vec()),
        ("half", format!("{stamps}\n1 0 v\n{{\"trunc").into_bytes()),
        ("no-stamps", b"1 0 v\n1".to_vec()),
        ("bad-stamps", b"2 t:g\n1 0 v\n1".to_vec()),
    ] {
        let _: () = redis::cmd("SET")
            .arg(format!("t:e:{key}"))
            .arg(bytes)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(c.get::<u8>(key).await.unwrap(), None, "{key} is a miss");
        let v = c
            .get_or_load(key, || async { Ok::<_, Never>(Some(5u8)) })
            .await
            .unwrap();
        assert_eq!(v, Some(5), "{key} is reloaded");
        assert_eq!(
            c.get::<u8>(key).await.unwrap(),
            Some(5),
            "{key} is replaced"
        );
    }
    assert_eq!(
        counters(&snap)("aside_corrupt_total"),
        4,
        "every corrupt entry is counted"
    );
}

#[tokio::test]
async fn invalidation_never_scans_or_lists_keys() {
    let r = TestRedis::start();
    let c = cache(&r);
    for i in 0..200 {
        c.set(&format!("products:list:{i}:20"), &i).await.unwrap();
    }
    let mut conn = r.conn().await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    c.invalidate_prefix("products:list:").await.unwrap();
    c.invalidate_tag("category:c1").await.unwrap();
    c.del(["products:list:1:20", "product:p1"]).await.unwrap();
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    for forbidden in ["cmdstat_keys:", "cmdstat_scan:", "cmdstat_smembers:"] {
        assert!(
            !stats.contains(forbidden),
            "{forbidden} was called:\n{stats}"
        );
    }
    // A handful of commands, not one per key.
    let calls: u64 = stats
        .lines()
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert!(calls < 20, "{calls} commands for 200 keys:\n{stats}");
    assert_eq!(c.get::<i32>("products:list:7:20").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_costs_callers_nothing() {
    let mut r = TestRedis::start();
    let rec = metrics_util::debugging::DebuggingRecorder::new();
    let snap = rec.snapshotter();
    let c = metrics::with_local_recorder(&rec, || {
        builder(&r)
            .breaker(3, Duration::from_secs(2))
            .build()
            .unwrap()
    });
    outage::a_killed_server_costs_callers_nothing(&c, &snap, &mut r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_is_bounded_by_the_timeout_and_missed_invalidations_are_replayed() {
    let r = TestRedis::start();
    let c = builder(&r)
        .breaker(3, Duration::from_secs(2))
        .build()
        .unwrap();
    // Connected (and not just slow to connect on a busy machine) before the 100 ms bounds count.
    assert!(eventually(Duration::from_secs(10), || c.ping()).await);
    c.set("product:p1", &"old").await.unwrap();
    c.entry("product:p2")
        .tag("category:c1")
        .set(&"old")
        .await
        .unwrap();
    c.set("product:p3", &"kept").await.unwrap();
    r.pause();
    // The TCP connection stays up: only the timeout can end these calls.
    let start = std::time::Instant::now();
    for _ in 0..3 {
        let err = c.get::<String>("product:p3").await.unwrap_err();
        assert!(
            matches!(&err, aside::Error::Backend(e) if e.is_timeout()),
            "{err:?}"
        );
    }
    assert!(c.health().breaker_open);
    // With the breaker open these are never sent: they wait in the backlog.
    assert_eq!(c.del(["product:p1"]).await.unwrap(), Invalidation::Queued);
    assert_eq!(
        c.invalidate_tag("category:c1").await.unwrap(),
        Invalidation::Queued
    );
    let v = c
        .get_or_load("product:p1", || async {
            Ok::<_, Never>(Some("new".to_string()))
        })
        .await;
    assert_eq!(
        v.unwrap().as_deref(),
        Some("new"),
        "reads fall back to the loader"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "bounded by timeouts, not TCP"
    );
    assert_eq!(c.health().pending_invalidations, 2);

    r.resume();
    assert!(
        redis_get(&r, "t:e:product:p1").await.is_some(),
        "Redis still holds the old value"
    );
    assert!(eventually(Duration::from_secs(10), || c.ping()).await);
    assert_eq!(c.health().pending_invalidations, 0);
    assert_eq!(
        c.get::<String>("product:p1").await.unwrap(),
        None,
        "the delete was replayed"
    );
    assert_eq!(
        c.get::<String>("product:p2").await.unwrap(),
        None,
        "the tag bump was replayed"
    );
    assert_eq!(
        c.get::<String>("product:p3").await.unwrap().as_deref(),
        Some("kept")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_path_opens_the_breaker_and_a_fresh_connection_takes_over() {
    let r = TestRedis::start();
    let proxy = TcpProxy::start(&format!("127.0.0.1:{}", r.port)).await;
    let c = Cache::builder()
        .namespace("t")
        .redis(format!("redis://127.0.0.1:{}/", proxy.port))
        .command_timeout(Duration::from_millis(100))
        .breaker(3, Duration::from_millis(200))
        .build()
        .unwrap();
    c.set("k", &1u32).await.unwrap();
    warm_tracking(&r, &c, "k").await;
    assert_eq!(c.get::<u32>("k").await.unwrap(), Some(1));
    // The host goes away without a reset: every connection made so far, and every one made
    // while it lasts, is silent for ever.
    proxy.blackhole();
    let mut opened = false;
    for _ in 0..100 {
        let v = c
            .get_or_load("k", || async { Ok::<_, Never>(Some(2u32)) })
            .await
            .unwrap();
        assert_eq!(v, Some(2), "the loader answers while Redis does not");
        if c.get::<u32>("k")
            .await
            .is_err_and(|e| matches!(e, aside::Error::Backend(s) if s.is_circuit_open()))
        {
            opened = true;
            break;
        }
    }
    assert!(opened, "the breaker opens during the blackhole");
    // The path is back, for new connections only.
    proxy.set_up(true);
    let back = eventually(Duration::from_secs(20), || async {
        c.get::<u32>("k").await.ok() == Some(Some(1))
    })
    .await;
    assert!(back, "reads reach Redis again on fresh connections");
    // Writes too (they go over the main connection, replaced once it timed out enough).
    let written = eventually(Duration::from_secs(20), || async {
        c.set("k", &3u32).await.is_ok()
    })
    .await;
    assert!(written, "writes reach Redis again");
    assert_eq!(c.get::<u32>("k").await.unwrap(), Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_invalidations_are_applied_once_redis_answers_whatever_the_breaker_says() {
    let r = TestRedis::start();
    let c = builder(&r)
        .breaker(1, Duration::from_secs(3600)) // no probe for an hour
        .build()
        .unwrap();
    let other = cache(&r); // a second instance that saw no outage
    c.set("k", &"old").await.unwrap();
    r.pause();
    assert_eq!(c.del(["k"]).await.unwrap(), Invalidation::Queued);
    r.resume();
    // The engine replays what it kept as soon as Redis answers, with no call on this
    // instance and its breaker open: the other instance stops seeing the old value.
    let applied = eventually(Duration::from_secs(10), || async {
        c.health().pending_invalidations == 0
    })
    .await;
    assert!(applied, "the kept invalidation was not replayed");
    assert_eq!(other.get::<String>("k").await.unwrap(), None);
    let v = c
        .get_or_load("k", || async { Ok::<_, Never>(Some("new".to_string())) })
        .await
        .unwrap();
    assert_eq!(v.as_deref(), Some("new"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflowing_backlog_invalidates_the_whole_namespace() {
    let r = TestRedis::start();
    let c = builder(&r)
        .breaker(1, Duration::from_millis(50))
        .backlog_capacity(3)
        .build()
        .unwrap();
    for k in ["a", "b", "c", "d", "untouched"] {
        c.set(k, &k).await.unwrap();
    }
    r.pause();
    for k in ["a", "b", "c", "d"] {
        c.del([k]).await.unwrap();
    }
    r.resume();
    assert!(eventually(Duration::from_secs(10), || c.ping()).await);
    assert_eq!(
        c.get::<String>("untouched").await.unwrap(),
        None,
        "the epoch was bumped"
    );
    c.set("after", &1u8).await.unwrap();
    assert_eq!(c.get::<u8>("after").await.unwrap(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_and_serves_while_redis_is_down_then_connects() {
    let port = free_port();
    let c = Cache::builder()
        .namespace("t")
        .redis(format!("redis://127.0.0.1:{port}/"))
        .command_timeout(Duration::from_millis(100))
        .breaker(2, Duration::from_millis(50))
        .build()
        .expect("building does not connect");
    let v = c
        .get_or_load("k", || async { Ok::<_, Never>(Some(1u8)) })
        .await
        .unwrap();
    assert_eq!(v, Some(1));
    let _r = TestRedis::start_on(port);
    assert!(
        eventually(Duration::from_secs(10), || c.ping()).await,
        "connects once Redis is up"
    );
    c.set("k", &2u8).await.unwrap();
    let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let exists: bool = redis::cmd("EXISTS")
        .arg("t:e:k")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(exists);
}

#[tokio::test]
async fn acl_users_authenticate_through_the_url() {
    let r = TestRedis::start_with(&[
        "--user", "default", "off", "--user", "app", "on", ">s3cret", "~*", "&*", "+@all",
    ]);
    let url = |pw: &str| format!("redis://app:{pw}@127.0.0.1:{}/", r.port);
    let good = Cache::builder()
        .namespace("t")
        .redis(url("s3cret"))
        .build()
        .unwrap();
    good.set("k", &1u8).await.unwrap();
    assert_eq!(good.get::<u8>("k").await.unwrap(), Some(1));
    let bad = Cache::builder()
        .namespace("t")
        .redis(url("wrong"))
        .build()
        .unwrap();
    assert!(
        bad.get::<u8>("k").await.is_err(),
        "a wrong password is a backend error"
    );
    let v = bad
        .get_or_load("k", || async { Ok::<_, Never>(Some(9u8)) })
        .await
        .unwrap();
    assert_eq!(v, Some(9), "and get_or_load still answers");
    let dbg = format!(
        "{:?}",
        Cache::builder().redis(url("s3cret")).build().unwrap()
    );
    assert!(
        !dbg.contains("s3cret"),
        "no password in Debug output: {dbg}"
    );
}

/// An error and its sources, as one line.
fn error_chain(e: &aside::Error) -> String {
    let mut chain = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        chain = format!("{chain}: {s}");
        source = s.source();
    }
    chain
}

/// A server whose only user, `app`, may run everything but `denied`, and a cache logged in
/// as `app` (with its URL).
fn acl_cache(denied: &str) -> (TestRedis, Cache, String) {
    let r = TestRedis::start_with(&[
        "--user", "default", "off", "--user", "app", "on", ">pw", "~*", "&*", "+@all", denied,
    ]);
    let url = format!("redis://app:pw@127.0.0.1:{}/", r.port);
    let c = Cache::builder().namespace("t").redis(&url).build().unwrap();
    (r, c, url)
}

#[tokio::test]
async fn a_read_the_server_refuses_fails_with_the_server_s_error() {
    let (_r, c, _) = acl_cache("-mget");
    let chain = error_chain(&c.get::<u8>("k").await.unwrap_err());
    assert!(
        chain.contains("no permissions to run the 'mget' command"),
        "the server's refusal, as it said it: {chain}"
    );
}

#[tokio::test]
async fn tls_through_rediss_urls_trusting_a_private_ca() {
    let r = TestRedis::start_tls();
    let c = Cache::builder()
        .namespace("t")
        .redis_config(RedisConfig {
            tls_ca_file: Some(r.ca_file()),
            ..RedisConfig::new(r.url())
        })
        .build()
        .unwrap();
    c.set("k", &"over tls").await.unwrap();
    assert_eq!(
        c.get::<String>("k").await.unwrap().as_deref(),
        Some("over tls")
    );
    // The tracking connection speaks TLS too: reads become one GET.
    warm_tracking(&r, &c, "k").await;
    reset_stats(&r).await;
    assert_eq!(
        c.get::<String>("k").await.unwrap().as_deref(),
        Some("over tls")
    );
    let stats = command_stats(&r).await;
    assert!(
        stats.contains("cmdstat_get:calls=1,") && !stats.contains("cmdstat_mget"),
        "{stats}"
    );
}

#[tokio::test]
async fn tls_certificates_are_checked() {
    let r = TestRedis::start_tls();
    // Without the CA the server's certificate is unknown, and `#insecure` (a redis-rs
    // feature this crate does not compile in) turns no check off.
    for url in [r.url(), format!("{}#insecure", r.url())] {
        let c = Cache::builder()
            .namespace("t")
            .redis(url.as_str())
            .command_timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        let e = c.set("k", &1).await.unwrap_err();
        assert!(matches!(e, aside::Error::Backend(_)), "{url}: {e}");
    }
    // A CA file is for TLS only, and must be readable.
    for (url, ca) in [
        ("redis://127.0.0.1:1".to_owned(), r.ca_file()),
        (r.url(), r.ca_file().with_file_name("missing.pem")),
    ] {
        let built = Cache::builder().redis_config(RedisConfig {
            tls_ca_file: Some(ca),
            ..RedisConfig::new(url)
        });
        let e = built.build().unwrap_err();
        assert!(e.to_string().contains("tls_ca_file"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_loads_itself_when_the_lease_holder_died() {
    let r = TestRedis::start();
    let c = Cache::builder()
        .namespace("t")
        .redis(r.url())
        .lease_wait(Duration::from_millis(100))
        .build()
        .unwrap();
    // Another process took the lease and died: its placeholder stays until the lease expires.
    let _: () = redis::cmd("SET")
        .arg("t:e:k")
        .arg("L 42")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut r.conn().await)
        .await
        .unwrap();
    let v = c
        .get_or_load("k", || async { Ok::<_, Never>(Some(1u8)) })
        .await
        .unwrap();
    assert_eq!(v, Some(1), "waits briefly, then loads");
    assert_eq!(
        redis_get(&r, "t:e:k").await.as_deref(),
        Some(&b"L 42"[..]),
        "without overwriting the lease"
    );
}

#[tokio::test]
async fn loader_errors_release_the_lease() {
    let r = TestRedis::start();
    let c = cache(&r);
    let e = c
        .get_or_load::<u8, _, _, _>("k", || async { Err("db down") })
        .await;
    assert!(matches!(e, Err(LoadError::Loader(_))));
    assert_eq!(
        redis_get(&r, "t:e:k").await,
        None,
        "no placeholder left behind"
    );
    let shared: Arc<&str> = match c
        .get_or_load::<u8, _, _, _>("k", || async { Err("again") })
        .await
    {
        Err(LoadError::Loader(e)) => e,
        _ => panic!(),
    };
    assert_eq!(*shared, "again");
}

#[tokio::test]
async fn reads_of_entries_with_learnt_tags_take_one_round_trip() {
    let r = TestRedis::start();
    // Versions not held in process: every read is an MGET of the entry and its versions.
    let c = builder(&r)
        .redis_config(RedisConfig {
            tracked_versions: 0,
            ..RedisConfig::new(r.url())
        })
        .build()
        .unwrap();
    let load = || async { Ok::<_, Never>(aside::Tagged::found(1u8).tag("owner:7")) };
    c.entry("doc:1").fetch_tagged(load).await.unwrap();
    assert_eq!(c.get::<u8>("doc:1").await.unwrap(), Some(1)); // learns the tag
    let mut conn = r.conn().await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    for _ in 0..3 {
        let f = c.entry("doc:1").fetch_tagged(load).await.unwrap();
        assert_eq!((f.value, f.status), (Some(1), aside::Status::Hit));
    }
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        stats.contains("cmdstat_mget:calls=3,"),
        "one MGET per read:\n{stats}"
    );
    c.invalidate_tag("owner:7").await.unwrap();
    assert_eq!(
        c.get::<u8>("doc:1").await.unwrap(),
        None,
        "and the learnt tag is still checked"
    );
}

/// Whether a client of `r` has key tracking on (the store's version connection).
async fn tracking_on(r: &TestRedis) -> bool {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut r.conn().await)
        .await
        .unwrap();
    list.lines().any(|l| {
        l.split(' ')
            .any(|f| f.strip_prefix("flags=").is_some_and(|f| f.contains('t')))
    })
}

async fn reset_stats(r: &TestRedis) {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut r.conn().await)
        .await
        .unwrap();
}

async fn command_stats(r: &TestRedis) -> String {
    redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut r.conn().await)
        .await
        .unwrap()
}

/// Reads `key` until the tracking connection is up and a read went through it.
async fn warm_tracking(r: &TestRedis, c: &Cache, key: &str) {
    assert!(
        eventually(Duration::from_secs(5), || async {
            c.get::<serde_json::Value>(key).await.is_ok() && tracking_on(r).await
        })
        .await,
        "the tracking connection comes up"
    );
    // One read through it fetches (and holds) the versions the entry carries.
    c.get::<serde_json::Value>(key).await.unwrap();
}

#[tokio::test]
async fn hot_reads_are_one_get_and_see_invalidations_from_other_instances() {
    let r = TestRedis::start();
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let c = metrics::with_local_recorder(&recorder, || cache(&r));
    let other = cache(&r);
    let load = || async { Ok::<_, Never>(aside::Tagged::found(1u8).tag("owner:7")) };
    c.entry("doc:1").fetch_tagged(load).await.unwrap();
    warm_tracking(&r, &c, "doc:1").await;
    reset_stats(&r).await;
    for _ in 0..3 {
        assert_eq!(c.get::<u8>("doc:1").await.unwrap(), Some(1));
    }
    let stats = command_stats(&r).await;
    assert!(
        stats.contains("cmdstat_get:calls=3,") && !stats.contains("cmdstat_mget"),
        "one GET per read, versions held in process:\n{stats}"
    );
    // The versions of the epoch, the `doc:` prefix and the learnt tag, read once.
    let counts = counters(&snap);
    assert_eq!(counts("aside_versions_fetched_total"), 3);
    assert_eq!(counts("aside_versions_connections_total"), 1);
    assert_eq!(counts("aside_versions_dropped_total"), 0);
    // Another instance bumps the learnt tag: Redis tells this one, which drops the version.
    other.invalidate_tag("owner:7").await.unwrap();
    assert_eq!(
        c.get::<u8>("doc:1").await.unwrap(),
        None,
        "tag bumped elsewhere"
    );
    assert_eq!(
        counters(&snap)("aside_versions_dropped_total"),
        1,
        "since the last look"
    );

    // The same for a prefix, and for the whole namespace.
    c.set("doc:2", &2u8).await.unwrap();
    c.get::<u8>("doc:2").await.unwrap();
    assert_eq!(c.get::<u8>("doc:2").await.unwrap(), Some(2));
    other.invalidate_prefix("doc:").await.unwrap();
    assert_eq!(
        c.get::<u8>("doc:2").await.unwrap(),
        None,
        "prefix bumped elsewhere"
    );
    c.set("doc:3", &3u8).await.unwrap();
    c.get::<u8>("doc:3").await.unwrap();
    assert_eq!(c.get::<u8>("doc:3").await.unwrap(), Some(3));
    assert_eq!(other.invalidate_all().await, Invalidation::Applied);
    assert_eq!(
        c.get::<u8>("doc:3").await.unwrap(),
        None,
        "epoch bumped elsewhere"
    );
}

#[tokio::test]
async fn a_read_after_the_tracking_connection_is_lost_is_never_stale() {
    let r = TestRedis::start();
    let c = cache(&r);
    let other = cache(&r);
    c.set("k", &1u8).await.unwrap();
    warm_tracking(&r, &c, "k").await;
    assert_eq!(c.get::<u8>("k").await.unwrap(), Some(1));
    // Drop the tracking connection, then bump what the entry carries: no message can say so.
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut r.conn().await)
        .await
        .unwrap();
    let ids: Vec<&str> = list
        .lines()
        .filter(|l| l.contains("flags=t"))
        .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .collect();
    assert_eq!(ids.len(), 1, "{list}");
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(ids[0])
        .query_async(&mut r.conn().await)
        .await
        .unwrap();
    assert_eq!(other.invalidate_all().await, Invalidation::Applied);
    // The read may fail while the connection is found dead, but never returns the old value.
    assert!(
        !matches!(c.get::<u8>("k").await, Ok(Some(_))),
        "stale after a lost connection"
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            c.get::<u8>("k").await.is_ok_and(|v| v.is_none()) && tracking_on(&r).await
        })
        .await,
        "tracking comes back"
    );
    c.set("k", &2u8).await.unwrap();
    warm_tracking(&r, &c, "k").await;
    reset_stats(&r).await;
    assert_eq!(c.get::<u8>("k").await.unwrap(), Some(2));
    assert!(!command_stats(&r).await.contains("cmdstat_mget"));
}

#[tokio::test]
async fn reads_go_on_with_mget_when_the_server_refuses_tracking() {
    let (_r, c, url) = acl_cache("-client");
    let admin = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let stats = || {
        let mut admin = admin.clone();
        async move {
            redis::cmd("INFO")
                .arg("commandstats")
                .query_async::<String>(&mut admin)
                .await
                .unwrap()
        }
    };
    c.set("k", &1u8).await.unwrap();
    // The first read starts the tracking connection, which the server refuses.
    assert!(
        eventually(Duration::from_secs(5), || async {
            c.get::<u8>("k").await.unwrap() == Some(1)
                && stats().await.contains("cmdstat_client|tracking:calls=0,")
        })
        .await,
        "tracking is asked for, and refused:\n{}",
        stats().await
    );
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut admin.clone())
        .await
        .unwrap();
    for _ in 0..20 {
        assert_eq!(c.get::<u8>("k").await.unwrap(), Some(1));
    }
    let s = stats().await;
    assert!(
        s.contains("cmdstat_mget:calls=20,"),
        "every read an MGET:\n{s}"
    );
    assert!(
        !s.contains("cmdstat_client|tracking"),
        "and tracking not asked again:\n{s}"
    );
    // Reads name no stamps then (the store could hold versions when it was built), and are
    // exact all the same: the stamps the entry carries are learnt and read with it.
    c.set("doc:1", &2u8).await.unwrap();
    assert_eq!(c.get::<u8>("doc:1").await.unwrap(), Some(2));
    assert_eq!(
        c.invalidate_prefix("doc:").await.unwrap(),
        Invalidation::Applied
    );
    assert_eq!(c.get::<u8>("doc:1").await.unwrap(), None, "prefix bumped");
    assert_eq!(c.invalidate_all().await, Invalidation::Applied);
    assert_eq!(c.get::<u8>("k").await.unwrap(), None, "epoch bumped");
}

#[tokio::test]
async fn a_tracked_read_the_server_refuses_fails_with_the_server_s_error() {
    let (_r, c, _) = acl_cache("-get");
    // Reads are MGETs (allowed) until the tracking connection is up, then GETs (refused).
    let refused =
        |e: &aside::Error| error_chain(e).contains("no permissions to run the 'get' command");
    assert!(
        eventually(Duration::from_secs(5), || async {
            c.get::<u8>("k").await.is_err_and(|e| refused(&e))
        })
        .await,
        "the server's refusal, as it said it"
    );
}

#[tokio::test]
async fn a_key_of_another_type_under_an_entry_s_name_reads_as_a_miss() {
    let r = TestRedis::start();
    let c = cache(&r);
    c.set("other", &1u8).await.unwrap();
    warm_tracking(&r, &c, "other").await;
    let _: i64 = redis::cmd("HSET")
        .arg("t:e:k")
        .arg("f")
        .arg("v")
        .query_async(&mut r.conn().await)
        .await
        .unwrap();
    reset_stats(&r).await;
    assert_eq!(c.get::<u8>("k").await.unwrap(), None);
    assert!(command_stats(&r).await.contains("cmdstat_get:calls=1,"));
}

/// Readers on one instance, a writer on another that stores `i` tagged `t`, then invalidates
/// `t`, for i = 1, 2, ...: a read that starts after the invalidation of `i` returned never
/// sees `i` or older, however the invalidation messages and the reads' replies interleave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_never_see_a_value_invalidated_before_they_began() {
    use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
    let r = TestRedis::start();
    let writer = cache(&r);
    let reader = cache(&r);
    writer.entry("k").tags(["t"]).set(&0i64).await.unwrap();
    warm_tracking(&r, &reader, "k").await;
    let invalidated = Arc::new(AtomicI64::new(-1));
    let done = Arc::new(AtomicBool::new(false));
    let (reads, hits) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut readers = Vec::new();
    for _ in 0..8 {
        let (reader, invalidated, done) = (reader.clone(), invalidated.clone(), done.clone());
        let (reads, hits) = (reads.clone(), hits.clone());
        readers.push(tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                let before = invalidated.load(Ordering::SeqCst);
                if let Some(v) = reader.entry("k").tags(["t"]).get::<i64>().await.unwrap() {
                    assert!(v > before, "read {v} after {before} was invalidated");
                    hits.fetch_add(1, Ordering::SeqCst);
                }
                reads.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // Until the readers made `n` more reads (so each state below is read, hit or not).
    let reads_made = |n: u64| {
        let reads = reads.clone();
        async move {
            let target = reads.load(Ordering::SeqCst) + n;
            while reads.load(Ordering::SeqCst) < target {
                tokio::task::yield_now().await;
            }
        }
    };
    for i in 1..=200i64 {
        writer.entry("k").tags(["t"]).set(&i).await.unwrap();
        // At most 8 reads were under way: at least 8 of these began after the write, and hit.
        reads_made(16).await;
        writer.invalidate_tag("t").await.unwrap();
        invalidated.store(i, Ordering::SeqCst);
        reads_made(8).await;
    }
    done.store(true, Ordering::SeqCst);
    for h in readers {
        h.await.unwrap();
    }
    let (reads, hits) = (reads.load(Ordering::SeqCst), hits.load(Ordering::SeqCst));
    assert!(
        hits >= 8 * 200 && hits < reads,
        "{hits} hits in {reads} reads"
    );
}

/// One command of a RESP request stream (an array of bulk strings, as clients send them):
/// its arguments and how many bytes it took; `None` until it has arrived whole.
fn resp_command(buf: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
    fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = at + buf.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
        Some((&buf[at..end], end + 2))
    }
    let (head, mut at) = line(buf, 0)?;
    let n: usize = std::str::from_utf8(head.strip_prefix(b"*")?)
        .ok()?
        .parse()
        .ok()?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        let (len, next) = line(buf, at)?;
        let len: usize = std::str::from_utf8(len.strip_prefix(b"$")?)
            .ok()?
            .parse()
            .ok()?;
        let data = buf.get(next..next + len)?;
        args.push(data.to_vec());
        at = next + len + 2;
        if buf.len() < at {
            return None;
        }
    }
    Some((args, at))
}

/// A server in front of `target` that answers every command with `-LOADING` while `loading`
/// is set, as Redis does while it loads its dataset after a restart, and forwards everything
/// to `target` from then on (on the same connections). Counts the connections that sent a
/// `HELLO` and were closed while it was loading.
struct LoadingFront {
    port: u16,
    loading: Arc<std::sync::atomic::AtomicBool>,
    refused_hellos: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl LoadingFront {
    async fn start(target: String) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let loading = Arc::new(AtomicBool::new(true));
        let refused_hellos = Arc::new(AtomicUsize::new(0));
        let (flag, hellos) = (loading.clone(), refused_hellos.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (flag, hellos, target) = (flag.clone(), hellos.clone(), target.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut saw_hello = false;
                    let mut chunk = [0u8; 4096];
                    while flag.load(Ordering::SeqCst) {
                        while let Some((args, used)) = resp_command(&buf) {
                            if !flag.load(Ordering::SeqCst) {
                                break;
                            }
                            saw_hello |= args
                                .first()
                                .is_some_and(|a| a.eq_ignore_ascii_case(b"HELLO"));
                            buf.drain(..used);
                            let reply = b"-LOADING Redis is loading the dataset in memory\r\n";
                            if client.write_all(reply).await.is_err() {
                                return;
                            }
                        }
                        if !flag.load(Ordering::SeqCst) {
                            break;
                        }
                        match client.read(&mut chunk).await {
                            Ok(0) | Err(_) => {
                                if saw_hello {
                                    hellos.fetch_add(1, Ordering::SeqCst);
                                }
                                return;
                            }
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    // Loaded: what is left of the stream goes to the real server.
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    if server.write_all(&buf).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self {
            port,
            loading,
            refused_hellos,
            task,
        }
    }
}

impl Drop for LoadingFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loading_server_only_delays_tracking() {
    use std::sync::atomic::Ordering;
    let r = TestRedis::start();
    let front = LoadingFront::start(format!("127.0.0.1:{}", r.port)).await;
    let c = Cache::builder()
        .namespace("t")
        .redis(format!("redis://127.0.0.1:{}/", front.port))
        .command_timeout(Duration::from_millis(200))
        .breaker(1000, Duration::from_millis(10))
        .build()
        .unwrap();
    // While the server loads, reads fail, and the tracking connection is refused with
    // LOADING (its HELLO answered, the connection given up).
    let refused = eventually(Duration::from_secs(10), || async {
        assert!(c.get::<u32>("k").await.is_err(), "no reads while loading");
        front.refused_hellos.load(Ordering::SeqCst) > 0
    })
    .await;
    assert!(refused, "the tracking connection met LOADING");
    front.loading.store(false, Ordering::SeqCst);
    // Loaded: tracking comes back (LOADING was not taken for a refusal of tracking).
    c.set("k", &1u32).await.unwrap();
    let tracked = eventually(Duration::from_secs(10), || async {
        c.get::<u32>("k").await.is_ok() && tracking_on(&r).await
    })
    .await;
    assert!(tracked, "tracking is on once the server has loaded");
}
