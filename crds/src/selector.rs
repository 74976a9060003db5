//! Label selector matching (`matchLabels` and `matchExpressions`), as the API
//! server evaluates it, for deciding which profile selects which node.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` satisfy `selector`. An absent or empty selector matches
/// everything; an unknown operator matches nothing.
pub fn matches(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
        }
    }

    #[test]
    fn absent_and_empty_selectors_match_every_node() {
        assert!(matches(None, &labels(&[])));
        assert!(matches(
            Some(&LabelSelector::default()),
            &labels(&[("a", "b")])
        ));
    }

    #[test]
    fn match_labels_needs_every_pair() {
        let sel = LabelSelector {
            match_labels: Some(BTreeMap::from([
                ("gpu".into(), "a100".into()),
                ("zone".into(), "x".into()),
            ])),
            ..Default::default()
        };
        assert!(matches(
            Some(&sel),
            &labels(&[("gpu", "a100"), ("zone", "x"), ("other", "y")])
        ));
        assert!(!matches(Some(&sel), &labels(&[("gpu", "a100")])));
    }

    #[test]
    fn expressions_follow_the_api_server_semantics() {
        let node = labels(&[("gpu", "a100"), ("desk", "yes")]);
        let sel = |e| LabelSelector {
            match_expressions: Some(vec![e]),
            ..Default::default()
        };
        assert!(matches(
            Some(&sel(expr("gpu", "In", &["a100", "h100"]))),
            &node
        ));
        assert!(!matches(Some(&sel(expr("gpu", "NotIn", &["a100"]))), &node));
        assert!(matches(
            Some(&sel(expr("missing", "NotIn", &["a100"]))),
            &node
        ));
        assert!(matches(Some(&sel(expr("desk", "Exists", &[]))), &node));
        assert!(!matches(
            Some(&sel(expr("desk", "DoesNotExist", &[]))),
            &node
        ));
        assert!(!matches(Some(&sel(expr("gpu", "Gt", &["1"]))), &node));
    }
}
