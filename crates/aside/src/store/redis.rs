//! The Redis store: redis-rs `ConnectionManager` and a handful of Lua scripts (`lua/`).
//!
//! Entries, leases and versions are written as `store::record` describes. A read
//! is one `GET` of the entry, compared with the versions held in process and kept exact by
//! client tracking (see `store::versions`); where tracking is off or refused, one
//! `MGET` of the entry and its version keys, read atomically.
//!
//! Every other operation is one Lua script, which sees the entry and its version keys at
//! once: the claim writes the placeholder and reads the versions, the fill compares the
//! lease and the versions and writes, the bump moves versions and the tag clock.
//!
//! Every call is bounded by the command timeout (see `store::client`). The
//! connection is made lazily: a store can be built while Redis is down, and reconnects by
//! itself.

mod many;

use super::client::{self, Link, backend_error, bounded, int, ms, redact};
use super::hints::Hints;
use super::lua::{standalone, with_prelude};
use super::record::{self, payload_of, record_of};
use super::versions::{Check, Tracker};
use super::{Claim, ClaimTerms, Kind, Lease, Lifetime, Lookup, Stamp, Store};
use crate::error::StoreError;
use crate::key::{EntryKey, TagKey};
use async_trait::async_trait;
use bytes::Bytes;
use redis::{Script, Value};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How to reach Redis.
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    pub url: String,
    /// Upper bound of every command, from sending to reply (default 250 ms; enforced within
    /// 5 ms).
    pub command_timeout: Duration,
    /// Upper bound of one connection attempt (default 1 s).
    pub connect_timeout: Duration,
    /// How many keys' learnt tags to remember, so their reads stay one round trip
    /// (default 100,000, rounded up to a power of two; 0 keeps none).
    pub stamp_hints: u64,
    /// How many version keys to keep in process, kept exact by Redis client tracking, so
    /// that a read is one `GET` instead of an `MGET` of the entry and its version keys
    /// (default 65,536; 0 keeps none). Needs RESP3 and `CLIENT TRACKING` (Redis 6 or later;
    /// an ACL user needs `+client|tracking +client|caching`); without them reads use `MGET`.
    pub tracked_versions: u64,
    /// A PEM file of the CA (or CAs) to trust for a `rediss://` URL instead of the system's
    /// roots: for a Redis whose certificate a private CA signed (default none).
    pub tls_ca_file: Option<PathBuf>,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact(&self.url))
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("stamp_hints", &self.stamp_hints)
            .field("tracked_versions", &self.tracked_versions)
            .field("tls_ca_file", &self.tls_ca_file)
            .finish()
    }
}

impl RedisConfig {
    /// A configuration with the default timeouts.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            command_timeout: Duration::from_millis(250),
            connect_timeout: Duration::from_secs(1),
            stamp_hints: 100_000,
            tracked_versions: 65_536,
            tls_ca_file: None,
        }
    }
}

struct Scripts {
    claim: Script,
    claim_refresh: Script,
    fill: Script,
    release: Script,
    set: Script,
    bump: Script,
}

impl Scripts {
    fn new() -> Self {
        let checked = |body: &str| Script::new(&with_prelude(body));
        Self {
            claim: checked(standalone::CLAIM),
            claim_refresh: checked(standalone::CLAIM_REFRESH),
            fill: checked(standalone::FILL),
            release: Script::new(standalone::RELEASE),
            set: checked(standalone::SET),
            bump: Script::new(standalone::BUMP),
        }
    }
}

