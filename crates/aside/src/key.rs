//! Every Redis key the engine touches is built here, and nowhere else.
//!
//! Layout of a namespace `ns` (the namespace itself is validated to `[A-Za-z0-9_.-]{1,64}`, so it
//! can contain neither `:` nor a glob or hash-tag character):
//!
//! | key | holds |
//! | --- | --- |
//! | `ns:e:<key>` | an entry (or the lease placeholder of the loader filling it) |
//! | `ns:r:<key>` | the lease of the loader refreshing a stale entry (which stays readable) |
//! | `ns:t:<tag>` | the version of a tag |
//! | `ns:p:<prefix>` | the version of a key prefix (a prefix ending at a `:` of the user key) |
//! | `ns:g` | the namespace epoch: bumped when invalidations were lost in an outage |
//! | `ns:c:{ns}:<i>` | tag clock `i` of [`CLOCK_SHARDS`]: advanced by every invalidation of a tag of shard `i` |
//!
//! In Redis Cluster the entry and refresh keys carry the user key as a hash tag,
//! `ns:e:{<key>}` and `ns:r:{<key>}` ([`EntryKey::hash_tagged`]), so an entry and its refresh
//! lease share a slot; version keys are as above, so they spread over the cluster. The tag
//! clocks carry the namespace as a hash tag, so all of them live in one slot: a claim reads
//! them from one node, and a node that does not answer stops only the claims that need it.
//!
//! User input (keys, tags, prefixes) is percent-encoded: every byte outside `[A-Za-z0-9_.:-]`
//! becomes `%XX`. The encoding is injective, so two distinct user keys never share a Redis key,
//! and the result holds no glob (`*?[]\`), hash-tag (`{}`), whitespace or `%`-ambiguity, so user
//! input can neither form a pattern nor reach another namespace or another kind of key.

use crate::error::Error;
use std::fmt;

/// Longest user key, tag or prefix accepted, in bytes (before encoding).
pub const MAX_KEY_LEN: usize = 1024;
/// Deepest key prefix that `invalidate_prefix` can address: entries are stamped with the
/// versions of their first `MAX_PREFIX_DEPTH` `:`-terminated prefixes.
pub const MAX_PREFIX_DEPTH: usize = 4;

/// How many tag clocks a namespace has. A tag learnt from a loaded value is not known when
/// the load's lease is taken, so its fill is fenced by the clock of the tag's shard (a hash
/// of its key, see [`TagKey::clock_shard`]) rather than by its own version: a fill is refused
/// when a tag of the same shard was invalidated during the load, which is every tag it could
/// have learnt, and one sixteenth of the others.
pub const CLOCK_SHARDS: usize = 16;

/// A validated namespace; the root of every Redis key of one cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace(String, TagKey, std::sync::Arc<[TagKey]>);

impl Namespace {
    /// Validates a namespace: 1 to 64 characters of `[A-Za-z0-9_.-]`.
    pub fn new(ns: &str) -> Result<Self, Error> {
        let ok = !ns.is_empty()
            && ns.len() <= 64
            && ns
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        if ok {
            let clocks = (0..CLOCK_SHARDS)
                .map(|i| TagKey(clock_key(ns, i)))
                .collect();
            Ok(Self(ns.to_owned(), TagKey(format!("{ns}:g")), clocks))
        } else {
            Err(Error::InvalidNamespace(ns.to_owned()))
        }
    }

    /// The namespace as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key of an entry.
    pub fn entry(&self, key: &str) -> Result<EntryKey, Error> {
        check("key", key)?;
        Ok(EntryKey(self.join('e', key)))
    }

    /// The version key of a tag.
    pub fn tag(&self, tag: &str) -> Result<TagKey, Error> {
        check("tag", tag)?;
        Ok(TagKey(self.join('t', tag)))
    }

    /// The version key of a key prefix. A prefix must end with `:` and have at most
    /// [`MAX_PREFIX_DEPTH`] segments.
    pub fn prefix(&self, prefix: &str) -> Result<TagKey, Error> {
        check("prefix", prefix)?;
        let depth = prefix.bytes().filter(|&b| b == b':').count();
        if !prefix.ends_with(':') || depth > MAX_PREFIX_DEPTH {
            return Err(Error::InvalidPrefix(prefix.to_owned()));
        }
        Ok(TagKey(self.join('p', prefix)))
    }

    /// The namespace epoch key.
    pub fn epoch(&self) -> TagKey {
        self.1.clone()
    }

    /// The tag clocks, shard by shard (`ns:c:{ns}:0` .. `ns:c:{ns}:15`): a claim reads them
    /// all.
    pub fn clocks(&self) -> &[TagKey] {
        &self.2
    }

