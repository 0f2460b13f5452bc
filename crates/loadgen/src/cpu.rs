//! Service CPU time from `/proc/<pid>/stat`, read with the `procfs` crate.
//!
//! CPU time (user + system) spent by the service per request does not depend on what else
//! competes for the cores, which makes it the fairest cost figure on a shared machine.

use std::time::Duration;

use anyhow::{Context, Result};
use procfs::FromRead;
use procfs::process::{Process, Stat};

/// Parses `utime + stime` (in clock ticks) from the text of `/proc/<pid>/stat`, with
/// `procfs`'s parser (which counts fields from the *last* `)`, so a command name with spaces
/// and parentheses is read correctly).
pub fn parse_stat_ticks(stat: &str) -> Result<u64> {
    let stat = Stat::from_read(stat.as_bytes()).context("not the text of /proc/<pid>/stat")?;
    Ok(stat.utime + stat.stime)
}

/// Clock ticks per second, the unit of `utime` and `stime` (the kernel's `AT_CLKTCK`; 100 on
/// every common Linux).
pub fn ticks_per_second() -> u64 {
    procfs::ticks_per_second()
}

/// `utime + stime` of the process `pid`, in clock ticks.
fn process_ticks(pid: u32) -> Result<u64> {
    let id = i32::try_from(pid).with_context(|| format!("pid {pid} is out of range"))?;
    let stat = Process::new(id)
        .and_then(|p| p.stat())
        .with_context(|| format!("reading /proc/{pid}/stat (is process {pid} running?)"))?;
    Ok(stat.utime + stat.stime)
}

/// CPU time consumed so far by the processes `pids`, summed.
pub fn cpu_time(pids: &[u32], ticks_per_second: u64) -> Result<Duration> {
    let mut ticks = 0;
    for &pid in pids {
        ticks += process_ticks(pid)?;
    }
    Ok(Duration::from_secs_f64(
        ticks as f64 / ticks_per_second.max(1) as f64,
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Instant;

    use super::*;

    /// A `/proc/<pid>/stat` line as a 6.x kernel writes it, with the command name, utime
    /// (field 14) and stime (field 15) filled in.
    fn stat_line(comm: &str, utime: u64, stime: u64) -> String {
        format!(
            "3763 ({comm}) R 3761 3761 9620 0 -1 4194304 101 0 0 0 {utime} {stime} 0 0 20 0 1 0 \
             58507 3133440 416 18446744073709551615 94201447436288 94201447456169 \
             140721005787472 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 94201447472176 94201447473792 \
             94201983893504 140721005796063 140721005796083 140721005796083 140721005797355 0\n"
        )
    }

    #[test]
    fn parses_utime_and_stime() {
        assert_eq!(parse_stat_ticks(&stat_line("node", 250, 75)).unwrap(), 325);
    }

    #[test]
    fn command_names_with_spaces_and_parens() {
        let stat = stat_line("tokio-rt (worker) 1", 9, 1);
        assert_eq!(parse_stat_ticks(&stat).unwrap(), 10);
    }

    #[test]
    fn malformed() {
        assert!(parse_stat_ticks("12 node S 1").is_err());
        assert!(parse_stat_ticks("12 (node) S 1 2 3").is_err());
        assert!(parse_stat_ticks(&stat_line("node", 250, 75).replace(" 250 ", " x ")).is_err());
    }

    #[test]
    fn ticks_per_second_is_plausible() {
        assert!((1..=10_000).contains(&ticks_per_second()));
    }

    #[test]
    fn reads_our_own_process() {
        let pid = std::process::id();
        let ticks = ticks_per_second();
        let before = cpu_time(&[pid], ticks).unwrap();
        let start = Instant::now();
        // Burn CPU until the kernel has accounted at least one more tick to us (bounded, in
        // case the machine is very busy).
        let mut x = 0u64;
        let mut after = before;
        while after <= before && start.elapsed() < Duration::from_secs(10) {
            for i in 0..1_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
            after = cpu_time(&[pid], ticks).unwrap();
        }
        assert!(
            after > before,
            "no CPU time accounted: {before:?} then {after:?}"
        );
        // Other tests run on other threads of this process, so the increase is bounded by the
        // wall time on every core, plus two ticks of accounting granularity.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        let bound = start.elapsed() * cores + Duration::from_secs(1) / ticks as u32 * 2;
        assert!(after - before <= bound, "{:?} in {bound:?}", after - before);
    }

    #[test]
    fn a_missing_process_is_a_clear_error() {
        // pid_max is at most 2^22, so this pid never exists.
        let missing = i32::MAX as u32;
        let err = cpu_time(&[std::process::id(), missing], ticks_per_second()).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.starts_with(&format!(
                "reading /proc/{missing}/stat (is process {missing} running?)"
            )),
            "{text}"
        );
        let err = cpu_time(&[u32::MAX], 100).unwrap_err();
        assert_eq!(err.to_string(), format!("pid {} is out of range", u32::MAX));
    }
}
