//! Test support for the workspace's tests and benchmarks: servers of their own for each test,
//! removed when the test is done, and the polling and metric helpers the tests share.
//!
//! Nothing here touches a shared server: every Redis is a private `redis-server` on a free
//! port in a temporary directory, every PostgreSQL database a fresh one with a random name.
//!
//! - [`TestRedis`]: a private `redis-server` without persistence (or TLS-only, with a
//!   self-signed certificate), killed on drop; it can be paused, resumed, killed and
//!   restarted on the same port.
//! - [`TestCluster`]: three private `redis-server` masters joined into a Redis Cluster
//!   holding every slot, with slot lookup and migration helpers; [`TestCluster::shared`]
//!   hands one cluster to the tests running at the same time.
//! - [`Server`]: a server a test can kill and restart, a [`TestRedis`] or one [`Node`] of a
//!   cluster, for scenarios written once for both.
//! - `TestPostgres` (feature `postgres`): a fresh database on `127.0.0.1:5432`, dropped on
//!   drop; the administrative URL comes from `TESTKIT_POSTGRES` when it is set.
//! - [`TcpProxy`]: a TCP proxy a test cuts, blackholes, slows down, makes lossy and
//!   restores, standing for a network partition or a bad network.
//! - [`free_port`], [`eventually`] (async polling with a limit) and [`wait_until`] (the
//!   blocking one).
//! - [`metric_sum`]: the sum of a metric's samples in Prometheus text, over all its labels;
//!   `counters` (feature `metrics`): counter totals from one snapshot of a `metrics_util`
//!   debugging recorder.
//!
//! Every helper panics when what it needs is missing (`redis-server`, `redis-cli`,
//! `openssl`, a PostgreSQL server): a test that cannot set up fails.
// Panicking is how test support reports a failed setup to the test that asked for it.
#![allow(clippy::unwrap_used)]

mod metric;
#[cfg(feature = "postgres")]
mod postgres;
mod proxy;
mod redis_server;
mod wait;

#[cfg(feature = "metrics")]
pub use metric::counters;
pub use metric::metric_sum;
#[cfg(feature = "postgres")]
pub use postgres::{TestPostgres, postgres_admin_url};
pub use proxy::TcpProxy;
pub use redis_server::{Node, Server, TestCluster, TestRedis};
pub use wait::{eventually, free_port, wait_until};
