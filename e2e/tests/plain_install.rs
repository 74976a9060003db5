//! `kubectl apply -f manifests/install.yaml` on a fresh cluster: the CRDs
//! become established, the operator's objects and the preset profiles exist.
//! Run by e2e/run-tests.sh before the chart is installed, and cleaned up after.

use std::time::Duration;

use gogrid_e2e::{is_local_harness, kubectl, wait_for};

#[tokio::test]
async fn install_yaml_applies_on_a_fresh_cluster() -> anyhow::Result<()> {
    if std::env::var_os("GOGRID_E2E_FRESH").is_none() {
        eprintln!(
            "skipped: needs a cluster without GoGrid (e2e/run-tests.sh runs it first, with GOGRID_E2E_FRESH=1)"
        );
        return Ok(());
    }
    anyhow::ensure!(
        is_local_harness(),
        "the fresh-cluster test runs on the local harness only"
    );
    // The preset profiles need their CRD established first: apply until both halves land.
    let applied = wait_for(
        "install.yaml applied completely",
        Duration::from_secs(60),
        || async {
            let out = kubectl(&["apply", "--server-side", "-f", "manifests/install.yaml"])?;
            Ok(out.ok.then_some(out.stdout))
        },
    )
    .await?;
    for want in [
        "customresourcedefinition.apiextensions.k8s.io/inferencedeployments.gogrid.io",
        "deployment.apps/gogrid-operator",
        "resourceprofile.gogrid.io/default",
    ] {
        assert!(applied.contains(want), "{want} missing from:\n{applied}");
    }
    kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/resourceprofiles.gogrid.io",
        "--timeout=60s",
    ])?
    .check("CRD established")?;
    let presets = kubectl(&["get", "rp", "-o", "name"])?
        .check("get rp")?
        .stdout;
    for p in ["conservative", "default", "aggressive"] {
        assert!(
            presets.contains(&format!("resourceprofile.gogrid.io/{p}")),
            "{presets}"
        );
    }
    kubectl(&[
        "delete",
        "--wait=true",
        "--ignore-not-found",
        "-f",
        "manifests/install.yaml",
    ])?
    .check("delete install.yaml")?;
    Ok(())
}
