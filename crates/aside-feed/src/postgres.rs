//! PostgreSQL (13 or later, any `wal_level`): the schema, its installation, and how the feed
//! reads it.
//!
//! # What [`install`] creates
//! ```sql
//! CREATE TABLE IF NOT EXISTS aside_feed_outbox (
//!     id bigserial NOT NULL,
//!     txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
//!     at timestamptz NOT NULL DEFAULT clock_timestamp(),
//!     tbl text NOT NULL,
//!     op text NOT NULL,
//!     old jsonb,
//!     new jsonb,
//!     PRIMARY KEY (txid, id)
//! );
//! CREATE TABLE IF NOT EXISTS aside_feed_position (
//!     feed text PRIMARY KEY,
//!     position bigint NOT NULL,
//!     pruned_through bigint NOT NULL DEFAULT 0,
//!     updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
//! );
//! -- aside_feed_capture(): one outbox row per changed row, to_jsonb(OLD) / to_jsonb(NEW)
//! -- aside_feed_notify(): pg_notify('aside_feed', '') once per statement
//! -- and on each table:
//! CREATE TRIGGER aside_feed_capture AFTER INSERT OR UPDATE OR DELETE ON t
//!     FOR EACH ROW EXECUTE FUNCTION aside_feed_capture();
//! CREATE TRIGGER aside_feed_truncate AFTER TRUNCATE ON t
//!     FOR EACH STATEMENT EXECUTE FUNCTION aside_feed_capture();
//! -- only with Wakeup::Notify:
//! CREATE TRIGGER aside_feed_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON t
//!     FOR EACH STATEMENT EXECUTE FUNCTION aside_feed_notify();
//! ```
//! [`schema_ddl`] and [`trigger_ddl`] give the exact statements, for a migration tool.
//!
//! # Waking the feed
//! By default ([`Wakeup::Poll`]) the feed reads the outbox every
//! [`poll_interval`](crate::FeedConfig::poll_interval) (50 ms): one index range scan that
//! finds nothing most of the time. [`Wakeup::Notify`] adds a statement trigger calling
//! `pg_notify`, so a change wakes the feed within milliseconds; but PostgreSQL serializes the
//! commits of every transaction that notified (they take one lock on the notification queue
//! in turn), which caps the write throughput of the watched tables: choose it only where
//! they are written rarely.
//!
//! # Reading in commit-safe order
//! Row ids and transaction ids are both assigned before commit, so neither is in commit
//! order: a transaction that began first may commit last. Each read is one statement, hence
//! one snapshot, and takes `xmin = pg_snapshot_xmin(pg_current_snapshot())` from that very
//! snapshot: every transaction below `xmin` has finished, and a transaction that has not yet
//! been given an id gets one at or above every `xmin` already seen. So the rows with
//! `txid < xmin` are final: the read sees every committed one, and no later read can find
//! another. The feed reads from its cursor on, ordered by `(txid, id)`, and moves its cursor
//! to `xmin`: nothing skipped, nothing read twice. The cursor is also the durable position.
//!
//! `xmin` is the server's, not the database's: one transaction that wrote something and is
//! still open, in any database of the server, holds it back. So that such a transaction does
//! not delay every change, the same read also returns the rows *above* `xmin` that the
//! snapshot sees: those transactions have committed, and all their rows are visible at once.
//! They are applied right away and remembered (per transaction, up to which row id) until
//! `xmin` passes them, so they are not applied a second time; only the durable position
//! waits for `xmin`. After a restart they may be applied once more, which is harmless.
//! Up to 10 000 such transactions are remembered; past that the feed waits for `xmin`.

use crate::backend::{Cursor, Read, Row, change, secs};
use crate::config::{Error, FeedConfig};
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{AssertSqlSafe, Executor, PgPool, Row as _};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::debug;

/// The `LISTEN` channel the triggers notify.
pub const CHANNEL: &str = "aside_feed";

