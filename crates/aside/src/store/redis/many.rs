//! The batch read of the Redis store ([`Store::get_many`](crate::store::Store::get_many)):
//! every entry in one `MGET`, each checked as a read of its own would check it.
//!
//! - With versions held in process: one `MGET` of the entries over the tracking connection,
//!   their stamps compared with the versions held; the versions not held (of every entry at
//!   once) are read then, with tracking, in one more round trip, as a single read does.
//! - Without: one `MGET` of the entries and of the versions named and hinted for all of them
//!   (read atomically, so each entry is compared with the versions of the same moment); the
//!   stamps nobody named, of every entry at once, in a second `MGET`.
//!
//! A version read after the entry is still an exact check: versions never return to an
//! earlier value, so a match then means no bump happened since the entry was written.

use super::RedisStore;
use crate::error::StoreError;
use crate::key::{EntryKey, TagKey};
use crate::store::client::backend_error;
use crate::store::record::{payload_of, record_of};
use crate::store::versions::{Check, Tracker};
use crate::store::{Lookup, named};
use bytes::Bytes;
use redis::Value;
use redis::aio::MultiplexedConnection;
use std::collections::HashMap;
use std::sync::Arc;

/// What an entry's stamp line says before the versions not at hand are read.
enum Verdict {
    /// Answered: no entry, a lease, not a record, or a stamp that changed.
    Answer(Lookup),
    /// Valid if each of these versions (an index into [`Unknown`], the version recorded)
    /// is still the one recorded; its payload starts at `at`.
    Check {
        at: usize,
        needs: Vec<(usize, Vec<u8>)>,
    },
}

/// The version keys to read after the entries, each once.
#[derive(Default)]
struct Unknown {
    keys: Vec<Vec<u8>>,
    at: HashMap<Vec<u8>, usize>,
}

impl Unknown {
    fn index(&mut self, key: &[u8]) -> usize {
        if let Some(&i) = self.at.get(key) {
            return i;
        }
        self.keys.push(key.to_vec());
        self.at.insert(key.to_vec(), self.keys.len() - 1);
        self.keys.len() - 1
    }
}

/// Judges an entry: each stamp `check`ed against the versions at hand, those not at hand
/// left to read.
fn judge(
    entry: Option<&[u8]>,
    mut check: impl FnMut(&[u8], &[u8]) -> Check,
    unknown: &mut Unknown,
) -> Verdict {
    let Some(entry) = entry else {
        return Verdict::Answer(Lookup::Miss);
    };
    let record = match record_of(entry) {
        Ok(r) => r,
        Err(not) => return Verdict::Answer(not),
    };
    let mut needs = Vec::new();
    for (k, v) in record.stamps() {
        match check(k, v) {
            Check::Same => {}
            Check::Changed => return Verdict::Answer(Lookup::Miss),
            Check::Unknown => needs.push((unknown.index(k), v.to_vec())),
        }
    }
    Verdict::Check {
        at: record.payload_at,
        needs,
    }
}

/// The entries of an `MGET` reply of `n` keys (a key holding no string reads as none).
fn entries_of(
    reply: Value,
    n: usize,
    timeout: std::time::Duration,
) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
    let vals = match reply {
        Value::Array(v) if v.len() == n => v,
        Value::ServerError(e) => return Err(backend_error(e.into(), timeout)),
        // Not the reply itself: it may hold whole cached values.
        _ => return Err(StoreError::Protocol("get_many: reply length".into())),
    };
    vals.into_iter()
        .map(|v| match v {
            Value::BulkString(b) => Ok(Some(b)),
            Value::Nil => Ok(None),
            _ => Err(StoreError::Protocol(
                "get_many: entry is not a string".into(),
            )),
        })
        .collect()
}

/// The lookups, once the versions not at hand are `now` (in the order of [`Unknown`]).
fn conclude(
    entries: Vec<Option<Vec<u8>>>,
    verdicts: Vec<Verdict>,
    now: &[Option<Bytes>],
) -> Vec<Lookup> {
    entries
        .into_iter()
        .zip(verdicts)
        .map(|(entry, verdict)| match (verdict, entry) {
            (Verdict::Answer(l), _) => l,
            (Verdict::Check { at, needs }, Some(entry)) => {
                let current = needs
                    .iter()
                    .all(|(i, v)| now.get(*i).and_then(Option::as_deref) == Some(v.as_slice()));
                if current {
                    Lookup::Hit(payload_of(entry, at))
                } else {
                    Lookup::Miss
                }
            }
            (Verdict::Check { .. }, None) => Lookup::Miss,
        })
        .collect()
}

