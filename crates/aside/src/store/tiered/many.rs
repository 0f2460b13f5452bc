//! The batch read of the two-tier store ([`Store::get_many`](crate::store::Store::get_many)):
//! the keys the L1 holds valid copies of are answered from it; the others are read from the
//! L2 in one batch read, with their remaining TTLs in one pipeline alongside, and copied into
//! the L1 as a single read would copy them (each copy's snapshot taken before the L2 read).

use super::{L1Copy, TieredStore};
use crate::error::StoreError;
use crate::key::{EntryKey, TagKey};
use crate::store::{Lookup, named};
use std::sync::Arc;
use std::time::{Duration, Instant};

impl TieredStore {
    /// See the module docs.
    pub(super) async fn read_many(
        &self,
        keys: &[EntryKey],
        stamps: &[Vec<TagKey>],
    ) -> Result<Vec<Lookup>, StoreError> {
        let s = &self.inner.shared;
        let l2 = &self.inner.l2;
        if !s.live() {
            s.metrics.bypassed.increment(keys.len() as u64);
            return l2.get_many(keys, stamps).await;
        }
        let mut out: Vec<Option<Lookup>> = vec![None; keys.len()];
        let mut rest = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            if let Some(c) = s.l1.get(k) {
                if c.expires > Instant::now() && s.gens.current(&c.snap) {
                    s.metrics.hits.increment(1);
                    out[i] = Some(Lookup::Hit(c.payload.clone()));
                    continue;
                }
                s.l1.invalidate(k);
            }
            s.metrics.misses.increment(1);
            rest.push(i);
        }
        if !rest.is_empty() {
            let rest_keys: Vec<EntryKey> = rest.iter().map(|&i| keys[i].clone()).collect();
            let rest_stamps: Vec<Vec<TagKey>> = if stamps.is_empty() {
                Vec::new()
            } else {
                rest.iter().map(|&i| named(stamps, i).to_vec()).collect()
            };
            // Before the L2 read: an invalidation from now on refuses these copies.
            let snaps: Vec<_> = rest
                .iter()
                .map(|&i| {
                    let deps = s.gens.deps(&keys[i], named(stamps, i))?;
                    Some(s.gens.snapshot(deps))
                })
                .collect();
            let start = Instant::now();
            let (read, ttls) = tokio::join!(
                l2.get_many(&rest_keys, &rest_stamps),
                self.pttls(&rest_keys)
            );
            let read = read?;
            if read.len() != rest.len() {
                return Err(StoreError::Protocol("get_many: reply length".into()));
            }
            let ttls = ttls.unwrap_or_default();
            for (j, (lookup, snap)) in read.into_iter().zip(snaps).enumerate() {
                let i = rest[j];
                if let (Lookup::Hit(p), Some(snap), Some(&ms)) = (&lookup, snap, ttls.get(j))
                    && ms > 0
                    && s.gens.current(&snap)
                {
                    // `start` is before Redis read the TTL: the copy never outlives the entry.
                    let life = Duration::from_millis(ms as u64).min(s.ttl);
                    let copy = L1Copy {
                        payload: p.clone(),
                        snap,
                        expires: start + life,
                    };
                    s.l1.insert(keys[i].clone(), Arc::new(copy));
                }
                out[i] = Some(lookup);
            }
        }
        Ok(out.into_iter().map(|l| l.unwrap_or(Lookup::Miss)).collect())
    }

    /// The remaining TTLs of entries in the L2, in milliseconds (0 or less: none), in one
    /// pipeline.
    async fn pttls(&self, keys: &[EntryKey]) -> Result<Vec<i64>, StoreError> {
        let mut conn = self.inner.bus.get();
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.cmd("PTTL").arg(k.as_str());
        }
        let ttls: Vec<i64> = self.bounded(pipe.query_async(&mut conn)).await?;
        if ttls.len() != keys.len() {
            return Err(StoreError::Protocol("pttl: reply length".into()));
        }
        Ok(ttls)
    }
}
