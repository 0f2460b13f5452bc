//! The in-process store on moka: the same semantics as the Redis store, for one process.
//!
//! Entries live in a bounded `moka::sync::Cache` (least-recently-used eviction beyond the
//! capacity, per-entry expiry); versions in a plain `RwLock<HashMap>` (`Versions`: read
//! on every hit, so it is kept cheap). Past `capacity` version keys, the least recently used
//! sixteenth of them is evicted at once: an evicted version key invalidates only the entries
//! stamped with it, like a version key evicted from Redis, so a flood of new keys never
//! invalidates the entries still in use. Every version, whether created or bumped, is drawn
//! from one counter, so a version key that was dropped and created again never repeats a
//! version an entry could carry. Expiry is judged by the injected
//! [`Clock`], so tests move time instead of sleeping; moka's own timer only frees memory.
//!
//! Every change of an entry (claim, fill, release, set, delete) runs under moka's per-key lock
//! (`and_compute_with`), the in-process counterpart of a Lua script: moka serializes compute
//! calls with each other, not with plain `insert` or `invalidate`, so those are not used.

use super::{Claim, ClaimTerms, Kind, Lease, Lifetime, Lookup, Stamp, Store};
use crate::clock::{Clock, SystemClock};
use crate::error::StoreError;
use crate::key::{CLOCK_SHARDS, EntryKey, TagKey};
use async_trait::async_trait;
use bytes::Bytes;
use moka::ops::compute::Op;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// What an entry key holds: an entry, or the placeholder of the loader filling it.
#[derive(Debug)]
enum Stored {
    Entry {
        stamps: Vec<Stamp>,
        payload: Bytes,
        expires: Duration,
        ttl: Duration,
        /// The refresh lease held on this entry: its token and when it lapses.
        refresh: Option<(u64, Duration)>,
    },
    Lease {
        token: u64,
        expires: Duration,
        ttl: Duration,
    },
}

impl Stored {
    fn expires(&self) -> Duration {
        match self {
            Stored::Entry { expires, .. } | Stored::Lease { expires, .. } => *expires,
        }
    }
    fn ttl(&self) -> Duration {
        match self {
            Stored::Entry { ttl, .. } | Stored::Lease { ttl, .. } => *ttl,
        }
    }
}

struct ByTtl;

impl moka::Expiry<EntryKey, Arc<Stored>> for ByTtl {
    fn expire_after_create(&self, _: &EntryKey, v: &Arc<Stored>, _: Instant) -> Option<Duration> {
        Some(v.ttl())
    }
    fn expire_after_update(
        &self,
        _: &EntryKey,
        v: &Arc<Stored>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(v.ttl())
    }
}

/// The version keys of a [`MemoryStore`], each with when it was last used.
///
/// "When" is the number of version keys created before that use: reading it on a hit costs a
/// shared load of a counter that only creations write, and a store to the key's own slot
/// only when that number moved since its last use.
#[derive(Debug, Default)]
struct Versions {
    map: HashMap<TagKey, Version>,
    created: AtomicU64,
}

#[derive(Debug)]
struct Version {
    value: i64,
    used: AtomicU64,
}

impl Versions {
    /// The version of `k`, marked used now.
    fn get(&self, k: &TagKey) -> Option<i64> {
        let v = self.map.get(k)?;
        let now = self.created.load(Ordering::Relaxed);
        if v.used.load(Ordering::Relaxed) != now {
            v.used.store(now, Ordering::Relaxed);
        }
        Some(v.value)
    }

    fn insert(&mut self, k: TagKey, value: i64) {
        let now = self.created.fetch_add(1, Ordering::Relaxed) + 1;
        self.map.insert(
            k,
            Version {
                value,
                used: AtomicU64::new(now),
            },
        );
    }

