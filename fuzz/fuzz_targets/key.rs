//! Key encoding: every Redis key made from user input (keys, tags, prefixes) under a
//! namespace.
//!
//! Input: fields separated by 0xFF (a byte UTF-8 never holds): a namespace, a user key, a
//! second user key, then tags. Checks: nothing panics; a namespace is accepted exactly when
//! it is 1 to 64 of `[A-Za-z0-9_.-]`; a made key is the namespace, its kind and the user
//! input percent-encoded, which decodes back to the input (so the encoding is injective) and
//! holds only printable ASCII, no glob, hash-tag or space character, no `%` but as an
//! escape; distinct inputs never share a key, across kinds and namespaces; a key reads back
//! as its namespace and kind (and strings of other layouts as none); an entry is under a
//! prefix exactly when its user key starts with it; the stamps of an entry are the epoch,
//! its prefixes (it is under each) and its tags, once each; a tag's clock is one of the
//! namespace's clocks.
#![no_main]

use aside::fuzzing;
use aside::key::{self, CLOCK_SHARDS, MAX_KEY_LEN, MAX_PREFIX_DEPTH, Namespace};
use libfuzzer_sys::fuzz_target;

fn decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("an escape has two digits");
            assert!(
                hex.bytes()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
            );
            out.push(u8::from_str_radix(hex, 16).expect("hex"));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

fn valid_namespace(ns: &str) -> bool {
    (1..=64).contains(&ns.len())
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// The user part of a made key: checked as an encoding of `user`, returned.
fn user_part<'a>(made: &'a str, ns: &str, kind: char, user: &str) -> &'a str {
    let rest = made
        .strip_prefix(&format!("{ns}:{kind}:"))
        .unwrap_or_else(|| panic!("{made:?} is not under {ns}:{kind}:"));
    assert!(made.bytes().all(|b| b.is_ascii_graphic()), "{made:?}");
    assert!(
        !rest.contains(['*', '?', '[', ']', '\\', '{', '}', ' ']),
        "{made:?}"
    );
    assert_eq!(
        decode(rest),
        user.as_bytes(),
        "{made:?} does not decode to its input"
    );
    assert_eq!(rest, key::encode(user));
    rest
}

fuzz_target!(|data: &[u8]| {
    let fields: Vec<String> = data
        .split(|&b| b == 0xFF)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect();
    let field = |i: usize| fields.get(i).map_or("", String::as_str);
    let (ns_name, k1, k2) = (field(0), field(1), field(2));
    let tags: Vec<&str> = fields.iter().skip(3).map(String::as_str).collect();

    // Any string reads back as a layout or none, without panicking; one that reads back is
    // of a documented shape.
    for s in [ns_name, k1, k2] {
        if let Some((ns, kind)) = fuzzing::layout(s) {
            assert!(valid_namespace(ns));
            let rest = &s[ns.len() + 1..];
            match kind {
                b'e' | b't' | b'p' => assert!(rest.len() > 2 && rest.as_bytes()[1] == b':'),
                b'g' => assert_eq!(rest, "g"),
                b'c' => assert!(rest.starts_with(&format!("c:{{{ns}}}:"))),
                other => panic!("kind {other}"),
            }
        }
    }

    let ns = match Namespace::new(ns_name) {
        Ok(ns) => {
            assert!(valid_namespace(ns_name));
            ns
        }
        Err(_) => {
            assert!(!valid_namespace(ns_name));
            Namespace::new("app").expect("valid")
        }
    };
    let name = ns.as_str();
    let other = Namespace::new(if name == "app" { "app2" } else { "app" }).expect("valid");

    let allowed = |k: &str| !k.is_empty() && k.len() <= MAX_KEY_LEN;
    for k in [k1, k2] {
        assert_eq!(ns.entry(k).is_ok(), allowed(k));
        assert_eq!(ns.tag(k).is_ok(), allowed(k));
        let depth = k.matches(':').count();
        assert_eq!(
            ns.prefix(k).is_ok(),
            allowed(k) && k.ends_with(':') && depth <= MAX_PREFIX_DEPTH
        );
    }
    if !allowed(k1) {
        return;
    }

    let e = ns.entry(k1).expect("allowed");
    let t = ns.tag(k1).expect("allowed");
    user_part(e.as_str(), name, 'e', k1);
    user_part(t.as_str(), name, 't', k1);
    assert_eq!(fuzzing::layout(e.as_str()), Some((name, b'e')));
    assert_eq!(fuzzing::layout(t.as_str()), Some((name, b't')));
    assert_ne!(e.as_str(), t.as_str());
    assert_ne!(e.as_str(), other.entry(k1).expect("allowed").as_str());
    let refresh = e.refresh_key();
    user_part(&refresh, name, 'r', k1);
    let (he, hr) = e.hash_tagged();
    for (h, kind) in [(&he, 'e'), (&hr, 'r')] {
        let tagged = h
            .strip_prefix(&format!("{name}:{kind}:{{"))
            .and_then(|r| r.strip_suffix('}'))
            .unwrap_or_else(|| panic!("{h:?} is not hash-tagged"));
        assert_eq!(tagged, key::encode(k1));
        assert_eq!(h.matches('{').count() + h.matches('}').count(), 2);
    }

    // The tag's clock is one of the namespace's.
    let shard = t.clock_shard().expect("a tag has a clock");
    assert!(shard < CLOCK_SHARDS);
    assert_eq!(t.clock().as_ref(), Some(&ns.clocks()[shard]));
    assert_eq!(
        fuzzing::layout(ns.clocks()[shard].as_str()),
        Some((name, b'c'))
    );
    assert_eq!(e.as_str().len(), name.len() + 3 + key::encode(k1).len());

    if allowed(k2) {
        let e2 = ns.entry(k2).expect("allowed");
        assert_eq!(e.as_str() == e2.as_str(), k1 == k2, "{k1:?} and {k2:?}");
        assert_eq!(
            t.as_str() == ns.tag(k2).expect("allowed").as_str(),
            k1 == k2
        );
        assert_ne!(e.as_str(), ns.tag(k2).expect("allowed").as_str());
        if let Ok(p) = ns.prefix(k2) {
            user_part(p.as_str(), name, 'p', k2);
            assert!(p.is_prefix() && p.clock_shard().is_none());
            assert_eq!(e.is_under(&p), k1.starts_with(k2), "{k1:?} under {k2:?}");
            assert!(!e.is_under(&other.prefix(k2).expect("allowed")));
            assert!(!e.is_under(&ns.tag(k2).expect("allowed")));
        }
    }

    match ns.stamps_for(k1, &tags) {
        Ok(stamps) => {
            assert_eq!(stamps[0], ns.epoch());
            let prefixes = k1.matches(':').count().min(MAX_PREFIX_DEPTH);
            for p in &stamps[1..=prefixes] {
                assert!(p.is_prefix() && e.is_under(p), "{p} of {e}");
            }
            let mut named: Vec<&str> = Vec::new();
            for t in &tags {
                if !named.contains(t) {
                    named.push(*t);
                }
            }
            let made: Vec<_> = stamps[1 + prefixes..].iter().map(|s| s.as_str()).collect();
            let want: Vec<_> = named
                .iter()
                .map(|t| ns.tag(t).expect("stamped").as_str().to_owned())
                .collect();
            assert_eq!(made, want);
        }
        Err(_) => assert!(tags.iter().any(|t| !allowed(t))),
    }
});
