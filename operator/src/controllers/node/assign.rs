//! Which ResourceProfile wins a node: among the profiles whose selector matches
//! the node's labels, the highest `priority`, then the name that sorts first.

use std::collections::BTreeMap;

use gogrid_crds::ResourceProfile;
use gogrid_crds::labels::PROFILE_LABEL;
use gogrid_crds::selector;
use kube::ResourceExt;

/// The winning profile's name for a node with `labels`, if any profile matches.
/// Profiles being deleted never win. The operator's own label is ignored, so a
/// node's assignment never depends on itself.
pub fn winner<'a>(
    labels: &BTreeMap<String, String>,
    profiles: impl Iterator<Item = &'a ResourceProfile>,
) -> Option<&'a str> {
    let mut own = labels.clone();
    own.remove(PROFILE_LABEL);
    profiles
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| selector::matches(p.spec.node_selector.as_ref(), &own))
        .min_by(|a, b| {
            b.spec
                .priority
                .cmp(&a.spec.priority)
                .then_with(|| a.name_any().cmp(&b.name_any()))
        })
        .and_then(|p| p.metadata.name.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gogrid_crds::ResourceProfileSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};

    fn profile(name: &str, priority: i32, selector: &[(&str, &str)]) -> ResourceProfile {
        let match_labels = selector
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut p = ResourceProfile::new(
            name,
            ResourceProfileSpec {
                priority,
                node_selector: Some(LabelSelector {
                    match_labels: Some(match_labels),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        p.metadata.uid = Some(format!("uid-{name}"));
        p
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_highest_priority_wins_then_the_first_name() {
        let ps = [
            profile("b-desk", 5, &[("desk", "yes")]),
            profile("a-all", 0, &[]),
            profile("c-desk", 5, &[("desk", "yes")]),
        ];
        assert_eq!(
            winner(&labels(&[("desk", "yes")]), ps.iter()),
            Some("b-desk")
        );
        assert_eq!(
            winner(&labels(&[("server", "yes")]), ps.iter()),
            Some("a-all")
        );
    }

    #[test]
    fn no_match_means_no_label() {
        let ps = [profile("desk", 0, &[("desk", "yes")])];
        assert_eq!(winner(&labels(&[("server", "yes")]), ps.iter()), None);
        assert_eq!(winner(&labels(&[]), std::iter::empty()), None);
    }

    #[test]
    fn a_profile_being_deleted_never_wins() {
        let mut doomed = profile("a", 10, &[]);
        doomed.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::UNIX_EPOCH));
        let ps = [doomed, profile("b", 0, &[])];
        assert_eq!(winner(&labels(&[]), ps.iter()), Some("b"));
    }

    #[test]
    fn the_operators_own_label_does_not_decide() {
        let ps = [profile("sticky", 0, &[(PROFILE_LABEL, "sticky")])];
        assert_eq!(
            winner(&labels(&[(PROFILE_LABEL, "sticky")]), ps.iter()),
            None
        );
    }
}
