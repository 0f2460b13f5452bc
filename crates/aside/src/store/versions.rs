//! Version keys cached in process, kept exact by Redis client tracking.
//!
//! A read of an entry must compare the versions its stamp line lists with the versions the
//! version keys hold *when the entry is read*. Without a cache that is one `MGET` of the entry
//! and its version keys per read. With it, a read is one `GET` of the entry, compared with
//! the versions held here, and the version keys are read only when they are not here.
//!
//! # Why it is exact
//! The reads go over a dedicated RESP3 connection with `CLIENT TRACKING ON OPTIN`, and the
//! version keys are fetched with `CLIENT CACHING YES` in front of the `MGET`: from then on,
//! Redis sends an invalidation message on *that* connection whenever one of them changes
//! (bumped, expired, evicted, flushed). Redis writes the message into the connection's
//! stream before the reply of any command it runs after the change, and redis-rs hands it to
//! [`Tracker`] synchronously, on the connection's own task, before it completes later
//! replies. So when the reply of a `GET` arrives, every change made before Redis ran that
//! `GET` has already removed its key from here: a version found here after the reply is the
//! one the key held when the entry was read, and the comparison is the one `MGET` would make.
//!
//! A fetch races with the invalidations of what it fetches: each shard keeps a generation,
//! incremented by every removal; a fetched version is kept only if its shard's generation
//! is the one read before the fetch was sent. A connection that ends (or is replaced)
//! clears everything, since the messages it would have carried are lost.
//!
//! # When it is not used
//! If the server refuses RESP3 or `CLIENT TRACKING` (Redis before 6, an ACL user without
//! `client`), the store reads with `MGET` as without the cache; while the tracking connection
//! is being made (or made again) the same. Either way, answers are the same; only the cost
//! differs.

use super::client::REPLACE_AFTER_TIMEOUTS;
use crate::error::StoreError;
use bytes::Bytes;
use hashbrown::HashTable;
use metrics::{Counter, counter};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ProtocolVersion, PushInfo, PushKind, Value};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tracing::{debug, info};

/// Shards of the cache (a power of two); the top bits of a key's hash choose one.
const SHARDS: usize = 64;

/// Version keys cached in process: key → the version Redis held, as exact bytes.
pub(crate) struct Versions {
    shards: Box<[Mutex<Shard>]>,
    /// Most keys per shard.
    per_shard: usize,
    hasher: foldhash::fast::RandomState,
}

#[derive(Default)]
struct Shard {
    /// Incremented by every removal: a fetch that saw an older value must not insert.
    generation: u64,
    table: HashTable<(Box<[u8]>, Bytes)>,
}

/// What [`Versions::check`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// The key is held, with this version.
    Same,
    /// The key is held, with another version.
    Changed,
    /// The key is not held.
    Unknown,
}

impl Versions {
    /// A cache of at most about `capacity` keys (at least one per shard).
    pub(crate) fn new(capacity: u64) -> Self {
        let per_shard = (capacity as usize).div_ceil(SHARDS).max(1);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            per_shard,
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    fn shard(&self, key: &[u8]) -> (u64, MutexGuard<'_, Shard>) {
        let h = self.hasher.hash_one(key);
        let i = (h >> 58) as usize & (SHARDS - 1);
        // A shard holds plain data: a panic elsewhere while it was locked leaves it usable.
        let guard = self.shards[i]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (h, guard)
    }

    /// Whether `key` is held, and with `version` or another.
    pub(crate) fn check(&self, key: &[u8], version: &[u8]) -> Check {
        let (h, shard) = self.shard(key);
        match shard.table.find(h, |e| &*e.0 == key) {
            Some((_, v)) if v.as_ref() == version => Check::Same,
            Some(_) => Check::Changed,
            None => Check::Unknown,
        }
    }

    /// The generation of `key`'s shard: read before fetching `key`, given to `insert`.
    pub(crate) fn generation(&self, key: &[u8]) -> u64 {
        self.shard(key).1.generation
    }

    /// Keeps `version` for `key` unless something in its shard was removed since `generation`.
    pub(crate) fn insert(&self, key: &[u8], version: Bytes, generation: u64) {
        let (h, mut shard) = self.shard(key);
        if shard.generation != generation {
            return;
        }
        let hasher = &self.hasher;
        if let Some(e) = shard.table.find_mut(h, |e| &*e.0 == key) {
            e.1 = version;
            return;
        }
        if shard.table.len() >= self.per_shard {
            // Full: drop one key (it is fetched again when next needed).
            let victim = shard.table.iter().next().map(|e| hasher.hash_one(&*e.0));
            if let Some(vh) = victim
                && let Ok(e) = shard.table.find_entry(vh, |_| true)
            {
                e.remove();
            }
        }
        shard
            .table
            .insert_unique(h, (key.into(), version), |e| hasher.hash_one(&*e.0));
    }

    /// Forgets `key` (Redis said it changed).
    pub(crate) fn remove(&self, key: &[u8]) {
        let (h, mut shard) = self.shard(key);
        shard.generation += 1;
        if let Ok(e) = shard.table.find_entry(h, |e| &*e.0 == key) {
            e.remove();
        }
    }

    /// Forgets everything (a flush, or the connection that carried the messages ended).
    pub(crate) fn clear(&self) {
        for s in self.shards.iter() {
            let mut s = s.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            s.generation += 1;
            s.table.clear();
        }
    }

    /// How many keys are held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.table.len()).unwrap_or(0))
            .sum()
    }
}

