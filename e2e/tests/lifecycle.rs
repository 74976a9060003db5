//! The life of a GoGrid installation under stress, on the local real cluster:
//! - two operator replicas: one writer at a time (the API server's audit log
//!   says who wrote), the standby takes over within the lease bound;
//! - 100 InferenceDeployments created at once become Ready, then an idle
//!   cluster costs the API server no write of the operator's and only the
//!   agents' heartbeats;
//! - twice the sustainable rate: 429 with Retry-After, never a 5xx or a
//!   timeout, and the policy's minimum interval held;
//! - a deployment deleted mid-rollout, deleted while the operator is down,
//!   and `helm upgrade` of GoGrid mid-rollout: nothing lost, nothing left
//!   behind, the VRAM back to where it was.

use std::time::{Duration, Instant, SystemTime};

use futures::future::try_join_all;
use gogrid_crds::{GpuNode, InferenceDeployment, ResourceProfile};
use gogrid_e2e::fault::{self, assert_no_spec_writes, audit_writes, create_deployment, minilm};
use gogrid_e2e::openloop::{OpenLoop, Plan};
use gogrid_e2e::{
    TestNamespace, agent_nodes, client, ctl, helm, is_local_harness, release_namespace, repo_root,
    wait_for, wait_for_split,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(240);

macro_rules! skip_unless_local {
    () => {
        if !is_local_harness() {
            eprintln!("skipped: drives the local harness's processes");
            return Ok(());
        }
    };
}

async fn lease_holder(client: &kube::Client) -> anyhow::Result<Option<String>> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &release_namespace());
    Ok(leases
        .get_opt("gogrid-operator")
        .await?
        .and_then(|l| l.spec?.holder_identity))
}

async fn canary(
    client: &kube::Client,
    ns: &str,
    name: &str,
    weight: i32,
    nodes: usize,
) -> anyhow::Result<()> {
    create_deployment(
        client,
        ns,
        name,
        json!({"model": minilm(name, "v1")?,
               "rollout": {"strategy": "Canary", "canary": {"model": minilm(name, "v2")?, "weight": weight}}}),
    )
    .await?;
    wait_for_split(client, (ns, name), nodes, "v2", Some(weight), WAIT).await
}

#[tokio::test]
async fn two_operator_replicas_write_one_at_a_time_and_the_standby_takes_over() -> anyhow::Result<()>
{
    skip_unless_local!();
    let client = client().await?;
    let ns = TestNamespace::create(&client, "life-leader").await?;
    let nodes = agent_nodes(&client, "default").await?.len();
    anyhow::ensure!(
        lease_holder(&client).await?.as_deref() == Some("gogrid-operator-local-0"),
        "the harness's operator leads"
    );
    ctl(&["start", "operator-standby"])?.check("ctl.sh start operator-standby")?;
    let both = SystemTime::now();
    canary(&client, &ns.name, "two", 20, nodes).await?;
    let api: Api<InferenceDeployment> = Api::namespaced(client.clone(), &ns.name);
    for w in [40, 60] {
        api.patch(
            "two",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"rollout": {"canary": {"weight": w}}}})),
        )
        .await?;
        wait_for_split(&client, (&ns.name, "two"), nodes, "v2", Some(w), WAIT).await?;
    }
    let writes = |since| -> anyhow::Result<Vec<fault::AuditWrite>> {
        Ok(audit_writes(since)?
            .into_iter()
            .filter(|w| w.by_operator() && !w.is_review())
            .collect())
    };
    let while_both = writes(both)?;
    let by = |ws: &[fault::AuditWrite], who: &str| {
        ws.iter().filter(|w| w.user_agent.contains(who)).count()
    };
    let standby_state = while_both
        .iter()
        .filter(|w| w.user_agent.contains("gogrid-operator-local-1") && !w.is_lease())
        .count();
    assert!(
        by(&while_both, "gogrid-operator-local-0") > 0,
        "the leader wrote"
    );
    assert_eq!(
        standby_state, 0,
        "the standby wrote nothing but Lease attempts: {while_both:?}"
    );

    // The leader dies: the standby takes the Lease and is the only writer.
    ctl(&["kill", "operator"])?.check("ctl.sh kill operator")?;
    let killed = Instant::now();
    let takeover = wait_for("the standby holding the Lease", WAIT, || async {
        Ok(
            (lease_holder(&client).await?.as_deref() == Some("gogrid-operator-local-1"))
                .then(|| killed.elapsed()),
        )
    })
    .await?;
    let after = SystemTime::now();
    api.patch(
        "two",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"rollout": {"canary": {"weight": 80}}}})),
    )
    .await?;
    wait_for_split(&client, (&ns.name, "two"), nodes, "v2", Some(80), WAIT).await?;
    let after_takeover = writes(after)?;
    assert!(
        by(&after_takeover, "gogrid-operator-local-1") > 0,
        "the new leader wrote"
    );
    assert_eq!(
        by(&after_takeover, "gogrid-operator-local-0"),
        0,
        "the old leader is gone"
    );
    let leases: Api<Lease> = Api::namespaced(client.clone(), &release_namespace());
    let duration = leases
        .get("gogrid-operator")
        .await?
        .spec
        .and_then(|s| s.lease_duration_seconds)
        .unwrap_or(15);
    fault::report(
        "two-operators",
        &json!({"writes_while_both_ran": while_both.len(), "by_standby_besides_lease": standby_state,
                "takeover_ms": takeover.as_millis(), "lease_duration_seconds": duration}),
    )?;
    assert!(
        takeover <= Duration::from_secs(2 * u64::try_from(duration)?),
        "takeover in {takeover:?}, lease {duration} s"
    );

    // Back to one replica named as the harness expects.
    ctl(&["start", "operator"])?.check("ctl.sh start operator")?;
    ctl(&["stop", "operator-standby"])?.check("ctl.sh stop operator-standby")?;
    wait_for("the harness's operator leading again", WAIT, || async {
        Ok(
            (lease_holder(&client).await?.as_deref() == Some("gogrid-operator-local-0"))
                .then_some(()),
        )
    })
    .await?;
    assert_no_spec_writes(both)?;
    ns.cleanup(&client).await
}

