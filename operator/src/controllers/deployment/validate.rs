//! What the schema cannot check about an InferenceDeployment: model sources that
//! are well-formed paths, a parsable VRAM reservation, explicit stages that
//! cover contiguous layers on distinct GPUs.

use gogrid_crds::InferenceDeployment;
use gogrid_crds::inference_deployment::{ModelSpec, StageSpec};

use crate::Error;

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Error {
    Error::InvalidSpec {
        field: field.into(),
        message: message.into(),
    }
}

fn check_path(field: &str, path: &str) -> Result<(), Error> {
    if !path.starts_with('/') {
        return Err(invalid(field, format!("{path:?} must be an absolute path")));
    }
    if path.split('/').any(|part| part == "..") {
        return Err(invalid(field, format!("{path:?} must not contain '..'")));
    }
    if path.ends_with('/') {
        return Err(invalid(
            field,
            format!("{path:?} names a directory, not a weights file"),
        ));
    }
    if path.contains('\0') {
        return Err(invalid(field, "must not contain NUL"));
    }
    Ok(())
}

fn check_dns_label(field: &str, value: &str) -> Result<(), Error> {
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
        Err(invalid(
            field,
            format!("{value:?} is not a valid object name"),
        ))
    }
}

fn check_model(at: &str, model: &ModelSpec) -> Result<(), Error> {
    let s = &model.source;
    let set = usize::from(s.path.is_some())
        + usize::from(s.pvc.is_some())
        + usize::from(s.host_path.is_some());
    if set != 1 {
        return Err(invalid(
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

fn check_stages(stages: &[StageSpec]) -> Result<(), Error> {
    for (i, pair) in stages.windows(2).enumerate() {
        if pair[1].first_layer != pair[0].last_layer + 1 {
            return Err(invalid(
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
            return Err(invalid(
                format!("spec.pipeline.stages[{i}].gpu"),
                format!("GPU {} already runs an earlier stage", s.gpu),
            ));
        }
    }
    Ok(())
}

/// VRAM one replica reserves, in bytes (0 when unset).
pub fn vram_need(infd: &InferenceDeployment) -> Result<i64, Error> {
    match infd.spec.resources.as_ref().and_then(|r| r.vram.as_ref()) {
        None => Ok(0),
        Some(q) => {
            gogrid_crds::quantity::bytes(&q.0).map_err(|m| invalid("spec.resources.vram", m))
        }
    }
}

/// Every check, first failure first; on success the VRAM one replica reserves.
pub fn validate(infd: &InferenceDeployment) -> Result<i64, Error> {
    check_model("spec.model", &infd.spec.model)?;
    if let Some(m) = infd.spec.canary_model() {
        check_model("spec.rollout.canary.model", m)?;
        if m.name != infd.spec.model.name {
            return Err(invalid(
                "spec.rollout.canary.model.name",
                format!(
                    "must equal spec.model.name {:?}: a canary is a new version of the same model",
                    infd.spec.model.name
                ),
            ));
        }
    }
    if let Some(m) = infd.spec.preview_model() {
        check_model("spec.rollout.blueGreen.preview.model", m)?;
        if m.name != infd.spec.model.name {
            return Err(invalid(
                "spec.rollout.blueGreen.preview.model.name",
                format!("must equal spec.model.name {:?}", infd.spec.model.name),
            ));
        }
    }
    if let Some(p) = &infd.spec.pipeline {
        check_stages(&p.stages)?;
    }
    vram_need(infd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::deployment::build::tests::deployment;
    use gogrid_crds::inference_deployment::{PvcSource, ResourcesSpec};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn field(e: Error) -> String {
        match e {
            Error::InvalidSpec { field, .. } => field,
            other => panic!("expected InvalidSpec, got {other}"),
        }
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
        use gogrid_crds::inference_deployment::{PipelineSpec, StageSpec};
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
        assert_eq!(vram_need(&d).expect("parses"), 2 * 1024 * 1024 * 1024);
    }
}
