//! `ResourceProfile`: a cluster-scoped node policy (VRAM cap, compute duty cycle,
//! throttling, batching, process priority, time windows, adaptive back-off).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::policy::EffectivePolicy;

/// A node policy for GPU inference. The operator labels every node the profile
/// wins with `gogrid.io/profile=<name>` and runs one agent DaemonSet per profile;
/// each agent applies the effective policy to its node's GPUs.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "gogrid.io",
    version = "v1alpha1",
    kind = "ResourceProfile",
    shortname = "rp",
    status = "ResourceProfileStatus",
    category = "gogrid",
    printcolumn = r#"{"name":"Preset","type":"string","jsonPath":".spec.preset"}"#,
    printcolumn = r#"{"name":"In force","type":"string","jsonPath":".status.effectivePolicy.presetInForce"}"#,
    printcolumn = r#"{"name":"Priority","type":"integer","jsonPath":".spec.priority"}"#,
    printcolumn = r#"{"name":"Nodes","type":"integer","jsonPath":".status.matchedNodeCount"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyAgents"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ResourceProfileSpec {
    /// Base policy: `conservative` (50% VRAM, 60% compute, nice 15, idle I/O level 7,
    /// 100 ms minimum interval, batch 2), `default` (70%, 80%, nice 10, idle I/O, 50 ms,
    /// batch 4) or `aggressive` (95%, 95%, nice 0, no throttling, batch 16). Explicit
    /// fields below override it.
    #[serde(default)]
    pub preset: Preset,

    /// Nodes this profile applies to. Empty or absent selects every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,

    /// When several profiles select one node, the highest priority wins; ties go to
    /// the name that sorts first.
    #[serde(default)]
    #[schemars(range(min = -1000, max = 1000))]
    pub priority: i32,

    /// VRAM budget of each GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram: Option<VramSpec>,

    /// Compute duty cycle of each GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute: Option<ComputeSpec>,

    /// Minimum spacing of requests on each GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle: Option<ThrottleSpec>,

    /// Dynamic batching limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batching: Option<BatchingSpec>,

    /// CPU and I/O priority of the agent process (it only ever lowers its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSpec>,

    /// Time windows that switch the preset, e.g. conservative on weekdays 09-18.
    /// The first window in force wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub schedule: Vec<ScheduleWindow>,

    /// Back off when other processes (people at the desktop) use the GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveSpec>,
}

/// A named bundle of policy values.
#[derive(
    JsonSchema,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// 50% VRAM, 60% compute, nice 15, idle I/O level 7, 100 ms interval, batch 2.
    Conservative,
    /// 70% VRAM, 80% compute, nice 10, idle I/O level 7, 50 ms interval, batch 4.
    #[default]
    Default,
    /// 95% VRAM, 95% compute, nice 0, no throttling, batch 16.
    Aggressive,
}

impl Preset {
    /// The lowercase name used in specs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Conservative => "conservative",
            Preset::Default => "default",
            Preset::Aggressive => "aggressive",
        }
    }
}

/// VRAM budget of each GPU.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VramSpec {
    /// Share of each GPU's total memory the agent may use, in percent (1-100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("vram.maxPercent must be between 1 and 100"))]
    pub max_percent: Option<u32>,
}

/// Compute duty cycle of each GPU.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ComputeSpec {
    /// Upper bound of busy/(busy+idle) on each GPU, in percent (1-100). After each
    /// batch the device idles long enough to stay under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("compute.maxPercent must be between 1 and 100"))]
    pub max_percent: Option<u32>,
}

/// Minimum spacing of requests on each GPU.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ThrottleSpec {
    /// Whether the minimum interval applies at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Minimum time between two requests admitted on one GPU, in milliseconds (0-60000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 60000))]
    pub min_request_interval_ms: Option<u32>,
}

/// Dynamic batching limits.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BatchingSpec {
    /// Largest batch one forward pass takes (1-1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024))]
    pub max_batch_size: Option<u32>,
    /// Longest a request waits for companions before its batch runs, in ms (0-10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub max_queue_delay_ms: Option<u32>,
}

/// CPU and I/O priority of the agent process.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProcessSpec {
    /// Niceness (0-19); the agent only lowers its priority, so it needs no privilege.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 19))]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 19").message("process.nice must be between 0 and 19"))]
    pub nice: Option<i32>,
    /// I/O scheduling class: `idle` or `best-effort` (real-time would need privilege).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_class: Option<IoClass>,
    /// I/O priority level inside the class (0 highest - 7 lowest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 7))]
    pub io_level: Option<u32>,
}

/// Linux I/O scheduling class the agent may choose without privilege.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoClass {
    /// Only uses the disk when nobody else does.
    #[serde(rename = "idle")]
    Idle,
    /// The normal class, at `ioLevel`.
    #[serde(rename = "best-effort")]
    BestEffort,
}

/// Day of the week, as in cron.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// A recurring time window that switches the preset while it is in force.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.start != self.end").message("schedule window start and end must differ").field_path(".end"))]
pub struct ScheduleWindow {
    /// A name for status and metrics, e.g. `office-hours`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub name: Option<String>,
    /// Days on which the window starts. A window whose end is before its start ends
    /// on the next day.
    #[schemars(length(min = 1, max = 7))]
    #[x_kube(validation = Rule::new("self.all(d, self.exists_one(e, e == d))").message("schedule days must be unique"))]
    pub days: Vec<Weekday>,
    /// Start time, `HH:MM` (24 h) in `timeZone`.
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub start: String,
    /// End time, `HH:MM` (24 h) in `timeZone`; exclusive.
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub end: String,
    /// IANA time zone of `start` and `end`, e.g. `Europe/Berlin`. Default: UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub time_zone: Option<String>,
    /// The preset in force during the window (explicit profile fields still apply).
    pub preset: Preset,
}

/// Adaptive back-off when other processes use the GPU.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdaptiveSpec {
    /// Turn adaptive back-off on.
    #[serde(default)]
    pub enabled: bool,
    /// Back off when other processes' GPU utilisation exceeds this percentage (1-100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("adaptive.otherUtilizationPercent must be between 1 and 100"))]
    pub other_utilization_percent: Option<u32>,
    /// The least share of the policy's compute cap kept while backing off (1-100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("adaptive.minSharePercent must be between 1 and 100"))]
    pub min_share_percent: Option<u32>,
    /// Seconds without outside use before the full share returns (1-3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub recovery_seconds: Option<u32>,
}

/// Observed state of a ResourceProfile.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResourceProfileStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Names of the nodes this profile won (sorted; at most 100 listed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matched_nodes: Vec<String>,
    /// Number of nodes this profile won.
    #[serde(default)]
    pub matched_node_count: i32,
    /// Agents of this profile that are ready.
    #[serde(default)]
    pub ready_agents: i32,
    /// The policy in force now (preset, explicit fields, time window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_policy: Option<EffectivePolicy>,
    /// `Ready` (agents run on every matched node) and `PolicyValid`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
