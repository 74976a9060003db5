"""Draws the GoGrid Grafana dashboard's panels from real Prometheus data.

    $(hack/plot-env.sh) hack/render-dashboard.py PANELS.json OUTDIR

PANELS.json is what the prometheus e2e test writes when
GOGRID_E2E_DASHBOARD_DIR is set: for each query of
charts/gogrid/dashboards/gogrid.json, the panel title, the PromQL and the
range-query result from the Prometheus that scraped the local cluster. The
panels are laid out as in the dashboard (a 3-column grid, Grafana's dark
theme colours) into OUTDIR/dashboard.png, and each panel also alone into
OUTDIR/panel-<n>.png. hack/dashboard-png.sh runs the test and this script.
"""

import datetime
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

BACKGROUND = "#181b1f"
PANEL = "#111217"
TEXT = "#ccccdc"
GRID = "#2c3235"
PALETTE = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#fade2a"]

# The unit each panel's values are in, by title, as the dashboard's fieldConfig says.
UNITS = {}


def units_from_dashboard(path):
    with open(path) as f:
        dashboard = json.load(f)
    for panel in dashboard["panels"]:
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        UNITS[panel["title"]] = unit


def legend(metric, expr):
    labels = {k: v for k, v in metric.items() if k != "__name__"}
    if not labels:
        return expr.split("{")[0].split("(")[-1]
    keys = [k for k in ("model", "version", "node", "gpu", "name") if k in labels]
    return " ".join(f"{labels[k]}" for k in keys) or ", ".join(f"{k}={v}" for k, v in labels.items())


def scale(unit, values):
    if unit == "percentunit":
        return [v * 100 for v in values], "%"
    if unit == "s":
        return [v * 1000 for v in values], "ms"
    if unit == "bytes":
        return [v / 2**30 for v in values], "GiB"
    if unit in ("reqps",):
        return values, "req/s"
    return values, "" if unit == "short" else unit


def draw(ax, title, queries):
    ax.set_facecolor(PANEL)
    ax.set_title(title, color=TEXT, fontsize=10, loc="left")
    ax.tick_params(colors=TEXT, labelsize=7)
    for spine in ax.spines.values():
        spine.set_color(GRID)
    ax.grid(color=GRID, linewidth=0.6)
    unit = UNITS.get(title, "")
    shown = 0
    label_unit = unit
    for q in queries:
        suffix = ""
        if q["expr"].startswith("histogram_quantile("):
            suffix = " p" + q["expr"].split("(")[1].split(",")[0].replace("0.", "").ljust(2, "0")
        for series in q["result"]:
            points = [(float(t), float(v)) for t, v in series["values"] if math.isfinite(float(v))]
            if not points:
                continue
            times = [datetime.datetime.fromtimestamp(t) for t, _ in points]
            values, label_unit = scale(unit, [v for _, v in points])
            if "vram_used" in q["expr"]:
                suffix = " used"
            elif "vram_budget" in q["expr"]:
                suffix = " budget"
            ax.plot(times, values, linewidth=1.3, color=PALETTE[shown % len(PALETTE)],
                    label=legend(series["metric"], q["expr"]) + suffix)
            shown += 1
    if label_unit:
        ax.set_ylabel(label_unit, color=TEXT, fontsize=8)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    if shown:
        ax.legend(fontsize=6, facecolor=PANEL, edgecolor=GRID, labelcolor=TEXT, loc="upper left")
    else:
        ax.text(0.5, 0.5, "No data", color=TEXT, ha="center", va="center", transform=ax.transAxes)
    return shown


def main():
    panels_path, out = sys.argv[1], sys.argv[2]
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    units_from_dashboard(os.path.join(root, "charts/gogrid/dashboards/gogrid.json"))
    with open(panels_path) as f:
        queries = json.load(f)
    panels = {}
    for q in queries:
        panels.setdefault(q["title"], []).append(q)
    os.makedirs(out, exist_ok=True)
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(15, 3.4 * rows), facecolor=BACKGROUND)
    fig.suptitle("GoGrid (Grafana dashboard gogrid.json, from the e2e cluster's Prometheus)",
                 color=TEXT, fontsize=12, x=0.01, ha="left")
    flat = [ax for row in axes for ax in row] if rows > 1 else list(axes)
    for ax, (title, qs) in zip(flat, panels.items()):
        draw(ax, title, qs)
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(os.path.join(out, "dashboard.png"), dpi=90, facecolor=BACKGROUND)
    plt.close(fig)
    for i, (title, qs) in enumerate(panels.items(), start=1):
        fig, ax = plt.subplots(figsize=(7, 3.4), facecolor=BACKGROUND)
        draw(ax, title, qs)
        fig.tight_layout()
        fig.savefig(os.path.join(out, f"panel-{i}.png"), dpi=90, facecolor=BACKGROUND)
        plt.close(fig)
    print(os.path.join(out, "dashboard.png"))


if __name__ == "__main__":
    main()
