//! The invalidation messages an L1 receives from other instances on its pub/sub channel
//! (`<origin> k <entry key>...`, `<origin> s <version key>...`).
//!
//! Input: a user key, a 0xFF byte, then the message. A copy of that key, stamped with its
//! prefixes, the epoch and the tag `x`, is snapshot before the message arrives. Checks:
//! nothing panics; an instance's own message voids nothing; a message that names the
//! copy's entry key, one of its prefixes, the epoch or any tag of the namespace voids it; so
//! does a message that is not understood (not UTF-8, no op, an unknown op, a name that is
//! not of the op's kind): the L1 is only ever too careful.
#![no_main]

use aside::fuzzing::{self, L1Messages};
use aside::key::Namespace;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (key, msg) = match data.iter().position(|&b| b == 0xFF) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (&b"products:list:1:20"[..], data),
    };
    let Ok(key) = std::str::from_utf8(key) else {
        return;
    };
    let ns = Namespace::new("app").expect("a valid namespace");
    let l1 = L1Messages::new("me");
    let Some(snap) = l1.snapshot(&ns, key, &["x"]) else {
        assert!(ns.entry(key).is_err(), "a valid key has a snapshot");
        return;
    };
    assert!(l1.current(&snap));
    l1.receive(msg);
    let entry = ns.entry(key).expect("snapshot taken").as_str().to_owned();
    let stamps: Vec<String> = ns
        .stamps_for(key, &["x"])
        .expect("snapshot taken")
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect();
    let Ok(text) = std::str::from_utf8(msg) else {
        assert!(
            !l1.current(&snap),
            "a message that is not UTF-8 voids everything"
        );
        return;
    };
    let mut parts = text.split(' ');
    let (Some(origin), Some(op)) = (parts.next(), parts.next()) else {
        assert!(
            !l1.current(&snap),
            "a message without an op voids everything"
        );
        return;
    };
    if origin == "me" {
        assert!(l1.current(&snap), "its own echo voided a copy");
        return;
    }
    let names: Vec<&str> = parts.collect();
    let voids = match op {
        "k" => names
            .iter()
            .any(|n| *n == entry || !matches!(fuzzing::layout(n), Some((_, b'e')))),
        "s" => names.iter().any(|n| {
            stamps.iter().any(|s| s == n)
                || match fuzzing::layout(n) {
                    Some((ns, b't')) => ns == "app",
                    Some((_, b'p' | b'g')) => false,
                    _ => true,
                }
        }),
        _ => true,
    };
    if voids {
        assert!(
            !l1.current(&snap),
            "{text:?} left the copy of {entry} current"
        );
    }
});
