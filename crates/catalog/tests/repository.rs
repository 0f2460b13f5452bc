//! One suite of repository tests, run against SQLite and against PostgreSQL (a fresh database
//! per test on 127.0.0.1:5432).
#![allow(clippy::unwrap_used)]

use catalog::db::{self, DbError, Options, Repository, seed_product};
use catalog::model::{Id, MAX_PAGE, NewProduct, PageRequest, ProductPatch, now};
use sqlx::{Connection, Executor};
use std::sync::Arc;
use std::time::Duration;

fn id(s: &str) -> Id {
    Id::parse(s).unwrap()
}

fn new_product(i: &str, category: &str) -> NewProduct {
    NewProduct {
        id: id(i),
        name: format!("New {i}"),
        price: 12.5,
        category_id: id(category),
        created_at: now(),
    }
}

/// A migrated, seeded repository (25 products) and what keeps its database alive.
struct Fixture {
    repo: Arc<dyn Repository>,
    _keep: Box<dyn std::any::Any>,
}

/// A SQLite file in `dir` that does not exist yet: connect must create it.
fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("new.db").display())
}

async fn sqlite() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let repo = db::connect(&url, &Options::default()).await.unwrap();
    repo.migrate().await.unwrap();
    assert!(repo.seed(25).await.unwrap());
    Fixture {
        repo,
        _keep: Box::new(dir),
    }
}

async fn postgres() -> Fixture {
    let pg = testkit::TestPostgres::new().await;
    let repo = db::connect(&pg.url, &Options::default()).await.unwrap();
    repo.migrate().await.unwrap();
    assert!(repo.seed(25).await.unwrap());
    Fixture {
        repo,
        _keep: Box::new(pg),
    }
}

async fn seeding_is_deterministic_and_happens_once(f: Fixture) {
    let r = &f.repo;
    assert!(
        !r.seed(25).await.unwrap(),
        "a seeded database is not seeded again"
    );
    let p = r.product(&id("p1")).await.unwrap().unwrap();
    let want = seed_product(1);
    assert_eq!(
        (
            p.name.as_str(),
            p.price,
            p.category_id.as_str(),
            p.category.name.as_str()
        ),
        ("Product 1", 1.99, "c1", "Category 1")
    );
    assert_eq!(
        (p.created_at, p.updated_at),
        (want.created_at, want.created_at)
    );
    let p21 = r.product(&id("p21")).await.unwrap().unwrap();
    assert_eq!((p21.category_id.as_str(), p21.price), ("c1", 21.99));
    let page = r.page(0, 5).await.unwrap();
    assert_eq!(page.total, 25);
    let ids: Vec<_> = page.products.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["p25", "p24", "p23", "p22", "p21"]);
    assert!(r.product(&id("p26")).await.unwrap().is_none());
    assert!(
        r.rename_category(&id("c20"), "Category 20")
            .await
            .unwrap()
            .is_some()
    );
    assert!(r.rename_category(&id("c21"), "x").await.unwrap().is_none());
}

async fn pages_split_and_end(f: Fixture) {
    let r = &f.repo;
    let last = r.page(20, 10).await.unwrap();
    assert_eq!(last.total, 25);
    let ids: Vec<_> = last.products.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["p5", "p4", "p3", "p2", "p1"]);
    let past = r.page(1_000_000, 10).await.unwrap();
    assert!(past.products.is_empty());
    assert_eq!(past.total, 25, "the total is known past the last page");
    // The last page a client may ask for, and an offset past any BIGINT.
    let last = PageRequest {
        page: MAX_PAGE,
        limit: 100,
    };
    for offset in [last.offset(), u64::MAX] {
        let far = r.page(offset, 100).await.unwrap();
        assert!(far.products.is_empty());
        assert_eq!(far.total, 25, "offset {offset}");
    }
    let all = r.page(0, 100).await.unwrap();
    assert_eq!(all.products.len(), 25);
    assert!(
        all.products
            .windows(2)
            .all(|w| w[0].created_at > w[1].created_at)
    );
}

