"""Draws the benchmark report as bar charts: one PNG per group, GoGrid vs its peers.

    $(hack/plot-env.sh) bench/plot/plot.py REPORT.json OUTDIR

Writes OUTDIR/<group id>.png for every group and prints the paths written on
stdout (one per line). Needs only matplotlib (hack/plot-env.sh).

Report format (written by the Rust benchmark orchestrator):

{
  "machine": "2 vCPU AMD EPYC 7B13, 24 GiB, no GPU",    # subtitle of every chart
  "date": "2026-11-23",                                 # optional, appended to the subtitle
  "primary": "GoGrid (candle)",                         # optional: our series (default: the first
                                                        #   series named "GoGrid...", else the first)
  "groups": [
    {
      "id": "llm-decode",                               # file name: llm-decode.png
      "title": "SmolLM2-135M decode, batch 1",
      "unit": "tokens/s",
      "higher_is_better": true,
      "note": "1 thread, 128-token prompt, 64 greedy tokens",   # optional, printed under the chart
      "primary": "GoGrid (candle)",                     # optional, overrides the report's
      "rows": [
        {
          "label": "Q4_0",
          "values": {"GoGrid (candle)": 12.3, "llama.cpp": 20.1},   # null = not measured
          "goal": ">= 1.0x llama.cpp",                  # optional; "<op> <factor>x <series>"
          "spread": {"GoGrid (candle)": [11.9, 12.8]}   # optional error bars: [low, high]
        }
      ]
    }
  ]
}

Goals: "<op> <factor>x <series>" with op one of >=, >, <=, < means
value(primary) / value(series) <op> factor; e.g. ">= 1.0x llama.cpp" for a
throughput, "<= 1.2x onnxruntime-int8" for a latency. The chart shows the
measured ratio and the goal above each row's bars, green when met, red when
not; a goal that does not parse is shown verbatim in grey.
"""

import json
import math
import os
import re
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

PRIMARY_COLOR = "#d9480f"  # GoGrid: orange
PEER_COLORS = ["#1c7ed6", "#495057", "#2f9e44", "#7048e8", "#0c8599", "#e8590c", "#868e96"]
GOAL_RE = re.compile(r"^\s*(>=|<=|>|<)\s*([0-9]*\.?[0-9]+)\s*x\s+(.+?)\s*$")
OK_COLOR, BAD_COLOR, NEUTRAL_COLOR = "#2b8a3e", "#c92a2a", "#666666"


