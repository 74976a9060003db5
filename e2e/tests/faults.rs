//! Faults injected on the local real cluster under an open-loop load
//! (e2e/src/openloop.rs: a fixed rate, each request sent once and accounted
//! for, every few one a long generation so that something is always in
//! flight), on SmolLM2 deployed as v1 with a canary v2:
//! - an agent stopped with SIGTERM: it goes unready, leaves the
//!   EndpointSlices, finishes what it has, exits; nothing is lost;
//! - an agent killed with SIGKILL: only what it had in flight is lost, and
//!   after its restart it routes the same split;
//! - the operator killed mid-rollout: nothing lost, the rollout resumes at
//!   the same step, no agent loads a model twice;
//! - kube-apiserver down 10 s and 60 s; etcd compacted and restarted while
//!   GoGrid's watches are cut (they come back to 410 Gone); every connection
//!   of GoGrid's to the API server cut every 30 s for minutes: no crash, no
//!   missed delete, converged after the last change, and the audit log shows
//!   no write of GoGrid's to any spec.
//!
//! Each test writes its figures with the rate they were measured at
//! (`fault::report`; hack/reliability.sh collects them in docs/reliability.md).

use std::time::{Duration, Instant, SystemTime};

use gogrid_crds::InferenceDeployment;
use gogrid_e2e::fault::{
    self, agent_process, assert_no_spec_writes, deploy_llm_canary, endpoint_of, exited, processes,
    split_holds,
};
use gogrid_e2e::openloop::{OpenLoop, Outcome, Plan};
use gogrid_e2e::{
    TestNamespace, agent_nodes, client, ctl, is_local_harness, wait_for, wait_for_split,
};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(240);

