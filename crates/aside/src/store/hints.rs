//! Per key, the stamps its entry carried that the caller did not name (tags learnt from a
//! loaded value), so that the next read asks for them in the same round trip.
//!
//! A hint is only a hint: a missing or wrong one costs a second round trip, never a wrong
//! answer. So the table is a fixed-size, 4-way set-associative array indexed by a hash of
//! the key: a lookup is one hash, one uncontended read lock and at most four compares, with
//! no allocation, no eviction bookkeeping and no background work. Two keys whose 64-bit
//! hashes are equal would share a hint, which is harmless for the same reason.

use crate::key::EntryKey;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

const WAYS: usize = 4;

type Way = Option<(u64, Arc<[String]>)>;

/// The hint table. Holds about `capacity` keys (rounded up to a power of two).
pub(crate) struct Hints {
    sets: Box<[RwLock<[Way; WAYS]>]>,
    hasher: RandomState,
    /// Which way of a full set the next insert replaces.
    next: AtomicUsize,
}

impl Hints {
    /// A table for about `capacity` keys; 0 keeps none.
    pub(crate) fn new(capacity: u64) -> Self {
        let sets = if capacity == 0 {
            0
        } else {
            (usize::try_from(capacity).unwrap_or(usize::MAX) / WAYS)
                .max(1)
                .next_power_of_two()
        };
        Self {
            sets: (0..sets).map(|_| RwLock::new(Default::default())).collect(),
            hasher: RandomState::new(),
            next: AtomicUsize::new(0),
        }
    }

    /// The hash of `key` and the set it belongs to (`None` when no hint is kept).
    fn set_of(&self, key: &EntryKey) -> Option<(u64, &RwLock<[Way; WAYS]>)> {
        if self.sets.is_empty() {
            return None;
        }
        let h = self.hasher.hash_one(key.as_str());
        // The low bits pick the set; the whole hash tells keys of one set apart.
        Some((h, &self.sets[h as usize & (self.sets.len() - 1)]))
    }

    /// Calls `f` with each stamp last learnt for `key`, under the set's read lock (so the
    /// shared hint is not reference-counted on every read); returns how many there were.
    pub(crate) fn each(&self, key: &EntryKey, mut f: impl FnMut(&str)) -> usize {
        let Some((h, set)) = self.set_of(key) else {
            return 0;
        };
        let set = set.read().unwrap_or_else(|p| p.into_inner());
        match set.iter().flatten().find(|(k, _)| *k == h) {
            Some((_, stamps)) => {
                stamps.iter().for_each(|s| f(s));
                stamps.len()
            }
            None => 0,
        }
    }

    #[cfg(test)]
    fn get(&self, key: &EntryKey) -> Option<Vec<String>> {
        let mut out = Vec::new();
        (self.each(key, |s| out.push(s.to_owned())) > 0).then_some(out)
    }

    /// Remembers the stamps learnt for `key`, replacing its previous hint, or another key's
    /// if the set is full.
    pub(crate) fn insert(&self, key: &EntryKey, stamps: Arc<[String]>) {
        let Some((h, set)) = self.set_of(key) else {
            return;
        };
        let mut set = set.write().unwrap_or_else(|p| p.into_inner());
        let at = set
            .iter()
            .position(|w| w.as_ref().is_some_and(|(k, _)| *k == h))
            .or_else(|| set.iter().position(Option::is_none))
            .unwrap_or_else(|| self.next.fetch_add(1, Ordering::Relaxed) % WAYS);
        set[at] = Some((h, stamps));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Namespace;

    fn hint(s: &str) -> Arc<[String]> {
        vec![s.to_owned()].into()
    }

    #[test]
    fn remembers_replaces_and_evicts_within_capacity() {
        let ns = Namespace::new("t").unwrap();
        let hints = Hints::new(64);
        let keys: Vec<EntryKey> = (0..1000)
            .map(|i| ns.entry(&format!("k{i}")).unwrap())
            .collect();
        assert!(hints.get(&keys[0]).is_none());
        hints.insert(&keys[0], hint("a"));
        hints.insert(&keys[0], hint("b"));
        assert_eq!(hints.get(&keys[0]), Some(vec!["b".to_owned()]));
        for (i, k) in keys.iter().enumerate() {
            hints.insert(k, hint(&i.to_string()));
        }
        // Every hint found is the key's own; no more are kept than the table holds.
        let kept = keys
            .iter()
            .enumerate()
            .filter(|(i, k)| {
                hints
                    .get(k)
                    .inspect(|h| assert_eq!(h[0], i.to_string()))
                    .is_some()
            })
            .count();
        assert!(kept > 0 && kept <= 64, "kept {kept}");
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let ns = Namespace::new("t").unwrap();
        let hints = Hints::new(0);
        let k = ns.entry("k").unwrap();
        hints.insert(&k, hint("a"));
        assert!(hints.get(&k).is_none());
    }
}
