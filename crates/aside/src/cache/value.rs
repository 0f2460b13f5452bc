//! Values to entries and back: the codec inside the engine's envelope (see
//! [`crate::envelope`]), how a fetch hands a value back (decoded, or as the codec's bytes),
//! and the TTL and freshness an entry is written with (jitter included).

use super::{Cache, Fetched, Status};
use crate::codec::{Codec, CodecError};
use crate::envelope::{self, Body};
use crate::error::{Error, Result};
use crate::key::EntryKey;
use crate::metrics::Op;
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;
use tracing::warn;

/// How a fetch hands its value back: decoded, or as the codec's bytes.
pub(super) trait Mode<T> {
    /// What the caller gets.
    type Out;
    /// Whether `loaded` needs the value's encoding.
    const ENCODED: bool;
    /// The caller's form of a stored value's codec bytes.
    fn decode<C: Codec>(codec: &C, body: Bytes) -> std::result::Result<Self::Out, CodecError>;
    /// The caller's form of a loaded value (`body`: its codec bytes, if `ENCODED`).
    fn loaded(value: T, body: Bytes) -> Self::Out;
}

/// Values handed back decoded (`fetch`, `get_or_load`).
pub(super) struct AsValue;
/// Values handed back as the codec's bytes (`fetch_encoded`).
pub(super) struct AsBytes;

impl<T: DeserializeOwned> Mode<T> for AsValue {
    type Out = T;
    const ENCODED: bool = false;
    fn decode<C: Codec>(codec: &C, body: Bytes) -> std::result::Result<T, CodecError> {
        codec.decode(&body)
    }
    fn loaded(value: T, _: Bytes) -> T {
        value
    }
}

impl<T> Mode<T> for AsBytes {
    type Out = Bytes;
    const ENCODED: bool = true;
    fn decode<C: Codec>(_: &C, body: Bytes) -> std::result::Result<Bytes, CodecError> {
        Ok(body)
    }
    fn loaded(_: T, body: Bytes) -> Bytes {
        body
    }
}

/// An entry's content, decoded.
pub(super) enum Decoded<T> {
    /// A value (or its bytes).
    Value(T),
    /// A cached "not found".
    Absent,
}

/// A value served from the store.
pub(super) fn hit<T>(d: Decoded<T>) -> Fetched<T> {
    Fetched {
        value: match d {
            Decoded::Value(v) => Some(v),
            Decoded::Absent => None,
        },
        status: Status::Hit,
    }
}

/// A value served past its freshness.
pub(super) fn stale<T>(d: Decoded<T>) -> Fetched<T> {
    Fetched {
        status: Status::Stale,
        ..hit(d)
    }
}

/// A value loaded (by this call, or by the one it waited for).
pub(super) fn loaded<T>(d: Decoded<T>) -> Fetched<T> {
    Fetched {
        status: Status::Miss,
        ..hit(d)
    }
}

impl<C: Codec> Cache<C> {
    /// The caller's form of a loaded value: itself, or its encoding.
    pub(super) fn output<T: Serialize, M: Mode<T>>(&self, value: T) -> Result<M::Out> {
        if !M::ENCODED {
            return Ok(M::loaded(value, Bytes::new()));
        }
        let p = self.encode(&value, None)?;
        let body = match envelope::open(&p, self.inner.settings.schema) {
            Ok(envelope::Opened {
                body: Body::Value(b),
                ..
            }) => p.slice(p.len() - b.len()..),
            _ => Bytes::new(),
        };
        Ok(M::loaded(value, body))
    }

    pub(super) async fn decode<T: DeserializeOwned>(
        &self,
        k: &EntryKey,
        payload: &Bytes,
    ) -> Option<(Decoded<T>, Option<u64>)> {
        self.decode_as::<T, AsValue>(k, payload).await
    }

    /// The value of an entry and until when it is fresh; `None` (and the entry removed) if it
    /// cannot be decoded.
    pub(super) async fn decode_as<T, M: Mode<T>>(
        &self,
        k: &EntryKey,
        payload: &Bytes,
    ) -> Option<(Decoded<M::Out>, Option<u64>)> {
        let why = match envelope::open(payload, self.inner.settings.schema) {
            Ok(envelope::Opened {
                body: Body::Absent,
                fresh_until,
            }) => return Some((Decoded::Absent, fresh_until)),
            Ok(envelope::Opened {
                body: Body::Value(b),
                fresh_until,
            }) => {
                let body = payload.slice(payload.len() - b.len()..);
                match M::decode(&self.inner.codec, body) {
                    Ok(v) => return Some((Decoded::Value(v), fresh_until)),
                    Err(e) => e.to_string(),
                }
            }
            Err(envelope::Refused::Schema(s)) => format!("written with schema {s}"),
            Err(envelope::Refused::Corrupt) => "not an entry envelope".to_owned(),
        };
        self.discard(k, &why).await;
        None
    }

    pub(super) async fn discard(&self, k: &EntryKey, why: &str) {
        self.inner.metrics.corrupt.increment(1);
        warn!(key = %k, reason = %why, "undecodable cache entry removed");
        let _ = self
            .call(Op::Delete, self.inner.store.delete(std::slice::from_ref(k)))
            .await;
    }

    /// The store TTL of an entry written now and until when it is fresh: the TTL (jittered),
    /// plus the grace it is kept for past its freshness, if any.
    pub(super) fn lifetime(&self, ttl: Duration, grace: Duration) -> (Duration, Option<u64>) {
        let ttl = self.jittered(ttl);
        if grace.is_zero() {
            return (ttl, None);
        }
        let fresh_until = (self.inner.clock.wall() + ttl).as_millis() as u64;
        (ttl + grace, Some(fresh_until))
    }

    pub(super) fn encode<T: Serialize + ?Sized>(
        &self,
        value: &T,
        fresh_until: Option<u64>,
    ) -> Result<Bytes> {
        let mut out = envelope::value_header(self.inner.settings.schema, fresh_until);
        self.inner
            .codec
            .encode(value, &mut out)
            .map_err(Error::Encode)?;
        Ok(Bytes::from(out))
    }

    fn jittered(&self, ttl: Duration) -> Duration {
        let j = self.inner.settings.jitter;
        if j <= 0.0 {
            return ttl;
        }
        let cut = ttl.mul_f64(rand::random::<f64>() * j);
        (ttl - cut).max(Duration::from_millis(1))
    }
}
