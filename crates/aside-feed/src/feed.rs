//! The feed: a background task that reads the outbox in commit-safe order, turns each change
//! into invalidations through the service's mapping, applies them to the cache, and records
//! in the database how far it got.

use crate::backend::{Backend, Cursor, Read};
use crate::change::{Change, Invalidations, Plan};
use crate::config::{Error, FeedConfig};
use aside::codec::Codec;
use aside::{Cache, Invalidation};
use metrics::{Counter, Gauge};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

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

#[derive(Debug, Default)]
struct State {
    started: bool,
    down: bool,
    pending_since: Option<Instant>,
    lag_changes: u64,
    changes_applied: u64,
    resyncs: u64,
    reads: u64,
    position: Option<i64>,
    durable: Option<i64>,
    last_error: Option<String>,
}

struct Shared {
    state: Mutex<State>,
    behind_after: Duration,
    behind_changes: u64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stats(&self) -> Stats {
        let s = self.lock();
        let lag = s.pending_since.map_or(Duration::ZERO, |t| t.elapsed());
        let status = if s.down {
            Status::Down
        } else if !s.started || lag > self.behind_after || s.lag_changes > self.behind_changes {
            Status::Behind
        } else {
            Status::Up
        };
        Stats {
            status,
            lag,
            lag_changes: s.lag_changes,
            changes_applied: s.changes_applied,
            resyncs: s.resyncs,
            reads: s.reads,
            position: s.position,
            durable_position: s.durable,
            last_error: s.last_error.clone(),
        }
    }
}

struct Metrics {
    lag_seconds: Gauge,
    lag_changes: Gauge,
    changes: Counter,
    resyncs: Counter,
    queries: Counter,
}

