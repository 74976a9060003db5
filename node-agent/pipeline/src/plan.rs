//! The stage planner: splits a model's layers into contiguous stages over devices in
//! proportion to each device's memory budget (pure: bytes in, stages out).
//!
//! The automatic plan is the contiguous split whose per-device bytes are closest (least
//! squares) to the proportional targets `total × budget / Σ budgets`, among the splits in
//! which no device exceeds its budget. It is found exactly by dynamic programming, so
//! planning fails only when no contiguous split of whole layers fits at all.

use std::fmt;

/// What a model needs in bytes, layer by layer, before it is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelBytes {
    /// Bytes of each transformer layer, in order.
    pub layers: Vec<u64>,
    /// Bytes of the token embedding, held by the first stage.
    pub embedding: u64,
    /// Bytes of the head (final norm, and the output projection unless tied), held by
    /// the last stage.
    pub head: u64,
    /// The output projection reuses the embedding matrix: a last stage that is not also
    /// the first needs its own copy (`embedding` bytes more).
    pub tied_embedding: bool,
    /// Bytes every stage holds whatever its layers (e.g. rotary embedding tables).
    pub per_stage: u64,
}

impl ModelBytes {
    /// Bytes of the stage holding layers `first..=last` of this model.
    pub fn stage_bytes(&self, first: usize, last: usize) -> u64 {
        self.range_bytes(first, last + 1)
    }

    /// Bytes of the model on a single device.
    pub fn total(&self) -> u64 {
        self.range_bytes(0, self.layers.len())
    }

    /// Bytes of the stage holding layers `start..end` (empty: 0).
    fn range_bytes(&self, start: usize, end: usize) -> u64 {
        if start >= end {
            return 0;
        }
        let n = self.layers.len();
        let mut bytes: u64 = self.per_stage + self.layers[start..end].iter().sum::<u64>();
        if start == 0 {
            bytes += self.embedding;
        }
        if end == n {
            bytes += self.head;
            if self.tied_embedding && start != 0 {
                bytes += self.embedding;
            }
        }
        bytes
    }
}

/// A device offered to the planner: its name (for messages) and its budget in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceOffer {
    /// The device's name, e.g. `cpu` or `gpu0`.
    pub name: String,
    /// The bytes the model may use on it.
    pub budget: u64,
}

/// A stage requested by the user: a device (index into the offered devices) and an
/// inclusive layer range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExplicitStage {
    /// Index of the device in the offered list.
    pub device: usize,
    /// The first layer of the stage.
    pub first_layer: usize,
    /// The last layer of the stage (inclusive).
    pub last_layer: usize,
}

/// A planned stage: layers `first_layer..=last_layer` on device `device`, using `bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedStage {
    /// Index of the device in the offered list.
    pub device: usize,
    /// The first layer of the stage.
    pub first_layer: usize,
    /// The last layer of the stage (inclusive).
    pub last_layer: usize,
    /// The bytes of weights the stage holds.
    pub bytes: u64,
}

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The model has no layers to place.
    #[error("the model has no layers")]
    NoLayers,
    /// No device was offered.
    #[error("no device is offered to the model")]
    NoDevices,
    /// The model does not fit the devices.
    #[error("model needs {}, devices offer {}{}", human_bytes(*need), Offers(offers), detail)]
    DoesNotFit {
        /// Bytes the whole model needs.
        need: u64,
        /// Every offered device with its budget.
        offers: Vec<DeviceOffer>,
        /// Why, when the total would fit but no contiguous split does.
        detail: String,
    },
    /// An explicit stage needs more than its device offers.
    #[error(
        "stage {stage} (layers {first_layer}-{last_layer}) needs {}, but {device} offers {}",
        human_bytes(*need),
        human_bytes(*budget)
    )]
    StageDoesNotFit {
        /// Position of the stage in the explicit list.
        stage: usize,
        /// Its first layer.
        first_layer: usize,
        /// Its last layer.
        last_layer: usize,
        /// The device's name.
        device: String,
        /// Bytes the stage needs.
        need: u64,
        /// Bytes the device offers.
        budget: u64,
    },
    /// The explicit stages are not a valid split of the layers.
    #[error("invalid explicit stages: {0}")]
    InvalidStages(String),
}

impl PlanError {
    /// Whether the failure is a lack of memory (as opposed to an invalid request).
    pub fn is_capacity(&self) -> bool {
        matches!(self, Self::DoesNotFit { .. } | Self::StageDoesNotFit { .. })
    }
}

