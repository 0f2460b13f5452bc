//! The engine's envelope around codec bytes: one short text line, then the value.
//!
//! ```text
//! 1 <schema> <v|n>[ <fresh until>]\n<codec bytes>
//! ```
//! `1` is the envelope format, `<schema>` the cache's schema version (bump it when a cached
//! type changes incompatibly), `v` a value and `n` a cached "not found" (no bytes follow).
//! `<fresh until>`, in milliseconds since the Unix epoch, is written when the entry is kept
//! past its TTL (stale-while-revalidate, stale-if-error): until then it is fresh, after it
//! stale. Without it, an entry is fresh for as long as the store keeps it.
//! Anything else, or another schema, is an incompatible entry: a miss, removed and counted.
//!
//! Stores treat payloads as opaque bytes, except for one thing: a [`Store`](crate::store::Store)
//! implementing `claim_refresh` reads the freshness of the entry it holds with [`freshness`].

use bytes::Bytes;

/// What an envelope holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Body<'a> {
    /// Codec bytes of a value.
    Value(&'a [u8]),
    /// A cached "not found".
    Absent,
}

/// An opened envelope.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened<'a> {
    /// What it holds.
    pub body: Body<'a>,
    /// Until when (ms since the Unix epoch) it is fresh, if it can become stale.
    pub fresh_until: Option<u64>,
}

/// Why an envelope was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Not an envelope of this format.
    Corrupt,
    /// Written under another schema version.
    Schema(u32),
}

/// Starts an envelope for a value; the codec appends the value's bytes after it.
pub fn value_header(schema: u32, fresh_until: Option<u64>) -> Vec<u8> {
    let mut v = Vec::with_capacity(128);
    v.extend_from_slice(head(schema, 'v', fresh_until).as_bytes());
    v
}

/// The envelope of a cached "not found".
pub fn absent(schema: u32, fresh_until: Option<u64>) -> Bytes {
    Bytes::from(head(schema, 'n', fresh_until))
}

fn head(schema: u32, kind: char, fresh_until: Option<u64>) -> String {
    match fresh_until {
        Some(t) => format!("1 {schema} {kind} {t}\n"),
        None => format!("1 {schema} {kind}\n"),
    }
}

/// The freshness an envelope carries, whatever its schema; `None` if it has none or is not
/// an envelope.
pub fn freshness(bytes: &[u8]) -> Option<u64> {
    let schema = bytes
        .iter()
        .take(48)
        .skip(2)
        .position(|&b| b == b' ')
        .and_then(|e| std::str::from_utf8(&bytes[2..2 + e]).ok()?.parse().ok())?;
    open(bytes, schema).ok()?.fresh_until
}

/// Opens an envelope written under `schema`.
///
/// Read byte by byte (no `str` splitting or parsing): this runs on every cache hit.
pub fn open(bytes: &[u8], schema: u32) -> Result<Opened<'_>, Refused> {
    let nl = memchr::memchr(b'\n', &bytes[..bytes.len().min(48)]).ok_or(Refused::Corrupt)?;
    let head = &bytes[..nl];
    std::str::from_utf8(head).map_err(|_| Refused::Corrupt)?;
    let mut parts = head.split(|&b| b == b' ');
    let (Some(b"1"), Some(s), Some(kind), fresh, None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(Refused::Corrupt);
    };
    let s = decimal(s)
        .and_then(|s| u32::try_from(s).ok())
        .ok_or(Refused::Corrupt)?;
    if s != schema {
        return Err(Refused::Schema(s));
    }
    let fresh_until = match fresh {
        None => None,
        Some(t) if !t.is_empty() && t.iter().all(u8::is_ascii_digit) => {
            Some(decimal(t).ok_or(Refused::Corrupt)?)
        }
        Some(_) => return Err(Refused::Corrupt),
    };
    let rest = &bytes[nl + 1..];
    let body = match kind {
        b"v" => Body::Value(rest),
        b"n" if rest.is_empty() => Body::Absent,
        _ => return Err(Refused::Corrupt),
    };
    Ok(Opened { body, fresh_until })
}

