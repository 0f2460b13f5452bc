//! In-process single-flight: concurrent misses on one key share one load.
//!
//! The first caller of a key becomes the leader and loads; callers that arrive while it runs
//! wait for its outcome on a `watch` channel. If the leader is cancelled (its future dropped)
//! the channel closes and the waiters start over, one of them becoming the new leader.
//!
//! Any invalidation made through this process bumps a generation counter: a flight that
//! started before it is not joined by callers that come after it, so a read that follows an
//! acknowledged write never receives a value loaded before that write.

use crate::key::EntryKey;
use bytes::Bytes;
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// What a leader hands to the callers that waited on it.
#[derive(Clone)]
pub(crate) enum Shared {
    /// An envelope with a value.
    Value(Bytes),
    /// The loader found nothing.
    Absent,
    /// The loader failed; the error, type-erased.
    Failed(Arc<dyn Any + Send + Sync>),
    /// The leader could not share its outcome (its value did not encode): load yourself.
    Unshared,
}

struct Call {
    generation: u64,
    tx: watch::Sender<Option<Shared>>,
}

/// The set of loads in flight, by key.
#[derive(Default)]
pub(crate) struct Flights {
    // A std Mutex: held for a map lookup only, never across an await.
    calls: Mutex<HashMap<EntryKey, Arc<Call>>>,
    generation: AtomicU64,
}

pub(crate) enum Role<'a> {
    Leader(Leader<'a>),
    Follower(watch::Receiver<Option<Shared>>),
}

/// The leader's handle: `finish` shares the outcome; dropping it unfinished lets waiters retry.
pub(crate) struct Leader<'a> {
    flights: &'a Flights,
    key: EntryKey,
    call: Arc<Call>,
}

impl Flights {
    pub(crate) fn join(&self, key: &EntryKey) -> Role<'_> {
        let generation = self.generation.load(Ordering::SeqCst);
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(call) = calls.get(key)
            && call.generation == generation
        {
            return Role::Follower(call.tx.subscribe());
        }
        let (tx, _) = watch::channel(None);
        let call = Arc::new(Call { generation, tx });
        calls.insert(key.clone(), call.clone());
        Role::Leader(Leader {
            flights: self,
            key: key.clone(),
            call,
        })
    }

    /// Whether a flight that a caller would join is running for `key`.
    pub(crate) fn running(&self, key: &EntryKey) -> bool {
        let generation = self.generation.load(Ordering::SeqCst);
        let calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        calls.get(key).is_some_and(|c| c.generation == generation)
    }

    /// Called on every invalidation: flights already running are not joined any more.
    pub(crate) fn invalidated(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.calls.lock().map(|c| c.len()).unwrap_or(0)
    }
}

impl Leader<'_> {
    pub(crate) fn finish(self, outcome: Shared) {
        self.call.tx.send_replace(Some(outcome));
        // Drop runs next and unregisters the call.
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let mut calls = self.flights.calls.lock().unwrap_or_else(|p| p.into_inner());
        if calls
            .get(&self.key)
            .is_some_and(|c| Arc::ptr_eq(c, &self.call))
        {
            calls.remove(&self.key);
        }
    }
}

/// Waits for the leader; `None` if it went away without an outcome.
pub(crate) async fn wait(mut rx: watch::Receiver<Option<Shared>>) -> Option<Shared> {
    match rx.wait_for(Option::is_some).await {
        Ok(v) => v.clone(),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Namespace;

    fn key(k: &str) -> EntryKey {
        Namespace::new("t").unwrap().entry(k).unwrap()
    }

    #[tokio::test]
    async fn followers_get_the_leaders_outcome() {
        let f = Flights::default();
        let Role::Leader(leader) = f.join(&key("a")) else {
            panic!("first caller leads")
        };
        let Role::Follower(rx) = f.join(&key("a")) else {
            panic!("second caller follows")
        };
        assert!(
            matches!(f.join(&key("b")), Role::Leader(_)),
            "other keys fly alone"
        );
        assert!(f.running(&key("a")) && !f.running(&key("c")));
        leader.finish(Shared::Value(Bytes::from_static(b"v")));
        assert!(matches!(wait(rx).await, Some(Shared::Value(b)) if &b[..] == b"v"));
        assert_eq!(f.len(), 0);
        assert!(!f.running(&key("a")));
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_its_followers() {
        let f = Flights::default();
        let leader = f.join(&key("a"));
        let Role::Follower(rx) = f.join(&key("a")) else {
            panic!()
        };
        drop(leader);
        assert!(wait(rx).await.is_none());
        assert!(matches!(f.join(&key("a")), Role::Leader(_)));
    }

    #[tokio::test]
    async fn an_invalidation_starts_a_new_flight() {
        let f = Flights::default();
        let _old = f.join(&key("a"));
        f.invalidated();
        let Role::Leader(new) = f.join(&key("a")) else {
            panic!("must not join a flight from before the invalidation")
        };
        assert!(matches!(f.join(&key("a")), Role::Follower(_)));
        drop(_old);
        assert_eq!(
            f.len(),
            1,
            "the old leader does not unregister the new flight"
        );
        drop(new);
    }
}
