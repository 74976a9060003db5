//! Properties of the stage planner: exact feasibility against a brute-force oracle,
//! contiguous stages covering every layer once within budgets, closeness to the
//! proportional split, and validation of explicit stages.

use gogrid_pipeline::plan::{DeviceOffer, ExplicitStage, ModelBytes, PlannedStage, plan};
use proptest::prelude::*;

fn offers(budgets: &[u64]) -> Vec<DeviceOffer> {
    budgets
        .iter()
        .enumerate()
        .map(|(i, &budget)| DeviceOffer {
            name: format!("gpu{i}"),
            budget,
        })
        .collect()
}

/// Every way to cut `n` layers into `d` ordered, possibly empty, ranges: cut points.
fn all_cuts(n: usize, d: usize) -> Vec<Vec<usize>> {
    if d == 1 {
        return vec![vec![0, n]];
    }
    let mut out = Vec::new();
    for first_end in 0..=n {
        for rest in all_cuts(n - first_end, d - 1) {
            let mut cuts = vec![0];
            cuts.extend(rest.iter().map(|c| c + first_end));
            out.push(cuts);
        }
    }
    out
}

fn range_bytes(model: &ModelBytes, start: usize, end: usize) -> u64 {
    if start == end {
        0
    } else {
        model.stage_bytes(start, end - 1)
    }
}

/// Whether any contiguous split of whole layers fits every device's budget.
fn some_split_fits(model: &ModelBytes, budgets: &[u64]) -> bool {
    all_cuts(model.layers.len(), budgets.len())
        .iter()
        .any(|cuts| {
            (0..budgets.len()).all(|k| range_bytes(model, cuts[k], cuts[k + 1]) <= budgets[k])
        })
}

fn check_stages(model: &ModelBytes, budgets: &[u64], stages: &[PlannedStage]) {
    assert!(!stages.is_empty());
    assert_eq!(
        stages[0].first_layer, 0,
        "the first stage starts at layer 0"
    );
    assert_eq!(
        stages[stages.len() - 1].last_layer + 1,
        model.layers.len(),
        "all layers"
    );
    for pair in stages.windows(2) {
        assert_eq!(
            pair[0].last_layer + 1,
            pair[1].first_layer,
            "contiguous: {stages:?}"
        );
        assert!(
            pair[0].device < pair[1].device,
            "devices in order: {stages:?}"
        );
    }
    for s in stages {
        assert!(s.first_layer <= s.last_layer, "no empty stage: {s:?}");
        assert_eq!(s.bytes, model.stage_bytes(s.first_layer, s.last_layer));
        assert!(
            s.bytes <= budgets[s.device],
            "{s:?} exceeds {}",
            budgets[s.device]
        );
        assert!(
            budgets[s.device] > 0,
            "a zero-budget device got a stage: {s:?}"
        );
    }
}

