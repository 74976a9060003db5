//! The API server itself refuses every manifest of the catalogue `e2e/invalid/`
//! (schema bounds and enums, CEL cross-field rules, name limits, unknown fields
//! under strict field validation) and every update of `e2e/invalid/updates/`
//! (CEL transition rules, edits out of bounds): HTTP 422 with the field path in
//! `details.causes[].field` and the message naming the problem. Unknown fields
//! are the API server's decoding error: 400, the field named in the message.
//! Each manifest says what it expects in comment lines (`# expect:` a part of
//! the message, `# field:` the cause's field, or `# status: 400`).

use anyhow::Context as _;
use gogrid_e2e::{Run, TestNamespace, client, kubectl, repo_root};
use http_body_util::BodyExt as _;
use serde_json::Value;

/// What one manifest expects.
struct Expect {
    message: String,
    field: Option<String>,
    status: u16,
}

fn expectations(text: &str) -> anyhow::Result<Expect> {
    let line = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(str::trim)
    };
    let message = line("# expect: ")
        .context("no '# expect:' line")?
        .to_owned();
    let status = match line("# status: ") {
        Some(s) => s.split_whitespace().next().unwrap_or_default().parse()?,
        None => 422,
    };
    let field = line("# field: ").map(str::to_owned);
    anyhow::ensure!(
        status != 422 || field.is_some(),
        "a 422 case needs a '# field:' line"
    );
    Ok(Expect {
        message,
        field,
        status,
    })
}

/// The collection path of `object`'s kind (namespaced ones in `ns`).
fn collection(object: &Value, ns: &str) -> anyhow::Result<String> {
    Ok(match object["kind"].as_str() {
        Some("ResourceProfile") => "/apis/gogrid.io/v1alpha1/resourceprofiles".to_owned(),
        Some("InferenceDeployment") => {
            format!("/apis/gogrid.io/v1alpha1/namespaces/{ns}/inferencedeployments")
        }
        other => anyhow::bail!("unexpected kind {other:?}"),
    })
}

