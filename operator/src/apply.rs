//! Server-side apply under the operator's one field manager, skipped when the
//! object already holds every field the desired state sets: a reconcile that
//! changes nothing sends no write.

use std::fmt::Debug;

use gogrid_crds::labels::OPERATOR_MANAGER;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::{Error, Result};

/// Whether every field set in `desired` has the same value in `existing`.
/// Fields the server adds (defaults, status, managed fields) do not count;
/// lists must have the same length and match element by element.
pub fn is_subset(desired: &Value, existing: &Value) -> bool {
    match (desired, existing) {
        (Value::Object(d), Value::Object(e)) => d.iter().all(|(k, dv)| match e.get(k) {
            Some(ev) => is_subset(dv, ev),
            None => dv.is_null(),
        }),
        (Value::Array(d), Value::Array(e)) => {
            d.len() == e.len() && d.iter().zip(e).all(|(a, b)| is_subset(a, b))
        }
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => desired == existing,
    }
}

/// Apply `desired` unless `existing` already matches it. Returns whether a write
/// was sent.
pub async fn apply<K>(api: &Api<K>, desired: &K, existing: Option<&K>) -> Result<bool>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
{
    let name = desired
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingObjectKey("metadata.name"))?;
    if let Some(existing) = existing {
        let d = serde_json::to_value(desired).map_err(|source| Error::Serialize {
            what: "desired object",
            source,
        })?;
        let e = serde_json::to_value(existing).map_err(|source| Error::Serialize {
            what: "existing object",
            source,
        })?;
        if is_subset(&d, &e) {
            return Ok(false);
        }
    }
    let params = PatchParams::apply(OPERATOR_MANAGER).force();
    api.patch(&name, &params, &Patch::Apply(desired))
        .await
        .map_err(Error::kube(format!("applying {name}")))?;
    Ok(true)
}

/// Delete an object if it exists. Returns whether a delete was sent.
pub async fn delete_if_present<K>(api: &Api<K>, existing: Option<&K>) -> Result<bool>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let Some(existing) = existing else {
        return Ok(false);
    };
    let name = existing.name_any();
    match api.delete(&name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(Error::kube(format!("deleting {name}"))(e)),
    }
}

/// Read an object, `None` when absent.
pub async fn get_opt<K>(api: &Api<K>, name: &str) -> Result<Option<K>>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    api.get_opt(name)
        .await
        .map_err(Error::kube(format!("reading {name}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_defaults_do_not_count_as_a_difference() {
        let desired =
            json!({"spec": {"ports": [{"name": "http", "port": 80}]}, "metadata": {"name": "a"}});
        let existing = json!({
            "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}], "clusterIP": "10.0.0.1"},
            "metadata": {"name": "a", "uid": "u", "resourceVersion": "7"},
            "status": {}
        });
        assert!(is_subset(&desired, &existing));
    }

    #[test]
    fn a_changed_value_or_a_list_of_another_length_is_a_difference() {
        let existing = json!({"spec": {"ports": [{"port": 80}], "x": 1}});
        assert!(!is_subset(&json!({"spec": {"x": 2}}), &existing));
        assert!(!is_subset(
            &json!({"spec": {"ports": [{"port": 80}, {"port": 81}]}}),
            &existing
        ));
        assert!(!is_subset(&json!({"spec": {"missing": "yes"}}), &existing));
        assert!(
            is_subset(&json!({"spec": {"x": 1.0}}), &existing),
            "1 and 1.0 are the same number"
        );
    }
}