    /// Drops the `n` least recently used version keys (ties broken arbitrarily).
    fn evict(&mut self, n: usize) {
        if n == 0 || self.map.is_empty() {
            return;
        }
        if n >= self.map.len() {
            self.map.clear();
            return;
        }
        let mut used: Vec<u64> = self
            .map
            .values()
            .map(|v| v.used.load(Ordering::Relaxed))
            .collect();
        let (_, &mut cut, _) = used.select_nth_unstable(n - 1);
        // Everything used before `cut` goes, and as many used at `cut` as make `n`.
        let below = used.iter().filter(|&&u| u < cut).count();
        let mut at_cut = n - below;
        self.map.retain(|_, v| {
            let u = v.used.load(Ordering::Relaxed);
            if u < cut {
                false
            } else if u == cut && at_cut > 0 {
                at_cut -= 1;
                false
            } else {
                true
            }
        });
    }
}

/// A [`Store`] in this process's memory.
#[derive(Clone, Debug)]
pub struct MemoryStore {
    entries: moka::sync::Cache<EntryKey, Arc<Stored>>,
    versions: Arc<RwLock<Versions>>,
    version_capacity: usize,
    clock: Arc<dyn Clock>,
    next_version: Arc<AtomicI64>,
    /// The tag clocks, shard by shard, for every namespace of this store at once (sharing
    /// them can only refuse more fills than needed, never fewer).
    tag_clocks: Arc<[AtomicI64; CLOCK_SHARDS]>,
    tokens: Arc<AtomicU64>,
}

impl MemoryStore {
    /// A store holding at most `capacity` entries, on the system clock.
    pub fn new(capacity: u64) -> Self {
        Self::with_clock(capacity, Arc::new(SystemClock::default()))
    }

    /// A store on the given clock (a [`MockClock`](crate::clock::MockClock) in tests).
    pub fn with_clock(capacity: u64, clock: Arc<dyn Clock>) -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .expire_after(ByTtl)
                .build(),
            versions: Arc::default(),
            version_capacity: capacity.max(1024) as usize,
            clock,
            next_version: Arc::new(AtomicI64::new(1)),
            tag_clocks: Arc::new(std::array::from_fn(|_| AtomicI64::new(0))),
            tokens: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Entries held now (approximate; pending evictions may still count).
    pub fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    fn fresh_version(&self) -> i64 {
        self.next_version.fetch_add(1, Ordering::Relaxed)
    }

    fn read_versions(&self) -> std::sync::RwLockReadGuard<'_, Versions> {
        self.versions.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_versions(&self) -> std::sync::RwLockWriteGuard<'_, Versions> {
        self.versions.write().unwrap_or_else(|p| p.into_inner())
    }

    fn version(&self, k: &TagKey) -> i64 {
        if let Some(v) = self.read_versions().get(k) {
            return v;
        }
        let mut w = self.write_versions();
        if let Some(v) = w.get(k) {
            return v;
        }
        if w.map.len() >= self.version_capacity {
            w.evict(self.version_capacity.div_ceil(16));
        }
        let v = self.fresh_version();
        w.insert(k.clone(), v);
        v
    }

    /// Version keys held now.
    pub fn version_count(&self) -> usize {
        self.read_versions().map.len()
    }

    /// The same entry with another refresh lease (or none); moka's timer keeps its expiry.
    fn with_refresh(stored: &Stored, refresh: Option<(u64, Duration)>, now: Duration) -> Stored {
        match stored {
            Stored::Entry {
                stamps,
                payload,
                expires,
                ..
            } => Stored::Entry {
                stamps: stamps.clone(),
                payload: payload.clone(),
                expires: *expires,
                ttl: expires.saturating_sub(now).max(Duration::from_millis(1)),
                refresh,
            },
            Stored::Lease {
                token,
                expires,
                ttl,
            } => Stored::Lease {
                token: *token,
                expires: *expires,
                ttl: *ttl,
            },
        }
    }

    fn current(&self, stamps: &[Stamp]) -> bool {
        let versions = self.read_versions();
        stamps
            .iter()
            .all(|s| versions.get(&s.key) == Some(s.version))
    }

    /// `keys` with their versions now (created if missing).
    fn stamp(&self, keys: &[TagKey]) -> Vec<Stamp> {
        keys.iter()
            .map(|k| Stamp {
                key: k.clone(),
                version: self.version(k),
            })
            .collect()
    }

    /// The tag clocks now (`clocks` are a namespace's, in shard order).
    fn clocks_now(&self, clocks: &[TagKey]) -> Vec<Stamp> {
        clocks
            .iter()
            .zip(self.tag_clocks.iter())
            .map(|(key, c)| Stamp {
                key: key.clone(),
                version: c.load(Ordering::SeqCst),
            })
            .collect()
    }

    /// What a read of `key` finds at `now`.
    fn lookup(&self, key: &EntryKey, now: Duration) -> Lookup {
        let Some(stored) = self.entries.get(key) else {
            return Lookup::Miss;
        };
        match self.judge(&stored, now) {
            Ok(p) => Lookup::Hit(p),
            Err(true) => Lookup::Pending,
            Err(false) => Lookup::Miss,
        }
    }

    /// The payload of what is stored if it is a live, valid entry; `Err(true)` for a live lease.
    fn judge(&self, stored: &Stored, now: Duration) -> Result<Bytes, bool> {
        if stored.expires() <= now {
            return Err(false);
        }
        match stored {
            Stored::Lease { .. } => Err(true),
            Stored::Entry {
                stamps, payload, ..
            } if self.current(stamps) => Ok(payload.clone()),
            Stored::Entry { .. } => Err(false),
        }
    }
}

