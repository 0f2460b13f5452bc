//! The crate's private parsers, exposed as they are for the fuzz targets of `fuzz/` (feature
//! `fuzzing`). Not part of the API: nothing here is stable.

use crate::store::{Lookup, client, record};

pub use crate::store::tiered::fuzzing::{L1Messages, L1Snapshot};

/// A stamp line read by the parser of the hit path.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// Each stamp key with the version recorded for it, as bytes.
    pub stamps: Vec<(&'a [u8], &'a [u8])>,
    /// The stamp line without its newline.
    pub head: &'a [u8],
    /// Where the payload starts.
    pub payload_at: usize,
}

/// Parses a stored entry as the Redis stores do (and as their Lua `check` does).
pub fn parse_record(v: &[u8]) -> Option<Record<'_>> {
    let r = record::parse_record(v)?;
    Some(Record {
        stamps: r.stamps().collect(),
        head: r.head(v),
        payload_at: r.payload_at,
    })
}

/// What a whole entry read from Redis answers: where its payload starts, or `Pending` (a
/// lease placeholder) or `Corrupt`.
pub fn record_of(entry: &[u8]) -> Result<usize, Lookup> {
    record::record_of(entry).map(|r| r.payload_at)
}

/// Writes a record as the stores' scripts do.
pub fn encode_record(stamps: &[(&str, i64)], payload: &[u8]) -> Vec<u8> {
    record::encode_record(stamps, payload)
}

/// Whether a stored value is a lease placeholder.
pub fn is_lease(v: &[u8]) -> bool {
    record::is_lease(v)
}

/// A version key's value as the stores read it (`None`: an absent key).
pub fn version_of(v: Option<&[u8]>) -> Option<i64> {
    record::version_of(v)
}

/// A script's integer reply given as a bulk string, as the stores read it.
pub fn reply_int(b: &[u8]) -> Option<i64> {
    client::int(&redis::Value::BulkString(b.to_vec()))
}

/// A store key's namespace and kind, read back from its layout.
pub fn layout(key: &str) -> Option<(&str, u8)> {
    crate::key::layout(key)
}
