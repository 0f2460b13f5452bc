//! The batch read of the cluster store ([`Store::get_many`](crate::store::Store::get_many)):
//! two steps for any number of keys, as a single read of a hit takes.
//!
//! 1. One `MGET` of every entry key. The keys belong to many slots: redis-rs splits the
//!    command by slot, sends each node its part at once, and puts the replies back in order.
//! 2. One `MGET` of the stamps every entry found carries (each version key once), split and
//!    sent the same way.
//!
//! An entry whose stamps still hold their recorded versions in step 2 was valid when step 1
//! read it: versions never return to an earlier value (see the module docs of the store).

use super::ClusterStore;
use crate::error::StoreError;
use crate::key::EntryKey;
use crate::store::Lookup;
use crate::store::record::{payload_of, record_of};
use std::collections::HashMap;

/// An entry found, waiting for the check of its stamps: (index of the version key, the
/// version recorded) each, and where its payload starts.
struct Pending {
    needs: Vec<(usize, Vec<u8>)>,
    at: usize,
}

impl ClusterStore {
    /// See the module docs.
    pub(super) async fn read_many(&self, keys: &[EntryKey]) -> Result<Vec<Lookup>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.bounded(async {
            let conn = self.conn().await?;
            let names: Vec<String> = keys.iter().map(|k| k.hash_tagged().0).collect();
            let refs: Vec<&[u8]> = names.iter().map(|n| n.as_bytes()).collect();
            let entries = self.mget(&conn, &refs).await?;
            let mut stamps: Vec<Vec<u8>> = Vec::new();
            let mut at: HashMap<Vec<u8>, usize> = HashMap::new();
            let mut out: Vec<Result<Lookup, Pending>> = Vec::with_capacity(keys.len());
            for entry in &entries {
                let Some(entry) = entry else {
                    out.push(Ok(Lookup::Miss));
                    continue;
                };
                let record = match record_of(entry) {
                    Ok(r) => r,
                    Err(not) => {
                        out.push(Ok(not));
                        continue;
                    }
                };
                let needs = record
                    .stamps()
                    .map(|(k, v)| {
                        let i = *at.entry(k.to_vec()).or_insert_with(|| {
                            stamps.push(k.to_vec());
                            stamps.len() - 1
                        });
                        (i, v.to_vec())
                    })
                    .collect();
                out.push(Err(Pending {
                    needs,
                    at: record.payload_at,
                }));
            }
            let refs: Vec<&[u8]> = stamps.iter().map(Vec::as_slice).collect();
            let now = self.mget(&conn, &refs).await?;
            Ok(out
                .into_iter()
                .zip(entries)
                .map(|(judged, entry)| match (judged, entry) {
                    (Ok(lookup), _) => lookup,
                    (Err(p), Some(entry)) => {
                        let current = p
                            .needs
                            .iter()
                            .all(|(i, v)| now[*i].as_deref() == Some(v.as_slice()));
                        if current {
                            Lookup::Hit(payload_of(entry, p.at))
                        } else {
                            Lookup::Miss
                        }
                    }
                    (Err(_), None) => Lookup::Miss,
                })
                .collect())
        })
        .await
    }
}
