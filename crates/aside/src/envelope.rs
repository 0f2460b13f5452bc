//! The engine's envelope around codec bytes: one short text line, then the value.
//!
//! ```text
//! 1 <schema> <v|n>\n<codec bytes>
//! ```
//! `1` is the envelope format, `<schema>` the cache's schema version (bump it when a cached
//! type changes incompatibly), `v` a value and `n` a cached "not found" (no bytes follow).
//! Anything else, or another schema, is an incompatible entry: a miss, removed and counted.

use bytes::Bytes;

/// What an envelope holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Body<'a> {
    /// Codec bytes of a value.
    Value(&'a [u8]),
    /// A cached "not found".
    Absent,
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
pub fn value_header(schema: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(128);
    v.extend_from_slice(format!("1 {schema} v\n").as_bytes());
    v
}

/// The envelope of a cached "not found".
pub fn absent(schema: u32) -> Bytes {
    Bytes::from(format!("1 {schema} n\n"))
}

/// Opens an envelope written under `schema`.
pub fn open(bytes: &[u8], schema: u32) -> Result<Body<'_>, Refused> {
    let nl = bytes
        .iter()
        .take(24)
        .position(|&b| b == b'\n')
        .ok_or(Refused::Corrupt)?;
    let head = std::str::from_utf8(&bytes[..nl]).map_err(|_| Refused::Corrupt)?;
    let mut parts = head.split(' ');
    let (Some("1"), Some(s), Some(kind), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refused::Corrupt);
    };
    let s: u32 = s.parse().map_err(|_| Refused::Corrupt)?;
    if s != schema {
        return Err(Refused::Schema(s));
    }
    let rest = &bytes[nl + 1..];
    match kind {
        "v" => Ok(Body::Value(rest)),
        "n" if rest.is_empty() => Ok(Body::Absent),
        _ => Err(Refused::Corrupt),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn values_and_absence_round_trip() {
        let mut v = value_header(3);
        v.extend_from_slice(b"{\"a\":1}");
        assert_eq!(open(&v, 3), Ok(Body::Value(b"{\"a\":1}")));
        assert_eq!(open(&absent(3), 3), Ok(Body::Absent));
        assert_eq!(open(&value_header(0), 0), Ok(Body::Value(b"")));
    }

    #[test]
    fn other_schemas_and_garbage_are_refused() {
        assert_eq!(open(&absent(2), 3), Err(Refused::Schema(2)));
        for bad in [
            &b""[..],
            b"{\"a\":1}",
            b"2 0 v\n1",
            b"1 x v\n",
            b"1 0 q\n",
            b"1 0 n\nx",
            b"1 0\n",
        ] {
            assert_eq!(
                open(bad, 0),
                Err(Refused::Corrupt),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..64), s in any::<u32>()) {
            let _ = open(&b, s);
        }

        #[test]
        fn any_body_round_trips(body in prop::collection::vec(any::<u8>(), 0..64), s in any::<u32>()) {
            let mut v = value_header(s);
            v.extend_from_slice(&body);
            prop_assert_eq!(open(&v, s), Ok(Body::Value(&body[..])));
        }
    }
}