struct Offers<'a>(&'a [DeviceOffer]);

impl fmt::Display for Offers<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("nothing");
        }
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" + ")?;
            }
            write!(f, "{} {}", d.name, human_bytes(d.budget))?;
        }
        Ok(())
    }
}

/// Bytes in binary units with one decimal: `3.1Gi`, `512.0Mi`, `12.5Ki`, `100B`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes >= size {
            return format!("{:.1}{unit}", bytes as f64 / size as f64);
        }
    }
    format!("{bytes}B")
}

/// Plans the stages of `model` over `devices`: the `explicit` stages when given
/// (validated), otherwise a proportional split (see the module documentation).
pub fn plan(
    model: &ModelBytes,
    devices: &[DeviceOffer],
    explicit: &[ExplicitStage],
) -> Result<Vec<PlannedStage>, PlanError> {
    if model.layers.is_empty() {
        return Err(PlanError::NoLayers);
    }
    if devices.is_empty() {
        return Err(PlanError::NoDevices);
    }
    if explicit.is_empty() {
        proportional(model, devices)
    } else {
        check_explicit(model, devices, explicit)
    }
}

fn check_explicit(
    model: &ModelBytes,
    devices: &[DeviceOffer],
    explicit: &[ExplicitStage],
) -> Result<Vec<PlannedStage>, PlanError> {
    let n = model.layers.len();
    let invalid = |msg: String| {
        Err(PlanError::InvalidStages(format!(
            "{msg} (stages must cover layers 0-{} in order, each exactly once)",
            n - 1
        )))
    };
    let mut next = 0;
    let mut stages = Vec::with_capacity(explicit.len());
    for (i, s) in explicit.iter().enumerate() {
        let Some(device) = devices.get(s.device) else {
            return invalid(format!(
                "stage {i} names device {} but only {} devices are offered",
                s.device,
                devices.len()
            ));
        };
        if explicit[..i].iter().any(|p| p.device == s.device) {
            return invalid(format!("device {} holds two stages", device.name));
        }
        if s.first_layer > s.last_layer {
            return invalid(format!(
                "stage {i} starts at layer {} after its last layer {}",
                s.first_layer, s.last_layer
            ));
        }
        if s.first_layer != next {
            return invalid(format!(
                "stage {i} starts at layer {} where layer {next} was expected",
                s.first_layer
            ));
        }
        if s.last_layer >= n {
            return invalid(format!(
                "stage {i} ends at layer {} but the model has {n} layers",
                s.last_layer
            ));
        }
        let need = model.stage_bytes(s.first_layer, s.last_layer);
        if need > device.budget {
            return Err(PlanError::StageDoesNotFit {
                stage: i,
                first_layer: s.first_layer,
                last_layer: s.last_layer,
                device: device.name.clone(),
                need,
                budget: device.budget,
            });
        }
        stages.push(PlannedStage {
            device: s.device,
            first_layer: s.first_layer,
            last_layer: s.last_layer,
            bytes: need,
        });
        next = s.last_layer + 1;
    }
    if next != n {
        return invalid(format!(
            "the stages end at layer {}",
            next.saturating_sub(1)
        ));
    }
    Ok(stages)
}

