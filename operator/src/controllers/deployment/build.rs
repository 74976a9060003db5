//! Pure desired state of an InferenceDeployment: the traffic split, the main and
//! preview Services, their EndpointSlices (agents that report the version
//! ready) and the ServiceMonitor.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use gogrid_crds::inference_deployment::{NodePlacement, TrafficSplit};
use gogrid_crds::labels::{
    APP, DEPLOYMENT_LABEL, ENDPOINTSLICE_MANAGED_BY_LABEL, ENDPOINTSLICE_MANAGER, MANAGED_BY_LABEL,
    NAME_LABEL, OPERATOR_MANAGER, SERVICE_ROLE_LABEL, preview_service_name,
};
use gogrid_crds::{GpuNode, InferenceDeployment};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{
    Endpoint as SliceEndpoint, EndpointConditions, EndpointPort, EndpointSlice,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::config::OperatorConfig;
use crate::{Error, Result};

/// Most endpoints in one EndpointSlice (the API's limit).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 1000;

/// Which Service an object belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Unversioned traffic, split by weight inside the agents.
    Main,
    /// The blue-green preview version only.
    Preview,
}

impl Role {
    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Main => "main",
            Role::Preview => "preview",
        }
    }

    /// Service name for deployment `name`.
    pub fn service_name(self, name: &str) -> String {
        match self {
            Role::Main => name.to_owned(),
            Role::Preview => preview_service_name(name),
        }
    }
}

/// The traffic split the spec asks for and the rollout phase it means.
pub fn traffic(
    infd: &InferenceDeployment,
    placement: &[NodePlacement],
    gpunodes: &[Arc<GpuNode>],
    now: jiff::Timestamp,
    stale_seconds: i64,
) -> gogrid_crds::rollout::Effective {
    // Steps and auto-promotion wait for the new version to serve on every
    // placed node.
    let new_version = infd
        .spec
        .canary_model()
        .or(infd.spec.preview_model())
        .map(|m| m.version.as_str());
    let ready = new_version.is_some_and(|v| {
        let e = endpoints(infd, placement, gpunodes, v, now, stale_seconds);
        !e.is_empty() && e.len() == placement.len() && e.iter().all(|e| e.ready)
    });
    let counts = analysis_counts(infd, placement, gpunodes);
    gogrid_crds::rollout::effective(
        &infd.spec,
        &gogrid_crds::rollout::Observed {
            now,
            previous: infd.status.as_ref().and_then(|s| s.rollout.as_ref()),
            ready,
            counts: counts.as_ref(),
        },
    )
}

/// The canary's and the stable version's request counts summed over the
/// placed nodes whose agents report either, when `canary.analysis` asks.
pub fn analysis_counts(
    infd: &InferenceDeployment,
    placement: &[NodePlacement],
    gpunodes: &[Arc<GpuNode>],
) -> Option<gogrid_crds::analysis::Counts> {
    let rollout = infd.spec.rollout.as_ref()?;
    rollout.canary.as_ref()?.analysis.as_ref()?;
    let canary = infd.spec.canary_model()?.version.as_str();
    let stable = infd.spec.model.version.as_str();
    let ns = infd.namespace().unwrap_or_default();
    let name = infd.name_any();
    let mut counts = gogrid_crds::analysis::Counts::default();
    for p in placement {
        let Some(status) = gpunodes
            .iter()
            .find(|g| g.name_any() == p.node)
            .and_then(|g| g.status.as_ref())
        else {
            continue;
        };
        let (c, s) = (
            status.pipeline(&ns, &name, canary),
            status.pipeline(&ns, &name, stable),
        );
        if c.is_none() && s.is_none() {
            continue;
        }
        counts.nodes.push(p.node.clone());
        if let Some(c) = c {
            counts.canary.add(&c.tally());
        }
        if let Some(s) = s {
            counts.stable.add(&s.tally());
        }
    }
    counts.nodes.sort();
    Some(counts)
}

