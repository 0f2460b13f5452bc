//! Test support: the real `catalog` binary on a free port, stopped on `Drop`. Databases and
//! Redis servers come from `testkit`.
// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;
use testkit::wait_until;

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

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
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
        self.sigterm();
        self.exited(Duration::from_secs(10))
    }

    /// Sends SIGTERM (a graceful shutdown) without waiting.
    pub fn sigterm(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits (at most `limit`, blocking the thread) for it to exit; whether it exited
    /// successfully.
    pub fn exited(&mut self, limit: Duration) -> bool {
        let mut status = None;
        wait_until(limit, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status.is_some_and(|s| s.success())
    }

    /// SIGKILL: gone at once, with nothing cleaned up (as a crashed or evicted instance).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
