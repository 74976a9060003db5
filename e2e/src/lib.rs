//! Helpers of GoGrid's end-to-end tests. The tests run against the local real
//! control plane that `make cluster-up` starts (`e2e/.run/kubeconfig`, inside
//! the harness's network namespace) or against any cluster that
//! `GOGRID_E2E_KUBECONFIG` names; tests that stop and start local processes
//! skip themselves on an external cluster.

pub mod bench;
pub mod fault;
pub mod load;
pub mod openloop;

use std::future::Future;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// The repository root.
pub fn repo_root() -> PathBuf {
    // cargo names the package's directory when it runs a test; the path
    // compiled in is the fallback for a binary run by hand. A test binary
    // cargo reused from another checkout (one CARGO_TARGET_DIR for both)
    // would otherwise look for that checkout's cluster.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("..")
}

/// Path of the kubeconfig of the cluster under test.
pub fn kubeconfig_path() -> PathBuf {
    match std::env::var_os("GOGRID_E2E_KUBECONFIG") {
        Some(p) => PathBuf::from(p),
        None => repo_root().join("e2e/.run/kubeconfig"),
    }
}

/// Whether the tests run against the local harness (and may start and stop its
/// processes) rather than an external cluster.
pub fn is_local_harness() -> bool {
    std::env::var_os("GOGRID_E2E_KUBECONFIG").is_none()
}

