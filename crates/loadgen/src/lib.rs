//! `loadgen`: an HTTP load generator for product-catalog services (the `catalog` service
//! and the seed baseline), with reports that matter for a cache: throughput, latency
//! percentiles, `x-cache` hit ratio, database queries and service CPU per request.
//!
//! ```text
//! loadgen run http://127.0.0.1:8080 -c 64 -d 10s --prefill --ids 1000
//! loadgen compare --target seed=http://127.0.0.1:3100 --target catalog=http://127.0.0.1:8080 \
//!     --pid seed=1234 --pid catalog=5678 --baseline seed --prefill --plot bench.png
//! loadgen check --writer http://127.0.0.1:8080 --reader http://127.0.0.1:8081 --ids 100 -d 10s
//! ```
//!
//! # Layout
//! - [`cli`]: the command line and what each subcommand does.
//! - [`runner`]: one run against one target: prefill, warm-up, measured part, connection loops.
//! - [`check`]: `loadgen check`, the consistency checker: stale and phantom reads across
//!   instances after acknowledged writes (`check/`: the run, prices, the history and verdict
//!   of each id, the HTTP tasks, pauses, the report).
//! - [`http`]: raw hyper HTTP/1.1 keep-alive connections, one per load task.
//! - [`keys`]: id formatting and uniform / Zipf key choice.
//! - [`mix`]: the operation mix and write bodies.
//! - [`schedule`]: open-loop pacing (latency from the scheduled time).
//! - [`stats`]: per-connection recorders, HdrHistogram percentiles, per-second timeline.
//! - [`dbstats`]: database query counters from `/metrics` or the seed's `/stats`.
//! - [`cpu`]: service CPU time from `/proc/<pid>/stat`.
//! - [`report`]: tables, ratios and JSON.
//! - [`plot`]: the PNG of throughput and p99 per second.

pub mod check;
pub mod cli;
pub mod cpu;
pub mod dbstats;
pub mod http;
pub mod keys;
pub mod mix;
pub mod plot;
pub mod report;
pub mod runner;
pub mod schedule;
pub mod stats;
