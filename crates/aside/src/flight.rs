//! In-process single-flight: concurrent misses on one key share one load.
//!
//! The first caller of a key becomes the leader and loads; callers that arrive while it runs
//! wait for its outcome on a `watch` channel. If the leader is cancelled (its future dropped)
//! the channel closes and the waiters start over, one of them becoming the new leader.
//!
//! # Who may take a shared value
//! A follower's read began when it joined. A value is not older than any write acknowledged
//! before that moment if either
//! - the leader began the observation that produced it (a store read, or its loader) after
//!   the follower joined: every write acknowledged before then had committed, and had its
//!   invalidation applied, before the observation began; or
//! - it was stored by a fenced fill sent after the follower joined: the fill would have been
//!   refused had any write been acknowledged (its invalidation applied) between the claim and
//!   the fill, and a write acknowledged before the claim had committed before the load read
//!   the database. (A write acknowledged after the fill was sent may have found nothing to
//!   refuse: its invalidation deleted the entry the fill wrote, so the value is not for
//!   followers that joined after that; the fill is an observation of its own.)
//!
//! So the leader numbers its observations ([`Leader::observe`]), each follower notes the
//! number when it joins, and every outcome says whom it is [`Fresh`] for; a follower that may
//! not take it reads the store itself (and loads if it finds nothing). This holds whichever instance
//! made the write: a write through another instance sharing the store is seen by the store
//! read or refuses the fill, like one made here.
//!
//! An invalidation made through this process also closes the flights of what it invalidates
//! (its keys, the keys under its prefixes; every flight for a tag or the epoch, since tags
//! learnt from a value are not known while it loads): callers that come after it start a
//! flight of their own instead of waiting for a value they could not take. Flights of other
//! keys go on being joined.

use crate::key::{EntryKey, TagKey};
use bytes::Bytes;
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// Which followers an outcome is for (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fresh {
    /// Every follower: an outcome that is no value (the loader's error).
    All,
    /// Followers that joined before the leader's observation with this number began.
    JoinedBefore(u64),
}

/// An outcome and whom it is for.
#[derive(Clone)]
struct Outcome {
    shared: Shared,
    fresh: Fresh,
}

struct Call {
    tx: watch::Sender<Option<Outcome>>,
    /// Observations the leader has begun.
    observed: AtomicU64,
    /// An invalidation of what it loads came through this process: not joined any more.
    closed: AtomicBool,
}

impl Call {
    fn joinable(&self) -> bool {
        !self.closed.load(Ordering::SeqCst) && self.tx.borrow().is_none()
    }
}

/// The set of loads in flight, by key.
#[derive(Default)]
pub(crate) struct Flights {
    // A std Mutex: held for a map lookup (or, on an invalidation, a pass over the loads in
    // flight), never across an await.
    calls: Mutex<HashMap<EntryKey, Arc<Call>>>,
}

pub(crate) enum Role<'a> {
    Leader(Leader<'a>),
    Follower(Follower),
}

/// A caller waiting for a leader.
pub(crate) struct Follower {
    rx: watch::Receiver<Option<Outcome>>,
    /// How many observations the leader had begun when this follower joined.
    joined_at: u64,
}

/// The leader's handle: `finish` shares the outcome; dropping it unfinished lets waiters retry.
pub(crate) struct Leader<'a> {
    flights: &'a Flights,
    key: EntryKey,
    call: Arc<Call>,
}