/// A client for the cluster under test, as the admin.
pub async fn client() -> anyhow::Result<kube::Client> {
    let path = kubeconfig_path();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path)
        .with_context(|| format!("reading {} (run `make cluster-up` first)", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .context("loading the kubeconfig")?;
    kube::Client::try_from(config).context("building a client")
}

/// The output of a command, with stdout and stderr as text.
#[derive(Debug)]
pub struct Run {
    /// Exit success.
    pub ok: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Self {
            ok: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Fail with both streams unless the command succeeded.
    pub fn check(self, what: &str) -> anyhow::Result<Self> {
        if !self.ok {
            bail!(
                "{what} failed:\nstdout: {}\nstderr: {}",
                self.stdout,
                self.stderr
            );
        }
        Ok(self)
    }
}

fn run(mut cmd: Command) -> anyhow::Result<Run> {
    cmd.current_dir(repo_root());
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    Ok(out.into())
}

/// `kubectl` against the cluster under test (the binary named by
/// `GOGRID_E2E_KUBECTL`, default `kubectl` on PATH).
pub fn kubectl(args: &[&str]) -> anyhow::Result<Run> {
    let bin = std::env::var("GOGRID_E2E_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let mut cmd = Command::new(bin);
    cmd.arg("--kubeconfig").arg(kubeconfig_path()).args(args);
    run(cmd)
}

/// `kubectl gogrid ARGS` through kubectl's own plugin lookup: the
/// `kubectl-gogrid` built beside the tests is put first on PATH, and the
/// kubeconfig goes by `KUBECONFIG` (kubectl passes no flags to plugins).
pub fn kubectl_gogrid(args: &[&str]) -> anyhow::Result<Run> {
    let bin = std::env::var("GOGRID_E2E_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let target = std::env::var("CARGO_TARGET_DIR")
        .map_or_else(|_| repo_root().join("target"), PathBuf::from);
    let dir = target.join("debug");
    anyhow::ensure!(
        dir.join("kubectl-gogrid").exists(),
        "{} has no kubectl-gogrid: cargo build -p gogrid-cli",
        dir.display()
    );
    let path = std::env::var("PATH").unwrap_or_default();
    let mut cmd = Command::new(bin);
    cmd.arg("gogrid")
        .args(args)
        .env("PATH", format!("{}:{path}", dir.display()))
        .env("KUBECONFIG", kubeconfig_path());
    run(cmd)
}

/// `helm` against the cluster under test (`GOGRID_E2E_HELM`, default `helm`).
pub fn helm(args: &[&str]) -> anyhow::Result<Run> {
    let bin = std::env::var("GOGRID_E2E_HELM").unwrap_or_else(|_| "helm".into());
    let mut cmd = Command::new(bin);
    cmd.arg("--kubeconfig").arg(kubeconfig_path()).args(args);
    run(cmd)
}

/// Drive the local harness (`e2e/cluster/ctl.sh`): restart a component, start
/// a second operator replica, add a node back.
pub fn ctl(args: &[&str]) -> anyhow::Result<Run> {
    let mut cmd = Command::new("bash");
    cmd.arg(repo_root().join("e2e/cluster/ctl.sh")).args(args);
    run(cmd)?.check(&format!("ctl.sh {}", args.join(" ")))
}

/// Poll `probe` until it returns `Some`, or fail after `timeout` naming `what`
/// and the last thing the probe said.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    loop {
        let last = match probe().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => "not yet".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A namespace of one test, deleted by [`TestNamespace::cleanup`].
#[derive(Debug)]
pub struct TestNamespace {
    /// Its name.
    pub name: String,
}

impl TestNamespace {
    /// Create `gg-e2e-<prefix>-<random>`.
    pub async fn create(client: &kube::Client, prefix: &str) -> anyhow::Result<Self> {
        use k8s_openapi::api::core::v1::Namespace;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let suffix = format!("{:06x}", nanos ^ std::process::id());
        let name = format!("gg-e2e-{prefix}-{}", &suffix[..suffix.len().min(6)]);
        let api: kube::Api<Namespace> = kube::Api::all(client.clone());
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.clone());
        api.create(&Default::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(Self { name })
    }

    /// Delete the namespace (the API server removes what is in it).
    pub async fn cleanup(self, client: &kube::Client) -> anyhow::Result<()> {
        use k8s_openapi::api::core::v1::Namespace;
        let api: kube::Api<Namespace> = kube::Api::all(client.clone());
        api.delete(&self.name, &Default::default())
            .await
            .map(|_| ())
            .with_context(|| format!("deleting namespace {}", self.name))
    }

    /// [`TestNamespace::cleanup`], then wait until the namespace is gone and
    /// no agent loads anything of it: the next test starts on a cluster this
    /// one no longer loads (a hundred deployments torn down behind it share
    /// the agents and the API server with it).
    pub async fn cleanup_and_wait(self, client: &kube::Client) -> anyhow::Result<()> {
        use k8s_openapi::api::core::v1::Namespace;
        let name = self.name.clone();
        self.cleanup(client).await?;
        let namespaces: kube::Api<Namespace> = kube::Api::all(client.clone());
        let gpunodes: kube::Api<gogrid_crds::GpuNode> = kube::Api::all(client.clone());
        let what = format!("namespace {name} gone and unloaded by every agent");
        wait_for(&what, Duration::from_secs(240), || async {
            let left = namespaces.get_opt(&name).await?.is_some();
            let loaded = gpunodes
                .list(&Default::default())
                .await?
                .items
                .iter()
                .flat_map(|g| g.status.iter().flat_map(|s| &s.pipelines))
                .filter(|p| p.namespace == name)
                .count();
            Ok((!left && loaded == 0).then_some(()))
        })
        .await
    }
}

/// Set (or with `None` remove) a label on a node.
pub async fn label_node(
    client: &kube::Client,
    node: &str,
    key: &str,
    value: Option<&str>,
) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Node;
    let api: kube::Api<Node> = kube::Api::all(client.clone());
    let patch = serde_json::json!({"metadata": {"labels": {key: value}}});
    api.patch(
        node,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .with_context(|| format!("labelling node {node} {key}={value:?}"))?;
    Ok(())
}

/// Names of the fake nodes of the local harness (`gg-node-1..N`), or of every
/// node of an external cluster.
pub async fn node_names(client: &kube::Client) -> anyhow::Result<Vec<String>> {
    use k8s_openapi::api::core::v1::Node;
    let api: kube::Api<Node> = kube::Api::all(client.clone());
    let mut names: Vec<String> = api
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    names.sort();
    Ok(names)
}

/// The namespace the chart is installed in.
pub fn release_namespace() -> String {
    std::env::var("GOGRID_E2E_NAMESPACE").unwrap_or_else(|_| "gogrid-system".into())
}

/// Nodes running a Running agent pod of `profile`, sorted.
pub async fn agent_nodes(client: &kube::Client, profile: &str) -> anyhow::Result<Vec<String>> {
    use k8s_openapi::api::core::v1::Pod;
    let api: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &release_namespace());
    let lp = kube::api::ListParams::default().labels(&format!(
        "app.kubernetes.io/component=agent,gogrid.io/profile={profile}"
    ));
    let mut nodes: Vec<String> = api
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| p.spec.and_then(|s| s.node_name))
        .collect();
    nodes.sort();
    Ok(nodes)
}

/// The pipeline of `version` of deployment `ns/name` as each agent's GpuNode
/// reports it; agents that report none are left out.
pub async fn pipelines_of(
    client: &kube::Client,
    ns: &str,
    name: &str,
    version: &str,
) -> anyhow::Result<Vec<gogrid_crds::gpu_node::PipelineStatus>> {
    let api: kube::Api<gogrid_crds::GpuNode> = kube::Api::all(client.clone());
    Ok(api
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|g| g.status?.pipeline(ns, name, version).cloned())
        .collect())
}

/// Waits until `nodes` agents report `version` of `ns/name` ready and routing
/// `weight`% of unversioned requests to it, or, for `None`, until no agent
/// loads it any more.
pub async fn wait_for_split(
    client: &kube::Client,
    (ns, name): (&str, &str),
    nodes: usize,
    version: &str,
    weight: Option<i32>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let what = match weight {
        Some(w) => format!("{nodes} agents routing {w}% to {version} of {ns}/{name}"),
        None => format!("{version} of {ns}/{name} unloaded on every agent"),
    };
    let waited = wait_for(&what, timeout, || async {
        let reported = pipelines_of(client, ns, name, version).await?;
        let ok = match weight {
            Some(w) => reported.len() == nodes && reported.iter().all(|p| p.ready && p.weight == w),
            None => reported.is_empty(),
        };
        Ok(ok.then_some(()))
    })
    .await;
    match waited {
        Ok(()) => Ok(()),
        Err(e) => {
            let seen = what_agents_report(client, ns, name)
                .await
                .unwrap_or_else(|e| format!("(reading it failed: {e:#})"));
            Err(e.context(format!("what the cluster reports for {ns}/{name}:\n{seen}")))
        }
    }
}

/// The deployment's status (placement, split, conditions) and every agent's
/// pipelines of it: what a timed-out wait saw last.
async fn what_agents_report(client: &kube::Client, ns: &str, name: &str) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let mut out = String::new();
    let infd: kube::Api<gogrid_crds::InferenceDeployment> =
        kube::Api::namespaced(client.clone(), ns);
    match infd.get_opt(name).await?.and_then(|d| d.status) {
        Some(s) => {
            let placed: Vec<&str> = s.placement.iter().map(|p| p.node.as_str()).collect();
            writeln!(out, "  placement: {placed:?}")?;
            writeln!(out, "  traffic: {:?}", s.traffic)?;
            for c in &s.conditions {
                writeln!(
                    out,
                    "  condition {}={} {}: {}",
                    c.type_, c.status, c.reason, c.message
                )?;
            }
        }
        None => writeln!(out, "  no status")?,
    }
    let gpunodes: kube::Api<gogrid_crds::GpuNode> = kube::Api::all(client.clone());
    for g in gpunodes.list(&Default::default()).await?.items {
        let node = g.metadata.name.clone().unwrap_or_default();
        let pipelines: Vec<String> = g
            .status
            .iter()
            .flat_map(|s| &s.pipelines)
            .filter(|p| p.namespace == ns && p.deployment == name)
            .map(|p| {
                format!(
                    "{} ready={} weight={} reason={:?} message={:?}",
                    p.version, p.ready, p.weight, p.reason, p.message
                )
            })
            .collect();
        writeln!(out, "  {node}: {pipelines:?}")?;
    }
    Ok(out)
}

