//! SQLite (a database file, shared by any number of connections and processes): the schema,
//! its installation, and how the feed reads it.
//!
//! # What [`install`] creates
//! ```sql
//! CREATE TABLE IF NOT EXISTS aside_feed_outbox (
//!     id INTEGER PRIMARY KEY AUTOINCREMENT,
//!     at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0),
//!     tbl TEXT NOT NULL,
//!     op TEXT NOT NULL,
//!     old TEXT,
//!     new TEXT
//! );
//! CREATE TABLE IF NOT EXISTS aside_feed_position (
//!     feed TEXT PRIMARY KEY,
//!     position INTEGER NOT NULL,
//!     pruned_through INTEGER NOT NULL DEFAULT 0,
//!     updated_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
//! );
//! -- and on each table, for INSERT, UPDATE and DELETE:
//! CREATE TRIGGER "aside_feed_products_update" AFTER UPDATE ON "products" BEGIN
//!     INSERT INTO aside_feed_outbox (tbl, op, old, new) VALUES ('products', 'UPDATE',
//!         json_object('id', OLD."id", 'name', OLD."name"),
//!         json_object('id', NEW."id", 'name', NEW."name"));
//! END;
//! ```
//! SQLite triggers cannot say "the whole row", so the columns are named: [`install`] takes
//! them, [`install_all_columns`] reads them with `PRAGMA table_info` (install again after a
//! column is added). `BLOB` columns cannot go into `json_object`: leave them out.
//!
//! # Reading in commit order
//! SQLite lets one writer at a time hold the database, from its first write to its commit, so
//! `AUTOINCREMENT` ids are handed out in commit order: a row a reader cannot see yet gets an
//! id above every row it can. The position is the next id to read. A change is noticed by
//! asking `PRAGMA data_version` on a connection of the feed's own every
//! [`watch_interval`](crate::FeedConfig::watch_interval): it changes whenever another
//! connection, of this process or another, commits.

use crate::backend::{Cursor, Read, Row, change, secs};
use crate::config::{Error, FeedConfig};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{AssertSqlSafe, ConnectOptions, Executor, Row as _, SqliteConnection, SqlitePool};
use std::time::{Duration, Instant};
use tracing::debug;

/// The current time as Unix seconds, in SQL.
const NOW: &str = "((julianday('now') - 2440587.5) * 86400.0)";

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS aside_feed_outbox (\n\
         id INTEGER PRIMARY KEY AUTOINCREMENT,\n\
         at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0),\n\
         tbl TEXT NOT NULL,\n\
         op TEXT NOT NULL,\n\
         old TEXT,\n\
         new TEXT\n\
     )",
    "CREATE TABLE IF NOT EXISTS aside_feed_position (\n\
         feed TEXT PRIMARY KEY,\n\
         position INTEGER NOT NULL,\n\
         pruned_through INTEGER NOT NULL DEFAULT 0,\n\
         updated_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)\n\
     )",
];

/// The statements creating the outbox and the position table (`IF NOT EXISTS`).
pub fn schema_ddl() -> &'static [&'static str] {
    SCHEMA
}

fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The statements (re)creating the three triggers of `table` that record `columns`: for each
/// of `INSERT`, `UPDATE` and `DELETE`, a `DROP TRIGGER IF EXISTS` and a `CREATE TRIGGER`
/// named `aside_feed_<table>_<op>`.
///
/// ```
/// let ddl = aside_feed::sqlite::trigger_ddl("products", &["id", "name"]).unwrap();
/// assert!(ddl.iter().any(|s| s.contains("json_object('id', NEW.\"id\", 'name', NEW.\"name\")")));
/// ```
pub fn trigger_ddl(table: &str, columns: &[&str]) -> Result<Vec<String>, Error> {
    if table.is_empty() || table.contains('\0') {
        return Err(Error::InvalidTable(table.to_owned()));
    }
    if columns.is_empty() {
        return Err(Error::NoColumns(table.to_owned()));
    }
    if let Some(c) = columns.iter().find(|c| c.is_empty() || c.contains('\0')) {
        return Err(Error::InvalidColumn {
            table: table.to_owned(),
            column: (*c).to_owned(),
        });
    }
    let row = |which: &str| {
        let pairs = columns
            .iter()
            .map(|c| format!("{}, {which}.{}", literal(c), ident(c)))
            .collect::<Vec<_>>()
            .join(", ");
        format!("json_object({pairs})")
    };
    let t = ident(table);
    let name = literal(table);
    let mut out = Vec::with_capacity(6);
    for (op, old, new) in [
        ("INSERT", None, Some(row("NEW"))),
        ("UPDATE", Some(row("OLD")), Some(row("NEW"))),
        ("DELETE", Some(row("OLD")), None),
    ] {
        let trigger = ident(&format!("aside_feed_{table}_{}", op.to_lowercase()));
        let old = old.unwrap_or_else(|| "NULL".to_owned());
        let new = new.unwrap_or_else(|| "NULL".to_owned());
        out.push(format!("DROP TRIGGER IF EXISTS {trigger}"));
        out.push(format!(
            "CREATE TRIGGER {trigger} AFTER {op} ON {t} BEGIN \
             INSERT INTO aside_feed_outbox (tbl, op, old, new) VALUES ({name}, '{op}', {old}, {new}); \
             END"
        ));
    }
    Ok(out)
}

