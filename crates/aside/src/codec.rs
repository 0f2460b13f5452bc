//! How values become bytes. JSON by default, so entries stay readable in `redis-cli`.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// An encoding failure, with the codec's own error as the source.
#[derive(Debug, thiserror::Error)]
#[error("{codec}: {source}")]
pub struct CodecError {
    /// The codec's name.
    pub codec: &'static str,
    /// What the codec reported.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Turns values into bytes and back. Implement it to store another format; the engine wraps
/// the bytes in its own small envelope (format and schema version), so a codec only sees values.
pub trait Codec: Send + Sync + 'static {
    /// A short name, used in errors and metrics.
    fn name(&self) -> &'static str;
    /// Appends the encoding of `value` to `out`.
    fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>)
    -> Result<(), CodecError>;
    /// Decodes a value.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError>;
}

/// JSON through `serde_json` (the default).
///
/// ```
/// use aside::codec::{Codec, Json};
/// let mut out = Vec::new();
/// Json.encode(&(1, "a"), &mut out).unwrap();
/// assert_eq!(out, br#"[1,"a"]"#);
/// let back: (u8, String) = Json.decode(&out).unwrap();
/// assert_eq!(back, (1, "a".to_string()));
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Json;

impl Codec for Json {
    fn name(&self) -> &'static str {
        "json"
    }

    fn encode<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        serde_json::to_writer(out, value).map_err(|e| CodecError {
            codec: "json",
            source: Box::new(e),
        })
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        serde_json::from_slice(bytes).map_err(|e| CodecError {
            codec: "json",
            source: Box::new(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Product {
        id: String,
        price: f64,
        tags: Vec<String>,
        note: Option<String>,
        stock: BTreeMap<String, i64>,
    }

    fn round<T: Serialize + DeserializeOwned>(v: &T) -> T {
        let mut out = Vec::new();
        Json.encode(v, &mut out).unwrap();
        Json.decode(&out).unwrap()
    }

    proptest! {
        #[test]
        fn json_round_trips(
            id in ".*", price in -1e12f64..1e12, tags in prop::collection::vec(".*", 0..4),
            note in prop::option::of(".*"), stock in prop::collection::btree_map(".*", any::<i64>(), 0..4),
        ) {
            let p = Product { id, price, tags, note, stock };
            prop_assert_eq!(round(&p), p);
        }

        #[test]
        fn scalars_round_trip(i in any::<i64>(), b in any::<bool>(), s in ".*", o in prop::option::of(any::<u32>())) {
            prop_assert_eq!(round(&i), i);
            prop_assert_eq!(round(&b), b);
            prop_assert_eq!(round(&s), s.clone());
            prop_assert_eq!(round(&o), o);
        }
    }

    #[test]
    fn bad_bytes_are_an_error() {
        assert!(Json.decode::<Product>(b"{not json").is_err());
        assert!(Json.decode::<u8>(b"300").is_err());
    }
}