/// A [`Store`] on a standalone Redis server (TLS and ACL users through the URL).
#[derive(Clone)]
pub struct RedisStore {
    conn: Arc<Link>,
    scripts: Arc<Scripts>,
    timeout: Duration,
    tokens: Arc<AtomicU64>,
    url: String,
    /// Per key, the stamps its entry carried that the caller did not name (tags learnt from
    /// a loaded value): read in the same `MGET` next time. Only a hint: a wrong or missing
    /// one costs a second round trip, never a wrong answer.
    hints: Arc<Hints>,
    /// Versions kept in process and the connection that keeps them exact (none when
    /// `tracked_versions` is 0).
    tracker: Option<Arc<Tracker>>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl RedisStore {
    /// Builds the store without connecting: the first command connects. Must be called
    /// inside a Tokio runtime. Fails if the URL cannot be parsed, or if the thread that
    /// bounds store calls cannot be started.
    pub fn new(config: &RedisConfig) -> Result<Self, crate::error::BuildError> {
        crate::deadline::start().map_err(crate::error::BuildError::DeadlineThread)?;
        let client = client::open(&config.url, config.tls_ca_file.as_deref())?;
        let tracker = (config.tracked_versions > 0)
            .then(|| Tracker::new(&client, config.tracked_versions, config.connect_timeout))
            .flatten()
            .map(Arc::new);
        let conn = Arc::new(Link::new(client, config.connect_timeout)?);
        Ok(Self {
            conn,
            scripts: Arc::new(Scripts::new()),
            timeout: config.command_timeout,
            tokens: Arc::new(AtomicU64::new(record::token_seed())),
            url: redact(&config.url),
            hints: Arc::new(Hints::new(config.stamp_hints)),
            tracker,
        })
    }

    /// A call on the main connection, bounded by the command timeout; its outcome counts
    /// towards replacing the connection (see [`Link`]).
    async fn bounded<T>(
        &self,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let r = bounded(self.timeout, fut).await;
        self.conn.record(&r);
        r
    }

    /// A call on the tracking connection of `t`, bounded by the command timeout; its outcome
    /// counts towards replacing that connection.
    async fn bounded_tracked<T>(
        &self,
        t: &Tracker,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        let r = bounded(self.timeout, fut).await;
        t.record(&r);
        r
    }
}

impl RedisStore {
    /// A read without versions held: one `MGET` of the entry and the versions it is expected
    /// to carry, read atomically.
    async fn get_mget(&self, key: &EntryKey, stamps: &[TagKey]) -> Result<Lookup, StoreError> {
        // Room for the names asked for and a few learnt ones, so building it does not regrow.
        let size = key.as_str().len() + stamps.iter().map(|s| s.as_str().len()).sum::<usize>();
        let mut cmd = redis::Cmd::with_capacity(stamps.len() + 6, size + 160);
        cmd.arg("MGET").arg(key.as_str());
        for s in stamps {
            cmd.arg(s.as_str());
        }
        let hinted = self.hints.each(key, |s| {
            cmd.arg(s);
        });
        let named = stamps.len() + hinted;
        // The i-th name asked for, as the command holds it (the reply follows its order).
        let name = |i: usize| match cmd.args_iter().nth(i + 2) {
            Some(redis::Arg::Simple(b)) => b,
            _ => &[],
        };
        let mut conn = self.conn.get();
        // Sent as it is and the reply taken as it comes: no boxed future, no conversion.
        let reply = self.bounded(conn.send_packed_command(&cmd)).await?;
        let mut vals = match reply {
            Value::Array(v) if v.len() == named + 1 => v,
            Value::ServerError(e) => return Err(backend_error(e.into(), self.timeout)),
            // Not the reply itself: it may hold whole cached values.
            _ => return Err(StoreError::Protocol("get: reply length".into())),
        };
        let entry = match std::mem::replace(&mut vals[0], Value::Nil) {
            Value::BulkString(b) => b,
            Value::Nil => return Ok(Lookup::Miss),
            _ => return Err(StoreError::Protocol("get: entry is not a string".into())),
        };
        let record = match record_of(&entry) {
            Ok(r) => r,
            Err(not) => return Ok(not),
        };
        let version = |i: usize| match &vals[i + 1] {
            Value::BulkString(b) => Some(b.as_slice()),
            _ => None,
        };
        let mut others = Vec::new();
        let mut unnamed = 0;
        for (k, v) in record.stamps() {
            let at = (0..named).position(|i| name(i) == k);
            if at.is_none_or(|i| i >= stamps.len()) {
                unnamed += 1;
            }
            match at {
                Some(i) if version(i) == Some(v) => {}
                Some(_) => return Ok(Lookup::Miss),
                None => others.push((k, v)),
            }
        }
        if !others.is_empty() || unnamed != hinted {
            let learnt: Vec<String> = record
                .stamps()
                .filter(|(k, _)| !stamps.iter().any(|s| s.as_str().as_bytes() == *k))
                .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
                .collect();
            self.hints.insert(key, learnt.into());
        }
        if !others.is_empty() {
            // Stamps nobody named. Checking them after the entry was read is still exact:
            // versions never return to an earlier value, so a match now means no bump
            // happened since the entry was written.
            let mut cmd = redis::cmd("MGET");
            for (k, _) in &others {
                cmd.arg(*k);
            }
            let now: Vec<Option<Vec<u8>>> = self.bounded(cmd.query_async(&mut conn)).await?;
            if now.len() != others.len()
                || others
                    .iter()
                    .zip(&now)
                    .any(|((_, v), n)| n.as_deref() != Some(*v))
            {
                return Ok(Lookup::Miss);
            }
        }
        let at = record.payload_at;
        Ok(Lookup::Hit(payload_of(entry, at)))
    }