/// The load: requests per second, every how many one is slow, and how many
/// tokens a slow one generates (2 s and more on SmolLM2 here).
fn plan(ns: &str, name: &str) -> Plan {
    let rate = std::env::var("GOGRID_RELIABILITY_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2.0);
    Plan::generation(ns, name, name, rate, 10, 64)
}

macro_rules! skip_unless_local {
    () => {
        if !is_local_harness() {
            eprintln!("skipped: injects faults into the local harness's processes");
            return Ok(());
        }
    };
}

async fn weight_everywhere(
    client: &kube::Client,
    (ns, name): (&str, &str),
    nodes: usize,
    weight: i32,
) -> anyhow::Result<()> {
    wait_for_split(client, (ns, name), nodes, "v2", Some(weight), WAIT).await
}

async fn set_weight(api: &Api<InferenceDeployment>, name: &str, weight: i32) -> anyhow::Result<()> {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"rollout": {"canary": {"weight": weight}}}})),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn an_agent_stopped_with_sigterm_under_load_loses_no_request() -> anyhow::Result<()> {
    skip_unless_local!();
    let client = client().await?;
    let since = SystemTime::now();
    let ns = TestNamespace::create(&client, "rel-term").await?;
    // Named after the namespace: a model name is served once per node, so a
    // run left behind by a failed test does not stand in the way.
    let name = ns.name.clone();
    let name = name.as_str();
    let nodes = agent_nodes(&client, "default").await?;
    deploy_llm_canary(&client, &ns.name, name, 30, nodes.len(), WAIT).await?;
    let load = OpenLoop::start(&client, plan(&ns.name, name)).await?;
    tokio::time::sleep(Duration::from_secs(10)).await;

    let node = &nodes[1];
    let endpoint = endpoint_of(&client, node).await?;
    let (pid, _) = agent_process(node)?;
    // At 2 requests a second the load alone may have nothing on this agent
    // at the signal: one slow generation sent to it just before makes sure
    // the drain has a request to finish.
    let probe = load.probe(endpoint);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let signalled = Instant::now();
    ctl(&["term", "agent", node])?.check("ctl.sh term agent")?;
    let left = wait_for("the agent leaving the EndpointSlices", WAIT, || async {
        Ok((!load.endpoints().contains(&endpoint)).then(|| signalled.elapsed()))
    })
    .await?;
    let gone = wait_for("the agent exiting", WAIT, || async {
        Ok(exited(pid).then(|| signalled.elapsed()))
    })
    .await?;
    wait_for(
        "the restarted agent back in the EndpointSlices",
        WAIT,
        || async { Ok(load.endpoints().contains(&endpoint).then_some(())) },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let report = load.finish().await;
    let probe = probe.await?;

    let in_flight: Vec<_> = report
        .records
        .iter()
        .chain(std::iter::once(&probe))
        .filter(|r| r.in_flight_at(signalled, endpoint))
        .collect();
    let counts = report.counts();
    fault::report(
        "agent-sigterm",
        &json!({"load": report.summary(), "in_flight_at_signal": in_flight.len(),
                "in_flight_answered": in_flight.iter().filter(|r| r.outcome == Outcome::Ok).count(),
                "in_flight_throttled": in_flight.iter().filter(|r| matches!(r.outcome, Outcome::Throttled(Some(_)))).count(),
                "left_endpointslices_ms": left.as_millis(), "exited_ms": gone.as_millis()}),
    )?;
    assert_eq!(counts.lost, 0, "lost requests: {:?}", report.lost());
    assert!(
        !in_flight.is_empty(),
        "nothing was in flight on the agent at SIGTERM"
    );
    // Each one is answered: served, or (a request that waited its 10 s in
    // the queue behind the slow ones) 429 with Retry-After, as at any time;
    // never cut off by the exit.
    assert!(
        in_flight
            .iter()
            .all(|r| r.outcome == Outcome::Ok || matches!(r.outcome, Outcome::Throttled(Some(_)))),
        "what the agent had in flight was answered: {in_flight:?}"
    );
    assert!(
        in_flight.iter().any(|r| r.outcome == Outcome::Ok),
        "the drain served none of what it had in flight: {in_flight:?}"
    );
    assert!(
        counts.slow_over_2s > 0,
        "slow requests took 2 s and more: {counts:?}"
    );
    assert_no_spec_writes(since)?;
    ns.cleanup(&client).await
}

#[tokio::test]
async fn an_agent_killed_loses_only_what_it_had_in_flight_and_routes_the_same_split_after()
-> anyhow::Result<()> {
    skip_unless_local!();
    let client = client().await?;
    let since = SystemTime::now();
    let ns = TestNamespace::create(&client, "rel-kill").await?;
    // Named after the namespace: a model name is served once per node, so a
    // run left behind by a failed test does not stand in the way.
    let name = ns.name.clone();
    let name = name.as_str();
    let nodes = agent_nodes(&client, "default").await?;
    deploy_llm_canary(&client, &ns.name, name, 30, nodes.len(), WAIT).await?;
    let load = OpenLoop::start(&client, plan(&ns.name, name)).await?;
    tokio::time::sleep(Duration::from_secs(10)).await;

    let node = &nodes[2];
    let endpoint = endpoint_of(&client, node).await?;
    let (pid, _) = agent_process(node)?;
    let killed = Instant::now();
    ctl(&["kill", "agent", node])?.check("ctl.sh kill agent")?;
    wait_for("the supervisor restarting the agent", WAIT, || async {
        Ok(agent_process(node)
            .ok()
            .filter(|(p, _)| *p != pid)
            .map(|_| ()))
    })
    .await?;
    // Ready again: the new process reports both versions routing the split.
    let back = wait_for("the restarted agent reporting the split", WAIT, || async {
        let api: Api<gogrid_crds::GpuNode> = Api::all(client.clone());
        let s = api.get(node).await?.status;
        let ready = s.as_ref().is_some_and(|s| {
            s.heartbeat_time
                .as_ref()
                .is_some_and(|t| SystemTime::from(t.0) > SystemTime::now() - killed.elapsed())
                && s.pipeline(&ns.name, name, "v2")
                    .is_some_and(|p| p.ready && p.weight == 30)
        });
        Ok(ready.then(Instant::now))
    })
    .await?;
    let after = load.wait_done_after(back, 120, WAIT).await?;
    let report = load.finish().await;

    let lost = report.lost();
    let in_flight = report
        .records
        .iter()
        .filter(|r| r.in_flight_at(killed, endpoint))
        .count();
    let counts = report.counts();
    // The split is a weighted random choice per request: allow four standard
    // deviations of the binomial (a restart that lost the split routes 0% or
    // 100%, far outside).
    let answered = after.iter().filter(|r| r.outcome == Outcome::Ok).count() as f64;
    let sigma = (answered * 0.3 * 0.7).sqrt();
    let split_after = split_holds(
        &after,
        "v2",
        30,
        (nodes.len() + 4).max((4.0 * sigma).ceil() as usize),
    );
    fault::report(
        "agent-sigkill",
        &json!({"load": report.summary(), "in_flight_at_kill": in_flight, "lost": lost.len(),
                "restart_to_ready_ms": back.duration_since(killed).as_millis(),
                "split_after_restart": split_after.as_ref().err()}),
    )?;
    assert!(
        lost.iter().all(|r| r.in_flight_at(killed, endpoint)),
        "a lost request was not in flight on the killed agent: {lost:?}"
    );
    split_after.map_err(|e| anyhow::anyhow!("after the restart: {e}"))?;
    assert!(counts.transport + counts.server_errors == lost.len());
    // A restarted agent binds its servers only once its GpuNode says it
    // serves nothing yet: no 404 from it while the slices still list it.
    assert_eq!(
        counts.client_errors,
        0,
        "{:?}",
        report
            .records
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::ClientError(_)))
            .collect::<Vec<_>>()
    );
    assert_no_spec_writes(since)?;
    ns.cleanup(&client).await
}