/// Creates the outbox and the position table if missing and (re)creates the triggers of each
/// `(table, columns)`, in one `BEGIN IMMEDIATE` transaction.
///
/// ```no_run
/// # async fn f(pool: sqlx::SqlitePool) -> Result<(), aside_feed::Error> {
/// aside_feed::sqlite::install(&pool, &[
///     ("products", &["id", "category_id"]),
///     ("categories", &["id"]),
/// ]).await?;
/// # Ok(()) }
/// ```
pub async fn install(pool: &SqlitePool, tables: &[(&str, &[&str])]) -> Result<(), Error> {
    let mut ddl = Vec::new();
    for (table, columns) in tables {
        ddl.extend(trigger_ddl(table, columns)?);
    }
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    for s in SCHEMA {
        tx.execute(*s).await?;
    }
    for s in ddl {
        tx.execute(AssertSqlSafe(s)).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// As [`install`], with every column of each table, as `PRAGMA table_info` lists them.
pub async fn install_all_columns(pool: &SqlitePool, tables: &[&str]) -> Result<(), Error> {
    let mut columns: Vec<(&str, Vec<String>)> = Vec::with_capacity(tables.len());
    for table in tables {
        let names: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info(?1)")
            .bind(*table)
            .fetch_all(pool)
            .await?;
        if names.is_empty() {
            return Err(Error::NoColumns((*table).to_owned()));
        }
        columns.push((table, names));
    }
    let borrowed: Vec<Vec<&str>> = columns
        .iter()
        .map(|(_, c)| c.iter().map(String::as_str).collect())
        .collect();
    let tables: Vec<(&str, &[&str])> = columns
        .iter()
        .zip(&borrowed)
        .map(|((t, _), c)| (*t, c.as_slice()))
        .collect();
    install(pool, &tables).await
}

const READ: &str = "\
SELECT (SELECT seq FROM sqlite_sequence WHERE name = 'aside_feed_outbox') AS head,
    (SELECT position FROM aside_feed_position WHERE feed = ?1) AS stored,
    (SELECT pruned_through FROM aside_feed_position WHERE feed = ?1) AS pruned,
    o.id, o.tbl, o.op, o.old, o.new,
    ((julianday('now') - 2440587.5) * 86400.0) - o.at AS age
FROM (SELECT 1) AS one LEFT JOIN (
    SELECT id, tbl, op, old, new, at FROM aside_feed_outbox WHERE id >= ?2 ORDER BY id LIMIT ?3
) AS o
ORDER BY o.id";

pub(crate) struct SqliteBackend {
    pool: SqlitePool,
    options: SqliteConnectOptions,
    timeout: Duration,
    interval: Duration,
    watch: Option<SqliteConnection>,
    version: Option<i64>,
}

impl SqliteBackend {
    pub(crate) fn new(pool: SqlitePool, config: &FeedConfig) -> Self {
        let options = (*pool.connect_options()).clone();
        Self {
            pool,
            options,
            timeout: config.timeout,
            interval: config.watch_interval,
            watch: None,
            version: None,
        }
    }

    pub(crate) async fn read(
        &mut self,
        feed: &str,
        from: Cursor,
        limit: usize,
    ) -> Result<Read, sqlx::Error> {
        let rows = sqlx::query(READ)
            .bind(feed)
            .bind(from.major)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        let mut read = Read {
            head: 1,
            stored: None,
            pruned_through: 0,
            rows: Vec::with_capacity(rows.len()),
            after: from,
            full: false,
            committed_above: Vec::new(),
        };
        for (i, r) in rows.iter().enumerate() {
            if i == 0 {
                read.head = r.try_get::<Option<i64>, _>("head")?.unwrap_or(0) + 1;
                read.stored = r.try_get("stored")?;
                read.pruned_through = r.try_get::<Option<i64>, _>("pruned")?.unwrap_or(0);
            }
            let Some(id) = r.try_get::<Option<i64>, _>("id")? else {
                continue;
            };
            let table: String = r.try_get("tbl")?;
            let op: String = r.try_get("op")?;
            let json =
                |col: &str| -> Result<Result<Option<serde_json::Value>, String>, sqlx::Error> {
                    Ok(match r.try_get::<Option<String>, _>(col)? {
                        None => Ok(None),
                        Some(s) => serde_json::from_str(&s)
                            .map(Some)
                            .map_err(|e| format!("{col} is not JSON: {e}")),
                    })
                };
            let old = json("old")?;
            let new = json("new")?;
            let change = match (old, new) {
                (Ok(old), Ok(new)) => change(table, &op, old, new),
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
            read.rows.push(Row {
                id,
                change,
                age: r.try_get::<Option<f64>, _>("age")?.unwrap_or(0.0),
            });
        }
        read.full = limit > 0 && read.rows.len() >= limit;
        read.after = match read.rows.last() {
            Some(last) if read.full => Cursor::at(last.id + 1),
            _ => Cursor::at(read.head),
        };
        Ok(read)
    }

    pub(crate) async fn advance(&mut self, feed: &str, position: i64) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(
            "INSERT INTO aside_feed_position (feed, position) VALUES (?1, ?2) \
             ON CONFLICT (feed) DO UPDATE SET position = excluded.position, \
             updated_at = ((julianday('now') - 2440587.5) * 86400.0) \
             WHERE aside_feed_position.position < excluded.position",
        )
        .bind(feed)
        .bind(position)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    pub(crate) async fn reset(&mut self, feed: &str, position: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO aside_feed_position (feed, position) VALUES (?1, ?2) \
             ON CONFLICT (feed) DO UPDATE SET position = excluded.position, pruned_through = 0, \
             updated_at = ((julianday('now') - 2440587.5) * 86400.0)",
        )
        .bind(feed)
        .bind(position)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(crate) async fn prune(
        &mut self,
        feed: &str,
        retention: Duration,
        abandon_after: Duration,
        limit: usize,
    ) -> Result<u64, sqlx::Error> {
        // The rows go and the mark rises in one transaction, and a read is one statement:
        // a reader sees both or neither.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let gone: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(format!(
            "DELETE FROM aside_feed_outbox WHERE id IN (\
                 SELECT id FROM aside_feed_outbox \
                 WHERE id < (SELECT min(position) FROM aside_feed_position \
                             WHERE feed = ?1 OR updated_at > {NOW} - ?2) \
                 AND at < {NOW} - ?3 ORDER BY id LIMIT ?4) \
             RETURNING id"
        )))
        .bind(feed)
        .bind(secs(abandon_after))
        .bind(secs(retention))
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await?;
        if let Some(mark) = gone.iter().max() {
            sqlx::query("UPDATE aside_feed_position SET pruned_through = max(pruned_through, ?1)")
                .bind(mark)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(gone.len() as u64)
    }

    pub(crate) async fn count_from(&mut self, from: Cursor, cap: u64) -> Result<u64, sqlx::Error> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT 1 FROM aside_feed_outbox WHERE id >= ?1 LIMIT ?2)",
        )
        .bind(from.major)
        .bind(cap.min(i64::MAX as u64) as i64)
        .fetch_one(&self.pool)
        .await?;
        Ok(n.max(0) as u64)
    }

    /// Asks `PRAGMA data_version` until it changes or `until` comes. A (re)opened watching
    /// connection returns at once: what was committed before it looked is read now.
    pub(crate) async fn wait(&mut self, until: Instant) {
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(self.interval.min(left)).await;
            match tokio::time::timeout(self.timeout, self.data_version()).await {
                Ok(Ok(v)) => {
                    if self.version.replace(v) != Some(v) {
                        return;
                    }
                }
                Ok(Err(e)) => {
                    debug!(error = %e, "aside-feed cannot ask SQLite's data_version");
                    self.drop_watch();
                }
                Err(_) => self.drop_watch(),
            }
        }
    }

    fn drop_watch(&mut self) {
        self.watch = None;
        self.version = None;
    }

    async fn data_version(&mut self) -> Result<i64, sqlx::Error> {
        let conn = match &mut self.watch {
            Some(c) => c,
            None => {
                let c = self.options.connect().await?;
                self.watch.insert(c)
            }
        };
        let v: i64 = sqlx::query_scalar("PRAGMA data_version")
            .fetch_one(&mut *conn)
            .await?;
        Ok(v)
    }
}
