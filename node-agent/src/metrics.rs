//! The agent's Prometheus metrics: GPU memory and utilisation, VRAM budget and
//! use, the policy in force, admission outcomes and duty cycle, GpuNode
//! writes, and the serving layer's request metrics on the same registry.

use std::sync::atomic::AtomicI64;

use gogrid_crds::gpu_node::GpuNodeStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use prometheus_client::registry::{Registry, Unit};

/// Labels naming one GPU.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GpuLabels {
    /// GPU index, or `cpu` for the CPU device.
    pub gpu: String,
}

/// The `gpu` label of a device: its index, or `cpu`.
fn device_label(device: crate::policy::ledger::Device) -> String {
    match device {
        crate::policy::ledger::Device::Gpu(i) => i.to_string(),
        crate::policy::ledger::Device::Cpu => "cpu".to_owned(),
    }
}

/// Labels naming the preset in force.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    /// Preset name.
    pub preset: String,
}

/// Labels of an admission outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The device whose gate decided (GPU index, or `cpu`).
    pub gpu: String,
    /// `admitted`, `throttled` or `refused`.
    pub outcome: String,
    /// Why (`interval`, `duty_cycle`, `busy`, `batch_too_large`, `empty`,
    /// `deadline`), empty when admitted.
    pub reason: String,
}

/// Labels of a why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// One word.
    pub reason: String,
}

/// Labels naming one version of an InferenceDeployment.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub deployment: String,
    /// The model version.
    pub version: String,
}

/// Labels naming one InferenceDeployment.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeploymentLabels {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub deployment: String,
}

/// How fast traffic splits take effect on this agent, and what it loaded.
#[derive(Clone, Debug)]
pub struct SplitMetrics {
    /// Model versions loaded (a restart of the operator must not load any
    /// twice: the fault tests read this).
    pub loads: Family<VersionLabels, Counter>,
    /// Seconds from a deployment change reaching the agent to its split routing.
    pub apply: Histogram,
    /// When each deployment's split last changed (Unix time, seconds).
    pub applied_at: Family<DeploymentLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// The same, readable (by `namespace/name`): a hollow agent serves it for
    /// all its nodes at once.
    pub last_applied: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, f64>>>,
}

