//! `InferenceDeployment`: a model served by the agents of one ResourceProfile,
//! with its placement, pipeline, rollout (canary or blue-green) and Services.

use k8s_openapi::apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::Condition};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A model served on the nodes of a ResourceProfile. The operator places it on
/// nodes, manages its Services and EndpointSlices and the traffic split; the
/// agents on those nodes load it and serve it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "gogrid.io",
    version = "v1alpha1",
    kind = "InferenceDeployment",
    namespaced,
    shortname = "infd",
    status = "InferenceDeploymentStatus",
    category = "gogrid",
    printcolumn = r#"{"name":"Model","type":"string","jsonPath":".spec.model.name"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Placed","type":"integer","jsonPath":".status.replicas"}"#,
    printcolumn = r#"{"name":"Stable","type":"string","jsonPath":".status.traffic.stableVersion"}"#,
    printcolumn = r#"{"name":"Canary","type":"string","jsonPath":".status.traffic.canaryVersion"}"#,
    printcolumn = r#"{"name":"Weight","type":"integer","jsonPath":".status.traffic.canaryWeight"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.rollout.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.model.name == oldSelf.model.name").message("model.name is immutable: clients address the model by it; create a new InferenceDeployment instead").field_path(".model.name"))]
#[x_kube(validation = Rule::new("!has(self.rollout) || !has(self.rollout.canary) || !has(self.rollout.canary.model) || self.rollout.canary.model.version != self.model.version").message("rollout.canary.model.version must differ from model.version").field_path(".rollout.canary.model.version"))]
#[x_kube(validation = Rule::new("!has(self.rollout) || !has(self.rollout.blueGreen) || !has(self.rollout.blueGreen.preview) || self.rollout.blueGreen.preview.model.version != self.model.version").message("rollout.blueGreen.preview.model.version must differ from model.version").field_path(".rollout.blueGreen.preview.model.version"))]
pub struct InferenceDeploymentSpec {
    /// Name of the ResourceProfile whose nodes serve this model.
    #[schemars(
        length(min = 1, max = 50),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub profile: String,

    /// Where the model runs: every node of the profile (default), or `replicas` nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementSpec>,

    /// The stable model version.
    pub model: ModelSpec,

    /// What the operator reserves on a node when it places a replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourcesSpec>,

    /// How the model is split over the GPUs of a node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<PipelineSpec>,

    /// Canary or blue-green rollout of a new model version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,

    /// Ports of the Services the operator creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSpec>,

    /// Prometheus integration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<MonitoringSpec>,
}

/// Which nodes of the profile serve the model.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PlacementSpec {
    /// Number of nodes to serve on, chosen by free VRAM budget. Absent: every node
    /// of the profile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub replicas: Option<i32>,
}

/// A model version and where to load it from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// Model name clients use (`/v2/models/<name>`).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-zA-Z0-9]([-_.a-zA-Z0-9]*[a-zA-Z0-9])?$")
    )]
    pub name: String,
    /// Version label (`/v2/models/<name>/versions/<version>`).
    #[serde(default = "default_version")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-zA-Z0-9]([-_.a-zA-Z0-9]*[a-zA-Z0-9])?$")
    )]
    pub version: String,
    /// Where the weights are.
    pub source: ModelSource,
    /// File format of the weights.
    pub format: ModelFormat,
    /// Expected SHA-256 of the weights file (lowercase hex); verified before loading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-f0-9]{64}$"))]
    pub sha256: Option<String>,
    /// What the model does.
    pub task: ModelTask,
}

fn default_version() -> String {
    "v1".to_owned()
}

/// Where a model's weights come from: exactly one of the fields.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.path) ? 1 : 0) + (has(self.pvc) ? 1 : 0) + (has(self.hostPath) ? 1 : 0) == 1").message("model.source: exactly one of path, pvc or hostPath must be set"))]
pub struct ModelSource {
    /// Absolute path of the weights inside the agent's model volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 1024), regex(pattern = r"^/"))]
    #[x_kube(validation = Rule::new("!self.matches('(^|/)[.][.](/|$)')").message("model.source.path must not contain '..'"))]
    pub path: Option<String>,
    /// A PersistentVolumeClaim in the deployment's namespace holding the weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcSource>,
    /// A file on the node (opt-in model cache; Pod Security `baseline` forbids hostPath).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 1024), regex(pattern = r"^/"))]
    #[x_kube(validation = Rule::new("!self.matches('(^|/)[.][.](/|$)')").message("model.source.hostPath must not contain '..'"))]
    pub host_path: Option<String>,
}

/// Weights on a PersistentVolumeClaim.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PvcSource {
    /// Name of the claim, in the deployment's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
    /// Path of the weights file inside the volume.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("!self.matches('(^|/)[.][.](/|$)')").message("model.source.pvc.path must not contain '..'"))]
    pub path: String,
}

/// File format of model weights.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    /// GGUF (llama.cpp), quantized int4/int8 or float.
    Gguf,
    /// Hugging Face safetensors.
    Safetensors,
}