/// Roles with a Service: the main one always, the preview one during blue-green.
pub fn roles(split: &TrafficSplit) -> Vec<Role> {
    if split.preview_version.is_some() {
        vec![Role::Main, Role::Preview]
    } else {
        vec![Role::Main]
    }
}

fn owner(infd: &InferenceDeployment) -> Result<OwnerReference> {
    infd.controller_owner_ref(&())
        .ok_or(Error::MissingObjectKey("metadata.uid"))
}

/// Labels of every child of a deployment.
pub fn child_labels(name: &str, role: Role) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_owned(), APP.to_owned()),
        (MANAGED_BY_LABEL.to_owned(), OPERATOR_MANAGER.to_owned()),
        (DEPLOYMENT_LABEL.to_owned(), name.to_owned()),
        (SERVICE_ROLE_LABEL.to_owned(), role.as_str().to_owned()),
    ])
}

/// A Service without selector: the operator manages its EndpointSlices.
pub fn service(infd: &InferenceDeployment, role: Role, config: &OperatorConfig) -> Result<Service> {
    let name = infd.name_any();
    let ports = infd.spec.service_ports();
    let port = |n: &str, port: i32, target: i32| ServicePort {
        name: Some(n.into()),
        port,
        target_port: Some(IntOrString::Int(target)),
        protocol: Some("TCP".into()),
        app_protocol: Some(if n == "grpc" {
            "kubernetes.io/h2c".into()
        } else {
            "http".into()
        }),
        ..Default::default()
    };
    Ok(Service {
        metadata: ObjectMeta {
            name: Some(role.service_name(&name)),
            namespace: infd.namespace(),
            labels: Some(child_labels(&name, role)),
            owner_references: Some(vec![owner(infd)?]),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            ports: Some(vec![
                port("http", ports.http_port, config.agent_ports.http),
                port("grpc", ports.grpc_port, config.agent_ports.grpc),
                port(
                    "metrics",
                    config.agent_ports.metrics,
                    config.agent_ports.metrics,
                ),
            ]),
            ..Default::default()
        }),
        status: None,
    })
}

/// Endpoints that can share one EndpointSlice: address family and agent ports.
type SliceKey = (&'static str, (i32, i32, i32));

/// One agent endpoint of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Node the agent runs on.
    pub node: String,
    /// Agent pod IP.
    pub ip: IpAddr,
    /// Whether the agent reports the version ready (and its heartbeat is fresh).
    pub ready: bool,
    /// Agent ports (http, grpc, metrics).
    pub ports: (i32, i32, i32),
}

/// The agents of the placed nodes, ready when their GpuNode reports `version`
/// of this deployment ready with a heartbeat younger than `stale_seconds`.
pub fn endpoints(
    infd: &InferenceDeployment,
    placement: &[NodePlacement],
    gpunodes: &[Arc<GpuNode>],
    version: &str,
    now: jiff::Timestamp,
    stale_seconds: i64,
) -> Vec<Endpoint> {
    let ns = infd.namespace().unwrap_or_default();
    let name = infd.name_any();
    let mut out: Vec<Endpoint> = placement
        .iter()
        .filter_map(|p| {
            let g = gpunodes.iter().find(|g| g.name_any() == p.node)?;
            let status = g.status.as_ref()?;
            let agent = status.agent.as_ref()?;
            let ip: IpAddr = agent.pod_ip.parse().ok()?;
            let fresh = status
                .heartbeat_time
                .as_ref()
                .is_some_and(|t| now.duration_since(t.0).as_secs() <= stale_seconds);
            let ready = fresh
                && status
                    .pipeline(&ns, &name, version)
                    .is_some_and(|pl| pl.ready);
            Some(Endpoint {
                node: p.node.clone(),
                ip,
                ready,
                ports: (agent.http_port, agent.grpc_port, agent.metrics_port),
            })
        })
        .collect();
    out.sort_by(|a, b| a.node.cmp(&b.node));
    out
}