/// Applies one message of the tracking connection.
fn on_push(versions: &Versions, alive: &AtomicBool, dropped: &Counter, push: PushInfo) {
    match push.kind {
        PushKind::Invalidate => match push.data.first() {
            Some(Value::Array(keys)) => {
                dropped.increment(keys.len() as u64);
                for k in keys {
                    match k {
                        Value::BulkString(k) => versions.remove(k),
                        // Not a key name: nothing tells which key changed.
                        _ => versions.clear(),
                    }
                }
            }
            // After FLUSHALL / FLUSHDB the server names no key.
            _ => versions.clear(),
        },
        PushKind::Disconnection => {
            versions.clear();
            alive.store(false, Ordering::SeqCst);
        }
        _ => {}
    }
}

enum State {
    /// No connection; one may be attempted from `retry_at`.
    Idle { retry_at: Instant },
    /// A connection attempt is under way.
    Connecting,
    /// Tracking is on; `alive` turns false when the connection ends.
    Ready(MultiplexedConnection, Arc<AtomicBool>),
    /// The server refused RESP3 or tracking: never tried again.
    Refused,
}

/// The tracking connection and the versions it keeps exact.
pub(crate) struct Tracker {
    client: Client,
    pub(crate) versions: Arc<Versions>,
    /// Version keys read because they were not held (`aside_versions_fetched_total`).
    pub(crate) fetched: Counter,
    /// Held versions Redis said changed (`aside_versions_dropped_total`).
    dropped: Counter,
    /// Tracking connections made (`aside_versions_connections_total`).
    connections: Counter,
    state: Mutex<State>,
    connect_timeout: Duration,
    /// Consecutive timed-out calls on the tracking connection: at
    /// [`REPLACE_AFTER_TIMEOUTS`] it is taken for dead and made again.
    timeouts: AtomicU32,
}

/// Wait after a failed connection attempt before the next.
const RETRY: Duration = Duration::from_millis(500);

impl Tracker {
    /// A tracker for the server of `client` (whose protocol is set to RESP3 here).
    pub(crate) fn new(client: &Client, capacity: u64, connect_timeout: Duration) -> Option<Self> {
        let info = client.get_connection_info().clone();
        let redis = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = Client::open(info.set_redis_settings(redis)).ok()?;
        Some(Self {
            client,
            versions: Arc::new(Versions::new(capacity)),
            fetched: counter!("aside_versions_fetched_total"),
            dropped: counter!("aside_versions_dropped_total"),
            connections: counter!("aside_versions_connections_total"),
            state: Mutex::new(State::Idle {
                retry_at: Instant::now(),
            }),
            connect_timeout,
            timeouts: AtomicU32::new(0),
        })
    }

