//! The Redis Cluster store: redis-rs's async cluster connection, the standalone store's record
//! format, and scripts that each touch one slot.
//!
//! An entry and its refresh lease share a slot (`ns:e:{<key>}`, `ns:r:{<key>}`, see
//! [`EntryKey::hash_tagged`]); its stamp keys (the epoch, its prefixes, its tags, the tag
//! clocks) hash to other slots, so no script can see them together. The cluster store keeps the
//! standalone store's guarantees without that atomicity:
//!
//! - **Per-entry changes are atomic on the entry's slot.** Claim (placeholder written only if
//!   the key is empty, holds bytes that are no record, or holds the very entry the caller
//!   found invalid), fill and release
//!   (compare-and-set on the lease token), set and delete are scripts or commands on that
//!   slot alone.
//! - **Versions only increase** (created from the server's time in microseconds, bumped to
//!   `max(v + 1, now)`), so a stamp that no longer matches never matches again: an entry's
//!   stamps can be compared with the current versions at any later moment, in any order.
//! - **Versions are read after the lease is taken and before the load**: a claim writes its
//!   placeholder first, then reads (creating the missing ones) the versions of its stamps and
//!   the tag clocks. A bump after that read makes the entry the load writes invalid; a delete
//!   after the placeholder voids the fill. The stamp check a fill makes is only an early
//!   refusal (it keeps invalid entries out of Redis), not what makes fills safe.
//! - **Tags learnt from the loaded value**: a fill reads their versions first and the clocks
//!   of their shards after; [`Store::bump`] advances the clocks of the tags it bumps before
//!   any version. A bump whose clock advance the fill did not see had not bumped the tags
//!   when the fill read them, so the entry carries the old versions and is invalid; one it
//!   saw refuses the fill.
//! - **A read takes the entry first, then its stamps' versions**: if they still match, the
//!   entry was valid when it was read.
//!
//! Round trips per operation (a multi-key command or a set of scripts on several slots is
//! sent to every slot at once; redis-rs splits `MGET` and `DEL` per slot):
//!
//! | operation | round trips |
//! | --- | --- |
//! | get | 1 (miss, lease, corrupt); 2 on a hit (`GET`, then `MGET` of its stamps) |
//! | get_many | 2 for any number of keys (`MGET` of the entries, then of their stamps) |
//! | claim | 2 (placeholder, then versions); 2 more if an invalid entry was in the way |
//! | claim_refresh | 2 (refresh lease, then its stamps and versions) |
//! | fill | 2 (stamps, then compare-and-set); 3 with tags learnt from the value |
//! | set | 2 (versions, then write) |
//! | delete, release | 1 |
//! | bump | 2 (the clocks of the tags, then the versions); 1 for prefixes and the epoch |
//!
//! A claim takes its lease before it reads the versions, so it can fail with the lease
//! taken (a node of a stamp does not answer in time): it then gives the lease back in the
//! background, so that other instances need not wait for it to lapse.
//!
//! Scripts are loaded on a node only when it first runs them, not on every node at once, so
//! a node that does not answer stops only the calls that need it.
//!
//! Every call, connecting included, is bounded by the command timeout. The store is built
//! without connecting; the first call connects (and each call after a failed attempt tries
//! again), so a cache can be built while the cluster is down.

mod config;
mod many;
mod scripts;
mod stamps;

pub use config::ClusterConfig;

use super::client::{self, backend_error, ms, redact};
use super::record::{self, encode_record, parse_record, record_of, version_of};
use super::{Claim, ClaimTerms, Kind, Lease, Lifetime, Lookup, Store};
use crate::error::{BuildError, StoreError};
use crate::key::{EntryKey, TagKey};
use async_trait::async_trait;
use bytes::Bytes;
use futures::future::{try_join, try_join_all};
use redis::Value;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use scripts::{Scripts, by_slot};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::OnceCell;

