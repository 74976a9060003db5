//! GoGrid's cost as the fleet grows (issue 9), on the running e2e cluster with
//! `--nodes` kwok nodes labelled `gogrid.io/hollow=true` (hack/bench-scale.sh
//! brings one up at 100 and at 1000 nodes). In order:
//!
//! 1. the controller-manager's own pace: a plain DaemonSet (pause image) on
//!    those nodes, created -> every pod Ready; then deleted;
//! 2. ResourceProfile `scale` applied -> its agent DaemonSet created -> every
//!    agent pod Ready (the operator labels each node for the profile first);
//! 3. one `gogrid-agent hollow` process plays the agent of every pod
//!    (`--agent`, with the agents' ServiceAccount in `--agent-kubeconfig`);
//!    every GpuNode reports `hollow`;
//! 4. `--deployments` InferenceDeployments created (16 at a time): create ->
//!    status written (observedGeneration) and -> Ready, and the operator's own
//!    reconcile histogram over that window;
//! 5. a deployment on every node with a canary: `--edits` weight edits timed
//!    to the moment each hollow agent applied them (its /hollow/splits);
//! 6. `--idle` seconds of nothing changing: the requests the operator and the
//!    agents send to the API server, from its audit log;
//! 7. resident memory of the operator, the hollow agents, kube-apiserver and
//!    etcd (the harness's pid files).
//!
//! One JSON object on stdout, progress on stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use gogrid_crds::{GpuNode, InferenceDeployment, ResourceProfile};
use gogrid_e2e::bench::{arg, bucket_quantiles, buckets, summary, unix_now};
use gogrid_e2e::{client, fault, operator_metrics_url, scrape};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, ResourceExt as _};
use serde_json::{Value, json};

const NS: &str = "gogrid-scale";
const PROFILE: &str = "scale";
const HOLLOW_LABEL: &str = "gogrid.io/hollow";
const WAIT: Duration = Duration::from_secs(1200);
const RECONCILE: &str = "gogrid_operator_reconcile_duration_seconds";

struct Args {
    nodes: usize,
    deployments: usize,
    edits: usize,
    idle: u64,
    agent: PathBuf,
    agent_kubeconfig: PathBuf,
    hollow_addr: String,
    dir: PathBuf,
    agent_namespace: String,
}

impl Args {
    fn parse() -> anyhow::Result<Self> {
        let path = |name: &str| -> anyhow::Result<PathBuf> {
            let v = arg(name, "");
            anyhow::ensure!(!v.is_empty(), "{name} PATH is required");
            Ok(PathBuf::from(v))
        };
        Ok(Self {
            nodes: arg("--nodes", "100").parse().context("--nodes")?,
            deployments: arg("--deployments", "100")
                .parse()
                .context("--deployments")?,
            edits: arg("--edits", "20").parse().context("--edits")?,
            idle: arg("--idle", "120").parse().context("--idle")?,
            agent: path("--agent")?,
            agent_kubeconfig: path("--agent-kubeconfig")?,
            hollow_addr: arg("--hollow-addr", "127.0.0.1:9102"),
            dir: path("--dir")?,
            agent_namespace: arg("--agent-namespace", "gogrid-system"),
        })
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Polls `probe` every 100 ms until it answers `Some`, for at most [`WAIT`].
async fn until<T, F, Fut>(what: &str, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + WAIT;
    let mut last_err = None;
    loop {
        match probe().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{what}: not reached in {WAIT:?} (last error: {last_err:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Ready pods of `ds` when every one of `want` is ready.
async fn daemonset_ready(api: &Api<DaemonSet>, name: &str, want: usize) -> anyhow::Result<bool> {
    let Some(ds) = api.get_opt(name).await? else {
        return Ok(false);
    };
    let s = ds.status.unwrap_or_default();
    Ok(s.desired_number_scheduled as usize == want && s.number_ready as usize == want)
}

/// Phase 1: a plain DaemonSet on the hollow nodes, created -> all pods Ready.
async fn baseline_daemonset(client: &kube::Client, n: usize) -> anyhow::Result<Value> {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), NS);
    let ds: DaemonSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "baseline"},
        "spec": {
            "selector": {"matchLabels": {"app": "baseline"}},
            "template": {
                "metadata": {"labels": {"app": "baseline"}},
                "spec": {
                    "nodeSelector": {HOLLOW_LABEL: "true"},
                    "containers": [{"name": "pause", "image": "registry.k8s.io/pause:3.10"}]
                }
            }
        }
    }))?;
    let t0 = Instant::now();
    api.create(&PostParams::default(), &ds).await?;
    until("the baseline DaemonSet's pods Ready", || async {
        Ok(daemonset_ready(&api, "baseline", n).await?.then_some(()))
    })
    .await?;
    let ready = t0.elapsed();
    eprintln!(
        "scale: baseline DaemonSet: {n} pods Ready in {:.1} s (the controller-manager's pace)",
        ready.as_secs_f64()
    );
    api.delete("baseline", &DeleteParams::foreground()).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    until("the baseline pods deleted", || async {
        let left = pods
            .list_metadata(&ListParams::default().labels("app=baseline"))
            .await?;
        Ok(left.items.is_empty().then_some(()))
    })
    .await?;
    Ok(json!({"pods": n, "all_pods_ready_ms": ms(ready)}))
}

