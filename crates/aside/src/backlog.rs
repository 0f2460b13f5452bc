//! Invalidations that could not be sent: kept (bounded, deduplicated) and applied when the
//! store answers again, before any entry is served from it.
//!
//! If more than `capacity` distinct keys and versions pile up, the backlog stops tracking them
//! and remembers only that it overflowed; applying it then bumps the namespace epoch, which
//! invalidates every entry written before the outage.

use crate::key::{EntryKey, TagKey};
use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// What a flush must apply.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Batch {
    pub(crate) keys: HashSet<EntryKey>,
    pub(crate) stamps: HashSet<TagKey>,
    pub(crate) overflowed: bool,
}

impl Batch {
    fn len(&self) -> usize {
        self.keys.len() + self.stamps.len()
    }
    fn is_empty(&self) -> bool {
        self.len() == 0 && !self.overflowed
    }
}

#[derive(Debug)]
pub(crate) struct Backlog {
    capacity: usize,
    // A std Mutex: held only to move sets around, never across an await.
    pending: Mutex<Batch>,
    nonempty: AtomicBool,
    len: AtomicUsize,
}

impl Backlog {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            pending: Mutex::new(Batch::default()),
            nonempty: AtomicBool::new(false),
            len: AtomicUsize::new(0),
        }
    }

    /// Cheap check for the read path.
    pub(crate) fn is_empty(&self) -> bool {
        !self.nonempty.load(Ordering::Acquire)
    }

    /// Invalidations waiting (0 once overflowed: the epoch bump replaces them).
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn overflowed(&self) -> bool {
        self.lock().overflowed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Batch> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn push(&self, keys: &[EntryKey], stamps: &[TagKey]) {
        let mut p = self.lock();
        if !p.overflowed {
            p.keys.extend(keys.iter().cloned());
            p.stamps.extend(stamps.iter().cloned());
            if p.len() > self.capacity {
                *p = Batch {
                    overflowed: true,
                    ..Batch::default()
                };
            }
        }
        self.publish(&p);
    }

    /// Takes everything pending, to apply it.
    pub(crate) fn take(&self) -> Batch {
        let mut p = self.lock();
        std::mem::take(&mut *p)
    }

    /// Puts back a batch that could not be applied, merged with what came meanwhile.
    pub(crate) fn restore(&self, batch: Batch) {
        let mut p = self.lock();
        if batch.overflowed || p.overflowed || batch.len() + p.len() > self.capacity {
            *p = Batch {
                overflowed: true,
                ..Batch::default()
            };
        } else {
            p.keys.extend(batch.keys);
            p.stamps.extend(batch.stamps);
        }
        self.publish(&p);
    }

    /// Marks the backlog empty if nothing came in while the last batch was applied.
    pub(crate) fn settle(&self) {
        let p = self.lock();
        self.publish(&p);
    }

    fn publish(&self, p: &Batch) {
        self.len.store(p.len(), Ordering::Relaxed);
        self.nonempty.store(!p.is_empty(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Namespace;

    fn ns() -> Namespace {
        Namespace::new("t").unwrap()
    }

    #[test]
    fn deduplicates_and_drains() {
        let b = Backlog::new(10);
        let k = ns().entry("a").unwrap();
        let t = ns().tag("x").unwrap();
        b.push(&[k.clone(), k.clone()], std::slice::from_ref(&t));
        b.push(std::slice::from_ref(&k), &[]);
        assert!(!b.is_empty());
        assert_eq!(b.len(), 2);
        let batch = b.take();
        assert_eq!(batch.keys.len(), 1);
        assert_eq!(batch.stamps.len(), 1);
        assert!(!b.is_empty(), "still marked until settled");
        b.settle();
        assert!(b.is_empty());
    }

    #[test]
    fn a_failed_flush_is_restored_with_what_came_meanwhile() {
        let b = Backlog::new(10);
        b.push(&[ns().entry("a").unwrap()], &[]);
        let batch = b.take();
        b.push(&[ns().entry("b").unwrap()], &[]);
        b.restore(batch);
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn overflow_degrades_to_an_epoch_bump() {
        let b = Backlog::new(3);
        for i in 0..5 {
            b.push(&[ns().entry(&i.to_string()).unwrap()], &[]);
        }
        assert!(b.overflowed());
        assert!(!b.is_empty());
        let batch = b.take();
        assert!(batch.overflowed && batch.keys.is_empty());
    }
}
