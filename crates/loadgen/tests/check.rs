//! `loadgen check` against fake services on 127.0.0.1: an honest one passes, one that
//! serves the replaced price for a while after each write fails (unless the bound covers
//! that while), one that makes prices up is caught, and a paused process is always resumed.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use loadgen::check::{CheckSpec, Pause, Stored, run_check};
use loadgen::http::Target;
use loadgen::keys::{IdFormat, Popularity};
use serde_json::{Value, json};

const IDS: u64 = 5;

struct Slot {
    current: f64,
    previous: f64,
    changed: Instant,
}

/// A product store whose reads may lie on purpose.
#[derive(Default)]
struct Fake {
    /// For this long after a write, reads return the price it replaced.
    stale_for: Duration,
    /// Reads return a price nobody wrote.
    make_up: bool,
    /// Every this many writes, one is refused with a 503 (0: none).
    refuse_every: u64,
    /// Writes are acknowledged and thrown away.
    discard: bool,
    /// After this many writes the service goes away: it stops listening and closes its
    /// connections (0: never).
    stop_after: u64,
    writes: std::sync::atomic::AtomicU64,
    stop: tokio::sync::Notify,
    slots: Mutex<HashMap<String, Slot>>,
}

async fn read(State(f): State<Arc<Fake>>, Path(id): Path<String>) -> impl IntoResponse {
    let slots = f.slots.lock().unwrap();
    let Some(slot) = slots.get(&id) else {
        return (StatusCode::NOT_FOUND, "{}").into_response();
    };
    let mut price = if slot.changed.elapsed() < f.stale_for {
        slot.previous
    } else {
        slot.current
    };
    if f.make_up {
        price += 0.25;
    }
    (
        [("x-cache", "hit")],
        Json(json!({ "id": id, "price": price })),
    )
        .into_response()
}

async fn write(
    State(f): State<Arc<Fake>>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> impl IntoResponse {
    let price = body["price"].as_f64().unwrap();
    let n = f.writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    if n == f.stop_after {
        f.stop.notify_one();
    }
    if f.refuse_every > 0 && n % f.refuse_every == 0 {
        return (StatusCode::SERVICE_UNAVAILABLE, "{}").into_response();
    }
    if f.discard {
        return Json(json!({ "id": id, "price": price })).into_response();
    }
    let mut slots = f.slots.lock().unwrap();
    let Some(slot) = slots.get_mut(&id) else {
        return (StatusCode::NOT_FOUND, "{}").into_response();
    };
    slot.previous = slot.current;
    slot.current = price;
    slot.changed = Instant::now();
    Json(json!({ "id": id, "price": price })).into_response()
}

/// The fake on two ports (two "instances" sharing one store): their base URLs.
async fn serve(stale_for: Duration, make_up: bool) -> (String, String) {
    let (a, b, _) = serve_fake(Fake {
        stale_for,
        make_up,
        ..Fake::default()
    })
    .await;
    (a, b)
}

/// `fake`, seeded, on two ports: their base URLs, and the fake to look into.
async fn serve_fake(fake: Fake) -> (String, String, Arc<Fake>) {
    let slots = (1..=IDS)
        .map(|n| {
            let seeded = n as f64 + 0.99;
            let slot = Slot {
                current: seeded,
                previous: seeded,
                changed: Instant::now() - Duration::from_secs(1),
            };
            (format!("p{n}"), slot)
        })
        .collect();
    *fake.slots.lock().unwrap() = slots;
    let fake = Arc::new(fake);
    let app = Router::new()
        .route("/products/{id}", get(read).put(write))
        .with_state(fake.clone());
    let (stopped, _) = tokio::sync::watch::channel(false);
    let stopper = fake.clone();
    let stopped_tx = stopped.clone();
    tokio::spawn(async move {
        stopper.stop.notified().await;
        stopped_tx.send_replace(true);
    });
    let mut urls = Vec::new();
    for _ in 0..2 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        urls.push(format!("http://{}", listener.local_addr().unwrap()));
        let app = app.clone();
        let mut stop = stopped.subscribe();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
                .unwrap()
        });
    }
    (urls[0].clone(), urls[1].clone(), fake)
}

/// What the fake holds for key number `n`.
fn stored(fake: &Fake, n: u64) -> f64 {
    fake.slots.lock().unwrap()[&format!("p{n}")].current
}

