//! The feed on SQLite files, written by other pools and by another process.
#![allow(clippy::unwrap_used)]

mod support;

use aside_feed::{Feed, FeedConfig, Status};
use sqlx::sqlite::SqliteJournalMode;
use sqlx::{Executor, SqlitePool};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::*;

const SECOND: Duration = Duration::from_secs(1);
const A_WHILE: Duration = Duration::from_secs(10);
const CHILD_DB: &str = "ASIDE_FEED_TEST_CHILD_DB";

fn config() -> FeedConfig {
    FeedConfig::new("svc")
}

/// A poll interval far above every limit of the tests: only the wake-up can be in time.
fn woken_only() -> FeedConfig {
    config().poll_interval(Duration::from_secs(60))
}

fn start(pool: &SqlitePool, cache: &aside::Cache, config: FeedConfig) -> (Feed, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let feed = Feed::sqlite(pool.clone(), cache.clone(), mapping(seen.clone()), config).unwrap();
    (feed, seen)
}

async fn up(feed: &Feed) {
    assert!(
        eventually(A_WHILE, || async { feed.status() == Status::Up }).await,
        "the feed never came up: {:?}",
        feed.stats()
    );
}

async fn stored_position(pool: &SqlitePool, feed: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT position FROM aside_feed_position WHERE feed = ?1")
        .bind(feed)
        .fetch_optional(pool)
        .await
        .unwrap()
}