/// Serializes concurrent installs (several instances starting at once).
const INSTALL_LOCK: i64 = 0x6173_6964_6566_6565;

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS aside_feed_outbox (\n\
         id bigserial NOT NULL,\n\
         txid xid8 NOT NULL DEFAULT pg_current_xact_id(),\n\
         at timestamptz NOT NULL DEFAULT clock_timestamp(),\n\
         tbl text NOT NULL,\n\
         op text NOT NULL,\n\
         old jsonb,\n\
         new jsonb,\n\
         PRIMARY KEY (txid, id)\n\
     )",
    "CREATE TABLE IF NOT EXISTS aside_feed_position (\n\
         feed text PRIMARY KEY,\n\
         position bigint NOT NULL,\n\
         pruned_through bigint NOT NULL DEFAULT 0,\n\
         updated_at timestamptz NOT NULL DEFAULT clock_timestamp()\n\
     )",
    "CREATE OR REPLACE FUNCTION aside_feed_capture() RETURNS trigger LANGUAGE plpgsql AS $aside$\n\
     BEGIN\n\
         INSERT INTO aside_feed_outbox (tbl, op, old, new) VALUES (\n\
             TG_TABLE_NAME, TG_OP,\n\
             CASE WHEN TG_OP IN ('UPDATE', 'DELETE') THEN to_jsonb(OLD) END,\n\
             CASE WHEN TG_OP IN ('INSERT', 'UPDATE') THEN to_jsonb(NEW) END);\n\
         RETURN NULL;\n\
     END\n\
     $aside$",
    "CREATE OR REPLACE FUNCTION aside_feed_notify() RETURNS trigger LANGUAGE plpgsql AS $aside$\n\
     BEGIN\n\
         PERFORM pg_notify('aside_feed', '');\n\
         RETURN NULL;\n\
     END\n\
     $aside$",
];

/// The statements creating the outbox, the position table and the trigger functions
/// (idempotent: `IF NOT EXISTS`, `CREATE OR REPLACE`).
pub fn schema_ddl() -> &'static [&'static str] {
    SCHEMA
}

/// How a change wakes the feed (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wakeup {
    /// The feed reads every [`poll_interval`](crate::FeedConfig::poll_interval); writers pay
    /// nothing more than their outbox rows.
    Poll,
    /// A `pg_notify` per statement wakes the feed at once, at the price of serialized commits
    /// on the watched tables.
    Notify,
}

/// The triggers of one table (`name` or `schema.name`, exact case), named
/// `aside_feed_capture`, `aside_feed_truncate` and, with [`Wakeup::Notify`],
/// `aside_feed_notify`.
pub fn trigger_ddl(table: &str, wakeup: Wakeup) -> Result<Vec<String>, Error> {
    let t = quote_table(table)?;
    Ok(triggers(&t)
        .into_iter()
        .filter(|(name, _)| wakeup == Wakeup::Notify || *name != NOTIFY_TRIGGER)
        .map(|(_, ddl)| ddl)
        .collect())
}

/// The name of the trigger of [`Wakeup::Notify`].
const NOTIFY_TRIGGER: &str = "aside_feed_notify";

