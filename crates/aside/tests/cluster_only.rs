//! Redis Cluster-specific behaviour: where the keys land, nodes that die or stop answering,
//! lazy connect, and what invalidations send. The properties themselves run in
//! `behaviour.rs` (`cluster_store`).
#![allow(clippy::unwrap_used)]

mod outage;

use aside::{Cache, CacheBuilder, Invalidation};
use std::time::{Duration, Instant};
use testkit::{Node, TestCluster, eventually, free_port};

type Never = std::convert::Infallible;

/// A cache on `c` with short timeouts, in namespace `t`.
fn builder(c: &TestCluster) -> CacheBuilder {
    Cache::builder()
        .namespace("t")
        .redis_cluster(c.urls())
        .command_timeout(Duration::from_millis(100))
}

async fn raw_get(c: &TestCluster, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut c.conn().await)
        .await
        .unwrap()
}

/// A key whose entry lives on another node than its tag, both chosen so they differ.
fn spread_key(c: &TestCluster) -> (String, String) {
    for i in 0..64 {
        let (key, tag) = (format!("product:p{i}"), format!("category:c{i}"));
        if c.node_of(&format!("t:e:{{{key}}}")) != c.node_of(&format!("t:t:{tag}")) {
            return (key, tag);
        }
    }
    unreachable!("64 keys on one node")
}