fn spec(writer: &str, reader: &str, bound: Duration) -> CheckSpec {
    CheckSpec {
        writer: Target::parse(writer).unwrap(),
        readers: vec![
            Target::parse(reader).unwrap(),
            Target::parse(writer).unwrap(),
        ],
        ids: IDS,
        id_format: IdFormat::parse("p{}").unwrap(),
        popularity: Popularity::Uniform,
        // Until 500 reads are checked (or, on a very busy machine, 30 s).
        duration: Duration::from_secs(30),
        reads: Some(500),
        bound,
        writers: 2,
        reader_tasks: 4,
        timeout: Duration::from_secs(5),
        pause: None,
        min_reads: 500,
        seed: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_service_passes() {
    let (a, b) = serve(Duration::ZERO, false).await;
    let r = run_check(&spec(&a, &b, Duration::ZERO)).await.unwrap();
    eprintln!("{}", r.table());
    assert!(r.passed, "{:?}", r.failures());
    assert_eq!((r.violations, r.phantoms), (0, 0));
    assert!(
        r.reads >= 500 && r.writes_acknowledged > 100,
        "{}",
        r.table()
    );
    assert_eq!(r.writes_failed, 0);
    assert!(r.read_errors.is_empty(), "{:?}", r.read_errors);
    assert!(r.read_errors_by_reader.iter().all(BTreeMap::is_empty));
    assert_eq!(r.reads_by_cache.get("hit"), Some(&r.reads));
    // Reads overlapped writes: the checker did look at the edge.
    assert!(r.concurrent > 0, "{}", r.table());
    // The seed's prices were below the base.
    assert_eq!(r.price_base, 1000.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_serves_replaced_values_fails() {
    let (a, b) = serve(Duration::from_millis(20), false).await;
    let r = run_check(&spec(&a, &b, Duration::ZERO)).await.unwrap();
    eprintln!("{}", r.table());
    assert!(r.violations > 0, "{}", r.table());
    assert!(!r.passed);
    assert_eq!(r.phantoms, 0);
    assert!(!r.first_violations.is_empty() && r.first_violations.len() <= 10);
    for v in &r.first_violations {
        assert!(v.value < v.acknowledged, "{v:?}");
        // The fake lies for 20 ms after a write, so the replacement is younger than that.
        assert!(v.replaced_ms_before < 20.0, "{v:?}");
        assert!(v.acknowledged_ms_before <= v.replaced_ms_before, "{v:?}");
        assert_eq!(v.cache, "hit");
        assert!(v.id.starts_with('p'));
    }
    assert!(
        r.failures()[0].contains("stale reads"),
        "{:?}",
        r.failures()
    );
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["violations"], r.violations);
    assert_eq!(json["passed"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staleness_within_the_bound_passes() {
    let (a, b) = serve(Duration::from_millis(20), false).await;
    let r = run_check(&spec(&a, &b, Duration::from_millis(100)))
        .await
        .unwrap();
    eprintln!("{}", r.table());
    assert!(r.passed, "{}", r.table());
    assert!(r.concurrent > 0, "{}", r.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_prices_are_phantoms() {
    let (a, b) = serve(Duration::ZERO, true).await;
    let mut s = spec(&a, &b, Duration::ZERO);
    s.reads = Some(200);
    s.min_reads = 200;
    let r = run_check(&s).await.unwrap();
    // Every read after the first write of its id (a made-up seed price is still below the
    // base, so it reads as the seed's).
    assert!(r.phantoms > 100 && r.phantoms <= r.reads, "{}", r.table());
    assert_eq!(r.violations, 0);
    assert!(!r.passed);
    assert_eq!(r.first_phantoms[0].value, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_reads_fail_and_a_missing_id_is_refused() {
    let (a, b) = serve(Duration::ZERO, false).await;
    let mut s = spec(&a, &b, Duration::ZERO);
    s.duration = Duration::from_millis(200);
    s.min_reads = u64::MAX;
    let r = run_check(&s).await.unwrap();
    assert!(!r.passed);
    assert!(r.failures()[0].contains("fewer than --min-reads"));

    s.ids = IDS + 1;
    let err = run_check(&s).await.unwrap_err().to_string();
    assert!(err.contains("p6") && err.contains("404"), "{err}");
}

/// The state letter of a process (`T`: stopped), from `/proc/PID/stat`.
fn state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = stat.rsplit_once(')').unwrap().1;
    after_name.trim_start().chars().next().unwrap()
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_process_is_resumed_at_the_end_and_when_the_check_is_dropped() {
    let (a, b) = serve(Duration::ZERO, false).await;
    let child = Child(
        std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let mut s = spec(&a, &b, Duration::ZERO);
    s.duration = Duration::from_millis(500);
    s.min_reads = 1;
    s.pause = Some(Pause {
        pid,
        every: Duration::from_millis(20),
        length: Duration::from_millis(5),
    });
    let r = run_check(&s).await.unwrap();
    assert!(r.pauses >= 5, "{}", r.table());
    assert!(r.passed, "{}", r.table());
    assert_ne!(state(pid), 'T');

    // Stopped for far longer than the check lasts: the drop of the cancelled check
    // resumes it.
    s.duration = Duration::from_secs(30);
    s.pause = Some(Pause {
        pid,
        every: Duration::from_millis(10),
        length: Duration::from_secs(60),
    });
    let mut check = Box::pin(run_check(&s));
    let limit = Instant::now() + Duration::from_secs(10);
    while state(pid) != 'T' {
        assert!(Instant::now() < limit, "never stopped");
        tokio::select! {
            done = &mut check => panic!("the check ended: {:?}", done.map(|r| r.table())),
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
    drop(check);
    assert_ne!(state(pid), 'T');

    // A process that cannot be signalled is refused up front.
    s.pause = Some(Pause {
        pid: i32::MAX as u32,
        every: Duration::from_millis(10),
        length: Duration::from_millis(5),
    });
    assert!(run_check(&s).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_writes_are_counted_by_status_and_explain_what_is_stored() {
    let (a, b, fake) = serve_fake(Fake {
        refuse_every: 3,
        ..Fake::default()
    })
    .await;
    let r = run_check(&spec(&a, &b, Duration::ZERO)).await.unwrap();
    eprintln!("{}", r.table());
    assert!(r.passed, "{}", r.table());
    assert!(r.writes_failed > 0, "{}", r.table());
    assert_eq!(r.write_errors.len(), 1, "{:?}", r.write_errors);
    assert_eq!(r.write_errors.get("503"), Some(&r.writes_failed));
    assert!(
        r.table()
            .contains(&format!("write errors 503 {}", r.writes_failed))
    );
    for n in 1..=IDS {
        // A refused write was not applied: the last acknowledged value is what is stored.
        assert_eq!(
            r.judge_stored(n, stored(&fake, n)),
            Some(Stored::Kept),
            "p{n}"
        );
        let acked = r.histories[(n - 1) as usize].last_acknowledged();
        if acked > 0 {
            assert_eq!(stored(&fake, n), r.prices().price(acked), "p{n}");
        }
    }
    assert_eq!(r.judge_stored(0, 1.0), None);
    assert_eq!(r.judge_stored(IDS + 1, 1.0), None);
    assert!(matches!(
        r.judge_stored(1, 1000.25),
        Some(Stored::Phantom { .. })
    ));
    // The histories stay out of the JSON report.
    let json = serde_json::to_value(&r).unwrap();
    assert!(json.get("histories").is_none());
    assert_eq!(json["write_errors"]["503"], r.writes_failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_that_were_not_kept_are_lost() {
    let (a, b, fake) = serve_fake(Fake {
        discard: true,
        ..Fake::default()
    })
    .await;
    let r = run_check(&spec(&a, &b, Duration::ZERO)).await.unwrap();
    // Reads return the seed's price after acknowledged writes: stale.
    assert!(r.violations > 0, "{}", r.table());
    for n in 1..=IDS {
        let acknowledged = r.histories[(n - 1) as usize].last_acknowledged();
        assert!(acknowledged > 0, "p{n} was never written");
        assert_eq!(
            r.judge_stored(n, stored(&fake, n)),
            Some(Stored::Lost { acknowledged }),
            "p{n}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_goes_away_gives_connect_errors() {
    let (a, b, _fake) = serve_fake(Fake {
        stop_after: 50,
        ..Fake::default()
    })
    .await;
    let mut s = spec(&a, &b, Duration::ZERO);
    // Runs its whole two seconds: the reads stop coming once the service is gone. A
    // request sent on a connection the going service no longer reads times out, and the
    // next one has to connect.
    s.reads = None;
    s.duration = Duration::from_secs(2);
    s.timeout = Duration::from_millis(250);
    s.min_reads = 1;
    let r = run_check(&s).await.unwrap();
    assert!(r.writes_acknowledged >= 49, "{}", r.table());
    let some = |n: Option<&u64>| n.is_some_and(|&n| n > 0);
    assert!(some(r.write_errors.get("connect")), "{}", r.table());
    assert!(some(r.read_errors.get("connect")), "{}", r.table());
    // Both readers are gone: each has its share.
    assert_eq!(r.read_errors_by_reader.len(), 2);
    for by in &r.read_errors_by_reader {
        assert!(some(by.get("connect")), "{:?}", r.read_errors_by_reader);
    }
    let summed: u64 = r
        .read_errors_by_reader
        .iter()
        .flat_map(|b| b.values())
        .sum();
    assert_eq!(summed, r.read_errors.values().sum::<u64>());
    // Nothing was sent on a failed connect: no write failed.
    assert_eq!(
        r.writes_failed,
        r.write_errors
            .iter()
            .filter(|(k, _)| *k != "connect")
            .map(|(_, n)| n)
            .sum::<u64>()
    );
}