fn triggers(t: &str) -> [(&'static str, String); 3] {
    [
        (
            "aside_feed_capture",
            format!(
                "CREATE TRIGGER aside_feed_capture AFTER INSERT OR UPDATE OR DELETE ON {t} \
                 FOR EACH ROW EXECUTE FUNCTION aside_feed_capture()"
            ),
        ),
        (
            "aside_feed_truncate",
            format!(
                "CREATE TRIGGER aside_feed_truncate AFTER TRUNCATE ON {t} \
                 FOR EACH STATEMENT EXECUTE FUNCTION aside_feed_capture()"
            ),
        ),
        (
            "aside_feed_notify",
            format!(
                "CREATE TRIGGER aside_feed_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE \
                 ON {t} FOR EACH STATEMENT EXECUTE FUNCTION aside_feed_notify()"
            ),
        ),
    ]
}

/// `name` or `schema.name`, each part double-quoted (so taken with its exact case).
fn quote_table(table: &str) -> Result<String, Error> {
    let parts: Vec<&str> = table.split('.').collect();
    if parts.len() > 2 || parts.iter().any(|p| p.is_empty() || p.contains('\0')) {
        return Err(Error::InvalidTable(table.to_owned()));
    }
    Ok(parts
        .iter()
        .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join("."))
}

/// Creates the outbox, the position table, the trigger functions and the triggers of
/// `tables`, all that is missing, in one transaction (concurrent calls wait for each other),
/// with the feed woken by polling ([`Wakeup::Poll`]; a `NOTIFY` trigger left by
/// [`install_with`] is dropped). Triggers already there are left alone, so a restart takes no
/// lock on the tables.
///
/// ```no_run
/// # async fn f(pool: sqlx::PgPool) -> Result<(), aside_feed::Error> {
/// aside_feed::postgres::install(&pool, &["products", "categories"]).await?;
/// # Ok(()) }
/// ```
pub async fn install(pool: &PgPool, tables: &[&str]) -> Result<(), Error> {
    install_with(pool, tables, Wakeup::Poll).await
}

/// As [`install`], choosing how changes wake the feed.
pub async fn install_with(pool: &PgPool, tables: &[&str], wakeup: Wakeup) -> Result<(), Error> {
    let quoted = tables
        .iter()
        .map(|t| quote_table(t))
        .collect::<Result<Vec<_>, _>>()?;
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(INSTALL_LOCK)
        .execute(&mut *tx)
        .await?;
    for ddl in SCHEMA {
        tx.execute(*ddl).await?;
    }
    for t in &quoted {
        let present: Vec<String> = sqlx::query_scalar(
            "SELECT tgname::text FROM pg_trigger WHERE tgrelid = $1::regclass \
             AND tgname IN ('aside_feed_capture', 'aside_feed_truncate', 'aside_feed_notify')",
        )
        .bind(t)
        .fetch_all(&mut *tx)
        .await?;
        for (name, ddl) in triggers(t) {
            let wanted = wakeup == Wakeup::Notify || name != NOTIFY_TRIGGER;
            let there = present.iter().any(|p| p == name);
            if wanted && !there {
                tx.execute(AssertSqlSafe(ddl)).await?;
            } else if !wanted && there {
                tx.execute(AssertSqlSafe(format!("DROP TRIGGER {name} ON {t}")))
                    .await?;
            }
        }
    }
    tx.commit().await?;
    Ok(())
}

// Rows from the cursor on: below the horizon in order, and also the committed ones above it
// (a transaction still open holds the horizon back, in any database of the server), less
// those already applied ($5/$6: per transaction above the cursor, the next row id unread).
const READ: &str = "\
WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin),
done AS (SELECT * FROM unnest($5::int8[], $6::int8[]) AS d(txid, next))
SELECT h.xmin::text::int8 AS head,
    (SELECT position FROM aside_feed_position WHERE feed = $1) AS stored,
    (SELECT pruned_through FROM aside_feed_position WHERE feed = $1) AS pruned,
    o.txid::text::int8 AS txid, o.id, o.tbl, o.op, o.old, o.new,
    EXTRACT(EPOCH FROM clock_timestamp() - o.at)::float8 AS age
FROM h LEFT JOIN LATERAL (
    SELECT b.txid, b.id, b.tbl, b.op, b.old, b.new, b.at FROM aside_feed_outbox b
    WHERE (b.txid, b.id) >= ($2::int8::text::xid8, $3)
        AND (b.txid < h.xmin OR $7)
        AND NOT EXISTS (
            SELECT 1 FROM done WHERE done.txid = b.txid::text::int8 AND b.id < done.next)
    ORDER BY b.txid, b.id LIMIT $4
) o ON true
ORDER BY o.txid, o.id";

// What a feed starting now needs, from one snapshot: the head, its position, and the
// transactions committed above the head (older than this start, so not replayed by a feed
// that begins at the head), each with the row id after its last.
const START: &str = "\
WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin),
v AS (
    SELECT b.txid::text::int8 AS txid, max(b.id) + 1 AS next FROM aside_feed_outbox b, h
    WHERE b.txid >= h.xmin GROUP BY b.txid
)
SELECT h.xmin::text::int8 AS head,
    (SELECT position FROM aside_feed_position WHERE feed = $1) AS stored,
    (SELECT pruned_through FROM aside_feed_position WHERE feed = $1) AS pruned,
    ARRAY(SELECT txid FROM v ORDER BY txid) AS txids,
    ARRAY(SELECT next FROM v ORDER BY txid) AS nexts
FROM h";

/// Most transactions applied above the horizon that are remembered; past it the feed waits
/// for the horizon instead (and reads stay cheap while a transaction is open very long).
const AHEAD_MAX: usize = 10_000;

const ADVANCE: &str = "\
INSERT INTO aside_feed_position (feed, position) VALUES ($1, $2)
ON CONFLICT (feed) DO UPDATE SET position = EXCLUDED.position, updated_at = clock_timestamp()
WHERE aside_feed_position.position < EXCLUDED.position";

const RESET: &str = "\
INSERT INTO aside_feed_position (feed, position) VALUES ($1, $2)
ON CONFLICT (feed) DO UPDATE SET position = EXCLUDED.position, pruned_through = 0,
    updated_at = clock_timestamp()";

// One statement: the rows go and the mark rises together, so a reader's snapshot sees both
// or neither.
const PRUNE: &str = "\
WITH bound AS (
    SELECT min(position) AS p FROM aside_feed_position
    WHERE feed = $1 OR updated_at > clock_timestamp() - make_interval(secs => $2)
), gone AS (
    DELETE FROM aside_feed_outbox o USING (
        SELECT b.txid, b.id FROM aside_feed_outbox b, bound
        WHERE b.txid < bound.p::text::xid8
            AND b.at < clock_timestamp() - make_interval(secs => $3)
        ORDER BY b.txid, b.id LIMIT $4
    ) d
    WHERE o.txid = d.txid AND o.id = d.id
    RETURNING o.txid
), mark AS (
    SELECT max(txid::text::int8) AS t, count(*) AS n FROM gone
), raised AS (
    UPDATE aside_feed_position SET pruned_through = GREATEST(pruned_through, mark.t)
    FROM mark WHERE mark.t IS NOT NULL
)
SELECT n FROM mark";