#[tokio::test]
async fn an_operator_killed_mid_rollout_resumes_at_the_same_step_and_loses_nothing()
-> anyhow::Result<()> {
    skip_unless_local!();
    let client = client().await?;
    let since = SystemTime::now();
    let ns = TestNamespace::create(&client, "rel-operator").await?;
    // Named after the namespace: a model name is served once per node, so a
    // run left behind by a failed test does not stand in the way.
    let name = ns.name.clone();
    let name = name.as_str();
    let nodes = agent_nodes(&client, "default").await?;
    let n = nodes.len();
    deploy_llm_canary(&client, &ns.name, name, 0, n, WAIT).await?;
    let api: Api<InferenceDeployment> = Api::namespaced(client.clone(), &ns.name);
    let load = OpenLoop::start(&client, plan(&ns.name, name)).await?;
    // Steps: 20% for 20 s, 50% for 25 s, 80% until promoted by hand.
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"rollout": {"canary": {"steps": [
            {"weight": 20, "pauseSeconds": 20}, {"weight": 50, "pauseSeconds": 25},
            {"weight": 80, "pauseSeconds": 86400}]}}}})),
    )
    .await?;
    let state = |api: Api<InferenceDeployment>| async move {
        let r = api.get(name).await?.status.and_then(|s| s.rollout);
        anyhow::Ok(r.map(|r| (r.step, r.since)))
    };
    let (step, started) = wait_for("the rollout at its second step", WAIT, || async {
        Ok(state(api.clone()).await?.filter(|(s, _)| *s == Some(1)))
    })
    .await?;
    weight_everywhere(&client, (&ns.name, name), n, 50).await?;
    let loads_before = fault::loads(&client, &nodes, (&ns.name, name), "v2").await?;

    let operator = fault::pid_of("operator")?;
    ctl(&["kill", "operator"])?.check("ctl.sh kill operator")?;
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    ctl(&["start", "operator"])?.check("ctl.sh start operator")?;
    anyhow::ensure!(
        fault::pid_of("operator")? != operator,
        "a new operator runs"
    );
    // The new operator resumes the step from status: same step, same start.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let resumed = state(api.clone()).await?;
    assert_eq!(
        resumed,
        Some((step, started.clone())),
        "the rollout resumes where it was"
    );
    let advanced = wait_for("the rollout advancing to its third step", WAIT, || async {
        Ok(state(api.clone())
            .await?
            .filter(|(s, _)| *s == Some(2))
            .map(|_| killed.elapsed()))
    })
    .await?;
    weight_everywhere(&client, (&ns.name, name), n, 80).await?;
    let loads_after = fault::loads(&client, &nodes, (&ns.name, name), "v2").await?;
    let report = load.finish().await;
    let counts = report.counts();
    fault::report(
        "operator-sigkill-mid-rollout",
        &json!({"load": report.summary(), "step_at_kill": step, "resumed": resumed.map(|r| r.0),
                "next_step_after_kill_ms": advanced.as_millis(),
                "v2_loads_per_agent": loads_after}),
    )?;
    assert_eq!(counts.lost, 0, "lost requests: {:?}", report.lost());
    assert!(
        loads_before.iter().all(|l| *l == 1.0),
        "each agent loaded v2 once: {loads_before:?}"
    );
    assert_eq!(
        loads_after, loads_before,
        "no agent loaded v2 again after the operator restart"
    );
    assert_no_spec_writes(since)?;
    ns.cleanup(&client).await
}

