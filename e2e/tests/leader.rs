//! Two operator replicas: one leads through the Lease, the other takes over
//! within the lease duration when the leader is killed.

use std::time::{Duration, Instant};

use gogrid_crds::{ResourceProfile, ResourceProfileSpec};
use gogrid_e2e::{client, ctl, is_local_harness, release_namespace, wait_for};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::{DeleteParams, PostParams};

const LEASE_SECONDS: u64 = 15;

async fn holder(leases: &Api<Lease>) -> anyhow::Result<Option<String>> {
    Ok(leases
        .get_opt("gogrid-operator")
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity))
}

#[tokio::test]
async fn the_standby_replica_takes_over_within_the_lease_duration_when_the_leader_dies()
-> anyhow::Result<()> {
    if !is_local_harness() {
        eprintln!("skipped: kills operator processes of the local harness");
        return Ok(());
    }
    let client = client().await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &release_namespace());
    let leader = wait_for("a leader", Duration::from_secs(60), || async {
        holder(&leases).await
    })
    .await?;
    // A Lease that is held, not one left over: the leader renews it (after an
    // API server restart in an earlier test, renewals may take a while to
    // resume, and a lapsed Lease is anyone's).
    let renewed = |l: Option<Lease>| l.and_then(|l| l.spec).and_then(|s| s.renew_time);
    let first = renewed(leases.get_opt("gogrid-operator").await?);
    wait_for(
        "the leader renewing its Lease",
        Duration::from_secs(60),
        || async {
            let now = renewed(leases.get_opt("gogrid-operator").await?);
            Ok((now.is_some() && now != first).then_some(()))
        },
    )
    .await?;
    ctl(&["start", "operator-standby"])?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        holder(&leases).await?.as_ref(),
        Some(&leader),
        "the standby does not steal a held Lease"
    );

    let killed = Instant::now();
    ctl(&["kill", "operator"])?;
    let new = wait_for(
        "the standby holding the Lease",
        Duration::from_secs(LEASE_SECONDS * 3),
        || async { Ok(holder(&leases).await?.filter(|h| *h != leader)) },
    )
    .await?;
    let took = killed.elapsed();
    eprintln!("leader {leader} killed; {new} took over after {took:?} (lease {LEASE_SECONDS}s)");
    assert!(
        took < Duration::from_secs(LEASE_SECONDS * 2),
        "takeover took {took:?}"
    );

    // The new leader reconciles.
    let profiles: Api<ResourceProfile> = Api::all(client.clone());
    profiles
        .create(
            &PostParams::default(),
            &ResourceProfile::new("e2e-leader", ResourceProfileSpec::default()),
        )
        .await?;
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &release_namespace());
    wait_for(
        "the new leader creating a DaemonSet",
        Duration::from_secs(60),
        || async { Ok(daemonsets.get_opt("gogrid-agent-e2e-leader").await?) },
    )
    .await?;
    profiles
        .delete("e2e-leader", &DeleteParams::default())
        .await?;

    // Back to one replica under the usual name.
    ctl(&["start", "operator"])?;
    ctl(&["stop", "operator-standby"])?;
    Ok(())
}