/// A [`Store`] on a Redis Cluster (TLS and ACL users through the URLs).
///
/// Entries and their stamps live in different slots, on different nodes; see the
/// [module documentation](self) for how fills stay fenced and tags exact without cross-slot
/// atomicity, and what each operation costs.
///
/// ```
/// use aside::store::{ClusterConfig, ClusterStore};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// // Nothing is connected yet: the first call connects.
/// let store = ClusterStore::new(&ClusterConfig::new(["redis://127.0.0.1:7000"])).unwrap();
/// let cache = aside::Cache::builder().store(std::sync::Arc::new(store)).build().unwrap();
/// # drop(cache);
/// # });
/// ```
#[derive(Clone)]
pub struct ClusterStore {
    client: ClusterClient,
    conn: Arc<OnceCell<ClusterConnection>>,
    scripts: Arc<Scripts>,
    timeout: Duration,
    tokens: Arc<AtomicU64>,
    urls: Vec<String>,
}

impl fmt::Debug for ClusterStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterStore")
            .field("urls", &self.urls)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ClusterStore {
    /// Builds the store without connecting. Fails if the URLs cannot be used (none, one that
    /// does not parse, or different credentials on different nodes), or if the thread that
    /// bounds store calls cannot be started.
    pub fn new(config: &ClusterConfig) -> Result<Self, BuildError> {
        let urls: Vec<String> = config.urls.iter().map(|u| redact(u)).collect();
        let scrub = |e: redis::RedisError| client::url_error(&e, &config.urls);
        if config.urls.is_empty() {
            return Err(BuildError::RedisUrl("no cluster node given".into()));
        }
        crate::deadline::start().map_err(BuildError::DeadlineThread)?;
        client::check_tls(&config.urls, config.tls_ca_file.as_deref())?;
        if config.urls.iter().any(|u| u.starts_with("rediss:")) {
            client::install_tls_provider();
        }
        let mut builder = ClusterClientBuilder::new(config.urls.iter().map(String::as_str))
            .tcp_settings(client::with_keepalive(TcpSettings::default()));
        if let Some(certs) = client::tls_certificates(config.tls_ca_file.as_deref())? {
            builder = builder.certs(certs);
        }
        let client = builder
            .connection_timeout(config.connect_timeout)
            // A request to a node that never answers is dropped inside redis-rs too, not only
            // abandoned by the store's own timeout.
            .response_timeout(config.command_timeout)
            // Retries follow MOVED/ASK redirections; the store's timeout bounds them all.
            .retries(2)
            .min_retry_wait(10)
            .max_retry_wait(100)
            .build()
            .map_err(scrub)?;
        Ok(Self {
            client,
            conn: Arc::new(OnceCell::new()),
            scripts: Arc::new(Scripts::new()),
            timeout: config.command_timeout,
            tokens: Arc::new(AtomicU64::new(record::token_seed())),
            urls,
        })
    }

    /// The connection, made on first use; a failed attempt leaves it unmade for the next call.
    async fn conn(&self) -> Result<ClusterConnection, StoreError> {
        self.conn
            .get_or_try_init(|| async {
                self.client
                    .get_async_connection()
                    .await
                    .map_err(|e| self.error(e))
            })
            .await
            .cloned()
    }

    fn error(&self, e: redis::RedisError) -> StoreError {
        backend_error(e, self.timeout)
    }

    async fn bounded<T>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        client::bounded(self.timeout, fut).await
    }

    /// Gives back, in the background, a lease taken by a call that failed after taking it
    /// (its versions could not be read in time), so that other instances need not wait for
    /// it to lapse. Best effort: if this fails too, the lease lapses by itself.
    fn release_later(&self, key: String, token: u64) {
        let store = self.clone();
        tokio::spawn(async move {
            let _ = store
                .bounded(async {
                    let conn = store.conn().await?;
                    store.release_key(&conn, &key, token).await
                })
                .await;
        });
    }

    async fn release_key(
        &self,
        conn: &ClusterConnection,
        key: &str,
        token: u64,
    ) -> Result<(), StoreError> {
        let _: i64 = self
            .scripts
            .release
            .on([key])
            .arg(token)
            .run(conn)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }
}

