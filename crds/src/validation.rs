//! Field-level validation shared by the operator and the agent's standalone
//! mode: the checks the CRD schema and its CEL rules cannot express, each error
//! naming the JSON path of the field at fault.

use crate::inference_deployment::{InferenceDeploymentSpec, ModelSpec, StageSpec};

/// An invalid spec, naming the field at fault.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// JSON path of the field, e.g. `spec.schedule[1].timeZone`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

fn check_path(field: &str, path: &str) -> Result<(), FieldError> {
    if !path.starts_with('/') {
        return Err(FieldError::new(
            field,
            format!("{path:?} must be an absolute path"),
        ));
    }
    if path.split('/').any(|part| part == "..") {
        return Err(FieldError::new(
            field,
            format!("{path:?} must not contain '..'"),
        ));
    }
    if path.ends_with('/') {
        return Err(FieldError::new(
            field,
            format!("{path:?} names a directory, not a weights file"),
        ));
    }
    if path.contains('\0') {
        return Err(FieldError::new(field, "must not contain NUL"));
    }
    Ok(())
}

fn check_dns_label(field: &str, value: &str) -> Result<(), FieldError> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|part| {
            !part.is_empty()
                && part.len() <= 63
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            format!("{value:?} is not a valid object name"),
        ))
    }
}

fn check_model(at: &str, model: &ModelSpec) -> Result<(), FieldError> {
    let s = &model.source;
    let set = usize::from(s.path.is_some())
        + usize::from(s.pvc.is_some())
        + usize::from(s.host_path.is_some());
    if set != 1 {
        return Err(FieldError::new(
            format!("{at}.source"),
            format!("exactly one of path, pvc or hostPath must be set, found {set}"),
        ));
    }
    if let Some(p) = &s.path {
        check_path(&format!("{at}.source.path"), p)?;
    }
    if let Some(p) = &s.host_path {
        check_path(&format!("{at}.source.hostPath"), p)?;
    }
    if let Some(pvc) = &s.pvc {
        check_dns_label(&format!("{at}.source.pvc.claimName"), &pvc.claim_name)?;
        let inner = if pvc.path.starts_with('/') {
            pvc.path.clone()
        } else {
            format!("/{}", pvc.path)
        };
        check_path(&format!("{at}.source.pvc.path"), &inner)?;
    }
    Ok(())
}

fn check_stages(stages: &[StageSpec]) -> Result<(), FieldError> {
    for (i, pair) in stages.windows(2).enumerate() {
        if pair[1].first_layer != pair[0].last_layer + 1 {
            return Err(FieldError::new(
                format!("spec.pipeline.stages[{}].firstLayer", i + 1),
                format!(
                    "must be {} so that stages cover contiguous layers, got {}",
                    pair[0].last_layer + 1,
                    pair[1].first_layer
                ),
            ));
        }
    }
    for (i, s) in stages.iter().enumerate() {
        if stages[..i].iter().any(|o| o.gpu == s.gpu) {
            return Err(FieldError::new(
                format!("spec.pipeline.stages[{i}].gpu"),
                format!("GPU {} already runs an earlier stage", s.gpu),
            ));
        }
    }
    Ok(())
}

/// VRAM one replica reserves, in bytes (0 when unset).
pub fn vram_need(spec: &InferenceDeploymentSpec) -> Result<i64, FieldError> {
    match spec.resources.as_ref().and_then(|r| r.vram.as_ref()) {
        None => Ok(0),
        Some(q) => {
            crate::quantity::bytes(&q.0).map_err(|m| FieldError::new("spec.resources.vram", m))
        }
    }
}

