//! The L1's table of generation counters: how a copy is known to be still valid without
//! scanning.
//!
//! The table has a fixed number of counters, and every entry key, prefix and epoch version
//! key maps to one of them by hash. An invalidation (local, or received) increments the
//! counters of what it names; a copy records the counters of its key and stamps as they were
//! *before* its L2 read began (a [`Snapshot`]), and is valid only while they are unchanged. A
//! read that began before an invalidation can therefore never leave the old value behind in
//! the L1, whatever the order in which the invalidation and the read's reply arrive. Two names
//! sharing a counter only cost a miss.
//!
//! Tags are the exception: an entry may carry tags learnt from its value that the reader does
//! not name (and the L2 does not report), so every tag of a namespace shares one counter: an
//! invalidation of any tag voids the namespace's L1 copies (the L2 entries stay, so the next
//! reads are one Redis round trip each). Deletes, writes, prefix invalidations are precise.
//!
//! An era counter voids every copy at once (the L1 resynchronised after missing messages).

use crate::key::{self, EntryKey, TagKey};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

/// Counters in the table (a power of two).
const COUNTERS: usize = 1 << 14;

/// The era of the L1 and the generations of a copy's dependencies, read before its L2 read.
pub(super) struct Snapshot {
    era: u64,
    deps: Box<[(u32, u64)]>,
}

/// The generation counters and the era.
pub(super) struct Generations {
    counters: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
    /// Bumped whenever the L1 is voided whole.
    era: AtomicU64,
}

impl Generations {
    pub(super) fn new() -> Self {
        Self {
            counters: (0..COUNTERS).map(|_| AtomicU64::new(0)).collect(),
            hasher: Default::default(),
            era: AtomicU64::new(0),
        }
    }

    /// The counter of an entry key, a prefix or an epoch.
    fn counter(&self, name: &str) -> u32 {
        (self.hasher.hash_one(name) as usize & (COUNTERS - 1)) as u32
    }

    /// The counter shared by every tag of a namespace.
    fn tag_counter(&self, ns: &str) -> u32 {
        (self.hasher.hash_one((ns, "tags")) as usize & (COUNTERS - 1)) as u32
    }

    /// The counter an invalidation of a version key increments; `None` if it is not one.
    fn stamp_counter(&self, stamp: &str) -> Option<u32> {
        match key::layout(stamp)? {
            (ns, b't') => Some(self.tag_counter(ns)),
            (_, b'p' | b'g') => Some(self.counter(stamp)),
            _ => None,
        }
    }

    /// The counters a copy of `key` read with `stamps` depends on.
    pub(super) fn deps(&self, key: &EntryKey, stamps: &[TagKey]) -> Option<Vec<u32>> {
        let (ns, _) = key::layout(key.as_str())?;
        let mut out = Vec::with_capacity(stamps.len() + 2);
        out.push(self.counter(key.as_str()));
        out.push(self.tag_counter(ns));
        for s in stamps {
            let i = self.stamp_counter(s.as_str())?;
            if !out.contains(&i) {
                out.push(i);
            }
        }
        Some(out)
    }

    pub(super) fn snapshot(&self, deps: Vec<u32>) -> Snapshot {
        // The era first: a resync bumps it after clearing, so a snapshot taken across one
        // holds the old era and is refused.
        let era = self.era.load(SeqCst);
        let deps = deps
            .into_iter()
            .map(|i| (i, self.counters[i as usize].load(SeqCst)))
            .collect();
        Snapshot { era, deps }
    }

    /// Whether nothing `s` depends on was invalidated since it was taken.
    pub(super) fn current(&self, s: &Snapshot) -> bool {
        s.deps
            .iter()
            .all(|&(i, g)| self.counters[i as usize].load(SeqCst) == g)
            && self.era.load(SeqCst) == s.era
    }

    /// Voids the copies of an entry key.
    pub(super) fn void(&self, entry_key: &str) {
        self.counters[self.counter(entry_key) as usize].fetch_add(1, SeqCst);
    }

    /// Voids the copies stamped with any of `stamps`; `false` if one was not a version key
    /// (the caller then voids everything).
    pub(super) fn void_stamps<'a>(&self, stamps: impl Iterator<Item = &'a str>) -> bool {
        let mut understood = true;
        for s in stamps {
            match self.stamp_counter(s) {
                Some(i) => {
                    self.counters[i as usize].fetch_add(1, SeqCst);
                }
                None => understood = false,
            }
        }
        understood
    }

    /// Voids every copy.
    pub(super) fn new_era(&self) {
        self.era.fetch_add(1, SeqCst);
    }
}
