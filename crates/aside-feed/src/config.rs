//! Settings of a feed, and its errors.

use std::time::Duration;

/// What can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database refused or failed a statement, or could not be reached.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// The database did not answer within [`FeedConfig::timeout`].
    #[error("the database did not answer within {0:?}")]
    Timeout(Duration),
    /// A table name that cannot be used (empty, a NUL byte, more than one `.`).
    #[error("invalid table name {0:?}")]
    InvalidTable(String),
    /// A column name that cannot be used (empty or a NUL byte).
    #[error("invalid column name {column:?} of table {table:?}")]
    InvalidColumn {
        /// The table.
        table: String,
        /// The column.
        column: String,
    },
    /// A table without columns: given none, or it does not exist.
    #[error("table {0:?} has no columns (does it exist?)")]
    NoColumns(String),
    /// A setting out of range.
    #[error("invalid feed setting {name}: {reason}")]
    Config {
        /// The setting.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A feed was started outside a Tokio runtime.
    #[error("a feed must be started inside a Tokio runtime")]
    NoRuntime,
    /// The feed's task ended abnormally (it panicked or was aborted).
    #[error("the feed task ended abnormally")]
    TaskFailed(#[source] tokio::task::JoinError),
}

/// How a feed runs. Every setting has a default; [`FeedConfig::new`] takes the feed's name.
///
/// ```
/// use std::time::Duration;
/// let config = aside_feed::FeedConfig::new("catalog")
///     .poll_interval(Duration::from_millis(500))
///     .retention(Duration::from_secs(600));
/// assert_eq!(config.name(), "catalog");
/// ```
#[derive(Clone, Debug)]
pub struct FeedConfig {
    pub(crate) name: String,
    pub(crate) poll_interval: Duration,
    pub(crate) retry_interval: Duration,
    pub(crate) watch_interval: Duration,
    pub(crate) batch_size: usize,
    pub(crate) retention: Duration,
    pub(crate) prune_interval: Duration,
    pub(crate) prune_batch: usize,
    pub(crate) abandon_after: Duration,
    pub(crate) behind_after: Duration,
    pub(crate) behind_changes: u64,
    pub(crate) timeout: Duration,
    pub(crate) queries: Option<metrics::Counter>,
}

impl FeedConfig {
    /// The settings of the feed `name`: the key of its durable position. Every instance of
    /// one service uses the same name; two services sharing a database use two names.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            poll_interval: Duration::from_millis(50),
            retry_interval: Duration::from_secs(1),
            watch_interval: Duration::from_millis(25),
            batch_size: 1000,
            retention: Duration::from_secs(300),
            prune_interval: Duration::from_secs(10),
            prune_batch: 10_000,
            abandon_after: Duration::from_secs(24 * 3600),
            behind_after: Duration::from_secs(1),
            behind_changes: 1000,
            timeout: Duration::from_secs(5),
            queries: None,
        }
    }

    /// The counter every statement the feed sends to the database increments: its reads of
    /// the outbox, position updates and pruning (SQLite's `PRAGMA data_version` checks on the
    /// feed's own connection are not counted). Default: `aside_feed_queries_total`, labelled
    /// `feed`. A service that counts its database round trips in one metric passes its own.
    pub fn count_queries(mut self, counter: metrics::Counter) -> Self {
        self.queries = Some(counter);
        self
    }

    /// The feed's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How often the outbox is read when nothing woke the feed (PostgreSQL with
    /// [`Wakeup::Poll`](crate::postgres::Wakeup::Poll): the longest a change waits; with
    /// `Notify`, or on SQLite, a fallback). Default 50 ms.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }

    /// The pause between two attempts while the database does not answer. Default 1 s.
    pub fn retry_interval(mut self, d: Duration) -> Self {
        self.retry_interval = d;
        self
    }

    /// SQLite: how often `PRAGMA data_version` is asked whether another connection committed.
    /// Default 25 ms. Unused on PostgreSQL.
    pub fn watch_interval(mut self, d: Duration) -> Self {
        self.watch_interval = d;
        self
    }

    /// Most changes read and applied at once. Default 1000.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }

    /// How long an applied change stays in the outbox before it may be pruned: the margin an
    /// instance that is behind has before it must resync. Default 5 minutes.
    pub fn retention(mut self, d: Duration) -> Self {
        self.retention = d;
        self
    }

    /// How often an instance that advanced the durable position prunes. Default 10 s.
    pub fn prune_interval(mut self, d: Duration) -> Self {
        self.prune_interval = d;
        self
    }

    /// Most outbox rows one prune deletes. Default 10 000.
    pub fn prune_batch(mut self, n: usize) -> Self {
        self.prune_batch = n;
        self
    }

    /// A feed (another service on the same database) whose position has not moved for this
    /// long no longer holds pruning back; if it comes back it resyncs. Default 24 h.
    pub fn abandon_after(mut self, d: Duration) -> Self {
        self.abandon_after = d;
        self
    }

    /// The lag above which [`Status::Behind`](crate::Status::Behind) is reported. Default 1 s.
    pub fn behind_after(mut self, d: Duration) -> Self {
        self.behind_after = d;
        self
    }

    /// The number of unapplied changes above which the feed is behind. Default 1000.
    pub fn behind_changes(mut self, n: u64) -> Self {
        self.behind_changes = n;
        self
    }

    /// The bound of each database call of the feed; past it the feed is down. Default 5 s.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        let bad = |name, reason: &str| {
            Err(Error::Config {
                name,
                reason: reason.to_owned(),
            })
        };
        if self.name.is_empty() || self.name.len() > 200 {
            return bad("name", "must be 1 to 200 bytes");
        }
        if self.poll_interval.is_zero() {
            return bad("poll_interval", "must be above zero");
        }
        if self.retry_interval.is_zero() {
            return bad("retry_interval", "must be above zero");
        }
        if self.watch_interval.is_zero() {
            return bad("watch_interval", "must be above zero");
        }
        if self.batch_size == 0 || self.batch_size > 1_000_000 {
            return bad("batch_size", "must be 1 to 1 000 000");
        }
        if self.prune_batch == 0 || self.prune_batch > 10_000_000 {
            return bad("prune_batch", "must be 1 to 10 000 000");
        }
        if self.prune_interval.is_zero() {
            return bad("prune_interval", "must be above zero");
        }
        if self.timeout.is_zero() {
            return bad("timeout", "must be above zero");
        }
        Ok(())
    }
}