/// Every check, first failure first; on success the VRAM one replica reserves.
pub fn deployment_spec(spec: &InferenceDeploymentSpec) -> Result<i64, FieldError> {
    check_model("spec.model", &spec.model)?;
    if let Some(m) = spec.canary_model() {
        check_model("spec.rollout.canary.model", m)?;
        if m.name != spec.model.name {
            return Err(FieldError::new(
                "spec.rollout.canary.model.name",
                format!(
                    "must equal spec.model.name {:?}: a canary is a new version of the same model",
                    spec.model.name
                ),
            ));
        }
    }
    if let Some(m) = spec.preview_model() {
        check_model("spec.rollout.blueGreen.preview.model", m)?;
        if m.name != spec.model.name {
            return Err(FieldError::new(
                "spec.rollout.blueGreen.preview.model.name",
                format!("must equal spec.model.name {:?}", spec.model.name),
            ));
        }
    }
    if let Some(p) = &spec.pipeline {
        check_stages(&p.stages)?;
    }
    vram_need(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inference_deployment::{PvcSource, ResourcesSpec};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn field(e: FieldError) -> String {
        e.field
    }

    fn deployment(name: &str) -> Spec {
        Spec {
            spec: serde_json::from_value(serde_json::json!({
                "profile": "default",
                "model": {
                    "name": name,
                    "source": {"path": "/models/m.gguf"},
                    "format": "gguf",
                    "task": "text-generation",
                },
            }))
            .expect("a minimal spec deserializes"),
        }
    }

    /// The tests below read `d.spec.…` as the operator's did.
    struct Spec {
        spec: InferenceDeploymentSpec,
    }

    fn validate(d: &Spec) -> Result<i64, FieldError> {
        deployment_spec(&d.spec)
    }

    #[test]
    fn a_well_formed_deployment_passes() {
        assert!(validate(&deployment("chat")).is_ok());
    }

    #[test]
    fn relative_or_escaping_paths_are_refused_naming_the_field() {
        let mut d = deployment("chat");
        d.spec.model.source.path = Some("models/x.gguf".into());
        assert_eq!(
            field(validate(&d).expect_err("relative")),
            "spec.model.source.path"
        );
        d.spec.model.source.path = Some("/models/../etc/passwd".into());
        assert_eq!(
            field(validate(&d).expect_err("dotdot")),
            "spec.model.source.path"
        );
    }

    #[test]
    fn two_sources_or_a_bad_claim_name_are_refused() {
        let mut d = deployment("chat");
        d.spec.model.source.pvc = Some(PvcSource {
            claim_name: "weights".into(),
            path: "x.gguf".into(),
        });
        assert_eq!(
            field(validate(&d).expect_err("two sources")),
            "spec.model.source"
        );
        d.spec.model.source.path = None;
        d.spec.model.source.pvc = Some(PvcSource {
            claim_name: "Bad_Name".into(),
            path: "x.gguf".into(),
        });
        assert_eq!(
            field(validate(&d).expect_err("claim")),
            "spec.model.source.pvc.claimName"
        );
    }

    #[test]
    fn stages_must_be_contiguous_and_on_distinct_gpus() {
        use crate::inference_deployment::{PipelineSpec, StageSpec};
        let stage = |gpu, first_layer, last_layer| StageSpec {
            gpu,
            first_layer,
            last_layer,
        };
        let mut d = deployment("chat");
        d.spec.pipeline = Some(PipelineSpec {
            gpus_per_replica: Some(2),
            stages: vec![stage(0, 0, 9), stage(1, 11, 20)],
        });
        assert_eq!(
            field(validate(&d).expect_err("gap")),
            "spec.pipeline.stages[1].firstLayer"
        );
        d.spec.pipeline = Some(PipelineSpec {
            gpus_per_replica: Some(2),
            stages: vec![stage(0, 0, 9), stage(0, 10, 20)],
        });
        assert_eq!(
            field(validate(&d).expect_err("same gpu")),
            "spec.pipeline.stages[1].gpu"
        );
    }

    #[test]
    fn a_bad_vram_quantity_names_the_field() {
        let mut d = deployment("chat");
        d.spec.resources = Some(ResourcesSpec {
            vram: Some(Quantity("2GB".into())),
        });
        assert_eq!(
            field(validate(&d).expect_err("quantity")),
            "spec.resources.vram"
        );
        d.spec.resources = Some(ResourcesSpec {
            vram: Some(Quantity("2Gi".into())),
        });
        assert_eq!(vram_need(&d.spec).expect("parses"), 2 * 1024 * 1024 * 1024);
    }
}