fn model_strategy() -> impl Strategy<Value = ModelBytes> {
    (
        prop::collection::vec(1u64..1000, 1..10),
        0u64..2000,
        0u64..2000,
        any::<bool>(),
        0u64..50,
    )
        .prop_map(
            |(layers, embedding, head, tied_embedding, per_stage)| ModelBytes {
                layers,
                embedding,
                head,
                tied_embedding,
                per_stage,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn planning_succeeds_exactly_when_some_contiguous_split_fits(
        model in model_strategy(),
        budgets in prop::collection::vec(prop_oneof![Just(0u64), 0u64..6000], 1..5),
    ) {
        let result = plan(&model, &offers(&budgets), &[]);
        prop_assert_eq!(result.is_ok(), some_split_fits(&model, &budgets), "{:?}", result);
        match result {
            Ok(stages) => check_stages(&model, &budgets, &stages),
            Err(err) => {
                prop_assert!(err.is_capacity());
                prop_assert!(err.to_string().starts_with("model needs "), "{}", err);
            }
        }
    }

    #[test]
    fn with_ample_budgets_each_device_gets_close_to_its_proportional_share(
        layers in prop::collection::vec(1u64..1000, 1..12),
        embedding in 0u64..2000,
        head in 0u64..2000,
        weights in prop::collection::vec(1u64..10, 1..5),
    ) {
        let model = ModelBytes { layers, embedding, head, tied_embedding: false, per_stage: 0 };
        let total = model.total();
        let budgets: Vec<u64> = weights.iter().map(|w| w * total).collect();
        let stages = plan(&model, &offers(&budgets), &[]).expect("ample budgets fit");
        check_stages(&model, &budgets, &stages);
        // A rounding of the ideal boundaries to the nearest layer boundary is off by at
        // most one unit per device, so the least-squares optimum is within unit × √devices.
        let n = model.layers.len();
        let unit = *model.layers.iter().max().expect("layers") as f64;
        let unit = unit
            .max((model.layers[0] + embedding) as f64)
            .max((model.layers[n - 1] + head) as f64)
            .max(if n == 1 { total as f64 } else { 0.0 });
        let bound = unit * (weights.len() as f64).sqrt() + 1e-6;
        let sum: u64 = weights.iter().sum();
        for (d, w) in weights.iter().enumerate() {
            let target = total as f64 * *w as f64 / sum as f64;
            let load = stages.iter().filter(|s| s.device == d).map(|s| s.bytes).sum::<u64>();
            prop_assert!((load as f64 - target).abs() <= bound,
                "device {} load {} target {} bound {}: {:?}", d, load, target, bound, stages);
        }
    }

    #[test]
    fn explicit_stages_are_accepted_exactly_when_they_cover_the_layers_and_fit(
        model in model_strategy(),
        budgets in prop::collection::vec(0u64..6000, 1..4),
        raw_cuts in prop::collection::vec(0usize..12, 0..4),
    ) {
        let n = model.layers.len();
        let mut cuts: Vec<usize> = raw_cuts.into_iter().map(|c| c.min(n)).collect();
        cuts.sort_unstable();
        cuts.insert(0, 0);
        cuts.push(n);
        let explicit: Vec<ExplicitStage> = cuts
            .windows(2)
            .enumerate()
            .filter(|(_, w)| w[0] < w[1])
            .map(|(i, w)| ExplicitStage { device: i, first_layer: w[0], last_layer: w[1] - 1 })
            .collect();
        let valid_devices = explicit.iter().all(|s| s.device < budgets.len());
        let fits = explicit.iter().all(|s| {
            budgets.get(s.device).is_some_and(|&b| model.stage_bytes(s.first_layer, s.last_layer) <= b)
        });
        let result = plan(&model, &offers(&budgets), &explicit);
        prop_assert_eq!(result.is_ok(), valid_devices && fits, "{:?}", result);
        if let Ok(stages) = result {
            check_stages(&model, &budgets, &stages);
            prop_assert_eq!(stages.len(), explicit.len());
        }
    }
}

#[test]
fn a_zero_budget_device_gets_no_layers() {
    let model = ModelBytes {
        layers: vec![10; 6],
        embedding: 5,
        head: 5,
        tied_embedding: false,
        per_stage: 0,
    };
    let stages = plan(&model, &offers(&[100, 0, 100]), &[]).expect("fits");
    assert!(stages.iter().all(|s| s.device != 1), "{stages:?}");
    assert_eq!(stages.len(), 2);
}

#[test]
fn explicit_stages_that_overlap_or_overrun_are_refused_with_the_reason() {
    let model = ModelBytes {
        layers: vec![1; 4],
        embedding: 0,
        head: 0,
        tied_embedding: false,
        per_stage: 0,
    };
    let stage = |device, first_layer, last_layer| ExplicitStage {
        device,
        first_layer,
        last_layer,
    };
    let cases = [
        (
            vec![stage(0, 0, 2), stage(1, 2, 3)],
            "stage 1 starts at layer 2 where layer 3 was expected",
        ),
        (
            vec![stage(0, 0, 4)],
            "stage 0 ends at layer 4 but the model has 4 layers",
        ),
        (vec![stage(0, 0, 1)], "the stages end at layer 1"),
        (
            vec![stage(0, 0, 1), stage(0, 2, 3)],
            "device gpu0 holds two stages",
        ),
        (
            vec![stage(5, 0, 3)],
            "stage 0 names device 5 but only 2 devices are offered",
        ),
    ];
    for (stages, reason) in cases {
        let err = plan(&model, &offers(&[100, 100]), &stages).expect_err(reason);
        assert!(!err.is_capacity());
        assert!(
            err.to_string().contains(reason),
            "{err} should say {reason}"
        );
    }
    let err = plan(
        &model,
        &offers(&[2, 100]),
        &[stage(0, 0, 2), stage(1, 3, 3)],
    )
    .expect_err("too big");
    assert_eq!(
        err.to_string(),
        "stage 0 (layers 0-2) needs 3B, but gpu0 offers 2B"
    );
}
