//! The store boundary: bytes, TTLs, leases and version stamps. Nothing typed crosses it.
//!
//! A store keeps entries under [`EntryKey`]s and integer versions under [`TagKey`]s. An entry
//! is written together with the versions of its stamp keys (the namespace epoch, its key
//! prefixes and its tags) *as they were read before its value was loaded*; it is valid only
//! while every one of those versions is unchanged. Invalidating a tag, a prefix or the whole
//! namespace is therefore one version bump, whatever the number or the TTLs of the entries.
//!
//! A missing version key never matches a stamp, so a version key that expired or was evicted
//! invalidates its entries instead of resurrecting them. Version keys are created on first use
//! with a fresh value (not 0) and kept alive at least as long as the entries stamped with them.
//!
//! Fills are fenced: [`Store::claim`] puts a lease placeholder in the entry's place and hands
//! out a token; [`Store::fill`] writes only while that placeholder is still there and every
//! stamp still current. Any delete of the key, or a bump of one of its stamps, voids the lease.
//!
//! Version keys outlive the entries stamped with them: every call that reads or creates
//! versions keeps them alive for a [`version_ttl`] computed by the engine from the entry's TTL
//! (see [`version_ttl`] for the rule).
//!
//! A stale entry (kept past its freshness, see [`crate::envelope`]) is refreshed in place:
//! [`Store::claim_refresh`] hands out a *refresh* lease while the entry stays readable, and a
//! fill with it writes only while that lease is held (any delete or write of the key voids it)
//! and every stamp is still current.
//!
//! Every implementation must behave the same; `tests/behaviour.rs` runs one suite against each
//! (the in-process store, standalone Redis and Redis Cluster).

use crate::error::StoreError;
use crate::key::{EntryKey, TagKey};
use async_trait::async_trait;
use bytes::Bytes;
use std::time::Duration;

pub mod chaos;
pub(crate) mod client;
pub mod cluster;
mod hints;
mod lua;
pub mod memory;
pub(crate) mod record;
pub mod redis;
pub mod tiered;
mod versions;

pub use chaos::{ChaosStore, Failing};
pub use client::redact;

pub use cluster::{ClusterConfig, ClusterStore};
pub use memory::MemoryStore;
pub use redis::{RedisConfig, RedisStore};
pub use tiered::{L1Config, TieredStore};

/// The outcome of a read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A valid entry: its payload (the engine's envelope).
    Hit(Bytes),
    /// Nothing valid is stored.
    Miss,
    /// Nothing is stored yet, and a loader holds the lease to fill it.
    Pending,
    /// Bytes that are not an entry of this store (written by something else, or damaged).
    Corrupt,
}

/// The outcome of [`Store::claim`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// A valid entry was there after all.
    Hit(Bytes),
    /// Another loader holds the lease.
    Pending,
    /// The caller holds the lease and should load, then [`Store::fill`].
    Granted(Lease),
}

/// A version key and the version it held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// The version key.
    pub key: TagKey,
    /// Its version then (0: it did not exist).
    pub version: i64,
}

/// A lease to fill one entry: the token in the placeholder (or, for a refresh, in the
/// entry's refresh lease), the stamp versions read when it was granted, and the namespace's
/// tag clocks then (for tags learnt from the loaded value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The token written in the placeholder.
    pub token: u64,
    /// Whether this is a refresh lease ([`Store::claim_refresh`]): the entry stays in place
    /// while it is held.
    pub refresh: bool,
    /// The stamp keys and their versions when the lease was granted.
    pub stamps: Vec<Stamp>,
    /// The tag clocks and their values when the lease was granted, in shard order (see
    /// [`crate::key::CLOCK_SHARDS`]).
    pub clocks: Vec<Stamp>,
}

impl Lease {
    /// The clock reading that fences a fill learning `tag`: that of the tag's shard.
    pub fn clock_for(&self, tag: &TagKey) -> Option<&Stamp> {
        self.clocks.get(tag.clock_shard()?)
    }
}

/// How long what a claim sets up lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimTerms {
    /// How long the lease holds if it is neither filled nor released.
    pub lease: Duration,
    /// How long, at least, the version keys of the stamps are kept alive from now.
    pub version_ttl: Duration,
}

/// How long what a write stores lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetime {
    /// How long the store keeps the entry.
    pub ttl: Duration,
    /// How long, at least, the version keys the entry is stamped with are kept alive from now.
    pub version_ttl: Duration,
}

impl Lifetime {
    /// The lifetime of an entry kept for `ttl` and written at most `delay` after the versions
    /// of its stamps were read (see [`version_ttl`]).
    pub fn new(ttl: Duration, delay: Duration) -> Self {
        Self {
            ttl,
            version_ttl: version_ttl(ttl, delay),
        }
    }
}

/// How long the version keys of an entry kept for `entry_ttl` must live when they are read or
/// created up to `delay` before the entry is written: twice the entry's TTL, plus the delay.
///
/// This is the one place the rule "version keys outlive the entries stamped with them" is
/// computed. A version key that died before its entries would only cost misses (a missing
/// version never matches a stamp, and a re-created one never repeats an old version), but
/// every such miss is a load: each read or creation of a version key therefore extends its
/// life to at least this, which covers the `delay` until the entry is written and its whole
/// TTL after, with as much again to spare.
pub fn version_ttl(entry_ttl: Duration, delay: Duration) -> Duration {
    entry_ttl * 2 + delay
}

