//! The chart with the real helm: lint, and install, upgrade and uninstall of a
//! release (a second one, next to the release the harness runs on), plus an
//! upgrade of the running release that keeps the preset profiles.

use std::time::Duration;

use gogrid_crds::ResourceProfile;
use gogrid_e2e::{helm, kubectl, release_namespace, wait_for};
use kube::Api;

#[test]
fn helm_lint_passes() -> anyhow::Result<()> {
    helm(&[
        "lint",
        "--strict",
        "--kube-version",
        "1.34.0",
        "charts/gogrid",
    ])?
    .check("helm lint")?;
    Ok(())
}

#[test]
fn a_release_installs_upgrades_and_uninstalls() -> anyhow::Result<()> {
    let ns = "gg-e2e-helm";
    let common = [
        "--namespace",
        ns,
        "--set",
        "crds.enabled=false",
        "--set",
        "presets.conservative.enabled=false",
        "--set",
        "presets.default.enabled=false",
        "--set",
        "presets.aggressive.enabled=false",
        "--wait=false",
    ];
    let mut args = vec![
        "install",
        "gg-lifecycle",
        "charts/gogrid",
        "--create-namespace",
    ];
    args.extend(common);
    helm(&args)?.check("helm install")?;
    let deployments = kubectl(&["get", "deployments", "-n", ns, "-o", "name"])?
        .check("list deployments")?
        .stdout;
    assert!(
        deployments.contains("deployment.apps/"),
        "the operator Deployment exists: {deployments}"
    );

    let mut args = vec![
        "upgrade",
        "gg-lifecycle",
        "charts/gogrid",
        "--set",
        "operator.logLevel=debug",
    ];
    args.extend(common);
    helm(&args)?.check("helm upgrade")?;
    let env = kubectl(&[
        "get",
        "deployments",
        "-n",
        ns,
        "-o",
        "jsonpath={.items[0].spec.template.spec.containers[0].env}",
    ])?
    .check("read env")?
    .stdout;
    assert!(
        env.contains("debug"),
        "the upgrade reached the Deployment: {env}"
    );
    let history = helm(&["history", "gg-lifecycle", "-n", ns])?
        .check("helm history")?
        .stdout;
    assert!(history.lines().count() >= 3, "two revisions: {history}");

    helm(&["uninstall", "gg-lifecycle", "-n", ns, "--wait"])?.check("helm uninstall")?;
    let left = kubectl(&[
        "get",
        "deployments,serviceaccounts,services",
        "-n",
        ns,
        "-l",
        "app.kubernetes.io/instance=gg-lifecycle",
        "-o",
        "name",
    ])?
    .check("list leftovers")?
    .stdout;
    assert!(
        left.trim().is_empty(),
        "uninstall removes the release's objects: {left}"
    );
    let roles = kubectl(&[
        "get",
        "clusterroles",
        "-l",
        "app.kubernetes.io/instance=gg-lifecycle",
        "-o",
        "name",
    ])?
    .check("list cluster roles")?
    .stdout;
    assert!(
        roles.trim().is_empty(),
        "uninstall removes the release's ClusterRoles: {roles}"
    );
    kubectl(&["delete", "namespace", ns, "--wait=false"])?;
    Ok(())
}

#[tokio::test]
async fn upgrading_the_running_release_keeps_the_preset_profiles() -> anyhow::Result<()> {
    let client = gogrid_e2e::client().await?;
    let profiles: Api<ResourceProfile> = Api::all(client);
    let before = wait_for(
        "the preset profile `default`",
        Duration::from_secs(60),
        || async { Ok(profiles.get_opt("default").await?) },
    )
    .await?;
    let ns = release_namespace();
    helm(&[
        "upgrade",
        "gogrid",
        "charts/gogrid",
        "--namespace",
        &ns,
        "--reuse-values",
        "--wait=false",
    ])?
    .check("helm upgrade")?;
    let after = profiles.get("default").await?;
    assert_eq!(
        before.metadata.uid, after.metadata.uid,
        "the preset was patched in place, not recreated (its DaemonSet would be garbage-collected)"
    );
    Ok(())
}
