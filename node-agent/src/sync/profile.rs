//! Follows the node's ResourceProfile and publishes its effective policy on a
//! watch channel, again whenever a schedule window starts or ends, without a
//! restart.

use std::time::Duration;

use futures::StreamExt;
use gogrid_crds::policy::next_transition;
use gogrid_crds::{EffectivePolicy, ResourceProfile, ResourceProfileSpec, effective_policy};
use gogrid_runtime::Shutdown;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

/// The policy in force, `None` while the profile is absent. An invalid profile
/// keeps the last policy that resolved.
pub type PolicySender = watch::Sender<Option<EffectivePolicy>>;

/// Watch `profile` until shutdown.
pub async fn follow(
    client: kube::Client,
    profile: Option<String>,
    tx: PolicySender,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let Some(name) = profile else {
        tracing::warn!("no profile given (GOGRID_PROFILE): no policy, so no VRAM budget");
        shutdown.wait().await;
        return Ok(());
    };
    let api: Api<ResourceProfile> = Api::all(client);
    let config = watcher::Config::default()
        .timeout(super::WATCH_TIMEOUT_SECONDS)
        .fields(&format!("metadata.name={name}"));
    let specs = watcher(api, config)
        .backoff(gogrid_runtime::kube_client::watch_backoff())
        .filter_map(|event| {
            futures::future::ready(match event {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => Some(Some(p.spec)),
                Ok(watcher::Event::Delete(_)) => Some(None),
                Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "watching the profile failed; retrying");
                    None
                }
            })
        });
    publish_loop(&name, specs, tx, shutdown).await
}

/// Publish the effective policy of each spec `specs` yields (`None`: the profile
/// is gone), and again whenever a schedule window starts or ends, until
/// shutdown or the end of `specs`. The cluster watch and the standalone file
/// (one spec, then a pending stream) both feed it.
pub async fn publish_loop(
    name: &str,
    specs: impl futures::Stream<Item = Option<ResourceProfileSpec>>,
    tx: PolicySender,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let mut specs = std::pin::pin!(specs);
    let mut spec: Option<ResourceProfileSpec> = None;
    loop {
        let now = jiff::Timestamp::now();
        let wake = spec
            .as_ref()
            .and_then(|p| next_transition(p, now))
            .and_then(|t| Duration::try_from(t.duration_since(now)).ok())
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            next = specs.next() => match next {
                Some(next) => spec = next,
                None => return Ok(()),
            },
            _ = tokio::time::sleep(wake + Duration::from_millis(100)) => {}
            _ = shutdown.wait() => return Ok(()),
        }
        publish(&tx, spec.as_ref(), name);
    }
}

fn publish(tx: &PolicySender, profile: Option<&ResourceProfileSpec>, name: &str) {
    let Some(profile) = profile else {
        tracing::warn!(profile = %name, "profile is gone: no policy in force");
        tx.send_if_modified(|p| p.take().is_some());
        return;
    };
    match effective_policy(profile, jiff::Timestamp::now()) {
        Ok(policy) => {
            let changed = tx.send_if_modified(|current| {
                if current.as_ref() == Some(&policy) {
                    return false;
                }
                *current = Some(policy.clone());
                true
            });
            if changed {
                tracing::info!(profile = %name, preset = policy.preset_in_force.as_str(), window = policy.window.as_deref(), "policy in force");
            }
        }
        Err(e) => {
            tracing::warn!(profile = %name, error = %e, "profile does not resolve; keeping the last policy")
        }
    }
}
