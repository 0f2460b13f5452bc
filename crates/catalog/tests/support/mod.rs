//! Test support: the real `catalog` binary on a free port, stopped on `Drop`. Databases and
//! Redis servers come from `testkit`.
// Each test binary that includes this module uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;
use testkit::wait_until;

/// The real `catalog` binary, started with `catalog serve --listen 127.0.0.1:0 ARGS` (or
/// another address) in a temporary directory; killed on `Drop`.
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
        Self::start_on("127.0.0.1:0", args)
    }

    /// Starts it listening on `listen` (`127.0.0.1:PORT`, to start it again where it was)
    /// and waits for its `listening on` line.
    pub fn start_on(listen: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, listen, args, "error", Stdio::inherit())
    }

    /// Starts it with `RUST_LOG=rust_log`, its stderr collected into the returned [`Log`].
    pub fn start_logged(args: &[&str], rust_log: &str) -> (Self, Log) {
        Self::start_logged_on("127.0.0.1:0", args, rust_log)
    }

    /// As [`Service::start_logged`], listening on `listen`.
    pub fn start_logged_on(listen: &str, args: &[&str], rust_log: &str) -> (Self, Log) {
        let dir = tempfile::tempdir().unwrap();
        let mut svc = Self::start_in(dir, listen, args, rust_log, Stdio::piped());
        let log = Log::collect(svc.child.stderr.take().unwrap());
        (svc, log)
    }

    fn start_in(
        dir: tempfile::TempDir,
        listen: &str,
        args: &[&str],
        rust_log: &str,
        stderr: Stdio,
    ) -> Self {
        let mut child = Self::command(listen, args, rust_log)
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(stderr)
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

    /// `catalog serve --listen LISTEN ARGS` with `RUST_LOG=rust_log` and none of the
    /// environment's settings.
    fn command(listen: &str, args: &[&str], rust_log: &str) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_catalog"));
        c.args(["serve", "--listen", listen])
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .env_remove("CATALOG_LISTEN")
            .env("RUST_LOG", rust_log);
        c
    }

    /// Runs it with `args` in a temporary directory to its exit (it must fail to start: it
    /// is killed after 30 s otherwise); whether it exited successfully, and its stderr.
    pub fn run_to_exit(args: &[&str]) -> (bool, String) {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Self::command("127.0.0.1:0", args, "info")
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Log::collect(child.stderr.take().unwrap());
        let mut status = None;
        wait_until(Duration::from_secs(30), || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        log.wait_closed(Duration::from_secs(10));
        (status.is_some_and(|s| s.success()), log.text())
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

/// A child's stderr, collected line by line on a thread of its own.
#[derive(Clone)]
pub struct Log {
    text: std::sync::Arc<std::sync::Mutex<String>>,
    closed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Log {
    fn collect(stderr: std::process::ChildStderr) -> Self {
        let log = Self {
            text: Default::default(),
            closed: Default::default(),
        };
        let collected = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut text = collected.text.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
            collected
                .closed
                .store(true, std::sync::atomic::Ordering::SeqCst);
        });
        log
    }

    /// Everything written so far.
    pub fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    /// Waits (at most `limit`, blocking the thread) until a line holding `needle` was
    /// written; whether one was.
    pub fn wait_for(&self, needle: &str, limit: Duration) -> bool {
        wait_until(limit, || self.text().contains(needle))
    }

    fn wait_closed(&self, limit: Duration) {
        wait_until(limit, || {
            self.closed.load(std::sync::atomic::Ordering::SeqCst)
        });
    }
}