    /// A read over the tracking connection: one `GET` of the entry, its stamps compared with
    /// the versions held in process (exact when the reply arrives, see [`super::versions`]);
    /// the versions not held are read then, with tracking, and kept.
    async fn get_tracked(
        &self,
        t: &Tracker,
        mut conn: redis::aio::MultiplexedConnection,
        key: &EntryKey,
    ) -> Result<Lookup, StoreError> {
        let mut cmd = redis::Cmd::with_capacity(2, key.as_str().len() + 3);
        cmd.arg("GET").arg(key.as_str());
        let entry = match self
            .bounded_tracked(t, conn.send_packed_command(&cmd))
            .await?
        {
            Value::BulkString(b) => b,
            // Not a string (as `MGET` would say): nothing cached there.
            Value::Nil => return Ok(Lookup::Miss),
            Value::ServerError(e) if e.code() == "WRONGTYPE" => return Ok(Lookup::Miss),
            Value::ServerError(e) => return Err(backend_error(e.into(), self.timeout)),
            _ => return Err(StoreError::Protocol("get: entry is not a string".into())),
        };
        let record = match record_of(&entry) {
            Ok(r) => r,
            Err(not) => return Ok(not),
        };
        let held = &t.versions;
        let mut unknown = Vec::new();
        for (k, v) in record.stamps() {
            match held.check(k, v) {
                Check::Same => {}
                Check::Changed => return Ok(Lookup::Miss),
                Check::Unknown => unknown.push((k, v)),
            }
        }
        // Read after the entry, and still exact: versions never return to an earlier value,
        // so a match now means no bump happened since the entry was written. Boxed: rare.
        if !unknown.is_empty() && !Box::pin(self.fetch_versions(t, conn, &unknown)).await? {
            return Ok(Lookup::Miss);
        }
        let at = record.payload_at;
        Ok(Lookup::Hit(payload_of(entry, at)))
    }

