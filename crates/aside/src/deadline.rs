//! Upper bounds on store calls, checked by one watchdog thread instead of a timer per call.
//!
//! Every Redis call is bounded, so a per-call `tokio::time::timeout` would register and clear
//! a timer-wheel entry on every cache read, a cost that shows on the hit path. Store timeouts
//! are safety nets in the hundreds of milliseconds, so they do not need a timer's precision:
//! a call that is still pending after its first poll is entered in a shared table (one short
//! lock), and one thread, awake only while calls are pending, wakes those past their deadline
//! every [`TICK`]. A call therefore times out between its bound and its bound plus one tick.
//! The thread belongs to no runtime, so the bound holds for calls on any runtime, including
//! one that is shutting down.

use slab::Slab;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How often the watchdog looks at pending calls: the most a bound can be overrun by.
pub(crate) const TICK: Duration = Duration::from_millis(5);

/// How long the watchdog keeps ticking with no call pending before it sleeps until one is.
const LINGER: Duration = Duration::from_secs(1);

/// Why a call did not finish: it reached its bound.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Elapsed;

/// `fut`, failing with [`Elapsed`] once `bound` has passed without it finishing.
pub(crate) fn within<F: Future>(bound: Duration, fut: F) -> Within<F> {
    Within {
        fut,
        bound,
        entry: None,
    }
}

pin_project_lite::pin_project! {
    /// The future of [`within`].
    pub(crate) struct Within<F> {
        #[pin]
        fut: F,
        bound: Duration,
        // Its place in the watchdog's table and its deadline, once it has been pending.
        entry: Option<(Key, Instant)>,
    }

    impl<F> PinnedDrop for Within<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some((key, _)) = this.entry {
                watchdog().remove(key);
            }
        }
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.fut.poll(cx) {
            if let Some((key, _)) = this.entry.take() {
                watchdog().remove(key);
            }
            return Poll::Ready(Ok(v));
        }
        match *this.entry {
            None => {
                let deadline = Instant::now() + *this.bound;
                *this.entry = Some((watchdog().insert(deadline, cx.waker()), deadline));
            }
            Some((key, deadline)) => {
                if Instant::now() >= deadline {
                    *this.entry = None;
                    watchdog().remove(key);
                    return Poll::Ready(Err(Elapsed));
                }
                watchdog().update(key, cx.waker());
            }
        }
        Poll::Pending
    }
}

/// How many independently locked parts the table has: threads use different ones, so calls
/// on many cores do not queue on one lock.
const SHARDS: usize = 16;

/// A pending call's place: its shard and its key there.
#[derive(Clone, Copy, Debug)]
struct Key(usize, usize);

struct Pending {
    deadline: Instant,
    waker: Waker,
}

struct Watchdog {
    shards: [Mutex<Slab<Pending>>; SHARDS],
    /// Whether the watchdog thread sleeps until the next insert.
    sleeping: AtomicBool,
    thread: OnceLock<std::thread::Thread>,
}

/// Starts the watchdog thread if it is not running yet. Stores call this when they are
/// built, so that an OS that refuses the thread fails the build, not a cache call.
pub(crate) fn start() -> std::io::Result<()> {
    watchdog().start(spawn_thread)
}

fn spawn_thread(run: Box<dyn FnOnce() + Send>) -> std::io::Result<std::thread::Thread> {
    std::thread::Builder::new()
        .name("aside-deadlines".into())
        .spawn(run)
        .map(|h| h.thread().clone())
}

fn watchdog() -> &'static Watchdog {
    static WATCHDOG: Watchdog = Watchdog::new();
    &WATCHDOG
}

/// The shard of the calling thread, given out in turn.
fn my_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    MINE.with(|s| *s)
}

impl Watchdog {
    const fn new() -> Self {
        Watchdog {
            shards: [const { Mutex::new(Slab::new()) }; SHARDS],
            // Asleep until the first pending call wakes it.
            sleeping: AtomicBool::new(true),
            thread: OnceLock::new(),
        }
    }