#[tokio::test]
async fn a_hundred_deployments_become_ready_and_an_idle_cluster_writes_nothing()
-> anyhow::Result<()> {
    skip_unless_local!();
    let client = client().await?;
    let since = SystemTime::now();
    let tiny = std::env::var("GOGRID_MODEL_TINY")?;
    let ns = TestNamespace::create(&client, "life-hundred").await?;
    let created = Instant::now();
    try_join_all((0..100).map(|i| {
        let (client, ns, tiny) = (client.clone(), ns.name.clone(), tiny.clone());
        async move {
            let name = format!("t-{i:03}");
            create_deployment(
                &client,
                &ns,
                &name,
                json!({"placement": {"replicas": 1},
                       "model": {"name": name, "version": "v1", "format": "gguf",
                                 "task": "text-generation", "source": {"path": tiny}}}),
            )
            .await
        }
    }))
    .await?;
    let api: Api<InferenceDeployment> = Api::namespaced(client.clone(), &ns.name);
    let ready = wait_for("100 deployments Ready", WAIT, || async {
        let n = api
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|d| {
                d.status
                    .as_ref()
                    .is_some_and(|s| gogrid_crds::conditions::is_true(&s.conditions, "Ready"))
            })
            .count();
        Ok((n == 100).then(|| created.elapsed()))
    })
    .await?;
    // Let the last status and stats writes land, then watch an idle cluster.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let idle = fault::seconds_from_env("GOGRID_RELIABILITY_IDLE_SECONDS", 60);
    let idle_from = SystemTime::now();
    tokio::time::sleep(idle).await;
    let writes: Vec<fault::AuditWrite> = audit_writes(idle_from)?
        .into_iter()
        .filter(|w| w.at <= idle_from + idle)
        .collect();
    let operator: Vec<&fault::AuditWrite> = writes
        .iter()
        .filter(|w| w.by_operator() && !w.is_review() && !w.is_lease())
        .collect();
    let leases = writes
        .iter()
        .filter(|w| w.by_operator() && w.is_lease())
        .count();
    let nodes = agent_nodes(&client, "default").await?;
    let minutes = idle.as_secs_f64() / 60.0;
    let mut per_node = Vec::new();
    for n in &nodes {
        let count = writes
            .iter()
            .filter(|w| w.by_agent() && w.resource == "gpunodes" && w.name == *n)
            .count();
        per_node.push(
            json!({"node": n, "gpunode_writes": count, "per_minute": count as f64 / minutes}),
        );
        // Heartbeats every 30 s, nothing else while idle.
        assert!(
            count as f64 <= (idle.as_secs_f64() / 30.0).ceil() + 1.0,
            "agent of {n} wrote {count} GpuNode statuses in {idle:?} of idle"
        );
    }
    fault::report(
        "hundred-deployments-idle",
        &json!({"deployments": 100, "all_ready_ms": ready.as_millis(), "idle_seconds": idle.as_secs(),
                "operator_writes_while_idle": operator.len(), "operator_lease_renewals": leases,
                "agents": per_node}),
    )?;
    assert!(
        operator.is_empty(),
        "the operator wrote while nothing changed: {operator:?}"
    );
    assert_no_spec_writes(since)?;
    ns.cleanup_and_wait(&client).await
}

