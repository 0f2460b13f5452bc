//! [`ChaosStore`]: a store that fails on demand, for testing what a service does when its
//! cache store misbehaves, without stopping a real Redis.

use super::{Claim, ClaimTerms, Kind, Lease, Lifetime, Lookup, Store};
use crate::error::StoreError;
use crate::key::{EntryKey, TagKey};
use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

/// Which calls a [`ChaosStore`] fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Failing {
    /// None: every call goes to the wrapped store.
    Nothing = 0,
    /// Invalidations (`delete`, `bump`): reads, leases and writes still work, as when a
    /// store drops some commands.
    Invalidations = 1,
    /// Every call, as when the store cannot be reached.
    Everything = 2,
}

/// Wraps a store and fails the calls chosen with [`fail`](ChaosStore::fail) with
/// [`StoreError::Protocol`], as an unreachable or misbehaving store would.
///
/// ```
/// use aside::store::{ChaosStore, Failing, MemoryStore};
/// use std::sync::Arc;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let store = Arc::new(ChaosStore::new(Arc::new(MemoryStore::new(100))));
/// let cache = aside::Cache::builder().store(store.clone()).build().unwrap();
/// store.fail(Failing::Everything);
/// assert!(cache.get::<u8>("k").await.is_err()); // an outage, not a miss
/// store.fail(Failing::Nothing);
/// # });
/// ```
#[derive(Debug)]
pub struct ChaosStore {
    inner: Arc<dyn Store>,
    failing: AtomicU8,
}

impl ChaosStore {
    /// `inner`, failing nothing yet.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            failing: AtomicU8::new(Failing::Nothing as u8),
        }
    }

    /// Fails `what` from now on (and no longer what it failed before).
    pub fn fail(&self, what: Failing) {
        self.failing.store(what as u8, Ordering::SeqCst);
    }

    /// What it fails now.
    pub fn failing(&self) -> Failing {
        match self.failing.load(Ordering::SeqCst) {
            0 => Failing::Nothing,
            1 => Failing::Invalidations,
            _ => Failing::Everything,
        }
    }

    fn check(&self, invalidation: bool) -> Result<(), StoreError> {
        match self.failing() {
            Failing::Everything => Err(fault()),
            Failing::Invalidations if invalidation => Err(fault()),
            _ => Ok(()),
        }
    }
}

fn fault() -> StoreError {
    StoreError::Protocol("failure injected by ChaosStore".into())
}

#[async_trait]
impl Store for ChaosStore {
    fn kind(&self) -> Kind {
        self.inner.kind()
    }

    fn reads_need_stamps(&self) -> bool {
        self.inner.reads_need_stamps()
    }

    async fn get(&self, key: &EntryKey, stamps: &[TagKey]) -> Result<Lookup, StoreError> {
        self.check(false)?;
        self.inner.get(key, stamps).await
    }

    async fn get_many(
        &self,
        keys: &[EntryKey],
        stamps: &[Vec<TagKey>],
    ) -> Result<Vec<Lookup>, StoreError> {
        self.check(false)?;
        self.inner.get_many(keys, stamps).await
    }

    async fn claim(
        &self,
        key: &EntryKey,
        stamps: &[TagKey],
        clocks: &[TagKey],
        terms: ClaimTerms,
    ) -> Result<Claim, StoreError> {
        self.check(false)?;
        self.inner.claim(key, stamps, clocks, terms).await
    }

    async fn claim_refresh(
        &self,
        key: &EntryKey,
        fresh_until: u64,
        stamps: &[TagKey],
        clocks: &[TagKey],
        terms: ClaimTerms,
    ) -> Result<Option<Lease>, StoreError> {
        self.check(false)?;
        let claim = self
            .inner
            .claim_refresh(key, fresh_until, stamps, clocks, terms);
        claim.await
    }

    async fn fill(
        &self,
        key: &EntryKey,
        lease: &Lease,
        learnt: &[TagKey],
        payload: Bytes,
        life: Lifetime,
    ) -> Result<bool, StoreError> {
        self.check(false)?;
        self.inner.fill(key, lease, learnt, payload, life).await
    }

    async fn release(&self, key: &EntryKey, lease: &Lease) -> Result<(), StoreError> {
        self.check(false)?;
        self.inner.release(key, lease).await
    }

    async fn set(
        &self,
        key: &EntryKey,
        stamps: &[TagKey],
        payload: Bytes,
        life: Lifetime,
    ) -> Result<(), StoreError> {
        self.check(false)?;
        self.inner.set(key, stamps, payload, life).await
    }

    async fn delete(&self, keys: &[EntryKey]) -> Result<(), StoreError> {
        self.check(true)?;
        self.inner.delete(keys).await
    }

    async fn bump(&self, stamps: &[TagKey]) -> Result<(), StoreError> {
        self.check(true)?;
        self.inner.bump(stamps).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.check(false)?;
        self.inner.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Namespace;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn fails_what_it_is_told_to() {
        let s = ChaosStore::new(Arc::new(MemoryStore::new(10)));
        let ns = Namespace::new("t").unwrap();
        let k = ns.entry("k").unwrap();
        let life = Lifetime::new(std::time::Duration::from_secs(1), std::time::Duration::ZERO);
        assert!(s.set(&k, &[], Bytes::from_static(b"v"), life).await.is_ok());
        s.fail(Failing::Invalidations);
        assert!(s.get(&k, &[]).await.is_ok(), "reads still work");
        assert!(s.get_many(std::slice::from_ref(&k), &[]).await.is_ok());
        assert!(s.delete(std::slice::from_ref(&k)).await.is_err());
        assert!(s.bump(&[ns.epoch()]).await.is_err());
        s.fail(Failing::Everything);
        assert!(s.get(&k, &[]).await.is_err() && s.ping().await.is_err());
        assert!(s.get_many(std::slice::from_ref(&k), &[]).await.is_err());
        s.fail(Failing::Nothing);
        assert!(s.delete(std::slice::from_ref(&k)).await.is_ok());
        assert_eq!(s.get(&k, &[]).await.unwrap(), Lookup::Miss);
    }
}