/// Sends `object` as the API server would get it from `kubectl apply
/// --validate=strict`: POST (or PUT to update), strict field validation;
/// `dry_run` stores nothing. Returns the status and the body.
async fn send(
    client: &kube::Client,
    method: http::Method,
    path: &str,
    object: &Value,
    dry_run: bool,
) -> anyhow::Result<(u16, Value)> {
    let query = if dry_run {
        "?dryRun=All&fieldValidation=Strict"
    } else {
        "?fieldValidation=Strict"
    };
    let request = http::Request::builder()
        .method(method)
        .uri(format!("{path}{query}"))
        .header("content-type", "application/json")
        .body(kube::client::Body::from(serde_json::to_vec(object)?))?;
    let response = client.send(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

/// Whether the API server's answer is what the manifest expects.
fn check(name: &str, expect: &Expect, status: u16, answer: &Value) -> Result<String, String> {
    let message = answer["message"].as_str().unwrap_or_default();
    let causes: Vec<&str> = answer["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["field"].as_str())
        .collect();
    if status != expect.status {
        return Err(format!(
            "{name}: HTTP {status}, want {}: {message}",
            expect.status
        ));
    }
    if !message.contains(&expect.message) {
        return Err(format!(
            "{name}: the message does not name {:?}: {message}",
            expect.message
        ));
    }
    if let Some(field) = &expect.field
        && !causes.contains(&field.as_str())
    {
        return Err(format!(
            "{name}: causes[].field {causes:?} do not include {field:?}: {message}"
        ));
    }
    Ok(format!("{name}: {status} {causes:?} {message}"))
}

fn manifests(dir: &std::path::Path) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}

fn documents(text: &str) -> anyhow::Result<Vec<Value>> {
    use serde::Deserialize as _;
    Ok(serde_yaml::Deserializer::from_str(text)
        .map(Value::deserialize)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|v| !v.is_null())
        .collect())
}

#[tokio::test]
async fn every_invalid_manifest_is_refused_by_the_api_server_with_the_field_named()
-> anyhow::Result<()> {
    let client = client().await?;
    let files = manifests(&repo_root().join("e2e/invalid"))?;
    assert!(
        files.len() >= 30,
        "the catalogue holds {} manifests, want at least 30",
        files.len()
    );
    let mut failures = Vec::new();
    let mut unprocessable = 0;
    for file in &files {
        let name = file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(file)?;
        let expect = expectations(&text).with_context(|| name.clone())?;
        let object = documents(&text)?.into_iter().next().context("no object")?;
        let (status, answer) = send(
            &client,
            http::Method::POST,
            &collection(&object, "default")?,
            &object,
            true,
        )
        .await?;
        match check(&name, &expect, status, &answer) {
            Ok(seen) => {
                unprocessable += usize::from(status == 422);
                eprintln!("refused as expected: {seen}");
            }
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} not refused as expected:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
    assert!(
        unprocessable >= 30,
        "{unprocessable} refused with 422 and the field in causes, want at least 30"
    );
    Ok(())
}

#[tokio::test]
async fn invalid_updates_are_refused_and_the_object_keeps_its_spec() -> anyhow::Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "catalogue").await?;
    let files = manifests(&repo_root().join("e2e/invalid/updates"))?;
    anyhow::ensure!(!files.is_empty(), "no update cases");
    let mut failures = Vec::new();
    for file in &files {
        let name = file
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(file)?;
        let expect = expectations(&text).with_context(|| name.clone())?;
        let docs = documents(&text)?;
        let (Some(first), Some(update)) = (docs.first(), docs.get(1)) else {
            anyhow::bail!("{name}: two documents expected (the object, then the update)");
        };
        let path = collection(first, &ns.name)?;
        let (status, created) = send(&client, http::Method::POST, &path, first, false).await?;
        anyhow::ensure!(
            status == 201,
            "{name}: creating the first document: {status} {created}"
        );
        let object_name = first["metadata"]["name"].as_str().context("name")?;
        let mut update = update.clone();
        update["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"].clone();
        let (status, answer) = send(
            &client,
            http::Method::PUT,
            &format!("{path}/{object_name}"),
            &update,
            false,
        )
        .await?;
        match check(&name, &expect, status, &answer) {
            Ok(seen) => eprintln!("refused as expected: {seen}"),
            Err(e) => failures.push(e),
        }
        // Nothing was lost: the stored object is the first document.
        let stored = kubectl(&[
            "get",
            "-n",
            &ns.name,
            "-o",
            "json",
            &format!(
                "{}/{object_name}",
                first["kind"].as_str().unwrap_or_default().to_lowercase()
            ),
        ])?
        .check("kubectl get")?;
        let stored: Value = serde_json::from_str(&stored.stdout)?;
        if stored["spec"] != first["spec"] {
            failures.push(format!(
                "{name}: the stored spec changed: {}",
                stored["spec"]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    ns.cleanup(&client).await
}

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

/// Waits for `ns/name` to be Degraded with `reason`, and for a Warning Event
/// of that reason on it; returns how long each took.
async fn refused_in_status_and_event(
    client: &kube::Client,
    ns: &str,
    name: &str,
    reason: &str,
) -> anyhow::Result<(std::time::Duration, std::time::Duration, String)> {
    use gogrid_crds::InferenceDeployment;
    use k8s_openapi::api::core::v1::Event;
    let started = std::time::Instant::now();
    let api: kube::Api<InferenceDeployment> = kube::Api::namespaced(client.clone(), ns);
    let wait = std::time::Duration::from_secs(60);
    let (condition, message) =
        gogrid_e2e::wait_for(&format!("{ns}/{name} Degraded/{reason}"), wait, || async {
            let status = api.get(name).await?.status.unwrap_or_default();
            Ok(
                gogrid_crds::conditions::find(&status.conditions, "Degraded")
                    .filter(|c| c.status == "True" && c.reason == reason)
                    .map(|c| (started.elapsed(), c.message.clone())),
            )
        })
        .await?;
    let events: kube::Api<Event> = kube::Api::namespaced(client.clone(), ns);
    let event = gogrid_e2e::wait_for(
        &format!("a Warning {reason} Event on {ns}/{name}"),
        wait,
        || async {
            let found = events
                .list(&Default::default())
                .await?
                .items
                .into_iter()
                .any(|e| {
                    e.reason.as_deref() == Some(reason)
                        && e.type_.as_deref() == Some("Warning")
                        && e.involved_object.name.as_deref() == Some(name)
                });
            Ok(found.then(|| started.elapsed()))
        },
    )
    .await?;
    Ok((condition, event, message))
}

#[tokio::test]
async fn references_the_api_server_cannot_check_become_a_condition_and_an_event()
-> anyhow::Result<()> {
    use gogrid_e2e::fault::{create_deployment, report};
    use serde_json::json;
    let client = client().await?;
    let ns = TestNamespace::create(&client, "references").await?;
    let model = |source: Value| json!({"name": "ref", "version": "v1", "format": "gguf", "task": "text-generation", "source": source});
    create_deployment(
        &client,
        &ns.name,
        "no-profile",
        json!({"profile": "does-not-exist", "model": model(json!({"path": "/models/m.gguf"}))}),
    )
    .await?;
    let (profile_condition, profile_event, message) =
        refused_in_status_and_event(&client, &ns.name, "no-profile", "ProfileNotFound").await?;
    assert!(message.contains("does-not-exist"), "{message}");
    create_deployment(
        &client,
        &ns.name,
        "no-claim",
        json!({"model": model(json!({"pvc": {"claimName": "weights", "path": "m.gguf"}}))}),
    )
    .await?;
    let (claim_condition, claim_event, message) =
        refused_in_status_and_event(&client, &ns.name, "no-claim", "PvcNotFound").await?;
    assert!(
        message.contains("spec.model.source.pvc.claimName") && message.contains("\"weights\""),
        "the condition names the field and the claim: {message}"
    );
    report(
        "references",
        &json!({"missing_profile": {"condition_ms": profile_condition.as_millis(), "event_ms": profile_event.as_millis()},
                "missing_claim": {"condition_ms": claim_condition.as_millis(), "event_ms": claim_event.as_millis()}}),
    )?;
    ns.cleanup(&client).await
}