    fn shard(&self, i: usize) -> MutexGuard<'_, Slab<Pending>> {
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&'static self, deadline: Instant, waker: &Waker) -> Key {
        let shard = my_shard();
        let key = self.shard(shard).insert(Pending {
            deadline,
            waker: waker.clone(),
        });
        // Paired with the fence in `run`: either the thread sees this entry before it goes
        // to sleep, or this sees it asleep and wakes it.
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) && self.sleeping.swap(false, Ordering::SeqCst) {
            self.wake_thread();
        }
        Key(shard, key)
    }

    fn update(&self, Key(shard, key): Key, waker: &Waker) {
        if let Some(p) = self.shard(shard).get_mut(key)
            && !p.waker.will_wake(waker)
        {
            p.waker = waker.clone();
        }
    }

    fn remove(&self, Key(shard, key): Key) {
        self.shard(shard).try_remove(key);
    }

    fn is_empty(&self) -> bool {
        (0..SHARDS).all(|i| self.shard(i).is_empty())
    }

    /// Starts the thread unless it runs already. `spawn` starts a thread running the given
    /// function and hands back its handle (a parameter so that a refusal can be tested).
    fn start(
        &'static self,
        spawn: impl FnOnce(Box<dyn FnOnce() + Send>) -> std::io::Result<std::thread::Thread>,
    ) -> std::io::Result<()> {
        if self.thread.get().is_some() {
            return Ok(());
        }
        static STARTING: Mutex<()> = Mutex::new(());
        let _one_at_a_time = STARTING.lock().unwrap_or_else(|p| p.into_inner());
        if self.thread.get().is_none() {
            let thread = spawn(Box::new(move || self.run()))?;
            let _ = self.thread.set(thread);
        }
        Ok(())
    }

    /// Wakes the thread from its sleep (starting it if no store has yet).
    fn wake_thread(&'static self) {
        match self.thread.get() {
            Some(thread) => thread.unpark(),
            None => {
                if let Err(e) = self.start(spawn_thread) {
                    // Stores start the thread when they are built, so this is not expected.
                    // The call runs on unbounded; the next pending call tries again.
                    tracing::error!(error = %e, "cannot start the aside deadline thread");
                    self.sleeping.store(true, Ordering::SeqCst);
                }
            }
        }
    }

    fn run(&self) {
        let mut quiet_since: Option<Instant> = None;
        loop {
            std::thread::park_timeout(TICK);
            let now = Instant::now();
            let mut empty = true;
            for i in 0..SHARDS {
                for (_, p) in self.shard(i).iter() {
                    empty = false;
                    if p.deadline <= now {
                        p.waker.wake_by_ref();
                    }
                }
            }
            if !empty {
                quiet_since = None;
                continue;
            }
            if now.duration_since(*quiet_since.get_or_insert(now)) < LINGER {
                continue;
            }
            quiet_since = None;
            self.sleeping.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if !self.is_empty() {
                // A call came in meanwhile; if its insert already cleared the flag (and
                // unparked this thread), the next park returns at once, which is harmless.
                self.sleeping.store(false, Ordering::SeqCst);
                continue;
            }
            while self.sleeping.load(Ordering::SeqCst) {
                std::thread::park();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The watchdog is process-wide: these tests take turns, so each can see the table empty.
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    /// `fut`, or a test failure if the watchdog does not end it within 10 s (rather than a
    /// test that hangs). The timer is polled first: a `timeout` would poll `fut` first, and a
    /// `Within` polled that late ends by itself, which would hide a watchdog that never woke it.
    async fn surely<F: Future>(fut: F) -> F::Output {
        tokio::select! {
            biased;
            () = tokio::time::sleep(Duration::from_secs(10)) => {
                panic!("the watchdog did not end the call")
            }
            v = fut => v,
        }
    }

    fn pending_calls() -> usize {
        (0..SHARDS).map(|i| watchdog().shard(i).len()).sum()
    }

    #[test]
    fn a_refused_thread_is_an_error_and_a_later_start_runs_one() {
        let w: &'static Watchdog = Box::leak(Box::new(Watchdog::new()));
        let e = w
            .start(|_| Err(std::io::Error::other("no threads left")))
            .unwrap_err();
        assert_eq!(e.to_string(), "no threads left");
        assert!(w.thread.get().is_none(), "nothing recorded as running");
        w.start(spawn_thread).unwrap();
        assert!(w.thread.get().is_some());
        w.start(|_| panic!("a second thread was started")).unwrap();
    }

    #[tokio::test]
    async fn a_call_that_finishes_is_its_value_and_leaves_no_entry() {
        let _turn = TURN.lock().await;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let call = tokio::spawn(within(Duration::from_secs(5), rx));
        tokio::task::yield_now().await;
        tx.send(7).unwrap();
        assert_eq!(call.await.unwrap(), Ok(Ok(7)));
        assert_eq!(within(Duration::from_secs(5), async { 8 }).await, Ok(8));
        assert_eq!(pending_calls(), 0);
    }

    #[tokio::test]
    async fn a_call_that_never_finishes_fails_after_its_bound_and_not_long_after() {
        let _turn = TURN.lock().await;
        let bound = Duration::from_millis(50);
        let start = Instant::now();
        let r = surely(within(bound, std::future::pending::<()>())).await;
        let took = start.elapsed();
        assert_eq!(r, Err(Elapsed));
        assert!(took >= bound, "{took:?}");
        // Generous: a loaded test machine can be slow to schedule the thread or the task.
        assert!(took < bound + Duration::from_secs(2), "{took:?}");
    }

    #[test]
    fn bounds_hold_on_a_current_thread_runtime_and_after_the_watchdog_slept() {
        let _turn = TURN.blocking_lock();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for _ in 0..2 {
            let r = rt.block_on(surely(within(
                Duration::from_millis(20),
                std::future::pending::<()>(),
            )));
            assert_eq!(r, Err(Elapsed));
            // Until the watchdog sleeps (no other test here leaves a call pending for long);
            // the next call must wake it.
            let give_up = Instant::now() + LINGER * 10;
            while !watchdog().sleeping.load(Ordering::SeqCst) {
                assert!(Instant::now() < give_up, "the watchdog never went to sleep");
                std::thread::sleep(TICK);
            }
        }
    }

    #[tokio::test]
    async fn many_pending_calls_each_fail_and_dropped_ones_leave_the_table() {
        let _turn = TURN.lock().await;
        let calls: Vec<_> = (0..100)
            .map(|i| {
                tokio::spawn(within(
                    Duration::from_millis(10 + i),
                    std::future::pending::<()>(),
                ))
            })
            .collect();
        let abandoned = tokio::spawn(within(
            Duration::from_secs(3600),
            std::future::pending::<()>(),
        ));
        for c in calls {
            assert_eq!(surely(c).await.unwrap(), Err(Elapsed));
        }
        assert_eq!(pending_calls(), 1, "the abandoned call is still waiting");
        abandoned.abort();
        assert!(abandoned.await.unwrap_err().is_cancelled());
        assert_eq!(pending_calls(), 0);
    }
}