/// Every agent metric and its registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The serving layer's metrics (requests, latency, batches, queue depth).
    pub serving: gogrid_serve::Metrics,
    admissions: Family<OutcomeLabels, Counter>,
    wait_seconds: Family<GpuLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    busy_seconds: Family<GpuLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    duty_cap: Family<GpuLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    vram_used: Family<GpuLabels, Gauge<i64, AtomicI64>>,
    utilization: Family<GpuLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    memory_total: Family<GpuLabels, Gauge<i64, AtomicI64>>,
    budget: Family<GpuLabels, Gauge<i64, AtomicI64>>,
    policy: Family<PolicyLabels, Gauge<i64, AtomicI64>>,
    vram_max_percent: Gauge<f64, std::sync::atomic::AtomicU64>,
    compute_max_percent: Gauge<f64, std::sync::atomic::AtomicU64>,
    not_ready: Family<ReasonLabels, Gauge<i64, AtomicI64>>,
    traffic_weight: Family<VersionLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// GpuNode status writes.
    pub gpunode_writes: Counter,
    /// Traffic split timings.
    pub split: SplitMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        let serving = gogrid_serve::Metrics::new(&mut root);
        let registry = root.sub_registry_with_prefix("gogrid_agent");
        let admissions = Family::<OutcomeLabels, Counter>::default();
        let wait_seconds =
            Family::<GpuLabels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        let busy_seconds =
            Family::<GpuLabels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        let duty_cap = Family::<GpuLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let vram_used = Family::<GpuLabels, Gauge<i64, AtomicI64>>::default();
        let utilization = Family::<GpuLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        // Cumulative figures read from the gate's atomic counters: exposed as
        // counters (`_total`), set from that source of truth.
        registry.register(
            "admissions",
            "Batches through each device's throttle gate by outcome (admitted, throttled, refused) and reason",
            admissions.clone(),
        );
        registry.register_with_unit(
            "throttle_wait",
            "Time batches spent waiting at each device's throttle gate",
            Unit::Seconds,
            wait_seconds.clone(),
        );
        registry.register_with_unit(
            "device_busy",
            "Time the device was busy running batches",
            Unit::Seconds,
            busy_seconds.clone(),
        );
        registry.register(
            "duty_cycle_cap_ratio",
            "Duty-cycle cap in force on each device after adaptive back-off (0-1)",
            duty_cap.clone(),
        );
        registry.register_with_unit(
            "vram_used",
            "VRAM reserved in the ledger on each device",
            Unit::Bytes,
            vram_used.clone(),
        );
        registry.register(
            "gpu_utilization_ratio",
            "GPU utilisation as NVML reports it (0-1)",
            utilization.clone(),
        );
        let memory_total = Family::<GpuLabels, Gauge<i64, AtomicI64>>::default();
        let budget = Family::<GpuLabels, Gauge<i64, AtomicI64>>::default();
        let policy = Family::<PolicyLabels, Gauge<i64, AtomicI64>>::default();
        let vram_max_percent = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let compute_max_percent = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        let gpunode_writes = Counter::default();
        // 50 µs .. 1.6 s
        let split_apply = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        registry.register_with_unit(
            "split_apply",
            "Time from a deployment change reaching the agent to its traffic split routing requests (includes loading a version the change adds)",
            Unit::Seconds,
            split_apply.clone(),
        );
        let loads = Family::<VersionLabels, Counter>::default();
        registry.register(
            "pipeline_loads",
            "Model versions loaded, by deployment and version",
            loads.clone(),
        );
        let applied_at =
            Family::<DeploymentLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register_with_unit(
            "split_applied_timestamp",
            "When each deployment's traffic split last changed on this agent (Unix time)",
            Unit::Seconds,
            applied_at.clone(),
        );
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
        registry.register(
            "policy_info",
            "The preset in force (value 1)",
            policy.clone(),
        );
        registry.register(
            "policy_vram_max_ratio",
            "VRAM cap in force, as a share of each GPU (0-1)",
            vram_max_percent.clone(),
        );
        registry.register(
            "policy_compute_max_ratio",
            "Compute duty-cycle cap in force (0-1)",
            compute_max_percent.clone(),
        );
        let not_ready = Family::<ReasonLabels, Gauge<i64, AtomicI64>>::default();
        registry.register(
            "pipelines_not_ready",
            "Model versions placed here that do not serve, by reason (InsufficientVram, ModelNameTaken, LoadFailed, Loading)",
            not_ready.clone(),
        );
        let traffic_weight =
            Family::<VersionLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "traffic_weight_ratio",
            "Share of a deployment's unversioned requests this agent routes to each version (0-1)",
            traffic_weight.clone(),
        );
        registry.register(
            "gpunode_writes",
            "GpuNode status writes",
            gpunode_writes.clone(),
        );
        Self {
            registry: root,
            serving,
            admissions,
            wait_seconds,
            busy_seconds,
            duty_cap,
            vram_used,
            utilization,
            memory_total,
            budget,
            policy,
            vram_max_percent,
            compute_max_percent,
            not_ready,
            traffic_weight,
            gpunode_writes,
            split: SplitMetrics {
                loads,
                apply: split_apply,
                applied_at,
                last_applied: Default::default(),
            },
        }
    }
}

impl Metrics {
    /// Update the gauges from a status about to be reported.
    pub fn observe(&self, status: &GpuNodeStatus) {
        for g in &status.gpus {
            self.utilization
                .get_or_create(&GpuLabels {
                    gpu: g.index.to_string(),
                })
                .set(f64::from(g.utilization_percent) / 100.0);
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
            self.vram_max_percent
                .set(f64::from(p.vram_max_percent) / 100.0);
            self.compute_max_percent
                .set(f64::from(p.compute_max_percent) / 100.0);
        }
        self.not_ready.clear();
        self.traffic_weight.clear();
        for p in &status.pipelines {
            if p.ready {
                self.traffic_weight
                    .get_or_create(&VersionLabels {
                        namespace: p.namespace.clone(),
                        deployment: p.deployment.clone(),
                        version: p.version.clone(),
                    })
                    .set(f64::from(p.weight) / 100.0);
            } else {
                let reason = p.reason.clone().unwrap_or_else(|| "Loading".to_owned());
                self.not_ready.get_or_create(&ReasonLabels { reason }).inc();
            }
        }
    }

