//! Pausing a process during a check: `SIGSTOP` and `SIGCONT` on a schedule, so that it
//! stalls in the middle of requests as under a long GC pause or a scheduling hiccup.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

/// Periodically stops a process with `SIGSTOP` and resumes it with `SIGCONT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Pause {
    /// The process.
    pub pid: u32,
    /// Time between two pauses (from one resume to the next stop).
    #[serde(rename = "every_ms", serialize_with = "millis")]
    pub every: Duration,
    /// How long each pause lasts.
    #[serde(rename = "length_ms", serialize_with = "millis")]
    pub length: Duration,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// Stops and resumes a process on a schedule; resumes it when dropped.
pub(super) struct Pauser {
    pid: rustix::process::Pid,
    pause: Pause,
    stopped: bool,
    next: Instant,
    pub(super) pauses: u64,
}

impl Pauser {
    pub(super) fn new(pause: Pause) -> Result<Self> {
        let pid = i32::try_from(pause.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .with_context(|| format!("--pause-pid {} is not a process id", pause.pid))?;
        rustix::process::test_kill_process(pid)
            .with_context(|| format!("--pause-pid {}: cannot signal it", pause.pid))?;
        Ok(Self {
            pid,
            pause,
            stopped: false,
            next: Instant::now() + pause.every,
            pauses: 0,
        })
    }

    /// Waits for the next change and makes it: a stop after `every`, a resume after
    /// `length`. Cancel-safe: the schedule lives in `self`.
    pub(super) async fn step(&mut self) -> Result<()> {
        tokio::time::sleep_until(self.next.into()).await;
        if self.stopped {
            self.resume()?;
            self.next = Instant::now() + self.pause.every;
        } else {
            rustix::process::kill_process(self.pid, rustix::process::Signal::STOP)
                .with_context(|| format!("SIGSTOP to {}", self.pause.pid))?;
            self.stopped = true;
            self.pauses += 1;
            self.next = Instant::now() + self.pause.length;
        }
        Ok(())
    }

    fn resume(&mut self) -> Result<()> {
        rustix::process::kill_process(self.pid, rustix::process::Signal::CONT)
            .with_context(|| format!("SIGCONT to {}", self.pause.pid))?;
        self.stopped = false;
        Ok(())
    }
}

impl Drop for Pauser {
    fn drop(&mut self) {
        // Always resume, even when not known to be stopped: a stop sent just before a
        // cancellation must not leave the process stopped, and SIGCONT to a running
        // process does nothing.
        let _ = rustix::process::kill_process(self.pid, rustix::process::Signal::CONT);
    }
}