/// After a control-plane fault: a deployment deleted and a weight edited,
/// both must be seen by every agent (no missed delete), and how long that
/// took from the change.
async fn changes_converge(
    client: &kube::Client,
    (ns, name): (&str, &str),
    doomed: &str,
    weight: i32,
    nodes: usize,
) -> anyhow::Result<Duration> {
    let changed = Instant::now();
    let api: Api<InferenceDeployment> = Api::namespaced(client.clone(), ns);
    api.delete(doomed, &DeleteParams::default()).await?;
    set_weight(&api, name, weight).await?;
    weight_everywhere(client, (ns, name), nodes, weight).await?;
    wait_for_split(client, (ns, doomed), nodes, "v1", None, WAIT).await?;
    Ok(changed.elapsed())
}

async fn deploy_doomed(
    client: &kube::Client,
    ns: &str,
    name: &str,
    nodes: usize,
) -> anyhow::Result<()> {
    fault::create_deployment(
        client,
        ns,
        name,
        json!({"model": fault::minilm(name, "v1")?}),
    )
    .await?;
    gogrid_e2e::wait_for(
        "the deployment to delete later loaded everywhere",
        WAIT,
        || async {
            let p = gogrid_e2e::pipelines_of(client, ns, name, "v1").await?;
            Ok((p.len() == nodes && p.iter().all(|p| p.ready)).then_some(()))
        },
    )
    .await
}

#[tokio::test]
async fn the_api_server_down_10_s_and_60_s_costs_no_request_and_no_crash() -> anyhow::Result<()> {
    skip_unless_local!();
    let client = client().await?;
    let since = SystemTime::now();
    let ns = TestNamespace::create(&client, "rel-apiserver").await?;
    // Named after the namespace: a model name is served once per node, so a
    // run left behind by a failed test does not stand in the way.
    let name = ns.name.clone();
    let name = name.as_str();
    let nodes = agent_nodes(&client, "default").await?;
    let n = nodes.len();
    deploy_llm_canary(&client, &ns.name, name, 30, n, WAIT).await?;
    let load = OpenLoop::start(&client, plan(&ns.name, name)).await?;
    let mut figures = Vec::new();
    for (i, down) in [10u64, 60].into_iter().enumerate() {
        let doomed = format!("{name}-d{i}");
        deploy_doomed(&client, &ns.name, &doomed, n).await?;
        let before = processes(&nodes)?;
        ctl(&["stop", "apiserver"])?.check("ctl.sh stop apiserver")?;
        tokio::time::sleep(Duration::from_secs(down)).await;
        ctl(&["start", "apiserver"])?.check("ctl.sh start apiserver")?;
        let client = gogrid_e2e::client().await?;
        let converged =
            changes_converge(&client, (&ns.name, name), &doomed, 40 + 20 * i as i32, n).await?;
        let after = processes(&nodes)?;
        assert_eq!(
            before, after,
            "no process of GoGrid restarted (no crash, no crash loop)"
        );
        figures.push(
            json!({"down_seconds": down, "converged_after_change_ms": converged.as_millis()}),
        );
    }
    let report = load.finish().await;
    let counts = report.counts();
    fault::report(
        "apiserver-down",
        &json!({"load": report.summary(), "outages": figures}),
    )?;
    assert_eq!(counts.lost, 0, "lost requests: {:?}", report.lost());
    assert_no_spec_writes(since)?;
    ns.cleanup(&client).await
}

