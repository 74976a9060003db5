//! What the fault tests need besides the load: the API server's audit log as
//! the oracle of who wrote what, the harness's process ids (a crash loop
//! shows as a new pid), the figures each test reports, and the deployments
//! they roll out.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use gogrid_crds::InferenceDeployment;
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};

use crate::repo_root;

/// One request the API server logged (e2e/cluster/up.sh's audit policy: every
/// write by a ServiceAccount of GoGrid's namespace, and its reads too with
/// GOGRID_AUDIT_READS=1).
#[derive(Debug, Clone)]
pub struct AuditWrite {
    /// When the API server received it.
    pub at: SystemTime,
    /// `create`, `update`, `patch`, `delete`, ...
    pub verb: String,
    /// The user (`system:serviceaccount:<ns>:<name>`).
    pub user: String,
    /// Its User-Agent (GoGrid's binaries put their identity there).
    pub user_agent: String,
    /// API group of the object.
    pub group: String,
    /// Resource (plural).
    pub resource: String,
    /// Subresource (`status`), empty for the object itself.
    pub subresource: String,
    /// Namespace of the object.
    pub namespace: String,
    /// Name of the object.
    pub name: String,
    /// HTTP status of the answer.
    pub code: u16,
}

impl AuditWrite {
    /// Whether the request wrote (create, update, patch, delete).
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }

    /// Whether it came from the operator's ServiceAccount.
    pub fn by_operator(&self) -> bool {
        self.user.ends_with(":gogrid-operator")
    }

    /// Whether it came from the agents' ServiceAccount.
    pub fn by_agent(&self) -> bool {
        self.user.ends_with(":gogrid-agent")
    }

    /// Whether it changed the spec (or metadata) of a GoGrid resource, which
    /// users and GitOps own: only status subresources may be written.
    pub fn writes_a_spec(&self) -> bool {
        self.group == "gogrid.io"
            && matches!(
                self.resource.as_str(),
                "inferencedeployments" | "resourceprofiles"
            )
            && self.subresource.is_empty()
    }

    /// Whether it is a request about someone else (a metrics caller's
    /// TokenReview or SubjectAccessReview), not a write of state.
    pub fn is_review(&self) -> bool {
        matches!(
            self.resource.as_str(),
            "tokenreviews" | "subjectaccessreviews"
        )
    }

    /// Whether it is a leader-election Lease renewal or acquisition.
    pub fn is_lease(&self) -> bool {
        self.group == "coordination.k8s.io" && self.resource == "leases"
    }
}

fn audit_path() -> PathBuf {
    repo_root().join("e2e/.run/logs/audit.log")
}

/// The writes logged at or after `since`.
pub fn audit_writes(since: SystemTime) -> anyhow::Result<Vec<AuditWrite>> {
    let mut out = audit_requests(since)?;
    out.retain(AuditWrite::is_write);
    Ok(out)
}

/// Every request logged at or after `since` (received then), read line by
/// line: with reads audited the log grows to hundreds of megabytes.
pub fn audit_requests(since: SystemTime) -> anyhow::Result<Vec<AuditWrite>> {
    use std::io::BufRead as _;
    let path = audit_path();
    let file = std::fs::File::open(&path)
        .with_context(|| format!("reading the API server's audit log {}", path.display()))?;
    let mut out = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let Ok(e) = serde_json::from_str::<Value>(&line?) else {
            continue;
        };
        if e["stage"] != "ResponseComplete" {
            continue;
        }
        let Some(at) = e["requestReceivedTimestamp"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(SystemTime::from)
        else {
            continue;
        };
        if at < since {
            continue;
        }
        let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let o = &e["objectRef"];
        out.push(AuditWrite {
            at,
            verb: s(&e["verb"]),
            user: s(&e["user"]["username"]),
            user_agent: s(&e["userAgent"]),
            group: s(&o["apiGroup"]),
            resource: s(&o["resource"]),
            subresource: s(&o["subresource"]),
            namespace: s(&o["namespace"]),
            name: s(&o["name"]),
            code: e["responseStatus"]["code"]
                .as_u64()
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(0),
        });
    }
    Ok(out)
}

