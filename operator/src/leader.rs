//! Leader election through a coordination.k8s.io Lease (kube-lease-manager):
//! only the holder runs the controllers; a replica that loses the Lease stops
//! them and waits to lead again.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use gogrid_crds::labels::{LEASE_NAME, OPERATOR_MANAGER};
use kube_lease_manager::LeaseManagerBuilder;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use gogrid_runtime::Shutdown;

/// Leader-election settings.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    /// Namespace of the Lease.
    pub namespace: String,
    /// This replica's identity.
    pub identity: String,
    /// Lease duration in seconds.
    pub duration_seconds: u64,
}

/// Run `work` whenever this replica leads, until shutdown. `work` gets a token
/// that is cancelled when leadership is lost or shutdown begins, and must return
/// soon after.
pub async fn run_while_leader<F, Fut>(
    client: kube::Client,
    election: LeaderElection,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    work: F,
) -> anyhow::Result<()>
where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    // The API server may be out of reach when the operator starts (a
    // restart during an outage): wait for it, as a controller start does,
    // rather than end the process.
    let mut backoff = std::time::Duration::from_secs(1);
    let manager = loop {
        let built = LeaseManagerBuilder::new(client.clone(), LEASE_NAME)
            .with_namespace(election.namespace.clone())
            .with_identity(election.identity.clone())
            .with_duration(election.duration_seconds)
            .with_grace((election.duration_seconds / 3).max(1))
            .with_field_manager(OPERATOR_MANAGER)
            .build()
            .await
            .context("setting up the leader-election Lease");
        match built {
            Ok(m) => break m,
            Err(e) => {
                tracing::warn!(error = format!("{e:#}"), retry_in = ?backoff, "cannot reach the Lease yet");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait() => return Ok(()),
                }
                backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
            }
        }
    };
    let (mut leading, task) = manager.watch().await;
    tracing::info!(identity = %election.identity, lease = LEASE_NAME, namespace = %election.namespace, "waiting to lead");

    while !shutdown.is_shutting_down() {
        if !*leading.borrow_and_update() {
            tokio::select! {
                changed = leading.changed() => {
                    if changed.is_err() { break; }
                    continue;
                }
                _ = shutdown.wait() => break,
            }
        }
        tracing::info!(identity = %election.identity, "leading: starting controllers");
        metrics.set_leader(true);
        let stop = CancellationToken::new();
        let watcher = {
            let stop = stop.clone();
            let mut leading = leading.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        changed = leading.changed() => {
                            if changed.is_err() || !*leading.borrow_and_update() { break; }
                        }
                        _ = shutdown.wait() => break,
                    }
                }
                stop.cancel();
            })
        };
        let result = work(stop.clone()).await;
        stop.cancel();
        watcher.abort();
        metrics.set_leader(false);
        if let Err(e) = result {
            // E.g. the API server restarting and refusing requests (403 until its
            // RBAC cache is warm): never let that end the process; try again.
            tracing::warn!(
                error = format!("{e:#}"),
                "controllers stopped with an error; starting again in 5 s"
            );
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
                _ = shutdown.wait() => break,
            }
            continue;
        }
        if !shutdown.is_shutting_down() {
            tracing::warn!(identity = %election.identity, "lost the lease: controllers stopped, waiting to lead again");
        }
    }
    drop(leading);
    // Dropping the channel ends the manager's task, which releases the Lease.
    match task.await {
        Ok(Ok(manager)) => {
            let _ = manager.release().await;
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "lease manager ended with an error"),
        Err(e) => tracing::warn!(error = %e, "lease manager task failed"),
    }
    Ok(())
}