fn proportional(
    model: &ModelBytes,
    devices: &[DeviceOffer],
) -> Result<Vec<PlannedStage>, PlanError> {
    let n = model.layers.len();
    let active: Vec<usize> = (0..devices.len())
        .filter(|&d| devices[d].budget > 0)
        .collect();
    let total = model.total();
    let offered: u64 = active.iter().map(|&d| devices[d].budget).sum();
    let does_not_fit = |detail: String| PlanError::DoesNotFit {
        need: total,
        offers: devices.to_vec(),
        detail,
    };
    if total > offered || active.is_empty() {
        return Err(does_not_fit(String::new()));
    }
    // cost[k][i]: least squared deviation from the targets when devices active[..=k]
    // hold layers 0..i; from[k][i]: where device active[k]'s range starts.
    let targets: Vec<f64> = active
        .iter()
        .map(|&d| total as f64 * devices[d].budget as f64 / offered as f64)
        .collect();
    let mut cost = vec![vec![f64::INFINITY; n + 1]; active.len()];
    let mut from = vec![vec![0usize; n + 1]; active.len()];
    for (k, &d) in active.iter().enumerate() {
        let budget = devices[d].budget;
        for end in 0..=n {
            for start in 0..=end {
                let before = if k == 0 {
                    if start == 0 { 0.0 } else { f64::INFINITY }
                } else {
                    cost[k - 1][start]
                };
                if before.is_infinite() {
                    continue;
                }
                let load = model.range_bytes(start, end);
                if load > budget {
                    continue;
                }
                let deviation = load as f64 - targets[k];
                let c = before + deviation * deviation;
                if c < cost[k][end] {
                    cost[k][end] = c;
                    from[k][end] = start;
                }
            }
        }
    }
    let last = active.len() - 1;
    if cost[last][n].is_infinite() {
        let largest = model.layers.iter().copied().max().unwrap_or(0);
        return Err(does_not_fit(format!(
            ", but no split into contiguous stages of whole layers fits (largest layer {}, \
             embedding {}, head {})",
            human_bytes(largest),
            human_bytes(model.embedding),
            human_bytes(model.head)
        )));
    }
    let mut stages = Vec::new();
    let mut end = n;
    for k in (0..active.len()).rev() {
        let start = from[k][end];
        if start < end {
            stages.push(PlannedStage {
                device: active[k],
                first_layer: start,
                last_layer: end - 1,
                bytes: model.range_bytes(start, end),
            });
        }
        end = start;
    }
    stages.reverse();
    Ok(stages)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(name: &str, budget: u64) -> DeviceOffer {
        DeviceOffer {
            name: name.to_string(),
            budget,
        }
    }

    #[test]
    fn equal_layers_split_in_proportion_to_the_budgets() {
        let model = ModelBytes {
            layers: vec![10; 30],
            embedding: 0,
            head: 0,
            tied_embedding: false,
            per_stage: 0,
        };
        let stages = plan(&model, &[offer("gpu0", 1000), offer("gpu1", 2000)], &[]).expect("fits");
        let spans: Vec<_> = stages
            .iter()
            .map(|s| (s.device, s.first_layer, s.last_layer))
            .collect();
        assert_eq!(spans, [(0, 0, 9), (1, 10, 29)]);
    }

    #[test]
    fn a_model_larger_than_all_budgets_is_refused_naming_the_need_and_the_offers() {
        let gi = 1u64 << 30;
        let model = ModelBytes {
            layers: vec![gi; 3],
            embedding: gi / 10,
            head: 0,
            tied_embedding: false,
            per_stage: 0,
        };
        let err = plan(
            &model,
            &[offer("gpu0", gi), offer("gpu1", gi + gi / 2)],
            &[],
        )
        .expect_err("must not fit");
        assert_eq!(
            err.to_string(),
            "model needs 3.1Gi, devices offer gpu0 1.0Gi + gpu1 1.5Gi"
        );
        assert!(err.is_capacity());
    }

    #[test]
    fn a_tied_head_costs_the_embedding_again_only_on_a_separate_last_stage() {
        let model = ModelBytes {
            layers: vec![1, 2, 3],
            embedding: 100,
            head: 10,
            tied_embedding: true,
            per_stage: 0,
        };
        assert_eq!(model.stage_bytes(0, 2), 116);
        assert_eq!(model.stage_bytes(0, 0), 101);
        assert_eq!(model.stage_bytes(1, 2), 115);
    }

    #[test]
    fn explicit_stages_with_a_gap_are_refused_with_the_reason() {
        let model = ModelBytes {
            layers: vec![1; 4],
            embedding: 0,
            head: 0,
            tied_embedding: false,
            per_stage: 0,
        };
        let stages = [
            ExplicitStage {
                device: 0,
                first_layer: 0,
                last_layer: 1,
            },
            ExplicitStage {
                device: 1,
                first_layer: 3,
                last_layer: 3,
            },
        ];
        let err = plan(&model, &[offer("gpu0", 10), offer("gpu1", 10)], &stages).expect_err("gap");
        assert_eq!(
            err.to_string(),
            "invalid explicit stages: stage 1 starts at layer 3 where layer 2 was expected \
             (stages must cover layers 0-3 in order, each exactly once)"
        );
    }

    #[test]
    fn bytes_print_in_binary_units() {
        assert_eq!(human_bytes(100), "100B");
        assert_eq!(human_bytes(1536), "1.5Ki");
        assert_eq!(human_bytes(3 << 30), "3.0Gi");
    }
}