    /// Reads `unknown` versions over the tracking connection, with tracking, and keeps them;
    /// says whether each is still the one the entry carries.
    async fn fetch_versions(
        &self,
        t: &Tracker,
        conn: redis::aio::MultiplexedConnection,
        unknown: &[(&[u8], &[u8])],
    ) -> Result<bool, StoreError> {
        let keys: Vec<&[u8]> = unknown.iter().map(|(k, _)| *k).collect();
        let now = self.track_versions(t, conn, &keys).await?;
        Ok(unknown
            .iter()
            .zip(&now)
            .all(|((_, v), n)| n.as_deref() == Some(*v)))
    }
}

/// The key holding a lease's token: the entry itself, or its refresh key.
fn lease_key(key: &EntryKey, lease: &Lease) -> String {
    if lease.refresh {
        key.refresh_key()
    } else {
        key.as_str().to_owned()
    }
}

fn payload_or(v: Value, what: &str) -> Result<Option<Lookup>, StoreError> {
    match v {
        Value::BulkString(b) => Ok(Some(Lookup::Hit(Bytes::from(b)))),
        Value::Int(0) => Ok(Some(Lookup::Miss)),
        Value::Int(2) => Ok(Some(Lookup::Pending)),
        Value::Int(3) => Ok(Some(Lookup::Corrupt)),
        Value::Array(_) => Ok(None),
        other => Err(StoreError::Protocol(format!("{what}: {other:?}"))),
    }
}

/// The lease a claim script granted: its reply is a value per clock, then a version per
/// stamp.
fn granted(
    vers: &[Value],
    token: u64,
    refresh: bool,
    stamps: &[TagKey],
    clocks: &[TagKey],
    what: &str,
) -> Result<Lease, StoreError> {
    let Some(parsed) = vers.iter().map(int).collect::<Option<Vec<_>>>() else {
        return Err(StoreError::Protocol(format!("{what}: version")));
    };
    if parsed.len() != clocks.len() + stamps.len() {
        return Err(StoreError::Protocol(format!("{what}: stamp count")));
    }
    let (at, vers) = parsed.split_at(clocks.len());
    let read = |keys: &[TagKey], vals: &[i64]| {
        keys.iter()
            .zip(vals)
            .map(|(key, &version)| Stamp {
                key: key.clone(),
                version,
            })
            .collect()
    };
    Ok(Lease {
        token,
        refresh,
        stamps: read(stamps, vers),
        clocks: read(clocks, at),
    })
}

#[async_trait]
impl Store for RedisStore {
    fn kind(&self) -> Kind {
        Kind::Redis
    }

    /// With versions held in process, a read checks the stamps the entry carries; without,
    /// the stamps named go into the read's `MGET`.
    fn reads_need_stamps(&self) -> bool {
        self.tracker.is_none()
    }

    async fn get(&self, key: &EntryKey, stamps: &[TagKey]) -> Result<Lookup, StoreError> {
        if let Some(t) = &self.tracker
            && let Some(conn) = t.conn()
        {
            return self.get_tracked(t, conn, key).await;
        }
        // Boxed: the hot read above stays a small future to move around.
        Box::pin(self.get_mget(key, stamps)).await
    }

    /// One `MGET` of every entry (with versions held in process), or of every entry and the
    /// versions named and hinted for them (without): see `many.rs`.
    async fn get_many(
        &self,
        keys: &[EntryKey],
        stamps: &[Vec<TagKey>],
    ) -> Result<Vec<Lookup>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(t) = &self.tracker
            && let Some(conn) = t.conn()
        {
            return self.get_many_tracked(t, conn, keys).await;
        }
        self.get_many_mget(keys, stamps).await
    }

