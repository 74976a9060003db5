//! Pure desired state of a profile: the nodes it wins and its agent DaemonSet.

use std::collections::BTreeMap;
use std::sync::Arc;

use gogrid_crds::ResourceProfile;
use gogrid_crds::labels::{
    AGENT_COMPONENT, APP, COMPONENT_LABEL, MANAGED_BY_LABEL, NAME_LABEL, OPERATOR_MANAGER,
    PROFILE_LABEL, agent_daemonset_name,
};
use k8s_openapi::api::apps::v1::{
    DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, Node, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    SeccompProfile, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::config::OperatorConfig;
use crate::{Error, Result};

/// Names of the nodes `profile` wins (sorted), by the same rule as the labeller.
pub fn matched_nodes(
    profile: &str,
    nodes: &[Arc<Node>],
    profiles: &[Arc<ResourceProfile>],
) -> Vec<String> {
    let mut out: Vec<String> = nodes
        .iter()
        .filter(|n| {
            super::super::node::assign::winner(n.labels(), profiles.iter().map(|p| p.as_ref()))
                == Some(profile)
        })
        .map(|n| n.name_any())
        .collect();
    out.sort();
    out
}

/// Labels of the agent pods of a profile.
pub fn agent_labels(profile: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_owned(), APP.to_owned()),
        (COMPONENT_LABEL.to_owned(), AGENT_COMPONENT.to_owned()),
        (PROFILE_LABEL.to_owned(), profile.to_owned()),
    ])
}