#[tokio::test]
async fn an_entry_and_its_stamps_live_on_different_nodes() {
    let c = TestCluster::start();
    let cache = builder(&c).build().unwrap();
    let (key, tag) = spread_key(&c);
    let (entry, refresh) = (format!("t:e:{{{key}}}"), format!("t:r:{{{key}}}"));
    cache.entry(&key).tag(&tag).set(&1u8).await.unwrap();

    let raw = String::from_utf8(raw_get(&c, &entry).await.expect("the entry is there")).unwrap();
    let stamps: Vec<&str> = raw.split_once('\n').unwrap().0.split(' ').collect();
    let stamp_keys: Vec<&str> = stamps[1..].iter().step_by(2).copied().collect();
    assert_eq!(
        stamp_keys,
        ["t:g", "t:p:product:", &format!("t:t:{tag}")],
        "{raw}"
    );
    // The entry and its refresh lease share a slot; its stamps are elsewhere, on other nodes.
    assert_eq!(c.slot(&entry), c.slot(&refresh));
    let nodes: std::collections::BTreeSet<usize> = std::iter::once(&entry[..])
        .chain(stamp_keys.iter().copied())
        .chain(["t:c"])
        .map(|k| c.node_of(k))
        .collect();
    assert!(nodes.len() >= 2, "all on one node: {nodes:?}");
    assert_ne!(c.node_of(&entry), c.node_of(&format!("t:t:{tag}")));
    // A single script over them would be refused: only per-slot scripts can work.
    let cross: redis::RedisResult<redis::Value> = redis::cmd("EVAL")
        .arg("return 1")
        .arg(2)
        .arg(&entry)
        .arg(format!("t:t:{tag}"))
        .query_async(&mut c.conn().await)
        .await;
    assert!(cross.is_err(), "a cross-slot script ran: {cross:?}");

    // And the tag still invalidates the entry across nodes.
    assert_eq!(cache.get::<u8>(&key).await.unwrap(), Some(1));
    cache.invalidate_tag(&tag).await.unwrap();
    assert_eq!(cache.get::<u8>(&key).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_costs_callers_a_bounded_time() {
    let mut c = TestCluster::start();
    let rec = metrics_util::debugging::DebuggingRecorder::new();
    let snap = rec.snapshotter();
    let cache = metrics::with_local_recorder(&rec, || {
        builder(&c)
            .breaker(3, Duration::from_secs(2))
            .build()
            .unwrap()
    });
    // The node of the entry: the others still answer, but the entry's slot is gone.
    let node = c.node_of("t:e:{k}");
    outage::a_killed_server_costs_callers_nothing(&cache, &snap, &mut Node(&mut c, node)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_is_bounded_by_the_timeout_and_missed_invalidations_are_replayed() {
    let c = TestCluster::start();
    let cache = builder(&c)
        .breaker(3, Duration::from_secs(2))
        .build()
        .unwrap();
    let (key, tag) = spread_key(&c);
    cache.entry(&key).tag(&tag).set(&"old").await.unwrap();
    cache.set("kept", &"kept").await.unwrap();
    // The node of the entry: its TCP connections stay up, only the timeout can end the calls.
    let node = c.node_of(&format!("t:e:{{{key}}}"));
    // Asked before the pause (the node answers slot questions too).
    let paused_stamp = [c.node_of("t:c:{t}:i"), c.node_of(&format!("t:t:{tag}"))].contains(&node);
    let expected = if paused_stamp {
        Invalidation::Queued
    } else {
        Invalidation::Applied
    };
    c.nodes[node].pause();
    let start = Instant::now();
    for _ in 0..3 {
        let err = cache.get::<String>(&key).await.unwrap_err();
        assert!(
            matches!(&err, aside::Error::Backend(e) if e.is_timeout()),
            "{err:?}"
        );
    }
    assert!(cache.health().breaker_open);
    // Sent although the breaker is open (invalidations always are): applied if the nodes of
    // the tag's version key and of its clock answer, kept for the replay if one is paused.
    let sent = cache.invalidate_tag(&tag).await.unwrap();
    assert_eq!(sent, expected);
    let v = cache
        .get_or_load(&key, || async { Ok::<_, Never>(Some("new".to_string())) })
        .await;
    assert_eq!(
        v.unwrap().as_deref(),
        Some("new"),
        "reads fall back to the loader"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "bounded by timeouts, not TCP: {:?}",
        start.elapsed()
    );

    c.nodes[node].resume();
    assert!(eventually(Duration::from_secs(10), || cache.ping()).await);
    assert_eq!(cache.health().pending_invalidations, 0);
    assert_eq!(
        cache.get::<String>(&key).await.unwrap(),
        None,
        "the tag bump was replayed"
    );
    assert_eq!(
        cache.get::<String>("kept").await.unwrap().as_deref(),
        Some("kept")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_and_serves_while_the_cluster_is_down_then_connects() {
    let ports = [free_port(), free_port(), free_port()];
    let cache = Cache::builder()
        .namespace("t")
        .redis_cluster(ports.iter().map(|p| format!("redis://127.0.0.1:{p}/")))
        .command_timeout(Duration::from_millis(100))
        .breaker(2, Duration::from_millis(50))
        .build()
        .expect("building does not connect");
    let v = cache
        .get_or_load("k", || async { Ok::<_, Never>(Some(1u8)) })
        .await
        .unwrap();
    assert_eq!(v, Some(1));
    let c = TestCluster::start_on(ports);
    assert!(
        eventually(Duration::from_secs(10), || cache.ping()).await,
        "connects once the cluster is up"
    );
    cache.set("k", &2u8).await.unwrap();
    assert!(raw_get(&c, "t:e:{k}").await.is_some());
    assert_eq!(cache.get::<u8>("k").await.unwrap(), Some(2));
}

#[tokio::test]
async fn invalidation_never_scans_or_lists_keys() {
    let c = TestCluster::start();
    let cache = builder(&c).build().unwrap();
    for i in 0..200 {
        cache
            .entry(&format!("products:list:{i}:20"))
            .tag("category:c1")
            .set(&i)
            .await
            .unwrap();
    }
    let mut conns = Vec::new();
    for n in &c.nodes {
        let mut conn = n.conn().await;
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut conn)
            .await
            .unwrap();
        conns.push(conn);
    }
    cache.invalidate_prefix("products:list:").await.unwrap();
    cache.invalidate_tag("category:c1").await.unwrap();
    cache
        .del(["products:list:1:20", "products:list:2:20", "product:p1"])
        .await
        .unwrap();
    let (mut calls, mut all) = (0, String::new());
    for conn in &mut conns {
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(conn)
            .await
            .unwrap();
        all.push_str(&stats);
        for forbidden in ["cmdstat_keys:", "cmdstat_scan:", "cmdstat_smembers:"] {
            assert!(
                !stats.contains(forbidden),
                "{forbidden} was called:\n{stats}"
            );
        }
        calls += stats
            .lines()
            .filter(|l| {
                !// Ours, redis-rs's topology reads, and scripts loaded once per node.
                [
                    "cmdstat_info:",
                    "cmdstat_config",
                    "cmdstat_cluster",
                    "cmdstat_script|load",
                ]
                    .iter()
                    .any(|p| l.starts_with(p))
            })
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum::<u64>();
    }
    // A handful of commands over the whole cluster (scripts count their inner commands), not
    // one per entry.
    assert!(calls < 30, "{calls} commands for 200 entries:\n{all}");
    assert_eq!(cache.get::<i32>("products:list:7:20").await.unwrap(), None);
}

#[tokio::test]
async fn acl_users_authenticate_through_the_urls() {
    let acl = [
        "--user", "default", "off", "--user", "app", "on", ">s3cret", "~*", "&*", "+@all",
    ];
    let c = TestCluster::start_with(
        [free_port(), free_port(), free_port()],
        &acl,
        &["--user", "app", "--pass", "s3cret", "--no-auth-warning"],
    );
    let urls = |pw: &str| {
        c.nodes
            .iter()
            .map(|n| format!("redis://app:{pw}@127.0.0.1:{}/", n.port))
            .collect::<Vec<_>>()
    };
    let good = Cache::builder()
        .namespace("t")
        .redis_cluster(urls("s3cret"))
        .build()
        .unwrap();
    good.entry("k").tag("x").set(&1u8).await.unwrap();
    assert_eq!(good.entry("k").tag("x").get::<u8>().await.unwrap(), Some(1));
    let bad = Cache::builder()
        .namespace("t")
        .redis_cluster(urls("wrong"))
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
    let dbg = format!("{good:?}");
    assert!(
        !dbg.contains("s3cret") && dbg.contains("redis://app:***@"),
        "no password in Debug output: {dbg}"
    );
}

/// One node does not answer (the one of the tag clocks): what does not touch it still works,
/// scripts included (they are loaded only where they run, not on every node). A claim takes
/// its lease on the entry's node, then cannot read the clock: it gives the lease back at once
/// instead of holding the key for the whole lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_does_not_answer_stops_only_what_needs_it() {
    let c = TestCluster::start();
    // A namespace whose epoch is not on the clock's node, and keys not on it either.
    // The tag clocks of a namespace share one slot (their hash tag is the namespace).
    let clocks = |ns: &str| aside::key::Namespace::new(ns).unwrap().clocks()[0].clone();
    let ns = (0..64)
        .map(|i| format!("n{i}"))
        .find(|ns| c.node_of(&format!("{ns}:g")) != c.node_of(clocks(ns).as_str()))
        .unwrap();
    let paused = c.node_of(clocks(&ns).as_str());
    let mut keys = (0..64)
        .map(|i| format!("k{i}"))
        .filter(|k| c.node_of(&format!("{ns}:e:{{{k}}}")) != paused);
    let (set_key, load_key) = (keys.next().unwrap(), keys.next().unwrap());
    let raw = format!("{ns}:e:{{{load_key}}}");
    let mut entry_node = c.nodes[c.node_of(&raw)].conn().await;
    let cache = Cache::builder()
        .namespace(&ns)
        .redis_cluster(c.urls())
        .command_timeout(Duration::from_millis(100))
        .lease(Duration::from_secs(60))
        .breaker(100, Duration::from_secs(1))
        .build()
        .unwrap();
    assert!(cache.ping().await);
    c.nodes[paused].pause();

    cache.set(&set_key, &1u8).await.unwrap();
    assert_eq!(cache.get::<u8>(&set_key).await.unwrap(), Some(1));

    let v = cache
        .get_or_load(&load_key, || async { Ok::<_, Never>(Some(2u8)) })
        .await
        .unwrap();
    assert_eq!(v, Some(2), "the loader answers");
    let released = eventually(Duration::from_secs(2), || {
        let mut conn = entry_node.clone();
        let raw = raw.clone();
        async move {
            let v: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&raw)
                .query_async(&mut conn)
                .await
                .unwrap();
            v.is_none()
        }
    })
    .await;
    let left: Option<String> = redis::cmd("GET")
        .arg(&raw)
        .query_async(&mut entry_node)
        .await
        .unwrap();
    c.nodes[paused].resume();
    assert!(released, "the placeholder is still there: {left:?}");
}

#[tokio::test]
async fn entries_and_tags_follow_their_slots_to_another_node() {
    let c = TestCluster::start();
    let cache = builder(&c).build().unwrap();
    let (key, tag) = spread_key(&c);
    let (entry, version) = (format!("t:e:{{{key}}}"), format!("t:t:{tag}"));
    let loads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let fetch = || {
        let (loads, tag) = (loads.clone(), tag.clone());
        cache.entry(&key).fetch_tagged(move || async move {
            let n = loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            Ok::<_, Never>(aside::Tagged::found(n).tag(tag))
        })
    };
    assert_eq!(fetch().await.unwrap().value, Some(1));
    cache.invalidate_tag(&tag).await.unwrap();
    assert_eq!(fetch().await.unwrap().value, Some(2));
    let f = fetch().await.unwrap();
    assert_eq!(
        (f.value, f.status),
        (Some(2), aside::Status::Hit),
        "scripts ran on the first nodes"
    );

    // Reshard: the entry's slot and the tag's version move to nodes that never ran a script
    // of this store, while the store's slot map still points at the old ones.
    let other = |n: usize| (n + 1) % c.nodes.len();
    let was = c.move_slot_of(&entry, other(c.node_of(&entry)));
    assert_ne!(c.node_of(&entry), was);
    c.move_slot_of(&version, other(c.node_of(&version)));

    let f = fetch().await.unwrap();
    assert_eq!(
        (f.value, f.status),
        (Some(2), aside::Status::Hit),
        "the moved entry is found where it went"
    );
    assert_eq!(
        cache.invalidate_tag(&tag).await.unwrap(),
        Invalidation::Applied,
        "the bump runs on the version's new node"
    );
    let f = fetch().await.unwrap();
    assert_eq!((f.value, f.status), (Some(3), aside::Status::Miss));
    let f = fetch().await.unwrap();
    assert_eq!(
        (f.value, f.status),
        (Some(3), aside::Status::Hit),
        "and the fill was stored on the entry's new node"
    );
    assert!(raw_get(&c, &entry).await.is_some());
}
