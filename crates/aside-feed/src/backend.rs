//! What the feed asks of a database, and the dispatch to the one it runs on.

use crate::change::Change;
use std::time::{Duration, Instant};

/// Where the next read of the outbox starts: every row at or after it is unread.
///
/// PostgreSQL: `(txid, id)`, rows ordered by transaction id then row id; `major` alone is the
/// durable form (a restart re-reads the rest of a transaction cut by a batch, never less).
/// SQLite: `(next row id, 0)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Cursor {
    pub(crate) major: i64,
    pub(crate) minor: i64,
}

impl Cursor {
    pub(crate) fn at(major: i64) -> Self {
        Self { major, minor: 0 }
    }
}

/// One outbox row.
#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) id: i64,
    /// The change, or why the row could not be read as one.
    pub(crate) change: Result<Change, String>,
    /// Seconds since the change was made, by the database's clock.
    pub(crate) age: f64,
}

/// One consistent read: rows and marks from one snapshot.
#[derive(Debug)]
pub(crate) struct Read {
    /// Where a feed that starts (or resyncs) now begins: no row below it can appear later.
    pub(crate) head: i64,
    /// The feed's durable position, if it has one.
    pub(crate) stored: Option<i64>,
    /// Rows at or below this were pruned (0: none).
    pub(crate) pruned_through: i64,
    /// Up to the limit, in order, from the cursor on. Each is applied by the caller (or
    /// covered by a resync): the backend counts them as read.
    pub(crate) rows: Vec<Row>,
    /// Where the cursor goes once these rows are applied.
    pub(crate) after: Cursor,
    /// Whether the limit cut the read: more may be waiting.
    pub(crate) full: bool,
    /// From [`Backend::state`] (PostgreSQL): each transaction committed above the head, with
    /// the row id after its last row.
    pub(crate) committed_above: Vec<(i64, i64)>,
}

pub(crate) enum Backend {
    #[cfg(feature = "postgres")]
    Postgres(crate::postgres::PgBackend),
    #[cfg(feature = "sqlite")]
    // Boxed: its connection options are large, and the engine moves the backend once.
    Sqlite(Box<crate::sqlite::SqliteBackend>),
}

impl Backend {
    pub(crate) async fn read(
        &mut self,
        feed: &str,
        from: Cursor,
        limit: usize,
    ) -> Result<Read, sqlx::Error> {
        match self {
            #[cfg(feature = "postgres")]
            Backend::Postgres(b) => b.read(feed, from, limit).await,
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(b) => b.read(feed, from, limit).await,
        }
    }

    /// The head and the feed's position, without rows, as a starting feed needs them.
    pub(crate) async fn state(&mut self, feed: &str) -> Result<Read, sqlx::Error> {
        match self {
            #[cfg(feature = "postgres")]
            Backend::Postgres(b) => b.state(feed).await,
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(b) => b.read(feed, Cursor::at(0), 0).await,
        }
    }

    /// The feed begins at the head of a [`state`](Backend::state): what was committed above
    /// it then is older than the start, and not to be applied.
    pub(crate) fn begin_at_head(&mut self, committed_above: Vec<(i64, i64)>) {
        match self {
            #[cfg(feature = "postgres")]
            Backend::Postgres(b) => b.begin_at_head(committed_above),
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(_) => drop(committed_above),
        }
    }

    /// Raises the durable position to `position` (never lowers it); whether it moved.
    pub(crate) async fn advance(&mut self, feed: &str, position: i64) -> Result<bool, sqlx::Error> {
        match self {
            #[cfg(feature = "postgres")]
            Backend::Postgres(b) => b.advance(feed, position).await,
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(b) => b.advance(feed, position).await,
        }
    }

    /// Sets the durable position, lower or not, and forgets the pruned mark.
    pub(crate) async fn reset(&mut self, feed: &str, position: i64) -> Result<(), sqlx::Error> {
        match self {
            #[cfg(feature = "postgres")]
            Backend::Postgres(b) => b.reset(feed, position).await,
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(b) => b.reset(feed, position).await,
        }
    }

    /// Deletes applied rows older than `retention`; how many.
    pub(crate) async fn prune(
        &mut self,
        feed: &str,
        retention: Duration,
        abandon_after: Duration,
        limit: usize,
    ) -> Result<u64, sqlx::Error> {
        match self {
            #[cfg(feature = "postgres")]
            Backend::Postgres(b) => b.prune(feed, retention, abandon_after, limit).await,
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(b) => b.prune(feed, retention, abandon_after, limit).await,
        }
    }

    /// Rows from `from` on that can be read now, counted up to `cap`.
    pub(crate) async fn count_from(&mut self, from: Cursor, cap: u64) -> Result<u64, sqlx::Error> {
        match self {
            #[cfg(feature = "postgres")]
            Backend::Postgres(b) => b.count_from(from, cap).await,
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(b) => b.count_from(from, cap).await,
        }
    }

    /// Whether rows beyond the cursor were already applied (PostgreSQL: committed above the
    /// horizon), so the durable position has something to catch up with.
    pub(crate) fn ahead(&self) -> bool {
        match self {
            #[cfg(feature = "postgres")]
            Backend::Postgres(b) => b.ahead(),
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(_) => false,
        }
    }

    /// Returns when the database may have something new, or at `until`.
    pub(crate) async fn wait(&mut self, until: Instant) {
        match self {
            #[cfg(feature = "postgres")]
            Backend::Postgres(b) => b.wait(until).await,
            #[cfg(feature = "sqlite")]
            Backend::Sqlite(b) => b.wait(until).await,
        }
    }
}

/// `duration` in seconds, for SQL.
pub(crate) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A change from the columns of an outbox row.
pub(crate) fn change(
    table: String,
    op: &str,
    old: Option<serde_json::Value>,
    new: Option<serde_json::Value>,
) -> Result<Change, String> {
    let op = crate::change::Op::parse(op).ok_or_else(|| format!("unknown operation {op:?}"))?;
    Ok(Change::new(table, op, old, new))
}