/// EndpointSlices of one Service: grouped by address family and agent ports,
/// at most [`MAX_ENDPOINTS_PER_SLICE`] endpoints each, named deterministically.
pub fn endpoint_slices(
    infd: &InferenceDeployment,
    role: Role,
    endpoints: &[Endpoint],
) -> Result<Vec<EndpointSlice>> {
    let name = infd.name_any();
    let service = role.service_name(&name);
    let mut groups: BTreeMap<SliceKey, Vec<&Endpoint>> = BTreeMap::new();
    for e in endpoints {
        let family = if e.ip.is_ipv4() { "IPv4" } else { "IPv6" };
        groups.entry((family, e.ports)).or_default().push(e);
    }
    let mut slices = Vec::new();
    for ((family, (http, grpc, metrics)), members) in groups {
        for chunk in members.chunks(MAX_ENDPOINTS_PER_SLICE) {
            let index = slices.len();
            let mut labels = child_labels(&name, role);
            labels.insert("kubernetes.io/service-name".into(), service.clone());
            labels.insert(
                ENDPOINTSLICE_MANAGED_BY_LABEL.into(),
                ENDPOINTSLICE_MANAGER.into(),
            );
            let port = |n: &str, p: i32| EndpointPort {
                name: Some(n.into()),
                port: Some(p),
                protocol: Some("TCP".into()),
                ..Default::default()
            };
            slices.push(EndpointSlice {
                metadata: ObjectMeta {
                    name: Some(format!("{service}-gogrid-{index}")),
                    namespace: infd.namespace(),
                    labels: Some(labels),
                    owner_references: Some(vec![owner(infd)?]),
                    ..Default::default()
                },
                address_type: family.into(),
                endpoints: chunk
                    .iter()
                    .map(|e| SliceEndpoint {
                        addresses: vec![e.ip.to_string()],
                        conditions: Some(EndpointConditions {
                            ready: Some(e.ready),
                            serving: Some(e.ready),
                            terminating: Some(false),
                        }),
                        node_name: Some(e.node.clone()),
                        ..Default::default()
                    })
                    .collect(),
                ports: Some(vec![
                    port("http", http),
                    port("grpc", grpc),
                    port("metrics", metrics),
                ]),
            });
        }
    }
    Ok(slices)
}

/// The Prometheus Operator's ServiceMonitor kind.
pub fn service_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor"),
        "servicemonitors",
    )
}

