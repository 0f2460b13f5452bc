//! The feed on a real PostgreSQL (127.0.0.1:5432), one fresh database per test.
#![allow(clippy::unwrap_used)]

mod support;

use aside::store::Failing;
use aside_feed::{Feed, FeedConfig, Status};
use sqlx::{Connection, Executor, PgConnection, PgPool};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::*;

const SECOND: Duration = Duration::from_secs(1);
const A_WHILE: Duration = Duration::from_secs(10);

fn config() -> FeedConfig {
    FeedConfig::new("svc")
}

/// A poll interval far above every limit of the tests: only the `NOTIFY` wake-up can be in
/// time.
fn woken_only() -> FeedConfig {
    config().poll_interval(Duration::from_secs(60))
}

fn start(pool: &PgPool, cache: &aside::Cache, config: FeedConfig) -> (Feed, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let feed = Feed::postgres(pool.clone(), cache.clone(), mapping(seen.clone()), config).unwrap();
    (feed, seen)
}

async fn up(feed: &Feed) {
    assert!(
        eventually(A_WHILE, || async { feed.status() == Status::Up }).await,
        "the feed never came up: {:?}",
        feed.stats()
    );
}

async fn outside(db: &TestPostgres) -> PgConnection {
    PgConnection::connect(&db.url).await.unwrap()
}

async fn stored_position(pool: &PgPool, feed: &str) -> Option<i64> {
    sqlx::query_scalar("SELECT position FROM aside_feed_position WHERE feed = $1")
        .bind(feed)
        .fetch_optional(pool)
        .await
        .unwrap()
}

async fn newest_txid(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT max(txid::text::int8) FROM aside_feed_outbox")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn outbox_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM aside_feed_outbox")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn install_is_idempotent() {
    let (_db, pool) = with_tables(TestPostgres::new().await).await;
    aside_feed::postgres::install(&pool, &["products", "public.categories"])
        .await
        .unwrap();
    let triggers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'aside_feed_%' AND NOT tgisinternal",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(triggers, 4, "two per table (capture, truncate), none twice");
    assert!(matches!(
        aside_feed::postgres::install(&pool, &["a.b.c"]).await,
        Err(aside_feed::Error::InvalidTable(_))
    ));
}

/// The default: no `NOTIFY` trigger (it would serialize the writers' commits); the feed
/// finds changes by reading every poll interval.
#[tokio::test]
async fn without_notify_changes_are_found_by_polling() {
    let (db, pool) = with_notified_tables(TestPostgres::new().await).await;
    // Installed again the default way: the NOTIFY trigger goes.
    aside_feed::postgres::install(&pool, &["products", "categories"])
        .await
        .unwrap();
    let notify_triggers: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_trigger WHERE tgname = 'aside_feed_notify'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(notify_triggers, 0);
    let cache = cache("pg0");
    let (feed, _) = start(&pool, &cache, config());
    up(&feed).await;
    let mut sql = outside(&db).await;
    put(&cache, "product:p1").await;
    sql.execute("INSERT INTO categories VALUES ('c1', 'Lamps')")
        .await
        .unwrap();
    sql.execute("INSERT INTO products VALUES ('p1', 'Lamp', 'c1')")
        .await
        .unwrap();
    assert!(eventually(SECOND, || gone(&cache, "product:p1")).await);
    feed.shutdown().await.unwrap();
}

