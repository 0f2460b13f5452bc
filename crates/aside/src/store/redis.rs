//! The Redis store: redis-rs `ConnectionManager` and a handful of Lua scripts.
//!
//! An entry is stored as one string: a stamp line, then the engine's payload:
//!
//! ```text
//! 3 app:g 1764150000123456 app:p:product: 1764150000123457 app:t:category:c1 1764150000123460
//! 1 0 v
//! {"id":"p1","name":"Product 1",...}
//! ```
//!
//! The stamp line lists the version keys the entry depends on and the versions they had; a
//! read returns the payload only while each of those keys still holds that version. A read
//! is one `GET` of the entry, compared with the versions held in process and kept exact by
//! client tracking (below); where tracking is off or refused, one `MGET` of the entry and its
//! version keys. A lease placeholder is the string `L <token>`; the refresh lease of a
//! stale entry is the same string under the entry's refresh key (`ns:r:<key>`).
//!
//! Version keys hold decimal integers. They are created with the server's time in
//! microseconds and bumped to `max(current + 1, now)`, so a version key that expired and was
//! created again never repeats an old version.
//!
//! # Versions held in process
//! Reads go over a dedicated RESP3 connection with `CLIENT TRACKING ON OPTIN`, and version
//! keys are fetched with `CLIENT CACHING YES` in front of the `MGET`: from then on Redis sends
//! an invalidation message on that connection whenever one of them changes (bumped by any
//! instance, expired, evicted, flushed). Redis writes the message into the connection's
//! stream before the reply of any command it runs after the change, and the store applies it
//! before it takes later replies. So once the reply of a `GET` is in, every change made before
//! Redis ran that `GET` has removed its key from the process: a version still held is the one
//! the key had when the entry was read, and the comparison is the one an `MGET` would make.
//! A version fetched while a message about its key was on the way is not kept, and a lost
//! connection forgets everything held (the messages it would have carried are lost too).
//! Entries are never held in process by this store (that is the L1's job).
//!
//! Every call is bounded by the command timeout, whatever the state of the TCP connection
//! (a paused server never answers; the timeout decides). The connection is made lazily: a
//! store can be built while Redis is down, and reconnects by itself.

use super::hints::Hints;
use super::versions::{Check, Tracker};
use super::{Claim, Kind, Lease, Lookup, Store};
use crate::error::StoreError;
use crate::key::{EntryKey, TagKey};
use async_trait::async_trait;
use bytes::{Buf, Bytes};
use redis::aio::ConnectionManager;
use redis::{Client, Script, Value};
use std::fmt;
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
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact(&self.url))
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("stamp_hints", &self.stamp_hints)
            .field("tracked_versions", &self.tracked_versions)
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
        }
    }
}

