//! Pure placement of an InferenceDeployment on the nodes of its profile: every
//! node, or `replicas` nodes chosen by free VRAM budget as the GpuNode objects
//! report it, keeping nodes already placed when they still fit.

use std::collections::BTreeMap;
use std::sync::Arc;

use gogrid_crds::inference_deployment::NodePlacement;
use gogrid_crds::labels::PROFILE_LABEL;
use gogrid_crds::quantity::human;
use gogrid_crds::{GpuNode, InferenceDeployment};
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;

/// A node of the profile, with its budget as its agent reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Node name.
    pub name: String,
    /// VRAM budget reported by the agent; `None` while no agent has reported.
    pub budget: Option<i64>,
    /// Budget taken by other deployments (reserved or reported, whichever is larger).
    pub used_by_others: i64,
}

impl Candidate {
    /// Budget left for this deployment (0 when unknown).
    pub fn free(&self) -> i64 {
        self.budget.map_or(0, |b| (b - self.used_by_others).max(0))
    }
}

/// Why fewer nodes were placed than wanted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shortfall {
    /// Nodes wanted.
    pub wanted: usize,
    /// Nodes placed.
    pub placed: usize,
    /// VRAM one replica needs.
    pub need: i64,
    /// The unplaced node with the most free budget, if any.
    pub best_other: Option<(String, i64)>,
}

impl Shortfall {
    /// The condition message.
    pub fn message(&self) -> String {
        let best = match &self.best_other {
            Some((node, free)) => format!(
                "; the largest free budget on another node is {} ({node})",
                human(*free)
            ),
            None => "; no other node of the profile has an agent reporting a budget".to_owned(),
        };
        format!(
            "placed on {} of {} nodes: a replica needs {} of VRAM budget{best}",
            self.placed,
            self.wanted,
            human(self.need)
        )
    }
}

/// The outcome of placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Chosen nodes, sorted by name.
    pub nodes: Vec<NodePlacement>,
    /// How many nodes were wanted.
    pub wanted: usize,
    /// Set when fewer nodes than wanted could take it.
    pub shortfall: Option<Shortfall>,
}