#[async_trait]
impl Store for ClusterStore {
    fn kind(&self) -> Kind {
        Kind::Redis
    }

    fn reads_need_stamps(&self) -> bool {
        false
    }

    async fn get(&self, key: &EntryKey, _stamps: &[TagKey]) -> Result<Lookup, StoreError> {
        let (entry_key, _) = key.hash_tagged();
        self.bounded(async {
            let mut conn = self.conn().await?;
            let entry: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&entry_key)
                .query_async(&mut conn)
                .await
                .map_err(|e| self.error(e))?;
            let Some(entry) = entry else {
                return Ok(Lookup::Miss);
            };
            let record = match record_of(&entry) {
                Ok(r) => r,
                Err(not) => return Ok(not),
            };
            // The stamps the entry carries, read after it: a match now means no bump since it
            // was written (versions never return to an earlier value).
            if !self
                .current(&conn, &record.stamps().collect::<Vec<_>>())
                .await?
            {
                return Ok(Lookup::Miss);
            }
            let at = record.payload_at;
            Ok(Lookup::Hit(record::payload_of(entry, at)))
        })
        .await
    }

    /// Two `MGET`s for all the keys: the entries, then their stamps (see `many.rs`).
    async fn get_many(
        &self,
        keys: &[EntryKey],
        _stamps: &[Vec<TagKey>],
    ) -> Result<Vec<Lookup>, StoreError> {
        self.read_many(keys).await
    }

    async fn claim(
        &self,
        key: &EntryKey,
        stamps: &[TagKey],
        clocks: &[TagKey],
        terms: ClaimTerms,
    ) -> Result<Claim, StoreError> {
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        let (entry_key, _) = key.hash_tagged();
        let taken = AtomicBool::new(false);
        let claim = self
            .bounded(async {
                let conn = self.conn().await?;
                let mut invalid: Vec<u8> = Vec::new();
                // Each turn finds another record in the way (written meanwhile): a few turns, then
                // the caller treats the key as busy.
                for _ in 0..3 {
                    let call = self.scripts.claim.on([entry_key.as_str()]);
                    match call
                        .arg(token)
                        .arg(ms(terms.lease))
                        .arg(&invalid)
                        .run::<Value>(&conn)
                        .await
                        .map_err(|e| self.error(e))?
                    {
                        Value::Int(1) => {
                            taken.store(true, Ordering::Relaxed);
                            // The placeholder is in place: only now read the versions.
                            let (stamps, clocks) = self
                                .lease_for(&conn, stamps, clocks, terms.version_ttl)
                                .await?;
                            return Ok(Claim::Granted(Lease {
                                token,
                                refresh: false,
                                stamps,
                                clocks,
                            }));
                        }
                        Value::Int(2) => return Ok(Claim::Pending),
                        Value::BulkString(v) => {
                            let Some(record) = parse_record(&v) else {
                                return Err(StoreError::Protocol("claim: record".into()));
                            };
                            if self
                                .current(&conn, &record.stamps().collect::<Vec<_>>())
                                .await?
                            {
                                let at = record.payload_at;
                                return Ok(Claim::Hit(Bytes::from(v).slice(at..)));
                            }
                            // Invalid for good: replace it if it is still the one read.
                            invalid = record.head(&v).to_vec();
                        }
                        other => return Err(StoreError::Protocol(format!("claim: {other:?}"))),
                    }
                }
                Ok(Claim::Pending)
            })
            .await;
        if claim.is_err() && taken.load(Ordering::Relaxed) {
            self.release_later(entry_key, token);
        }
        claim
    }

    async fn claim_refresh(
        &self,
        key: &EntryKey,
        fresh_until: u64,
        stamps: &[TagKey],
        clocks: &[TagKey],
        terms: ClaimTerms,
    ) -> Result<Option<Lease>, StoreError> {
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        let (entry_key, refresh_key) = key.hash_tagged();
        let taken = AtomicBool::new(false);
        let claim = self
            .bounded(async {
                let conn = self.conn().await?;
                let call = self.scripts.claim_refresh.on([&*entry_key, &*refresh_key]);
                let head = match call
                    .arg(token)
                    .arg(ms(terms.lease))
                    .arg(fresh_until)
                    .run::<Value>(&conn)
                    .await
                    .map_err(|e| self.error(e))?
                {
                    Value::BulkString(head) => {
                        taken.store(true, Ordering::Relaxed);
                        head
                    }
                    Value::Int(0 | 2) => return Ok(None),
                    other => return Err(StoreError::Protocol(format!("claim_refresh: {other:?}"))),
                };
                let Some(record) = parse_record(&head) else {
                    return Err(StoreError::Protocol("claim_refresh: record".into()));
                };
                // The refresh lease is held: check the entry and read the versions, all at once.
                let (valid, (stamps, clocks)) = try_join(
                    self.current(&conn, &record.stamps().collect::<Vec<_>>()),
                    self.lease_for(&conn, stamps, clocks, terms.version_ttl),
                )
                .await?;
                if !valid {
                    self.release_key(&conn, &refresh_key, token).await?;
                    return Ok(None);
                }
                Ok(Some(Lease {
                    token,
                    refresh: true,
                    stamps,
                    clocks,
                }))
            })
            .await;
        if claim.is_err() && taken.load(Ordering::Relaxed) {
            self.release_later(refresh_key, token);
        }
        claim
    }

    async fn fill(
        &self,
        key: &EntryKey,
        lease: &Lease,
        learnt: &[TagKey],
        payload: Bytes,
        life: Lifetime,
    ) -> Result<bool, StoreError> {
        let (entry_key, held) = lease_keys(key, lease);
        self.bounded(async {
            let conn = self.conn().await?;
            // Tags known only now: their versions first, the clocks of their shards after (see
            // the module docs).
            let clocks = learnt
                .iter()
                .map(|t| lease.clock_for(t))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| StoreError::Protocol("fill: a learnt tag has no clock".into()))?;
            let learnt_keys: Vec<&str> = learnt.iter().map(TagKey::as_str).collect();
            let learnt_vers = if learnt.is_empty() {
                Vec::new()
            } else {
                self.versions(&conn, &learnt_keys, life.version_ttl).await?
            };
            let mut keys: Vec<&[u8]> = lease
                .stamps
                .iter()
                .map(|s| s.key.as_str().as_bytes())
                .collect();
            keys.extend(clocks.iter().map(|c| c.key.as_str().as_bytes()));
            let now = self.mget(&conn, &keys).await?;
            let (now_stamps, now_clocks) = now.split_at(lease.stamps.len());
            let stamps_current = lease
                .stamps
                .iter()
                .zip(now_stamps)
                .all(|(s, n)| n.is_some() && version_of(n.as_deref()) == Some(s.version));
            let clocks_still = clocks
                .iter()
                .zip(now_clocks)
                .all(|(c, n)| version_of(n.as_deref()) == Some(c.version));
            if !stamps_current || !clocks_still {
                self.release_key(&conn, &held, lease.token).await?;
                return Ok(false);
            }
            let stamps: Vec<(&str, i64)> = lease
                .stamps
                .iter()
                .map(|s| (s.key.as_str(), s.version))
                .chain(learnt_keys.iter().copied().zip(learnt_vers))
                .collect();
            let call = self.scripts.fill.on([&*entry_key, &*held]);
            let n: i64 = call
                .arg(lease.token)
                .arg(ms(life.ttl))
                .arg(encode_record(&stamps, &payload))
                .run(&conn)
                .await
                .map_err(|e| self.error(e))?;
            Ok(n == 1)
        })
        .await
    }

    async fn release(&self, key: &EntryKey, lease: &Lease) -> Result<(), StoreError> {
        let (_, held) = lease_keys(key, lease);
        self.bounded(async {
            let conn = self.conn().await?;
            self.release_key(&conn, &held, lease.token).await
        })
        .await
    }

    async fn set(
        &self,
        key: &EntryKey,
        stamps: &[TagKey],
        payload: Bytes,
        life: Lifetime,
    ) -> Result<(), StoreError> {
        let (entry_key, refresh_key) = key.hash_tagged();
        self.bounded(async {
            let conn = self.conn().await?;
            let keys: Vec<&str> = stamps.iter().map(TagKey::as_str).collect();
            let vers = self.versions(&conn, &keys, life.version_ttl).await?;
            let stamps: Vec<(&str, i64)> = keys.iter().copied().zip(vers).collect();
            let call = self.scripts.put.on([&*entry_key, &*refresh_key]);
            let _: i64 = call
                .arg(ms(life.ttl))
                .arg(encode_record(&stamps, &payload))
                .run(&conn)
                .await
                .map_err(|e| self.error(e))?;
            Ok(())
        })
        .await
    }

    async fn delete(&self, keys: &[EntryKey]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        self.bounded(async {
            let mut conn = self.conn().await?;
            // One DEL; redis-rs splits it per slot (an entry and its refresh key share one).
            let mut cmd = redis::cmd("DEL");
            for k in keys {
                let (entry, refresh) = k.hash_tagged();
                cmd.arg(entry).arg(refresh);
            }
            let _: i64 = cmd
                .query_async(&mut conn)
                .await
                .map_err(|e| self.error(e))?;
            Ok(())
        })
        .await
    }

    async fn bump(&self, stamps: &[TagKey]) -> Result<(), StoreError> {
        if stamps.is_empty() {
            return Ok(());
        }
        self.bounded(async {
            let conn = self.conn().await?;
            // The clocks strictly before any version: fills with learnt tags rely on it.
            let clocks = super::clocks_to_advance(stamps);
            let clock_keys: Vec<&str> = clocks.iter().map(TagKey::as_str).collect();
            try_join_all(by_slot(&clock_keys).into_iter().map(|group| {
                let n = group.len();
                let call = self
                    .scripts
                    .bump
                    .on(group.into_iter().map(|i| clock_keys[i]));
                call.arg(n).run::<i64>(&conn)
            }))
            .await
            .map_err(|e| self.error(e))?;
            let keys: Vec<&str> = stamps.iter().map(TagKey::as_str).collect();
            try_join_all(by_slot(&keys).into_iter().map(|group| {
                let call = self.scripts.bump.on(group.into_iter().map(|i| keys[i]));
                call.arg(0).run::<i64>(&conn)
            }))
            .await
            .map_err(|e| self.error(e))?;
            Ok(())
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.bounded(async {
            let mut conn = self.conn().await?;
            // Sent to every primary: the store answers only if every node does.
            let _: Value = redis::cmd("PING")
                .query_async(&mut conn)
                .await
                .map_err(|e| self.error(e))?;
            Ok(())
        })
        .await
    }
}

/// The entry's key and the key `lease` is held on (the refresh key for a refresh lease), both
/// in the entry's slot.
fn lease_keys(key: &EntryKey, lease: &Lease) -> (String, String) {
    let (entry_key, refresh_key) = key.hash_tagged();
    let held = if lease.refresh {
        refresh_key
    } else {
        entry_key.clone()
    };
    (entry_key, held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_urls_are_refused_without_showing_passwords() {
        let none = ClusterStore::new(&ClusterConfig::new(Vec::<String>::new()));
        assert!(matches!(none, Err(BuildError::RedisUrl(_))));
        assert!(ClusterStore::new(&ClusterConfig::new(["not a url"])).is_err());
        let mixed = ClusterConfig::new(["redis://u:secret@h:1", "redis://u:other@h:2"]);
        match ClusterStore::new(&mixed) {
            Err(e) => assert!(!e.to_string().contains("secret"), "{e}"),
            Ok(_) => panic!("different passwords accepted"),
        }
        let ok = ClusterStore::new(&ClusterConfig::new(["redis://u:secret@h:1"])).unwrap();
        assert!(!format!("{ok:?}").contains("secret"));
    }
}
