//! `kubectl gogrid status` as text: the deployment's rollout, then each
//! placed node's view of it.

use std::fmt::Write as _;

use gogrid_crds::inference_deployment::RolloutStrategy;
use gogrid_crds::{GpuNode, InferenceDeployment};

/// One version of the rollout and its role.
struct Version {
    version: String,
    role: &'static str,
    weight: i32,
}

fn versions(d: &InferenceDeployment) -> Vec<Version> {
    let split = d.status.as_ref().and_then(|s| s.traffic.clone());
    let Some(split) = split else {
        return vec![Version {
            version: d.spec.model.version.clone(),
            role: "stable",
            weight: 100,
        }];
    };
    let mut out = vec![Version {
        version: split.stable_version.clone(),
        role: "stable",
        weight: 100 - split.canary_weight,
    }];
    if let Some(c) = split.canary_version {
        out.push(Version {
            version: c,
            role: "canary",
            weight: split.canary_weight,
        });
    }
    if let Some(p) = split.preview_version {
        out.push(Version {
            version: p,
            role: "preview",
            weight: 0,
        });
    }
    if let Some(r) = split.retained_version {
        out.push(Version {
            version: r,
            role: "retained",
            weight: 0,
        });
    }
    out
}

/// Column widths for rows of cells, then the rows, space-separated.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The whole `status` page.
pub fn status(d: &InferenceDeployment, gpunodes: &[GpuNode]) -> String {
    let name = d.metadata.name.clone().unwrap_or_default();
    let namespace = d.metadata.namespace.clone().unwrap_or_default();
    let status = d.status.clone().unwrap_or_default();
    let rollout = d.spec.rollout.as_ref();
    let mut out = String::new();
    let _ = writeln!(out, "Name:        {name}");
    let _ = writeln!(out, "Namespace:   {namespace}");
    let _ = writeln!(out, "Model:       {}", d.spec.model.name);
    let strategy = match rollout.map(|r| r.strategy) {
        Some(RolloutStrategy::Canary) => "Canary",
        Some(RolloutStrategy::BlueGreen) => "BlueGreen",
        None => "none",
    };
    let _ = writeln!(out, "Strategy:    {strategy}");
    if let Some(r) = &status.rollout {
        let detail = r
            .message
            .as_deref()
            .map(|m| format!(" ({m})"))
            .unwrap_or_default();
        let _ = writeln!(out, "Phase:       {}{detail}", r.phase.as_str());
    }
    if let Some(canary) = rollout.and_then(|r| r.canary.as_ref()) {
        if !canary.steps.is_empty() {
            let at = status.rollout.as_ref().and_then(|r| r.step);
            let steps: Vec<String> = canary
                .steps
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let mark = if at == Some(i as i32) { "*" } else { "" };
                    format!("{mark}{}%/{}s", s.weight, s.pause_seconds)
                })
                .collect();
            let _ = writeln!(out, "Steps:       {}", steps.join(" -> "));
        }
        if let Some(a) = &canary.analysis {
            let latency = a
                .max_p95_latency_ms
                .map(|ms| format!(", p95 <= {ms} ms"))
                .unwrap_or_default();
            let vs_stable = a
                .max_p95_increase_percent
                .map(|p| format!(", p95 <= stable + {p}%"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "Analysis:    errors <= {}%{latency}{vs_stable}, judged every {}s once the canary has {} requests",
                a.max_error_rate_percent, a.interval_seconds, a.min_requests
            );
            if let Some(state) = status.rollout.as_ref().and_then(|r| r.analysis.as_ref()) {
                let _ = writeln!(
                    out,
                    "             {} interval(s) passed at this step; current interval since {}",
                    state.passed, state.interval_start
                );
                if let Some(last) = &state.last {
                    let _ = writeln!(
                        out,
                        "  Last:      {} at {}: {}",
                        last.outcome.as_str(),
                        last.at,
                        last.message
                    );
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "Replicas:    {} placed, {} ready",
        status.replicas, status.ready_replicas
    );

    // Versions: the split in force and how many placed nodes report each ready.
    let placed: Vec<&str> = status.placement.iter().map(|p| p.node.as_str()).collect();
    let pipeline_of = |node: &str, version: &str| {
        gpunodes
            .iter()
            .find(|g| g.metadata.name.as_deref() == Some(node))
            .and_then(|g| g.status.as_ref())
            .and_then(|s| s.pipeline(&namespace, &name, version).cloned())
    };
    let mut rows = vec![vec![
        "VERSION".to_owned(),
        "ROLE".into(),
        "WEIGHT".into(),
        "READY NODES".into(),
    ]];
    let all = versions(d);
    for v in &all {
        let ready = placed
            .iter()
            .filter(|n| pipeline_of(n, &v.version).is_some_and(|p| p.ready))
            .count();
        rows.push(vec![
            v.version.clone(),
            v.role.to_owned(),
            format!("{}%", v.weight),
            format!("{ready}/{}", placed.len()),
        ]);
    }
    out.push('\n');
    out.push_str(&table(&rows));

    // Per node: each version as that node's agent reports it.
    let mut rows = vec![vec![
        "NODE".to_owned(),
        "VERSION".into(),
        "READY".into(),
        "SPLIT IN FORCE".into(),
        "REQUESTS".into(),
        "5XX".into(),
        "P95".into(),
        "MESSAGE".into(),
    ]];
    for node in &placed {
        for v in &all {
            let row = match pipeline_of(node, &v.version) {
                Some(p) => vec![
                    (*node).to_owned(),
                    v.version.clone(),
                    if p.ready { "yes" } else { "no" }.to_owned(),
                    format!("{}%", p.weight),
                    p.requests.to_string(),
                    p.errors.to_string(),
                    p.latency
                        .as_ref()
                        .map_or("-".to_owned(), |l| format!("<={}ms", l.p95_ms)),
                    p.message.unwrap_or_default(),
                ],
                None => vec![
                    (*node).to_owned(),
                    v.version.clone(),
                    "no".to_owned(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "the agent does not report this version yet".into(),
                ],
            };
            rows.push(row);
        }
    }
    if placed.is_empty() {
        out.push_str("\nNot placed on any node.\n");
    } else {
        out.push('\n');
        out.push_str(&table(&rows));
    }

    if !status.conditions.is_empty() {
        out.push_str("\nConditions:\n");
        let mut rows = Vec::new();
        for c in &status.conditions {
            rows.push(vec![
                format!("  {}", c.type_),
                c.status.clone(),
                c.reason.clone(),
                c.message.clone(),
            ]);
        }
        out.push_str(&table(&rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_shows_the_split_steps_and_each_nodes_view() {
        let d: InferenceDeployment = serde_json::from_value(json!({
            "apiVersion": "gogrid.io/v1alpha1", "kind": "InferenceDeployment",
            "metadata": {"name": "chat", "namespace": "ml"},
            "spec": {
                "profile": "default",
                "model": {"name": "chat", "version": "v1", "format": "gguf", "task": "text-generation",
                          "source": {"path": "/m/v1.gguf"}},
                "rollout": {"strategy": "Canary", "canary": {
                    "model": {"name": "chat", "version": "v2", "format": "gguf", "task": "text-generation",
                              "source": {"path": "/m/v2.gguf"}},
                    "steps": [{"weight": 10, "pauseSeconds": 60}, {"weight": 50, "pauseSeconds": 60}],
                    "analysis": {"maxErrorRatePercent": 2, "maxP95LatencyMs": 300}}}
            },
            "status": {
                "replicas": 2, "readyReplicas": 2,
                "placement": [{"node": "a", "vramBytes": 1}, {"node": "b", "vramBytes": 1}],
                "traffic": {"stableVersion": "v1", "canaryVersion": "v2", "canaryWeight": 10},
                "rollout": {"phase": "Canary", "step": 0, "message": "10% of unversioned requests go to v2"},
                "conditions": [{"type": "Ready", "status": "True", "reason": "Serving",
                                "message": "2 of 2 nodes serve v1", "lastTransitionTime": "2026-11-23T10:00:00Z"}]
            }
        }))
        .expect("deployment");
        let gpunode = |node: &str, v2_ready: bool| -> GpuNode {
            serde_json::from_value(json!({
                "apiVersion": "gogrid.io/v1alpha1", "kind": "GpuNode",
                "metadata": {"name": node},
                "spec": {"nodeName": node},
                "status": {"pipelines": [
                    {"namespace": "ml", "deployment": "chat", "version": "v1", "ready": true, "weight": 90,
                     "requests": 900, "errors": 1, "latency": {"p50Ms": 10, "p95Ms": 20, "p99Ms": 30}},
                    {"namespace": "ml", "deployment": "chat", "version": "v2", "ready": v2_ready, "weight": 10,
                     "message": if v2_ready { None } else { Some("loading") }},
                ]}
            }))
            .expect("gpunode")
        };
        let text = status(&d, &[gpunode("a", true), gpunode("b", false)]);
        assert!(
            text.contains("Phase:       Canary (10% of unversioned requests go to v2)"),
            "{text}"
        );
        assert!(text.contains("Steps:       *10%/60s -> 50%/60s"), "{text}");
        assert!(
            text.contains("Analysis:    errors <= 2%, p95 <= 300 ms"),
            "{text}"
        );
        let lines: Vec<&str> = text.lines().collect();
        let row = |prefix: &str| {
            lines
                .iter()
                .find(|l| {
                    l.split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                        .starts_with(prefix)
                })
                .unwrap_or_else(|| panic!("no row {prefix:?} in\n{text}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(row("v1 stable"), "v1 stable 90% 2/2");
        assert_eq!(row("v2 canary"), "v2 canary 10% 1/2");
        assert_eq!(row("a v1"), "a v1 yes 90% 900 1 <=20ms");
        assert_eq!(row("b v2"), "b v2 no 10% 0 0 - loading");
        assert_eq!(row("Ready"), "Ready True Serving 2 of 2 nodes serve v1");
    }
}