const COUNT: &str = "\
SELECT count(*) FROM (
    SELECT 1 FROM aside_feed_outbox
    WHERE (txid, id) >= ($1::int8::text::xid8, $2)
        AND txid < pg_snapshot_xmin(pg_current_snapshot())
    LIMIT $3
) c";

pub(crate) struct PgBackend {
    pool: PgPool,
    /// Transactions at or above the cursor whose rows were applied ahead of the horizon: the
    /// next row id of each not yet applied.
    ahead: BTreeMap<i64, i64>,
    wake: Arc<Notify>,
    listener: JoinHandle<()>,
}

impl Drop for PgBackend {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PgBackend {
    pub(crate) fn new(pool: PgPool, config: &FeedConfig, rt: &tokio::runtime::Handle) -> Self {
        let wake = Arc::new(Notify::new());
        // A pool of one for the listener, so that it holds none of the service's connections.
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(config.timeout)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with((*pool.connect_options()).clone());
        let listener = rt.spawn(listen(listen_pool, wake.clone(), config.poll_interval));
        Self {
            pool,
            ahead: BTreeMap::new(),
            wake,
            listener,
        }
    }

    pub(crate) async fn read(
        &mut self,
        feed: &str,
        from: Cursor,
        limit: usize,
    ) -> Result<Read, sqlx::Error> {
        // The cursor never goes back: what is below it is not read again.
        self.ahead = self.ahead.split_off(&from.major);
        let (done_txids, done_next): (Vec<i64>, Vec<i64>) =
            self.ahead.iter().map(|(t, n)| (*t, *n)).unzip();
        let rows = sqlx::query(READ)
            .bind(feed)
            .bind(from.major)
            .bind(from.minor)
            .bind(limit as i64)
            .bind(&done_txids)
            .bind(&done_next)
            .bind(self.ahead.len() < AHEAD_MAX)
            .fetch_all(&self.pool)
            .await?;
        let mut read = Read {
            head: 0,
            stored: None,
            pruned_through: 0,
            rows: Vec::with_capacity(rows.len()),
            after: from,
            full: false,
            committed_above: Vec::new(),
        };
        let mut last_below: Option<Cursor> = None;
        let mut ahead: Vec<(i64, i64)> = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            if i == 0 {
                read.head = r.try_get("head")?;
                read.stored = r.try_get("stored")?;
                read.pruned_through = r.try_get::<Option<i64>, _>("pruned")?.unwrap_or(0);
            }
            let Some(txid) = r.try_get::<Option<i64>, _>("txid")? else {
                continue;
            };
            let id: i64 = r.try_get("id")?;
            let table: String = r.try_get("tbl")?;
            let op: String = r.try_get("op")?;
            read.rows.push(Row {
                id,
                change: change(table, &op, r.try_get("old")?, r.try_get("new")?),
                age: r.try_get::<Option<f64>, _>("age")?.unwrap_or(0.0),
            });
            let next = Cursor {
                major: txid,
                minor: id + 1,
            };
            if txid < read.head {
                last_below = Some(next);
            } else {
                ahead.push((txid, id + 1));
            }
        }
        read.full = limit > 0 && read.rows.len() >= limit;
        read.after = match last_below {
            // Ordered by transaction: a cut below the horizon leaves nothing read above it.
            Some(c) if read.full && ahead.is_empty() => c,
            _ => Cursor::at(read.head),
        };
        for (txid, next) in ahead {
            let e = self.ahead.entry(txid).or_insert(next);
            *e = (*e).max(next);
        }
        Ok(read)
    }