/// A page's ids are those of the page itself, in its order, with the same total; and the
/// products of any ids are read in one statement, each as a read of its own returns it.
async fn page_ids_and_products_by_id(f: Fixture) {
    let r = &f.repo;
    for (offset, limit) in [(0, 10), (20, 10), (1_000_000, 10), (u64::MAX, 100)] {
        let page = r.page(offset, limit).await.unwrap();
        let ids = r.page_ids(offset, limit).await.unwrap();
        let want: Vec<String> = page.products.iter().map(|p| p.id.clone()).collect();
        assert_eq!((ids.ids, ids.total), (want, page.total), "offset {offset}");
    }
    let asked = [id("p3"), id("p25"), id("nope"), id("p1")];
    let mut found = r.products(&asked).await.unwrap();
    found.sort_by(|a, b| a.id.cmp(&b.id));
    let mut each = Vec::new();
    for i in ["p1", "p25", "p3"] {
        each.push(r.product(&id(i)).await.unwrap().unwrap());
    }
    assert_eq!(found, each, "an unknown id is left out");
    assert!(r.products(&[]).await.unwrap().is_empty());
    let hundred: Vec<Id> = (1..=100).map(|i| id(&format!("p{i}"))).collect();
    assert_eq!(r.products(&hundred).await.unwrap().len(), 25);
}

async fn insert_returns_what_reads_return(f: Fixture) {
    let r = &f.repo;
    let mut np = new_product("n-1", "c3");
    np.name = "é".repeat(200);
    np.price = 0.1 + 0.2;
    let created = r.insert(&np).await.unwrap();
    assert_eq!(created.category.name, "Category 3");
    assert_eq!(created.created_at, np.created_at);
    assert_eq!(created.updated_at, np.created_at);
    assert_eq!(r.product(&id("n-1")).await.unwrap(), Some(created.clone()));
    assert_eq!(created.price, 0.1 + 0.2);
    let page = r.page(0, 1).await.unwrap();
    assert_eq!(page.products[0].id, "n-1", "the newest product comes first");
    assert_eq!(page.total, 26);
}

async fn insert_refuses_duplicates_and_unknown_categories(f: Fixture) {
    let r = &f.repo;
    assert!(matches!(
        r.insert(&new_product("p1", "c1")).await,
        Err(DbError::Duplicate)
    ));
    assert!(matches!(
        r.insert(&new_product("n-2", "c99")).await,
        Err(DbError::UnknownCategory)
    ));
    assert!(r.product(&id("n-2")).await.unwrap().is_none());
    assert_eq!(
        r.product(&id("p1")).await.unwrap().unwrap().name,
        "Product 1"
    );
}

async fn update_changes_only_what_is_given(f: Fixture) {
    let r = &f.repo;
    let before = r.product(&id("p2")).await.unwrap().unwrap();
    let t = now();
    let patch = ProductPatch {
        price: Some(7.0),
        ..Default::default()
    };
    let after = r.update(&id("p2"), &patch, t).await.unwrap().unwrap();
    assert_eq!(
        (after.name.as_str(), after.price, after.category_id.as_str()),
        ("Product 2", 7.0, "c2")
    );
    assert_eq!((after.created_at, after.updated_at), (before.created_at, t));
    let patch = ProductPatch {
        name: Some("Two".into()),
        category_id: Some(id("c5")),
        ..Default::default()
    };
    let after = r.update(&id("p2"), &patch, now()).await.unwrap().unwrap();
    assert_eq!(
        (
            after.name.as_str(),
            after.price,
            after.category.name.as_str()
        ),
        ("Two", 7.0, "Category 5")
    );
    assert_eq!(r.product(&id("p2")).await.unwrap(), Some(after));
    assert!(
        r.update(&id("nope"), &patch, now())
            .await
            .unwrap()
            .is_none()
    );
}

async fn update_refuses_unknown_categories(f: Fixture) {
    let r = &f.repo;
    let before = r.product(&id("p3")).await.unwrap();
    let patch = ProductPatch {
        category_id: Some(id("c99")),
        name: Some("x".into()),
        ..Default::default()
    };
    assert!(matches!(
        r.update(&id("p3"), &patch, now()).await,
        Err(DbError::UnknownCategory)
    ));
    assert_eq!(
        r.product(&id("p3")).await.unwrap(),
        before,
        "a failed update changes nothing"
    );
}

async fn delete_reports_existence(f: Fixture) {
    let r = &f.repo;
    assert!(r.delete(&id("p4")).await.unwrap());
    assert!(!r.delete(&id("p4")).await.unwrap());
    assert!(r.product(&id("p4")).await.unwrap().is_none());
    assert_eq!(r.page(0, 100).await.unwrap().total, 24);
}

