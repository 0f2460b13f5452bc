//! The feed: a background task that reads the outbox in commit-safe order, turns each change
//! into invalidations through the service's mapping, applies them to the cache, and records
//! in the database how far it got.
//!
//! - `mod.rs`: the public [`Feed`] handle (start, status, shutdown) and its [`Stats`].
//! - `state.rs`: what the task publishes for the handle to read.
//! - `engine.rs`: the task's loop: first read, cycles, resyncs, failures.
//! - `batch.rs`: one batch's rows turned into invalidations and applied to the cache.
//! - `position.rs`: the durable position recorded, and the outbox pruned behind it.

mod batch;
mod engine;
mod position;
mod state;

use crate::backend::Backend;
use crate::change::{Change, Invalidations};
use crate::config::{Error, FeedConfig};
use aside::Cache;
use aside::codec::Codec;
use engine::Engine;
use state::{Shared, State};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The service's mapping from a committed change to what it must invalidate.
pub(crate) type Mapping = Arc<dyn Fn(&Change) -> Invalidations + Send + Sync>;

/// How a feed is doing, for a readiness endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Reading the database and caught up within [`FeedConfig::behind_after`] and
    /// [`FeedConfig::behind_changes`].
    Up,
    /// Reading the database, but changes wait longer than that to be applied (or the feed has
    /// not finished starting). The cache may serve entries that a change already voided.
    Behind,
    /// The database does not answer the feed. Cache reads are unaffected; changes made
    /// meanwhile are applied when it answers again.
    Down,
}

/// A snapshot of what a feed has done, for tests, logs and status pages.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// As [`Feed::status`].
    pub status: Status,
    /// Age of the oldest change not yet applied to the cache store (zero when caught up).
    pub lag: Duration,
    /// Changes known to be waiting (counted only while behind, at most once a second).
    pub lag_changes: u64,
    /// Changes this instance applied since it started.
    pub changes_applied: u64,
    /// Times this instance invalidated its whole namespace because it could not apply every
    /// change in order (it fell behind what was pruned, or the database's position was not
    /// one it could continue from).
    pub resyncs: u64,
    /// Reads of the outbox that returned (with or without changes).
    pub reads: u64,
    /// This instance's position in the outbox (PostgreSQL: a transaction id; SQLite: the next
    /// outbox row id), once started.
    pub position: Option<i64>,
    /// The durable position of the feed as last read or written by this instance.
    pub durable_position: Option<i64>,
    /// The last database error, while down.
    pub last_error: Option<String>,
}

/// A running feed: a Tokio task applying every committed change of the database's outbox to
/// one [`Cache`]. Start it with [`Feed::postgres`] or [`Feed::sqlite`]; stop it with
/// [`Feed::shutdown`]. Dropping it stops the task too, after the batch in hand, without
/// waiting for it.
#[derive(Debug)]
pub struct Feed {
    shared: Arc<SharedHandle>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

struct SharedHandle(Shared);

impl std::fmt::Debug for SharedHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("stats", &self.0.stats())
            .finish()
    }
}

impl Feed {
    /// Starts a feed on a PostgreSQL database prepared with
    /// [`postgres::install`](crate::postgres::install). It reads through `pool` (one
    /// connection at a time) and holds one more connection of its own for `LISTEN`.
    ///
    /// Must be called inside a Tokio runtime.
    #[cfg(feature = "postgres")]
    pub fn postgres<C, F>(
        pool: sqlx::PgPool,
        cache: Cache<C>,
        mapping: F,
        config: FeedConfig,
    ) -> Result<Feed, Error>
    where
        C: Codec,
        F: Fn(&Change) -> Invalidations + Send + Sync + 'static,
    {
        Self::start(cache, Arc::new(mapping), config, |config, runtime| {
            Backend::Postgres(crate::postgres::PgBackend::new(pool, config, runtime))
        })
    }

    /// Starts a feed on a SQLite database file prepared with
    /// [`sqlite::install`](crate::sqlite::install). It reads through `pool` and opens one
    /// more connection of its own to ask `PRAGMA data_version` whether another connection (of
    /// this process or another) committed.
    ///
    /// Must be called inside a Tokio runtime.
    #[cfg(feature = "sqlite")]
    pub fn sqlite<C, F>(
        pool: sqlx::SqlitePool,
        cache: Cache<C>,
        mapping: F,
        config: FeedConfig,
    ) -> Result<Feed, Error>
    where
        C: Codec,
        F: Fn(&Change) -> Invalidations + Send + Sync + 'static,
    {
        Self::start(cache, Arc::new(mapping), config, |config, _| {
            Backend::Sqlite(Box::new(crate::sqlite::SqliteBackend::new(pool, config)))
        })
    }

    /// Checks the settings, finds the runtime, makes the backend with `backend` and spawns
    /// the task.
    fn start<C: Codec>(
        cache: Cache<C>,
        mapping: Mapping,
        config: FeedConfig,
        backend: impl FnOnce(&FeedConfig, &tokio::runtime::Handle) -> Backend,
    ) -> Result<Feed, Error> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let backend = backend(&config, &runtime);
        let shared = Arc::new(SharedHandle(Shared {
            state: Mutex::new(State::default()),
            behind_after: config.behind_after,
            behind_changes: config.behind_changes,
        }));
        let (stop, stopped) = watch::channel(false);
        let engine = Engine::new(backend, cache, mapping, config, shared.clone(), stopped);
        let task = runtime.spawn(engine.run());
        Ok(Feed {
            shared,
            stop,
            task: Some(task),
        })
    }

    /// How the feed is doing.
    pub fn status(&self) -> Status {
        self.shared.0.stats().status
    }

    /// What the feed has done so far.
    pub fn stats(&self) -> Stats {
        self.shared.0.stats()
    }

    /// Stops the feed: the batch in hand is applied and the durable position recorded (when
    /// the cache store took every invalidation), then the task ends.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        let _ = self.stop.send(true);
        match self.task.take() {
            Some(task) => task.await.map_err(Error::TaskFailed),
            None => Ok(()),
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