/// A BERT model directory whose safetensors file declares one 24 GB tensor
/// and holds no data (a sparse file), with the real model's config beside it.
pub fn big_model(real: &str) -> anyhow::Result<std::path::PathBuf> {
    use std::io::Write as _;
    let dir = std::env::temp_dir().join(format!("gogrid-e2e-big-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = std::path::Path::new(real)
        .parent()
        .context("model directory")?
        .join("config.json");
    std::fs::copy(&config, dir.join("config.json"))?;
    let elements: u64 = 6_000_000_000;
    let header = serde_json::json!({"embeddings.word_embeddings.weight": {
        "dtype": "F32", "shape": [elements], "data_offsets": [0, elements * 4]}})
    .to_string();
    let path = dir.join("model.safetensors");
    let mut file = std::fs::File::create(&path)?;
    file.write_all(&(header.len() as u64).to_le_bytes())?;
    file.write_all(header.as_bytes())?;
    file.set_len(8 + header.len() as u64 + elements * 4)?;
    Ok(path)
}

/// The bearer token of the kubeconfig under test (the local harness's admin,
/// in `system:masters`): metrics endpoints answer only authorized readers.
pub fn kubeconfig_token() -> anyhow::Result<String> {
    let path = kubeconfig_path();
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let kubeconfig: serde_json::Value = serde_yaml::from_str(&text)?;
    kubeconfig["users"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|u| u["user"]["token"].as_str().map(str::to_owned))
        .with_context(|| format!("{} has no token", path.display()))
}

/// A token of ServiceAccount `name` in the release namespace (created if
/// missing), bound to `cluster_role` when one is named.
pub async fn service_account_token(
    client: &kube::Client,
    name: &str,
    cluster_role: Option<&str>,
) -> anyhow::Result<String> {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
    use kube::api::{Patch, PatchParams, PostParams};
    let ns = release_namespace();
    let accounts: kube::Api<ServiceAccount> = kube::Api::namespaced(client.clone(), &ns);
    let pp = PatchParams::apply("gogrid-e2e").force();
    accounts
        .patch(
            name,
            &pp,
            &Patch::Apply(
                serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount",
                                 "metadata": {"name": name, "namespace": ns}}),
            ),
        )
        .await?;
    if let Some(role) = cluster_role {
        let bindings: kube::Api<ClusterRoleBinding> = kube::Api::all(client.clone());
        let binding = ClusterRoleBinding {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("{name}-{role}")),
                ..Default::default()
            },
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: role.into(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: name.into(),
                namespace: Some(ns.clone()),
                ..Default::default()
            }]),
        };
        bindings
            .patch(&format!("{name}-{role}"), &pp, &Patch::Apply(&binding))
            .await?;
    }
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    accounts
        .create_token_request(name, &PostParams::default(), &request)
        .await?
        .status
        .map(|s| s.token)
        .context("the TokenRequest gave no token")
}