/// Fails if the operator or an agent wrote a spec of a GoGrid resource at or
/// after `since`.
pub fn assert_no_spec_writes(since: SystemTime) -> anyhow::Result<usize> {
    let writes = audit_writes(since)?;
    let bad: Vec<&AuditWrite> = writes
        .iter()
        .filter(|w| (w.by_operator() || w.by_agent()) && w.writes_a_spec())
        .collect();
    anyhow::ensure!(
        bad.is_empty(),
        "GoGrid wrote {} spec(s), which users own: {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    Ok(writes.len())
}

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("process {pid}: no VmRSS"))
}

/// The pid the harness recorded for process `name` (e2e/.run/pids).
pub fn pid_of(name: &str) -> anyhow::Result<u32> {
    let path = repo_root().join(format!("e2e/.run/pids/{name}.pid"));
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("{}: no pid", path.display()))
}

/// The pid of the agent on `node` and how often the supervisor restarted it
/// (e2e/.run/agents/<pod>: "pid uid node ip profile restarts started").
pub fn agent_process(node: &str) -> anyhow::Result<(u32, u32)> {
    let dir = repo_root().join("e2e/.run/agents");
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let f: Vec<&str> = text.split_whitespace().collect();
        if f.get(2) == Some(&node) {
            let pid = f.first().and_then(|p| p.parse().ok()).context("pid")?;
            let restarts = f.get(5).and_then(|r| r.parse().ok()).unwrap_or(0);
            return Ok((pid, restarts));
        }
    }
    anyhow::bail!("no agent runs on {node}")
}

/// The pids of the operator and of every agent, to compare before and after
/// a fault: a crash or a crash loop changes them.
pub fn processes(nodes: &[String]) -> anyhow::Result<Vec<(String, u32)>> {
    let mut out = vec![("operator".to_owned(), pid_of("operator")?)];
    for n in nodes {
        out.push((format!("agent {n}"), agent_process(n)?.0));
    }
    Ok(out)
}

/// Whether process `pid` is alive.
pub fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Writes a test's figures to `$GOGRID_E2E_REPORT_DIR/<name>.json` (when set;
/// hack/reliability.sh collects them into docs/reliability.md) and prints them.
pub fn report(name: &str, figures: &Value) -> anyhow::Result<()> {
    eprintln!("FIGURES {name}: {figures}");
    if let Some(dir) = std::env::var_os("GOGRID_E2E_REPORT_DIR") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join(format!("{name}.json")),
            serde_json::to_vec_pretty(figures)?,
        )?;
    }
    Ok(())
}

/// A duration from the environment in seconds (for the long runs of
/// hack/reliability.sh), or `default`.
pub fn seconds_from_env(var: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

/// SmolLM2 as model `name` version `version` (GOGRID_MODEL_SMOLLM2).
pub fn smollm2(name: &str, version: &str) -> anyhow::Result<Value> {
    let path = std::env::var("GOGRID_MODEL_SMOLLM2")
        .context("GOGRID_MODEL_SMOLLM2 must name SmolLM2's GGUF (hack/models.sh smollm2)")?;
    Ok(
        json!({"name": name, "version": version, "format": "gguf", "task": "text-generation",
              "source": {"path": path}}),
    )
}

/// all-MiniLM-L6-v2 as model `name` version `version` (GOGRID_MODEL_MINILM).
pub fn minilm(name: &str, version: &str) -> anyhow::Result<Value> {
    let path = std::env::var("GOGRID_MODEL_MINILM")
        .context("GOGRID_MODEL_MINILM must name all-MiniLM-L6-v2's model.safetensors")?;
    Ok(
        json!({"name": name, "version": version, "format": "safetensors", "task": "embedding",
              "source": {"path": path}}),
    )
}

/// Creates InferenceDeployment `name` in `ns` on the `default` profile with
/// `spec` merged over the profile.
pub async fn create_deployment(
    client: &kube::Client,
    ns: &str,
    name: &str,
    spec: Value,
) -> anyhow::Result<()> {
    let mut full = json!({"profile": "default"});
    if let (Some(f), Some(s)) = (full.as_object_mut(), spec.as_object()) {
        for (k, v) in s {
            f.insert(k.clone(), v.clone());
        }
    }
    let api: Api<InferenceDeployment> = Api::namespaced(client.clone(), ns);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "gogrid.io/v1alpha1", "kind": "InferenceDeployment",
            "metadata": {"name": name}, "spec": full
        }))?,
    )
    .await
    .with_context(|| format!("creating InferenceDeployment {ns}/{name}"))?;
    Ok(())
}

