//! A soak: a canary under constant open-loop load for `GOGRID_SOAK_SECONDS`
//! (30 minutes with `make soak`; skipped when unset, so CI does not run it),
//! its weight moved every minute. Nothing may be lost, and the resident memory
//! and open files of the operator and of every agent stay flat: each process's
//! last third of samples against its first third (after a warm-up).

use std::time::{Duration, Instant, SystemTime};

use gogrid_crds::InferenceDeployment;
use gogrid_e2e::fault::{
    self, agent_process, assert_no_spec_writes, create_deployment, minilm, pid_of,
};
use gogrid_e2e::openloop::{OpenLoop, Plan};
use gogrid_e2e::{TestNamespace, agent_nodes, client, is_local_harness, wait_for_split};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(240);

/// Resident memory (KiB) and open file descriptors of `pid`.
fn usage(pid: u32) -> anyhow::Result<(u64, usize)> {
    let rss = gogrid_e2e::fault::rss_kib(pid)?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok((rss, fds))
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

#[tokio::test]
async fn a_long_run_under_load_loses_nothing_and_keeps_memory_and_files_flat() -> anyhow::Result<()>
{
    let Some(seconds) = std::env::var("GOGRID_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        eprintln!("skipped: set GOGRID_SOAK_SECONDS (make soak runs 30 minutes)");
        return Ok(());
    };
    if !is_local_harness() {
        eprintln!("skipped: reads the local harness's processes");
        return Ok(());
    }
    anyhow::ensure!(
        seconds >= 300,
        "a soak runs at least 5 minutes (GOGRID_SOAK_SECONDS={seconds})"
    );
    let client = client().await?;
    let since = SystemTime::now();
    let ns = TestNamespace::create(&client, "soak").await?;
    let name = ns.name.clone();
    let nodes = agent_nodes(&client, "default").await?;
    create_deployment(
        &client,
        &ns.name,
        &name,
        json!({"model": minilm(&name, "v1")?,
               "rollout": {"strategy": "Canary", "canary": {"model": minilm(&name, "v2")?, "weight": 10}}}),
    )
    .await?;
    wait_for_split(
        &client,
        (&ns.name, &name),
        nodes.len(),
        "v2",
        Some(10),
        WAIT,
    )
    .await?;
    let rate = std::env::var("GOGRID_SOAK_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10.0);
    let load = OpenLoop::start(&client, Plan::embedding(&ns.name, &name, &name, rate)).await?;
    let api: Api<InferenceDeployment> = Api::namespaced(client.clone(), &ns.name);

    let mut processes = vec![("operator".to_owned(), pid_of("operator")?)];
    for n in &nodes {
        processes.push((format!("agent {n}"), agent_process(n)?.0));
    }
    let started = Instant::now();
    let mut samples: Vec<serde_json::Value> = Vec::new();
    let mut series: Vec<(Vec<u64>, Vec<u64>)> = vec![(Vec::new(), Vec::new()); processes.len()];
    let mut minute = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(60)).await;
        minute += 1;
        let weight = [10, 30, 50, 70, 90][(minute % 5) as usize];
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"rollout": {"canary": {"weight": weight}}}})),
        )
        .await?;
        let mut row = json!({"minute": minute});
        for (i, (who, pid)) in processes.iter().enumerate() {
            let (rss, fds) = usage(*pid)?;
            series[i].0.push(rss);
            series[i].1.push(fds as u64);
            row[who] = json!({"rss_kib": rss, "open_files": fds});
        }
        eprintln!("soak minute {minute}: {row}");
        samples.push(row);
    }
    let report = load.finish().await;
    let counts = report.counts();
    let mut flat = Vec::new();
    for ((who, _), (rss, fds)) in processes.iter().zip(&series) {
        // The first two minutes warm up (allocator pools, connections).
        let rss: Vec<u64> = rss.iter().copied().skip(2).collect();
        let fds: Vec<u64> = fds.iter().copied().skip(2).collect();
        let third = (rss.len() / 3).max(1);
        let (first_rss, last_rss) = (
            median(rss[..third].to_vec()),
            median(rss[rss.len() - third..].to_vec()),
        );
        let (first_fds, last_fds) = (
            median(fds[..third].to_vec()),
            median(fds[fds.len() - third..].to_vec()),
        );
        flat.push(
            json!({"process": who, "rss_kib_first_third": first_rss, "rss_kib_last_third": last_rss,
                         "open_files_first_third": first_fds, "open_files_last_third": last_fds}),
        );
        assert!(
            last_rss <= first_rss + first_rss / 10 + 8 * 1024,
            "{who}: resident memory grew from {first_rss} KiB to {last_rss} KiB"
        );
        assert!(
            last_fds <= first_fds + 5,
            "{who}: open files grew from {first_fds} to {last_fds}"
        );
    }
    fault::report(
        "soak",
        &json!({"load": report.summary(), "seconds": seconds, "processes": flat, "samples": samples}),
    )?;
    assert_eq!(counts.lost, 0, "lost requests: {:?}", report.lost());
    assert_no_spec_writes(since)?;
    ns.cleanup(&client).await
}