/// Opens the API proxy again when dropped, so that a failing test does not
/// leave GoGrid cut off for the tests after it.
struct Unblock;

impl Drop for Unblock {
    fn drop(&mut self) {
        let _ = ctl(&["proxy", "unblock"]);
    }
}

/// etcd's current revision and a compaction up to it, through etcd's HTTP
/// gateway (the harness's etcd listens on loopback in the control plane's
/// network namespace, where the tests run).
fn compact_etcd() -> anyhow::Result<i64> {
    let post = |path: &str, body: &str| -> anyhow::Result<serde_json::Value> {
        let out = std::process::Command::new("curl")
            .args(["-sSf", "--max-time", "30", "-X", "POST", "-d", body])
            .arg(format!("http://127.0.0.1:2379{path}"))
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "etcd {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    // key "\0" (base64 AA==), range_end "\0": every key; count only.
    let head = post(
        "/v3/kv/range",
        r#"{"key":"AA==","range_end":"AA==","count_only":true}"#,
    )?;
    let revision: i64 = head["header"]["revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("etcd gave no revision: {head}"))?;
    post(
        "/v3/kv/compaction",
        &format!(r#"{{"revision":"{revision}","physical":true}}"#),
    )?;
    Ok(revision)
}

#[tokio::test]
async fn etcd_compacted_and_restarted_while_gogrid_is_cut_off_misses_no_delete()
-> anyhow::Result<()> {
    skip_unless_local!();
    let client = client().await?;
    let since = SystemTime::now();
    let ns = TestNamespace::create(&client, "rel-etcd").await?;
    // Named after the namespace: a model name is served once per node, so a
    // run left behind by a failed test does not stand in the way.
    let name = ns.name.clone();
    let name = name.as_str();
    let nodes = agent_nodes(&client, "default").await?;
    let n = nodes.len();
    deploy_llm_canary(&client, &ns.name, name, 30, n, WAIT).await?;
    let doomed = format!("{name}-d");
    deploy_doomed(&client, &ns.name, &doomed, n).await?;
    let load = OpenLoop::start(&client, plan(&ns.name, name)).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = processes(&nodes)?;

    // GoGrid's processes lose the API server; meanwhile the deployment is
    // deleted, the weight edited, and etcd compacted past what their watches
    // saw, then restarted: their watches come back to 410 Gone.
    ctl(&["proxy", "block"])?.check("ctl.sh proxy block")?;
    let _unblock = Unblock;
    let api: Api<InferenceDeployment> = Api::namespaced(client.clone(), &ns.name);
    api.delete(&doomed, &DeleteParams::default()).await?;
    set_weight(&api, name, 70).await?;
    for i in 0..20 {
        // Writes past the deletion, so the compaction moves beyond it.
        let cm = k8s_openapi::api::core::v1::ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("churn-{i}")),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), &ns.name)
            .create(&Default::default(), &cm)
            .await?;
    }
    let revision = compact_etcd()?;
    ctl(&["restart", "etcd"])?.check("ctl.sh restart etcd")?;
    let client = gogrid_e2e::client().await?;
    let unblocked = Instant::now();
    ctl(&["proxy", "unblock"])?.check("ctl.sh proxy unblock")?;
    weight_everywhere(&client, (&ns.name, name), n, 70).await?;
    wait_for_split(&client, (&ns.name, &doomed), n, "v1", None, WAIT).await?;
    let converged = unblocked.elapsed();
    let after = processes(&nodes)?;
    let report = load.finish().await;
    let counts = report.counts();
    fault::report(
        "etcd-compaction-restart",
        &json!({"load": report.summary(), "compacted_to_revision": revision,
                "converged_after_reconnect_ms": converged.as_millis()}),
    )?;
    assert_eq!(before, after, "no process of GoGrid restarted");
    assert_eq!(counts.lost, 0, "lost requests: {:?}", report.lost());
    assert_no_spec_writes(since)?;
    ns.cleanup(&client).await
}