/// Phase 2: ResourceProfile applied -> DaemonSet created -> all agent pods Ready.
async fn profile_daemonset(client: &kube::Client, args: &Args) -> anyhow::Result<Value> {
    let profiles: Api<ResourceProfile> = Api::all(client.clone());
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &args.agent_namespace);
    let name = gogrid_crds::labels::agent_daemonset_name(PROFILE);
    let profile: ResourceProfile = serde_json::from_value(json!({
        "apiVersion": "gogrid.io/v1alpha1", "kind": "ResourceProfile",
        "metadata": {"name": PROFILE},
        "spec": {"preset": "default", "nodeSelector": {"matchLabels": {HOLLOW_LABEL: "true"}}}
    }))?;
    let t0 = Instant::now();
    profiles.create(&PostParams::default(), &profile).await?;
    until("the profile's DaemonSet created", || async {
        Ok(daemonsets.get_opt(&name).await?.map(|_| ()))
    })
    .await?;
    let created = t0.elapsed();
    eprintln!(
        "scale: ResourceProfile {PROFILE}: DaemonSet {name} created after {:.0} ms",
        ms(created)
    );
    until("the agent pods Ready", || async {
        Ok(daemonset_ready(&daemonsets, &name, args.nodes)
            .await?
            .then_some(()))
    })
    .await?;
    let ready = t0.elapsed();
    eprintln!(
        "scale: ResourceProfile {PROFILE}: {} agent pods Ready after {:.1} s",
        args.nodes,
        ready.as_secs_f64()
    );
    Ok(
        json!({"pods": args.nodes, "daemonset_created_ms": ms(created), "all_pods_ready_ms": ms(ready)}),
    )
}

/// Phase 3: one hollow agent process for every agent pod of the profile.
async fn start_hollow(
    client: &kube::Client,
    args: &Args,
) -> anyhow::Result<(tokio::process::Child, Value)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &args.agent_namespace);
    let selector = format!("gogrid.io/profile={PROFILE},app.kubernetes.io/component=agent");
    let nodes: Vec<Value> = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.clone()?;
            Some(
                json!({"node": p.spec.as_ref()?.node_name.clone()?, "pod": p.name_any(),
                        "podIP": ip, "profile": PROFILE}),
            )
        })
        .collect();
    anyhow::ensure!(
        nodes.len() == args.nodes,
        "{} of {} agent pods have a node and an IP",
        nodes.len(),
        args.nodes
    );
    let file = args.dir.join("hollow-nodes.json");
    std::fs::write(&file, serde_json::to_vec(&nodes)?)?;
    let log = std::fs::File::create(args.dir.join("hollow.log"))?;
    let t0 = Instant::now();
    let child = tokio::process::Command::new(&args.agent)
        .arg("hollow")
        .arg("--nodes")
        .arg(&file)
        .args([
            "--simulate-gpus",
            "2x24Gi",
            "--metrics-addr",
            &args.hollow_addr,
        ])
        .env("KUBECONFIG", &args.agent_kubeconfig)
        .env("GOGRID_LOG", "warn")
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", args.agent.display()))?;
    let gpunodes: Api<GpuNode> = Api::all(client.clone());
    until("every hollow GpuNode reported", || async {
        let hollow = gpunodes
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|g| g.status.as_ref().is_some_and(|s| s.hollow))
            .count();
        Ok((hollow >= args.nodes).then_some(()))
    })
    .await?;
    let reported = t0.elapsed();
    eprintln!(
        "scale: {} hollow agents report their GpuNode after {:.1} s",
        args.nodes,
        reported.as_secs_f64()
    );
    Ok((child, json!({"all_gpunodes_reported_ms": ms(reported)})))
}

