//! The HTTP of a check: the probe that finds the prices before the run, and the writer
//! and reader tasks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hyper::{Method, Uri};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::Deserialize;

use super::CheckSpec;
use super::history::History;
use super::prices::Prices;
use crate::http::{Conn, Target};
use crate::keys::KeyChooser;
use crate::stats::CacheStatus;

/// One read as a reader task recorded it, judged once every [`History`] is complete.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReadRecord {
    /// Key number (`1..=ids`).
    pub(super) key: u64,
    /// Which reader URL.
    pub(super) reader: usize,
    pub(super) began: Instant,
    pub(super) ended: Instant,
    pub(super) price: f64,
    pub(super) cache: CacheStatus,
}

/// What all tasks of a check share.
pub(super) struct Shared {
    pub(super) spec: CheckSpec,
    pub(super) keys: KeyChooser,
    pub(super) products: Vec<Uri>,
    pub(super) prices: Prices,
    pub(super) deadline: Instant,
    /// Set when the reads asked for are in, or the readers are all done.
    pub(super) stop: AtomicBool,
    pub(super) checked: AtomicU64,
}

impl Shared {
    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed) && Instant::now() < self.deadline
    }
}

/// What one writer task leaves: the histories of its ids (local index `(n - 1) / writers`).
pub(super) struct WriterDone {
    pub(super) w: usize,
    pub(super) histories: Vec<History>,
    pub(super) acknowledged: u64,
    pub(super) failed: u64,
    /// Why writes failed, by kind (and `connect` for failed connection attempts).
    pub(super) errors: BTreeMap<String, u64>,
}

/// What one reader task leaves.
pub(super) struct ReaderDone {
    pub(super) reads: Vec<ReadRecord>,
    /// By reader URL (its index), then kind.
    pub(super) errors: BTreeMap<(usize, String), u64>,
}

#[derive(Deserialize)]
pub(super) struct Priced {
    pub(super) price: f64,
}

/// Reads every product once from `target` (over a few connections) and returns the
/// highest price found. Fails when an id does not exist there: it could not be written.
pub(super) async fn probe(target: &Target, products: &[Uri], timeout: Duration) -> Result<f64> {
    let products = Arc::new(products.to_vec());
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..products.len().min(8) {
        let (products, next, target) = (products.clone(), next.clone(), target.clone());
        tasks.spawn(async move {
            let mut conn = tokio::time::timeout(timeout, target.connect())
                .await
                .with_context(|| format!("connecting to {} timed out", target.url))??;
            let mut max = f64::NEG_INFINITY;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(uri) = products.get(i) else {
                    return anyhow::Ok(max);
                };
                if !conn.is_open() {
                    conn = target.connect().await?;
                }
                let (outcome, body) = tokio::time::timeout(
                    timeout,
                    conn.send_collect(Method::GET, uri.clone(), None),
                )
                .await
                .with_context(|| format!("GET {}{uri} timed out", target.url))?
                .with_context(|| format!("GET {}{uri}", target.url))?;
                if outcome.status != 200 {
                    bail!(
                        "GET {}{uri} gave {}: every id must exist before a check",
                        target.url,
                        outcome.status
                    );
                }
                let priced: Priced = serde_json::from_slice(&body)
                    .with_context(|| format!("GET {}{uri}: no price in the body", target.url))?;
                max = max.max(priced.price);
            }
        });
    }
    let mut max = f64::NEG_INFINITY;
    while let Some(done) = tasks.join_next().await {
        max = max.max(done.context("a probe task panicked")??);
    }
    Ok(max)
}

/// Connects within the timeout; `None` (after a short pause, so a dead target is not
/// hammered) when that fails.
async fn connect(target: &Target, shared: &Shared) -> Option<Conn> {
    match tokio::time::timeout(shared.spec.timeout, target.connect()).await {
        Ok(Ok(c)) => Some(c),
        _ => {
            let pause = Instant::now() + Duration::from_millis(50);
            tokio::time::sleep_until(pause.min(shared.deadline).into()).await;
            None
        }
    }
}

/// Picks one of writer `w`'s own keys (`(n - 1) % writers == w`) with the spec's
/// popularity, falling back to a uniform pick among them when the draws keep missing.
fn own_key(shared: &Shared, w: usize, rng: &mut SmallRng) -> u64 {
    let writers = shared.spec.writers as u64;
    for _ in 0..64 {
        let n = shared.keys.sample(rng);
        if (n - 1) % writers == w as u64 {
            return n;
        }
    }
    let owned = (shared.spec.ids - 1 - w as u64) / writers + 1;
    let i = rand::Rng::random_range(rng, 0..owned);
    i * writers + w as u64 + 1
}