    /// Counts the outcome of a call on the tracking connection (see [`Tracker::timeouts`]).
    pub(crate) fn record<T>(&self, outcome: &Result<T, StoreError>) {
        if matches!(outcome, Err(StoreError::Timeout(_))) {
            self.timeouts.fetch_add(1, Ordering::Relaxed);
        } else if self.timeouts.load(Ordering::Relaxed) != 0 {
            self.timeouts.store(0, Ordering::Relaxed);
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The tracking connection, if it is up; else `None`, and a connection attempt is started
    /// in the background when one is due. Must be called inside a Tokio runtime.
    pub(crate) fn conn(self: &Arc<Self>) -> Option<MultiplexedConnection> {
        let mut st = self.state();
        match &*st {
            State::Ready(c, alive)
                if alive.load(Ordering::SeqCst)
                    && self.timeouts.load(Ordering::Relaxed) < REPLACE_AFTER_TIMEOUTS =>
            {
                return Some(c.clone());
            }
            State::Ready(..) => {
                // Lost, or silent for several calls in a row (a dead path): made again.
                debug!("version tracking connection lost");
                self.timeouts.store(0, Ordering::Relaxed);
                self.versions.clear();
                *st = State::Idle {
                    retry_at: Instant::now(),
                };
            }
            _ => {}
        }
        if let State::Idle { retry_at } = *st
            && Instant::now() >= retry_at
        {
            *st = State::Connecting;
            let me = self.clone();
            tokio::spawn(async move { me.connect().await });
        }
        None
    }

    async fn connect(&self) {
        let alive = Arc::new(AtomicBool::new(true));
        let (versions, flag, dropped) =
            (self.versions.clone(), alive.clone(), self.dropped.clone());
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None)
            .set_push_sender(move |push: PushInfo| {
                on_push(&versions, &flag, &dropped, push);
                Ok::<(), redis::aio::SendError>(())
            });
        let attempt = async {
            let mut c = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("CLIENT")
                .arg("TRACKING")
                .arg("ON")
                .arg("OPTIN")
                .query_async::<()>(&mut c)
                .await?;
            Ok::<_, redis::RedisError>(c)
        };
        let result = tokio::time::timeout(self.connect_timeout * 2, attempt).await;
        let mut st = self.state();
        *st = match result {
            Ok(Ok(c)) => {
                // Nothing held may predate this connection's messages.
                self.versions.clear();
                self.connections.increment(1);
                debug!("version tracking connection up");
                State::Ready(c, alive)
            }
            Ok(Err(e)) if refusal(&e) => {
                info!(error = %e, "version tracking refused by the server; reads use MGET");
                State::Refused
            }
            // Not now (LOADING, BUSY, ...) or no answer: tried again later.
            Ok(Err(e)) => {
                debug!(error = %e, "version tracking connection failed");
                State::Idle {
                    retry_at: Instant::now() + RETRY,
                }
            }
            Err(_) => State::Idle {
                retry_at: Instant::now() + RETRY,
            },
        };
    }
}

/// Server errors that say "not now" rather than "no": a server loading its dataset after a
/// restart (`LOADING`), busy with a script (`BUSY`), a replica without its master
/// (`MASTERDOWN`), a cluster mid-change (`TRYAGAIN`, `CLUSTERDOWN`), a node demoted during a
/// failover (`READONLY`). A tracking connection refused with one is tried again later.
const TRANSIENT: [&str; 6] = [
    "LOADING",
    "BUSY",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "READONLY",
];

/// Whether an error is the server saying no for good (as opposed to not answering, or not
/// now).
fn refusal(e: &redis::RedisError) -> bool {
    !(e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || e.code().is_some_and(|code| TRANSIENT.contains(&code)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn a_version_is_held_until_removed() {
        let v = Versions::new(1000);
        assert_eq!(v.check(b"a:g", b"1"), Check::Unknown);
        let g = v.generation(b"a:g");
        v.insert(b"a:g", b("1"), g);
        assert_eq!(v.check(b"a:g", b"1"), Check::Same);
        assert_eq!(v.check(b"a:g", b"2"), Check::Changed);
        v.remove(b"a:g");
        assert_eq!(v.check(b"a:g", b"1"), Check::Unknown);
    }

    #[test]
    fn a_fetch_that_raced_with_a_removal_is_not_kept() {
        let v = Versions::new(1000);
        let g = v.generation(b"a:t:x");
        // The message for the key arrives while its fetch is in flight.
        v.remove(b"a:t:x");
        v.insert(b"a:t:x", b("7"), g);
        assert_eq!(v.check(b"a:t:x", b"7"), Check::Unknown);
        // And a clear voids every fetch in flight.
        let g = v.generation(b"a:t:y");
        v.clear();
        v.insert(b"a:t:y", b("7"), g);
        assert_eq!(v.check(b"a:t:y", b"7"), Check::Unknown);
    }

    #[test]
    fn the_cache_stays_within_its_bound() {
        let v = Versions::new(64);
        for i in 0..10_000 {
            let k = format!("a:t:{i}");
            let g = v.generation(k.as_bytes());
            v.insert(k.as_bytes(), b("1"), g);
        }
        assert!(v.len() <= 64, "{} held", v.len());
        // Replacing a held key does not grow it.
        let g = v.generation(b"a:t:9999");
        v.insert(b"a:t:9999", b("2"), g);
        assert_eq!(v.check(b"a:t:9999", b"2"), Check::Same);
    }

    fn push(kind: PushKind, data: Vec<Value>) -> PushInfo {
        PushInfo { kind, data }
    }

    #[test]
    fn messages_remove_what_they_name_and_a_disconnection_everything() {
        let v = Versions::new(1000);
        let alive = AtomicBool::new(true);
        let dropped = Counter::noop();
        for k in ["a:g", "a:p:x:", "a:t:y"] {
            let g = v.generation(k.as_bytes());
            v.insert(k.as_bytes(), b("1"), g);
        }
        let keys = vec![Value::Array(vec![Value::BulkString(b"a:g".to_vec())])];
        on_push(&v, &alive, &dropped, push(PushKind::Invalidate, keys));
        assert_eq!(v.check(b"a:g", b"1"), Check::Unknown);
        assert_eq!(v.check(b"a:p:x:", b"1"), Check::Same);
        // A flush names no key.
        on_push(
            &v,
            &alive,
            &dropped,
            push(PushKind::Invalidate, vec![Value::Nil]),
        );
        assert_eq!(v.len(), 0);
        let g = v.generation(b"a:t:y");
        v.insert(b"a:t:y", b("1"), g);
        on_push(&v, &alive, &dropped, push(PushKind::Disconnection, vec![]));
        assert_eq!(v.len(), 0);
        assert!(!alive.load(Ordering::SeqCst));
    }
}