/// Admitted batches of every GPU of the agent at `url`.
fn admitted(url: &str) -> anyhow::Result<f64> {
    let text = gogrid_e2e::scrape(url)?;
    Ok(text
        .lines()
        .filter(|l| {
            l.starts_with("gogrid_agent_admissions_total{") && l.contains("outcome=\"admitted\"")
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum())
}

#[tokio::test]
async fn twice_the_sustainable_rate_gets_429_with_retry_after_and_no_error() -> anyhow::Result<()> {
    skip_unless_local!();
    let client = client().await?;
    let ns = TestNamespace::create(&client, "life-overload").await?;
    let nodes = agent_nodes(&client, "default").await?;
    // The policy in force bounds the rate: one item per batch, 250 ms apart.
    let interval_ms = 250u64;
    let profiles: Api<ResourceProfile> = Api::all(client.clone());
    let tighten = json!({"spec": {"throttle": {"minRequestIntervalMs": interval_ms}, "batching": {"maxBatchSize": 1}}});
    profiles
        .patch("default", &PatchParams::default(), &Patch::Merge(&tighten))
        .await?;
    let result = async {
        let gpunodes: Api<GpuNode> = Api::all(client.clone());
        wait_for("every agent under the tighter policy", WAIT, || async {
            let all = gpunodes.list(&ListParams::default()).await?.items;
            let n = all
                .iter()
                .filter_map(|g| g.status.as_ref()?.policy.as_ref())
                .filter(|p| {
                    u64::from(p.min_request_interval_ms) == interval_ms && p.max_batch_size == 1
                })
                .count();
            Ok((n >= nodes.len()).then_some(()))
        })
        .await?;
        create_deployment(
            &client,
            &ns.name,
            "over",
            json!({"model": minilm("over", "v1")?}),
        )
        .await?;
        wait_for("the model ready everywhere", WAIT, || async {
            let p = gogrid_e2e::pipelines_of(&client, &ns.name, "over", "v1").await?;
            Ok((p.len() == nodes.len() && p.iter().all(|p| p.ready)).then_some(()))
        })
        .await?;
        let sustainable = nodes.len() as f64 * 1000.0 / interval_ms as f64;
        let mut urls = Vec::new();
        for n in &nodes {
            urls.push(fault::metrics_url_of(&client, n).await?);
        }
        let before: Vec<f64> = urls
            .iter()
            .map(|u| admitted(u))
            .collect::<anyhow::Result<_>>()?;
        let seconds = 30.0;
        let load = OpenLoop::start(
            &client,
            Plan::embedding(&ns.name, "over", "over", 2.0 * sustainable),
        )
        .await?;
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        let report = load.finish().await;
        let elapsed = started.elapsed().as_secs_f64();
        let after: Vec<f64> = urls
            .iter()
            .map(|u| admitted(u))
            .collect::<anyhow::Result<_>>()?;
        let c = report.counts();
        let per_agent: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        fault::report(
            "overload",
            &json!({"load": report.summary(), "sustainable_per_second": sustainable,
                    "min_request_interval_ms": interval_ms, "admitted_batches_per_agent": per_agent,
                    "ok_per_second": c.ok as f64 / elapsed}),
        )?;
        assert!(
            c.throttled > 0,
            "twice the sustainable rate is throttled: {c:?}"
        );
        assert_eq!(
            c.throttled_without_retry_after, 0,
            "every 429 says when to retry"
        );
        assert_eq!(
            (c.server_errors, c.transport, c.timeouts, c.missing),
            (0, 0, 0, 0),
            "{c:?}"
        );
        // The interval held on every agent: no more batches than the policy allows
        // in the time the load ran (plus the one at the start).
        let most = elapsed * 1000.0 / interval_ms as f64 + 2.0;
        for (n, a) in nodes.iter().zip(&per_agent) {
            assert!(
                *a <= most,
                "agent of {n} admitted {a} batches in {elapsed:.1} s, at most {most:.0}"
            );
        }
        anyhow::Ok(())
    }
    .await;
    let restore = json!({"spec": {"throttle": {"minRequestIntervalMs": null}, "batching": {"maxBatchSize": null}}});
    profiles
        .patch("default", &PatchParams::default(), &Patch::Merge(&restore))
        .await?;
    result?;
    ns.cleanup(&client).await
}

/// VRAM reserved on each agent's node, by node.
async fn vram_used(client: &kube::Client) -> anyhow::Result<Vec<(String, i64)>> {
    let api: Api<GpuNode> = Api::all(client.clone());
    let mut out: Vec<(String, i64)> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|g| {
            let name = g.metadata.name.clone()?;
            Some((name, g.status?.budget?.vram_used_bytes))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Nothing of deployment `name` left: no Service, EndpointSlice or
/// ServiceMonitor in `ns`, no pipeline on any agent, and the VRAM as before.
async fn wait_clean(
    client: &kube::Client,
    ns: &str,
    name: &str,
    baseline: &[(String, i64)],
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), ns);
    let monitors: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            "monitoring.coreos.com",
            "v1",
            "ServiceMonitor",
        )),
    );
    wait_for(&format!("nothing of {ns}/{name} left"), WAIT, || async {
        let left = services.list(&ListParams::default()).await?.items.len()
            + slices.list(&ListParams::default()).await?.items.len()
            + monitors.list(&ListParams::default()).await?.items.len();
        let mut loaded = 0;
        for v in ["v1", "v2"] {
            loaded += gogrid_e2e::pipelines_of(client, ns, name, v).await?.len();
        }
        let vram = vram_used(client).await?;
        Ok((left == 0 && loaded == 0 && vram == baseline).then(|| started.elapsed()))
    })
    .await
}

