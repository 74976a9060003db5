//! Who may do what, checked by the real API server and the real endpoints:
//! `/metrics` of the operator and of every agent answers only callers the API
//! server authenticates and authorizes (anonymous 401, a known account
//! without the permission 403, a reader of the chart's metrics-reader role
//! 200), while the probes stay open for the kubelet; and an agent writes
//! only its own node's GpuNode (the chart's ValidatingAdmissionPolicy).

use gogrid_crds::GpuNode;
use gogrid_e2e::{
    client, get_metrics, is_local_harness, operator_metrics_url, service_account_token,
};
use kube::Api;

#[tokio::test]
async fn metrics_answer_authorized_readers_only() -> anyhow::Result<()> {
    if !is_local_harness() {
        eprintln!("skipped: reaches the operator's and agents' ports of the local harness");
        return Ok(());
    }
    let client = client().await?;
    let reader =
        service_account_token(&client, "e2e-metrics-reader", Some("gogrid-metrics-reader")).await?;
    let nobody = service_account_token(&client, "e2e-nobody", None).await?;
    let mut urls = vec![operator_metrics_url()];
    let gpunodes: Api<GpuNode> = Api::all(client.clone());
    for g in gpunodes.list(&Default::default()).await?.items {
        if let Some(agent) = g.status.and_then(|s| s.agent) {
            urls.push(format!(
                "http://{}:{}/metrics",
                agent.pod_ip, agent.metrics_port
            ));
        }
    }
    anyhow::ensure!(urls.len() > 1, "no agent reports its address");
    for url in &urls {
        let (code, body) = get_metrics(url, None)?;
        assert_eq!(code, 401, "{url} without a token: {body}");
        assert!(
            body.contains("bearer token"),
            "{url}: the 401 says what is missing: {body}"
        );
        let (code, body) = get_metrics(url, Some("not-a-token"))?;
        assert_eq!(code, 401, "{url} with a made-up token: {body}");
        let (code, body) = get_metrics(url, Some(&nobody))?;
        assert_eq!(
            code, 403,
            "{url} as an account without get /metrics: {body}"
        );
        assert!(
            body.contains("e2e-nobody"),
            "{url}: the 403 names the user: {body}"
        );
        let (code, body) = get_metrics(url, Some(&reader))?;
        assert_eq!(code, 200, "{url} as a metrics reader: {body}");
        assert!(body.contains("gogrid_"), "{url}: metrics for the reader");
        let probe = url.replace("/metrics", "/healthz");
        let (code, _) = get_metrics(&probe, None)?;
        assert_eq!(code, 200, "{probe} stays open for the kubelet");
        eprintln!("{url}: anonymous 401, unauthorised 403, reader 200");
    }
    Ok(())
}

/// A client with the kubeconfig at `path` (a token of one of the harness's
/// processes).
async fn client_from(path: &std::path::Path) -> anyhow::Result<kube::Client> {
    use anyhow::Context as _;
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("reading {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    Ok(kube::Client::try_from(config)?)
}

/// A server-side dry run of a status patch of GpuNode `name`: admission runs,
/// nothing is stored.
async fn try_status_write(client: &kube::Client, name: &str) -> Result<(), kube::Error> {
    use kube::api::{Patch, PatchParams};
    let api: Api<GpuNode> = Api::all(client.clone());
    let mut pp = PatchParams::apply("gogrid-agent").force();
    pp.dry_run = true;
    let patch = serde_json::json!({"apiVersion": "gogrid.io/v1alpha1", "kind": "GpuNode",
                                   "status": {"gpuCount": 0}});
    api.patch_status(name, &pp, &Patch::Apply(&patch))
        .await
        .map(|_| ())
}

#[tokio::test]
async fn an_agent_cannot_write_another_nodes_gpunode() -> anyhow::Result<()> {
    if !is_local_harness() {
        eprintln!("skipped: uses the agents' tokens of the local harness");
        return Ok(());
    }
    let admin = client().await?;
    // The supervisor (the harness's kubelet) gives each agent its
    // ServiceAccount's token bound to the agent's pod.
    let dir = gogrid_e2e::repo_root().join("e2e/.run/agents");
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(admin.clone(), &gogrid_e2e::release_namespace());
    let mut agents = Vec::new();
    for entry in std::fs::read_dir(&dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some(pod) = name.strip_prefix(".kubeconfig-") else {
            continue;
        };
        let Some(node) = pods.get_opt(pod).await?.and_then(|p| p.spec?.node_name) else {
            continue;
        };
        agents.push((node, dir.join(&name)));
    }
    agents.sort();
    anyhow::ensure!(
        agents.len() >= 2,
        "two agents with pod-bound tokens, found {}",
        agents.len()
    );
    let (own, kubeconfig) = &agents[0];
    let other = &agents[1].0;
    let agent = client_from(kubeconfig).await?;

    try_status_write(&agent, own)
        .await
        .map_err(|e| anyhow::anyhow!("the agent of {own} writing its own GpuNode: {e}"))?;
    match try_status_write(&agent, other).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 403, "{e:?}");
            assert!(
                e.message
                    .contains("may write only the GpuNode of its own node")
                    && e.message.contains(own.as_str()),
                "the refusal names the rule and the agent's node: {}",
                e.message
            );
            eprintln!(
                "the agent of {own} writing GpuNode {other}: 403 {}",
                e.message
            );
        }
        other_result => panic!("the agent of {own} wrote GpuNode {other}: {other_result:?}"),
    }
    // A token of the agents' account bound to no pod names no node.
    let unbound = client_from(&gogrid_e2e::repo_root().join("e2e/.run/kubeconfig-agent")).await?;
    match try_status_write(&unbound, own).await {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 403, "{e:?}");
            assert!(e.message.contains("names no node"), "{}", e.message);
        }
        r => panic!("an agent token bound to no pod wrote a GpuNode: {r:?}"),
    }
    Ok(())
}

