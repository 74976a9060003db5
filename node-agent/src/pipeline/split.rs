//! The in-process traffic split of one model: unversioned requests go to the
//! canary exactly `weight` times in every window of 100 consecutive requests
//! (a Bresenham sequence over one atomic counter: request n goes to the canary
//! when floor((n+1)w/100) > floor(nw/100)), the rest to stable. Requests that
//! name a version bypass it; the preview version never gets unversioned ones.

use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use gogrid_crds::inference_deployment::TrafficSplit;
use gogrid_serve::VersionSelector;

/// A split, swapped in place when the deployment's traffic changes.
#[derive(Debug, Default)]
pub struct WeightedSplit {
    traffic: RwLock<Option<TrafficSplit>>,
    counter: AtomicU64,
}

/// Whether request `n` goes to the canary at `weight` percent.
pub fn to_canary(n: u64, weight: u64) -> bool {
    let w = weight.min(100);
    (n + 1) * w / 100 > n * w / 100
}

impl WeightedSplit {
    /// Route by `traffic` from now on; whether that changed anything.
    pub fn set(&self, traffic: &TrafficSplit) -> bool {
        if let Ok(mut t) = self.traffic.write()
            && t.as_ref() != Some(traffic)
        {
            *t = Some(traffic.clone());
            return true;
        }
        false
    }

    /// The percentage of unversioned requests `version` really gets under
    /// `traffic` when only the versions in `ready` serve (what
    /// [`VersionSelector::select`] does: a version that is not ready gets
    /// nothing, and the other ready one takes its share).
    pub fn routed_weight(traffic: &TrafficSplit, version: &str, ready: &[&str]) -> i32 {
        let is_ready = |v: &str| ready.contains(&v);
        let stable = is_ready(&traffic.stable_version);
        let canary = traffic.canary_version.as_deref().is_some_and(is_ready);
        let weight = traffic.canary_weight.clamp(0, 100);
        let is_canary = traffic.canary_version.as_deref() == Some(version);
        let is_stable = traffic.stable_version == version;
        match (stable, canary) {
            (true, true) => Self::weight_of(traffic, version),
            (true, false) if is_stable => 100,
            (false, true) if is_canary && weight > 0 => 100,
            _ => 0,
        }
    }

    /// The percentage of unversioned requests `version` gets under `traffic`.
    pub fn weight_of(traffic: &TrafficSplit, version: &str) -> i32 {
        let canary = traffic.canary_weight.clamp(0, 100);
        if traffic.canary_version.as_deref() == Some(version) {
            canary
        } else if traffic.stable_version == version {
            100 - if traffic.canary_version.is_some() {
                canary
            } else {
                0
            }
        } else {
            0
        }
    }
}

impl VersionSelector for WeightedSplit {
    fn select(&self, _model: &str, ready: &[&str]) -> Option<usize> {
        let guard = self.traffic.read().ok()?;
        let traffic = guard.as_ref()?;
        let position = |v: &str| ready.iter().position(|r| *r == v);
        let stable = position(&traffic.stable_version);
        let canary = traffic.canary_version.as_deref().and_then(position);
        match (stable, canary) {
            (Some(s), Some(c)) => {
                let n = self.counter.fetch_add(1, Ordering::Relaxed);
                let w = u64::try_from(traffic.canary_weight.clamp(0, 100)).unwrap_or(0);
                Some(if to_canary(n, w) { c } else { s })
            }
            // Only one of them is ready: it takes everything rather than failing.
            (Some(s), None) => Some(s),
            (None, Some(c)) if traffic.canary_weight > 0 => Some(c),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn split(weight: i32) -> WeightedSplit {
        let s = WeightedSplit::default();
        s.set(&TrafficSplit {
            stable_version: "v1".into(),
            canary_version: Some("v2".into()),
            canary_weight: weight,
            preview_version: Some("v3".into()),
            retained_version: None,
        });
        s
    }

    proptest! {
        #[test]
        fn every_window_of_100_requests_holds_exactly_the_weight(weight in 0i32..=100, start in 0u64..10_000, len in 100usize..400) {
            let s = split(weight);
            s.counter.store(start, Ordering::Relaxed);
            let picks: Vec<usize> = (0..len).map(|_| s.select("m", &["v1", "v2", "v3"]).expect("routed")).collect();
            for window in picks.windows(100) {
                let canary = window.iter().filter(|&&i| i == 1).count();
                prop_assert_eq!(canary, weight as usize);
                prop_assert!(window.iter().all(|&i| i != 2), "the preview gets no unversioned request");
            }
        }

        /// The weight the agent reports is the share it routes, whichever
        /// versions are ready.
        #[test]
        fn the_reported_weight_is_the_share_really_routed(weight in 0i32..=100, mask in 0usize..8, start in 0u64..10_000) {
            let s = split(weight);
            s.counter.store(start, Ordering::Relaxed);
            let ready: Vec<&str> = ["v1", "v2", "v3"].into_iter().enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0).map(|(_, v)| v).collect();
            let picks: Vec<Option<usize>> = (0..100).map(|_| s.select("m", &ready)).collect();
            let traffic = s.traffic.read().expect("lock").clone().expect("set");
            for (i, v) in ready.iter().enumerate() {
                let routed = picks.iter().filter(|p| **p == Some(i)).count();
                prop_assert_eq!(routed as i32, WeightedSplit::routed_weight(&traffic, v, &ready), "{} of {:?}", v, ready);
            }
        }
    }

    #[test]
    fn zero_sends_nothing_to_the_canary_and_a_hundred_sends_everything() {
        let none = split(0);
        assert!((0..300).all(|_| none.select("m", &["v1", "v2"]) == Some(0)));
        let all = split(100);
        assert!((0..300).all(|_| all.select("m", &["v1", "v2"]) == Some(1)));
    }

    #[test]
    fn when_the_canary_is_not_ready_stable_takes_everything() {
        let s = split(50);
        assert!((0..10).all(|_| s.select("m", &["v1"]) == Some(0)));
        assert_eq!(
            WeightedSplit::weight_of(
                &TrafficSplit {
                    stable_version: "v1".into(),
                    canary_version: Some("v2".into()),
                    canary_weight: 30,
                    preview_version: None,
                    retained_version: None,
                },
                "v1"
            ),
            70
        );
    }
}
