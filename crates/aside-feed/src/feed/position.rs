//! The durable position: recorded once everything before it reached the cache store, and
//! the outbox pruned behind it.

use super::engine::Engine;
use crate::config::Error;
use aside::codec::Codec;
use std::time::{Duration, Instant};
use tracing::debug;

impl<C: Codec> Engine<C> {
    /// Records the position in the database once everything before it reached the cache
    /// store: right away after a batch (`force`), otherwise at most every 30 s.
    pub(super) async fn persist(&mut self, force: bool) -> Result<(), Error> {
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