#[tokio::test]
async fn deleted_mid_rollout_or_with_the_operator_down_or_upgraded_nothing_is_left_behind()
-> anyhow::Result<()> {
    skip_unless_local!();
    let client = client().await?;
    let since = SystemTime::now();
    let nodes = agent_nodes(&client, "default").await?.len();
    let baseline = vram_used(&client).await?;
    let mut figures = serde_json::Map::new();

    // Deleted mid-rollout.
    let ns = TestNamespace::create(&client, "life-delete").await?;
    canary(&client, &ns.name, "gone", 30, nodes).await?;
    Api::<InferenceDeployment>::namespaced(client.clone(), &ns.name)
        .delete("gone", &DeleteParams::default())
        .await?;
    let t = wait_clean(&client, &ns.name, "gone", &baseline).await?;
    figures.insert("deleted_mid_rollout_clean_ms".into(), json!(t.as_millis()));
    ns.cleanup(&client).await?;

    // Deleted while the operator is down: the agents unload it by themselves,
    // the garbage collector takes its children, the operator brings nothing back.
    let ns = TestNamespace::create(&client, "life-delete-down").await?;
    canary(&client, &ns.name, "gone", 30, nodes).await?;
    ctl(&["stop", "operator"])?.check("ctl.sh stop operator")?;
    Api::<InferenceDeployment>::namespaced(client.clone(), &ns.name)
        .delete("gone", &DeleteParams::default())
        .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    ctl(&["start", "operator"])?.check("ctl.sh start operator")?;
    let t = wait_clean(&client, &ns.name, "gone", &baseline).await?;
    figures.insert(
        "deleted_with_operator_down_clean_ms".into(),
        json!(t.as_millis()),
    );
    ns.cleanup(&client).await?;

    // `helm upgrade` of GoGrid in the middle of a stepped rollout under load.
    let ns = TestNamespace::create(&client, "life-upgrade").await?;
    canary(&client, &ns.name, "up", 0, nodes).await?;
    let api: Api<InferenceDeployment> = Api::namespaced(client.clone(), &ns.name);
    api.patch(
        "up",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"rollout": {"canary": {"steps": [
        {"weight": 25, "pauseSeconds": 86400}]}}}})),
    )
    .await?;
    wait_for_split(&client, (&ns.name, "up"), nodes, "v2", Some(25), WAIT).await?;
    let load = OpenLoop::start(&client, Plan::embedding(&ns.name, "up", "up", 10.0)).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let chart = repo_root().join("charts/gogrid");
    helm(&[
        "upgrade",
        "gogrid",
        &chart.display().to_string(),
        "-n",
        &release_namespace(),
        "--reuse-values",
        "--set",
        "operator.logLevel=debug",
        "--wait=false",
    ])?
    .check("helm upgrade")?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let step = api
        .get("up")
        .await?
        .status
        .and_then(|s| s.rollout)
        .and_then(|r| r.step);
    wait_for_split(&client, (&ns.name, "up"), nodes, "v2", Some(25), WAIT).await?;
    let report = load.finish().await;
    assert_eq!(
        step,
        Some(0),
        "the rollout is where it was after the upgrade"
    );
    assert_eq!(
        report.counts().lost,
        0,
        "lost requests: {:?}",
        report.lost()
    );
    figures.insert("helm_upgrade_load".into(), report.summary());
    api.delete("up", &DeleteParams::default()).await?;
    let t = wait_clean(&client, &ns.name, "up", &baseline).await?;
    figures.insert(
        "upgraded_then_deleted_clean_ms".into(),
        json!(t.as_millis()),
    );
    ns.cleanup(&client).await?;
    helm(&[
        "upgrade",
        "gogrid",
        &chart.display().to_string(),
        "-n",
        &release_namespace(),
        "--reuse-values",
        "--set",
        "operator.logLevel=info",
        "--wait=false",
    ])?
    .check("helm upgrade back")?;
    fault::report("delete-and-upgrade", &serde_json::Value::Object(figures))?;
    assert_no_spec_writes(since)?;
    Ok(())
}
