//! Reading metrics back: Prometheus text and the `metrics_util` debugging recorder.

/// The sum of every sample of metric `name` in a Prometheus text exposition (a `/metrics`
/// body), over all its label sets; 0 when it has none.
///
/// Only samples of `name` itself count: `name_bucket` or `name_x` are other metrics.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let rest = match rest.chars().next()? {
                '{' => after_labels(rest)?,
                c if c.is_whitespace() => rest,
                _ => return None,
            };
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// What follows a `{...}` label set at the start of `s`. Label values are quoted and may hold
/// `}`, spaces and `\"`, so the set ends at the first `}` outside quotes.
fn after_labels(s: &str) -> Option<&str> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in s.char_indices().skip(1) {
        match (quoted, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => quoted = false,
            (false, _, '"') => quoted = true,
            (false, _, '}') => return Some(&s[i + 1..]),
            _ => {}
        }
    }
    None
}

/// The counters of a debugging recorder, from one snapshot: `counters(&snap)(name)` is the sum
/// of counter `name` over its labels, 0 if it was not counted.
///
/// A snapshot drains the recorder's counters, so each total is what was counted since the
/// previous snapshot; to compare several counters at one moment, keep the returned function.
#[cfg(feature = "metrics")]
pub fn counters(snap: &metrics_util::debugging::Snapshotter) -> impl Fn(&str) -> u64 + use<> {
    let all: Vec<(String, u64)> = snap
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(k, _, _, v)| match v {
            metrics_util::debugging::DebugValue::Counter(n) => Some((k.key().name().to_owned(), n)),
            _ => None,
        })
        .collect();
    move |name| all.iter().filter(|(k, _)| k == name).map(|(_, n)| n).sum()
}

#[cfg(test)]
mod tests {
    use super::metric_sum;

    const TEXT: &str = "\
# HELP requests_total Requests.
# TYPE requests_total counter
requests_total{route=\"get\"} 12
requests_total{route=\"list\",note=\"a } b \\\" c\"} 3
requests_total 2.5
requests_total_created 1700000000
requests_totalx 99
latency_seconds_bucket{le=\"0.1\"} 4
";

    #[test]
    fn sums_every_label_set_of_the_metric_only() {
        assert_eq!(metric_sum(TEXT, "requests_total"), 17.5);
        assert_eq!(metric_sum(TEXT, "latency_seconds_bucket"), 4.0);
    }

    #[test]
    fn a_missing_metric_is_zero() {
        assert_eq!(metric_sum(TEXT, "latency_seconds"), 0.0);
        assert_eq!(metric_sum("", "requests_total"), 0.0);
    }
}
