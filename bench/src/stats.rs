//! Percentiles and medians of samples, as JSON.

use std::time::Duration;

use serde_json::{Value, json};

/// The `q` quantile (0..=1) of sorted `v`, nearest rank.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sorts in place and returns it.
pub fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// p50/p95/p99/mean/min/n of latencies, in milliseconds.
pub fn latency_ms(samples: &[Duration]) -> Value {
    let ms = sorted(samples.iter().map(|d| d.as_secs_f64() * 1e3).collect());
    let mean = ms.iter().sum::<f64>() / ms.len().max(1) as f64;
    json!({
        "p50": quantile(&ms, 0.50),
        "p95": quantile(&ms, 0.95),
        "p99": quantile(&ms, 0.99),
        "mean": mean,
        "min": ms.first().copied().unwrap_or(f64::NAN),
        "n": ms.len(),
    })
}

/// The median and every sample.
pub fn median_of(samples: Vec<f64>) -> Value {
    let s = sorted(samples.clone());
    json!({"median": quantile(&s, 0.5), "samples": samples})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[7.0], 0.5), 7.0);
        assert!(quantile(&[], 0.5).is_nan());
    }
}
