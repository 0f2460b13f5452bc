//! The keys of a batch that found nothing fresh, to an outcome each, in rounds (see the
//! module docs of `batch` for the order of the steps, why the loads never wait for the
//! waits, and the straggler rule); the one loader call per round that loads them; and the
//! background refresh of a batch's stale keys, with one loader call too.

use super::{Keys, Outcome};
use crate::cache::entry::Ttls;
use crate::cache::fill::{Load, run_loader};
use crate::cache::lease::{Missed, Next, Step};
use crate::cache::value::{Decoded, Mode, stale};
use crate::cache::{Cache, Fetched, Status, Tagged};
use crate::codec::Codec;
use crate::error::LoadError;
use crate::flight::Role;
use futures::future::join_all;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use tracing::{Instrument, debug, debug_span};

impl<C: Codec> Cache<C> {
    /// The keys `todo` of a batch that found nothing fresh, to an outcome each (see the
    /// module docs).
    pub(super) async fn miss_many<T, M, E, L, Fut>(
        &self,
        keys: &Keys,
        t: Ttls,
        mut todo: Vec<usize>,
        mut missed: Vec<Missed<M::Out>>,
        loader: &L,
        out: &mut [Option<Outcome<M::Out, E>>],
    ) where
        T: Serialize + Send + 'static,
        M: Mode<T> + 'static,
        M::Out: Send + 'static,
        E: Send + Sync + 'static,
        L: Fn(Vec<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<HashMap<String, Tagged<T>>, E>> + Send + 'static,
    {
        let (entries, stamps) = (&keys.entries, &keys.stamps);
        for _ in 0..4 {
            if todo.is_empty() {
                return;
            }
            // Join and claim, every key at once.
            let started = join_all(todo.iter().map(|&i| {
                let mut st = std::mem::take(&mut missed[i]);
                async move {
                    let step = self
                        .start::<T, M, E>(&entries[i], &stamps[i], t, &mut st)
                        .await;
                    (i, step, st)
                }
            }))
            .await;
            let (mut loads, mut waits, mut follows) = (Vec::new(), Vec::new(), Vec::new());
            todo.clear();
            for (i, step, st) in started {
                match step {
                    Step::Now(Next::Done(r)) => out[i] = Some(r),
                    Step::Now(Next::Load(l)) => loads.push((i, l)),
                    Step::Now(Next::Again) => todo.push(i),
                    Step::Wait(leader) => waits.push((i, leader, st)),
                    Step::Follow(f) => follows.push((i, f, st)),
                }
            }
            // The keys this batch leads go to the loader at once; the waits on other loads
            // run alongside, so that no batch waits for another before loading.
            let led = self.load_batch::<T, M, E, L, Fut>(keys, loads, loader);
            let waited = async {
                let waited = join_all(waits.into_iter().map(|(i, leader, mut st)| async move {
                    let next = self
                        .wait::<T, M, E>(&entries[i], &stamps[i], t, leader, &mut st)
                        .await;
                    (i, next, st)
                }))
                .await;
                // Leases that lapsed unfilled: these keys are loaded now, without them.
                let mut late = Vec::new();
                let mut rest = Vec::new();
                for (i, next, st) in waited {
                    match next {
                        Next::Load(l) => late.push((i, l)),
                        next => rest.push((i, next, st)),
                    }
                }
                if !late.is_empty() {
                    debug!(
                        keys = late.len(),
                        "batch: leases not filled in time; loading"
                    );
                }
                let late = self.load_batch::<T, M, E, L, Fut>(keys, late, loader).await;
                (rest, late)
            };
            let followed = join_all(follows.into_iter().map(|(i, f, mut st)| async move {
                let r = self
                    .follow::<T, M, E>(&entries[i], &stamps[i], f, &mut st)
                    .await;
                (i, r, st)
            }));
            let (led, (waited, late), followed) = tokio::join!(led, waited, followed);
            for (i, r) in led.into_iter().chain(late) {
                out[i] = Some(r);
            }
            for (i, next, st) in waited {
                match next {
                    Next::Done(r) => out[i] = Some(r),
                    Next::Load(_) | Next::Again => {
                        missed[i] = st;
                        todo.push(i);
                    }
                }
            }
            for (i, r, st) in followed {
                match r {
                    Some(r) => out[i] = Some(r),
                    None => {
                        missed[i] = st;
                        todo.push(i);
                    }
                }
            }
            if !todo.is_empty() {
                debug!(
                    keys = todo.len(),
                    "batch: keys start over (a straggler round)"
                );
            }
        }
        if todo.is_empty() {
            return;
        }
        // Rounds exhausted (leaders kept vanishing, entries kept turning out undecodable):
        // load what is left without the store.
        let users: Vec<String> = todo.iter().map(|&i| keys.users[i].clone()).collect();
        let mut got = run_loader(self, || loader(users)).await;
        for i in todo {
            let fallback = missed[i].fallback.take();
            out[i] = Some(match &mut got {
                Ok(map) => match map.remove(&keys.users[i]).and_then(|v| v.value) {
                    Some(v) => self
                        .output::<T, M>(v)
                        .map_err(LoadError::Cache)
                        .map(|v| Fetched {
                            value: Some(v),
                            status: Status::Miss,
                        }),
                    None => Ok(Fetched {
                        value: None,
                        status: Status::Miss,
                    }),
                },
                Err(_) if fallback.is_some() => {
                    self.inner.metrics.stale.increment(1);
                    Ok(stale(fallback.unwrap_or(Decoded::Absent)))
                }
                Err(e) => Err(LoadError::Loader(e.clone())),
            });
        }
    }

    /// Runs `loads` with **one** loader call (none if there are none): each key's load is
    /// begun (its observation taken, its lease held), the loader asked for all of them, and
    /// each key's outcome settled on its own (fenced fill, shared with its followers).
    pub(super) async fn load_batch<T, M, E, L, Fut>(
        &self,
        keys: &Keys,
        loads: Vec<(usize, Load<'_, M::Out>)>,
        loader: &L,
    ) -> Vec<(usize, Outcome<M::Out, E>)>
    where
        T: Serialize + Send + 'static,
        M: Mode<T> + 'static,
        M::Out: Send + 'static,
        E: Send + Sync + 'static,
        L: Fn(Vec<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<HashMap<String, Tagged<T>>, E>> + Send + 'static,
    {
        if loads.is_empty() {
            return Vec::new();
        }
        let store = &self.inner.store;
        let loading: Vec<_> = loads
            .into_iter()
            .map(|(i, l)| (i, l.begin(store, &keys.entries[i])))
            .collect();
        let asked: Vec<String> = loading
            .iter()
            .map(|(i, _)| keys.users[*i].clone())
            .collect();
        let mut got = run_loader(self, || loader(asked)).await;
        join_all(loading.into_iter().map(|(i, l)| {
            let one = match &mut got {
                Ok(map) => Ok(map.remove(&keys.users[i]).unwrap_or_else(Tagged::missing)),
                Err(e) => Err(e.clone()),
            };
            async move { (i, self.settle::<T, M, E>(&keys.entries[i], l, one).await) }
        }))
        .await
    }

    /// Refreshes the stale (or early-refreshed) keys `which` of a batch on a task of their
    /// own, with one loader call for all of them: each as a single refresh (once per key in
    /// this process, a refresh lease across processes, a fenced fill).
    pub(super) fn revalidate_many<T, M, E, L, Fut>(
        &self,
        keys: &Keys,
        which: &[(usize, u64)],
        t: Ttls,
        loader: Arc<L>,
    ) where
        T: Serialize + Send + 'static,
        M: Mode<T> + 'static,
        M::Out: Send + 'static,
        E: Send + Sync + 'static,
        L: Fn(Vec<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<HashMap<String, Tagged<T>>, E>> + Send + 'static,
    {
        let which: Vec<(usize, u64)> = which
            .iter()
            .copied()
            .filter(|&(i, _)| !self.inner.flights.running(&keys.entries[i]))
            .collect();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if which.is_empty() {
            return;
        }
        let mine = Keys {
            users: which.iter().map(|&(i, _)| keys.users[i].clone()).collect(),
            entries: which
                .iter()
                .map(|&(i, _)| keys.entries[i].clone())
                .collect(),
            stamps: which.iter().map(|&(i, _)| keys.stamps[i].clone()).collect(),
        };
        let until: Vec<u64> = which.iter().map(|&(_, u)| u).collect();
        let cache = self.clone();
        let span = debug_span!("aside.refresh_many", keys = until.len());
        rt.spawn(
            async move {
                let cache = &cache;
                let mine = &mine;
                let claims = (0..until.len()).filter_map(|j| {
                    let Role::Leader(leader) = cache.inner.flights.join(&mine.entries[j]) else {
                        return None;
                    };
                    let until = until[j];
                    Some(async move {
                        let k = &mine.entries[j];
                        let load = cache
                            .refresh_load(leader, k, until, &mine.stamps[j], t)
                            .await;
                        load.map(|l| (j, l))
                    })
                });
                let loads: Vec<_> = join_all(claims).await.into_iter().flatten().collect();
                let done = cache
                    .load_batch::<T, M, E, L, Fut>(mine, loads, &*loader)
                    .await;
                if done.iter().any(|(_, r)| r.is_err()) {
                    debug!("background refresh failed; the stale values stay");
                }
            }
            .instrument(span),
        );
    }
}