/// Whether process `pid` has exited (gone, or a zombie its parent has not
/// reaped yet).
pub fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// The REST endpoint of the agent on `node`, from its GpuNode.
pub async fn endpoint_of(
    client: &kube::Client,
    node: &str,
) -> anyhow::Result<std::net::SocketAddr> {
    let api: Api<gogrid_crds::GpuNode> = Api::all(client.clone());
    let agent = api
        .get(node)
        .await?
        .status
        .and_then(|s| s.agent)
        .with_context(|| format!("GpuNode {node} has no agent"))?;
    let ip: std::net::IpAddr = agent.pod_ip.parse()?;
    Ok(std::net::SocketAddr::new(
        ip,
        u16::try_from(agent.http_port)?,
    ))
}

/// The metrics URL of the agent on `node`.
pub async fn metrics_url_of(client: &kube::Client, node: &str) -> anyhow::Result<String> {
    let api: Api<gogrid_crds::GpuNode> = Api::all(client.clone());
    let agent = api
        .get(node)
        .await?
        .status
        .and_then(|s| s.agent)
        .with_context(|| format!("GpuNode {node} has no agent"))?;
    Ok(format!(
        "http://{}:{}/metrics",
        agent.pod_ip, agent.metrics_port
    ))
}

/// The value of the sample `name{labels}` in a text exposition (labels in
/// the order the exposition writes them), 0 when absent.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// How many times each agent of `nodes` loaded `version` of `ns/name`.
pub async fn loads(
    client: &kube::Client,
    nodes: &[String],
    (ns, name): (&str, &str),
    version: &str,
) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::new();
    for n in nodes {
        let text = crate::scrape(&metrics_url_of(client, n).await?)?;
        out.push(sample(
            &text,
            &format!(
                "gogrid_agent_pipeline_loads_total{{namespace=\"{ns}\",deployment=\"{name}\",version=\"{version}\"}}"
            ),
        ));
    }
    Ok(out)
}

/// SmolLM2 v1 with a canary v2 at `weight`%, ready and routing on every one
/// of `nodes` agents.
pub async fn deploy_llm_canary(
    client: &kube::Client,
    ns: &str,
    name: &str,
    weight: i32,
    nodes: usize,
    wait: Duration,
) -> anyhow::Result<()> {
    create_deployment(
        client,
        ns,
        name,
        json!({"model": smollm2(name, "v1")?,
               "rollout": {"strategy": "Canary", "canary": {"model": smollm2(name, "v2")?, "weight": weight}}}),
    )
    .await?;
    crate::wait_for_split(client, (ns, name), nodes, "v2", Some(weight), wait).await?;
    crate::wait_for_split(client, (ns, name), nodes, "v1", Some(100 - weight), wait).await
}

/// Whether `share` of `records` (the ones answered) went to `version`, within
/// `slack` requests of `weight`%.
pub fn split_holds(
    records: &[crate::openloop::Record],
    version: &str,
    weight: i32,
    slack: usize,
) -> Result<(), String> {
    let ok: Vec<&crate::openloop::Record> = records
        .iter()
        .filter(|r| r.outcome == crate::openloop::Outcome::Ok)
        .collect();
    let got = ok
        .iter()
        .filter(|r| r.version.as_deref() == Some(version))
        .count() as i64;
    let want = ok.len() as i64 * i64::from(weight) / 100;
    if (got - want).abs() <= slack as i64 {
        Ok(())
    } else {
        Err(format!(
            "{version} answered {got} of {}, want {want} +- {slack} ({weight}%)",
            ok.len()
        ))
    }
}