/// What a model does.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ModelTask {
    /// Autoregressive text generation (completions).
    TextGeneration,
    /// Sentence embeddings.
    Embedding,
}

/// Resources reserved per replica.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesSpec {
    /// VRAM the operator reserves on a node for one replica (e.g. `2Gi`). The agent
    /// measures the real need when it loads the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram: Option<Quantity>,
}

/// How the model's layers are split over a node's GPUs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PipelineSpec {
    /// GPUs one replica uses (0 runs on the CPU). Default: 1, or 0 on CPU-only nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 16))]
    pub gpus_per_replica: Option<u32>,
    /// Explicit stages, in order. Default: the agent splits the layers in proportion
    /// to each GPU's budget.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.map(s, s.firstLayer).isSorted()").message("pipeline.stages must be ordered by firstLayer"))]
    pub stages: Vec<StageSpec>,
}

/// One pipeline stage: a contiguous range of layers on one GPU.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.firstLayer <= self.lastLayer").message("stage firstLayer must not exceed lastLayer").field_path(".firstLayer"))]
pub struct StageSpec {
    /// GPU index on the node.
    #[schemars(range(min = 0, max = 63))]
    pub gpu: u32,
    /// First layer of the stage (inclusive).
    #[schemars(range(min = 0, max = 4096))]
    pub first_layer: u32,
    /// Last layer of the stage (inclusive).
    #[schemars(range(min = 0, max = 4096))]
    pub last_layer: u32,
}

/// Rollout of a new model version.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.strategy != 'BlueGreen' || (has(self.blueGreen) && has(self.blueGreen.preview))").message("rollout.blueGreen.preview.model is required when strategy is BlueGreen").field_path(".blueGreen"))]
#[x_kube(validation = Rule::new("self.strategy != 'Canary' || !has(self.blueGreen)").message("rollout.blueGreen is only allowed when strategy is BlueGreen").field_path(".blueGreen"))]
#[x_kube(validation = Rule::new("self.strategy != 'BlueGreen' || !has(self.canary)").message("rollout.canary is only allowed when strategy is Canary").field_path(".canary"))]
pub struct RolloutSpec {
    /// `Canary` (weighted split, optional steps and analysis) or `BlueGreen`.
    pub strategy: RolloutStrategy,
    /// Canary settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanarySpec>,
    /// Blue-green settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreenSpec>,
}

/// Rollout strategy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutStrategy {
    /// Weighted split between stable and canary inside each agent.
    Canary,
    /// A preview next to the active version; promotion switches all traffic at once.
    BlueGreen,
}

/// Canary settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.weight) || self.weight == 0 || has(self.model)").message("rollout.canary.model is required when rollout.canary.weight is above 0").field_path(".model"))]
#[x_kube(validation = Rule::new("!has(self.steps) || size(self.steps) == 0 || has(self.model)").message("rollout.canary.model is required when rollout.canary.steps are set").field_path(".model"))]
pub struct CanarySpec {
    /// The new model version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSpec>,
    /// Percentage of unversioned requests sent to the canary (0-100).
    #[serde(default)]
    #[schemars(range(min = 0, max = 100))]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("rollout.canary.weight must be between 0 and 100"))]
    pub weight: i32,
    /// Automatic steps: weights (strictly increasing) each held for a pause.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    #[x_kube(validation = Rule::new("self.map(s, s.weight).isSorted() && self.all(a, self.exists_one(b, b.weight == a.weight))").message("rollout.canary.steps weights must be strictly increasing"))]
    pub steps: Vec<CanaryStep>,
    /// Automatic promotion and rollback on the canary's error rate and latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSpec>,
}

/// One automatic canary step.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStep {
    /// Canary weight of this step (1-100).
    #[schemars(range(min = 1, max = 100))]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("rollout.canary.steps[].weight must be between 1 and 100"))]
    pub weight: i32,
    /// Seconds to hold this weight before the next step (0-86400).
    #[serde(default)]
    #[schemars(range(min = 0, max = 86400))]
    pub pause_seconds: u32,
}

/// Canary analysis thresholds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisSpec {
    /// Highest error rate of the canary, in percent (0-100).
    #[serde(default = "default_max_error_rate")]
    #[schemars(range(min = 0, max = 100))]
    pub max_error_rate_percent: u32,
    /// Highest p95 latency of the canary, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 600000))]
    pub max_p95_latency_ms: Option<u32>,
    /// Highest p95 latency of the canary above the stable version's over the
    /// same interval, in percent (judged when stable served `minRequests`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub max_p95_increase_percent: Option<u32>,
    /// Least canary requests in an interval before it is judged.
    #[serde(default = "default_min_requests")]
    #[schemars(range(min = 1, max = 1000000))]
    pub min_requests: u32,
    /// Length of one analysis interval in seconds (5-3600).
    #[serde(default = "default_interval")]
    #[schemars(range(min = 5, max = 3600))]
    pub interval_seconds: u32,
}

fn default_max_error_rate() -> u32 {
    5
}
fn default_min_requests() -> u32 {
    20
}
fn default_interval() -> u32 {
    30
}

