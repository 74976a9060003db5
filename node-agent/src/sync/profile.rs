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

use crate::channel::send_if_changed;

/// The policy in force, `None` while the profile is absent. An invalid profile
/// keeps the last policy that resolved.
pub type PolicySender = watch::Sender<Option<EffectivePolicy>>;

/// What the watch of one profile has seen: `None` until it first saw the
/// profile, then `Some(None)` once it is deleted. Every node of the process
/// that follows that profile reads the same feed.
pub type SpecFeed = watch::Receiver<Option<Option<ResourceProfileSpec>>>;

/// Watch the ResourceProfile `name` and hand each version on to `tx` until
/// shutdown: one watch per profile name in a process, whatever the number of
/// nodes that follow it.
pub async fn watch_named(
    client: kube::Client,
    name: String,
    tx: watch::Sender<Option<Option<ResourceProfileSpec>>>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
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
                    tracing::warn!(profile = %name, error = %e, "watching the profile failed; retrying");
                    None
                }
            })
        });
    let mut specs = std::pin::pin!(specs);
    loop {
        tokio::select! {
            next = specs.next() => match next {
                Some(spec) => {
                    tx.send_replace(Some(spec));
                }
                None => return Ok(()),
            },
            _ = shutdown.wait() => return Ok(()),
        }
    }
}

/// Follow `profile` through its feed (`None`: no profile named, so no policy)
/// and publish its effective policy until shutdown.
pub async fn follow(
    profile: Option<(String, SpecFeed)>,
    tx: PolicySender,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let Some((name, feed)) = profile else {
        tracing::warn!("no profile given (GOGRID_PROFILE): no policy, so no VRAM budget");
        shutdown.wait().await;
        return Ok(());
    };
    let specs = tokio_stream::wrappers::WatchStream::new(feed).filter_map(futures::future::ready);
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
            if send_if_changed(tx, &Some(policy.clone())) {
                tracing::info!(profile = %name, preset = policy.preset_in_force.as_str(), window = policy.window.as_deref(), "policy in force");
            }
        }
        Err(e) => {
            tracing::warn!(profile = %name, error = %e, "profile does not resolve; keeping the last policy")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gogrid_crds::resource_profile::{Preset, VramSpec};

    #[tokio::test]
    async fn nodes_on_one_profile_feed_each_follow_its_changes_and_its_deletion() {
        let (feed_tx, feed) = watch::channel(None);
        let shutdown = Shutdown::default();
        let mut policies = Vec::new();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..2 {
            let (tx, rx) = watch::channel(None);
            tasks.spawn(follow(
                Some(("gpu".into(), feed.clone())),
                tx,
                shutdown.clone(),
            ));
            policies.push(rx);
        }
        let vram = |percent| ResourceProfileSpec {
            preset: Preset::Default,
            vram: Some(VramSpec {
                max_percent: Some(percent),
            }),
            ..Default::default()
        };
        let in_force = |rx: &watch::Receiver<Option<EffectivePolicy>>| {
            rx.borrow().as_ref().map(|p| p.vram_max_percent)
        };
        feed_tx.send_replace(Some(Some(vram(40))));
        for rx in &mut policies {
            rx.changed().await.expect("published");
            assert_eq!(in_force(rx), Some(40));
        }
        feed_tx.send_replace(Some(Some(vram(25))));
        for rx in &mut policies {
            rx.changed().await.expect("published");
            assert_eq!(in_force(rx), Some(25));
        }
        feed_tx.send_replace(Some(None));
        for rx in &mut policies {
            rx.changed().await.expect("published");
            assert_eq!(in_force(rx), None, "a deleted profile leaves no policy");
        }
        shutdown.trigger();
        while let Some(done) = tasks.join_next().await {
            done.expect("task").expect("follow");
        }
    }
}