/// Whether `stored` is still held by `lease`: its placeholder, or its live refresh lease.
fn holds(stored: Option<&Stored>, lease: &Lease, now: Duration) -> bool {
    match stored {
        Some(Stored::Lease { token, expires, .. }) => {
            !lease.refresh && *token == lease.token && *expires > now
        }
        Some(Stored::Entry {
            refresh: Some((token, until)),
            ..
        }) => lease.refresh && *token == lease.token && *until > now,
        _ => false,
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn kind(&self) -> Kind {
        Kind::Memory
    }

    fn reads_need_stamps(&self) -> bool {
        false
    }

    async fn get(&self, key: &EntryKey, _stamps: &[TagKey]) -> Result<Lookup, StoreError> {
        Ok(self.lookup(key, self.clock.now()))
    }

    async fn get_many(
        &self,
        keys: &[EntryKey],
        _stamps: &[Vec<TagKey>],
    ) -> Result<Vec<Lookup>, StoreError> {
        let now = self.clock.now();
        Ok(keys.iter().map(|k| self.lookup(k, now)).collect())
    }

    async fn claim(
        &self,
        key: &EntryKey,
        stamps: &[TagKey],
        clocks: &[TagKey],
        terms: ClaimTerms,
    ) -> Result<Claim, StoreError> {
        let now = self.clock.now();
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        let mut out = None;
        self.entries.entry_by_ref(key).and_compute_with(|cur| {
            if let Some(cur) = cur {
                match self.judge(cur.value(), now) {
                    Ok(p) => {
                        out = Some(Claim::Hit(p));
                        return Op::Nop;
                    }
                    Err(true) => {
                        out = Some(Claim::Pending);
                        return Op::Nop;
                    }
                    Err(false) => {}
                }
            }
            out = Some(Claim::Granted(Lease {
                token,
                refresh: false,
                stamps: self.stamp(stamps),
                clocks: self.clocks_now(clocks),
            }));
            Op::Put(Arc::new(Stored::Lease {
                token,
                expires: now + terms.lease,
                ttl: terms.lease,
            }))
        });
        out.ok_or_else(|| StoreError::Protocol("claim: no outcome".into()))
    }

    async fn claim_refresh(
        &self,
        key: &EntryKey,
        fresh_until: u64,
        stamps: &[TagKey],
        clocks: &[TagKey],
        terms: ClaimTerms,
    ) -> Result<Option<Lease>, StoreError> {
        let now = self.clock.now();
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        let mut out = None;
        self.entries.entry_by_ref(key).and_compute_with(|cur| {
            let Some(cur) = cur else { return Op::Nop };
            let stored = &**cur.value();
            let free = matches!(stored, Stored::Entry { refresh, .. }
                if refresh.is_none_or(|(_, until)| until <= now));
            let seen = self
                .judge(stored, now)
                .is_ok_and(|p| crate::envelope::freshness(&p) == Some(fresh_until));
            if !free || !seen {
                return Op::Nop;
            }
            out = Some(Lease {
                token,
                refresh: true,
                stamps: self.stamp(stamps),
                clocks: self.clocks_now(clocks),
            });
            Op::Put(Arc::new(Self::with_refresh(
                stored,
                Some((token, now + terms.lease)),
                now,
            )))
        });
        Ok(out)
    }

    async fn fill(
        &self,
        key: &EntryKey,
        lease: &Lease,
        learnt: &[TagKey],
        payload: Bytes,
        life: Lifetime,
    ) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let mut written = false;
        self.entries.entry_by_ref(key).and_compute_with(|cur| {
            let stored = cur.as_ref().map(|c| &**c.value());
            if !holds(stored, lease, now) {
                return Op::Nop;
            }
            // A refused refresh gives its lease back; a refused fill removes its placeholder.
            let refuse = || match stored {
                Some(s) if lease.refresh => Op::Put(Arc::new(Self::with_refresh(s, None, now))),
                _ => Op::Remove,
            };
            if !self.current(&lease.stamps) {
                return Op::Remove;
            }
            let mut stamps = lease.stamps.clone();
            if !learnt.is_empty() {
                // Tags known only now: no tag of their shards may have been invalidated since
                // the claim. The versions are read before the clocks are checked, and `bump`
                // advances a clock before any version, so a bump racing with this fill is
                // always seen.
                stamps.extend(self.stamp(learnt));
                let moved = learnt
                    .iter()
                    .any(|t| match (t.clock_shard(), lease.clock_for(t)) {
                        (Some(i), Some(c)) => {
                            self.tag_clocks[i].load(Ordering::SeqCst) != c.version
                        }
                        _ => true,
                    });
                if moved {
                    return refuse();
                }
            }
            written = true;
            Op::Put(Arc::new(Stored::Entry {
                stamps,
                payload,
                expires: now + life.ttl,
                ttl: life.ttl,
                refresh: None,
            }))
        });
        Ok(written)
    }

    async fn release(&self, key: &EntryKey, lease: &Lease) -> Result<(), StoreError> {
        let now = self.clock.now();
        self.entries.entry_by_ref(key).and_compute_with(|cur| {
            let stored = cur.as_ref().map(|c| &**c.value());
            match stored {
                Some(s) if holds(stored, lease, now) && lease.refresh => {
                    Op::Put(Arc::new(Self::with_refresh(s, None, now)))
                }
                Some(Stored::Lease { token, .. }) if *token == lease.token => Op::Remove,
                _ => Op::Nop,
            }
        });
        Ok(())
    }

    async fn set(
        &self,
        key: &EntryKey,
        stamps: &[TagKey],
        payload: Bytes,
        life: Lifetime,
    ) -> Result<(), StoreError> {
        let stored = Stored::Entry {
            stamps: self.stamp(stamps),
            payload,
            expires: self.clock.now() + life.ttl,
            ttl: life.ttl,
            refresh: None,
        };
        let stored = Arc::new(stored);
        self.entries
            .entry_by_ref(key)
            .and_compute_with(|_| Op::Put(stored));
        Ok(())
    }

    async fn delete(&self, keys: &[EntryKey]) -> Result<(), StoreError> {
        // Through the per-key lock, like fill: a plain `invalidate` could land between a
        // fill's check of its lease and its write.
        for k in keys {
            self.entries
                .entry_by_ref(k)
                .and_compute_with(|cur| match cur {
                    Some(_) => Op::Remove,
                    None => Op::Nop,
                });
        }
        Ok(())
    }

    async fn bump(&self, stamps: &[TagKey]) -> Result<(), StoreError> {
        // The clocks first: see `fill`.
        for i in stamps.iter().filter_map(TagKey::clock_shard) {
            self.tag_clocks[i].store(self.fresh_version(), Ordering::SeqCst);
        }
        let mut versions = self.write_versions();
        for k in stamps {
            if let Some(v) = versions.map.get_mut(k) {
                v.value = self.fresh_version();
            }
        }
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
