//! How long a rollout edit takes to reach every agent, on the running e2e
//! cluster (hack/bench-propagation.sh brings one up at 1, 10 and 100 nodes).
//!
//! Every agent of the `default` profile loads a tiny model in two versions.
//! Then, `--edits` times, the canary weight is patched at the API server and
//! a GpuNode watch times the moment each agent reports the new weight in
//! force: the time to the last agent is one sample. Then `--switches`
//! blue-green promotions and rollbacks are timed the same way. Each agent's
//! own figure, from the deployment change reaching it to the split routing
//! (`gogrid_agent_split_apply_seconds`), is read from its /metrics before
//! and after. One JSON object on stdout; progress on stderr.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use futures::StreamExt as _;
use gogrid_crds::{GpuNode, InferenceDeployment};
use gogrid_e2e::bench::{arg, bucket_quantiles, buckets, summary, unix_now};
use gogrid_e2e::{TestNamespace, agent_nodes, client, wait_for_split};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};

const NAME: &str = "propagation";
const WAIT: Duration = Duration::from_secs(600);

/// When each node was last seen reporting each weight of v2.
type Seen = Arc<Mutex<BTreeMap<String, (i32, Instant)>>>;

/// Waits until every one of `nodes` reports weight `w` for v2 at or after
/// `since`; returns each node's delay.
async fn reached(
    seen: &Seen,
    nodes: &[String],
    w: i32,
    since: Option<Instant>,
) -> anyhow::Result<Vec<f64>> {
    let deadline = Instant::now() + WAIT;
    let start = Instant::now();
    loop {
        let delays: Option<Vec<f64>> = {
            let seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            nodes
                .iter()
                .map(|n| {
                    seen.get(n)
                        .filter(|(weight, at)| *weight == w && since.is_none_or(|s| *at >= s))
                        .map(|(_, at)| {
                            at.duration_since(since.unwrap_or(start)).as_secs_f64() * 1e3
                        })
                })
                .collect()
        };
        if let Some(d) = delays {
            return Ok(d);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "agents did not all reach {w}% in {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The agents' `gogrid_agent_split_apply_seconds` buckets, summed: `le` -> count.
async fn split_apply_buckets(client: &kube::Client) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut sum = BTreeMap::new();
    for url in metrics_urls(client).await? {
        let scraped = gogrid_e2e::scrape(&url)?;
        for (le, n) in buckets(&scraped, "gogrid_agent_split_apply_seconds", &[]) {
            *sum.entry(le).or_insert(0.0) += n;
        }
    }
    Ok(sum)
}

/// Each agent's /metrics URL, from its GpuNode.
async fn metrics_urls(client: &kube::Client) -> anyhow::Result<Vec<String>> {
    let api: Api<GpuNode> = Api::all(client.clone());
    Ok(api
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|g| g.status?.agent)
        .map(|a| format!("http://{}:{}/metrics", a.pod_ip, a.metrics_port))
        .collect())
}

/// One timed edit: when each agent applied it (its
/// `gogrid_agent_split_applied_timestamp_seconds`, same clock: every agent
/// runs on this machine) and when each reported it in its GpuNode.
struct Timed {
    applied: Vec<f64>,
    reported: Vec<f64>,
}

impl Timed {
    fn applied_all(&self) -> f64 {
        self.applied.iter().copied().fold(0.0, f64::max)
    }
    fn reported_all(&self) -> f64 {
        self.reported.iter().copied().fold(0.0, f64::max)
    }
}

struct Edit<'a> {
    api: &'a Api<InferenceDeployment>,
    seen: &'a Seen,
    nodes: &'a [String],
    agents: &'a [String],
    http: &'a Client<HttpConnector, Full<Bytes>>,
    namespace: &'a str,
}

impl Edit<'_> {
    async fn timed(&self, change: Value, weight: i32) -> anyhow::Result<Timed> {
        let wall = unix_now();
        let t0 = Instant::now();
        self.api
            .patch(NAME, &PatchParams::default(), &Patch::Merge(&change))
            .await?;
        let reported = reached(self.seen, self.nodes, weight, Some(t0)).await?;
        // An agent reports a split after applying it: every timestamp is set.
        let wanted = format!(
            "gogrid_agent_split_applied_timestamp_seconds{{namespace=\"{}\",deployment=\"{NAME}\"}} ",
            self.namespace
        );
        let wanted = wanted.as_str();
        let scrapes = self.agents.iter().map(|url| async move {
            let uri: http::Uri = url.parse()?;
            let body = self
                .http
                .get(uri)
                .await?
                .into_body()
                .collect()
                .await?
                .to_bytes();
            let text = String::from_utf8_lossy(&body).into_owned();
            let at: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix(wanted))
                .with_context(|| format!("{url}: no split_applied_timestamp for {NAME}"))?
                .trim()
                .parse()?;
            anyhow::Ok((at - wall) * 1e3)
        });
        let applied = futures::future::try_join_all(scrapes).await?;
        Ok(Timed { applied, reported })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let model = arg("--model", "");
    anyhow::ensure!(
        !model.is_empty(),
        "--model PATH (a GGUF file every agent can read) is required"
    );
    let edits: usize = arg("--edits", "40").parse().context("--edits")?;
    let switches: usize = arg("--switches", "10").parse().context("--switches")?;
    let client = client().await?;
    let nodes = agent_nodes(&client, "default").await?;
    anyhow::ensure!(!nodes.is_empty(), "no agents of the default profile");
    let ns = TestNamespace::create(&client, "propagation").await?;
    let report = measure(&client, &ns.name, &nodes, &model, edits, switches).await;
    ns.cleanup(&client).await?;
    println!("{}", report?);
    Ok(())
}

