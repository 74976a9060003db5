//! `kubectl gogrid`: look at and drive the rollout of an InferenceDeployment.
//!
//! ```text
//! kubectl gogrid status smollm2 [-n NS] [--watch]
//! kubectl gogrid set-weight smollm2 25
//! kubectl gogrid promote smollm2
//! kubectl gogrid abort smollm2
//! kubectl gogrid retry smollm2
//! ```
//!
//! `status` prints what the operator and every agent say, the way
//! `kubectl argo rollouts get` does: versions and weights, the step, the
//! analysis, and each node's view (loaded, ready, split in force). `set-weight`,
//! `promote` and `abort` patch the spec (field manager `kubectl-gogrid`), so a
//! GitOps tool sees the same change a person would have made with
//! `kubectl edit`; `retry` clears the state of a rolled-back canary in status.
#![allow(clippy::print_stdout)]

mod render;

use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use gogrid_crds::inference_deployment::{RolloutPhase, RolloutStrategy};
use gogrid_crds::{GpuNode, InferenceDeployment};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-gogrid",
    bin_name = "kubectl gogrid",
    about = "Show and drive GoGrid rollouts"
)]
struct Cli {
    /// Namespace of the InferenceDeployment (default: the kubeconfig's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The rollout: versions, weights, step, analysis, per-node readiness.
    Status {
        name: String,
        /// Print again every 2 s until interrupted.
        #[arg(short, long)]
        watch: bool,
    },
    /// Set the canary's weight (0-100) in the spec.
    SetWeight { name: String, weight: i32 },
    /// Canary: make the canary the stable version. Blue-green: switch traffic to the preview.
    Promote { name: String },
    /// Canary: send nothing to the canary. Blue-green: go back to the active version.
    Abort { name: String },
    /// Start a rolled-back canary over from its first step (clears the
    /// rollout state in status; the operator begins again).
    Retry { name: String },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let client = Client::try_default()
        .await
        .context("connecting to the cluster (kubeconfig)")?;
    let namespace = cli
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let api: Api<InferenceDeployment> = Api::namespaced(client.clone(), &namespace);
    match cli.command {
        Command::Status { name, watch } => loop {
            let deployment = api
                .get(&name)
                .await
                .with_context(|| format!("InferenceDeployment {namespace}/{name}"))?;
            let nodes: Api<GpuNode> = Api::all(client.clone());
            let gpunodes = nodes.list(&ListParams::default()).await?.items;
            if watch {
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", render::status(&deployment, &gpunodes));
            if !watch {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        },
        Command::SetWeight { name, weight } => {
            anyhow::ensure!(
                (0..=100).contains(&weight),
                "the weight must be between 0 and 100, not {weight}"
            );
            let d = api.get(&name).await?;
            anyhow::ensure!(
                d.spec.canary_model().is_some(),
                "{name} has no canary (spec.rollout.canary.model): nothing to weigh"
            );
            patch(
                &api,
                &name,
                json!({"spec": {"rollout": {"canary": {"weight": weight}}}}),
            )
            .await?;
            println!("{name}: canary weight set to {weight}%");
        }
        Command::Promote { name } => {
            let d = api.get(&name).await?;
            let change = promotion(&d)?;
            patch(&api, &name, change).await?;
            println!("{name}: promoted");
        }
        Command::Abort { name } => {
            let d = api.get(&name).await?;
            let change = match d.spec.rollout.as_ref().map(|r| r.strategy) {
                Some(RolloutStrategy::Canary) => {
                    json!({"spec": {"rollout": {"canary": {"weight": 0}}}})
                }
                Some(RolloutStrategy::BlueGreen) => {
                    json!({"spec": {"rollout": {"blueGreen": {"promote": false}}}})
                }
                None => anyhow::bail!("{name} has no rollout to abort"),
            };
            patch(&api, &name, change).await?;
            println!("{name}: aborted, all unversioned traffic goes to the stable version");
        }
        Command::Retry { name } => {
            let d = api.get(&name).await?;
            let phase = d
                .status
                .as_ref()
                .and_then(|s| s.rollout.as_ref())
                .map(|r| r.phase);
            anyhow::ensure!(
                phase == Some(RolloutPhase::RolledBack),
                "{name} is not rolled back (phase {}): nothing to retry",
                phase.map_or("none", RolloutPhase::as_str)
            );
            api.patch_status(
                &name,
                &PatchParams {
                    field_manager: Some("kubectl-gogrid".into()),
                    ..Default::default()
                },
                &Patch::Merge(&json!({"status": {"rollout": null}})),
            )
            .await
            .with_context(|| format!("clearing the rollout state of {name}"))?;
            println!("{name}: the canary starts over from its first step");
        }
    }
    Ok(())
}

/// The spec change that promotes: the canary becomes `model` and the
/// rollout ends; a blue-green preview takes the traffic.
fn promotion(d: &InferenceDeployment) -> anyhow::Result<Value> {
    let name = d.metadata.name.clone().unwrap_or_default();
    match d.spec.rollout.as_ref().map(|r| r.strategy) {
        Some(RolloutStrategy::Canary) => {
            let canary = d
                .spec
                .canary_model()
                .with_context(|| format!("{name} has no canary model to promote"))?;
            Ok(json!({"spec": {"model": canary, "rollout": null}}))
        }
        Some(RolloutStrategy::BlueGreen) => {
            Ok(json!({"spec": {"rollout": {"blueGreen": {"promote": true}}}}))
        }
        None => anyhow::bail!("{name} has no rollout to promote"),
    }
}

async fn patch(api: &Api<InferenceDeployment>, name: &str, change: Value) -> anyhow::Result<()> {
    api.patch(
        name,
        &PatchParams {
            field_manager: Some("kubectl-gogrid".into()),
            ..Default::default()
        },
        &Patch::Merge(&change),
    )
    .await
    .map_err(|e| match e {
        // The API server's own words (schema and CEL) name the field.
        kube::Error::Api(s) => anyhow::anyhow!("the API server refused the change: {}", s.message),
        other => other.into(),
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(rollout: Value) -> InferenceDeployment {
        serde_json::from_value(json!({
            "apiVersion": "gogrid.io/v1alpha1", "kind": "InferenceDeployment",
            "metadata": {"name": "chat", "namespace": "ml"},
            "spec": {
                "profile": "default",
                "model": {"name": "chat", "version": "v1", "format": "gguf", "task": "text-generation",
                          "source": {"path": "/models/v1.gguf"}},
                "rollout": rollout,
            }
        }))
        .expect("valid deployment")
    }

    #[test]
    fn promoting_a_canary_makes_it_the_model_and_ends_the_rollout() {
        let d = deployment(
            json!({"strategy": "Canary", "canary": {"weight": 30, "model": {
            "name": "chat", "version": "v2", "format": "gguf", "task": "text-generation",
            "source": {"path": "/models/v2.gguf"}}}}),
        );
        let change = promotion(&d).expect("promotable");
        assert_eq!(change["spec"]["model"]["version"], "v2");
        assert_eq!(change["spec"]["model"]["source"]["path"], "/models/v2.gguf");
        assert!(change["spec"]["rollout"].is_null());
    }

    #[test]
    fn promoting_blue_green_switches_to_the_preview() {
        let d = deployment(
            json!({"strategy": "BlueGreen", "blueGreen": {"preview": {"model": {
            "name": "chat", "version": "v2", "format": "gguf", "task": "text-generation",
            "source": {"path": "/models/v2.gguf"}}}}}),
        );
        let change = promotion(&d).expect("promotable");
        assert_eq!(
            change,
            json!({"spec": {"rollout": {"blueGreen": {"promote": true}}}})
        );
    }

    #[test]
    fn nothing_to_promote_is_an_error_naming_the_deployment() {
        let d = deployment(Value::Null);
        let e = promotion(&d).expect_err("no rollout");
        assert_eq!(e.to_string(), "chat has no rollout to promote");
    }
}
