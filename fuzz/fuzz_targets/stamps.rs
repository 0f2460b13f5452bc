//! Stamp lines and versions, as the Redis stores read them back: the record parser of the
//! hit path, the versions of version keys and of script replies, lease placeholders.
//!
//! Checks: the byte parser answers exactly as a plain `str`-splitting reader of the format
//! does; a record written back with `encode_record` parses to the same stamps and payload
//! (and to the same bytes when the input was spelt canonically); every recorded version
//! reads as the same number through both version readers; a lease placeholder is never a
//! record.
#![no_main]

use aside::fuzzing;
use libfuzzer_sys::fuzz_target;

/// Stamps (key, version) and where the payload starts.
type Parsed<'a> = (Vec<(&'a [u8], &'a [u8])>, usize);

/// `<n> <key> <version> ...\n<payload>`, read with `str` splitting.
fn reference(v: &[u8]) -> Option<Parsed<'_>> {
    let nl = v.iter().position(|&b| b == b'\n')?;
    let sp = v[..nl].iter().position(|&b| b == b' ')?;
    let n: usize = std::str::from_utf8(&v[..sp]).ok()?.parse().ok()?;
    let mut parts = v[sp + 1..nl].split(|&b| b == b' ');
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

fuzz_target!(|data: &[u8]| {
    let parsed = fuzzing::parse_record(data);
    assert_eq!(
        parsed.as_ref().map(|r| (r.stamps.clone(), r.payload_at)),
        reference(data)
    );
    if fuzzing::is_lease(data) {
        assert!(parsed.is_none(), "a lease placeholder parsed as a record");
        assert!(data.starts_with(b"L ") && data[2..].iter().all(u8::is_ascii_digit));
    }
    for v in [Some(data), data.strip_prefix(b"L ")] {
        let v = v.unwrap_or_default();
        let plain = std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.parse::<i64>().ok());
        assert_eq!(fuzzing::version_of(Some(v)), plain);
        assert_eq!(fuzzing::reply_int(v), plain);
    }
    assert_eq!(fuzzing::version_of(None), Some(0));
    let Some(r) = parsed else {
        return;
    };
    assert_eq!(&data[..r.payload_at - 1], r.head);
    // Written back: every key is text, every version a number the stores can hold.
    let mut stamps = Vec::new();
    for (k, v) in &r.stamps {
        let version = fuzzing::version_of(Some(v));
        assert_eq!(
            version,
            fuzzing::reply_int(v),
            "the two readers of a version differ"
        );
        let (Ok(k), Some(version)) = (std::str::from_utf8(k), version) else {
            return;
        };
        assert!(version >= 0, "a recorded version is digits only");
        stamps.push((k, version));
    }
    let payload = &data[r.payload_at..];
    let again = fuzzing::encode_record(&stamps, payload);
    let back = fuzzing::parse_record(&again).expect("an encoded record parses");
    assert_eq!(back.stamps.len(), r.stamps.len());
    for ((k, v), (k2, v2)) in back.stamps.iter().zip(&stamps) {
        assert_eq!(*k, k2.as_bytes());
        assert_eq!(fuzzing::version_of(Some(v)), Some(*v2));
    }
    assert_eq!(&again[back.payload_at..], payload);
    let canonical = |n: &[u8]| n == b"0" || (n.first() != Some(&b'0') && n[0] != b'+');
    let count = &data[..data.iter().position(|&b| b == b' ').expect("a record")];
    if canonical(count) && r.stamps.iter().all(|(_, v)| canonical(v)) {
        assert_eq!(again, data, "a canonical record is written back as it was");
    }
});