async fn measure(
    client: &kube::Client,
    namespace: &str,
    nodes: &[String],
    model: &str,
    edits: usize,
    switches: usize,
) -> anyhow::Result<Value> {
    let n = nodes.len();
    let client = client.clone();
    let version = |v: &str| json!({"name": NAME, "version": v, "format": "gguf", "task": "text-generation", "source": {"path": model}});
    let api: Api<InferenceDeployment> = Api::namespaced(client.clone(), namespace);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "gogrid.io/v1alpha1", "kind": "InferenceDeployment",
            "metadata": {"name": NAME},
            "spec": {"profile": "default", "model": version("v1"),
                     "rollout": {"strategy": "Canary", "canary": {"model": version("v2"), "weight": 0}}}
        }))?,
    )
    .await?;
    eprintln!("propagation: waiting for {n} agents to load both versions");
    let key = (namespace, NAME);
    wait_for_split(&client, key, n, "v2", Some(0), WAIT).await?;

    let seen: Seen = Arc::default();
    let watch = {
        let (seen, gpunodes, ns) = (
            seen.clone(),
            Api::<GpuNode>::all(client.clone()),
            namespace.to_owned(),
        );
        tokio::spawn(async move {
            let mut events = watcher(gpunodes, watcher::Config::default()).boxed();
            while let Some(event) = events.next().await {
                let objects = match event {
                    Ok(watcher::Event::Apply(g) | watcher::Event::InitApply(g)) => vec![g],
                    _ => continue,
                };
                let now = Instant::now();
                for g in objects {
                    let node = g.metadata.name.clone().unwrap_or_default();
                    let weight = g
                        .status
                        .as_ref()
                        .and_then(|s| s.pipeline(&ns, NAME, "v2"))
                        .filter(|p| p.ready)
                        .map(|p| p.weight);
                    if let (Some(w), Ok(mut seen)) = (weight, seen.lock())
                        && seen.get(&node).is_none_or(|(old, _)| *old != w)
                    {
                        seen.insert(node, (w, now));
                    }
                }
            }
        })
    };
    let before = split_apply_buckets(&client).await?;
    let agents = metrics_urls(&client).await?;
    let http: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let edit = Edit {
        api: &api,
        seen: &seen,
        nodes,
        agents: &agents,
        http: &http,
        namespace,
    };
    let (mut applied, mut applied_each, mut reported) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..edits {
        // Never the weight in force: 5, 10 ... 95, 5 ...
        let w = 5 + (i as i32 * 5) % 95;
        let t = edit
            .timed(json!({"spec": {"rollout": {"canary": {"weight": w}}}}), w)
            .await?;
        eprintln!(
            "propagation: edit {}/{edits} to {w}%: applied on every agent after {:.0} ms, reported after {:.0} ms",
            i + 1,
            t.applied_all(),
            t.reported_all()
        );
        applied.push(t.applied_all());
        reported.push(t.reported_all());
        applied_each.extend(t.applied);
    }
    let after_edits = split_apply_buckets(&client).await?;

    // Blue-green: v2 (already loaded) becomes the preview, then switches.
    api.patch(
        NAME,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"rollout": {"strategy": "BlueGreen", "canary": null,
            "blueGreen": {"preview": {"model": version("v2")}, "scaleDownDelaySeconds": 3600}}}}),
        ),
    )
    .await?;
    reached(&seen, nodes, 0, None).await?;
    let (mut switched, mut switched_reported) = (Vec::new(), Vec::new());
    for i in 0..switches {
        let promote = i % 2 == 0;
        let t = edit
            .timed(
                json!({"spec": {"rollout": {"blueGreen": {"promote": promote}}}}),
                if promote { 100 } else { 0 },
            )
            .await?;
        eprintln!(
            "propagation: switch {}/{switches} ({}): applied on every agent after {:.0} ms, reported after {:.0} ms",
            i + 1,
            if promote { "promote" } else { "rollback" },
            t.applied_all(),
            t.reported_all()
        );
        switched.push(t.applied_all());
        switched_reported.push(t.reported_all());
    }
    let after_switches = split_apply_buckets(&client).await?;
    watch.abort();
    Ok(json!({
            "nodes": n,
            "weight_edit_to_all_agents": summary(applied),
            "weight_edit_to_each_agent": summary(applied_each),
            "weight_edit_reported_by_all_agents": summary(reported),
            "blue_green_switch_to_all_agents": summary(switched),
            "blue_green_switch_reported_by_all_agents": summary(switched_reported),
            "agent_split_apply_weight_edits": bucket_quantiles(&before, &after_edits),
            "agent_split_apply_switches": bucket_quantiles(&after_edits, &after_switches),
    }))
}