/// Blue-green settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenSpec {
    /// The version to preview next to the active one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<PreviewSpec>,
    /// Set to true to switch all traffic to the preview.
    #[serde(default)]
    pub promote: bool,
    /// Promote by itself this many seconds after the preview is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 604800))]
    pub auto_promote_after_seconds: Option<u32>,
    /// Seconds the previous version stays loaded after a switch, for instant rollback.
    #[serde(default = "default_scale_down_delay")]
    #[schemars(range(min = 0, max = 86400))]
    pub scale_down_delay_seconds: u32,
}

fn default_scale_down_delay() -> u32 {
    30
}

/// The preview version of a blue-green rollout.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PreviewSpec {
    /// The preview model version.
    pub model: ModelSpec,
}

/// Ports of the Services.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Port of the HTTP (REST) endpoint on the Services.
    #[serde(default = "default_http_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub http_port: i32,
    /// Port of the gRPC endpoint on the Services.
    #[serde(default = "default_grpc_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub grpc_port: i32,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self {
            http_port: default_http_port(),
            grpc_port: default_grpc_port(),
        }
    }
}

fn default_http_port() -> i32 {
    8000
}
fn default_grpc_port() -> i32 {
    8001
}

/// Prometheus integration.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// Create a ServiceMonitor for this deployment when the Prometheus Operator's
    /// CRD is served.
    #[serde(default = "default_true")]
    pub service_monitor: bool,
}

impl Default for MonitoringSpec {
    fn default() -> Self {
        Self {
            service_monitor: true,
        }
    }
}

fn default_true() -> bool {
    true
}

/// Observed state of an InferenceDeployment.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InferenceDeploymentStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Nodes the deployment is placed on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placement: Vec<NodePlacement>,
    /// Number of nodes placed.
    #[serde(default)]
    pub replicas: i32,
    /// Placed nodes whose agent reports the stable version ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// The traffic split in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficSplit>,
    /// Rollout progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// `Ready`, `Progressing` and `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One node the deployment is placed on.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct NodePlacement {
    /// Node name.
    pub node: String,
    /// VRAM reserved on the node for this deployment, in bytes.
    #[serde(default)]
    pub vram_bytes: i64,
    /// GPU indexes the node's agent runs it on (empty: CPU or not loaded yet).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<u32>,
}

/// Effective traffic split: what agents route now.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSplit {
    /// The stable (or blue-green active) version.
    pub stable_version: String,
    /// The canary version, when one is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_version: Option<String>,
    /// Percentage of unversioned requests sent to the canary.
    #[serde(default)]
    pub canary_weight: i32,
    /// The blue-green preview version, served only to versioned requests and the
    /// preview Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_version: Option<String>,
    /// A version kept loaded but not routed: the previous active version for
    /// `blueGreen.scaleDownDelaySeconds` after a switch, so that a rollback is
    /// instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained_version: Option<String>,
}

/// Rollout progress.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Current phase.
    pub phase: RolloutPhase,
    /// Index of the canary step in force (automatic canary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<i32>,
    /// Human-readable detail of the phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The canary or preview version this state belongs to; another version
    /// starts the rollout over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// When the state began (RFC 3339): the step in force (canary), the
    /// preview ready on every node (blue-green), or the switch (promoted).
    /// Kept in status so that an operator restart resumes where it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Canary analysis: the interval being measured and the last verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<crate::analysis::AnalysisStatus>,
}

/// Phase of a rollout.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RolloutPhase {
    /// Only the stable version serves.
    #[default]
    Stable,
    /// A canary takes part of the traffic.
    Canary,
    /// A blue-green preview is loaded next to the active version.
    Preview,
    /// The new version has taken all traffic.
    Promoted,
    /// The rollout was rolled back to stable.
    RolledBack,
}

impl RolloutPhase {
    /// The name as written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutPhase::Stable => "Stable",
            RolloutPhase::Canary => "Canary",
            RolloutPhase::Preview => "Preview",
            RolloutPhase::Promoted => "Promoted",
            RolloutPhase::RolledBack => "RolledBack",
        }
    }
}

impl InferenceDeploymentSpec {
    /// The canary model version, if a canary rollout names one.
    pub fn canary_model(&self) -> Option<&ModelSpec> {
        self.rollout.as_ref()?.canary.as_ref()?.model.as_ref()
    }

    /// The blue-green preview model version, if one is set.
    pub fn preview_model(&self) -> Option<&ModelSpec> {
        Some(
            &self
                .rollout
                .as_ref()?
                .blue_green
                .as_ref()?
                .preview
                .as_ref()?
                .model,
        )
    }

    /// The Service ports, defaulted.
    pub fn service_ports(&self) -> ServiceSpec {
        self.service.clone().unwrap_or_default()
    }

    /// Whether a ServiceMonitor is wanted.
    pub fn wants_service_monitor(&self) -> bool {
        self.monitoring.as_ref().is_none_or(|m| m.service_monitor)
    }
}
