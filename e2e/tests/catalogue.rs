//! The API server itself refuses every manifest of the catalogue `e2e/invalid/`,
//! with a message naming the field: schema bounds and enums, CEL rules, strict
//! field validation.

use gogrid_e2e::{Run, kubectl, repo_root};

/// What the API server says to a manifest, without storing it: server-side dry
/// run with strict field validation, as `kubectl apply` does by default.
fn dry_run_apply(path: &str) -> anyhow::Result<Run> {
    kubectl(&[
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-n",
        "default",
        "-f",
        path,
    ])
}

#[test]
fn every_invalid_manifest_is_refused_by_the_api_server_with_the_field_named() -> anyhow::Result<()>
{
    let dir = repo_root().join("e2e/invalid");
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 20,
        "the catalogue holds {} manifests, want at least 20",
        files.len()
    );
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .ok_or_else(|| anyhow::anyhow!("{} has no '# expect:' line", file.display()))?;
        let path = file.to_string_lossy();
        let out = dry_run_apply(&path)?;
        let name = file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        if out.ok {
            failures.push(format!("{name}: accepted, want refused with {expect:?}"));
        } else if !out.stderr.contains(expect) {
            failures.push(format!(
                "{name}: refused, but the message does not name {expect:?}: {}",
                out.stderr.trim()
            ));
        } else {
            eprintln!("refused as expected: {name}: {}", out.stderr.trim());
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} manifests were not refused as expected:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
    Ok(())
}

#[test]
fn the_examples_are_accepted() -> anyhow::Result<()> {
    let dir = repo_root().join("manifests/examples");
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        // agent.yaml is the standalone agent's file, not a Kubernetes object
        // (its own test is in the agent crate).
        let text = std::fs::read_to_string(&path)?;
        if !text.lines().any(|l| l.starts_with("kind:")) {
            continue;
        }
        let out = dry_run_apply(&path.to_string_lossy())?;
        assert!(out.ok, "{} refused: {}", path.display(), out.stderr);
    }
    Ok(())
}
