#!/usr/bin/env python3
"""The scale report (issue 9) from hack/bench-scale.sh's runs.

    python3 hack/scale-report.py docs/bench

Reads OUT/scale-<n>.json (and OUT/scale-<n>-before.json, the same run before a
fix, when there), writes OUT/scale.md (the tables docs/benchmarks.md shows: each
figure per size, its goal, the ratio from the smallest to the largest size) and
OUT/scale.json (the chart report for bench/plot/plot.py).
"""
import datetime
import glob
import json
import os
import platform
import re
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "docs/bench"
runs, before = {}, {}
for path in glob.glob(f"{out}/scale-*.json"):
    m = re.fullmatch(r"scale-(\d+)(-before)?\.json", os.path.basename(path))
    if m:
        (before if m.group(2) else runs)[int(m.group(1))] = json.load(open(path))
if not runs:
    sys.exit(f"no {out}/scale-<n>.json: run hack/bench-scale.sh")
sizes = sorted(runs)


def get(run, path):
    v = run
    for k in path.split("."):
        v = v.get(k) if isinstance(v, dict) else None
        if v is None:
            return None
    return v


# (label, path, unit, goal text, goal check on the value at a size, better when lower)
def le(x):
    return lambda v, n: v is not None and v <= x


FIGURES = [
    ("Reconcile, create -> status written, p50", "reconcile.create_to_status.p50_ms", "ms", "", None),
    ("Reconcile, create -> status written, p99", "reconcile.create_to_status.p99_ms", "ms", "<= 50 ms", le(50)),
    ("Operator reconcile (its histogram), p99 at most", "reconcile.operator_reconcile.p99_ms_at_most", "ms", "<= 50 ms", le(50)),
    ("Reconciles per second (operator)", "reconcile.operator_reconciles_per_second", "/s", ">= 500/s", lambda v, n: v is not None and v >= 500),
    ("Deployments with status per second", "reconcile.deployments_per_second", "/s", "", None),
    ("Create -> Ready, p99", "reconcile.create_to_ready.p99_ms", "ms", "", None),
    ("ResourceProfile -> DaemonSet created", "profile_daemonset.daemonset_created_ms", "ms", "<= 1000 ms", le(1000)),
    ("ResourceProfile -> all agent pods Ready", "profile_daemonset.all_pods_ready_ms", "ms", "<= 1.2x plain DaemonSet", None),
    ("Plain DaemonSet -> all pods Ready (controller-manager)", "baseline_daemonset.all_pods_ready_ms", "ms", "", None),
    ("Weight edit -> every hollow agent, p50", "weight_edit.to_all_nodes.p50_ms", "ms", "", None),
    ("Weight edit -> every hollow agent, p99", "weight_edit.to_all_nodes.p99_ms", "ms", "< 1000 ms at 1000 nodes", lambda v, n: n < 1000 or (v is not None and v < 1000)),
    ("Operator resident memory", "rss_mib.operator", "MiB", "<= 50 MiB at 1000", lambda v, n: n < 1000 or (v is not None and v <= 50)),
    ("Hollow agents' resident memory (all nodes)", "rss_mib.hollow_agents", "MiB", "", None),
    ("kube-apiserver resident memory", "rss_mib.kube-apiserver", "MiB", "", None),
    ("Operator writes per second, idle (Lease renewals apart)", "idle.operator_writes_but_lease_per_s", "/s", "0", lambda v, n: v == 0),
    ("Operator Lease renewals per second, idle", "idle.operator_lease_renewals_per_s", "/s", "", None),
    ("Operator reads per second, idle", "idle.operator_reads_per_s", "/s", "", None),
    ("Agent writes per node per minute, idle (max)", "idle.agent_writes_per_node_per_min_max", "/min", "bounded (heartbeat)", None),
    ("Agent reads per second, idle (all nodes)", "idle.agent_reads_per_s", "/s", "", None),
]


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float) and v != v:
        return "n/a"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}" if v else "0"


def ratio_pods(run):
    a, b = get(run, "profile_daemonset.all_pods_ready_ms"), get(run, "baseline_daemonset.all_pods_ready_ms")
    return a / b if a and b else None


lo, hi = sizes[0], sizes[-1]
lines = [f"| Figure | Goal | " + " | ".join(f"{n} nodes" for n in sizes)
         + (f" | {hi}/{lo}" if len(sizes) > 1 else "") + " |",
         "|---|---|" + "---|" * len(sizes) + ("---|" if len(sizes) > 1 else "")]
