//! What the feed's task publishes and its handle reads: counters, positions, and the
//! status they make.

use super::{Stats, Status};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) started: bool,
    pub(super) down: bool,
    pub(super) pending_since: Option<Instant>,
    pub(super) lag_changes: u64,
    pub(super) changes_applied: u64,
    pub(super) resyncs: u64,
    pub(super) reads: u64,
    pub(super) position: Option<i64>,
    pub(super) durable: Option<i64>,
    pub(super) last_error: Option<String>,
}

pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    pub(super) behind_after: Duration,
    pub(super) behind_changes: u64,
}

impl Shared {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn stats(&self) -> Stats {
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
