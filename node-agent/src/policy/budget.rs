//! The VRAM budget of each device: the cap of the policy in force times the
//! device's memory, less what other processes hold when `adaptive` is on.

use gogrid_crds::EffectivePolicy;
use gogrid_crds::gpu_node::{Budget, DeviceBudget, GpuInfo};
use gogrid_crds::quantity::human;

use super::adaptive::vram_left;

/// Budgets of the GPUs, or of the CPU device (`host_memory` bytes) when there is
/// no GPU. Without a policy nothing may be used.
pub fn budgets(gpus: &[GpuInfo], host_memory: i64, policy: Option<&EffectivePolicy>) -> Budget {
    let Some(policy) = policy else {
        return Budget {
            vram_budget_human: human(0),
            ..Default::default()
        };
    };
    let cap = |total: i64| {
        i64::try_from(i128::from(total) * i128::from(policy.vram_max_percent) / 100)
            .unwrap_or(i64::MAX)
    };
    let devices: Vec<DeviceBudget> = if gpus.is_empty() {
        vec![DeviceBudget {
            index: None,
            vram_budget_bytes: cap(host_memory),
            vram_used_bytes: 0,
        }]
    } else {
        gpus.iter()
            .map(|g| {
                let others = if policy.adaptive.is_some() {
                    g.other_processes_memory_bytes
                } else {
                    0
                };
                DeviceBudget {
                    index: Some(g.index),
                    vram_budget_bytes: vram_left(cap(g.memory_total_bytes), others),
                    vram_used_bytes: 0,
                }
            })
            .collect()
    };
    let total: i64 = devices.iter().map(|d| d.vram_budget_bytes).sum();
    Budget {
        vram_budget_bytes: total,
        vram_used_bytes: devices.iter().map(|d| d.vram_used_bytes).sum(),
        vram_budget_human: human(total),
        devices,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gogrid_crds::Preset;
    use gogrid_crds::policy::{AdaptivePolicy, preset_policy};

    fn gpu(index: u32, total_gib: i64, others_gib: i64) -> GpuInfo {
        GpuInfo {
            index,
            memory_total_bytes: total_gib << 30,
            other_processes_memory_bytes: others_gib << 30,
            ..Default::default()
        }
    }

    #[test]
    fn each_gpu_gets_the_cap_of_its_own_memory() {
        let p = preset_policy(Preset::Conservative);
        let b = budgets(&[gpu(0, 24, 0), gpu(1, 16, 0)], 0, Some(&p));
        let per: Vec<_> = b.devices.iter().map(|d| d.vram_budget_bytes).collect();
        assert_eq!(per, [12 << 30, 8 << 30]);
        assert_eq!(b.vram_budget_bytes, 20 << 30);
        assert_eq!(b.vram_budget_human, "20.0Gi");
    }

    #[test]
    fn adaptive_subtracts_what_other_processes_hold() {
        let mut p = preset_policy(Preset::Default);
        let plain = budgets(&[gpu(0, 10, 3)], 0, Some(&p));
        assert_eq!(plain.vram_budget_bytes, 7 << 30);
        p.adaptive = Some(AdaptivePolicy {
            other_utilization_percent: 10,
            min_share_percent: 10,
            recovery_seconds: 30,
        });
        let adaptive = budgets(&[gpu(0, 10, 3)], 0, Some(&p));
        assert_eq!(adaptive.vram_budget_bytes, 4 << 30);
        let crowded = budgets(&[gpu(0, 10, 9)], 0, Some(&p));
        assert_eq!(crowded.vram_budget_bytes, 0, "never negative");
    }

    #[test]
    fn without_gpus_the_cpu_device_is_budgeted_from_host_memory_and_without_policy_nothing() {
        let p = preset_policy(Preset::Aggressive);
        let b = budgets(&[], 100 << 30, Some(&p));
        assert_eq!(b.devices[0].index, None);
        assert_eq!(b.vram_budget_bytes, 95 << 30);
        assert_eq!(budgets(&[gpu(0, 24, 0)], 0, None).vram_budget_bytes, 0);
    }
}
