//! Service CPU time from `/proc/<pid>/stat`.
//!
//! CPU time (user + system) spent by the service per request does not depend on what else
//! competes for the cores, which makes it the fairest cost figure on a shared machine.

use std::time::Duration;

use anyhow::{Context, Result};

/// Parses `utime + stime` (in clock ticks) from the text of `/proc/<pid>/stat`.
///
/// The second field is the command name in parentheses, which may itself contain spaces and
/// parentheses, so fields are counted from the *last* `)`.
pub fn parse_stat_ticks(stat: &str) -> Result<u64> {
    let close = stat.rfind(')').context("no `)` after the command name")?;
    // After `)`: field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    let mut fields = stat[close + 1..].split_whitespace().skip(11);
    let utime: u64 = fields
        .next()
        .context("no utime field")?
        .parse()
        .context("bad utime")?;
    let stime: u64 = fields
        .next()
        .context("no stime field")?
        .parse()
        .context("bad stime")?;
    Ok(utime + stime)
}

/// Clock ticks per second, from `getconf CLK_TCK` (100 on every common Linux).
pub fn ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// CPU time consumed so far by the processes `pids`, summed.
pub fn cpu_time(pids: &[u32], ticks_per_second: u64) -> Result<Duration> {
    let mut ticks = 0;
    for pid in pids {
        let path = format!("/proc/{pid}/stat");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        ticks += parse_stat_ticks(&text).with_context(|| format!("parsing {path}"))?;
    }
    Ok(Duration::from_secs_f64(
        ticks as f64 / ticks_per_second.max(1) as f64,
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_utime_and_stime() {
        let stat = "12345 (node) S 1 12345 12345 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 \
                    11 0 500 1000000 5000 18446744073709551615 0 0 0 0 0 0 0 0 0";
        assert_eq!(parse_stat_ticks(stat).unwrap(), 325);
    }

    #[test]
    fn command_names_with_spaces_and_parens() {
        let stat = "7 (tokio-rt (worker) 1) R 1 7 7 0 -1 0 0 0 0 0 9 1 0 0 20 0 2 0 1 2 3";
        assert_eq!(parse_stat_ticks(stat).unwrap(), 10);
    }

    #[test]
    fn malformed() {
        assert!(parse_stat_ticks("12 node S 1").is_err());
        assert!(parse_stat_ticks("12 (node) S 1 2 3").is_err());
        assert!(parse_stat_ticks("12 (node) S 1 2 3 4 5 6 7 8 9 10 x 1").is_err());
    }

    #[test]
    fn reads_our_own_process() {
        let pid = std::process::id();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu_time(&[pid], ticks_per_second()).is_ok());
        assert!(cpu_time(&[u32::MAX], 100).is_err());
    }
}