/// A ServiceMonitor scraping this deployment's series from its agents.
pub fn service_monitor(infd: &InferenceDeployment) -> Result<DynamicObject> {
    let name = infd.name_any();
    let ns = infd.namespace().unwrap_or_default();
    let mut obj = DynamicObject::new(&name, &service_monitor_resource()).within(&ns);
    obj.metadata.labels = Some(child_labels(&name, Role::Main));
    obj.metadata.owner_references = Some(vec![owner(infd)?]);
    obj.data = json!({
        "spec": {
            "selector": {"matchLabels": {DEPLOYMENT_LABEL: name, SERVICE_ROLE_LABEL: Role::Main.as_str()}},
            "namespaceSelector": {"matchNames": [ns]},
            "endpoints": [{
                "port": "metrics",
                "path": "/metrics",
                "interval": "30s",
                "params": {"namespace": [ns], "deployment": [name]},
            }],
        }
    });
    Ok(obj)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use gogrid_crds::InferenceDeploymentSpec;
    use gogrid_crds::gpu_node::{AgentInfo, GpuNodeSpec, GpuNodeStatus, PipelineStatus};
    use gogrid_crds::inference_deployment::{
        BlueGreenSpec, CanarySpec, ModelFormat, ModelSource, ModelSpec, ModelTask, PreviewSpec,
        RolloutSpec,
    };
    use gogrid_crds::inference_deployment::{RolloutPhase, RolloutStrategy};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    pub(crate) fn model(version: &str) -> ModelSpec {
        ModelSpec {
            name: "smollm2".into(),
            version: version.into(),
            source: ModelSource {
                path: Some(format!("/models/smollm2-{version}.gguf")),
                ..Default::default()
            },
            format: ModelFormat::Gguf,
            sha256: None,
            task: ModelTask::TextGeneration,
        }
    }

    pub(crate) fn deployment(name: &str) -> InferenceDeployment {
        let mut d = InferenceDeployment::new(
            name,
            InferenceDeploymentSpec {
                profile: "default".into(),
                placement: None,
                model: model("v1"),
                resources: None,
                pipeline: None,
                rollout: None,
                service: None,
                monitoring: None,
            },
        );
        d.metadata.namespace = Some("team-a".into());
        d.metadata.uid = Some(format!("uid-{name}"));
        d.metadata.generation = Some(1);
        d
    }

    pub(crate) fn canary(d: &mut InferenceDeployment, weight: i32) {
        d.spec.rollout = Some(RolloutSpec {
            strategy: RolloutStrategy::Canary,
            canary: Some(CanarySpec {
                model: Some(model("v2")),
                weight,
                ..Default::default()
            }),
            blue_green: None,
        });
    }

    pub(crate) fn gpunode(
        node: &str,
        ip: &str,
        ready_versions: &[&str],
        heartbeat: &str,
    ) -> Arc<GpuNode> {
        let mut g = GpuNode::new(
            node,
            GpuNodeSpec {
                node_name: node.into(),
            },
        );
        g.status = Some(GpuNodeStatus {
            agent: Some(AgentInfo {
                pod_ip: ip.into(),
                http_port: 8000,
                grpc_port: 8001,
                metrics_port: 8002,
                ..Default::default()
            }),
            heartbeat_time: Some(Time(heartbeat.parse().expect("heartbeat"))),
            pipelines: ready_versions
                .iter()
                .map(|v| PipelineStatus {
                    namespace: "team-a".into(),
                    deployment: "chat".into(),
                    version: (*v).into(),
                    ready: true,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        Arc::new(g)
    }

    fn traffic(
        d: &InferenceDeployment,
    ) -> (
        TrafficSplit,
        gogrid_crds::inference_deployment::RolloutStatus,
    ) {
        let e = super::traffic(d, &[], &[], jiff::Timestamp::now(), 60);
        (e.traffic, e.rollout)
    }

    #[test]
    fn the_canary_weight_of_the_spec_is_the_split_and_the_phase_is_canary() {
        let mut d = deployment("chat");
        assert_eq!(traffic(&d).1.phase, RolloutPhase::Stable);
        canary(&mut d, 25);
        let (split, rollout) = traffic(&d);
        assert_eq!(
            (
                split.stable_version.as_str(),
                split.canary_version.as_deref(),
                split.canary_weight
            ),
            ("v1", Some("v2"), 25)
        );
        assert_eq!(rollout.phase, RolloutPhase::Canary);
    }

    #[test]
    fn blue_green_previews_then_switches_everything_on_promote() {
        let mut d = deployment("chat");
        d.spec.rollout = Some(RolloutSpec {
            strategy: RolloutStrategy::BlueGreen,
            canary: None,
            blue_green: Some(BlueGreenSpec {
                preview: Some(PreviewSpec { model: model("v2") }),
                ..Default::default()
            }),
        });
        let (split, rollout) = traffic(&d);
        assert_eq!(
            (
                split.stable_version.as_str(),
                split.preview_version.as_deref()
            ),
            ("v1", Some("v2"))
        );
        assert_eq!(rollout.phase, RolloutPhase::Preview);
        assert_eq!(roles(&split), [Role::Main, Role::Preview]);
        if let Some(bg) = d.spec.rollout.as_mut().and_then(|r| r.blue_green.as_mut()) {
            bg.promote = true;
        }
        let (split, rollout) = traffic(&d);
        assert_eq!(
            (
                split.stable_version.as_str(),
                split.preview_version.as_deref()
            ),
            ("v2", None)
        );
        assert_eq!(rollout.phase, RolloutPhase::Promoted);
        assert_eq!(roles(&split), [Role::Main]);
    }

    #[test]
    fn services_have_no_selector_and_map_to_the_agent_ports() {
        let d = deployment("chat");
        let svc = service(&d, Role::Main, &OperatorConfig::default()).expect("service");
        let spec = svc.spec.expect("spec");
        assert_eq!(spec.selector, None);
        let ports: Vec<_> = spec
            .ports
            .iter()
            .flatten()
            .map(|p| {
                (
                    p.name.clone().unwrap_or_default(),
                    p.port,
                    p.target_port.clone(),
                )
            })
            .collect();
        assert_eq!(
            ports[0],
            ("http".into(), 8000, Some(IntOrString::Int(8000)))
        );
        assert_eq!(
            ports[1],
            ("grpc".into(), 8001, Some(IntOrString::Int(8001)))
        );
        assert_eq!(
            svc.metadata.owner_references.expect("owner")[0].kind,
            "InferenceDeployment"
        );
        let preview = service(&d, Role::Preview, &OperatorConfig::default()).expect("preview");
        assert_eq!(preview.metadata.name.as_deref(), Some("chat-preview"));
    }

    #[test]
    fn endpoints_are_ready_only_where_the_agent_reports_the_version_ready_and_is_alive() {
        let d = deployment("chat");
        let placement: Vec<NodePlacement> = ["n1", "n2", "n3", "n4"]
            .iter()
            .map(|n| NodePlacement {
                node: (*n).into(),
                ..Default::default()
            })
            .collect();
        let now: jiff::Timestamp = "2026-11-23T10:00:00Z".parse().expect("now");
        let gpunodes = vec![
            gpunode("n1", "10.244.1.2", &["v1"], "2026-11-23T09:59:30Z"),
            gpunode("n2", "10.244.2.2", &["v2"], "2026-11-23T09:59:30Z"),
            gpunode("n3", "10.244.3.2", &["v1"], "2026-11-23T09:50:00Z"),
        ];
        let eps = endpoints(&d, &placement, &gpunodes, "v1", now, 90);
        let got: Vec<_> = eps.iter().map(|e| (e.node.as_str(), e.ready)).collect();
        assert_eq!(
            got,
            [("n1", true), ("n2", false), ("n3", false)],
            "n4 has no agent yet, n3's heartbeat is stale"
        );

        let slices = endpoint_slices(&d, Role::Main, &eps).expect("slices");
        assert_eq!(slices.len(), 1);
        let s = &slices[0];
        assert_eq!(s.address_type, "IPv4");
        let labels = s.metadata.labels.clone().expect("labels");
        assert_eq!(labels["kubernetes.io/service-name"], "chat");
        assert_eq!(
            labels["endpointslice.kubernetes.io/managed-by"],
            ENDPOINTSLICE_MANAGER
        );
        assert_eq!(s.endpoints[0].addresses, ["10.244.1.2"]);
        assert_eq!(s.ports.as_ref().expect("ports")[0].port, Some(8000));
    }

    #[test]
    fn slices_split_at_the_api_limit() {
        let d = deployment("chat");
        let eps: Vec<Endpoint> = (0..2500)
            .map(|i| Endpoint {
                node: format!("n{i:04}"),
                ip: IpAddr::from([10, 244, (i / 250) as u8, (i % 250) as u8 + 1]),
                ready: true,
                ports: (8000, 8001, 8002),
            })
            .collect();
        let slices = endpoint_slices(&d, Role::Main, &eps).expect("slices");
        let sizes: Vec<_> = slices.iter().map(|s| s.endpoints.len()).collect();
        assert_eq!(sizes, [1000, 1000, 500]);
        assert_eq!(slices[2].metadata.name.as_deref(), Some("chat-gogrid-2"));
    }

    #[test]
    fn the_service_monitor_selects_the_main_service_metrics_port() {
        let d = deployment("chat");
        let sm = service_monitor(&d).expect("sm");
        assert_eq!(
            sm.types.as_ref().map(|t| t.kind.as_str()),
            Some("ServiceMonitor")
        );
        assert_eq!(
            sm.data["spec"]["selector"]["matchLabels"][DEPLOYMENT_LABEL],
            "chat"
        );
        assert_eq!(sm.data["spec"]["endpoints"][0]["port"], "metrics");
    }
}
