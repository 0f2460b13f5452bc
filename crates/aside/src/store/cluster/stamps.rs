//! Reading the stamps of several slots at once: the current values of version keys, the
//! versions a lease or a write records (created if missing), the tag clocks, and whether a
//! record still holds the versions it recorded.

use super::ClusterStore;
use super::scripts::by_slot;
use crate::error::StoreError;
use crate::key::TagKey;
use crate::store::Stamp;
use crate::store::client::{int, ms};
use crate::store::record::version_of;
use futures::future::{try_join, try_join_all};
use redis::Value;
use redis::cluster_async::ClusterConnection;
use std::time::Duration;

impl ClusterStore {
    /// The values of `keys` now (one `MGET`, which redis-rs sends to every slot at once).
    pub(super) async fn mget(
        &self,
        conn: &ClusterConnection,
        keys: &[&[u8]],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for k in keys {
            cmd.arg(*k);
        }
        let vals: Vec<Option<Vec<u8>>> = cmd
            .query_async(&mut conn.clone())
            .await
            .map_err(|e| self.error(e))?;
        if vals.len() != keys.len() {
            return Err(StoreError::Protocol("mget: reply length".into()));
        }
        Ok(vals)
    }

    /// Whether every stamp of a record still holds the version it recorded.
    pub(super) async fn current(
        &self,
        conn: &ClusterConnection,
        stamps: &[(&[u8], &[u8])],
    ) -> Result<bool, StoreError> {
        let keys: Vec<&[u8]> = stamps.iter().map(|(k, _)| *k).collect();
        let now = self.mget(conn, &keys).await?;
        Ok(stamps
            .iter()
            .zip(&now)
            .all(|((_, v), n)| n.as_deref() == Some(*v)))
    }

    /// The versions of `keys`, each created if missing and kept alive for at least
    /// `version_ttl`: one script per slot, every slot at once.
    pub(super) async fn versions(
        &self,
        conn: &ClusterConnection,
        keys: &[&str],
        version_ttl: Duration,
    ) -> Result<Vec<i64>, StoreError> {
        let groups = by_slot(keys);
        let replies = try_join_all(groups.iter().map(|group| {
            let call = self.scripts.versions.on(group.iter().map(|&i| keys[i]));
            call.arg(ms(version_ttl)).run::<Vec<Value>>(conn)
        }))
        .await
        .map_err(|e| self.error(e))?;
        let mut out = vec![0; keys.len()];
        for (group, vals) in groups.iter().zip(&replies) {
            if vals.len() != group.len() {
                return Err(StoreError::Protocol("versions: reply length".into()));
            }
            for (&i, v) in group.iter().zip(vals) {
                out[i] = int(v).ok_or_else(|| StoreError::Protocol("versions: value".into()))?;
            }
        }
        Ok(out)
    }

    /// The tag clocks now (0 for one never advanced).
    pub(super) async fn clocks(
        &self,
        conn: &ClusterConnection,
        clocks: &[TagKey],
    ) -> Result<Vec<Stamp>, StoreError> {
        let keys: Vec<&[u8]> = clocks.iter().map(|c| c.as_str().as_bytes()).collect();
        let vals = self.mget(conn, &keys).await?;
        clocks
            .iter()
            .zip(vals)
            .map(|(key, v)| {
                let version = version_of(v.as_deref())
                    .ok_or_else(|| StoreError::Protocol("clock: value".into()))?;
                Ok(Stamp {
                    key: key.clone(),
                    version,
                })
            })
            .collect()
    }

    /// The versions of a lease's stamps and the tag clocks, read after the lease was taken.
    pub(super) async fn lease_for(
        &self,
        conn: &ClusterConnection,
        stamps: &[TagKey],
        clocks: &[TagKey],
        version_ttl: Duration,
    ) -> Result<(Vec<Stamp>, Vec<Stamp>), StoreError> {
        let keys: Vec<&str> = stamps.iter().map(TagKey::as_str).collect();
        let (vers, clocks) = try_join(
            self.versions(conn, &keys, version_ttl),
            self.clocks(conn, clocks),
        )
        .await?;
        let stamps = stamps
            .iter()
            .zip(vers)
            .map(|(key, version)| Stamp {
                key: key.clone(),
                version,
            })
            .collect();
        Ok((stamps, clocks))
    }
}
