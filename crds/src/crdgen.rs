//! Renders the CustomResourceDefinitions as Helm templates for charts/gogrid:
//! gated by `crds.enabled`, kept on uninstall when `crds.keep`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{GpuNode, InferenceDeployment, ResourceProfile};

/// Folder of the CRD templates, relative to the repository root.
pub const CHART_CRD_DIR: &str = "charts/gogrid/templates/crds";

/// The longest ResourceProfile name: it names the agent DaemonSet
/// (`gogrid-agent-<profile>`, within the 63 characters of a label value).
pub const PROFILE_NAME_MAX: i64 = 50;
/// The longest InferenceDeployment name: it names its Services
/// (`<name>-preview` within the 63 characters of a DNS label).
pub const DEPLOYMENT_NAME_MAX: i64 = 55;

/// Every CRD this crate defines.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        with_name_limit(ResourceProfile::crd(), PROFILE_NAME_MAX),
        with_name_limit(InferenceDeployment::crd(), DEPLOYMENT_NAME_MAX),
        GpuNode::crd(),
    ]
}

/// Bounds `metadata.name` in the schema (the one restriction of metadata a
/// CRD may carry), so that the API server refuses a longer name with 422 and
/// `causes[].field` = `metadata.name`, as for any other bound.
fn with_name_limit(mut crd: CustomResourceDefinition, max: i64) -> CustomResourceDefinition {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
    for version in &mut crd.spec.versions {
        let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        else {
            continue;
        };
        let name = JSONSchemaProps {
            type_: Some("string".into()),
            max_length: Some(max),
            description: Some(format!("At most {max} characters.")),
            ..JSONSchemaProps::default()
        };
        let metadata = JSONSchemaProps {
            type_: Some("object".into()),
            properties: Some([("name".to_owned(), name)].into_iter().collect()),
            ..JSONSchemaProps::default()
        };
        schema
            .properties
            .get_or_insert_with(Default::default)
            .insert("metadata".to_owned(), metadata);
    }
    crd
}

/// File name and Helm template text of every CRD.
pub fn chart_templates() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    crds()
        .iter()
        .map(|crd| Ok((format!("{}.yaml", crd.spec.names.plural), template(crd)?)))
        .collect()
}

