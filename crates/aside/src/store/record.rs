//! The record format of the Redis stores: how an entry, a lease and a version are written in
//! Redis, and the parser of the hit path. The Lua scripts (`lua/prelude.lua`) read and write
//! the same bytes.
//!
//! An entry is one string: a stamp line, then the engine's payload:
//!
//! ```text
//! 3 app:g 1764150000123456 app:p:product: 1764150000123457 app:t:category:c1 1764150000123460
//! 1 0 v
//! {"id":"p1","name":"Product 1",...}
//! ```
//!
//! The stamp line is `<n> <key> <version> ...`: the `n` version keys the entry depends on and
//! the versions they held when its load began; a read returns the payload only while each of
//! those keys still holds that version. A lease placeholder is the string `L <token>`; the
//! refresh lease of a stale entry is the same string under the entry's refresh key.
//!
//! Version keys hold decimal integers. They are created with the server's time in
//! microseconds and bumped to `max(current + 1, now)`, so a version key that expired and was
//! created again never repeats an old version, and a version that no longer matches a stamp
//! never matches it again.

use crate::store::Lookup;
use bytes::{Buf, Bytes};

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

    /// The stamp line without its newline (`<n> <key> <version> ...`) of the entry `v` this
    /// record was parsed from.
    pub(crate) fn head<'v>(&self, v: &'v [u8]) -> &'v [u8] {
        &v[..self.payload_at - 1]
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

/// Writes a record: the stamp line (`<n> <key> <version> ...`), a newline, the payload.
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

/// Whether a stored value is a lease placeholder (`L <token>`).
pub(crate) fn is_lease(v: &[u8]) -> bool {
    v.len() > 2 && v.starts_with(b"L ") && v[2..].iter().all(u8::is_ascii_digit)
}

/// Where a store's lease tokens start: distinct across processes sharing one Redis (the
/// time in ns, with the process id in the high bits), so that one process's token never
/// matches another's placeholder.
pub(crate) fn token_seed() -> u64 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    seed ^ u64::from(std::process::id()) << 32
}

/// The record an entry read whole holds; else what the read answers: `Pending` for a lease
/// placeholder, `Corrupt` for bytes that are no record.
pub(crate) fn record_of(entry: &[u8]) -> Result<Record<'_>, Lookup> {
    if is_lease(entry) {
        return Err(Lookup::Pending);
    }
    parse_record(entry).ok_or(Lookup::Corrupt)
}

/// The payload of a record read whole: the tail of the reply's own buffer (no copy, no second
/// allocation).
pub(crate) fn payload_of(entry: Vec<u8>, at: usize) -> Bytes {
    let mut payload = Bytes::from(entry);
    payload.advance(at);
    payload
}

/// A version as stored: absent reads as 0 (no version key is ever created with it), else a
/// decimal integer.
pub(crate) fn version_of(v: Option<&[u8]>) -> Option<i64> {
    match v {
        None => Some(0),
        Some(b) => std::str::from_utf8(b).ok()?.parse().ok(),
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
        let parsed = parse_record(&rec).unwrap();
        assert_eq!(parsed.head(&rec), b"2 a:g 17 a:t:x 3");
        assert!(
            is_lease(b"L 42") && !is_lease(b"L ") && !is_lease(b"L 4x") && !is_lease(b"1 a 1\n")
        );
        assert_eq!(record_of(b"L 7"), Err(Lookup::Pending));
        assert_eq!(record_of(b"junk"), Err(Lookup::Corrupt));
    }

    #[test]
    fn missing_versions_read_as_zero() {
        assert_eq!(version_of(None), Some(0));
        assert_eq!(version_of(Some(b"17")), Some(17));
        assert_eq!(version_of(Some(b"x")), None);
    }

    /// A record's stamps and where its payload starts.
    type Parsed<'a> = (Vec<(&'a [u8], &'a [u8])>, usize);

    /// The format read the plain way, with `str` splitting and parsing: the byte parser must
    /// answer exactly as it does.
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
        fn parses_as_the_str_parser_does(v in stamp_lines()) {
            prop_assert_eq!(parsed(v.as_bytes()), reference_parse(v.as_bytes()));
        }
    }

    proptest! {
        #[test]
        fn parsing_never_panics(v in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_record(&v);
        }

        #[test]
        fn parses_any_bytes_as_the_str_parser_does(v in prop::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(parsed(&v), reference_parse(&v));
        }

        #[test]
        fn encoded_records_parse_back(
            stamps in prop::collection::vec(("[a-z:]{1,8}", 0i64..i64::MAX), 1..5),
            payload in prop::collection::vec(any::<u8>(), 0..32),
        ) {
            let named: Vec<(&str, i64)> = stamps.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            let rec = encode_record(&named, &payload);
            let r = parse_record(&rec).expect("an encoded record parses");
            let back: Vec<(String, i64)> = r
                .stamps()
                .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), version_of(Some(v)).unwrap()))
                .collect();
            prop_assert_eq!(back, stamps);
            prop_assert_eq!(&rec[r.payload_at..], &payload[..]);
        }
    }
}