for label, path, unit, goal, check in FIGURES:
    cells = []
    for n in sizes:
        v = get(runs[n], path)
        if path == "profile_daemonset.all_pods_ready_ms":
            r = ratio_pods(runs[n])
            mark = "" if r is None else (" ✅" if r <= 1.2 else " ❌")
            cells.append(f"{fmt(v)} {unit} ({r:.2f}x){mark}" if r else f"{fmt(v)} {unit}")
            continue
        mark = "" if check is None else (" ✅" if check(v, n) else " ❌")
        cells.append(f"{fmt(v)} {unit}{mark}")
    row = f"| {label} | {goal} | " + " | ".join(cells)
    if len(sizes) > 1:
        a, b = get(runs[lo], path), get(runs[hi], path)
        row += f" | {b / a:.2f}x" if a and b else " | -"
    lines.append(row + " |")

text = [f"Measured {datetime.date.today().isoformat()} on {platform.machine()}, "
        f"{os.cpu_count()} CPUs: {', '.join(str(n) for n in sizes)} kwok nodes with as many "
        "InferenceDeployments, all agents in one `gogrid-agent hollow` process; "
        + ", ".join(f"{n} nodes: {runs[n].get('build', 'debug')} build" for n in sizes) + ".", "", *lines]
if before:
    text += ["", "Before and after the fix (same bench, same size):", "",
             "| Figure | Size | Before | After |", "|---|---|---|---|"]
    for n in sorted(before):
        if n not in runs:
            continue
        builds = (before[n].get("build", "debug"), runs[n].get("build", "debug"))
        if builds[0] != builds[1]:
            text.append(f"| build | {n} | {builds[0]} | {builds[1]} |")
        for label, path, unit, _, _ in FIGURES:
            a, b = get(before[n], path), get(runs[n], path)
            if a is not None or b is not None:
                text.append(f"| {label} | {n} | {fmt(a)} {unit} | {fmt(b)} {unit} |")
open(f"{out}/scale.md", "w").write("\n".join(text) + "\n")


def rows(fn):
    return [dict(label=f"{n} nodes", **fn(runs[n], n)) for n in sizes]


report = {
    "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, e2e harness (kube-apiserver + kwok, hollow agents)",
    "date": datetime.date.today().isoformat(),
    "primary": "GoGrid p99",
    "groups": [
        {"id": "scale-reconcile", "title": "Reconcile: create -> status written", "unit": "ms", "higher_is_better": False,
         "note": "as many InferenceDeployments as nodes, created 16 at a time; goal p99 <= 50 ms",
         "rows": rows(lambda r, n: {"values": {"GoGrid p50": get(r, "reconcile.create_to_status.p50_ms"),
                                               "GoGrid p99": get(r, "reconcile.create_to_status.p99_ms"),
                                               "goal (p99)": 50}, "goal": "<= 1.0x goal (p99)"})},
        {"id": "scale-daemonset", "title": "ResourceProfile -> every agent pod Ready", "unit": "s", "higher_is_better": False,
         "primary": "GoGrid",
         "note": "against a plain DaemonSet on the same nodes (the controller-manager's pace); goal <= 1.2x",
         "rows": rows(lambda r, n: {"values": {"GoGrid": get(r, "profile_daemonset.all_pods_ready_ms") / 1e3,
                                               "plain DaemonSet": get(r, "baseline_daemonset.all_pods_ready_ms") / 1e3},
                                    "goal": "<= 1.2x plain DaemonSet"})},
        {"id": "scale-edit", "title": "Canary weight edit -> every hollow agent", "unit": "ms", "higher_is_better": False,
         "note": "patch sent to the last node's split changed; goal < 1 s at 1000 nodes",
         "rows": rows(lambda r, n: {"values": {"GoGrid p50": get(r, "weight_edit.to_all_nodes.p50_ms"),
                                               "GoGrid p99": get(r, "weight_edit.to_all_nodes.p99_ms"),
                                               "goal (p99)": 1000}, "goal": "<= 1.0x goal (p99)"})},
        {"id": "scale-memory", "title": "Operator resident memory", "unit": "MiB", "higher_is_better": False,
         "primary": "GoGrid operator",
         "note": "after every deployment is Ready and the edits; goal <= 50 MiB at 1000 nodes",
         "rows": rows(lambda r, n: {"values": {"GoGrid operator": get(r, "rss_mib.operator"), "goal": 50},
                                    "goal": "<= 1.0x goal"})},
    ],
}
json.dump(report, open(f"{out}/scale.json", "w"), indent=2)
print(open(f"{out}/scale.md").read())