async fn outbox_rows(pool: &SqlitePool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM aside_feed_outbox")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[test]
fn trigger_ddl_names_the_columns_and_quotes_names() {
    let ddl = aside_feed::sqlite::trigger_ddl("odd\"table", &["id", "it's"]).unwrap();
    assert_eq!(ddl.len(), 6);
    assert!(
        ddl[1].contains("AFTER INSERT ON \"odd\"\"table\""),
        "{}",
        ddl[1]
    );
    assert!(ddl[1].contains("json_object('id', NEW.\"id\", 'it''s', NEW.\"it's\")"));
    assert!(ddl[3].contains("OLD.\"id\"") && ddl[3].contains("NEW.\"id\""));
    assert!(matches!(
        aside_feed::sqlite::trigger_ddl("t", &[]),
        Err(aside_feed::Error::NoColumns(_))
    ));
}

#[tokio::test]
async fn install_reads_columns_and_refuses_a_missing_table() {
    let (_db, pool) = TestSqlite::new().with_tables().await;
    pool.execute("INSERT INTO products VALUES ('p1', 'Lamp', 'c1')")
        .await
        .unwrap();
    let new: String = sqlx::query_scalar("SELECT new FROM aside_feed_outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    let new: serde_json::Value = serde_json::from_str(&new).unwrap();
    assert_eq!(
        new,
        serde_json::json!({"id": "p1", "name": "Lamp", "category_id": "c1"})
    );
    // Again (idempotent), then a table that is not there.
    aside_feed::sqlite::install_all_columns(&pool, &["products"])
        .await
        .unwrap();
    assert!(matches!(
        aside_feed::sqlite::install_all_columns(&pool, &["nope"]).await,
        Err(aside_feed::Error::NoColumns(_))
    ));
}

#[tokio::test]
async fn changes_by_another_pool_invalidate_within_a_second() {
    let (db, pool) = TestSqlite::new().with_tables().await;
    let cache = cache("sq1");
    let (feed, seen) = start(&pool, &cache, woken_only());
    up(&feed).await;
    let other = db.pool().await;

    put(&cache, "product:p1").await;
    other
        .execute("INSERT INTO categories VALUES ('c1', 'Lamps')")
        .await
        .unwrap();
    other
        .execute("INSERT INTO products VALUES ('p1', 'Lamp', 'c1')")
        .await
        .unwrap();
    assert!(
        eventually(SECOND, || gone(&cache, "product:p1")).await,
        "insert"
    );

    put(&cache, "product:p1").await;
    other
        .execute("UPDATE products SET name = 'Desk lamp' WHERE id = 'p1'")
        .await
        .unwrap();
    assert!(
        eventually(SECOND, || gone(&cache, "product:p1")).await,
        "update"
    );

    put_tagged(&cache, "list:c1", "category:c1").await;
    other
        .execute("UPDATE categories SET name = 'Lights' WHERE id = 'c1'")
        .await
        .unwrap();
    assert!(eventually(SECOND, || gone(&cache, "list:c1")).await, "tag");

    put(&cache, "product:p1").await;
    other
        .execute("DELETE FROM products WHERE id = 'p1'")
        .await
        .unwrap();
    assert!(
        eventually(SECOND, || gone(&cache, "product:p1")).await,
        "delete"
    );

    assert_eq!(seen.load(Ordering::SeqCst), 5);
    feed.shutdown().await.unwrap();
}

/// Run by `a_change_written_by_another_process_is_seen`, in a process of its own.
#[tokio::test]
#[ignore = "the other process of a_change_written_by_another_process_is_seen"]
async fn child_writes_a_product() {
    let Ok(path) = std::env::var(CHILD_DB) else {
        return;
    };
    let pool = sqlite_pool(std::path::Path::new(&path), SqliteJournalMode::Wal).await;
    pool.execute("INSERT INTO products VALUES ('from-child', 'x', 'c')")
        .await
        .unwrap();
    pool.close().await;
}

#[tokio::test]
async fn a_change_written_by_another_process_is_seen() {
    let (db, pool) = TestSqlite::new().with_tables().await;
    let cache = cache("sq6");
    let (feed, _) = start(&pool, &cache, woken_only());
    up(&feed).await;
    put(&cache, "product:from-child").await;
    // Its output is kept out of this test's, whose runner summary is read.
    let child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_writes_a_product",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CHILD_DB, &db.path)
        .output()
        .await
        .unwrap();
    assert!(
        child.status.success(),
        "{}{}",
        String::from_utf8_lossy(&child.stdout),
        String::from_utf8_lossy(&child.stderr)
    );
    assert!(eventually(SECOND, || gone(&cache, "product:from-child")).await);
    assert_eq!(feed.stats().changes_applied, 1);
    feed.shutdown().await.unwrap();
}

#[tokio::test]
async fn concurrent_writers_are_both_applied() {
    let (db, pool) = TestSqlite::new().with_tables().await;
    let cache = cache("sq2");
    let (feed, _) = start(&pool, &cache, config());
    up(&feed).await;
    put(&cache, "product:first").await;
    put(&cache, "product:second").await;

    let a = db.pool().await;
    let b = db.pool().await;
    let mut t1 = a.begin_with("BEGIN IMMEDIATE").await.unwrap();
    t1.execute("INSERT INTO products VALUES ('first', 'F', 'c')")
        .await
        .unwrap();
    // The second writer waits for the first to commit (its busy timeout is 500 ms).
    let second = tokio::spawn(async move {
        b.execute("INSERT INTO products VALUES ('second', 'S', 'c')")
            .await
            .unwrap();
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    t1.commit().await.unwrap();
    second.await.unwrap();
    assert!(eventually(SECOND, || gone(&cache, "product:first")).await);
    assert!(eventually(SECOND, || gone(&cache, "product:second")).await);
    assert_eq!(feed.stats().changes_applied, 2);
    feed.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_restart_applies_what_changed_while_stopped_and_replays_nothing_older() {
    let (db, pool) = TestSqlite::new().with_tables().await;
    let cache = cache("sq3");
    let other = db.pool().await;

    let (first, _) = start(&pool, &cache, config());
    up(&first).await;
    other
        .execute("INSERT INTO products VALUES ('p1', 'A', 'c'), ('p2', 'B', 'c')")
        .await
        .unwrap();
    assert!(eventually(SECOND, || async { first.stats().changes_applied == 2 }).await);
    first.shutdown().await.unwrap();
    let before = stored_position(&pool, "svc").await.unwrap();

    other
        .execute("UPDATE products SET name = 'B2' WHERE id = 'p2'")
        .await
        .unwrap();
    put(&cache, "product:p1").await;
    put(&cache, "product:p2").await;

    let (second, seen) = start(&pool, &cache, config());
    assert!(
        eventually(SECOND, || gone(&cache, "product:p2")).await,
        "missed while stopped"
    );
    other
        .execute("INSERT INTO products VALUES ('p3', 'C', 'c')")
        .await
        .unwrap();
    assert!(eventually(SECOND, || async { second.stats().changes_applied == 2 }).await);
    assert_eq!(seen.load(Ordering::SeqCst), 2, "older changes replayed");
    assert!(
        !gone(&cache, "product:p1").await,
        "p1's insert was replayed"
    );
    second.shutdown().await.unwrap();
    assert_eq!(stored_position(&pool, "svc").await.unwrap(), before + 2);
}

#[tokio::test]
async fn pruning_bounds_the_outbox_and_a_feed_behind_the_mark_resyncs_once() {
    let (db, pool) = TestSqlite::new().with_tables().await;
    let other_pool = db.pool().await;

    let other_cache = cache("sq4-other");
    let (other, _) = start(&other_pool, &other_cache, FeedConfig::new("other"));
    up(&other).await;
    other.shutdown().await.unwrap();

    let cache = cache("sq4");
    let quick = config()
        .retention(Duration::ZERO)
        .prune_interval(Duration::from_millis(1))
        .abandon_after(Duration::from_millis(1));
    let (feed, _) = start(&pool, &cache, quick);
    up(&feed).await;
    for i in 0..50 {
        other_pool
            .execute(sqlx::AssertSqlSafe(format!(
                "INSERT INTO products VALUES ('p{i}', 'x', 'c')"
            )))
            .await
            .unwrap();
    }
    assert!(eventually(A_WHILE, || async { feed.stats().changes_applied == 50 }).await);
    assert!(
        eventually(A_WHILE, || async { outbox_rows(&pool).await == 0 }).await,
        "the outbox keeps {} rows",
        outbox_rows(&pool).await
    );
    assert_eq!(feed.stats().resyncs, 0);
    feed.shutdown().await.unwrap();

    put(&other_cache, "product:p1").await;
    let (other, _) = start(&other_pool, &other_cache, FeedConfig::new("other"));
    up(&other).await;
    assert_eq!(other.stats().resyncs, 1);
    assert!(gone(&other_cache, "product:p1").await);
    pool.execute("INSERT INTO products VALUES ('later', 'x', 'c')")
        .await
        .unwrap();
    assert!(eventually(SECOND, || async { other.stats().changes_applied == 1 }).await);
    assert_eq!(other.stats().resyncs, 1, "resyncs once");
    other.shutdown().await.unwrap();
}

#[tokio::test]
async fn status_goes_down_while_the_database_is_locked_and_the_feed_comes_back() {
    let db = TestSqlite::new();
    // A rollback journal, so that an exclusive transaction keeps readers out.
    let pool = sqlite_pool(&db.path, SqliteJournalMode::Delete).await;
    pool.execute(
        "CREATE TABLE categories (id TEXT PRIMARY KEY, name TEXT NOT NULL);
         CREATE TABLE products (id TEXT PRIMARY KEY, name TEXT NOT NULL, category_id TEXT NOT NULL);",
    )
    .await
    .unwrap();
    aside_feed::sqlite::install_all_columns(&pool, &["products", "categories"])
        .await
        .unwrap();
    let cache = cache("sq5");
    let config = config()
        .timeout(Duration::from_secs(2))
        .poll_interval(Duration::from_millis(100));
    let (feed, _) = start(&pool, &cache, config);
    up(&feed).await;

    let locker = sqlite_pool(&db.path, SqliteJournalMode::Delete).await;
    let mut lock = locker.begin_with("BEGIN EXCLUSIVE").await.unwrap();
    lock.execute("INSERT INTO products VALUES ('p1', 'x', 'c')")
        .await
        .unwrap();
    assert!(eventually(A_WHILE, || async { feed.status() == Status::Down }).await);
    put(&cache, "product:p1").await;
    assert_eq!(
        cache.get::<String>("product:p1").await.unwrap().as_deref(),
        Some("cached")
    );
    lock.commit().await.unwrap();
    up(&feed).await;
    assert!(
        eventually(A_WHILE, || gone(&cache, "product:p1")).await,
        "change made while down"
    );
    feed.shutdown().await.unwrap();
}

#[tokio::test]
async fn two_instances_both_invalidate_and_the_position_ends_at_the_head() {
    let (db, pool) = TestSqlite::new().with_tables().await;
    let a = cache("sq7-a");
    let b = cache("sq7-b");
    let (fa, _) = start(&pool, &a, config());
    let pool_b = db.pool().await;
    let (fb, _) = start(&pool_b, &b, config());
    up(&fa).await;
    up(&fb).await;
    let writer = db.pool().await;
    for i in 0..20 {
        put(&a, &format!("product:p{i}")).await;
        put(&b, &format!("product:p{i}")).await;
        writer
            .execute(sqlx::AssertSqlSafe(format!(
                "INSERT INTO products VALUES ('p{i}', 'x', 'c')"
            )))
            .await
            .unwrap();
    }
    for i in 0..20 {
        let key = format!("product:p{i}");
        assert!(eventually(SECOND, || gone(&a, &key)).await);
        assert!(eventually(SECOND, || gone(&b, &key)).await);
    }
    assert!(
        eventually(SECOND, || async {
            fa.stats().changes_applied == 20 && fb.stats().changes_applied == 20
        })
        .await
    );
    fa.shutdown().await.unwrap();
    fb.shutdown().await.unwrap();
    let head: i64 = sqlx::query_scalar("SELECT max(id) + 1 FROM aside_feed_outbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored_position(&pool, "svc").await, Some(head));
}

#[tokio::test]
async fn convergence_of_outside_writes() {
    let (db, pool) = TestSqlite::new().with_tables().await;
    let cache = cache("sq8");
    let (feed, _) = start(&pool, &cache, woken_only());
    up(&feed).await;
    let writer = db.pool().await;
    writer
        .execute("INSERT INTO products VALUES ('p', 'x', 'c')")
        .await
        .unwrap();
    assert!(eventually(SECOND, || async { feed.stats().changes_applied == 1 }).await);
    let mut samples = Vec::with_capacity(200);
    for i in 0..200 {
        put(&cache, "product:p").await;
        let t = Instant::now();
        writer
            .execute(sqlx::AssertSqlSafe(format!(
                "UPDATE products SET name = 'n{i}' WHERE id = 'p'"
            )))
            .await
            .unwrap();
        assert!(eventually(SECOND, || gone(&cache, "product:p")).await);
        samples.push(t.elapsed());
    }
    let (median, p99) = percentiles(samples);
    println!("sqlite convergence over 200 outside updates: median {median:?}, p99 {p99:?}");
    assert!(p99 < SECOND);
    feed.shutdown().await.unwrap();
}

/// The value of the metric `name` of the feed `feed`.
fn metric(
    snapshotter: &metrics_util::debugging::Snapshotter,
    name: &str,
    feed: &str,
) -> Option<f64> {
    use metrics_util::debugging::DebugValue;
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(k, ..)| {
            k.key().name() == name
                && k.key()
                    .labels()
                    .any(|l| l.key() == "feed" && l.value() == feed)
        })
        .and_then(|(.., v)| match v {
            DebugValue::Counter(c) => Some(c as f64),
            DebugValue::Gauge(g) => Some(g.into_inner()),
            DebugValue::Histogram(_) => None,
        })
}

#[tokio::test]
async fn metrics_count_changes_resyncs_and_lag() {
    let (db, pool) = TestSqlite::new().with_tables().await;
    let cache = cache("sq9");
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (feed, _) = metrics::with_local_recorder(&recorder, || {
        start(&pool, &cache, FeedConfig::new("metered"))
    });
    up(&feed).await;
    let other = db.pool().await;
    other
        .execute("INSERT INTO products VALUES ('a', 'x', 'c'), ('b', 'x', 'c')")
        .await
        .unwrap();
    assert!(
        eventually(SECOND, || async {
            metric(&snapshotter, "aside_feed_changes_total", "metered") == Some(2.0)
        })
        .await
    );
    assert_eq!(
        metric(&snapshotter, "aside_feed_resyncs_total", "metered"),
        Some(0.0)
    );
    assert_eq!(
        metric(&snapshotter, "aside_feed_lag_seconds", "metered"),
        Some(0.0)
    );
    assert_eq!(
        metric(&snapshotter, "aside_feed_lag_changes", "metered"),
        Some(0.0)
    );
    feed.shutdown().await.unwrap();
}