pub(super) async fn writer_task(w: usize, shared: Arc<Shared>) -> WriterDone {
    let spec = &shared.spec;
    let owned = ((spec.ids - 1 - w as u64) / spec.writers as u64 + 1) as usize;
    let mut done = WriterDone {
        w,
        histories: vec![History::new(); owned],
        acknowledged: 0,
        failed: 0,
        errors: BTreeMap::new(),
    };
    let mut next = vec![0u64; owned];
    let mut rng = SmallRng::seed_from_u64(spec.seed.wrapping_add(1_000_000 + w as u64));
    let mut conn: Option<Conn> = None;
    while shared.running() {
        if conn.as_ref().is_some_and(|c| !c.is_open()) {
            conn = None;
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match connect(&spec.writer, &shared).await {
                Some(c) => conn.insert(c),
                None => {
                    *done.errors.entry("connect".to_owned()).or_default() += 1;
                    continue;
                }
            },
        };
        let n = own_key(&shared, w, &mut rng);
        let local = ((n - 1) / spec.writers as u64) as usize;
        let (Some(history), Some(counter)) = (done.histories.get_mut(local), next.get_mut(local))
        else {
            continue;
        };
        *counter += 1;
        let value = *counter;
        let body = Bytes::from(format!(r#"{{"price":{}}}"#, shared.prices.price(value)));
        let uri = shared.products[(n - 1) as usize].clone();
        history.sent(Instant::now(), value);
        let result = tokio::time::timeout(spec.timeout, c.send(Method::PUT, uri, Some(body))).await;
        let at = Instant::now();
        match result {
            Ok(Ok(o)) if (200..300).contains(&o.status) => {
                history.acknowledge(at, value);
                done.acknowledged += 1;
            }
            Ok(Ok(o)) => {
                history.failed(value);
                done.failed += 1;
                *done.errors.entry(o.status.to_string()).or_default() += 1;
            }
            Ok(Err(_)) => {
                history.failed(value);
                done.failed += 1;
                *done.errors.entry("io".to_owned()).or_default() += 1;
                conn = None;
            }
            Err(_) => {
                history.failed(value);
                done.failed += 1;
                *done.errors.entry("timeout".to_owned()).or_default() += 1;
                conn = None;
            }
        }
    }
    done
}

pub(super) async fn reader_task(r: usize, shared: Arc<Shared>) -> ReaderDone {
    let spec = &shared.spec;
    let mut done = ReaderDone {
        reads: Vec::new(),
        errors: BTreeMap::new(),
    };
    let mut rng = SmallRng::seed_from_u64(spec.seed.wrapping_add(r as u64));
    let mut conns: Vec<Option<Conn>> = spec.readers.iter().map(|_| None).collect();
    let mut turn = r;
    let error = |done: &mut ReaderDone, reader: usize, what: String| {
        *done.errors.entry((reader, what)).or_default() += 1;
    };
    while shared.running() {
        let reader = turn % spec.readers.len();
        turn += 1;
        let target = &spec.readers[reader];
        let slot = &mut conns[reader];
        if slot.as_ref().is_some_and(|c| !c.is_open()) {
            *slot = None;
        }
        let c = match slot.as_mut() {
            Some(c) => c,
            None => match connect(target, &shared).await {
                Some(c) => slot.insert(c),
                None => {
                    error(&mut done, reader, "connect".to_owned());
                    continue;
                }
            },
        };
        let key = shared.keys.sample(&mut rng);
        let uri = shared.products[(key - 1) as usize].clone();
        let began = Instant::now();
        let result =
            tokio::time::timeout(spec.timeout, c.send_collect(Method::GET, uri, None)).await;
        let ended = Instant::now();
        match result {
            Ok(Ok((o, body))) if o.status == 200 => match serde_json::from_slice::<Priced>(&body) {
                Ok(p) => {
                    done.reads.push(ReadRecord {
                        key,
                        reader,
                        began,
                        ended,
                        price: p.price,
                        cache: o.cache,
                    });
                    let checked = shared.checked.fetch_add(1, Ordering::Relaxed) + 1;
                    if spec.reads.is_some_and(|max| checked >= max) {
                        shared.stop.store(true, Ordering::Relaxed);
                    }
                }
                Err(_) => error(&mut done, reader, "body".to_owned()),
            },
            Ok(Ok((o, _))) => error(&mut done, reader, o.status.to_string()),
            Ok(Err(_)) => {
                error(&mut done, reader, "io".to_owned());
                *slot = None;
            }
            Err(_) => {
                error(&mut done, reader, "timeout".to_owned());
                *slot = None;
            }
        }
    }
    done
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::keys::{IdFormat, Popularity};

    #[test]
    fn own_keys_partition_the_ids() {
        let spec_keys = |ids: u64, writers: usize, popularity| {
            let keys = KeyChooser::new(ids, popularity).unwrap();
            Shared {
                spec: CheckSpec {
                    writer: Target::parse("http://127.0.0.1:1").unwrap(),
                    readers: vec![Target::parse("http://127.0.0.1:1").unwrap()],
                    ids,
                    id_format: IdFormat::parse("p{}").unwrap(),
                    popularity,
                    duration: Duration::from_millis(1),
                    reads: None,
                    bound: Duration::ZERO,
                    writers,
                    reader_tasks: 1,
                    timeout: Duration::from_millis(1),
                    pause: None,
                    min_reads: 0,
                    seed: 1,
                },
                keys,
                products: Vec::new(),
                prices: Prices::above(0.0),
                deadline: Instant::now(),
                stop: AtomicBool::new(false),
                checked: AtomicU64::new(0),
            }
        };
        for (ids, writers, pop) in [
            (10, 3, Popularity::Uniform),
            (7, 7, Popularity::Uniform),
            (1000, 4, Popularity::Zipf(1.2)),
            (5, 2, Popularity::Zipf(8.0)),
        ] {
            let shared = spec_keys(ids, writers, pop);
            let mut rng = SmallRng::seed_from_u64(3);
            let mut seen = std::collections::BTreeSet::new();
            for w in 0..writers {
                for _ in 0..2000 {
                    let n = own_key(&shared, w, &mut rng);
                    assert!((1..=ids).contains(&n), "{n}");
                    assert_eq!((n - 1) % writers as u64, w as u64);
                    seen.insert(n);
                }
            }
            if pop == Popularity::Uniform {
                assert_eq!(seen.len() as u64, ids, "every id has a writer");
            }
        }
    }
}
