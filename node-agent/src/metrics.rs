//! The agent's Prometheus metrics: GPU memory, VRAM budget, policy in force and
//! GpuNode writes.

use std::sync::atomic::AtomicI64;

use gogrid_crds::gpu_node::GpuNodeStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use prometheus_client::registry::{Registry, Unit};

/// Labels naming one GPU.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GpuLabels {
    /// GPU index, or `cpu` for the CPU device.
    pub gpu: String,
}

/// Labels naming the preset in force.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// Preset name.
    pub preset: String,
}

/// Every agent metric and its registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    memory_total: Family<GpuLabels, Gauge<i64, AtomicI64>>,
    budget: Family<GpuLabels, Gauge<i64, AtomicI64>>,
    policy: Family<PolicyLabels, Gauge<i64, AtomicI64>>,
    vram_max_percent: Gauge<i64, AtomicI64>,
    compute_max_percent: Gauge<i64, AtomicI64>,
    /// GpuNode status writes.
    pub gpunode_writes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("gogrid_agent");
        let memory_total = Family::<GpuLabels, Gauge<i64, AtomicI64>>::default();
        let budget = Family::<GpuLabels, Gauge<i64, AtomicI64>>::default();
        let policy = Family::<PolicyLabels, Gauge<i64, AtomicI64>>::default();
        let vram_max_percent = Gauge::<i64, AtomicI64>::default();
        let compute_max_percent = Gauge::<i64, AtomicI64>::default();
        let gpunode_writes = Counter::default();
        registry.register_with_unit(
            "gpu_memory_total",
            "Memory of each GPU",
            Unit::Bytes,
            memory_total.clone(),
        );
        registry.register_with_unit(
            "vram_budget",
            "VRAM budget in force on each device",
            Unit::Bytes,
            budget.clone(),
        );
        registry.register("policy_preset", "1 for the preset in force", policy.clone());
        registry.register(
            "policy_vram_max_percent",
            "VRAM cap in force, in percent",
            vram_max_percent.clone(),
        );
        registry.register(
            "policy_compute_max_percent",
            "Compute duty-cycle cap in force, in percent",
            compute_max_percent.clone(),
        );
        registry.register(
            "gpunode_writes",
            "GpuNode status writes",
            gpunode_writes.clone(),
        );
        Self {
            registry,
            memory_total,
            budget,
            policy,
            vram_max_percent,
            compute_max_percent,
            gpunode_writes,
        }
    }
}

impl Metrics {
    /// Update the gauges from a status about to be reported.
    pub fn observe(&self, status: &GpuNodeStatus) {
        for g in &status.gpus {
            self.memory_total
                .get_or_create(&GpuLabels {
                    gpu: g.index.to_string(),
                })
                .set(g.memory_total_bytes);
        }
        for d in status.budget.iter().flat_map(|b| &b.devices) {
            let gpu = d.index.map_or_else(|| "cpu".to_owned(), |i| i.to_string());
            self.budget
                .get_or_create(&GpuLabels { gpu })
                .set(d.vram_budget_bytes);
        }
        self.policy.clear();
        if let Some(p) = &status.policy {
            self.policy
                .get_or_create(&PolicyLabels {
                    preset: p.preset_in_force.as_str().to_owned(),
                })
                .set(1);
            self.vram_max_percent.set(i64::from(p.vram_max_percent));
            self.compute_max_percent
                .set(i64::from(p.compute_max_percent));
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