fn template(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    let spec = serde_yaml::to_string(&crd.spec)?;
    let name = crd.metadata.name.as_deref().unwrap_or_default();
    let mut out = String::new();
    out.push_str("{{- if .Values.crds.enabled }}\n");
    out.push_str(
        "# Generated from the Rust types by `make crds` (crds/src/bin/crdgen.rs). Do not edit.\n",
    );
    out.push_str(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n",
    );
    out.push_str(&format!("  name: {name}\n"));
    out.push_str("  labels:\n");
    out.push_str("    app.kubernetes.io/name: gogrid\n");
    out.push_str("    app.kubernetes.io/instance: {{ .Release.Name }}\n");
    out.push_str("    app.kubernetes.io/managed-by: {{ .Release.Service }}\n");
    out.push_str("    app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}\n");
    out.push_str("    helm.sh/chart: {{ printf \"%s-%s\" .Chart.Name .Chart.Version }}\n");
    out.push_str("  {{- if .Values.crds.keep }}\n  annotations:\n    helm.sh/resource-policy: keep\n  {{- end }}\n");
    out.push_str("spec:\n");
    for line in spec.lines() {
        // Helm would read `{{` in a CEL rule or description as template syntax.
        let line = line.replace("{{", "{{ \"{{\" }}");
        out.push_str("  ");
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str("{{- end }}\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Every `x-kubernetes-validations` rule anywhere in a schema.
    fn rules(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Array(list)) = m.get("x-kubernetes-validations") {
                    out.extend(
                        list.iter()
                            .filter_map(|r| r["rule"].as_str().map(str::to_owned)),
                    );
                }
                m.values().for_each(|v| rules(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| rules(v, out)),
            _ => {}
        }
    }

    fn crd_json(crd: &CustomResourceDefinition) -> Value {
        serde_json::to_value(crd).expect("crd serializes")
    }

    #[test]
    fn names_are_bounded_in_the_schema_so_the_api_server_names_the_field() {
        for (crd, max) in [(0, PROFILE_NAME_MAX), (1, DEPLOYMENT_NAME_MAX)] {
            let v = crd_json(&crds()[crd]);
            let name = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["metadata"]
                ["properties"]["name"];
            assert_eq!(name["maxLength"], max, "{v}");
        }
    }

    fn all_rules(crd: &CustomResourceDefinition) -> Vec<String> {
        let mut out = Vec::new();
        rules(&crd_json(crd), &mut out);
        out
    }

    fn has_rule(rules: &[String], needle: &str) -> bool {
        rules.iter().any(|r| r.contains(needle))
    }

    #[test]
    fn every_cel_rule_of_the_inference_deployment_is_in_the_generated_schema() {
        let r = all_rules(&InferenceDeployment::crd());
        for needle in [
            "self >= 0 && self <= 100",                           // canary weight
            "self.weight == 0 || has(self.model)",                // canary model
            "self.map(s, s.weight).isSorted()",                   // steps rising
            "has(self.blueGreen) && has(self.blueGreen.preview)", // preview required
            "(has(self.path) ? 1 : 0) + (has(self.pvc) ? 1 : 0) + (has(self.hostPath) ? 1 : 0) == 1", // one source
            "self.model.name == oldSelf.model.name", // transition rule
            "self.rollout.canary.model.version != self.model.version",
            "self.firstLayer <= self.lastLayer",
        ] {
            assert!(
                has_rule(&r, needle),
                "rule {needle:?} missing; rules present: {r:#?}"
            );
        }
    }

    #[test]
    fn every_cel_rule_of_the_resource_profile_is_in_the_generated_schema() {
        let r = all_rules(&ResourceProfile::crd());
        for needle in [
            "vram.maxPercent must be between 1 and 100",
            "compute.maxPercent must be between 1 and 100",
            "process.nice must be between 0 and 19",
            "self.start != self.end",
            "self.all(d, self.exists_one(e, e == d))",
        ] {
            let found = has_rule(&r, needle)
                || crd_json(&ResourceProfile::crd())
                    .to_string()
                    .contains(needle);
            assert!(found, "rule {needle:?} missing; rules present: {r:#?}");
        }
        assert!(
            r.iter()
                .filter(|x| x.as_str() == "self >= 1 && self <= 100")
                .count()
                >= 4,
            "{r:#?}"
        );
    }

    #[test]
    fn bounds_enums_and_defaults_are_in_the_schema() {
        let v = crd_json(&ResourceProfile::crd());
        let spec = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        assert_eq!(
            spec["preset"]["enum"],
            serde_json::json!(["conservative", "default", "aggressive"])
        );
        assert_eq!(spec["preset"]["default"], "default");
        assert_eq!(spec["vram"]["properties"]["maxPercent"]["maximum"], 100.0);
        assert_eq!(
            spec["process"]["properties"]["ioClass"]["enum"],
            serde_json::json!(["idle", "best-effort"])
        );
        assert_eq!(spec["process"]["properties"]["ioLevel"]["maximum"], 7.0);

        let v = crd_json(&InferenceDeployment::crd());
        let spec = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        assert_eq!(
            spec["model"]["properties"]["format"]["enum"],
            serde_json::json!(["gguf", "safetensors"])
        );
        assert_eq!(
            spec["model"]["properties"]["task"]["enum"],
            serde_json::json!(["text-generation", "embedding"])
        );
        let canary = &spec["rollout"]["properties"]["canary"]["properties"];
        assert_eq!(canary["weight"]["minimum"], 0.0);
        assert_eq!(canary["weight"]["maximum"], 100.0);
        assert_eq!(
            spec["rollout"]["properties"]["strategy"]["enum"],
            serde_json::json!(["Canary", "BlueGreen"])
        );
    }

    #[test]
    fn every_field_has_a_description_for_kubectl_explain() {
        fn walk(path: &str, v: &Value, missing: &mut Vec<String>) {
            if let Some(props) = v.get("properties").and_then(Value::as_object) {
                for (k, p) in props {
                    let here = format!("{path}.{k}");
                    if p.get("description")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                    {
                        missing.push(here.clone());
                    }
                    walk(&here, p, missing);
                }
            }
            if let Some(items) = v.get("items") {
                walk(&format!("{path}[]"), items, missing);
            }
        }
        for crd in crds() {
            let v = crd_json(&crd);
            let root = &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
            let mut missing = Vec::new();
            for part in ["spec", "status"] {
                walk(part, &root["properties"][part], &mut missing);
            }
            // Fields of upstream Kubernetes types (LabelSelector, Condition) carry upstream docs.
            assert!(
                missing.is_empty(),
                "{}: fields without description: {missing:#?}",
                crd.spec.names.kind
            );
        }
    }

    #[test]
    fn printer_columns_show_ready_replicas_canary_weight_and_phase() {
        let crd = InferenceDeployment::crd();
        let cols = crd.spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap_or_default();
        let paths: Vec<_> = cols.iter().map(|c| c.json_path.as_str()).collect();
        for p in [
            ".status.readyReplicas",
            ".status.traffic.canaryWeight",
            ".status.rollout.phase",
        ] {
            assert!(paths.contains(&p), "column {p} missing: {paths:?}");
        }
        assert_eq!(crd.spec.names.short_names, Some(vec!["infd".to_owned()]));
        assert_eq!(ResourceProfile::crd().spec.scope, "Cluster");
        assert_eq!(GpuNode::crd().spec.scope, "Cluster");
        assert_eq!(crd.spec.scope, "Namespaced");
        for crd in crds() {
            assert!(
                crd.spec.versions[0]
                    .subresources
                    .as_ref()
                    .is_some_and(|s| s.status.is_some())
            );
        }
    }

    #[test]
    fn the_committed_chart_templates_match_the_types() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for (file, text) in chart_templates().expect("render") {
            let path = root.join(CHART_CRD_DIR).join(&file);
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == text,
                "{CHART_CRD_DIR}/{file} is stale or missing: run `make crds` and commit the result"
            );
        }
    }
}