/// The nodes of `profile` with their budgets, for deployment `me` (namespace, name).
pub fn candidates(
    profile: &str,
    me: (&str, &str),
    nodes: &[Arc<Node>],
    gpunodes: &[Arc<GpuNode>],
    deployments: &[Arc<InferenceDeployment>],
) -> Vec<Candidate> {
    let reports: BTreeMap<String, &GpuNode> = gpunodes
        .iter()
        .map(|g| (g.name_any(), g.as_ref()))
        .collect();
    let mut reserved: BTreeMap<&str, i64> = BTreeMap::new();
    for d in deployments {
        let is_me = d.namespace().as_deref() == Some(me.0) && d.name_any() == me.1;
        if is_me {
            continue;
        }
        for p in d.status.iter().flat_map(|s| &s.placement) {
            *reserved.entry(p.node.as_str()).or_default() += p.vram_bytes;
        }
    }
    let mut out: Vec<Candidate> = nodes
        .iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .filter(|n| n.labels().get(PROFILE_LABEL).map(String::as_str) == Some(profile))
        .map(|n| {
            let name = n.name_any();
            let status = reports.get(&name).and_then(|g| g.status.as_ref());
            let budget = status.and_then(|s| s.budget.as_ref());
            let mine: i64 = status
                .iter()
                .flat_map(|s| &s.pipelines)
                .filter(|p| p.namespace == me.0 && p.deployment == me.1)
                .map(|p| p.vram_bytes)
                .sum();
            let reported_others = budget.map_or(0, |b| (b.vram_used_bytes - mine).max(0));
            let reserved_others = reserved.get(name.as_str()).copied().unwrap_or(0);
            Candidate {
                budget: budget.map(|b| b.vram_budget_bytes),
                used_by_others: reported_others.max(reserved_others),
                name,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Choose nodes. `replicas: None` places on every candidate that fits; otherwise
/// the nodes already placed that still fit are kept and the rest are filled from
/// the candidates with the most free budget (ties by name). A node fits when its
/// free budget covers `need`, or when its agent has not reported yet and nothing
/// is reserved (`need == 0`).
pub fn place(
    replicas: Option<i32>,
    need: i64,
    previous: &[NodePlacement],
    candidates: &[Candidate],
) -> Placement {
    let fits = |c: &Candidate| {
        if c.budget.is_some() {
            c.free() >= need
        } else {
            need == 0
        }
    };
    let wanted = match replicas {
        None => candidates.len(),
        Some(n) => usize::try_from(n.max(0)).unwrap_or(0),
    };
    let mut chosen: Vec<&Candidate> = Vec::new();
    if replicas.is_none() {
        chosen.extend(candidates.iter().filter(|c| fits(c)));
    } else {
        let was_placed = |c: &Candidate| previous.iter().any(|p| p.node == c.name);
        let mut kept: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| was_placed(c) && fits(c))
            .collect();
        kept.sort_by(|a, b| b.free().cmp(&a.free()).then_with(|| a.name.cmp(&b.name)));
        chosen.extend(kept.into_iter().take(wanted));
        let mut rest: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| !chosen.iter().any(|k| k.name == c.name) && fits(c))
            .collect();
        rest.sort_by(|a, b| {
            b.budget
                .is_some()
                .cmp(&a.budget.is_some())
                .then(b.free().cmp(&a.free()))
                .then_with(|| a.name.cmp(&b.name))
        });
        let room = wanted.saturating_sub(chosen.len());
        chosen.extend(rest.into_iter().take(room));
    }
    let shortfall = (chosen.len() < wanted).then(|| Shortfall {
        wanted,
        placed: chosen.len(),
        need,
        best_other: candidates
            .iter()
            .filter(|c| c.budget.is_some() && !chosen.iter().any(|k| k.name == c.name))
            .max_by(|a, b| a.free().cmp(&b.free()).then_with(|| b.name.cmp(&a.name)))
            .map(|c| (c.name.clone(), c.free())),
    });
    let mut nodes: Vec<NodePlacement> = chosen
        .into_iter()
        .map(|c| {
            let gpus = previous
                .iter()
                .find(|p| p.node == c.name)
                .map(|p| p.gpus.clone())
                .unwrap_or_default();
            NodePlacement {
                node: c.name.clone(),
                vram_bytes: need,
                gpus,
            }
        })
        .collect();
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    Placement {
        nodes,
        wanted,
        shortfall,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GI: i64 = 1024 * 1024 * 1024;

    fn c(name: &str, budget: Option<i64>, used: i64) -> Candidate {
        Candidate {
            name: name.into(),
            budget,
            used_by_others: used,
        }
    }

    fn names(p: &Placement) -> Vec<&str> {
        p.nodes.iter().map(|n| n.node.as_str()).collect()
    }

    #[test]
    fn every_node_mode_places_on_all_nodes_that_fit() {
        let cands = [
            c("a", Some(10 * GI), 0),
            c("b", Some(10 * GI), 9 * GI),
            c("c", None, 0),
        ];
        let p = place(None, 2 * GI, &[], &cands);
        assert_eq!(names(&p), ["a"]);
        assert_eq!(p.wanted, 3);
        assert!(p.shortfall.is_some());
        let p = place(None, 0, &[], &cands);
        assert_eq!(names(&p), ["a", "b", "c"]);
        assert_eq!(p.shortfall, None);
    }

    #[test]
    fn replicas_go_to_the_nodes_with_the_most_free_budget() {
        let cands = [
            c("a", Some(10 * GI), 8 * GI),
            c("b", Some(24 * GI), 0),
            c("c", Some(16 * GI), 0),
        ];
        let p = place(Some(2), GI, &[], &cands);
        assert_eq!(names(&p), ["b", "c"]);
        assert!(p.nodes.iter().all(|n| n.vram_bytes == GI));
    }

    #[test]
    fn placed_nodes_that_still_fit_are_kept() {
        let cands = [
            c("a", Some(10 * GI), 8 * GI),
            c("b", Some(24 * GI), 0),
            c("c", Some(16 * GI), 0),
        ];
        let previous = [NodePlacement {
            node: "a".into(),
            vram_bytes: GI,
            gpus: vec![1],
        }];
        let p = place(Some(2), GI, &previous, &cands);
        assert_eq!(names(&p), ["a", "b"]);
        assert_eq!(p.nodes[0].gpus, [1], "the agent's GPU choice is kept");
    }

    #[test]
    fn nothing_fits_gives_a_shortfall_naming_the_need_and_the_best_node() {
        let cands = [c("a", Some(4 * GI), 3 * GI), c("b", Some(8 * GI), 6 * GI)];
        let p = place(Some(1), 4 * GI, &[], &cands);
        assert!(p.nodes.is_empty());
        let s = p.shortfall.expect("shortfall");
        assert_eq!(s.best_other, Some(("b".into(), 2 * GI)));
        let msg = s.message();
        assert!(
            msg.contains("0 of 1") && msg.contains("4.0Gi") && msg.contains("2.0Gi (b)"),
            "{msg}"
        );
    }

    #[test]
    fn a_node_that_disappears_is_replaced() {
        let previous = [
            NodePlacement {
                node: "gone".into(),
                vram_bytes: GI,
                gpus: vec![],
            },
            NodePlacement {
                node: "b".into(),
                vram_bytes: GI,
                gpus: vec![],
            },
        ];
        let cands = [
            c("b", Some(8 * GI), 0),
            c("c", Some(8 * GI), 0),
            c("d", Some(2 * GI), 0),
        ];
        let p = place(Some(2), GI, &previous, &cands);
        assert_eq!(names(&p), ["b", "c"]);
        assert_eq!(p.shortfall, None);
    }

    #[test]
    fn nodes_without_an_agent_report_only_take_unreserved_replicas_and_come_last() {
        let cands = [c("a", None, 0), c("b", Some(GI), 0)];
        assert_eq!(names(&place(Some(1), 0, &[], &cands)), ["b"]);
        assert_eq!(names(&place(Some(2), 0, &[], &cands)), ["a", "b"]);
        assert_eq!(names(&place(Some(2), GI / 2, &[], &cands)), ["b"]);
    }

    proptest! {
        #[test]
        fn placement_never_overcommits_or_exceeds_the_replicas(
            budgets in proptest::collection::vec((proptest::option::of(0i64..64), 0i64..64), 0..12),
            replicas in proptest::option::of(0i32..12),
            need in 0i64..16,
        ) {
            let cands: Vec<Candidate> = budgets.iter().enumerate()
                .map(|(i, (b, u))| c(&format!("n{i:02}"), b.map(|b| b * GI), u * GI)).collect();
            let p = place(replicas, need * GI, &[], &cands);
            if let Some(r) = replicas { prop_assert!(p.nodes.len() <= r as usize); }
            for n in &p.nodes {
                let cand = cands.iter().find(|c| c.name == n.node).expect("placed on a candidate");
                match cand.budget {
                    Some(_) => prop_assert!(cand.free() >= need * GI),
                    None => prop_assert_eq!(need, 0),
                }
            }
            let fitting = cands.iter().filter(|c| if c.budget.is_some() { c.free() >= need * GI } else { need == 0 }).count();
            prop_assert_eq!(p.nodes.len(), fitting.min(p.wanted));
            prop_assert_eq!(p.shortfall.is_some(), p.nodes.len() < p.wanted);
        }
    }
}