/// Whether the identity of `client` may `verb` `resource` (group/resource,
/// subresource after a slash) in `namespace` (None: cluster-wide), as the API
/// server's authorizer answers it.
async fn may(
    client: &kube::Client,
    verb: &str,
    group: &str,
    resource: &str,
    namespace: Option<&str>,
) -> anyhow::Result<bool> {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s.to_owned())),
        None => (resource, None),
    };
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                subresource,
                namespace: namespace.map(str::to_owned),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let answer = api.create(&Default::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// The rules the identity of `client` has in `namespace`.
async fn rules(
    client: &kube::Client,
    namespace: &str,
) -> anyhow::Result<Vec<k8s_openapi::api::authorization::v1::ResourceRule>> {
    use k8s_openapi::api::authorization::v1::{SelfSubjectRulesReview, SelfSubjectRulesReviewSpec};
    let review = SelfSubjectRulesReview {
        spec: SelfSubjectRulesReviewSpec {
            namespace: Some(namespace.to_owned()),
        },
        ..Default::default()
    };
    let api: Api<SelfSubjectRulesReview> = Api::all(client.clone());
    let answer = api.create(&Default::default(), &review).await?;
    Ok(answer.status.map(|s| s.resource_rules).unwrap_or_default())
}

#[tokio::test]
async fn the_operator_and_the_agents_have_the_least_they_need() -> anyhow::Result<()> {
    if !is_local_harness() {
        eprintln!("skipped: uses the tokens of the local harness's processes");
        return Ok(());
    }
    let root = gogrid_e2e::repo_root().join("e2e/.run");
    let release = gogrid_e2e::release_namespace();
    for (who, file) in [
        ("operator", "kubeconfig-operator"),
        ("agent", "kubeconfig-agent"),
    ] {
        let client = client_from(&root.join(file)).await?;
        for ns in [release.as_str(), "default", "kube-system"] {
            for rule in rules(&client, ns).await? {
                let all = rule
                    .verbs
                    .iter()
                    .chain(rule.resources.iter().flatten())
                    .chain(rule.api_groups.iter().flatten());
                assert!(
                    !all.clone().any(|x| x == "*"),
                    "{who} in {ns}: a wildcard in {rule:?}"
                );
                for verb in ["escalate", "bind", "impersonate"] {
                    assert!(
                        !rule.verbs.iter().any(|v| v == verb),
                        "{who} in {ns}: {verb} in {rule:?}"
                    );
                }
                assert!(
                    !rule
                        .resources
                        .iter()
                        .flatten()
                        .any(|r| r == "secrets" || r == "configmaps"),
                    "{who} in {ns}: {rule:?}"
                );
            }
        }
        for (verb, group, resource) in [
            ("get", "", "secrets"),
            ("list", "", "secrets"),
            ("create", "rbac.authorization.k8s.io", "clusterrolebindings"),
            ("impersonate", "", "users"),
            ("impersonate", "", "serviceaccounts"),
            ("update", "gogrid.io", "inferencedeployments"),
            ("patch", "gogrid.io", "inferencedeployments"),
            ("patch", "gogrid.io", "resourceprofiles"),
            ("delete", "gogrid.io", "inferencedeployments"),
            (
                "create",
                "admissionregistration.k8s.io",
                "validatingadmissionpolicies",
            ),
            (
                "create",
                "apiextensions.k8s.io",
                "customresourcedefinitions",
            ),
            ("delete", "", "pods"),
            ("create", "", "pods"),
        ] {
            for ns in [None, Some(release.as_str())] {
                assert!(
                    !may(&client, verb, group, resource, ns).await?,
                    "the {who} may {verb} {group}/{resource} in {ns:?}"
                );
            }
        }
    }
    // What each does need, still allowed (a role pared below the need would
    // show here before it shows as a broken cluster).
    let operator = client_from(&root.join("kubeconfig-operator")).await?;
    for (verb, group, resource) in [
        ("patch", "gogrid.io", "inferencedeployments/status"),
        ("patch", "", "nodes"),
        ("create", "discovery.k8s.io", "endpointslices"),
        ("create", "authentication.k8s.io", "tokenreviews"),
    ] {
        assert!(
            may(&operator, verb, group, resource, Some("default")).await?,
            "operator: {verb} {resource}"
        );
    }
    let agent = client_from(&root.join("kubeconfig-agent")).await?;
    for (verb, group, resource) in [
        ("patch", "gogrid.io", "gpunodes/status"),
        ("watch", "gogrid.io", "inferencedeployments"),
        ("get", "", "nodes"),
    ] {
        assert!(
            may(&agent, verb, group, resource, None).await?,
            "agent: {verb} {resource}"
        );
    }
    assert!(
        !may(&agent, "patch", "", "nodes", None).await?,
        "an agent never writes a Node"
    );
    assert!(
        !may(
            &agent,
            "patch",
            "gogrid.io",
            "inferencedeployments/status",
            Some("default")
        )
        .await?
    );
    Ok(())
}