fn env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn port(name: &str, number: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: number,
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("metrics".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

/// The agent DaemonSet of `profile`: one agent on every node labelled with the
/// profile, non-root, read-only root filesystem, no added capabilities.
pub fn daemonset(profile: &ResourceProfile, config: &OperatorConfig) -> Result<DaemonSet> {
    let name = profile
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingObjectKey("metadata.name"))?;
    let owner = profile
        .controller_owner_ref(&())
        .ok_or(Error::MissingObjectKey("metadata.uid"))?;
    let labels = agent_labels(&name);
    let mut meta_labels = labels.clone();
    meta_labels.insert(MANAGED_BY_LABEL.into(), OPERATOR_MANAGER.into());
    let ports = config.agent_ports;
    let container = Container {
        name: "agent".into(),
        image: Some(config.agent_image.clone()),
        image_pull_policy: Some(config.agent_image_pull_policy.clone()),
        args: Some(vec!["run".into()]),
        env: Some(vec![
            env_field("NODE_NAME", "spec.nodeName"),
            env_field("POD_NAME", "metadata.name"),
            env_field("POD_NAMESPACE", "metadata.namespace"),
            env_field("POD_IP", "status.podIP"),
            env("GOGRID_PROFILE", &name),
            env("GOGRID_HTTP_ADDR", &format!("$(POD_IP):{}", ports.http)),
            env("GOGRID_GRPC_ADDR", &format!("$(POD_IP):{}", ports.grpc)),
            env(
                "GOGRID_METRICS_ADDR",
                &format!("$(POD_IP):{}", ports.metrics),
            ),
            env("GOGRID_MODEL_DIR", "/models"),
            env("GOGRID_LOG_FORMAT", "json"),
            env("GOGRID_METRICS_AUTH", &config.metrics_auth.to_string()),
            env("NVIDIA_VISIBLE_DEVICES", "all"),
            env("NVIDIA_DRIVER_CAPABILITIES", "compute,utility"),
        ]),
        ports: Some(vec![
            port("http", ports.http),
            port("grpc", ports.grpc),
            port("metrics", ports.metrics),
        ]),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "models".into(),
                mount_path: "/models".into(),
                ..Default::default()
            },
            VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    let empty_dir = |n: &str| Volume {
        name: n.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    };
    let pod = PodSpec {
        service_account_name: Some(config.agent_service_account.clone()),
        node_selector: Some(BTreeMap::from([(PROFILE_LABEL.to_owned(), name.clone())])),
        runtime_class_name: config.agent_runtime_class.clone(),
        containers: vec![container],
        volumes: Some(vec![empty_dir("models"), empty_dir("tmp")]),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        tolerations: Some(vec![Toleration {
            key: Some("nvidia.com/gpu".into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        }]),
        termination_grace_period_seconds: Some(30),
        ..Default::default()
    };
    Ok(DaemonSet {
        metadata: ObjectMeta {
            name: Some(agent_daemonset_name(&name)),
            namespace: Some(config.agent_namespace.clone()),
            labels: Some(meta_labels),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_unavailable: Some(IntOrString::Int(1)),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gogrid_crds::ResourceProfileSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    pub(crate) fn profile(name: &str) -> ResourceProfile {
        let mut p = ResourceProfile::new(name, ResourceProfileSpec::default());
        p.metadata.uid = Some(format!("uid-{name}"));
        p.metadata.generation = Some(1);
        p
    }

    fn node(name: &str, labels: &[(&str, &str)]) -> Arc<Node> {
        let mut n = Node::default();
        n.metadata.name = Some(name.into());
        n.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        );
        Arc::new(n)
    }

    #[test]
    fn the_daemonset_runs_on_the_profile_label_with_secure_defaults() {
        let ds = daemonset(&profile("desk"), &OperatorConfig::default()).expect("build");
        assert_eq!(ds.metadata.name.as_deref(), Some("gogrid-agent-desk"));
        assert_eq!(ds.metadata.namespace.as_deref(), Some("gogrid-system"));
        let owner = &ds.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("ResourceProfile", "desk", Some(true))
        );
        let spec = ds.spec.expect("spec");
        let pod = spec.template.spec.expect("pod");
        assert_eq!(
            pod.node_selector,
            Some(BTreeMap::from([(
                PROFILE_LABEL.to_owned(),
                "desk".to_owned()
            )]))
        );
        assert_eq!(pod.service_account_name.as_deref(), Some("gogrid-agent"));
        let psc = pod.security_context.expect("pod security");
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.expect("seccomp").type_,
            "RuntimeDefault"
        );
        let c = &pod.containers[0];
        let sc = c.security_context.as_ref().expect("container security");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_owned()])
        );
        assert!(sc.capabilities.as_ref().is_some_and(|c| c.add.is_none()));
        let ports: Vec<_> = c
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone().unwrap_or_default(), p.container_port))
            .collect();
        assert_eq!(
            ports,
            [
                ("http".into(), 8000),
                ("grpc".into(), 8001),
                ("metrics".into(), 8002)
            ]
        );
        let env: BTreeMap<_, _> = c
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.clone()))
            .collect();
        let field = |n: &str| {
            env[n]
                .value_from
                .as_ref()
                .and_then(|v| v.field_ref.as_ref())
                .map(|f| f.field_path.clone())
        };
        assert_eq!(field("NODE_NAME").as_deref(), Some("spec.nodeName"));
        assert_eq!(field("POD_IP").as_deref(), Some("status.podIP"));
        assert_eq!(env["GOGRID_PROFILE"].value.as_deref(), Some("desk"));
        assert!(c.liveness_probe.is_some() && c.readiness_probe.is_some());
        let selector = spec.selector.match_labels.expect("selector");
        assert_eq!(
            selector.get(PROFILE_LABEL).map(String::as_str),
            Some("desk")
        );
    }

    #[test]
    fn matched_nodes_follow_the_single_winner_rule() {
        let mut desk = profile("desk");
        desk.spec.priority = 10;
        desk.spec.node_selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("desk".to_owned(), "yes".to_owned())])),
            ..Default::default()
        });
        let all = profile("all");
        let profiles = vec![Arc::new(desk), Arc::new(all)];
        let nodes = vec![
            node("n2", &[("desk", "yes")]),
            node("n1", &[]),
            node("n3", &[("desk", "yes")]),
        ];
        assert_eq!(matched_nodes("desk", &nodes, &profiles), ["n2", "n3"]);
        assert_eq!(matched_nodes("all", &nodes, &profiles), ["n1"]);
    }
}
