//! What a read of an entry key returns from Redis, decoded as the hit path does: the record
//! (a stamp line, a lease placeholder or junk), then the envelope of its payload.
//!
//! Checks: nothing panics; the two record readers agree with each other and with the lease
//! test; an envelope that opens opens again, identically, once written back canonically, is
//! refused under any other schema, and carries the freshness `freshness` reads; envelopes
//! built from the input (value or absence, any schema, any freshness) open to exactly what
//! was put in.
#![no_main]

use aside::envelope::{self, Body, Opened, Refused};
use aside::fuzzing;
use aside::store::Lookup;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let payload = match fuzzing::record_of(data) {
        Ok(at) => {
            let r = fuzzing::parse_record(data).expect("record_of took it: it parses");
            assert_eq!(r.payload_at, at);
            assert_eq!(r.head.len() + 1, at);
            assert_eq!(data[at - 1], b'\n');
            assert!(!r.stamps.is_empty());
            assert!(!fuzzing::is_lease(data));
            &data[at..]
        }
        Err(Lookup::Pending) => {
            assert!(fuzzing::is_lease(data));
            data
        }
        Err(Lookup::Corrupt) => {
            assert!(fuzzing::parse_record(data).is_none());
            assert!(!fuzzing::is_lease(data));
            data
        }
        Err(other) => panic!("a whole entry read as {other:?}"),
    };
    check_envelope(payload);
    check_envelope(data);
    build_envelopes(data);
});

/// The schema an envelope says it was written under, read the plain way.
fn declared_schema(b: &[u8]) -> Option<u32> {
    let head = b.split(|&c| c == b'\n').next()?;
    let head = std::str::from_utf8(head).ok()?;
    head.strip_prefix("1 ")?.split(' ').next()?.parse().ok()
}

fn check_envelope(b: &[u8]) {
    let mut schemas = vec![0, 1, u32::MAX];
    schemas.extend(declared_schema(b));
    for schema in schemas {
        match envelope::open(b, schema) {
            Ok(opened) => {
                assert_eq!(declared_schema(b), Some(schema));
                let again = write(schema, &opened);
                assert_eq!(envelope::open(&again, schema).as_ref(), Ok(&opened));
                assert_eq!(
                    envelope::open(b, schema.wrapping_add(1)),
                    Err(Refused::Schema(schema))
                );
                assert_eq!(envelope::freshness(b), opened.fresh_until);
                if again == b {
                    continue;
                }
                // Only the spelling of numbers can differ (`+`, leading zeros): the body is
                // the same, the head longer than the canonical one.
                let nl = b.iter().position(|&c| c == b'\n').expect("opened: a head");
                let nl_again = again.iter().position(|&c| c == b'\n').expect("a head");
                assert!(nl_again < nl);
                assert_eq!(b[nl..], again[nl_again..]);
            }
            Err(Refused::Schema(s)) => {
                assert_ne!(s, schema);
                assert_eq!(declared_schema(b), Some(s));
            }
            Err(Refused::Corrupt) => {}
        }
    }
}

/// An envelope written back by the engine's own writers.
fn write(schema: u32, o: &Opened<'_>) -> Vec<u8> {
    match o.body {
        Body::Value(v) => {
            let mut out = envelope::value_header(schema, o.fresh_until);
            out.extend_from_slice(v);
            out
        }
        Body::Absent => envelope::absent(schema, o.fresh_until).to_vec(),
    }
}

fn build_envelopes(data: &[u8]) {
    let Some((head, body)) = data.split_at_checked(13) else {
        return;
    };
    let schema = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let fresh = (head[4] & 1 == 1).then(|| {
        u64::from_le_bytes([
            head[5], head[6], head[7], head[8], head[9], head[10], head[11], head[12],
        ])
    });
    let mut v = envelope::value_header(schema, fresh);
    v.extend_from_slice(body);
    let want = Opened {
        body: Body::Value(body),
        fresh_until: fresh,
    };
    assert_eq!(envelope::open(&v, schema), Ok(want));
    assert_eq!(envelope::freshness(&v), fresh);
    assert_eq!(envelope::open(&v, schema ^ 1), Err(Refused::Schema(schema)));
    let a = envelope::absent(schema, fresh);
    let want = Opened {
        body: Body::Absent,
        fresh_until: fresh,
    };
    assert_eq!(envelope::open(&a, schema), Ok(want));
    // A record around it hands the envelope back untouched.
    let rec = fuzzing::encode_record(&[("app:g", i64::from(head[0]))], &v);
    assert_eq!(fuzzing::record_of(&rec).map(|at| &rec[at..]), Ok(&v[..]));
}
