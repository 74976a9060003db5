//! `GpuNode`: one per node, written only by that node's agent: GPU inventory,
//! the budget in force and the pipelines it serves. The operator reads it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::policy::EffectivePolicy;

/// The GPUs of one node and what its agent runs on them. Named after the node and
/// owned by the Node object, so it goes away with the node.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "gogrid.io",
    version = "v1alpha1",
    kind = "GpuNode",
    shortname = "gpun",
    status = "GpuNodeStatus",
    category = "gogrid",
    printcolumn = r#"{"name":"Profile","type":"string","jsonPath":".status.profile"}"#,
    printcolumn = r#"{"name":"GPUs","type":"integer","jsonPath":".status.gpuCount"}"#,
    printcolumn = r#"{"name":"Budget","type":"string","jsonPath":".status.budget.vramBudgetHuman"}"#,
    printcolumn = r#"{"name":"Pipelines","type":"integer","jsonPath":".status.pipelineCount"}"#,
    printcolumn = r#"{"name":"Simulated","type":"boolean","jsonPath":".status.simulated"}"#,
    printcolumn = r#"{"name":"Heartbeat","type":"date","jsonPath":".status.heartbeatTime"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GpuNodeSpec {
    /// Name of the Node this object describes.
    pub node_name: String,
}

/// What the agent reports about its node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GpuNodeStatus {
    /// The agent that writes this object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentInfo>,
    /// The ResourceProfile the node belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// True when the GPU inventory was declared (tests, demos) instead of read
    /// through NVML.
    #[serde(default)]
    pub simulated: bool,
    /// True when a hollow agent reports this node (`gogrid-agent hollow`:
    /// many nodes' watch, policy and reporting in one process, no models, as
    /// in scale tests); nothing is served on it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hollow: bool,
    /// Number of GPUs.
    #[serde(default)]
    pub gpu_count: i32,
    /// The GPUs, by index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<GpuInfo>,
    /// The policy in force on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<EffectivePolicy>,
    /// VRAM budget in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Number of pipelines loaded.
    #[serde(default)]
    pub pipeline_count: i32,
    /// Pipelines (model versions) loaded on this node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pipelines: Vec<PipelineStatus>,
    /// Last time the agent wrote this status (slow heartbeat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_time: Option<Time>,
    /// `Ready`, `PriorityApplied`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// The agent process behind a GpuNode.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AgentInfo {
    /// Agent pod name.
    #[serde(default)]
    pub pod_name: String,
    /// Agent pod IP; EndpointSlices point here.
    #[serde(default, rename = "podIP")]
    pub pod_ip: String,
    /// HTTP (REST) port of the agent.
    #[serde(default)]
    pub http_port: i32,
    /// gRPC port of the agent.
    #[serde(default)]
    pub grpc_port: i32,
    /// Metrics port of the agent.
    #[serde(default)]
    pub metrics_port: i32,
    /// Agent version.
    #[serde(default)]
    pub version: String,
    /// Compute kernels in use, e.g. `cpu-avx2` or `cuda`.
    #[serde(default)]
    pub device: String,
}

/// One GPU.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GpuInfo {
    /// NVML index.
    pub index: u32,
    /// Stable UUID.
    #[serde(default)]
    pub uuid: String,
    /// Product name.
    #[serde(default)]
    pub name: String,
    /// Total memory in bytes.
    #[serde(default)]
    pub memory_total_bytes: i64,
    /// Used memory in bytes (everyone).
    #[serde(default)]
    pub memory_used_bytes: i64,
    /// Memory held by processes other than the agent, in bytes.
    #[serde(default)]
    pub other_processes_memory_bytes: i64,
    /// GPU utilisation in percent.
    #[serde(default)]
    pub utilization_percent: u32,
    /// Compute utilisation of processes other than the agent, in percent (what
    /// adaptive back-off reacts to).
    #[serde(default)]
    pub other_processes_utilization_percent: u32,
    /// Processes other than the agent that hold memory on this GPU (largest
    /// first, at most 16).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub other_processes: Vec<GpuProcess>,
}

/// A process other than the agent using a GPU.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GpuProcess {
    /// Process ID (in the host's PID namespace).
    pub pid: u32,
    /// GPU memory the process holds, in bytes.
    #[serde(default)]
    pub memory_bytes: i64,
    /// Its compute utilisation, in percent.
    #[serde(default)]
    pub utilization_percent: u32,
}

/// VRAM budget of the node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// Sum of the per-device budgets, in bytes.
    #[serde(default)]
    pub vram_budget_bytes: i64,
    /// Bytes of the budget in use by loaded pipelines.
    #[serde(default)]
    pub vram_used_bytes: i64,
    /// The budget in human units, for `kubectl get`.
    #[serde(default)]
    pub vram_budget_human: String,
    /// Per-device budgets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceBudget>,
}

/// The budget of one device.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceBudget {
    /// GPU index (absent for the CPU device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    /// Budget in bytes.
    pub vram_budget_bytes: i64,
    /// Bytes of the budget in use.
    #[serde(default)]
    pub vram_used_bytes: i64,
}

/// A model version loaded on the node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PipelineStatus {
    /// Namespace of the InferenceDeployment.
    pub namespace: String,
    /// Name of the InferenceDeployment.
    pub deployment: String,
    /// Model version.
    pub version: String,
    /// Loaded and serving.
    #[serde(default)]
    pub ready: bool,
    /// Why it is not ready (load error, refused for VRAM ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Why it is not ready, as one word: `InsufficientVram` (the node's
    /// budget or the driver has no room for it), `ModelNameTaken` (another
    /// deployment serves the model name here), `LoadFailed` (anything else).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Weight of this version in the agent's router, in percent.
    #[serde(default)]
    pub weight: i32,
    /// Stages over devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageStatus>,
    /// VRAM held, in bytes.
    #[serde(default)]
    pub vram_bytes: i64,
    /// Requests served since load.
    #[serde(default)]
    pub requests: i64,
    /// Requests that failed since load.
    #[serde(default)]
    pub errors: i64,
    /// Latency summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencySummary>,
    /// Requests since load per latency bucket (bucket `i`: up to `2^i` ms,
    /// the last: above), which canary analysis sums and differences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 18))]
    pub latency_buckets: Vec<i64>,
}

impl PipelineStatus {
    /// The counts canary analysis reads.
    pub fn tally(&self) -> crate::analysis::RequestTally {
        crate::analysis::RequestTally {
            requests: self.requests,
            errors: self.errors,
            latency_buckets: self.latency_buckets.clone(),
        }
    }
}

/// One stage of a loaded pipeline.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StageStatus {
    /// Device: a GPU index, or absent for the CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<u32>,
    /// First layer (inclusive).
    pub first_layer: u32,
    /// Last layer (inclusive).
    pub last_layer: u32,
    /// VRAM held by the stage, in bytes.
    #[serde(default)]
    pub vram_bytes: i64,
}

/// Latency quantiles in milliseconds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LatencySummary {
    /// Median, in ms.
    pub p50_ms: u32,
    /// 95th percentile, in ms.
    pub p95_ms: u32,
    /// 99th percentile, in ms.
    pub p99_ms: u32,
}

impl GpuNodeStatus {
    /// The pipeline of a deployment version, if the agent reports one.
    pub fn pipeline(
        &self,
        namespace: &str,
        deployment: &str,
        version: &str,
    ) -> Option<&PipelineStatus> {
        self.pipelines.iter().find(|p| {
            p.namespace == namespace && p.deployment == deployment && p.version == version
        })
    }
}
