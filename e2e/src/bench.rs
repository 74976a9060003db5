//! Shared by the bench binaries (`propagation`, `scale`): arguments, percentiles of
//! samples, and quantiles of Prometheus histograms scraped before and after.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// The value after `name` on the command line, or `default`.
pub fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_owned())
}

/// The nearest-rank `q` quantile of `sorted` (NaN when empty).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Count, p50, p99, max and the samples themselves, in milliseconds.
pub fn summary(mut ms: Vec<f64>) -> Value {
    ms.sort_by(f64::total_cmp);
    json!({"count": ms.len(), "p50_ms": percentile(&ms, 0.5), "p99_ms": percentile(&ms, 0.99),
           "max_ms": ms.last().copied().unwrap_or(f64::NAN), "samples_ms": ms})
}

/// The cumulative buckets (`le` -> count) of histogram `family` in `exposition`,
/// summed over the series whose labels include every one of `labels`
/// (`name="value"` pairs).
pub fn buckets(exposition: &str, family: &str, labels: &[&str]) -> BTreeMap<String, f64> {
    let prefix = format!("{family}_bucket{{");
    let mut sum = BTreeMap::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Some((set, count)) = rest.rsplit_once("} ") else {
            continue;
        };
        let pairs: Vec<&str> = set.split(',').collect();
        if !labels.iter().all(|l| pairs.contains(l)) {
            continue;
        }
        let Some(le) = pairs
            .iter()
            .find_map(|p| p.strip_prefix("le=\"")?.strip_suffix('"'))
        else {
            continue;
        };
        let count: f64 = count.trim().parse().unwrap_or(0.0);
        *sum.entry(le.to_owned()).or_insert(0.0) += count;
    }
    sum
}

/// Upper bounds of the p50 and p99 of the histogram difference `after - before`
/// (bucket bounds in seconds, answered in milliseconds), and its count.
pub fn bucket_quantiles(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> Value {
    let mut buckets: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| {
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            (bound, n - before.get(le).copied().unwrap_or(0.0))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().map_or(0.0, |b| b.1);
    let at = |q: f64| {
        buckets
            .iter()
            .find(|(_, cumulative)| *cumulative >= (q * total).ceil().max(1.0))
            .map_or(f64::NAN, |(bound, _)| bound * 1e3)
    };
    json!({"count": total, "p50_ms_at_most": at(0.5), "p99_ms_at_most": at(0.99)})
}

/// Seconds since the Unix epoch, as the agents' timestamps are.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 0.5), 50.0);
        assert_eq!(percentile(&sorted, 0.99), 99.0);
        assert_eq!(percentile(&sorted[..1], 0.99), 1.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn histogram_quantiles_come_from_the_difference_of_two_scrapes() {
        let before = "x_seconds_bucket{controller=\"a\",le=\"0.01\"} 10\n\
                      x_seconds_bucket{controller=\"a\",le=\"0.1\"} 10\n\
                      x_seconds_bucket{controller=\"a\",le=\"+Inf\"} 10\n\
                      x_seconds_bucket{controller=\"b\",le=\"+Inf\"} 99\n";
        let after = "x_seconds_bucket{controller=\"a\",le=\"0.01\"} 60\n\
                     x_seconds_bucket{controller=\"a\",le=\"0.1\"} 109\n\
                     x_seconds_bucket{controller=\"a\",le=\"+Inf\"} 110\n\
                     x_seconds_bucket{controller=\"b\",le=\"+Inf\"} 500\n";
        let label = ["controller=\"a\""];
        let q = bucket_quantiles(
            &buckets(before, "x_seconds", &label),
            &buckets(after, "x_seconds", &label),
        );
        assert_eq!(q["count"], 100.0);
        assert_eq!(q["p50_ms_at_most"], 10.0);
        assert_eq!(q["p99_ms_at_most"], 100.0);
    }
}
