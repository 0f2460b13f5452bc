//! Human-readable tables and machine-readable JSON of run results.

use std::fmt::Write as _;

use serde::Serialize;

use crate::runner::{LoadSpec, TargetReport};

fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn errors_text(r: &TargetReport) -> String {
    if r.summary.errors.is_empty() {
        return "0".to_owned();
    }
    r.summary
        .errors
        .iter()
        .map(|(k, n)| format!("{k}:{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn hit_text(r: &TargetReport) -> String {
    r.summary
        .hit_ratio
        .map_or_else(|| "-".to_owned(), |h| format!("{:.1}%", h * 100.0))
}

fn db_text(r: &TargetReport) -> String {
    r.db.as_ref().map_or_else(
        || "-".to_owned(),
        |d| format!("{} ({:.3}%/req)", d.queries, d.per_request * 100.0),
    )
}

fn cpu_text(r: &TargetReport) -> String {
    r.cpu
        .as_ref()
        .map_or_else(|| "-".to_owned(), |c| format!("{:.0}", c.ms_per_100k))
}

/// The detailed report of one target.
pub fn detail(spec: &LoadSpec, r: &TargetReport) -> String {
    let s = &r.summary;
    let l = &s.latency_ms;
    let mut out = String::new();
    let mode = match spec.rate {
        Some(rate) => format!("open loop at {} req/s", thousands(rate)),
        None => "closed loop".to_owned(),
    };
    let _ = writeln!(out, "{} ({})", r.name, r.url);
    let _ = writeln!(
        out,
        "  load        {} connections, {mode}, mix {}, {} ids",
        spec.connections, spec.mix, spec.ids
    );
    let _ = writeln!(
        out,
        "  responses   {} in {:.2} s",
        thousands(s.responses as f64),
        s.seconds
    );
    let _ = writeln!(out, "  throughput  {} req/s", thousands(s.throughput));
    let _ = writeln!(
        out,
        "  latency ms  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (mean {})",
        ms(l.p50),
        ms(l.p90),
        ms(l.p99),
        ms(l.p999),
        ms(l.max),
        ms(l.mean)
    );
    let _ = writeln!(out, "  errors      {}", errors_text(r));
    let c = &s.cache;
    let _ = writeln!(
        out,
        "  x-cache     hit ratio {}  (hit {} miss {} stale {} bypass {} other {} none {})",
        hit_text(r),
        c.hit,
        c.miss,
        c.stale,
        c.bypass,
        c.other,
        c.absent
    );
    let _ = writeln!(out, "  db queries  {}", db_text(r));
    if let Some(cpu) = &r.cpu {
        let _ = writeln!(
            out,
            "  service cpu {:.2} s, {:.0} ms per 100k responses",
            cpu.seconds, cpu.ms_per_100k
        );
    }
    if r.prefill_errors > 0 {
        let _ = writeln!(out, "  prefill     {} reads were not 2xx", r.prefill_errors);
    }
    out
}

/// One target's figures divided by the baseline's.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ratios {
    /// Target name.
    pub name: String,
    /// Throughput / baseline throughput.
    pub throughput: Option<f64>,
    /// p99 / baseline p99.
    pub p99: Option<f64>,
    /// CPU per request / baseline CPU per request.
    pub cpu: Option<f64>,
}

fn div(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite()).then(|| a / b)
}

/// Ratios of every report to the one named `baseline`; `None` if there is no such report.
pub fn ratios(reports: &[TargetReport], baseline: &str) -> Option<Vec<Ratios>> {
    let base = reports.iter().find(|r| r.name == baseline)?;
    Some(
        reports
            .iter()
            .map(|r| Ratios {
                name: r.name.clone(),
                throughput: div(r.summary.throughput, base.summary.throughput),
                p99: div(r.summary.latency_ms.p99, base.summary.latency_ms.p99),
                cpu: match (&r.cpu, &base.cpu) {
                    (Some(a), Some(b)) => div(a.ms_per_100k, b.ms_per_100k),
                    _ => None,
                },
            })
            .collect(),
    )
}

