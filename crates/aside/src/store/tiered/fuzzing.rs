//! The L1's handling of invalidation messages, driven by hand (feature `fuzzing`): an
//! instance's generation table, snapshots of it, and messages received from other instances.

use super::Shared;
use super::generations::Snapshot;
use crate::key::Namespace;

/// One instance's invalidation state, fed messages by hand.
pub struct L1Messages(Shared);

/// What a copy of an entry depended on when its read began.
pub struct L1Snapshot(Snapshot);

impl L1Messages {
    /// The state of instance `id` (whose own messages are ignored).
    pub fn new(id: &str) -> Self {
        Self(Shared::detached(id))
    }

    /// A snapshot for a copy of `key` read with the stamps of `tags`; `None` if a key or tag
    /// is refused.
    pub fn snapshot(&self, ns: &Namespace, key: &str, tags: &[&str]) -> Option<L1Snapshot> {
        let entry = ns.entry(key).ok()?;
        let stamps = ns.stamps_for(key, tags).ok()?;
        let deps = self.0.gens.deps(&entry, &stamps)?;
        Some(L1Snapshot(self.0.gens.snapshot(deps)))
    }

    /// Applies a message as the subscriber does.
    pub fn receive(&self, payload: &[u8]) {
        self.0.receive(payload);
    }

    /// Whether a copy taken at `snap` may still be served.
    pub fn current(&self, snap: &L1Snapshot) -> bool {
        self.0.gens.current(&snap.0)
    }
}