#[tokio::test]
async fn every_api_connection_cut_every_30_s_misses_nothing() -> anyhow::Result<()> {
    skip_unless_local!();
    let client = client().await?;
    let since = SystemTime::now();
    let minutes = fault::seconds_from_env("GOGRID_RELIABILITY_CUT_SECONDS", 120);
    let ns = TestNamespace::create(&client, "rel-cuts").await?;
    // Named after the namespace: a model name is served once per node, so a
    // run left behind by a failed test does not stand in the way.
    let name = ns.name.clone();
    let name = name.as_str();
    let nodes = agent_nodes(&client, "default").await?;
    let n = nodes.len();
    deploy_llm_canary(&client, &ns.name, name, 30, n, WAIT).await?;
    let load = OpenLoop::start(&client, plan(&ns.name, name)).await?;
    let api: Api<InferenceDeployment> = Api::namespaced(client.clone(), &ns.name);
    let before = processes(&nodes)?;
    let start = Instant::now();
    let mut cuts = 0;
    let mut weight = 30;
    let mut last_change = Instant::now();
    while start.elapsed() < minutes {
        ctl(&["proxy", "cut"])?.check("ctl.sh proxy cut")?;
        cuts += 1;
        // Mid-period, a change each time: a weight edit, and a deployment
        // created or deleted in turn.
        tokio::time::sleep(Duration::from_secs(10)).await;
        weight = if weight >= 70 { 20 } else { weight + 10 };
        set_weight(&api, name, weight).await?;
        let churn = format!("{name}-c");
        let churn = churn.as_str();
        if cuts % 2 == 1 {
            fault::create_deployment(
                &client,
                &ns.name,
                churn,
                json!({"model": fault::minilm(churn, "v1")?}),
            )
            .await?;
        } else {
            api.delete(churn, &DeleteParams::default()).await?;
        }
        last_change = Instant::now();
        if start.elapsed() + Duration::from_secs(20) >= minutes {
            break;
        }
        tokio::time::sleep(Duration::from_secs(20)).await;
    }
    weight_everywhere(&client, (&ns.name, name), n, weight).await?;
    if cuts % 2 == 0 {
        wait_for_split(
            &client,
            (&ns.name, &format!("{name}-c")),
            n,
            "v1",
            None,
            WAIT,
        )
        .await?;
    }
    let converged = last_change.elapsed();
    let after = processes(&nodes)?;
    let report = load.finish().await;
    let counts = report.counts();
    let stats = ctl(&["proxy", "stats"])?
        .check("ctl.sh proxy stats")?
        .stdout;
    fault::report(
        "watch-cuts",
        &json!({"load": report.summary(), "seconds": minutes.as_secs(), "cuts": cuts,
                "converged_after_last_change_ms": converged.as_millis(), "proxy": stats.trim()}),
    )?;
    assert_eq!(before, after, "no process of GoGrid restarted");
    assert_eq!(counts.lost, 0, "lost requests: {:?}", report.lost());
    assert_no_spec_writes(since)?;
    ns.cleanup(&client).await
}