    /// Update the admission and ledger figures from every device's gate and
    /// the ledger.
    pub fn observe_policy(
        &self,
        gates: &crate::policy::throttle::Gates,
        ledger: &crate::policy::ledger::Ledger,
    ) {
        for (device, gate) in gates.iter() {
            let gpu = device_label(*device);
            let st = gate.stats();
            let set = |outcome: &str, reason: &str, v: u64| {
                self.admissions
                    .get_or_create(&OutcomeLabels {
                        gpu: gpu.clone(),
                        outcome: outcome.into(),
                        reason: reason.into(),
                    })
                    .inner()
                    .store(v, std::sync::atomic::Ordering::Relaxed);
            };
            set("admitted", "", st.admitted);
            set("throttled", "interval", st.throttled_interval);
            set("throttled", "duty_cycle", st.throttled_duty_cycle);
            set("throttled", "busy", st.throttled_busy);
            set("refused", "batch_too_large", st.refused_batch_too_large);
            set("refused", "empty", st.refused_empty);
            set("refused", "deadline", st.refused_deadline);
            let labels = GpuLabels { gpu };
            let seconds = |c: &Family<GpuLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
                           ns: u64| {
                c.get_or_create(&labels).inner().store(
                    (ns as f64 / 1e9).to_bits(),
                    std::sync::atomic::Ordering::Relaxed,
                );
            };
            seconds(&self.wait_seconds, st.waited_ns);
            seconds(&self.busy_seconds, st.busy_ns);
            self.duty_cap
                .get_or_create(&labels)
                .set(gate.effective_cap());
        }
        for u in ledger.snapshot() {
            let gpu = device_label(u.device);
            self.vram_used.get_or_create(&GpuLabels { gpu }).set(u.used);
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ledger::{Device, Ledger, Use};
    use crate::policy::throttle::{Decision, Gate, Gates};
    use gogrid_crds::Preset;
    use gogrid_crds::policy::preset_policy;
    use std::sync::Arc;

    fn sample(text: &str, name_and_labels: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name_and_labels} not in\n{text}"))
    }

    #[test]
    fn the_exposed_admission_counts_and_vram_use_are_the_gates_and_the_ledgers() {
        let mut policy = preset_policy(Preset::Conservative);
        policy.min_request_interval_ms = 60_000;
        let gates = Gates::new([Device::Gpu(0), Device::Gpu(1)], &policy);
        let gate: &Gate = gates.get(Device::Gpu(0));
        let mut admitted = 0;
        let mut waits = 0;
        for _ in 0..25 {
            match gate.try_admit(1) {
                Decision::Admitted { .. } => {
                    admitted += 1;
                    gate.finish(std::time::Duration::ZERO);
                }
                Decision::Wait { .. } => waits += 1,
                Decision::Refused { .. } => {}
            }
        }
        let _ = gate.try_admit(99); // over the conservative batch of 2
        let ledger = Arc::new(Ledger::new([(Device::Gpu(0), 1 << 30)]));
        let _held = ledger
            .try_reserve(Device::Gpu(0), 123_456, Use::Weights)
            .expect("fits");

        let m = Metrics::default();
        m.observe_policy(&gates, &ledger);
        let text = m.encode();
        assert_eq!(admitted, 1, "a one-minute interval admits one");
        assert_eq!(
            sample(
                &text,
                r#"gogrid_agent_admissions_total{gpu="0",outcome="admitted",reason=""}"#
            ),
            f64::from(admitted)
        );
        assert_eq!(
            sample(
                &text,
                r#"gogrid_agent_admissions_total{gpu="1",outcome="admitted",reason=""}"#
            ),
            0.0,
            "each GPU has its own gate"
        );
        let throttled = sample(
            &text,
            r#"gogrid_agent_admissions_total{gpu="0",outcome="throttled",reason="interval"}"#,
        ) + sample(
            &text,
            r#"gogrid_agent_admissions_total{gpu="0",outcome="throttled",reason="duty_cycle"}"#,
        ) + sample(
            &text,
            r#"gogrid_agent_admissions_total{gpu="0",outcome="throttled",reason="busy"}"#,
        );
        assert_eq!(throttled, f64::from(waits));
        assert_eq!(
            sample(
                &text,
                r#"gogrid_agent_admissions_total{gpu="0",outcome="refused",reason="batch_too_large"}"#
            ),
            1.0
        );
        assert_eq!(
            sample(&text, r#"gogrid_agent_vram_used_bytes{gpu="0"}"#),
            123_456.0
        );
    }
}
