//! Every kind of rollout under a constant load, on a real control plane with
//! real agents serving all-MiniLM-L6-v2: 20 canary weight changes (with an
//! operator restart and an agent restart among them), an automated canary
//! whose analysis passes and promotes it, a broken canary whose analysis
//! fails and rolls it back, and 5 blue-green switches. No request fails
//! except those the broken canary answers before its rollback, and each
//! window of answers is split the way the weight in force says.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use gogrid_crds::inference_deployment::RolloutPhase;
use gogrid_crds::{GpuNode, InferenceDeployment};
use gogrid_e2e::load::{Load, Sample, count};
use gogrid_e2e::{
    TestNamespace, agent_nodes, client, ctl, is_local_harness, operator_metrics_url,
    promtool_check_metrics, wait_for, wait_for_split,
};
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(180);
const NAME: &str = "steady";
/// Concurrent requests of the load generator.
const WORKERS: usize = 4;
/// Answers looked at after each weight change.
const WINDOW: usize = 100;

fn minilm() -> anyhow::Result<String> {
    std::env::var("GOGRID_MODEL_MINILM")
        .context("GOGRID_MODEL_MINILM must name all-MiniLM-L6-v2's model.safetensors")
}

fn model(version: &str, path: &str) -> Value {
    json!({"name": NAME, "version": version, "format": "safetensors", "task": "embedding",
           "source": {"path": path}})
}

/// A build of the model that loads but fails every request: its tokenizer
/// starts each sequence with a token id beyond the vocabulary, so the
/// embedding lookup errors (500) on every input.
fn broken_minilm(real: &str) -> anyhow::Result<String> {
    let real = std::path::Path::new(real);
    let from = real.parent().context("model directory")?;
    let dir = std::env::temp_dir().join(format!("gogrid-e2e-broken-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("1_Pooling"))?;
    for f in [
        "config.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ] {
        if from.join(f).exists() {
            std::fs::copy(from.join(f), dir.join(f))?;
        }
    }
    let mut tokenizer: Value =
        serde_json::from_str(&std::fs::read_to_string(from.join("tokenizer.json"))?)?;
    tokenizer["post_processor"]["special_tokens"]["[CLS]"]["ids"] = json!([999_999]);
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string())?;
    let weights = dir.join("model.safetensors");
    if !weights.exists() {
        std::os::unix::fs::symlink(real, &weights)?;
    }
    Ok(weights.display().to_string())
}

async fn patch(api: &Api<InferenceDeployment>, change: Value) -> anyhow::Result<()> {
    api.patch(NAME, &PatchParams::default(), &Patch::Merge(&change))
        .await?;
    Ok(())
}

/// Asserts that `samples` all succeeded and `version` answered `weight`% of
/// them, give or take what `nodes` agents' exact per-agent splits and the
/// requests in flight at the change can add.
fn assert_split(samples: &[Sample], version: &str, weight: i32, nodes: usize, what: &str) {
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.failed()).collect();
    assert!(failed.is_empty(), "{what}: failed requests {failed:?}");
    let got = count(samples, version) as i64;
    let want = samples.len() as i64 * i64::from(weight) / 100;
    let slack = (nodes + WORKERS) as i64;
    assert!(
        (got - want).abs() <= slack,
        "{what}: {version} answered {got} of {}, want {want} +- {slack} ({weight}%)",
        samples.len()
    );
}

async fn phase(api: &Api<InferenceDeployment>) -> anyhow::Result<Option<(RolloutPhase, String)>> {
    Ok(api
        .get(NAME)
        .await?
        .status
        .and_then(|s| s.rollout)
        .map(|r| (r.phase, r.message.unwrap_or_default())))
}

async fn wait_for_phase(
    api: &Api<InferenceDeployment>,
    want: RolloutPhase,
) -> anyhow::Result<String> {
    wait_for(
        &format!("rollout phase {}", want.as_str()),
        WAIT,
        || async {
            Ok(phase(api)
                .await?
                .and_then(|(p, message)| (p == want).then_some(message)))
        },
    )
    .await
}