async fn rename_shows_in_every_product_of_the_category(f: Fixture) {
    let r = &f.repo;
    let c = r
        .rename_category(&id("c1"), "Lamps")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((c.id.as_str(), c.name.as_str()), ("c1", "Lamps"));
    for p in ["p1", "p21"] {
        assert_eq!(
            r.product(&id(p)).await.unwrap().unwrap().category.name,
            "Lamps"
        );
    }
    assert_eq!(
        r.product(&id("p2")).await.unwrap().unwrap().category.name,
        "Category 2"
    );
    let page = r.page(0, 100).await.unwrap();
    assert!(
        page.products
            .iter()
            .filter(|p| p.category_id == "c1")
            .all(|p| p.category.name == "Lamps")
    );
}

async fn ping_answers(f: Fixture) {
    f.repo.ping().await.unwrap();
}

macro_rules! suite {
    ($backend:ident: $($test:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::$backend().await).await;
                }
            )*
        }
    };
}

macro_rules! both {
    ($($test:ident),* $(,)?) => {
        suite!(sqlite: $($test),*);
        suite!(postgres: $($test),*);
    };
}

both!(
    seeding_is_deterministic_and_happens_once,
    pages_split_and_end,
    page_ids_and_products_by_id,
    insert_returns_what_reads_return,
    insert_refuses_duplicates_and_unknown_categories,
    update_changes_only_what_is_given,
    update_refuses_unknown_categories,
    delete_reports_existence,
    rename_shows_in_every_product_of_the_category,
    ping_answers,
);

#[tokio::test]
async fn memory_sqlite_keeps_its_data_across_pool_use() {
    let repo = db::connect("sqlite::memory:", &Options::default())
        .await
        .unwrap();
    repo.migrate().await.unwrap();
    assert!(repo.seed(3).await.unwrap());
    for _ in 0..3 {
        assert_eq!(repo.page(0, 10).await.unwrap().total, 3);
    }
}

#[tokio::test]
async fn unsupported_urls_are_refused() {
    assert!(matches!(
        db::connect("mysql://x", &Options::default()).await,
        Err(DbError::UnsupportedUrl)
    ));
}

/// Migrates the empty database at `url` twice, then seeds it in three `INSERT`s.
async fn seed_in_batches(url: &str) {
    let repo = db::connect(url, &Options::default()).await.unwrap();
    repo.migrate().await.unwrap();
    repo.migrate().await.unwrap(); // idempotent
    assert!(repo.seed(2500).await.unwrap());
    let page = repo.page(0, 1).await.unwrap();
    assert_eq!((page.total, page.products[0].id.as_str()), (2500, "p2500"));
}

#[tokio::test]
async fn sqlite_seeds_a_thousand_in_one_go() {
    let dir = tempfile::tempdir().unwrap();
    seed_in_batches(&sqlite_url(&dir)).await;
}

#[tokio::test]
async fn postgres_seeds_a_thousand_in_one_go() {
    let pg = testkit::TestPostgres::new().await;
    seed_in_batches(&pg.url).await;
}

/// Four instances starting at once on the migrated, empty database at `url`: one seeds, the
/// others wait for it and then find the data. Without the seed lock, a seeder that looked
/// before the first one committed would fail on its first write instead.
async fn concurrent_seeds_write_once(url: &str) {
    let mut repos = Vec::new();
    for _ in 0..4 {
        repos.push(db::connect(url, &Options::default()).await.unwrap());
    }
    repos[0].migrate().await.unwrap();
    let seeded = futures::future::join_all(repos.iter().map(|r| r.seed(25))).await;
    let seeded: Vec<bool> = seeded.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        seeded.iter().filter(|s| **s).count(),
        1,
        "exactly one seeds: {seeded:?}"
    );
    for r in &repos {
        assert_eq!(r.page(0, 1).await.unwrap().total, 25);
    }
}

#[tokio::test]
async fn sqlite_concurrent_seeds_write_once() {
    let dir = tempfile::tempdir().unwrap();
    concurrent_seeds_write_once(&sqlite_url(&dir)).await;
}

#[tokio::test]
async fn postgres_concurrent_seeds_write_once() {
    let pg = testkit::TestPostgres::new().await;
    concurrent_seeds_write_once(&pg.url).await;
}

/// Whether `e` is an outage reported by the database itself with this code.
fn unavailable_with_code(e: &DbError, code: &str) -> bool {
    matches!(e, DbError::Unavailable(sqlx::Error::Database(d)) if d.code().as_deref() == Some(code))
}

#[tokio::test]
async fn sqlite_busy_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);
    let options = Options {
        timeout: Duration::from_millis(50),
        ..Options::default()
    };
    let repo = db::connect(&url, &options).await.unwrap();
    repo.migrate().await.unwrap();
    assert!(repo.seed(3).await.unwrap());
    let mut writer = sqlx::SqliteConnection::connect(&url).await.unwrap();
    writer.execute("BEGIN IMMEDIATE").await.unwrap();
    let e = repo.delete(&id("p1")).await.unwrap_err();
    assert!(unavailable_with_code(&e, "5"), "SQLITE_BUSY: {e:?}");
    writer.execute("ROLLBACK").await.unwrap();
    assert!(repo.delete(&id("p1")).await.unwrap());
}