fn x(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}x"))
}

/// The comparison table: one row per target, ratios to `baseline` in the last columns.
/// Markdown, so it can be pasted into a README as is.
pub fn comparison(reports: &[TargetReport], baseline: &str) -> String {
    let ratios = ratios(reports, baseline).unwrap_or_default();
    let header = [
        "target",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "errors",
        "hit",
        "db queries",
        "cpu ms/100k",
        "req/s vs base",
        "p99 vs base",
        "cpu vs base",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| (*h).to_owned()).collect()];
    for r in reports {
        let l = &r.summary.latency_ms;
        let q = ratios.iter().find(|q| q.name == r.name);
        rows.push(vec![
            r.name.clone(),
            thousands(r.summary.throughput),
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.max),
            errors_text(r),
            hit_text(r),
            db_text(r),
            cpu_text(r),
            x(q.and_then(|q| q.throughput)),
            x(q.and_then(|q| q.p99)),
            x(q.and_then(|q| q.cpu)),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, w))| {
                if c == 0 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
        if i == 0 {
            let rule: Vec<String> = widths
                .iter()
                .enumerate()
                .map(|(c, w)| {
                    if c == 0 {
                        "-".repeat(*w)
                    } else {
                        format!("{}:", "-".repeat(w - 1))
                    }
                })
                .collect();
            let _ = writeln!(out, "| {} |", rule.join(" | "));
        }
    }
    let _ = writeln!(out, "\nratios are relative to `{baseline}`");
    out
}

/// The JSON document of a run or comparison.
#[derive(Debug, Serialize)]
pub struct JsonReport<'a> {
    /// The load that was applied.
    pub load: &'a LoadSpec,
    /// The baseline of the ratios, for a comparison.
    pub baseline: Option<&'a str>,
    /// One report per target, in the order they ran.
    pub targets: &'a [TargetReport],
    /// Ratios to the baseline, for a comparison.
    pub ratios: Option<Vec<Ratios>>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::runner::CpuReport;
    use crate::stats::{CacheStatus, Recorder, Timeline};

    fn report(name: &str, n: u64, latency_us: u64, cpu_ms: f64) -> TargetReport {
        let mut r = Recorder::new(Timeline::default());
        for _ in 0..n {
            r.response(crate::mix::Op::Get, 200, CacheStatus::Hit, latency_us, 0);
        }
        TargetReport {
            name: name.to_owned(),
            url: "http://127.0.0.1:1".to_owned(),
            id_format: "p{}".to_owned(),
            prefill_errors: 0,
            summary: r.summary(1.0),
            db: None,
            cpu: Some(CpuReport {
                pids: vec![1],
                seconds: 1.0,
                ms_per_100k: cpu_ms,
            }),
            series: vec![],
        }
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(41234567.0), "41,234,567");
    }

    #[test]
    fn ratios_to_the_baseline() {
        let reports = [
            report("seed", 1000, 4000, 2000.0),
            report("fast", 2000, 2000, 1000.0),
        ];
        let q = ratios(&reports, "seed").unwrap();
        assert_eq!(q[0].throughput, Some(1.0));
        let fast = &q[1];
        assert!((fast.throughput.unwrap() - 2.0).abs() < 1e-9);
        assert!((fast.p99.unwrap() - 0.5).abs() < 0.01);
        assert!((fast.cpu.unwrap() - 0.5).abs() < 1e-9);
        assert!(ratios(&reports, "nope").is_none());
        let table = comparison(&reports, "seed");
        assert!(table.contains("| fast "), "{table}");
        assert!(table.contains("2.00x"), "{table}");
        assert!(table.contains("0.50x"), "{table}");
        // A valid Markdown delimiter row: right-aligned columns end in `:`.
        let rule = table.lines().nth(1).unwrap();
        assert!(rule.starts_with("| ---") && rule.ends_with(": |"), "{rule}");
        assert!(!rule.contains(":-"), "{rule}");
    }
}