/// What a store reports about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// In this process only.
    Memory,
    /// Shared through Redis.
    Redis,
}

/// The clocks a bump of `stamps` advances: those of the tags among them, each once.
pub(crate) fn clocks_to_advance(stamps: &[TagKey]) -> Vec<TagKey> {
    let mut out: Vec<TagKey> = Vec::new();
    for c in stamps.iter().filter_map(TagKey::clock) {
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// The stamps named for the `i`-th key of a [`Store::get_many`] (none when `stamps` is empty).
pub(crate) fn named(stamps: &[Vec<TagKey>], i: usize) -> &[TagKey] {
    stamps.get(i).map_or(&[], Vec::as_slice)
}

/// A cache backend. Implementations only move bytes; keys are made by [`crate::key`] and
/// values by the codec, so a store never sees user input unescaped.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Which kind of store this is.
    fn kind(&self) -> Kind;

    /// Reads an entry, checking its stamps. `stamps` are the version keys the caller expects
    /// the entry to carry (the store may fetch them with the entry); an entry carrying others
    /// is checked against those too.
    async fn get(&self, key: &EntryKey, stamps: &[TagKey]) -> Result<Lookup, StoreError>;

    /// Reads several entries at once, each checked as [`get`](Store::get) checks it, in one
    /// round trip where the store has round trips (a second one only where `get` would make
    /// one too, for all the keys at once). `stamps` is empty (none named) or holds the stamps
    /// expected of each key, in the order of `keys`. One [`Lookup`] per key, in that order.
    ///
    /// The default reads the keys one by one, concurrently; every store of this crate
    /// overrides it with a read of its own.
    async fn get_many(
        &self,
        keys: &[EntryKey],
        stamps: &[Vec<TagKey>],
    ) -> Result<Vec<Lookup>, StoreError> {
        let reads = keys
            .iter()
            .enumerate()
            .map(|(i, k)| self.get(k, named(stamps, i)));
        futures::future::try_join_all(reads).await
    }

    /// Whether [`get`](Store::get) needs the stamps named to answer exactly. A store that
    /// checks whatever stamps an entry carries by itself returns `false`, and its reads are
    /// then made with none named (saving the caller from building them). Defaults to `true`.
    fn reads_need_stamps(&self) -> bool {
        true
    }

    /// On a miss: returns the entry if one became valid meanwhile, `Pending` if another loader
    /// holds the lease, or grants a lease for `terms.lease` and returns the current versions
    /// of `stamps` (creating the missing ones and keeping each alive for at least
    /// `terms.version_ttl`) and of the tag `clocks`.
    async fn claim(
        &self,
        key: &EntryKey,
        stamps: &[TagKey],
        clocks: &[TagKey],
        terms: ClaimTerms,
    ) -> Result<Claim, StoreError>;

    /// For an entry that is valid but stale: grants a refresh lease for `terms.lease`, with
    /// the current versions of `stamps` and of the tag `clocks` (as [`claim`](Store::claim)),
    /// leaving the entry readable meanwhile. Only the entry the caller saw is refreshed: its
    /// envelope must still say it is fresh until `fresh_until` (see [`crate::envelope`]).
    /// `None` if another refresh lease is held, or if the key holds no such entry (it was
    /// refreshed meanwhile, or is gone: the caller reads or claims again).
    async fn claim_refresh(
        &self,
        key: &EntryKey,
        fresh_until: u64,
        stamps: &[TagKey],
        clocks: &[TagKey],
        terms: ClaimTerms,
    ) -> Result<Option<Lease>, StoreError>;

    /// Writes `payload` for `life.ttl` if the lease is still held and its stamps still
    /// current. `learnt` are tags learnt from the loaded value: the entry is stamped with
    /// their current versions, and written only if the clock of each one's shard has not
    /// moved since the claim (no tag of those shards was invalidated during the load).
    /// Returns whether it was written.
    async fn fill(
        &self,
        key: &EntryKey,
        lease: &Lease,
        learnt: &[TagKey],
        payload: Bytes,
        life: Lifetime,
    ) -> Result<bool, StoreError>;

    /// Gives a lease back without filling (the loader failed), if it is still held.
    async fn release(&self, key: &EntryKey, lease: &Lease) -> Result<(), StoreError>;

    /// Writes `payload` for `life.ttl` unconditionally, stamped with the current versions of
    /// `stamps`; voids any lease on the key.
    async fn set(
        &self,
        key: &EntryKey,
        stamps: &[TagKey],
        payload: Bytes,
        life: Lifetime,
    ) -> Result<(), StoreError>;

    /// Deletes entries (and voids their leases, refresh leases included).
    async fn delete(&self, keys: &[EntryKey]) -> Result<(), StoreError>;

    /// Bumps versions: every entry stamped with one of them becomes invalid. For every tag
    /// among them, first advances the clock of its shard ([`TagKey::clock`]), so that fills
    /// learning a tag of that shard during a load that overlapped are refused. Prefixes and
    /// the epoch advance no clock: they are known before a load, and fenced as stamps.
    async fn bump(&self, stamps: &[TagKey]) -> Result<(), StoreError>;

    /// Checks that the store answers.
    async fn ping(&self) -> Result<(), StoreError>;
}