/// Hides the password of a connection URL: `redis://user:***@host:6379`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let cred = &url[s + 3..at];
            let user = cred.split(':').next().unwrap_or("");
            format!("{}://{}:***@{}", &url[..s], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Lua helpers shared by every script: `lease(v)`, `check(v, shape_only)` and
/// `version(key, keep_ms)`.
pub(crate) const CHECK: &str = r#"
local function lease(v)
  return string.byte(v, 1) == 76 and string.match(v, '^L %d+$') ~= nil
end
-- The payload of a valid record; else nil and 0 (stale stamps) or 3 (not a record). With
-- shape_only, the stamps are not read: only whether v is a well-formed record.
local function check(v, shape_only)
  local nl = string.find(v, '\n', 1, true)
  if not nl then return nil, 3 end
  local head = string.sub(v, 1, nl - 1)
  local i = string.find(head, ' ', 1, true)
  if not i then return nil, 3 end
  local n = tonumber(string.sub(head, 1, i - 1))
  if not n then return nil, 3 end
  local count, stale = 0, false
  while i do
    local j = string.find(head, ' ', i + 1, true)
    if not j then return nil, 3 end
    local e = string.find(head, ' ', j + 1, true)
    local ver = string.sub(head, j + 1, (e or (#head + 1)) - 1)
    if not string.match(ver, '^%d+$') then return nil, 3 end
    count = count + 1
    if not stale and not shape_only and redis.call('GET', string.sub(head, i + 1, j - 1)) ~= ver then
      stale = true
    end
    i = e
  end
  if count ~= n then return nil, 3 end
  if stale then return nil, 0 end
  return string.sub(v, nl + 1)
end
local function version(k, keep)
  local v = redis.call('GET', k)
  if not v then
    local t = redis.call('TIME')
    v = t[1] .. string.sub('000000' .. t[2], -6)
    redis.call('SET', k, v, 'PX', keep)
  else
    local pt = redis.call('PTTL', k)
    if pt >= 0 and pt < tonumber(keep) then redis.call('PEXPIRE', k, keep) end
  end
  return v
end
"#;

const CLAIM: &str = r#"
local v = redis.call('GET', KEYS[1])
if v then
  if lease(v) then return 2 end
  local p = check(v)
  if p then return p end
end
redis.call('SET', KEYS[1], 'L ' .. ARGV[1], 'PX', ARGV[2])
local out = { redis.call('GET', KEYS[2]) or '0' }
for i = 3, #KEYS do out[#out + 1] = version(KEYS[i], ARGV[3]) end
return out
"#;

// KEYS: entry, its refresh key, clock, stamps. ARGV: token, lease ms, keep ms, fresh until.
const CLAIM_REFRESH: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v or lease(v) then return 0 end
local p = check(v)
if not p or string.match(p, '^1 %d+ [vn] (%d+)\n') ~= ARGV[4] then return 0 end
if not redis.call('SET', KEYS[2], 'L ' .. ARGV[1], 'NX', 'PX', ARGV[2]) then return 2 end
local out = { redis.call('GET', KEYS[3]) or '0' }
for i = 4, #KEYS do out[#out + 1] = version(KEYS[i], ARGV[3]) end
return out
"#;

// KEYS: entry, the lease's key (the entry itself, or its refresh key), clock, the lease's n
// stamps, then tags learnt from the loaded value.
// ARGV: token, ttl ms, payload, keep ms, clock at claim, n, the n versions.
const FILL: &str = r#"
if redis.call('GET', KEYS[2]) ~= 'L ' .. ARGV[1] then return 0 end
local n = tonumber(ARGV[6])
local h = {}
for i = 1, n do
  local k, v = KEYS[3 + i], ARGV[6 + i]
  if redis.call('GET', k) ~= v then
    redis.call('DEL', KEYS[2])
    return 0
  end
  h[#h + 1] = k
  h[#h + 1] = v
end
if #KEYS > 3 + n then
  -- Tags known only now: no tag may have been invalidated since the claim.
  if (redis.call('GET', KEYS[3]) or '0') ~= ARGV[5] then
    redis.call('DEL', KEYS[2])
    return 0
  end
  for i = 4 + n, #KEYS do
    h[#h + 1] = KEYS[i]
    h[#h + 1] = version(KEYS[i], ARGV[4])
  end
end
redis.call('SET', KEYS[1], tostring(#h / 2) .. ' ' .. table.concat(h, ' ') .. '\n' .. ARGV[3], 'PX', ARGV[2])
if KEYS[2] ~= KEYS[1] then redis.call('DEL', KEYS[2]) end
return 1
"#;

/// KEYS: the lease's key. ARGV: its token. Deletes the key if it still holds the lease.
pub(crate) const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == 'L ' .. ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"#;

// KEYS: entry, its refresh key, stamps. A write voids any refresh in flight.
const SET: &str = r#"
redis.call('DEL', KEYS[2])
local h = { tostring(#KEYS - 2) }
for i = 3, #KEYS do
  h[#h + 1] = KEYS[i]
  h[#h + 1] = version(KEYS[i], ARGV[2])
end
redis.call('SET', KEYS[1], table.concat(h, ' ') .. '\n' .. ARGV[3], 'PX', ARGV[1])
return 1
"#;

/// KEYS: the namespace's tag clock if ARGV[1] is `1`, then the version keys to bump.
pub(crate) const BUMP: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1] .. string.sub('000000' .. t[2], -6))
local first = 1
if ARGV[1] == '1' then
  first = 2
  if redis.call('INCR', KEYS[1]) == 1 then
    -- A new (or evicted) clock starts from the time, so it never repeats an earlier value.
    redis.call('SET', KEYS[1], string.format('%.0f', now))
  end
end
for i = first, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if v then
    local n = tonumber(v)
    if n == nil or n + 1 < now then
      redis.call('SET', KEYS[i], string.format('%.0f', now), 'KEEPTTL')
    else
      redis.call('INCR', KEYS[i])
    end
  end
end
return 1
"#;

struct Scripts {
    claim: Script,
    claim_refresh: Script,
    fill: Script,
    release: Script,
    set: Script,
    bump: Script,
}

/// A script whose body uses the [`CHECK`] helpers.
pub(crate) fn with_check(body: &str) -> Script {
    Script::new(&format!("{CHECK}{body}"))
}

impl Scripts {
    fn new() -> Self {
        Self {
            claim: with_check(CLAIM),
            claim_refresh: with_check(CLAIM_REFRESH),
            fill: with_check(FILL),
            release: Script::new(RELEASE),
            set: with_check(SET),
            bump: Script::new(BUMP),
        }
    }
}

/// A [`Store`] on a standalone Redis server (TLS and ACL users through the URL).
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
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
        if config.url.starts_with("rediss:") {
            install_tls_provider();
        }
        let client = Client::open(config.url.as_str()).map_err(|e| {
            crate::error::BuildError::RedisUrl(
                e.to_string().replace(&config.url, &redact(&config.url)),
            )
        })?;
        let mgr = redis::aio::ConnectionManagerConfig::new()
            // The store's own timeout bounds every call (connecting included); a second,
            // per-request timer inside redis-rs would only cost a timer registration per call.
            .set_response_timeout(None)
            .set_connection_timeout(Some(config.connect_timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let tracker = (config.tracked_versions > 0)
            .then(|| Tracker::new(&client, config.tracked_versions, config.connect_timeout))
            .flatten()
            .map(Arc::new);
        let conn = ConnectionManager::new_lazy_with_config(client, mgr)
            .map_err(|e| crate::error::BuildError::RedisUrl(e.to_string()))?;
        Ok(Self {
            conn,
            scripts: Arc::new(Scripts::new()),
            timeout: config.command_timeout,
            tokens: Arc::new(AtomicU64::new(token_seed())),
            url: redact(&config.url),
            hints: Arc::new(Hints::new(config.stamp_hints)),
            tracker,
        })
    }

    async fn bounded<T>(
        &self,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        bounded(self.timeout, fut).await
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
        let mut conn = self.conn.clone();
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
        let entry = match self.bounded(conn.send_packed_command(&cmd)).await? {
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
        mut conn: redis::aio::MultiplexedConnection,
        unknown: &[(&[u8], &[u8])],
    ) -> Result<bool, StoreError> {
        let held = &t.versions;
        t.fetched.increment(unknown.len() as u64);
        let generations: Vec<u64> = unknown.iter().map(|(k, _)| held.generation(k)).collect();
        let mut mget = redis::cmd("MGET");
        for (k, _) in unknown {
            mget.arg(*k);
        }
        let mut pipe = redis::pipe();
        pipe.cmd("CLIENT")
            .arg("CACHING")
            .arg("YES")
            .ignore()
            .add_command(mget);
        let (now,): (Vec<Value>,) = self.bounded(pipe.query_async(&mut conn)).await?;
        if now.len() != unknown.len() {
            return Err(StoreError::Protocol("get: version count".into()));
        }
        let mut current = true;
        for (((k, v), n), g) in unknown.iter().zip(now).zip(generations) {
            match n {
                Value::BulkString(n) => {
                    current &= n == *v;
                    held.insert(k, Bytes::from(n), g);
                }
                _ => current = false,
            }
        }
        Ok(current)
    }
}

/// A Redis call bounded by `timeout`, whatever the state of its connection.
pub(crate) async fn bounded<T>(
    timeout: Duration,
    fut: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match crate::deadline::within(timeout, fut).await {
        Ok(r) => r.map_err(|e| backend_error(e, timeout)),
        Err(_) => Err(StoreError::Timeout(timeout)),
    }
}

/// rustls needs a process-wide crypto provider; installs ring's unless one is set.
pub(crate) fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Where a store's lease tokens start: distinct across processes sharing one Redis.
pub(crate) fn token_seed() -> u64 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    seed ^ u64::from(std::process::id()) << 32
}

/// A Redis error as a store error: a timeout inside redis-rs is a timeout like ours.
pub(crate) fn backend_error(e: redis::RedisError, timeout: Duration) -> StoreError {
    if e.is_timeout() {
        StoreError::Timeout(timeout)
    } else {
        StoreError::Backend(Arc::new(e))
    }
}

/// A duration in whole milliseconds for `PX`, at least 1.
pub(crate) fn ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

/// The key holding a lease's token: the entry itself, or its refresh key.
pub(crate) fn lease_key(key: &EntryKey, lease: &Lease) -> String {
    if lease.refresh {
        key.refresh_key()
    } else {
        key.as_str().to_owned()
    }
}

/// The payload of a record read whole: the tail of the reply's own buffer (no copy, no second
/// allocation).
fn payload_of(entry: Vec<u8>, at: usize) -> Bytes {
    let mut payload = Bytes::from(entry);
    payload.advance(at);
    payload
}

/// The record an entry read whole holds; else what the read answers: `Pending` for a lease
/// placeholder, `Corrupt` for bytes that are no record.
fn record_of(entry: &[u8]) -> Result<Record<'_>, Lookup> {
    if is_lease(entry) {
        return Err(Lookup::Pending);
    }
    parse_record(entry).ok_or(Lookup::Corrupt)
}

/// Whether a stored value is a lease placeholder (`L <token>`).
pub(crate) fn is_lease(v: &[u8]) -> bool {
    v.len() > 2 && v.starts_with(b"L ") && v[2..].iter().all(u8::is_ascii_digit)
}

/// A parsed stamp line: `<n> <key> <version> ...\n`, then the payload.
#[derive(Debug, PartialEq)]
pub(crate) struct Record<'a> {
    /// The stamp line after its count: `<key> <version> ...`.
    line: &'a [u8],
    /// Where the payload starts.
    pub(crate) payload_at: usize,
}

impl<'a> Record<'a> {
    /// The stamp keys and the versions recorded with them.
    pub(crate) fn stamps(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + use<'a> {
        let mut rest = Some(self.line);
        std::iter::from_fn(move || {
            let line = rest?;
            let (key, after) = split_space(line)?;
            let (version, next) = match split_space(after) {
                Some((version, next)) => (version, Some(next)),
                None => (after, None),
            };
            rest = next;
            Some((key, version))
        })
    }
}

/// `b` cut at its first space: what comes before, what comes after.
fn split_space(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = memchr::memchr(b' ', b)?;
    Some((&b[..at], &b[at + 1..]))
}

/// Parses a stored entry exactly as the Lua `check` does; `None` if it is not a record.
/// Read byte by byte (no `str` splitting or parsing): this runs on every cache hit.
pub(crate) fn parse_record(v: &[u8]) -> Option<Record<'_>> {
    let nl = memchr::memchr(b'\n', v)?;
    let (n, line) = split_space(&v[..nl])?;
    let n = crate::envelope::decimal(n).and_then(|n| usize::try_from(n).ok())?;
    // `<key> <version>` pairs, single spaces between: a key is not empty, a version is digits.
    let mut count = 0;
    let mut rest = line;
    loop {
        let (key, after) = split_space(rest)?;
        let (version, next) = match split_space(after) {
            Some((version, next)) => (version, Some(next)),
            None => (after, None),
        };
        if key.is_empty() || version.is_empty() || !version.iter().all(u8::is_ascii_digit) {
            return None;
        }
        count += 1;
        match next {
            Some(next) => rest = next,
            None => break,
        }
    }
    (count == n && n > 0).then_some(Record {
        line,
        payload_at: nl + 1,
    })
}

/// Writes a record: the stamp line (`<n> <key> <version> ...`), a newline, the payload. The
/// Lua scripts write the same bytes.
pub(crate) fn encode_record(stamps: &[(&str, i64)], payload: &[u8]) -> Vec<u8> {
    use std::fmt::Write as _;
    let mut head = stamps.len().to_string();
    for (k, v) in stamps {
        let _ = write!(head, " {k} {v}");
    }
    head.push('\n');
    let mut out = head.into_bytes();
    out.extend_from_slice(payload);
    out
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

/// An integer reply, or a decimal string reply.
pub(crate) fn int(v: &Value) -> Option<i64> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::Int(i) => Some(*i),
        _ => None,
    }
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

    async fn claim(
        &self,
        key: &EntryKey,
        stamps: &[TagKey],
        clock: &TagKey,
        lease: Duration,
        keep: Duration,
    ) -> Result<Claim, StoreError> {
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.claim.key(key.as_str());
        inv.key(clock.as_str());
        for s in stamps {
            inv.key(s.as_str());
        }
        inv.arg(token).arg(ms(lease)).arg(ms(keep));
        let v: Value = self.bounded(inv.invoke_async(&mut conn)).await?;
        if let Value::Array(vers) = &v {
            let parsed = vers.iter().map(int).collect::<Option<Vec<_>>>();
            let Some((clock_at, vers)) = parsed.as_deref().and_then(|v| v.split_first()) else {
                return Err(StoreError::Protocol("claim: version".into()));
            };
            if vers.len() != stamps.len() {
                return Err(StoreError::Protocol("claim: stamp count".into()));
            }
            return Ok(Claim::Granted(Lease {
                token,
                refresh: false,
                stamps: stamps.iter().cloned().zip(vers.iter().copied()).collect(),
                clock: (clock.clone(), *clock_at),
            }));
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
        clock: &TagKey,
        lease: Duration,
        keep: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let token = self.tokens.fetch_add(1, Ordering::Relaxed);
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.claim_refresh.key(key.as_str());
        inv.key(key.refresh_key()).key(clock.as_str());
        for s in stamps {
            inv.key(s.as_str());
        }
        inv.arg(token).arg(ms(lease)).arg(ms(keep)).arg(fresh_until);
        match self.bounded(inv.invoke_async(&mut conn)).await? {
            Value::Array(vers) => {
                let parsed = vers.iter().map(int).collect::<Option<Vec<_>>>();
                let Some((clock_at, vers)) = parsed.as_deref().and_then(|v| v.split_first()) else {
                    return Err(StoreError::Protocol("claim_refresh: version".into()));
                };
                if vers.len() != stamps.len() {
                    return Err(StoreError::Protocol("claim_refresh: stamp count".into()));
                }
                Ok(Some(Lease {
                    token,
                    refresh: true,
                    stamps: stamps.iter().cloned().zip(vers.iter().copied()).collect(),
                    clock: (clock.clone(), *clock_at),
                }))
            }
            Value::Int(0 | 2) => Ok(None),
            other => Err(StoreError::Protocol(format!("claim_refresh: {other:?}"))),
        }
    }

    async fn fill(
        &self,
        key: &EntryKey,
        lease: &Lease,
        late: &[TagKey],
        payload: Bytes,
        ttl: Duration,
        keep: Duration,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.fill.key(key.as_str());
        inv.key(lease_key(key, lease));
        inv.key(lease.clock.0.as_str());
        for (k, _) in &lease.stamps {
            inv.key(k.as_str());
        }
        for k in late {
            inv.key(k.as_str());
        }
        inv.arg(lease.token)
            .arg(ms(ttl))
            .arg(payload.as_ref())
            .arg(ms(keep))
            .arg(lease.clock.1)
            .arg(lease.stamps.len());
        for (_, v) in &lease.stamps {
            inv.arg(*v);
        }
        let n: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(n == 1)
    }

    async fn release(&self, key: &EntryKey, lease: &Lease) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
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
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.set.key(key.as_str());
        inv.key(key.refresh_key());
        for s in stamps {
            inv.key(s.as_str());
        }
        // Version keys outlive the entry by a margin, so the entry never outlives its stamps.
        inv.arg(ms(ttl)).arg(ms(ttl * 2)).arg(payload.as_ref());
        let _: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(())
    }

    async fn delete(&self, keys: &[EntryKey]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("DEL");
        for k in keys {
            cmd.arg(k.as_str()).arg(k.refresh_key());
        }
        let _: i64 = self.bounded(cmd.query_async(&mut conn)).await?;
        Ok(())
    }

    async fn bump(&self, stamps: &[TagKey], clock: &TagKey) -> Result<(), StoreError> {
        if stamps.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let mut inv = self.scripts.bump.key(clock.as_str());
        for s in stamps {
            inv.key(s.as_str());
        }
        inv.arg(1);
        let _: i64 = self.bounded(inv.invoke_async(&mut conn)).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = self
            .bounded(redis::cmd("PING").query_async(&mut conn))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn records_parse_like_the_lua_check() {
        let r = parse_record(b"2 a:g 17 a:t:x 3\n1 0 v\n{}").unwrap();
        assert_eq!(
            r.stamps().collect::<Vec<_>>(),
            vec![(&b"a:g"[..], &b"17"[..]), (&b"a:t:x"[..], &b"3"[..])]
        );
        assert_eq!(r.payload_at, 17);
        for bad in [
            &b"1 0 v\n1"[..],
            b"2 a:g 1\n",
            b"1 a:g 1 a:t 2\n",
            b"0\n",
            b"no newline",
            b"x a 1\n",
            b"1 a 1x\n",
        ] {
            assert_eq!(
                parse_record(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let rec = encode_record(&[("a:g", 17), ("a:t:x", 3)], b"1 0 v\n{}");
        assert_eq!(rec, b"2 a:g 17 a:t:x 3\n1 0 v\n{}");
        assert!(
            is_lease(b"L 42") && !is_lease(b"L ") && !is_lease(b"L 4x") && !is_lease(b"1 a 1\n")
        );
    }

    /// A record's stamps and where its payload starts.
    type Parsed<'a> = (Vec<(&'a [u8], &'a [u8])>, usize);

    /// The parser as it was written first, with `str` splitting and parsing: the byte parser
    /// must answer exactly as it does.
    fn reference_parse(v: &[u8]) -> Option<Parsed<'_>> {
        let nl = v.iter().position(|&b| b == b'\n')?;
        let sp = v[..nl].iter().position(|&b| b == b' ')?;
        let n: usize = std::str::from_utf8(&v[..sp]).ok()?.parse().ok()?;
        let line = &v[sp + 1..nl];
        let mut parts = line.split(|&b| b == b' ');
        let mut stamps = Vec::new();
        while let Some(k) = parts.next() {
            let ver = parts.next()?;
            if k.is_empty() || ver.is_empty() || !ver.iter().all(u8::is_ascii_digit) {
                return None;
            }
            stamps.push((k, ver));
        }
        (stamps.len() == n && n > 0).then_some((stamps, nl + 1))
    }

    fn parsed(v: &[u8]) -> Option<Parsed<'_>> {
        parse_record(v).map(|r| (r.stamps().collect(), r.payload_at))
    }

    /// Stamp lines that are mostly well formed, with every kind of flaw now and then.
    fn stamp_lines() -> impl Strategy<Value = String> {
        let count = prop_oneof![
            6 => (0usize..4).prop_map(|n| n.to_string()),
            1 => Just("+2".to_owned()),
            1 => Just("x".to_owned()),
            1 => Just(String::new()),
        ];
        let key = prop_oneof![3 => "[a-c:]{1,2}", 1 => Just(String::new())];
        let version = prop_oneof![3 => "[0-9]{1,2}", 1 => "[0-9]?x", 1 => Just(String::new())];
        let gap = prop_oneof![5 => Just(" "), 1 => Just("  ")];
        let end =
            prop_oneof![3 => "\n.{0,3}", 1 => Just(" \n".to_owned()), 1 => Just(String::new())];
        (count, prop::collection::vec((gap, key, version), 0..4), end).prop_map(
            |(count, pairs, end)| {
                let mut v = count;
                for (gap, key, version) in pairs {
                    v.push_str(gap);
                    v.push_str(&key);
                    v.push(' ');
                    v.push_str(&version);
                }
                v.push_str(&end);
                v
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]
        #[test]
        fn parses_as_the_str_parser_did(v in stamp_lines()) {
            prop_assert_eq!(parsed(v.as_bytes()), reference_parse(v.as_bytes()));
        }
    }

    proptest! {
        #[test]
        fn parsing_never_panics(v in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_record(&v);
        }

        #[test]
        fn parses_any_bytes_as_the_str_parser_did(v in prop::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(parsed(&v), reference_parse(&v));
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("redis://u:secret@h:6379/0"),
            "redis://u:***@h:6379/0"
        );
        assert_eq!(redact("rediss://:secret@h"), "rediss://:***@h");
        assert_eq!(redact("redis://h:6379"), "redis://h:6379");
    }
}