#[tokio::test]
async fn postgres_terminated_connection_is_unavailable() {
    let pg = testkit::TestPostgres::new().await;
    let repo = db::connect(&pg.url, &Options::default()).await.unwrap();
    repo.migrate().await.unwrap();
    assert!(repo.seed(3).await.unwrap());
    let mut locker = sqlx::PgConnection::connect(&pg.url).await.unwrap();
    locker.execute("BEGIN").await.unwrap();
    locker
        .execute("SELECT id FROM products WHERE id = 'p1' FOR UPDATE")
        .await
        .unwrap();
    let blocked = {
        let repo = repo.clone();
        tokio::spawn(async move { repo.delete(&id("p1")).await })
    };
    // The delete waits on the row lock: end its backend as an administrator would.
    let mut admin = sqlx::PgConnection::connect(&pg.url).await.unwrap();
    let mut ended = 0_i64;
    for _ in 0..500 {
        ended = sqlx::query_scalar(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut admin)
        .await
        .unwrap();
        if ended > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ended, 1, "the delete waited on the lock");
    let e = blocked.await.unwrap().unwrap_err();
    assert!(unavailable_with_code(&e, "57P01"), "admin_shutdown: {e:?}");
    locker.execute("ROLLBACK").await.unwrap();
    assert!(repo.delete(&id("p1")).await.unwrap());
}

#[tokio::test]
async fn postgres_out_of_reach_is_unavailable() {
    let pg = testkit::TestPostgres::new().await;
    let proxy = testkit::TcpProxy::start("127.0.0.1:5432").await;
    let repo = db::connect(&pg.url_via(proxy.port), &Options::default())
        .await
        .unwrap();
    repo.migrate().await.unwrap();
    assert!(repo.seed(3).await.unwrap());
    // Connections closed, new ones closed as soon as they are accepted (in the middle of
    // the client's first exchange): an outage, not a bad statement.
    proxy.set_up(false);
    for _ in 0..3 {
        let e = repo.product(&id("p1")).await.unwrap_err();
        assert!(e.is_unavailable(), "{e:?}");
    }
    proxy.set_up(true);
    assert!(repo.product(&id("p1")).await.unwrap().is_some());
}

/// A server that reads the client's first message and hangs up (a FIN, nothing unread):
/// the client meets the end of the stream in the middle of its first exchange, which sqlx
/// reports as a protocol error.
#[tokio::test]
async fn postgres_hanging_up_at_connect_is_unavailable() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            // The SSLRequest: a length (8) and a code.
            let mut first = [0u8; 8];
            let _ = c.read_exact(&mut first).await;
        }
    });
    let url = format!("postgres://postgres@127.0.0.1:{port}/catalog");
    let e = db::connect(&url, &Options::default()).await.unwrap_err();
    assert!(
        matches!(e, DbError::Unavailable(sqlx::Error::Protocol(_))),
        "{e:?}"
    );
}

/// `url` with `sslmode=MODE` added to its query.
fn with_sslmode(url: &str, mode: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}sslmode={mode}")
}

#[tokio::test]
async fn postgres_sslmode_require_is_tls_or_a_clear_error() {
    let pg = testkit::TestPostgres::new().await;
    let mut plain = sqlx::PgConnection::connect(&pg.url).await.unwrap();
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&mut plain)
        .await
        .unwrap();
    let url = with_sslmode(&pg.url, "require");
    let connected = db::connect(&url, &Options::default()).await;
    if ssl == "on" {
        // The server speaks TLS: the service's connections are encrypted.
        let repo = connected.unwrap();
        repo.migrate().await.unwrap();
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        let encrypted: bool =
            sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert!(encrypted, "sslmode=require talks TLS");
    } else {
        let e = connected.expect_err("no TLS, no connection");
        assert!(
            e.to_string().to_lowercase().contains("tls") || e.to_string().contains("SSL"),
            "{e}"
        );
    }
    // A certificate no root vouches for (the local server's, self-signed) is refused with an
    // error, never a panic.
    let e = db::connect(&with_sslmode(&pg.url, "verify-full"), &Options::default())
        .await
        .expect_err("verify-full refuses an unknown certificate");
    assert!(!e.to_string().is_empty());
}
