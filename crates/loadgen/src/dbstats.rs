//! Counting the database queries a service made during a run.
//!
//! The catalog exposes `catalog_db_queries_total` (possibly split by labels) in Prometheus
//! text at `/metrics`; the seed baseline reports `{"dbQueries": N, ...}` at `/stats`. Both
//! counters only grow, so the queries of a run are the difference of two scrapes.

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use serde::Serialize;

use crate::http::Target;

/// The catalog's query counter.
pub const METRIC: &str = "catalog_db_queries_total";

/// Where to read the database query counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DbStats {
    /// `/metrics` if it has `catalog_db_queries_total`, else `/stats` if it has `dbQueries`,
    /// else none.
    Auto,
    /// Sum of every `catalog_db_queries_total` series at `/metrics`.
    Metrics,
    /// `dbQueries` at `/stats` (the seed baseline).
    Seed,
    /// Do not count queries.
    None,
}

/// Sums every sample of `metric` in a Prometheus text exposition, whatever its labels.
/// Returns `None` when no sample of that metric is present.
pub fn sum_metric(text: &str, metric: &str) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        let line = line.trim_start();
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        // The name must end here: `catalog_db_queries_total_x` is another metric.
        let rest = match rest.chars().next() {
            Some('{') => match skip_labels(rest) {
                Some(r) => r,
                None => continue,
            },
            Some(c) if c.is_whitespace() => rest,
            _ => continue,
        };
        let Some(value) = rest.split_whitespace().next() else {
            continue;
        };
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => match v.parse::<f64>() {
                Ok(v) => v,
                Err(_) => continue,
            },
        };
        *total.get_or_insert(0.0) += value;
    }
    total
}

/// Skips a `{...}` label set, honouring quoted values with `\"` escapes (which may hold `}`).
fn skip_labels(s: &str) -> Option<&str> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        if in_quotes {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_quotes = false,
                _ => {}
            }
        } else if c == '"' {
            in_quotes = true;
        } else if c == '}' {
            return Some(&s[i + 1..]);
        }
    }
    None
}

/// Reads `dbQueries` from the seed baseline's `/stats` JSON.
pub fn seed_queries(json: &[u8]) -> Result<u64> {
    let v: serde_json::Value = serde_json::from_slice(json).context("/stats is not JSON")?;
    v.get("dbQueries")
        .and_then(serde_json::Value::as_u64)
        .context("/stats has no dbQueries")
}

/// Reads the current query counter of `target` the way `mode` says. `Auto` resolves to the
/// first source that answers; the resolved source is returned with the count.
pub async fn scrape(target: &Target, mode: DbStats) -> Result<Option<(DbStats, u64)>> {
    match mode {
        DbStats::None => Ok(None),
        DbStats::Metrics => {
            let (status, body) = target.fetch("/metrics").await?;
            if status != 200 {
                bail!("GET /metrics answered {status}");
            }
            let text = String::from_utf8_lossy(&body);
            let sum =
                sum_metric(&text, METRIC).with_context(|| format!("/metrics has no {METRIC}"))?;
            Ok(Some((DbStats::Metrics, sum.max(0.0) as u64)))
        }
        DbStats::Seed => {
            let (status, body) = target.fetch("/stats").await?;
            if status != 200 {
                bail!("GET /stats answered {status}");
            }
            Ok(Some((DbStats::Seed, seed_queries(&body)?)))
        }
        DbStats::Auto => {
            if let Ok(Some(found)) = Box::pin(scrape(target, DbStats::Metrics)).await {
                return Ok(Some(found));
            }
            if let Ok(Some(found)) = Box::pin(scrape(target, DbStats::Seed)).await {
                return Ok(Some(found));
            }
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sums_every_label_set() {
        let text = "\
# HELP catalog_db_queries_total Database round trips.
# TYPE catalog_db_queries_total counter
catalog_db_queries_total{kind=\"get\"} 12
catalog_db_queries_total{kind=\"list\",note=\"a } b \\\" c\"} 3
catalog_db_queries_total_created 1700000000
catalog_db_queries_totalx 99
other_metric{kind=\"get\"} 5
catalog_db_queries_total{kind=\"put\"} 2.5e1 1700000000000
";
        assert_eq!(sum_metric(text, METRIC), Some(40.0));
    }

    #[test]
    fn unlabelled_and_missing() {
        assert_eq!(
            sum_metric("catalog_db_queries_total 7\n", METRIC),
            Some(7.0)
        );
        assert_eq!(
            sum_metric("catalog_db_queries_total   8 \n", METRIC),
            Some(8.0)
        );
        assert_eq!(
            sum_metric("# catalog_db_queries_total 7\nx 1\n", METRIC),
            None
        );
        assert_eq!(sum_metric("", METRIC), None);
        // A broken label set is skipped, not misread.
        assert_eq!(
            sum_metric("catalog_db_queries_total{kind=\"a 5\n", METRIC),
            None
        );
    }

    #[test]
    fn reads_seed_stats() {
        let body = br#"{"dbQueries":42,"byKind":{"findUnique":40},"uptimeS":3.5}"#;
        assert_eq!(seed_queries(body).unwrap(), 42);
        assert!(seed_queries(b"{}").is_err());
        assert!(seed_queries(b"not json").is_err());
    }
}