/// A decimal number as `str::parse::<u64>` reads it: an optional `+`, then at least one
/// ASCII digit, and no overflow.
pub(crate) fn decimal(b: &[u8]) -> Option<u64> {
    let digits = b.strip_prefix(b"+").unwrap_or(b);
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &c| {
        if c.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(c - b'0'))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The format read the plain way, with `str` splitting and parsing: the byte parser
    /// must answer exactly as it does.
    mod reference {
        use super::super::{Body, Opened, Refused};

        pub fn open(bytes: &[u8], schema: u32) -> Result<Opened<'_>, Refused> {
            let nl = bytes
                .iter()
                .take(48)
                .position(|&b| b == b'\n')
                .ok_or(Refused::Corrupt)?;
            let head = std::str::from_utf8(&bytes[..nl]).map_err(|_| Refused::Corrupt)?;
            let mut parts = head.split(' ');
            let (Some("1"), Some(s), Some(kind), fresh, None) = (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
            ) else {
                return Err(Refused::Corrupt);
            };
            let s: u32 = s.parse().map_err(|_| Refused::Corrupt)?;
            if s != schema {
                return Err(Refused::Schema(s));
            }
            let fresh_until = match fresh {
                None => None,
                Some(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => {
                    Some(t.parse().map_err(|_| Refused::Corrupt)?)
                }
                Some(_) => return Err(Refused::Corrupt),
            };
            let rest = &bytes[nl + 1..];
            let body = match kind {
                "v" => Body::Value(rest),
                "n" if rest.is_empty() => Body::Absent,
                _ => return Err(Refused::Corrupt),
            };
            Ok(Opened { body, fresh_until })
        }
    }

    fn body(b: &[u8], s: u32) -> Result<Body<'_>, Refused> {
        open(b, s).map(|o| o.body)
    }

    #[test]
    fn values_and_absence_round_trip() {
        let mut v = value_header(3, None);
        v.extend_from_slice(b"{\"a\":1}");
        assert_eq!(
            open(&v, 3),
            Ok(Opened {
                body: Body::Value(b"{\"a\":1}"),
                fresh_until: None
            })
        );
        assert_eq!(body(&absent(3, None), 3), Ok(Body::Absent));
        assert_eq!(body(&value_header(0, None), 0), Ok(Body::Value(b"")));
    }

    #[test]
    fn freshness_round_trips() {
        let mut v = value_header(u32::MAX, Some(u64::MAX));
        v.extend_from_slice(b"1");
        assert_eq!(
            open(&v, u32::MAX),
            Ok(Opened {
                body: Body::Value(b"1"),
                fresh_until: Some(u64::MAX)
            })
        );
        let a = absent(2, Some(1_764_150_000_123));
        assert_eq!(
            open(&a, 2),
            Ok(Opened {
                body: Body::Absent,
                fresh_until: Some(1_764_150_000_123)
            })
        );
    }

    #[test]
    fn other_schemas_and_garbage_are_refused() {
        assert_eq!(open(&absent(2, None), 3), Err(Refused::Schema(2)));
        for bad in [
            &b""[..],
            b"{\"a\":1}",
            b"2 0 v\n1",
            b"1 x v\n",
            b"1 0 q\n",
            b"1 0 n\nx",
            b"1 0\n",
            b"1 0 v \n",
            b"1 0 v 12x\n",
            b"1 0 v -1\n",
            b"1 0 v 1 2\n",
            b"1 0 v 99999999999999999999999\n",
        ] {
            assert_eq!(
                open(bad, 0),
                Err(Refused::Corrupt),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn freshness_is_read_whatever_the_schema() {
        assert_eq!(freshness(&absent(7, Some(42))), Some(42));
        assert_eq!(freshness(&value_header(0, Some(5))), Some(5));
        assert_eq!(freshness(&absent(7, None)), None);
        assert_eq!(freshness(b"1 x v 5\n"), None);
        assert_eq!(freshness(b""), None);
    }

    proptest! {
        #[test]
        fn opens_as_the_str_parser_did(
            head in "(1|[1+0-9]{0,2})( (1|\\+1|[+0-9]{0,4})( (v|n|[vnx]{0,2})( [+0-9]{0,21}( [0-9])?)?)?)?",
            schema in 0u32..3,
            tail in prop::collection::vec(any::<u8>(), 0..4),
        ) {
            let mut b = head.into_bytes();
            b.push(b'\n');
            b.extend_from_slice(&tail);
            prop_assert_eq!(open(&b, schema), reference::open(&b, schema));
        }

        #[test]
        fn opens_any_bytes_as_the_str_parser_did(b in prop::collection::vec(any::<u8>(), 0..64), s in any::<u32>()) {
            prop_assert_eq!(open(&b, s), reference::open(&b, s));
        }

        #[test]
        fn reads_decimals_as_str_parse_does(s in "[+]?[0-9]{0,22}|.{0,4}") {
            prop_assert_eq!(decimal(s.as_bytes()), s.parse::<u64>().ok());
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..64), s in any::<u32>()) {
            let _ = open(&b, s);
        }

        #[test]
        fn any_body_round_trips(body in prop::collection::vec(any::<u8>(), 0..64), s in any::<u32>()) {
            let mut v = value_header(s, None);
            v.extend_from_slice(&body);
            prop_assert_eq!(open(&v, s), Ok(Opened { body: Body::Value(&body[..]), fresh_until: None }));
        }
    }
}