impl Metrics {
    fn new(config: &FeedConfig) -> Self {
        let label = [("feed", config.name.clone())];
        Self {
            lag_seconds: metrics::gauge!("aside_feed_lag_seconds", &label),
            lag_changes: metrics::gauge!("aside_feed_lag_changes", &label),
            changes: metrics::counter!("aside_feed_changes_total", &label),
            resyncs: metrics::counter!("aside_feed_resyncs_total", &label),
            queries: match &config.queries {
                Some(c) => c.clone(),
                None => metrics::counter!("aside_feed_queries_total", &label),
            },
        }
    }
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
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let backend = Backend::Postgres(crate::postgres::PgBackend::new(pool, &config, &runtime));
        Ok(Self::start(
            backend,
            cache,
            Arc::new(mapping),
            config,
            &runtime,
        ))
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
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let backend = Backend::Sqlite(Box::new(crate::sqlite::SqliteBackend::new(pool, &config)));
        Ok(Self::start(
            backend,
            cache,
            Arc::new(mapping),
            config,
            &runtime,
        ))
    }

    fn start<C: Codec>(
        backend: Backend,
        cache: Cache<C>,
        mapping: Mapping,
        config: FeedConfig,
        runtime: &tokio::runtime::Handle,
    ) -> Feed {
        let shared = Arc::new(SharedHandle(Shared {
            state: Mutex::new(State::default()),
            behind_after: config.behind_after,
            behind_changes: config.behind_changes,
        }));
        let (stop, stopped) = watch::channel(false);
        let engine = Engine {
            metrics: Metrics::new(&config),
            backend,
            cache,
            mapping,
            shared: shared.clone(),
            stopped,
            cursor: None,
            durable: None,
            hold: false,
            unpersisted: false,
            reset: false,
            pending_since: None,
            last_persist: Instant::now(),
            last_prune: None,
            last_count: None,
            lag_changes: 0,
            config,
        };
        let task = runtime.spawn(engine.run());
        Feed {
            shared,
            stop,
            task: Some(task),
        }
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

/// Where a cycle leaves the loop: how long to wait before the next one.
enum Next {
    /// More is known to be waiting: read again at once.
    Now,
    /// Caught up: wait for a wake-up, or the poll interval.
    Idle,
    /// The database failed: try again after the retry interval.
    Retry,
}

struct Engine<C: Codec> {
    backend: Backend,
    cache: Cache<C>,
    mapping: Mapping,
    config: FeedConfig,
    shared: Arc<SharedHandle>,
    metrics: Metrics,
    stopped: watch::Receiver<bool>,
    /// Where the next read starts; `None` until the feed has started.
    cursor: Option<Cursor>,
    /// The highest durable position known (read or written).
    durable: Option<i64>,
    /// An invalidation was queued by the cache: the durable position waits until the cache's
    /// backlog is applied.
    hold: bool,
    /// Changes were applied since the durable position was last written.
    unpersisted: bool,
    /// The durable position must be set (not only raised) to the cursor: the one stored was
    /// ahead of the database.
    reset: bool,
    /// When the oldest change not yet applied to the store was made.
    pending_since: Option<Instant>,
    last_persist: Instant,
    last_prune: Option<Instant>,
    last_count: Option<Instant>,
    lag_changes: u64,
}

impl<C: Codec> Engine<C> {
    async fn run(mut self) {
        let mut next = Next::Now;
        loop {
            if *self.stopped.borrow() {
                break;
            }
            let pause = match next {
                Next::Now => None,
                Next::Idle => Some(self.config.poll_interval),
                Next::Retry => Some(self.config.retry_interval),
            };
            if let Some(pause) = pause {
                let until = Instant::now() + pause;
                let mut stopped = self.stopped.clone();
                tokio::select! {
                    _ = self.backend.wait(until) => {}
                    _ = stopped.wait_for(|s| *s) => break,
                }
            }
            next = match self.cycle().await {
                Ok(n) => n,
                Err(e) => {
                    self.down(&e);
                    Next::Retry
                }
            };
            self.publish();
        }
        self.finish().await;
    }

    /// Records what is applied before the task ends.
    async fn finish(&mut self) {
        if self.cursor.is_none() {
            return;
        }
        if let Err(e) = self.persist(true).await {
            warn!(feed = %self.config.name, error = %e, "feed stopped without recording its position");
        }
        debug!(feed = %self.config.name, "feed stopped");
    }

    /// Runs one database call within the timeout.
    /// One statement of the feed's, counted and bounded.
    async fn db<T>(
        queries: &Counter,
        timeout: Duration,
        fut: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, Error> {
        queries.increment(1);
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r.map_err(Error::Database),
            Err(_) => Err(Error::Timeout(timeout)),
        }
    }

    async fn read(&mut self, from: Cursor, limit: usize) -> Result<Read, Error> {
        let t = self.config.timeout;
        let r = Self::db(
            &self.metrics.queries,
            t,
            self.backend.read(&self.config.name, from, limit),
        )
        .await?;
        self.reached(&r);
        Ok(r)
    }

    /// Notes a successful read of the database.
    fn reached(&mut self, r: &Read) {
        let mut s = self.shared.0.lock();
        if s.down {
            info!(feed = %self.config.name, "feed reads the database again");
        }
        s.down = false;
        s.last_error = None;
        s.reads += 1;
        if let Some(stored) = r.stored {
            self.durable = Some(self.durable.map_or(stored, |d| d.max(stored)));
        }
    }

    fn down(&mut self, e: &Error) {
        let mut s = self.shared.0.lock();
        if !s.down {
            warn!(feed = %self.config.name, error = %error_chain(e), "feed cannot read the database; retrying");
        } else {
            debug!(feed = %self.config.name, error = %error_chain(e), "feed still cannot read the database");
        }
        s.down = true;
        s.last_error = Some(error_chain(e));
    }

    fn publish(&mut self) {
        let lag = self
            .pending_since
            .map_or(Duration::ZERO, |t| t.elapsed())
            .as_secs_f64();
        self.metrics.lag_seconds.set(lag);
        self.metrics.lag_changes.set(self.lag_changes as f64);
        let mut s = self.shared.0.lock();
        s.pending_since = self.pending_since;
        s.lag_changes = self.lag_changes;
        s.position = self.cursor.map(|c| c.major);
        s.durable = self.durable;
    }

    async fn cycle(&mut self) -> Result<Next, Error> {
        let Some(cursor) = self.cursor else {
            return self.begin().await;
        };
        let batch = self.config.batch_size;
        let read = self.read(cursor, batch).await?;
        let head = Cursor::at(read.head);
        if read.pruned_through >= cursor.major {
            self.resync(
                head,
                false,
                "the outbox was pruned past this instance's position",
            )
            .await?;
            return Ok(Next::Now);
        }
        if cursor.major > read.head {
            self.resync(
                head,
                true,
                "this instance's position is ahead of the database",
            )
            .await?;
            return Ok(Next::Now);
        }

        let now = Instant::now();
        let oldest = read
            .rows
            .iter()
            .map(|r| r.age)
            .fold(None, |m: Option<f64>, a| Some(m.map_or(a, |m| m.max(a))));
        if let Some(age) = oldest {
            let since = now
                .checked_sub(Duration::from_secs_f64(age.clamp(0.0, 1e9)))
                .unwrap_or(now);
            self.pending_since = Some(self.pending_since.map_or(since, |p| p.min(since)));
        }

        let full = read.full;
        let next = cursor.max(read.after);
        let n = read.rows.len() as u64;
        if n > 0 {
            let mut plan = Plan::default();
            for row in &read.rows {
                match &row.change {
                    Ok(change) => {
                        match std::panic::catch_unwind(AssertUnwindSafe(|| (self.mapping)(change)))
                        {
                            Ok(inv) => plan.add(inv),
                            Err(_) => {
                                error!(feed = %self.config.name, table = %change.table, "the mapping panicked; invalidating the whole namespace");
                                plan.everything();
                            }
                        }
                    }
                    Err(why) => {
                        error!(feed = %self.config.name, id = row.id, reason = %why, "unreadable outbox row; invalidating the whole namespace");
                        plan.everything();
                    }
                }
            }
            if self.apply(plan).await == Invalidation::Queued {
                self.hold = true;
            }
            self.unpersisted = true;
            self.metrics.changes.increment(n);
            self.shared.0.lock().changes_applied += n;
        }
        self.cursor = Some(next);
        self.persist(n > 0).await?;

        if !full && !self.hold {
            self.pending_since = None;
            self.lag_changes = 0;
        } else if full
            && self
                .last_count
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.last_count = Some(Instant::now());
            let t = self.config.timeout;
            let cap = self.config.behind_changes.saturating_mul(10).max(1);
            self.lag_changes =
                Self::db(&self.metrics.queries, t, self.backend.count_from(next, cap)).await?;
        }
        Ok(if full { Next::Now } else { Next::Idle })
    }

    /// The first read: continue from the durable position, or start at the head.
    async fn begin(&mut self) -> Result<Next, Error> {
        let t = self.config.timeout;
        let mut read = Self::db(
            &self.metrics.queries,
            t,
            self.backend.state(&self.config.name),
        )
        .await?;
        self.reached(&read);
        let head = Cursor::at(read.head);
        let committed_above = std::mem::take(&mut read.committed_above);
        let at_head = match read.stored {
            None => true,
            Some(stored) => stored > read.head || read.pruned_through >= stored,
        };
        if at_head {
            self.backend.begin_at_head(committed_above);
        }
        match read.stored {
            None => {
                info!(feed = %self.config.name, position = read.head, "feed has no recorded position: starting at the head");
                self.cursor = Some(head);
                Self::db(
                    &self.metrics.queries,
                    t,
                    self.backend.advance(&self.config.name, read.head),
                )
                .await?;
                self.durable = Some(self.durable.map_or(read.head, |d| d.max(read.head)));
                self.last_persist = Instant::now();
            }
            Some(stored) if stored > read.head => {
                self.resync(head, true, "the recorded position is ahead of the database")
                    .await?;
            }
            Some(stored) if read.pruned_through >= stored => {
                self.resync(
                    head,
                    false,
                    "the outbox was pruned past the recorded position",
                )
                .await?;
            }
            Some(stored) => {
                info!(feed = %self.config.name, position = stored, "feed resumes from its recorded position");
                self.cursor = Some(Cursor::at(stored));
            }
        }
        self.shared.0.lock().started = true;
        Ok(Next::Now)
    }

    /// Voids the whole namespace and continues from `head`: what lay between can no longer
    /// be applied change by change.
    async fn resync(&mut self, head: Cursor, reset: bool, why: &str) -> Result<(), Error> {
        warn!(feed = %self.config.name, reason = why, position = head.major, "feed resyncs: invalidating the whole namespace");
        self.metrics.resyncs.increment(1);
        self.shared.0.lock().resyncs += 1;
        if self.cache.invalidate_all().await == Invalidation::Queued {
            self.hold = true;
        }
        self.cursor = Some(head);
        self.reset |= reset;
        self.pending_since = None;
        self.persist(true).await
    }

    /// Applies one batch's invalidations. A key, tag or prefix the cache refuses makes it void
    /// the whole namespace instead: never a stale entry because a mapping made a bad key.
    async fn apply(&self, mut plan: Plan) -> Invalidation {
        if plan.is_empty() {
            return Invalidation::Applied;
        }
        if !plan.all {
            plan.compact();
            if let Err(why) = self.check(&plan) {
                error!(feed = %self.config.name, error = %why, "the mapping gave an invalidation the cache refuses; invalidating the whole namespace");
                plan.everything();
            }
        }
        if plan.all {
            return self.cache.invalidate_all().await;
        }
        let mut outcome = Invalidation::Applied;
        let mut note = |r: aside::Result<Invalidation>| match r {
            Ok(Invalidation::Applied) => true,
            Ok(Invalidation::Queued) => {
                outcome = Invalidation::Queued;
                true
            }
            Err(_) => false,
        };
        let mut ok = note(self.cache.del(&plan.keys).await);
        if !plan.tags.is_empty() {
            ok &= note(self.cache.invalidate_tags(&plan.tags).await);
        }
        for p in &plan.prefixes {
            ok &= note(self.cache.invalidate_prefix(p).await);
        }
        if !ok {
            return self.cache.invalidate_all().await;
        }
        outcome
    }

    fn check(&self, plan: &Plan) -> aside::Result<()> {
        let ns = aside::key::Namespace::new(self.cache.namespace())?;
        for k in &plan.keys {
            ns.entry(k)?;
        }
        for t in &plan.tags {
            ns.tag(t)?;
        }
        for p in &plan.prefixes {
            ns.prefix(p)?;
        }
        Ok(())
    }

    /// Records the position in the database once everything before it reached the cache
    /// store: right away after a batch (`force`), otherwise at most every 30 s.
    async fn persist(&mut self, force: bool) -> Result<(), Error> {
        let Some(cursor) = self.cursor else {
            return Ok(());
        };
        if self.hold {
            // `ping` applies the cache's pending invalidations first and answers true only
            // once none is left.
            if self.cache.ping().await && self.cache.health().pending_invalidations == 0 {
                debug!(feed = %self.config.name, "the cache applied its pending invalidations");
                self.hold = false;
            } else {
                return Ok(());
            }
        }
        let position = cursor.major;
        let t = self.config.timeout;
        if self.reset {
            Self::db(
                &self.metrics.queries,
                t,
                self.backend.reset(&self.config.name, position),
            )
            .await?;
            self.reset = false;
            self.unpersisted = false;
            self.durable = Some(position);
            self.last_persist = Instant::now();
            return Ok(());
        }
        if self.durable.is_some_and(|d| d >= position) {
            self.unpersisted = self.backend.ahead();
            return Ok(());
        }
        if !force && !self.unpersisted && self.last_persist.elapsed() < Duration::from_secs(30) {
            return Ok(());
        }
        let moved = Self::db(
            &self.metrics.queries,
            t,
            self.backend.advance(&self.config.name, position),
        )
        .await?;
        // Rows applied above the position (committed above the horizon) are recorded only
        // once the horizon passes them: write again then.
        self.unpersisted = self.backend.ahead();
        self.durable = Some(position);
        self.last_persist = Instant::now();
        if moved
            && self
                .last_prune
                .is_none_or(|p| p.elapsed() >= self.config.prune_interval)
        {
            self.last_prune = Some(Instant::now());
            let pruned = Self::db(
                &self.metrics.queries,
                t,
                self.backend.prune(
                    &self.config.name,
                    self.config.retention,
                    self.config.abandon_after,
                    self.config.prune_batch,
                ),
            )
            .await?;
            if pruned > 0 {
                debug!(feed = %self.config.name, rows = pruned, "outbox pruned");
            }
            if pruned >= self.config.prune_batch as u64 {
                // More is left: prune again after the next advance.
                self.last_prune = None;
            }
        }
        Ok(())
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