/// What `/metrics` at `url` answers `token` (None: no Authorization header):
/// the HTTP status and the body.
pub fn get_metrics(url: &str, token: Option<&str>) -> anyhow::Result<(u16, String)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.arg(url).output().context("running curl")?;
    anyhow::ensure!(
        out.status.success(),
        "{url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').context("curl's status line")?;
    Ok((code.trim().parse()?, body.to_owned()))
}

/// The metrics at `url`, read with the kubeconfig's token; anything but a
/// 200 is an error.
pub fn scrape(url: &str) -> anyhow::Result<String> {
    let (code, body) = get_metrics(url, Some(&kubeconfig_token()?))?;
    anyhow::ensure!(code == 200, "{url}: HTTP {code}: {body}");
    Ok(body)
}

/// Checks the metrics at `url` (the classic text format curl is given)
/// with `promtool check metrics`: exposition format and Prometheus' naming
/// conventions.
pub fn promtool_check_metrics(url: &str) -> anyhow::Result<()> {
    let scraped = scrape(url)?;
    anyhow::ensure!(!scraped.is_empty(), "{url}: empty answer");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("running promtool (Debian package prometheus)")?;
    {
        use std::io::Write as _;
        let mut stdin = promtool.stdin.take().context("promtool stdin")?;
        stdin.write_all(scraped.as_bytes())?;
    }
    let out = promtool.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "promtool check metrics on {url}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The operator's /metrics: `GOGRID_E2E_OPERATOR_METRICS`, else where the
/// local harness runs it (e2e/cluster/lib.sh: GG_OPERATOR_HTTP).
pub fn operator_metrics_url() -> String {
    std::env::var("GOGRID_E2E_OPERATOR_METRICS")
        .unwrap_or_else(|_| "http://10.244.0.1:8080/metrics".to_owned())
}