    /// Every version key an entry under `key` is stamped with: the epoch, the key's
    /// `:`-terminated prefixes (up to [`MAX_PREFIX_DEPTH`]), then the given tags.
    pub fn stamps_for<S: AsRef<str>>(&self, key: &str, tags: &[S]) -> Result<Vec<TagKey>, Error> {
        let mut out = Vec::with_capacity(2 + tags.len());
        out.push(self.1.clone());
        for (i, _) in key.match_indices(':').take(MAX_PREFIX_DEPTH) {
            out.push(TagKey(self.join('p', &key[..=i])));
        }
        for t in tags {
            let t = self.tag(t.as_ref())?;
            if !out.contains(&t) {
                out.push(t);
            }
        }
        Ok(out)
    }

    fn join(&self, kind: char, user: &str) -> String {
        let mut s = String::with_capacity(self.0.len() + 3 + user.len());
        s.push_str(&self.0);
        s.push(':');
        s.push(kind);
        s.push(':');
        encode_into(user, &mut s);
        s
    }
}

/// The Redis key of one entry. Only [`Namespace`] makes them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryKey(String);

/// The Redis key of a version counter (a tag, a prefix or the epoch). Only [`Namespace`] makes them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TagKey(String);

impl EntryKey {
    /// The key as sent to the store.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key of the refresh lease of this entry: `ns:r:<key>` for `ns:e:<key>`.
    pub fn refresh_key(&self) -> String {
        // The namespace holds no ':', so the first one ends it and "e:" follows.
        match self.0.split_once(':') {
            Some((ns, rest)) => format!("{ns}:r:{}", rest.strip_prefix("e:").unwrap_or(rest)),
            None => format!("{}:r:", self.0),
        }
    }
}

impl EntryKey {
    /// Whether this entry is under the key prefix whose version key is `prefix` (false for
    /// any other kind of version key).
    pub fn is_under(&self, prefix: &TagKey) -> bool {
        // Both are `ns:<kind>:<encoded user part>`; encoding keeps prefixes prefixes.
        match (self.0.split_once(":e:"), prefix.0.split_once(":p:")) {
            (Some((ns, key)), Some((pns, p))) => ns == pns && key.starts_with(p),
            _ => false,
        }
    }

    /// The entry key and the refresh key as the cluster store names them: `ns:e:{<key>}` and
    /// `ns:r:{<key>}`. The hash tag puts both in one slot, so one script can change them
    /// together; user input is encoded, so it holds no `{` or `}` of its own.
    pub fn hash_tagged(&self) -> (String, String) {
        let (ns, user) = match self.0.split_once(':') {
            Some((ns, rest)) => (ns, rest.strip_prefix("e:").unwrap_or(rest)),
            None => (self.0.as_str(), ""),
        };
        (format!("{ns}:e:{{{user}}}"), format!("{ns}:r:{{{user}}}"))
    }
}

impl TagKey {
    /// The key as sent to the store.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the version key of a key prefix.
    pub fn is_prefix(&self) -> bool {
        matches!(layout(&self.0), Some((_, b'p')))
    }

    /// For the version key of a tag, the shard of the tag clock that fences fills learning
    /// it: the 64-bit FNV-1a hash of the key, modulo [`CLOCK_SHARDS`] (the same in every
    /// process and every version of this crate). `None` for prefixes and the epoch, which
    /// are never learnt.
    pub fn clock_shard(&self) -> Option<usize> {
        let (_, kind) = layout(&self.0)?;
        if kind != b't' {
            return None;
        }
        let hash = self.0.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        Some((hash % CLOCK_SHARDS as u64) as usize)
    }

    /// For the version key of a tag, the key of its shard's clock (`ns:c:{ns}:<i>`).
    pub fn clock(&self) -> Option<TagKey> {
        let shard = self.clock_shard()?;
        let (ns, _) = self.0.split_once(':')?;
        Some(TagKey(clock_key(ns, shard)))
    }
}

impl fmt::Display for EntryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for TagKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The key of tag clock `shard` of namespace `ns`: the namespace as its hash tag, so that a
/// Redis Cluster keeps every clock of a namespace in one slot.
fn clock_key(ns: &str, shard: usize) -> String {
    format!("{ns}:c:{{{ns}}}:{shard}")
}

fn check(what: &'static str, s: &str) -> Result<(), Error> {
    if s.is_empty() || s.len() > MAX_KEY_LEN {
        return Err(Error::InvalidKey {
            what,
            reason: if s.is_empty() {
                "is empty"
            } else {
                "is longer than 1024 bytes"
            },
        });
    }
    Ok(())
}

