//! The feed's task: the first read, then a cycle per batch (read, apply, record), the
//! resync when changes can no longer be applied one by one, and the retries while the
//! database does not answer.

use super::{Mapping, SharedHandle};
use crate::backend::{Backend, Cursor, Read};
use crate::config::{Error, FeedConfig};
use aside::codec::Codec;
use aside::{Cache, Invalidation};
use metrics::{Counter, Gauge};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{debug, info, warn};

pub(super) struct Metrics {
    pub(super) lag_seconds: Gauge,
    pub(super) lag_changes: Gauge,
    pub(super) changes: Counter,
    pub(super) resyncs: Counter,
    pub(super) queries: Counter,
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

/// Where a cycle leaves the loop: how long to wait before the next one.
enum Next {
    /// More is known to be waiting: read again at once.
    Now,
    /// Caught up: wait for a wake-up, or the poll interval.
    Idle,
    /// The database failed: try again after the retry interval.
    Retry,
}

pub(super) struct Engine<C: Codec> {
    pub(super) backend: Backend,
    pub(super) cache: Cache<C>,
    pub(super) mapping: Mapping,
    pub(super) config: FeedConfig,
    pub(super) shared: Arc<SharedHandle>,
    pub(super) metrics: Metrics,
    pub(super) stopped: watch::Receiver<bool>,
    /// Where the next read starts; `None` until the feed has started.
    pub(super) cursor: Option<Cursor>,
    /// The highest durable position known (read or written).
    pub(super) durable: Option<i64>,
    /// An invalidation was queued by the cache: the durable position waits until the cache's
    /// backlog is applied.
    pub(super) hold: bool,
    /// Changes were applied since the durable position was last written.
    pub(super) unpersisted: bool,
    /// The durable position must be set (not only raised) to the cursor: the one stored was
    /// ahead of the database.
    pub(super) reset: bool,
    /// When the oldest change not yet applied to the store was made.
    pub(super) pending_since: Option<Instant>,
    pub(super) last_persist: Instant,
    pub(super) last_prune: Option<Instant>,
    pub(super) last_count: Option<Instant>,
    pub(super) lag_changes: u64,
}

impl<C: Codec> Engine<C> {
    pub(super) fn new(
        backend: Backend,
        cache: Cache<C>,
        mapping: Mapping,
        config: FeedConfig,
        shared: Arc<SharedHandle>,
        stopped: watch::Receiver<bool>,
    ) -> Self {
        Engine {
            metrics: Metrics::new(&config),
            backend,
            cache,
            mapping,
            shared,
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
        }
    }

    pub(super) async fn run(mut self) {
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
    pub(super) async fn db<T>(
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
            let plan = self.plan(&read.rows);
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