#[tokio::test]
async fn outside_inserts_updates_deletes_and_truncates_invalidate_within_a_second() {
    let (db, pool) = with_notified_tables(TestPostgres::new().await).await;
    let cache = cache("pg1");
    let (feed, seen) = start(&pool, &cache, woken_only());
    up(&feed).await;
    let mut sql = outside(&db).await;

    put(&cache, "product:p1").await;
    sql.execute("INSERT INTO categories VALUES ('c1', 'Lamps')")
        .await
        .unwrap();
    sql.execute("INSERT INTO products VALUES ('p1', 'Lamp', 'c1')")
        .await
        .unwrap();
    assert!(
        eventually(SECOND, || gone(&cache, "product:p1")).await,
        "insert"
    );

    put(&cache, "product:p1").await;
    sql.execute("UPDATE products SET name = 'Desk lamp' WHERE id = 'p1'")
        .await
        .unwrap();
    assert!(
        eventually(SECOND, || gone(&cache, "product:p1")).await,
        "update"
    );

    put_tagged(&cache, "list:c1", "category:c1").await;
    sql.execute("UPDATE categories SET name = 'Lights' WHERE id = 'c1'")
        .await
        .unwrap();
    assert!(eventually(SECOND, || gone(&cache, "list:c1")).await, "tag");

    put(&cache, "product:p1").await;
    sql.execute("DELETE FROM products WHERE id = 'p1'")
        .await
        .unwrap();
    assert!(
        eventually(SECOND, || gone(&cache, "product:p1")).await,
        "delete"
    );

    put(&cache, "anything").await;
    sql.execute("TRUNCATE products").await.unwrap();
    assert!(
        eventually(SECOND, || gone(&cache, "anything")).await,
        "truncate"
    );

    assert_eq!(seen.load(Ordering::SeqCst), 6);
    assert_eq!(feed.stats().changes_applied, 6);
    feed.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_rolled_back_change_is_not_applied() {
    let (db, pool) = with_tables(TestPostgres::new().await).await;
    let cache = cache("pg-rollback");
    let (feed, seen) = start(&pool, &cache, config());
    up(&feed).await;
    let mut sql = outside(&db).await;
    sql.execute("BEGIN; INSERT INTO products VALUES ('x', 'X', 'c'); ROLLBACK")
        .await
        .unwrap();
    sql.execute("INSERT INTO products VALUES ('y', 'Y', 'c')")
        .await
        .unwrap();
    assert!(eventually(SECOND, || async { feed.stats().changes_applied == 1 }).await);
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    feed.shutdown().await.unwrap();
}

#[tokio::test]
async fn transactions_committing_out_of_id_order_are_both_applied() {
    let (db, pool) = with_tables(TestPostgres::new().await).await;
    let cache = cache("pg2");
    let (feed, _) = start(&pool, &cache, config());
    up(&feed).await;
    put(&cache, "product:first").await;
    put(&cache, "product:second").await;

    let mut t1 = outside(&db).await;
    let mut t2 = outside(&db).await;
    t1.execute("BEGIN").await.unwrap();
    t1.execute("INSERT INTO products VALUES ('first', 'F', 'c')")
        .await
        .unwrap();
    t2.execute("INSERT INTO products VALUES ('second', 'S', 'c')")
        .await
        .unwrap();
    let ids: Vec<(String, i64)> =
        sqlx::query_as("SELECT new->>'id', id FROM aside_feed_outbox ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(ids.len(), 1, "only the second is committed: {ids:?}");
    assert_eq!(ids[0].0, "second");
    assert!(ids[0].1 > 1, "the first took the lower id");

    // The second is applied while the first is still open (which holds the horizon back),
    // and the durable position stays below the first.
    assert!(eventually(SECOND, || gone(&cache, "product:second")).await);
    let reads = feed.stats().reads;
    assert!(eventually(A_WHILE, || async { feed.stats().reads >= reads + 3 }).await);
    assert!(!gone(&cache, "product:first").await);
    let t1_txid: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::int8")
        .fetch_one(&mut t1)
        .await
        .unwrap();
    assert!(stored_position(&pool, "svc").await.unwrap() <= t1_txid);
    t1.execute("COMMIT").await.unwrap();

    assert!(
        eventually(SECOND, || gone(&cache, "product:first")).await,
        "first skipped"
    );
    // Once the horizon passes both, the position does too, and the second was not applied
    // again on the way.
    assert!(
        eventually(A_WHILE, || async {
            stored_position(&pool, "svc").await.unwrap() > t1_txid
        })
        .await
    );
    assert_eq!(feed.stats().changes_applied, 2);
    feed.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_restart_applies_what_changed_while_stopped_and_replays_nothing_older() {
    let (db, pool) = with_tables(TestPostgres::new().await).await;
    let cache = cache("pg3");
    let mut sql = outside(&db).await;

    let (first, _) = start(&pool, &cache, config());
    up(&first).await;
    sql.execute("INSERT INTO products VALUES ('p1', 'A', 'c'), ('p2', 'B', 'c')")
        .await
        .unwrap();
    assert!(eventually(SECOND, || async { first.stats().changes_applied == 2 }).await);
    // Another test's open transaction may hold the horizon (it is the server's) below them.
    let newest = newest_txid(&pool).await;
    assert!(
        eventually(A_WHILE, || async {
            first.stats().durable_position.unwrap_or(0) > newest
        })
        .await
    );
    first.shutdown().await.unwrap();
    let before = stored_position(&pool, "svc").await.unwrap();

    sql.execute("UPDATE products SET name = 'B2' WHERE id = 'p2'")
        .await
        .unwrap();
    put(&cache, "product:p1").await;
    put(&cache, "product:p2").await;

    let (second, seen) = start(&pool, &cache, config());
    assert!(
        eventually(SECOND, || gone(&cache, "product:p2")).await,
        "missed while stopped"
    );
    // One more change, so that anything replayed would have been applied by now.
    sql.execute("INSERT INTO products VALUES ('p3', 'C', 'c')")
        .await
        .unwrap();
    assert!(eventually(SECOND, || async { second.stats().changes_applied == 2 }).await);
    assert_eq!(seen.load(Ordering::SeqCst), 2, "older changes replayed");
    assert!(
        !gone(&cache, "product:p1").await,
        "p1's insert was replayed"
    );
    let newest = newest_txid(&pool).await;
    assert!(
        eventually(A_WHILE, || async {
            stored_position(&pool, "svc").await.unwrap() > newest
        })
        .await
    );
    assert!(newest > before);
    second.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_first_start_begins_at_the_head() {
    let (db, pool) = with_tables(TestPostgres::new().await).await;
    let cache = cache("pg-first");
    let mut sql = outside(&db).await;
    // An open transaction holds the horizon below the old change, which is committed.
    let mut hold = outside(&db).await;
    hold.execute("BEGIN").await.unwrap();
    hold.execute("SELECT pg_current_xact_id()").await.unwrap();
    sql.execute("INSERT INTO products VALUES ('old', 'O', 'c')")
        .await
        .unwrap();
    put(&cache, "product:old").await;
    let (feed, seen) = start(&pool, &cache, config());
    up(&feed).await;
    sql.execute("INSERT INTO products VALUES ('new', 'N', 'c')")
        .await
        .unwrap();
    assert!(eventually(SECOND, || async { feed.stats().changes_applied == 1 }).await);
    hold.execute("COMMIT").await.unwrap();
    sql.execute("INSERT INTO products VALUES ('newer', 'N', 'c')")
        .await
        .unwrap();
    assert!(eventually(SECOND, || async { feed.stats().changes_applied == 2 }).await);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        2,
        "the old change was replayed"
    );
    assert!(!gone(&cache, "product:old").await);
    feed.shutdown().await.unwrap();
}

#[tokio::test]
async fn pruning_bounds_the_outbox_and_a_feed_behind_the_mark_resyncs_once() {
    let (db, pool) = with_tables(TestPostgres::new().await).await;
    let mut sql = outside(&db).await;

    // Another service's feed records its position, then stops for good.
    let other_cache = cache("pg4-other");
    let (other, _) = start(&pool, &other_cache, FeedConfig::new("other"));
    up(&other).await;
    other.shutdown().await.unwrap();

    let cache = cache("pg4");
    let quick = config()
        .retention(Duration::ZERO)
        .prune_interval(Duration::from_millis(1))
        .abandon_after(Duration::from_millis(1));
    let (feed, _) = start(&pool, &cache, quick);
    up(&feed).await;
    for i in 0..50 {
        sql.execute(sqlx::AssertSqlSafe(format!(
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

    // The other service comes back: what it needs was pruned, so it voids its namespace.
    put(&other_cache, "product:p1").await;
    let (other, _) = start(&pool, &other_cache, FeedConfig::new("other"));
    up(&other).await;
    assert_eq!(other.stats().resyncs, 1);
    assert!(gone(&other_cache, "product:p1").await);
    assert_eq!(feed.stats().resyncs, 0);
    // The first feed would prune the next change before the other reads it (and the other
    // would rightly resync again): let the other go on alone.
    feed.shutdown().await.unwrap();
    sql.execute("INSERT INTO products VALUES ('later', 'x', 'c')")
        .await
        .unwrap();
    assert!(eventually(SECOND, || async { other.stats().changes_applied == 1 }).await);
    assert_eq!(other.stats().resyncs, 1, "resyncs once");
    other.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_running_instance_that_fell_behind_the_pruned_mark_resyncs_once() {
    let (db, pool) = with_tables(TestPostgres::new().await).await;
    let proxy = TcpProxy::start("127.0.0.1:5432").await;
    let mut sql = outside(&db).await;
    let quick = || {
        config()
            .retention(Duration::ZERO)
            .prune_interval(Duration::from_millis(1))
            .timeout(Duration::from_millis(500))
            .poll_interval(Duration::from_millis(100))
    };
    let leader_cache = cache("pg4b-a");
    let (leader, _) = start(&pool, &leader_cache, quick());
    let behind_cache = cache("pg4b-b");
    let behind_pool = pool_at(&db.url_via(proxy.port)).await;
    let (behind, _) = start(&behind_pool, &behind_cache, quick());
    up(&leader).await;
    up(&behind).await;

    proxy.set_up(false);
    assert!(eventually(A_WHILE, || async { behind.status() == Status::Down }).await);
    for i in 0..5 {
        sql.execute(sqlx::AssertSqlSafe(format!(
            "INSERT INTO products VALUES ('p{i}', 'x', 'c')"
        )))
        .await
        .unwrap();
    }
    assert!(eventually(A_WHILE, || async { outbox_rows(&pool).await == 0 }).await);
    put(&behind_cache, "unrelated").await;

    proxy.set_up(true);
    up(&behind).await;
    assert!(eventually(A_WHILE, || async { behind.stats().resyncs == 1 }).await);
    assert!(gone(&behind_cache, "unrelated").await, "no invalidate_all");
    assert_eq!(leader.stats().resyncs, 0);
    // With no retention the leader would prune the next change before this instance reads
    // it (and it would rightly resync again): let it go on alone.
    leader.shutdown().await.unwrap();
    sql.execute("INSERT INTO products VALUES ('later', 'x', 'c')")
        .await
        .unwrap();
    assert!(eventually(SECOND, || async { behind.stats().changes_applied >= 1 }).await);
    assert_eq!(behind.stats().resyncs, 1);
    behind.shutdown().await.unwrap();
}

#[tokio::test]
async fn status_goes_down_while_the_database_is_unreachable_and_the_feed_comes_back() {
    let (db, _pool) = with_tables(TestPostgres::new().await).await;
    let proxy = TcpProxy::start("127.0.0.1:5432").await;
    let cache = cache("pg5");
    let pool = pool_at(&db.url_via(proxy.port)).await;
    let config = config()
        .timeout(Duration::from_millis(500))
        .poll_interval(Duration::from_millis(100));
    let (feed, _) = start(&pool, &cache, config);
    up(&feed).await;

    proxy.set_up(false);
    assert!(eventually(A_WHILE, || async { feed.status() == Status::Down }).await);
    assert!(feed.stats().last_error.is_some());
    // The cache serves as ever.
    put(&cache, "product:p1").await;
    assert_eq!(
        cache.get::<String>("product:p1").await.unwrap().as_deref(),
        Some("cached")
    );
    let mut sql = outside(&db).await;
    sql.execute("INSERT INTO products VALUES ('p1', 'x', 'c')")
        .await
        .unwrap();

    proxy.set_up(true);
    up(&feed).await;
    assert!(
        eventually(A_WHILE, || gone(&cache, "product:p1")).await,
        "change made while down"
    );
    feed.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_pool_on_a_closed_port_is_down_and_cache_reads_go_on() {
    let pool = pool_at("postgres://postgres@127.0.0.1:1/none").await;
    let cache = cache("pg5b");
    let config = config()
        .timeout(Duration::from_millis(300))
        .poll_interval(Duration::from_millis(50));
    let (feed, _) = start(&pool, &cache, config);
    assert!(eventually(A_WHILE, || async { feed.status() == Status::Down }).await);
    put(&cache, "k").await;
    feed.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_queued_invalidation_holds_the_durable_position_until_the_store_applies_it() {
    let (db, pool) = with_tables(TestPostgres::new().await).await;
    let store = chaos_store();
    let cache = flaky_cache("pg6", store.clone());
    let config = config().poll_interval(Duration::from_millis(50));
    let (feed, _) = start(&pool, &cache, config);
    up(&feed).await;
    let start_position = stored_position(&pool, "svc").await.unwrap();
    put(&cache, "product:p1").await;

    store.fail(Failing::Everything);
    let mut sql = outside(&db).await;
    sql.execute("INSERT INTO products VALUES ('p1', 'x', 'c')")
        .await
        .unwrap();
    assert!(eventually(A_WHILE, || async { feed.stats().changes_applied == 1 }).await);
    assert!(cache.health().pending_invalidations > 0);
    // More reads, while the store still refuses.
    let reads = feed.stats().reads;
    assert!(eventually(A_WHILE, || async { feed.stats().reads >= reads + 3 }).await);
    assert_eq!(
        stored_position(&pool, "svc").await.unwrap(),
        start_position,
        "the position moved past an invalidation the store has not applied"
    );

    store.fail(Failing::Nothing);
    assert!(
        eventually(A_WHILE, || async {
            stored_position(&pool, "svc").await.unwrap() > start_position
        })
        .await
    );
    assert!(gone(&cache, "product:p1").await);
    feed.shutdown().await.unwrap();
}

#[tokio::test]
async fn two_instances_both_invalidate_and_the_position_ends_at_the_head() {
    let (db, pool) = with_tables(TestPostgres::new().await).await;
    let a = cache("pg7-a");
    let b = cache("pg7-b");
    let (fa, _) = start(&pool, &a, config());
    let other_pool = pool_at(&db.url).await;
    let (fb, _) = start(&other_pool, &b, config());
    up(&fa).await;
    up(&fb).await;
    let mut sql = outside(&db).await;
    for i in 0..20 {
        put(&a, &format!("product:p{i}")).await;
        put(&b, &format!("product:p{i}")).await;
        sql.execute(sqlx::AssertSqlSafe(format!(
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
    let newest = newest_txid(&pool).await;
    assert!(
        eventually(A_WHILE, || async {
            stored_position(&pool, "svc").await.unwrap() > newest
        })
        .await
    );
    fa.shutdown().await.unwrap();
    fb.shutdown().await.unwrap();
    let behind: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM aside_feed_outbox o, aside_feed_position p \
         WHERE p.feed = 'svc' AND o.txid >= p.position::text::xid8",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(behind, 0, "the durable position is below some change");
    assert_eq!(outbox_rows(&pool).await, 20);
}

#[tokio::test]
async fn convergence_of_outside_writes() {
    let (db, pool) = with_notified_tables(TestPostgres::new().await).await;
    let cache = cache("pg8");
    let (feed, _) = start(&pool, &cache, woken_only());
    up(&feed).await;
    let mut sql = outside(&db).await;
    sql.execute("INSERT INTO products VALUES ('p', 'x', 'c')")
        .await
        .unwrap();
    assert!(eventually(SECOND, || async { feed.stats().changes_applied == 1 }).await);
    let mut samples = Vec::with_capacity(200);
    for i in 0..200 {
        put(&cache, "product:p").await;
        let t = Instant::now();
        sql.execute(sqlx::AssertSqlSafe(format!(
            "UPDATE products SET name = 'n{i}' WHERE id = 'p'"
        )))
        .await
        .unwrap();
        assert!(eventually(SECOND, || gone(&cache, "product:p")).await);
        samples.push(t.elapsed());
    }
    let (median, p99) = percentiles(samples);
    println!("postgres convergence over 200 outside updates: median {median:?}, p99 {p99:?}");
    assert!(p99 < SECOND);
    feed.shutdown().await.unwrap();
}