impl Flights {
    pub(crate) fn join(&self, key: &EntryKey) -> Role<'_> {
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        // A finished call is about to be unregistered: its outcome is not for newcomers.
        if let Some(call) = calls.get(key)
            && call.joinable()
        {
            return Role::Follower(Follower {
                rx: call.tx.subscribe(),
                joined_at: call.observed.load(Ordering::SeqCst),
            });
        }
        let (tx, _) = watch::channel(None);
        let call = Arc::new(Call {
            tx,
            observed: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        calls.insert(key.clone(), call.clone());
        Role::Leader(Leader {
            flights: self,
            key: key.clone(),
            call,
        })
    }

    /// Whether a flight that a caller would join is running for `key`.
    pub(crate) fn running(&self, key: &EntryKey) -> bool {
        let calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        calls.get(key).is_some_and(|c| c.joinable())
    }

    /// Called on every invalidation made through this process, with what it invalidates:
    /// the flights of those keys, of keys under those prefixes, and, for a tag or the epoch,
    /// every flight, are not joined any more.
    pub(crate) fn invalidated(&self, keys: &[EntryKey], stamps: &[TagKey]) {
        let calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        if calls.is_empty() {
            return;
        }
        let all = stamps.iter().any(|s| !s.is_prefix());
        for (key, call) in calls.iter() {
            if all || keys.contains(key) || stamps.iter().any(|p| key.is_under(p)) {
                call.closed.store(true, Ordering::SeqCst);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.calls.lock().map(|c| c.len()).unwrap_or(0)
    }
}

impl Leader<'_> {
    /// Called right before an observation whose outcome may be shared (a store read, the
    /// loader) begins; its number, for [`finish`](Leader::finish).
    pub(crate) fn observe(&self) -> u64 {
        self.call.observed.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Shares the outcome with the followers it is `fresh` for.
    pub(crate) fn finish(self, shared: Shared, fresh: Fresh) {
        self.call.tx.send_replace(Some(Outcome { shared, fresh }));
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

/// What a follower got from its leader.
pub(crate) enum Followed {
    /// The outcome, which is for this follower.
    Taken(Shared),
    /// An outcome observed before this follower joined, and not stored: the follower must
    /// observe for itself.
    TooOld,
    /// The leader went away without an outcome.
    Gone,
}

impl Follower {
    /// Waits for the leader's outcome.
    pub(crate) async fn wait(mut self) -> Followed {
        let outcome = match self.rx.wait_for(Option::is_some).await {
            Ok(v) => match v.clone() {
                Some(o) => o,
                None => return Followed::Gone,
            },
            Err(_) => return Followed::Gone,
        };
        match outcome.fresh {
            Fresh::All => Followed::Taken(outcome.shared),
            Fresh::JoinedBefore(n) if self.joined_at < n => Followed::Taken(outcome.shared),
            Fresh::JoinedBefore(_) => Followed::TooOld,
        }
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
        leader.finish(Shared::Value(Bytes::from_static(b"v")), Fresh::All);
        assert!(matches!(rx.wait().await, Followed::Taken(Shared::Value(b)) if &b[..] == b"v"));
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
        assert!(matches!(rx.wait().await, Followed::Gone));
        assert!(matches!(f.join(&key("a")), Role::Leader(_)));
    }

    #[tokio::test]
    async fn an_invalidation_closes_the_flights_of_what_it_invalidates() {
        let ns = Namespace::new("t").unwrap();
        let f = Flights::default();
        let _a = f.join(&key("list:1"));
        let _b = f.join(&key("other"));
        f.invalidated(&[], &[ns.prefix("list:").unwrap()]);
        let Role::Leader(new) = f.join(&key("list:1")) else {
            panic!("must not join a flight from before the invalidation")
        };
        assert!(matches!(f.join(&key("list:1")), Role::Follower(_)));
        assert!(
            matches!(f.join(&key("other")), Role::Follower(_)),
            "a flight of another key is still joined"
        );
        drop(_a);
        assert_eq!(
            f.len(),
            2,
            "the old leader does not unregister the new flight"
        );
        f.invalidated(&[key("other")], &[]);
        assert!(matches!(f.join(&key("other")), Role::Leader(_)));
        assert!(matches!(f.join(&key("list:1")), Role::Follower(_)));
        f.invalidated(&[], &[ns.tag("x").unwrap()]);
        assert!(
            matches!(f.join(&key("list:1")), Role::Leader(_)),
            "a tag closes every flight"
        );
        drop(new);
    }

    #[tokio::test]
    async fn a_value_observed_before_a_follower_joined_is_not_for_it() {
        let f = Flights::default();
        let Role::Leader(leader) = f.join(&key("a")) else {
            panic!()
        };
        let Role::Follower(early) = f.join(&key("a")) else {
            panic!()
        };
        let load = leader.observe();
        let Role::Follower(late) = f.join(&key("a")) else {
            panic!()
        };
        let v = || Shared::Value(Bytes::from_static(b"v"));
        leader.finish(v(), Fresh::JoinedBefore(load));
        assert!(
            matches!(early.wait().await, Followed::Taken(_)),
            "joined before the load began"
        );
        assert!(
            matches!(late.wait().await, Followed::TooOld),
            "joined after: observes for itself"
        );
    }

    #[tokio::test]
    async fn a_stored_fill_is_for_followers_that_joined_before_it_was_sent() {
        let f = Flights::default();
        let Role::Leader(leader) = f.join(&key("a")) else {
            panic!()
        };
        leader.observe(); // the load
        let Role::Follower(during_load) = f.join(&key("a")) else {
            panic!()
        };
        let fill = leader.observe();
        let Role::Follower(after_fill) = f.join(&key("a")) else {
            panic!()
        };
        leader.finish(Shared::Absent, Fresh::JoinedBefore(fill));
        assert!(matches!(
            during_load.wait().await,
            Followed::Taken(Shared::Absent)
        ));
        assert!(matches!(after_fill.wait().await, Followed::TooOld));
    }

    #[tokio::test]
    async fn a_finished_flight_is_not_joined() {
        let f = Flights::default();
        let Role::Leader(leader) = f.join(&key("a")) else {
            panic!()
        };
        // Finished, not yet unregistered (as between `finish` and the leader's drop).
        leader.call.tx.send_replace(Some(Outcome {
            shared: Shared::Absent,
            fresh: Fresh::All,
        }));
        assert!(matches!(f.join(&key("a")), Role::Leader(_)));
        drop(leader);
    }
}