fn safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':')
}

/// What a store key is, read back from its layout: its namespace and its kind (`e` entry,
/// `t` tag, `p` prefix, `g` epoch, `c` tag clock). `None` for a string of another layout.
/// For stores that receive keys as text (the L1's invalidation messages).
pub(crate) fn layout(key: &str) -> Option<(&str, u8)> {
    let (ns, rest) = key.split_once(':')?;
    let kind = *rest.as_bytes().first()?;
    let well_formed = match kind {
        b'e' | b't' | b'p' => rest.len() > 2 && rest.as_bytes()[1] == b':',
        b'g' => rest.len() == 1,
        b'c' => rest
            .strip_prefix("c:{")
            .and_then(|r| r.strip_prefix(ns))
            .and_then(|r| r.strip_prefix("}:"))
            .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit())),
        _ => false,
    };
    (well_formed && Namespace::new(ns).is_ok()).then_some((ns, kind))
}

/// Percent-encodes every byte outside `[A-Za-z0-9_.:-]`.
pub fn encode(user: &str) -> String {
    let mut s = String::with_capacity(user.len());
    encode_into(user, &mut s);
    s
}

fn encode_into(user: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    // Runs of safe bytes are copied whole (most keys are one run). A run is ASCII and follows
    // an unsafe byte or the start, so it begins and ends on character boundaries.
    let mut run = 0;
    for (i, &b) in user.as_bytes().iter().enumerate() {
        if !safe(b) {
            if let Some(safe_run) = user.get(run..i) {
                out.push_str(safe_run);
            }
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
            run = i + 1;
        }
    }
    if let Some(safe_run) = user.get(run..) {
        out.push_str(safe_run);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ns() -> Namespace {
        Namespace::new("app").expect("valid")
    }

    fn decode(s: &str) -> Vec<u8> {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).expect("hex");
                out.push(u8::from_str_radix(h, 16).expect("hex"));
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        out
    }

    #[test]
    fn namespaces_are_validated() {
        for bad in ["", "a:b", "a*", "a b", "{x}", &"x".repeat(65)] {
            assert!(Namespace::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Namespace::new("catalog-v2.eu_1").is_ok());
    }

    #[test]
    fn layout_is_as_documented() {
        let ns = ns();
        assert_eq!(ns.entry("product:p1").unwrap().as_str(), "app:e:product:p1");
        assert_eq!(ns.tag("category:c1").unwrap().as_str(), "app:t:category:c1");
        assert_eq!(
            ns.prefix("products:list:").unwrap().as_str(),
            "app:p:products:list:"
        );
        assert_eq!(ns.epoch().as_str(), "app:g");
        assert_eq!(ns.clocks().len(), CLOCK_SHARDS);
        assert_eq!(ns.clocks()[3].as_str(), "app:c:{app}:3");
        assert_eq!(ns.entry("a*b{c}").unwrap().as_str(), "app:e:a%2Ab%7Bc%7D");
        assert_eq!(
            ns.entry("product:e:1").unwrap().refresh_key(),
            "app:r:product:e:1"
        );
        assert_eq!(
            ns.entry("product:e:1").unwrap().hash_tagged(),
            ("app:e:{product:e:1}".into(), "app:r:{product:e:1}".into())
        );
        assert_eq!(
            ns.entry("a{b}").unwrap().hash_tagged().0,
            "app:e:{a%7Bb%7D}",
            "the only braces are the hash tag's"
        );
    }

    #[test]
    fn a_tag_has_the_clock_of_its_shard_and_others_none() {
        let ns = ns();
        let t = ns.tag("category:c1").unwrap();
        let shard = t.clock_shard().unwrap();
        assert!(shard < CLOCK_SHARDS);
        assert_eq!(t.clock().as_ref(), Some(&ns.clocks()[shard]));
        // Stable: the same in every process (FNV-1a of the key).
        assert_eq!(
            t.clock_shard(),
            ns.tag("category:c1").unwrap().clock_shard()
        );
        let shards: std::collections::HashSet<usize> = (0..200)
            .filter_map(|i| ns.tag(&format!("t{i}")).unwrap().clock_shard())
            .collect();
        assert_eq!(shards.len(), CLOCK_SHARDS, "tags spread over every shard");
        assert_eq!(ns.prefix("a:").unwrap().clock_shard(), None);
        assert_eq!(ns.epoch().clock(), None);
    }

    #[test]
    fn entries_know_the_prefixes_they_are_under() {
        let ns = ns();
        let page = ns.entry("products:list:1:20").unwrap();
        assert!(page.is_under(&ns.prefix("products:").unwrap()));
        assert!(page.is_under(&ns.prefix("products:list:").unwrap()));
        assert!(!page.is_under(&ns.prefix("products:lists:").unwrap()));
        assert!(!page.is_under(&ns.tag("products:list:").unwrap()));
        let other = Namespace::new("other").unwrap();
        assert!(!page.is_under(&other.prefix("products:").unwrap()));
        // Encoded alike: a key with escaped bytes is under its escaped prefix.
        assert!(
            ns.entry("a b:c")
                .unwrap()
                .is_under(&ns.prefix("a b:").unwrap())
        );
        assert!(ns.prefix("a:").unwrap().is_prefix() && !ns.epoch().is_prefix());
    }

    #[test]
    fn layouts_read_back() {
        let ns = ns();
        assert_eq!(
            layout(ns.entry("a:b").unwrap().as_str()),
            Some(("app", b'e'))
        );
        assert_eq!(layout(ns.tag("x y").unwrap().as_str()), Some(("app", b't')));
        assert_eq!(
            layout(ns.prefix("a:").unwrap().as_str()),
            Some(("app", b'p'))
        );
        assert_eq!(layout(ns.epoch().as_str()), Some(("app", b'g')));
        assert_eq!(layout(ns.clocks()[15].as_str()), Some(("app", b'c')));
        for bad in [
            "",
            "app",
            "app:",
            "app:t:",
            "app:x:1",
            "app:gg",
            "a b:e:k",
            "app:e",
            "app:c",
            "app:c:x",
            "app:c:3",
            "app:c:{other}:3",
            "app:c:{app}:",
        ] {
            assert_eq!(layout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(ns().entry("").is_err());
        assert!(ns().entry(&"k".repeat(MAX_KEY_LEN + 1)).is_err());
        assert!(ns().tag("").is_err());
        assert!(ns().prefix("products").is_err());
        assert!(ns().prefix("a:b:c:d:e:").is_err());
        assert!(ns().prefix("a:b:c:d:").is_ok());
    }

    #[test]
    fn stamps_cover_epoch_prefixes_and_tags() {
        let s = ns()
            .stamps_for("products:list:1:20", &["x", "x", "y"])
            .unwrap();
        let s: Vec<_> = s.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            s,
            [
                "app:g",
                "app:p:products:",
                "app:p:products:list:",
                "app:p:products:list:1:",
                "app:t:x",
                "app:t:y"
            ]
        );
        // A prefix invalidation addresses exactly the stamp an entry under it carries.
        let p = ns().prefix("products:list:").unwrap();
        assert!(
            ns().stamps_for("products:list:9:20", &[] as &[&str])
                .unwrap()
                .contains(&p)
        );
        assert!(
            !ns()
                .stamps_for("productsX:list:9", &[] as &[&str])
                .unwrap()
                .contains(&p)
        );
    }

    proptest! {
        #[test]
        fn encoding_is_injective_and_reversible(a in ".{0,40}", b in ".{0,40}") {
            prop_assert_eq!(decode(&encode(&a)), a.as_bytes().to_vec());
            if a != b {
                prop_assert_ne!(encode(&a), encode(&b));
            }
        }

        #[test]
        fn user_input_forms_no_pattern_and_stays_in_its_namespace(k in any::<String>()) {
            prop_assume!(!k.is_empty() && k.len() <= MAX_KEY_LEN);
            for key in [ns().entry(&k).unwrap().0, ns().tag(&k).unwrap().0] {
                prop_assert!(key.bytes().all(|b| b.is_ascii_graphic()));
                let forbidden = ['*', '?', '[', ']', '\\', '{', '}', ' '];
                prop_assert!(!key.contains(forbidden), "{} holds a forbidden character", key);
                prop_assert!(key.starts_with("app:e:") || key.starts_with("app:t:"));
            }
        }

        #[test]
        fn distinct_inputs_never_share_a_redis_key(
            n1 in "[a-z]{1,3}", n2 in "[a-z]{1,3}", k1 in ".{1,12}", k2 in ".{1,12}",
            kind1 in 0..2u8, kind2 in 0..2u8,
        ) {
            let key = |n: &str, k: &str, kind: u8| {
                let ns = Namespace::new(n).unwrap();
                if kind == 0 { ns.entry(k).unwrap().0 } else { ns.tag(k).unwrap().0 }
            };
            if (n1.as_str(), k1.as_str(), kind1) != (n2.as_str(), k2.as_str(), kind2) {
                prop_assert_ne!(key(&n1, &k1, kind1), key(&n2, &k2, kind2));
            }
        }
    }
}
