//! Test support: a fresh PostgreSQL database per test, a private `redis-server` per test, and
//! the real `catalog` binary on a free port. Each is removed or stopped on `Drop`.
#![allow(dead_code, clippy::unwrap_used)]

use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// The server's administrative database (override with `CATALOG_TEST_POSTGRES`).
pub fn postgres_admin_url() -> String {
    std::env::var("CATALOG_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database with a random name on the local PostgreSQL, dropped on `Drop`.
pub struct TestPostgres {
    /// Its connection URL.
    pub url: String,
    name: String,
}

impl TestPostgres {
    /// Creates the database.
    pub async fn new() -> Self {
        let admin = postgres_admin_url();
        let name = format!("catalog_test_{:016x}", rand::random::<u64>());
        let mut conn = PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL must answer at {admin}: {e}"));
        conn.execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside a runtime in async tests: do the async work on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut c) = PgConnection::connect(&postgres_admin_url()).await {
                    let _ = c
                        .execute(AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .await;
                }
            });
        })
        .join();
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `cond` every 10 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// Private `redis-server`s and Redis Clusters: the engine's own test support, shared.
#[path = "../../../aside/tests/support/mod.rs"]
mod engine;
#[allow(unused_imports)]
pub use engine::{TestCluster, TestRedis, eventually};

/// The real `catalog` binary, started with `catalog serve --listen 127.0.0.1:0 ARGS` in a
/// temporary directory; killed on `Drop`.
pub struct Service {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    _stdout: BufReader<ChildStdout>,
    _dir: tempfile::TempDir,
}

impl Service {
    /// Starts it and waits for its `listening on` line.
    pub fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, args)
    }

    fn start_in(dir: tempfile::TempDir, args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_catalog"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .current_dir(dir.path())
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env_remove("CATALOG_LISTEN")
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("catalog did not start: {line:?}")
            })
            .to_owned();
        Self {
            child,
            base,
            _stdout: stdout,
            _dir: dir,
        }
    }

    /// The directory it runs in.
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// `base` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends SIGTERM and waits (at most 10 s) for it to exit; whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let mut status = None;
        wait_until(Duration::from_secs(10), || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status.is_some_and(|s| s.success())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `catalog_db_queries_total` in a `/metrics` body.
pub fn db_queries(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("catalog_db_queries_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