def fmt(v: float) -> str:
    """3 significant digits, no exponent for the usual benchmark ranges."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def series_order(group, primary):
    names = []
    for row in group["rows"]:
        for k in row["values"]:
            if k not in names:
                names.append(k)
    if primary in names:
        names.remove(primary)
        names.insert(0, primary)
    return names


def pick_primary(report, group):
    if group.get("primary"):
        return group["primary"]
    if report.get("primary"):
        return report["primary"]
    for row in group["rows"]:
        for k in row["values"]:
            if k.lower().startswith("gogrid"):
                return k
    return next(iter(group["rows"][0]["values"]), None) if group["rows"] else None


def evaluate_goal(goal, values, primary):
    """-> (text, color) for the annotation above a row."""
    if not goal:
        return None, None
    m = GOAL_RE.match(goal)
    if not m or primary not in values:
        return f"goal {goal}", NEUTRAL_COLOR
    op, factor, ref = m.group(1), float(m.group(2)), m.group(3)
    pv, rv = values.get(primary), values.get(ref)
    if pv is None or rv is None or rv == 0:
        return f"goal {op} {m.group(2)}x {ref}\n(not measured)", NEUTRAL_COLOR
    ratio = pv / rv
    met = {">=": ratio >= factor, ">": ratio > factor, "<=": ratio <= factor, "<": ratio < factor}[op]
    mark = "\u2713 met" if met else "\u2717 missed"
    return f"{ratio:.2f}x {ref}\ngoal {op} {m.group(2)}x  {mark}", OK_COLOR if met else BAD_COLOR


def color_map(report):
    """One color per series name across the whole report (stable between charts)."""
    # Our series: those named as primary, or GoGrid-named; a group whose primary is
    # only its first series by default does not make that peer orange elsewhere.
    primary_names = {report.get("primary")} | {g.get("primary") for g in report["groups"]}
    primary_names |= {k for g in report["groups"] for r in g["rows"] for k in r["values"]
                      if k.lower().startswith("gogrid")}
    primary_names.discard(None)
    cmap, i = {}, 0
    for g in report["groups"]:
        for row in g["rows"]:
            for k in row["values"]:
                if k in cmap:
                    continue
                if k in primary_names:
                    cmap[k] = PRIMARY_COLOR
                else:
                    cmap[k] = PEER_COLORS[i % len(PEER_COLORS)]
                    i += 1
    return cmap


def plot_group(report, group, cmap, outdir):
    primary = pick_primary(report, group)
    names = series_order(group, primary)
    rows = group["rows"]
    n_rows, n_series = len(rows), max(1, len(names))
    width = 0.8 / n_series
    fig_w = max(6.4, 1.0 + n_rows * (0.55 * n_series + 0.9))
    fig, ax = plt.subplots(figsize=(min(fig_w, 18), 5.2), dpi=150)

    vmax = max([v for r in rows for v in r["values"].values() if v is not None]
               + [hi for r in rows for _, (lo, hi) in (r.get("spread") or {}).items()] + [0])
    vmax = vmax or 1.0
    for si, name in enumerate(names):
        xs, hs, errs, missing = [], [], [[], []], []
        for ri, row in enumerate(rows):
            x = ri + (si - (n_series - 1) / 2) * width
            v = row["values"].get(name)
            if v is None:
                if name in row["values"]:
                    missing.append(x)
                continue
            xs.append(x)
            hs.append(v)
            lo, hi = (row.get("spread") or {}).get(name, (v, v))
            errs[0].append(max(0.0, v - lo))
            errs[1].append(max(0.0, hi - v))
        bars = ax.bar(xs, hs, width * 0.92, label=name, color=cmap[name],
                      edgecolor="black" if name == primary else "none", linewidth=0.6)
        # Error bars only where a spread was given.
        ex = [(x, v, lo_d, hi_d) for x, v, lo_d, hi_d in zip(xs, hs, errs[0], errs[1]) if lo_d or hi_d]
        if ex:
            ax.errorbar([e[0] for e in ex], [e[1] for e in ex], yerr=[[e[2] for e in ex], [e[3] for e in ex]],
                        fmt="none", ecolor="#222222", elinewidth=0.8, capsize=3)
        for b, v, e_hi in zip(bars, hs, errs[1]):
            ax.annotate(fmt(v), (b.get_x() + b.get_width() / 2, b.get_height() + e_hi),
                        xytext=(0, 2), textcoords="offset points", ha="center", va="bottom",
                        fontsize=8, fontweight="bold" if name == primary else "normal")
        for x in missing:
            ax.annotate("n/a", (x, 0), xytext=(0, 2), textcoords="offset points", ha="center",
                        va="bottom", fontsize=8, color=NEUTRAL_COLOR)

    # Goal annotations above each row's bars.
    any_goal = False
    for ri, row in enumerate(rows):
        text, color = evaluate_goal(row.get("goal"), row["values"], primary)
        if not text:
            continue
        any_goal = True
        top = max([v for v in row["values"].values() if v is not None]
                  + [hi for lo, hi in (row.get("spread") or {}).values()] + [0])
        ax.annotate(text, (ri, top), xytext=(0, 16), textcoords="offset points", ha="center",
                    va="bottom", fontsize=8, color=color,
                    bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": color, "lw": 0.8})
    ax.set_ylim(0, vmax * (1.45 if any_goal else 1.15))

    ax.set_xticks(range(n_rows))
    labels = ["\n".join(textwrap.wrap(str(r["label"]), 26)) or "" for r in rows]
    label_lines = max([lab.count("\n") + 1 for lab in labels] + [1])
    ax.set_xticklabels(labels, fontsize=9)
    ax.set_xlim(-0.6, n_rows - 0.4)
    better = "higher is better" if group.get("higher_is_better", True) else "lower is better"
    ax.set_ylabel(f"{group.get('unit', '')}  ({better})")
    ax.grid(axis="y", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)

    title = group.get("title", group["id"])
    unit = group.get("unit")
    ax.set_title(f"{title}" + (f" \u2014 {unit}" if unit else ""), fontsize=12, fontweight="bold", pad=20)
    sub = report.get("machine", "")
    if report.get("date"):
        sub = f"{sub}  \u00b7  {report['date']}" if sub else str(report["date"])
    ax.text(0.5, 1.015, sub, transform=ax.transAxes, ha="center", va="bottom", fontsize=8.5, color="#444444")
    handles = [Patch(facecolor=cmap[n], edgecolor="black" if n == primary else "none", linewidth=0.6, label=n)
               for n in names]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.05 - 0.045 * label_lines),
              ncol=min(n_series, 4), frameon=False, fontsize=9)
    if group.get("note"):
        fig.text(0.01, 0.01, "\n".join(textwrap.wrap(group["note"], 140)), fontsize=7.5, color="#555555",
                 ha="left", va="bottom")
    fig.tight_layout(rect=(0, 0.04 if group.get("note") else 0, 1, 1))
    path = os.path.join(outdir, f"{group['id']}.png")
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        report = json.load(f)
    outdir = argv[2]
    os.makedirs(outdir, exist_ok=True)
    ids = [g["id"] for g in report.get("groups", [])]
    if len(set(ids)) != len(ids):
        print("plot.py: group ids must be unique", file=sys.stderr)
        return 1
    cmap = color_map(report)
    for group in report.get("groups", []):
        if not group.get("rows"):
            print(f"plot.py: group {group['id']} has no rows, skipped", file=sys.stderr)
            continue
        print(plot_group(report, group, cmap, outdir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