    async fn claim(
        &self,
        key: &EntryKey,
        stamps: &[TagKey],
        clocks: &[TagKey],
        terms: ClaimTerms,
    ) -> Result<Claim, StoreError> {
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.conn.get();
        let mut inv = self.scripts.claim.key(key.as_str());
        for k in clocks.iter().chain(stamps) {
            inv.key(k.as_str());
        }
        inv.arg(token)
            .arg(ms(terms.lease))
            .arg(ms(terms.version_ttl))
            .arg(clocks.len());
        let v: Value = self.bounded(inv.invoke_async(&mut conn)).await?;
        if let Value::Array(vers) = &v {
            let lease = granted(vers, token, false, stamps, clocks, "claim")?;
            return Ok(Claim::Granted(lease));
        }
        match payload_or(v, "claim")? {
            Some(Lookup::Hit(b)) => Ok(Claim::Hit(b)),
            Some(Lookup::Pending) => Ok(Claim::Pending),
            _ => Err(StoreError::Protocol("claim: miss".into())),
        }
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
        let mut conn = self.conn.get();
        let mut inv = self.scripts.claim_refresh.key(key.as_str());
        inv.key(key.refresh_key());
        for k in clocks.iter().chain(stamps) {
            inv.key(k.as_str());
        }
        inv.arg(token)
            .arg(ms(terms.lease))
            .arg(ms(terms.version_ttl))
            .arg(fresh_until)
            .arg(clocks.len());
        match self.bounded(inv.invoke_async(&mut conn)).await? {
            Value::Array(vers) => {
                granted(&vers, token, true, stamps, clocks, "claim_refresh").map(Some)
            }
            Value::Int(0 | 2) => Ok(None),
            other => Err(StoreError::Protocol(format!("claim_refresh: {other:?}"))),
        }
    }

    async fn fill(
        &self,
        key: &EntryKey,
        lease: &Lease,
        learnt: &[TagKey],
        payload: Bytes,
        life: Lifetime,
    ) -> Result<bool, StoreError> {
        let clocks = learnt
            .iter()
            .map(|t| lease.clock_for(t))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| StoreError::Protocol("fill: a learnt tag has no clock".into()))?;
        let mut conn = self.conn.get();
        let mut inv = self.scripts.fill.key(key.as_str());
        inv.key(lease_key(key, lease));
        for s in &lease.stamps {
            inv.key(s.key.as_str());
        }
        for k in learnt {
            inv.key(k.as_str());
        }
        for c in &clocks {
            inv.key(c.key.as_str());
        }
        inv.arg(lease.token)
            .arg(ms(life.ttl))
            .arg(payload.as_ref())
            .arg(ms(life.version_ttl))
            .arg(lease.stamps.len());
        for s in &lease.stamps {
            inv.arg(s.version);
        }
        for c in &clocks {
            inv.arg(c.version);
        }
        let n: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(n == 1)
    }

    async fn release(&self, key: &EntryKey, lease: &Lease) -> Result<(), StoreError> {
        let mut conn = self.conn.get();
        let mut inv = self.scripts.release.key(lease_key(key, lease));
        inv.arg(lease.token);
        let _: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(())
    }

    async fn set(
        &self,
        key: &EntryKey,
        stamps: &[TagKey],
        payload: Bytes,
        life: Lifetime,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.get();
        let mut inv = self.scripts.set.key(key.as_str());
        inv.key(key.refresh_key());
        for s in stamps {
            inv.key(s.as_str());
        }
        inv.arg(ms(life.ttl))
            .arg(ms(life.version_ttl))
            .arg(payload.as_ref());
        let _: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(())
    }

    async fn delete(&self, keys: &[EntryKey]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.get();
        let mut cmd = redis::cmd("DEL");
        for k in keys {
            cmd.arg(k.as_str()).arg(k.refresh_key());
        }
        let _: i64 = self.bounded(cmd.query_async(&mut conn)).await?;
        Ok(())
    }

    async fn bump(&self, stamps: &[TagKey]) -> Result<(), StoreError> {
        if stamps.is_empty() {
            return Ok(());
        }
        let clocks = super::clocks_to_advance(stamps);
        let mut conn = self.conn.get();
        let mut inv = self.scripts.bump.prepare_invoke();
        for k in clocks.iter().chain(stamps) {
            inv.key(k.as_str());
        }
        inv.arg(clocks.len());
        let _: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.get();
        let _: String = self
            .bounded(redis::cmd("PING").query_async(&mut conn))
            .await?;
        Ok(())
    }
}
