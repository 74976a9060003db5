//! The standalone agent file (`gogrid-agent serve --config agent.yaml`): listen
//! addresses, a ResourceProfile spec and InferenceDeployment specs, checked
//! against the same CRD schemas the API server uses, then by the same semantic
//! checks as the operator. An invalid file is refused with the field named.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context as _, bail};
use gogrid_crds::{
    InferenceDeployment, InferenceDeploymentSpec, ResourceProfile, ResourceProfileSpec,
};
use kube::CustomResourceExt;
use serde::Deserialize;
use serde_json::Value;

use super::env::expand;

/// What `agent.yaml` holds.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentFile {
    /// Listen addresses.
    #[serde(default)]
    pub listen: Listen,
    /// Name the agent reports as (metrics, logs). Default: the host name.
    #[serde(default)]
    pub node: Option<String>,
    /// A declared GPU inventory instead of NVML (`2x24Gi`, `24Gi,16Gi`).
    #[serde(default)]
    pub simulate_gpus: Option<String>,
    /// The node policy: the spec of a ResourceProfile.
    #[serde(default = "default_profile")]
    pub profile: ResourceProfileSpec,
    /// Models to serve.
    #[serde(default)]
    pub deployments: Vec<LocalDeployment>,
}

/// Listen addresses of the three servers.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// REST (Open Inference Protocol v2, OpenAI-style endpoints).
    #[serde(default = "default_http")]
    pub http: SocketAddr,
    /// gRPC (Open Inference Protocol v2).
    #[serde(default = "default_grpc")]
    pub grpc: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`.
    #[serde(default = "default_metrics")]
    pub metrics: SocketAddr,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            http: default_http(),
            grpc: default_grpc(),
            metrics: default_metrics(),
        }
    }
}

fn default_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8000))
}
fn default_grpc() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8001))
}
fn default_metrics() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8002))
}
fn default_profile() -> ResourceProfileSpec {
    ResourceProfileSpec::default()
}

/// One model deployment: a name plus the spec of an InferenceDeployment.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LocalDeployment {
    /// Deployment name (as `metadata.name` would be).
    pub name: String,
    /// The InferenceDeployment spec. `profile` may be left out: a standalone agent
    /// has exactly one profile, the file's.
    pub spec: InferenceDeploymentSpec,
}

/// Read, expand `${VAR}` references, and check `path`.
pub fn load(path: &Path) -> anyhow::Result<AgentFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading agent file {}", path.display()))?;
    parse(&text).with_context(|| format!("invalid agent file {}", path.display()))
}

/// Check the text of an agent file, expanding from the process environment.
pub fn parse(text: &str) -> anyhow::Result<AgentFile> {
    parse_with(text, |name| std::env::var(name).ok())
}

/// Check the text of an agent file, expanding `${VAR}` through `lookup`.
pub fn parse_with(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<AgentFile> {
    let text = expand(text, lookup)?;
    let mut doc: Value = serde_yaml::from_str(&text).context("not valid YAML")?;
    if doc.is_null() {
        doc = Value::Object(Default::default());
    }
    let Some(top) = doc.as_object_mut() else {
        bail!("the file must be a mapping with listen, profile and deployments");
    };
    if let Some(deployments) = top.get_mut("deployments").and_then(Value::as_array_mut) {
        for d in deployments.iter_mut() {
            if let Some(spec) = d.get_mut("spec").and_then(Value::as_object_mut) {
                spec.entry("profile")
                    .or_insert_with(|| Value::String("standalone".into()));
            }
        }
    }
    check_schema(&doc)?;
    let file: AgentFile = strict(doc)?;
    check_semantics(&file)?;
    Ok(file)
}

/// Deserialize, refusing unknown fields anywhere (the CRD schema would prune
/// them silently; a local file should say so) and naming the path of any error.
fn strict(doc: Value) -> anyhow::Result<AgentFile> {
    let mut unknown = Vec::new();
    let mut note = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let de = serde_ignored::Deserializer::new(doc, &mut note);
    let file: Result<AgentFile, _> = serde_path_to_error::deserialize(de);
    let file = file.map_err(|e| anyhow::anyhow!("{}: {}", e.path(), e.inner()))?;
    if let Some(path) = unknown.first() {
        bail!("{path}: unknown field");
    }
    Ok(file)
}

fn crd_spec_schema(
    crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
) -> anyhow::Result<Value> {
    let schema = crd
        .spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .context("CRD without a schema")?;
    let schema = serde_json::to_value(schema).context("CRD schema to JSON")?;
    schema
        .pointer("/properties/spec")
        .cloned()
        .context("CRD schema without spec")
}

fn check_against(schema: &Value, value: &Value, at: &str) -> anyhow::Result<()> {
    let validator = jsonschema::validator_for(schema).context("compiling the CRD schema")?;
    if let Some(error) = validator.iter_errors(value).next() {
        let path = error.instance_path().to_string();
        let field = path.trim_start_matches('/').replace('/', ".");
        let field = if field.is_empty() {
            at.to_owned()
        } else {
            format!("{at}.{field}")
        };
        bail!("{field}: {error}");
    }
    Ok(())
}

fn check_schema(doc: &Value) -> anyhow::Result<()> {
    if let Some(profile) = doc.get("profile") {
        check_against(
            &crd_spec_schema(&ResourceProfile::crd())?,
            profile,
            "profile",
        )?;
    }
    if let Some(deployments) = doc.get("deployments").and_then(Value::as_array) {
        let schema = crd_spec_schema(&InferenceDeployment::crd())?;
        for (i, d) in deployments.iter().enumerate() {
            if let Some(spec) = d.get("spec") {
                check_against(&schema, spec, &format!("deployments[{i}].spec"))?;
            }
        }
    }
    Ok(())
}

fn check_semantics(file: &AgentFile) -> anyhow::Result<()> {
    gogrid_crds::effective_policy(&file.profile, jiff::Timestamp::now())
        .map_err(|e| anyhow::anyhow!("profile.{}: {}", strip_spec(&e.field), e.message))?;
    let mut names = std::collections::HashSet::new();
    let mut models = std::collections::HashMap::new();
    for (i, d) in file.deployments.iter().enumerate() {
        let at = format!("deployments[{i}]");
        if !is_dns_label(&d.name) {
            bail!(
                "{at}.name: {:?} must be a DNS label (lowercase letters, digits, '-')",
                d.name
            );
        }
        if !names.insert(d.name.as_str()) {
            bail!("{at}.name: {:?} is used by an earlier deployment", d.name);
        }
        if let Some(other) = models.insert(d.spec.model.name.as_str(), d.name.as_str()) {
            bail!(
                "{at}.spec.model.name: {:?} is already served by deployment {other:?}",
                d.spec.model.name
            );
        }
        gogrid_crds::validation::deployment_spec(&d.spec)
            .map_err(|e| anyhow::anyhow!("{at}.spec.{}: {}", strip_spec(&e.field), e.message))?;
    }
    Ok(())
}

fn strip_spec(field: &str) -> &str {
    field.strip_prefix("spec.").unwrap_or(field)
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 55
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen:
  http: 127.0.0.1:9000
profile:
  preset: conservative
  throttle:
    minRequestIntervalMs: 20
deployments:
  - name: minilm
    spec:
      model:
        name: all-minilm-l6-v2
        source:
          path: /models/minilm/model.safetensors
        format: safetensors
        task: embedding
"#;

    fn error(text: &str) -> String {
        format!("{:#}", parse(text).expect_err("the file is invalid"))
    }

    #[test]
    fn a_good_file_parses_into_the_crd_types_with_defaults_filled() {
        let f = parse(GOOD).expect("valid");
        assert_eq!(f.listen.http, "127.0.0.1:9000".parse().expect("addr"));
        assert_eq!(f.listen.grpc, default_grpc());
        assert_eq!(f.profile.preset, gogrid_crds::Preset::Conservative);
        assert_eq!(f.deployments[0].spec.model.version, "v1");
        assert_eq!(f.deployments[0].spec.profile, "standalone");
    }

    #[test]
    fn an_empty_file_means_the_default_preset_and_no_models() {
        let f = parse("").expect("empty is valid");
        assert!(f.deployments.is_empty());
        assert_eq!(f.profile.preset, gogrid_crds::Preset::Default);
    }

    #[test]
    fn a_bad_enum_is_refused_naming_the_field_by_the_crd_schema() {
        let e = error(&GOOD.replace("format: safetensors", "format: onnx"));
        assert!(e.contains("deployments[0].spec.model.format"), "{e}");
    }

    #[test]
    fn an_out_of_range_percentage_is_refused_naming_the_field() {
        let e = error(&GOOD.replace(
            "minRequestIntervalMs: 20",
            "minRequestIntervalMs: 20\n  vram:\n    maxPercent: 140",
        ));
        assert!(e.contains("profile.vram.maxPercent"), "{e}");
    }

    #[test]
    fn an_unknown_field_is_refused_naming_its_path() {
        let e = error(&GOOD.replace("task: embedding", "task: embedding\n        quantize: q4"));
        assert!(e.contains("model") && e.contains("quantize"), "{e}");
        let e = error(&GOOD.replace("listen:", "lisen:\n  x: 1\nlisten:"));
        assert!(e.contains("lisen"), "{e}");
    }

    #[test]
    fn a_semantic_error_names_the_field_like_the_operator_does() {
        let e = error(&GOOD.replace("/models/minilm/model.safetensors", "/models/../x"));
        assert!(e.contains("deployments[0].spec.model.source.path"), "{e}");
        let two = format!(
            "{GOOD}  - name: minilm\n    spec:\n      model:\n        name: b\n        source: {{path: /b}}\n        format: gguf\n        task: text-generation\n"
        );
        let e = error(&two);
        assert!(e.contains("deployments[1].name"), "{e}");
    }

    #[test]
    fn environment_references_are_expanded_and_an_unset_one_is_named() {
        let text = GOOD.replace(
            "/models/minilm/model.safetensors",
            "${GOGRID_TEST_UNSET_VAR}",
        );
        let e = error(&text);
        assert!(e.contains("GOGRID_TEST_UNSET_VAR"), "{e}");
    }

    #[test]
    fn the_example_in_manifests_parses() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../manifests/examples/agent.yaml"
        ))
        .expect("manifests/examples/agent.yaml exists");
        let f = parse_with(&text, |name| {
            // Model paths are set; ports fall back to their defaults.
            (!name.ends_with("_PORT")).then(|| format!("/models/{name}"))
        })
        .expect("valid");
        assert!(!f.deployments.is_empty());
    }
}