    pub(crate) async fn state(&mut self, feed: &str) -> Result<Read, sqlx::Error> {
        let r = sqlx::query(START).bind(feed).fetch_one(&self.pool).await?;
        let txids: Vec<i64> = r.try_get("txids")?;
        let nexts: Vec<i64> = r.try_get("nexts")?;
        let head = r.try_get("head")?;
        Ok(Read {
            head,
            stored: r.try_get("stored")?,
            pruned_through: r.try_get::<Option<i64>, _>("pruned")?.unwrap_or(0),
            rows: Vec::new(),
            after: Cursor::at(head),
            full: false,
            committed_above: txids.into_iter().zip(nexts).collect(),
        })
    }

    /// Counts what was committed above the head at start as applied: a feed that begins at
    /// the head replays nothing older than its start.
    pub(crate) fn begin_at_head(&mut self, committed_above: Vec<(i64, i64)>) {
        for (txid, next) in committed_above {
            let e = self.ahead.entry(txid).or_insert(next);
            *e = (*e).max(next);
        }
    }

    pub(crate) fn ahead(&self) -> bool {
        !self.ahead.is_empty()
    }

    pub(crate) async fn advance(&mut self, feed: &str, position: i64) -> Result<bool, sqlx::Error> {
        let r = sqlx::query(ADVANCE)
            .bind(feed)
            .bind(position)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    }

    pub(crate) async fn reset(&mut self, feed: &str, position: i64) -> Result<(), sqlx::Error> {
        sqlx::query(RESET)
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
        let n: i64 = sqlx::query_scalar(PRUNE)
            .bind(feed)
            .bind(secs(abandon_after))
            .bind(secs(retention))
            .bind(limit as i64)
            .fetch_one(&self.pool)
            .await?;
        Ok(n.max(0) as u64)
    }

    pub(crate) async fn count_from(&mut self, from: Cursor, cap: u64) -> Result<u64, sqlx::Error> {
        let n: i64 = sqlx::query_scalar(COUNT)
            .bind(from.major)
            .bind(from.minor)
            .bind(cap.min(i64::MAX as u64) as i64)
            .fetch_one(&self.pool)
            .await?;
        Ok(n.max(0) as u64)
    }

    pub(crate) async fn wait(&mut self, until: Instant) {
        let _ = tokio::time::timeout_at(until.into(), self.wake.notified()).await;
    }
}

/// Holds `LISTEN aside_feed` and wakes the feed on each notification, and whenever it
/// (re)connects: notifications sent while it was not listening are lost, so the feed reads.
async fn listen(pool: PgPool, wake: Arc<Notify>, retry: Duration) {
    loop {
        match PgListener::connect_with(&pool).await {
            Ok(mut listener) => match listener.listen(CHANNEL).await {
                Ok(()) => {
                    wake.notify_one();
                    loop {
                        match listener.try_recv().await {
                            Ok(Some(_)) => wake.notify_one(),
                            // The connection was lost and made anew: read in case.
                            Ok(None) => wake.notify_one(),
                            Err(e) => {
                                debug!(error = %e, "aside-feed listener lost its connection");
                                break;
                            }
                        }
                    }
                }
                Err(e) => debug!(error = %e, "aside-feed listener cannot LISTEN"),
            },
            Err(e) => debug!(error = %e, "aside-feed listener cannot connect"),
        }
        tokio::time::sleep(retry).await;
    }
}