/// When each deployment was created, had its status written, and was Ready.
#[derive(Default)]
struct Times {
    created: HashMap<String, Instant>,
    status: HashMap<String, Instant>,
    ready: HashMap<String, Instant>,
}

fn deployment(name: &str, replicas: Option<i32>, canary: bool) -> anyhow::Result<Value> {
    let version = |v: &str| {
        json!({"name": name, "version": v, "format": "gguf", "task": "text-generation",
               "source": {"path": format!("/models/{name}-{v}.gguf")}})
    };
    let mut spec =
        json!({"profile": PROFILE, "model": version("v1"), "resources": {"vram": "256Mi"}});
    if let Some(r) = replicas {
        spec["placement"] = json!({"replicas": r});
    }
    if canary {
        spec["rollout"] =
            json!({"strategy": "Canary", "canary": {"model": version("v2"), "weight": 0}});
    }
    Ok(
        json!({"apiVersion": "gogrid.io/v1alpha1", "kind": "InferenceDeployment",
              "metadata": {"name": name}, "spec": spec}),
    )
}

/// Phase 4: `--deployments` created 16 at a time; create -> status, create -> Ready.
async fn deployments(client: &kube::Client, args: &Args) -> anyhow::Result<Value> {
    let api: Api<InferenceDeployment> = Api::namespaced(client.clone(), NS);
    let times = Arc::new(Mutex::new(Times::default()));
    let watch = {
        let (api, times) = (api.clone(), times.clone());
        tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default()).boxed();
            while let Some(event) = events.next().await {
                let (Ok(watcher::Event::Apply(d)) | Ok(watcher::Event::InitApply(d))) = event
                else {
                    continue;
                };
                let now = Instant::now();
                let name = d.name_any();
                let Some(status) = d.status.as_ref() else {
                    continue;
                };
                let Ok(mut t) = times.lock() else { return };
                if status.observed_generation.is_some()
                    && status.observed_generation == d.metadata.generation
                {
                    t.status.entry(name.clone()).or_insert(now);
                }
                if status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
                {
                    t.ready.entry(name).or_insert(now);
                }
            }
        })
    };
    let metrics = operator_metrics_url();
    let labels = ["controller=\"inferencedeployment\""];
    let before = buckets(&scrape(&metrics)?, RECONCILE, &labels);
    let t0 = Instant::now();
    let names: Vec<String> = (0..args.deployments).map(|i| format!("d{i:04}")).collect();
    futures::stream::iter(names.iter().enumerate())
        .map(|(i, name)| {
            let (api, times) = (api.clone(), times.clone());
            async move {
                let d: InferenceDeployment =
                    serde_json::from_value(deployment(name, Some(1 + (i % 3) as i32), false)?)?;
                let at = Instant::now();
                api.create(&PostParams::default(), &d).await?;
                if let Ok(mut t) = times.lock() {
                    t.created.insert(name.clone(), at);
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<()>()
        .await?;
    let created_in = t0.elapsed();
    eprintln!(
        "scale: {} InferenceDeployments created in {:.1} s",
        args.deployments,
        created_in.as_secs_f64()
    );
    let all = |m: &HashMap<String, Instant>| names.iter().all(|n| m.contains_key(n));
    until("every deployment's status written", || async {
        Ok(times.lock().ok().filter(|t| all(&t.status)).map(|_| ()))
    })
    .await?;
    let status_all = t0.elapsed();
    let after = buckets(&scrape(&metrics)?, RECONCILE, &labels);
    until("every deployment Ready", || async {
        Ok(times.lock().ok().filter(|t| all(&t.ready)).map(|_| ()))
    })
    .await?;
    let ready_all = t0.elapsed();
    watch.abort();
    let t = times.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let since = |m: &HashMap<String, Instant>| -> Vec<f64> {
        names
            .iter()
            .filter_map(|n| Some(ms(m.get(n)?.duration_since(*t.created.get(n)?))))
            .collect()
    };
    let reconciles = bucket_quantiles(&before, &after);
    let count = reconciles["count"].as_f64().unwrap_or(0.0);
    eprintln!(
        "scale: every status written after {:.1} s, every deployment Ready after {:.1} s; {count} reconciles",
        status_all.as_secs_f64(),
        ready_all.as_secs_f64()
    );
    Ok(json!({
        "deployments": args.deployments,
        "created_in_ms": ms(created_in),
        "create_to_status": summary(since(&t.status)),
        "create_to_ready": summary(since(&t.ready)),
        "all_status_written_ms": ms(status_all),
        "all_ready_ms": ms(ready_all),
        "deployments_per_second": args.deployments as f64 / status_all.as_secs_f64(),
        "operator_reconcile": reconciles,
        "operator_reconciles_per_second": count / status_all.as_secs_f64(),
    }))
}

/// Every hollow node's last split change of `key` (`namespace/name`), Unix seconds.
async fn splits(url: &str, key: &str) -> anyhow::Result<Vec<f64>> {
    let out = tokio::process::Command::new("curl")
        .args(["-sf", "--max-time", "10", url])
        .output()
        .await?;
    anyhow::ensure!(out.status.success(), "{url}: curl failed");
    let all: BTreeMap<String, BTreeMap<String, f64>> = serde_json::from_slice(&out.stdout)?;
    Ok(all.values().filter_map(|s| s.get(key).copied()).collect())
}

/// Phase 5: a deployment on every node; canary weight edits -> applied everywhere.
async fn weight_edits(client: &kube::Client, args: &Args) -> anyhow::Result<Value> {
    let api: Api<InferenceDeployment> = Api::namespaced(client.clone(), NS);
    let url = format!("http://{}/hollow/splits", args.hollow_addr);
    let key = format!("{NS}/fleet");
    api.create(
        &PostParams::default(),
        &serde_json::from_value(deployment("fleet", None, true)?)?,
    )
    .await?;
    until("the fleet deployment routed on every node", || async {
        Ok((splits(&url, &key).await?.len() >= args.nodes).then_some(()))
    })
    .await?;
    eprintln!("scale: deployment fleet routes on all {} nodes", args.nodes);
    let (mut to_all, mut to_each) = (Vec::new(), Vec::new());
    for i in 0..args.edits {
        let w = 5 + (i as i32 * 5) % 95;
        let wall = unix_now();
        api.patch(
            "fleet",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rollout": {"canary": {"weight": w}}}})),
        )
        .await?;
        let applied = until("the edit applied on every node", || async {
            let at = splits(&url, &key).await?;
            Ok((at.len() >= args.nodes && at.iter().all(|t| *t >= wall)).then_some(at))
        })
        .await?;
        let each: Vec<f64> = applied.iter().map(|t| (t - wall) * 1e3).collect();
        let last = each.iter().copied().fold(0.0, f64::max);
        eprintln!(
            "scale: edit {}/{} to {w}%: applied on every node after {last:.0} ms",
            i + 1,
            args.edits
        );
        to_all.push(last);
        to_each.extend(each);
    }
    Ok(
        json!({"nodes": args.nodes, "to_all_nodes": summary(to_all), "to_each_node": summary(to_each)}),
    )
}

/// Phase 6: what each GoGrid identity asks of the API server while nothing
/// changes, from the audit log's requests received in `[from, to]`.
fn idle_requests(args: &Args, from: f64, to: f64) -> anyhow::Result<Value> {
    let at = |unix: f64| std::time::UNIX_EPOCH + Duration::from_secs_f64(unix);
    let end = at(to);
    // who -> verb -> count, who -> resource written -> count, node -> agent writes
    let mut counts: BTreeMap<&str, BTreeMap<String, u64>> = BTreeMap::new();
    let mut writes: BTreeMap<&str, BTreeMap<String, u64>> = BTreeMap::new();
    let mut agent_writes_per_node: BTreeMap<String, u64> = BTreeMap::new();
    let (mut rates, mut lease) = (BTreeMap::<(&str, bool), u64>::new(), 0u64);
    for r in fault::audit_requests(at(from))?
        .into_iter()
        .filter(|r| r.at <= end)
    {
        let who = match (r.by_operator(), r.by_agent()) {
            (true, _) => "operator",
            (_, true) => "agents",
            _ => continue,
        };
        *rates.entry((who, r.is_write())).or_default() += 1;
        if r.is_write() {
            let sub = if r.subresource.is_empty() {
                String::new()
            } else {
                format!("/{}", r.subresource)
            };
            *writes
                .entry(who)
                .or_default()
                .entry(format!("{}{sub}", r.resource))
                .or_default() += 1;
            if who == "agents" {
                *agent_writes_per_node.entry(r.name.clone()).or_default() += 1;
            }
            // The leader's Lease renewals are the one write a running operator
            // owes the API server (leader election), not a change of anything
            // it manages.
            lease += u64::from(who == "operator" && r.is_lease());
        }
        *counts.entry(who).or_default().entry(r.verb).or_default() += 1;
    }
    let seconds = to - from;
    let rate =
        |who: &str, write: bool| rates.get(&(who, write)).copied().unwrap_or(0) as f64 / seconds;
    let max_per_node = agent_writes_per_node
        .values()
        .map(|n| *n as f64 * 60.0 / seconds)
        .fold(0.0, f64::max);
    let lease = lease as f64 / seconds;
    Ok(json!({
        "window_s": seconds,
        "by_verb": counts,
        "writes_by_resource": writes,
        "operator_writes_per_s": rate("operator", true),
        "operator_lease_renewals_per_s": lease,
        "operator_writes_but_lease_per_s": rate("operator", true) - lease,
        "operator_reads_per_s": rate("operator", false),
        "agent_writes_per_s": rate("agents", true),
        "agent_reads_per_s": rate("agents", false),
        "agent_writes_per_node_per_min_mean": rate("agents", true) * 60.0 / args.nodes as f64,
        "agent_writes_per_node_per_min_max": max_per_node,
    }))
}

/// Resident memory of process `pid`, in MiB.
fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    Ok(fault::rss_kib(pid)? as f64 / 1024.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let client = client().await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NS}}))?,
        )
        .await
        .context("creating namespace gogrid-scale (a clean cluster is expected)")?;
    eprintln!(
        "scale: {} nodes, {} deployments, {} edits, {} s idle",
        args.nodes, args.deployments, args.edits, args.idle
    );
    let baseline = baseline_daemonset(&client, args.nodes).await?;
    let profile = profile_daemonset(&client, &args).await?;
    let (mut hollow, hollow_report) = start_hollow(&client, &args).await?;
    let deployments = deployments(&client, &args).await?;
    let edits = weight_edits(&client, &args).await?;
    eprintln!(
        "scale: settling 30 s, then {} s with nothing changing",
        args.idle
    );
    tokio::time::sleep(Duration::from_secs(30)).await;
    let from = unix_now();
    tokio::time::sleep(Duration::from_secs(args.idle)).await;
    let to = unix_now();
    let idle = idle_requests(&args, from, to)?;
    let mut memory = serde_json::Map::new();
    for name in ["operator", "kube-apiserver", "etcd"] {
        memory.insert(name.into(), json!(rss_mib(fault::pid_of(name)?)?));
    }
    if let Some(pid) = hollow.id() {
        memory.insert("hollow_agents".into(), json!(rss_mib(pid)?));
    }
    eprintln!(
        "scale: resident memory (MiB) {}",
        Value::Object(memory.clone())
    );
    hollow.kill().await.ok();
    println!(
        "{}",
        json!({
            "nodes": args.nodes,
            // The bench is built with the operator and the agent it runs.
            "build": if cfg!(debug_assertions) { "debug" } else { "release" },
            "baseline_daemonset": baseline,
            "profile_daemonset": profile,
            "hollow": hollow_report,
            "reconcile": deployments,
            "weight_edit": edits,
            "idle": idle,
            "rss_mib": memory,
        })
    );
    Ok(())
}