#[tokio::test]
async fn rollouts_under_constant_load_lose_no_request() -> anyhow::Result<()> {
    if !is_local_harness() {
        eprintln!("skipped: restarts the operator and an agent of the local harness");
        return Ok(());
    }
    let client = client().await?;
    let ns = TestNamespace::create(&client, "load").await?;
    let nodes = agent_nodes(&client, "default").await?;
    anyhow::ensure!(!nodes.is_empty(), "no agents of the default profile");
    let n = nodes.len();
    let path = minilm()?;
    let api: Api<InferenceDeployment> = Api::namespaced(client.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "gogrid.io/v1alpha1", "kind": "InferenceDeployment",
            "metadata": {"name": NAME},
            "spec": {"profile": "default", "model": model("v1", &path),
                     "rollout": {"strategy": "Canary", "canary": {"model": model("v2", &path), "weight": 0}}}
        }))?,
    )
    .await?;
    let key = (ns.name.as_str(), NAME);
    wait_for_split(&client, key, n, "v2", Some(0), WAIT).await?;
    wait_for("every agent in the EndpointSlice", WAIT, || async {
        let ready = api.get(NAME).await?.status.map_or(0, |s| s.ready_replicas);
        Ok((ready as usize == n).then_some(()))
    })
    .await?;
    let load = Load::start(&client, &ns.name, NAME, NAME, WORKERS).await?;
    let started = Instant::now();

    // 20 weight changes; the operator restarts after the 7th, an agent
    // drains and restarts after the 14th.
    let weights = [
        10, 50, 0, 100, 25, 75, 5, 90, 33, 60, 0, 20, 80, 45, 100, 15, 70, 30, 55, 40,
    ];
    for (i, &w) in weights.iter().enumerate() {
        patch(
            &api,
            json!({"spec": {"rollout": {"canary": {"weight": w}}}}),
        )
        .await?;
        wait_for_split(&client, key, n, "v2", Some(w), WAIT).await?;
        let mark = load.mark();
        let window = load.take(mark, WINDOW, WAIT).await?;
        assert_split(
            &window,
            "v2",
            w,
            n,
            &format!("weight change {} to {w}%", i + 1),
        );
        if i == 6 {
            ctl(&["stop", "operator"])?.check("stopping the operator")?;
            // With the operator gone the agents keep routing the split in force.
            let mark = load.mark();
            let window = load.take(mark, WINDOW, WAIT).await?;
            assert_split(&window, "v2", w, n, "operator stopped");
            ctl(&["start", "operator"])?.check("starting the operator")?;
        }
        if i == 13 {
            ctl(&["term", "agent", &nodes[0]])?.check("stopping an agent")?;
            // Back once the supervisor restarts it and it reloads both versions.
            wait_for_split(&client, key, n, "v2", Some(w), WAIT).await?;
        }
    }

    // An automated canary that passes its analysis and promotes itself.
    patch(
        &api,
        json!({"spec": {"rollout": {"canary": {"model": model("v3", &path), "weight": 0,
            "steps": [{"weight": 30, "pauseSeconds": 10}, {"weight": 70, "pauseSeconds": 0}],
            "analysis": {"intervalSeconds": 5, "minRequests": 10, "maxErrorRatePercent": 1}}}}}),
    )
    .await?;
    // An operator restart mid-rollout resumes the same step from status.
    wait_for_split(&client, key, n, "v3", Some(30), WAIT).await?;
    let before = api
        .get(NAME)
        .await?
        .status
        .and_then(|s| s.rollout)
        .context("rollout")?;
    ctl(&["stop", "operator"])?.check("stopping the operator")?;
    ctl(&["start", "operator"])?.check("starting the operator")?;
    let after = wait_for("the restarted operator's next status", WAIT, || async {
        let r = api.get(NAME).await?.status.and_then(|s| s.rollout);
        Ok(r.filter(|r| r.analysis != before.analysis || r.step != before.step))
    })
    .await?;
    if after.step == before.step {
        assert_eq!(after.since, before.since, "the step's clock was not reset");
    } else {
        assert_eq!(
            after.step,
            Some(1),
            "the rollout went on to the next step, not back"
        );
    }
    let done = wait_for_phase(&api, RolloutPhase::Promoted).await?;
    assert!(done.contains("all 2 steps done"), "{done}");
    wait_for_split(&client, key, n, "v3", Some(100), WAIT).await?;
    patch(
        &api,
        json!({"spec": {"model": model("v3", &path), "rollout": null}}),
    )
    .await?;
    wait_for_split(&client, key, n, "v1", None, WAIT).await?;
    let mark = load.mark();
    assert_split(
        &load.take(mark, WINDOW, WAIT).await?,
        "v3",
        100,
        n,
        "v3 promoted",
    );

    // A broken canary: its analysis fails and it is rolled back at once.
    let broken_since = load.mark();
    patch(
        &api,
        json!({"spec": {"rollout": {"strategy": "Canary", "canary": {"model": model("v4", &broken_minilm(&path)?),
            "weight": 30,
            "analysis": {"intervalSeconds": 5, "minRequests": 10, "maxErrorRatePercent": 5}}}}}),
    )
    .await?;
    let why = wait_for_phase(&api, RolloutPhase::RolledBack).await?;
    assert!(why.contains("v4 failed analysis: error rate"), "{why}");
    wait_for_split(&client, key, n, "v4", None, WAIT).await?;
    // Every agent routes nothing to v4 now: a request sent later cannot reach it.
    let broken_until = load.mark();
    let events: Api<Event> = Api::namespaced(client.clone(), &ns.name);
    let rolled_back = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("RolledBack"))
        .context("a RolledBack Event")?;
    assert_eq!(rolled_back.type_.as_deref(), Some("Warning"));
    assert!(
        rolled_back
            .message
            .unwrap_or_default()
            .contains("error rate")
    );
    let mark = load.mark();
    assert_split(
        &load.take(mark, WINDOW, WAIT).await?,
        "v3",
        100,
        n,
        "after the rollback",
    );

    // Blue-green: a preview next to v3, then 5 switches back and forth; the
    // previous version stays loaded, so each switch is instant.
    patch(
        &api,
        json!({"spec": {"rollout": {"strategy": "BlueGreen", "canary": null,
            "blueGreen": {"preview": {"model": model("v5", &path)}, "scaleDownDelaySeconds": 600}}}}),
    )
    .await?;
    wait_for_split(&client, key, n, "v5", Some(0), WAIT).await?;
    for switch in 0..5 {
        let (promote, active) = if switch % 2 == 0 {
            (true, "v5")
        } else {
            (false, "v3")
        };
        patch(
            &api,
            json!({"spec": {"rollout": {"blueGreen": {"promote": promote}}}}),
        )
        .await?;
        wait_for_split(&client, key, n, active, Some(100), WAIT).await?;
        let mark = load.mark();
        let window = load.take(mark, WINDOW, WAIT).await?;
        assert_split(
            &window,
            active,
            100,
            n,
            &format!("blue-green switch {} to {active}", switch + 1),
        );
    }

    let retries = load.connect_retries();
    let samples = load.stop().await;
    let to_broken = |s: &Sample| (broken_since.at..broken_until.at).contains(&s.sent);
    let failed: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.failed() && !to_broken(s))
        .collect();
    let deliberate = samples
        .iter()
        .filter(|s| s.failed() && to_broken(s))
        .count();
    eprintln!(
        "{} requests in {:.0?}: {deliberate} failed on the broken canary, {} elsewhere; {retries} connection attempts tried on another agent",
        samples.len(),
        started.elapsed(),
        failed.len()
    );
    assert!(deliberate > 0, "the broken canary answered no request");
    assert!(
        failed.is_empty(),
        "requests failed: {:?}",
        &failed[..failed.len().min(5)]
    );

    // Every /metrics after all that (serving, rollout, analysis series) is
    // well formed and follows Prometheus' conventions.
    let gpunodes: Api<GpuNode> = Api::all(client.clone());
    for g in gpunodes.list(&ListParams::default()).await?.items {
        if let Some(a) = g.status.and_then(|s| s.agent) {
            promtool_check_metrics(&format!("http://{}:{}/metrics", a.pod_ip, a.metrics_port))?;
        }
    }
    promtool_check_metrics(&operator_metrics_url())?;
    ns.cleanup(&client).await
}