impl RedisStore {
    /// With versions held in process: one `MGET` of the entries over the tracking
    /// connection, then the versions not held, of all of them at once.
    pub(super) async fn get_many_tracked(
        &self,
        t: &Tracker,
        mut conn: MultiplexedConnection,
        keys: &[EntryKey],
    ) -> Result<Vec<Lookup>, StoreError> {
        let mut cmd = redis::cmd("MGET");
        for k in keys {
            cmd.arg(k.as_str());
        }
        let reply = self
            .bounded_tracked(t, conn.send_packed_command(&cmd))
            .await?;
        let entries = entries_of(reply, keys.len(), self.timeout)?;
        let held = &t.versions;
        let mut unknown = Unknown::default();
        let verdicts: Vec<Verdict> = entries
            .iter()
            .map(|e| judge(e.as_deref(), |k, v| held.check(k, v), &mut unknown))
            .collect();
        let now = if unknown.keys.is_empty() {
            Vec::new()
        } else {
            let names: Vec<&[u8]> = unknown.keys.iter().map(Vec::as_slice).collect();
            self.track_versions(t, conn, &names).await?
        };
        Ok(conclude(entries, verdicts, &now))
    }

    /// Without versions held: one `MGET` of the entries and of every version named or
    /// hinted for them, then the stamps nobody named, of all of them at once.
    pub(super) async fn get_many_mget(
        &self,
        keys: &[EntryKey],
        stamps: &[Vec<TagKey>],
    ) -> Result<Vec<Lookup>, StoreError> {
        let mut names: Vec<Vec<u8>> = Vec::new();
        let mut at: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut add = |name: &[u8]| {
            if !at.contains_key(name) {
                at.insert(name.to_vec(), names.len());
                names.push(name.to_vec());
            }
        };
        let mut hinted: Vec<Vec<String>> = Vec::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            for s in named(stamps, i) {
                add(s.as_str().as_bytes());
            }
            let mut hint = Vec::new();
            self.hints.each(k, |s| hint.push(s.to_owned()));
            for s in &hint {
                add(s.as_bytes());
            }
            hinted.push(hint);
        }
        let mut cmd = redis::cmd("MGET");
        for k in keys {
            cmd.arg(k.as_str());
        }
        for n in &names {
            cmd.arg(n.as_slice());
        }
        let mut conn = self.conn.get();
        let reply = self.bounded(conn.send_packed_command(&cmd)).await?;
        let mut entries = entries_of(reply, keys.len() + names.len(), self.timeout)?;
        let versions = entries.split_off(keys.len());
        let mut unknown = Unknown::default();
        let mut verdicts = Vec::with_capacity(keys.len());
        for (i, entry) in entries.iter().enumerate() {
            let check = |k: &[u8], v: &[u8]| match at.get(k) {
                Some(&j) if versions[j].as_deref() == Some(v) => Check::Same,
                Some(_) => Check::Changed,
                None => Check::Unknown,
            };
            verdicts.push(judge(entry.as_deref(), check, &mut unknown));
            self.remember_learnt(&keys[i], named(stamps, i), entry.as_deref(), &hinted[i]);
        }
        let now = if unknown.keys.is_empty() {
            Vec::new()
        } else {
            let mut cmd = redis::cmd("MGET");
            for k in &unknown.keys {
                cmd.arg(k.as_slice());
            }
            let now: Vec<Option<Vec<u8>>> = self.bounded(cmd.query_async(&mut conn)).await?;
            if now.len() != unknown.keys.len() {
                return Err(StoreError::Protocol("get_many: version count".into()));
            }
            now.into_iter().map(|v| v.map(Bytes::from)).collect()
        };
        Ok(conclude(entries, verdicts, &now))
    }

    /// Remembers the stamps an entry carries that its caller did not name, if they are not
    /// what the hint already says, so that the next read asks for them too.
    fn remember_learnt(
        &self,
        key: &EntryKey,
        stamps: &[TagKey],
        entry: Option<&[u8]>,
        hinted: &[String],
    ) {
        let Some(Ok(record)) = entry.map(record_of) else {
            return;
        };
        let learnt: Vec<String> = record
            .stamps()
            .filter(|(k, _)| !stamps.iter().any(|s| s.as_str().as_bytes() == *k))
            .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
            .collect();
        if learnt != hinted {
            self.hints.insert(key, Arc::from(learnt));
        }
    }

    /// Reads the versions of `keys` over the tracking connection, with tracking, and keeps
    /// them: their values, in order (`None`: no such version key).
    pub(super) async fn track_versions(
        &self,
        t: &Tracker,
        mut conn: redis::aio::MultiplexedConnection,
        keys: &[&[u8]],
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        let held = &t.versions;
        t.fetched.increment(keys.len() as u64);
        let generations: Vec<u64> = keys.iter().map(|k| held.generation(k)).collect();
        let mut mget = redis::cmd("MGET");
        for k in keys {
            mget.arg(*k);
        }
        let mut pipe = redis::pipe();
        pipe.cmd("CLIENT")
            .arg("CACHING")
            .arg("YES")
            .ignore()
            .add_command(mget);
        let (now,): (Vec<Value>,) = self.bounded_tracked(t, pipe.query_async(&mut conn)).await?;
        if now.len() != keys.len() {
            return Err(StoreError::Protocol("get: version count".into()));
        }
        Ok(keys
            .iter()
            .zip(now)
            .zip(generations)
            .map(|((k, n), g)| match n {
                Value::BulkString(n) => {
                    let n = Bytes::from(n);
                    held.insert(k, n.clone(), g);
                    Some(n)
                }
                _ => None,
            })
            .collect())
    }
}
