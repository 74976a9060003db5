#!/usr/bin/env python3
"""Assembles the raw JSON of hack/bench.sh into docs/bench/report.json (for
bench/plot/plot.py) and docs/bench/results.md (tables: value, peer, ratio,
goal, met). Standard library only.

    python3 bench/report.py --raw DIR --machine TEXT --build TEXT --threads N --out docs/bench
"""
import argparse
import datetime
import json
import os
from pathlib import Path

GOGRID = "GoGrid"


def load(raw, name):
    p = raw / f"{name}.json"
    if not p.exists():
        return None
    text = p.read_text().strip()
    return json.loads(text) if text else None


def med(d, key):
    return None if d is None else d[key]["median"]


def pct(d, key, q):
    return None if d is None else d[key][q]


def ratio(a, b):
    return None if a is None or b in (None, 0) else a / b


def fmt(v, digits=1):
    if v is None:
        return "n/a"
    if isinstance(v, int):
        return f"{v:,}"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", required=True, type=Path)
    ap.add_argument("--machine", required=True)
    ap.add_argument("--build", required=True)
    ap.add_argument("--threads", required=True, type=int)
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args()
    raw = a.raw
    groups, tables, versions = [], [], {}

    membw = load(raw, "membw")
    bw = med(membw, "read_gb_s") if membw else None

    # --- SmolLM2 ---
    decode_rows, prefill_rows, llm_table = [], [], []
    for q in ("q4_0", "q8_0"):
        peer, ours = load(raw, f"llm-llama_cpp-{q}"), load(raw, f"llm-gogrid-{q}")
        if not (peer and ours):
            continue
        versions["llama.cpp"] = peer["impl"]
        label = q.upper()
        model = Path(os.path.expanduser("~/.cache/gogrid/models/bench")) / peer["model"]
        ceiling = bw * 1e9 / model.stat().st_size if bw and model.exists() else None
        d_ours, d_peer = med(ours, "decode_tok_s"), med(peer, "decode_tok_s")
        p_ours, p_peer = med(ours, "prefill_tok_s"), med(peer, "prefill_tok_s")
        decode_rows.append({"label": label, "values": {GOGRID: d_ours, "llama.cpp": d_peer, "bandwidth ceiling": ceiling},
                            "goal": ">= 1.0x llama.cpp"})
        prefill_rows.append({"label": label, "values": {GOGRID: p_ours, "llama.cpp": p_peer},
                             "goal": ">= 0.8x llama.cpp"})
        llm_table.append((f"decode {label} (tokens/s)", d_ours, d_peer, "llama.cpp", ratio(d_ours, d_peer), ">= 1.0x",
                          ratio(d_ours, d_peer) is not None and ratio(d_ours, d_peer) >= 1.0))
        llm_table.append((f"prefill {label}, {peer['prompt_tokens']} tokens (tokens/s)", p_ours, p_peer, "llama.cpp",
                          ratio(p_ours, p_peer), ">= 0.8x", ratio(p_ours, p_peer) is not None and ratio(p_ours, p_peer) >= 0.8))
        if ceiling:
            llm_table.append((f"decode {label}: memory-bandwidth ceiling ({bw:.1f} GB/s / {model.stat().st_size / 1e6:.0f} MB)",
                              d_ours, ceiling, "ceiling", ratio(d_ours, ceiling), "", None))
        llm_table.append((f"greedy tokens equal to llama.cpp's, {label}", ours.get("tokens_equal_to_peer"), len(peer["generated_ids"]),
                          "of", None, "", None))
    if decode_rows:
        note = f"{a.threads} thread(s), 128-token prompt, 64 greedy tokens; ceiling = one thread's read bandwidth / file size"
        groups.append({"id": "llm-decode", "title": "SmolLM2-135M decode, batch 1", "unit": "tokens/s",
                       "higher_is_better": True, "note": note, "rows": decode_rows})
        groups.append({"id": "llm-prefill", "title": "SmolLM2-135M prefill (128 tokens), batch 1", "unit": "tokens/s",
                       "higher_is_better": True, "note": note, "rows": prefill_rows})
        tables.append(("SmolLM2-135M-Instruct (llama.cpp through llama-cpp-python)", llm_table))

    # --- MiniLM ---
    torch, ort, ours = load(raw, "minilm-torch"), load(raw, "minilm-ort"), load(raw, "minilm-gogrid")
    if torch and ort and ours:
        versions["sentence-transformers"] = torch["impl"]
        versions["onnxruntime"] = ort["impl"] + (f"; {ort['note']}" if ort.get("note") else "")
        rows, table = [], []
        for key, label in (("latency_8_ms", "8 tokens"), ("latency_128_ms", "128 tokens")):
            o, t, r = pct(ours, key, "p50"), pct(torch, key, "p50"), pct(ort, key, "p50")
            rows.append({"label": f"{label}, p50", "values": {GOGRID: o, "sentence-transformers": t, "onnxruntime-int8": r},
                         "goal": "<= 1.5x onnxruntime-int8"})
            table.append((f"latency {label}, batch 1, p50 (ms)", o, t, "sentence-transformers", ratio(o, t), "<= 1.0x",
                          ratio(o, t) is not None and ratio(o, t) <= 1.0))
            table.append((f"latency {label}, batch 1, p50 (ms)", o, r, "onnxruntime-int8", ratio(o, r), "<= 1.5x",
                          ratio(o, r) is not None and ratio(o, r) <= 1.5))
            table.append((f"latency {label}, batch 1, p99 (ms)", pct(ours, key, "p99"), pct(torch, key, "p99"),
                          "sentence-transformers", ratio(pct(ours, key, "p99"), pct(torch, key, "p99")), "", None))
        groups.append({"id": "minilm-latency", "title": "all-MiniLM-L6-v2 latency, batch 1", "unit": "ms (p50)",
                       "higher_is_better": False, "note": f"{a.threads} thread(s); tokenization, forward, pooling, normalisation",
                       "rows": rows})
        o, t, r = med(ours, "batch32_sentences_s"), med(torch, "batch32_sentences_s"), med(ort, "batch32_sentences_s")
        groups.append({"id": "minilm-batch32", "title": "all-MiniLM-L6-v2 throughput, batch 32", "unit": "sentences/s",
                       "higher_is_better": True, "note": f"{a.threads} thread(s); 32 sentences of 16-39 tokens",
                       "rows": [{"label": "batch 32", "values": {GOGRID: o, "sentence-transformers": t, "onnxruntime-int8": r},
                                 "goal": ">= 1.0x sentence-transformers"}]})
        table.append(("throughput, batch 32 (sentences/s)", o, t, "sentence-transformers", ratio(o, t), "", None))
        table.append(("throughput, batch 32 (sentences/s)", o, r, "onnxruntime-int8", ratio(o, r), "", None))
        tables.append(("all-MiniLM-L6-v2 (sentence-transformers on PyTorch CPU; ONNX Runtime on the int8 ONNX)", table))

    # --- server overhead ---
    ov, ovm = load(raw, "overhead-identity"), load(raw, "overhead-minilm")
    if ov:
        rows, table = [], []
        for proto in ("rest", "grpc"):
            for q, goal in (("p50", 150), ("p99", 500)):
                v = ov[f"{proto}_added_us"][q]
                rows.append({"label": f"{proto.upper()} {q}", "values": {GOGRID: v}, "goal": f"<= {goal} us added"})
                table.append((f"identity model: {proto.upper()} added latency, {q} (us)", v, ov["direct_ms"][q] * 1e3,
                               "direct call", None, f"<= {goal} us", v <= goal))
        if ovm:
            for proto in ("rest", "grpc"):
                for q in ("p50", "p99"):
                    table.append((f"MiniLM 8 tokens: {proto.upper()} added latency, {q} (us)", ovm[f"{proto}_added_us"][q],
                                   ovm["direct_ms"][q] * 1e3, "direct forward", None, "", None))
        groups.append({"id": "server-overhead", "title": "Latency the server adds to a direct call (identity model)",
                       "unit": "microseconds", "higher_is_better": False,
                       "note": "one client on loopback, paired per round: request latency minus the direct call's; the client's own cost included",
                       "rows": rows})
        tables.append(("Server overhead (one client on loopback; each round's request minus the same round's direct call; the peer column is the direct call's own latency)", table))

    # --- identity throughput ---
    g, k = load(raw, "identity-gogrid"), load(raw, "identity-kserve")
    if g and k:
        versions["KServe"] = "kserve 0.21 ModelServer (uvicorn + FastAPI), 1 worker, access log off"
        r = ratio(g["requests_s"], k["requests_s"])
        groups.append({"id": "identity-throughput", "title": "Identity model over REST, 32 connections", "unit": "requests/s",
                       "higher_is_better": True, "note": "server on one CPU, the same Rust load tool on the other",
                       "rows": [{"label": "requests/s", "values": {GOGRID: g["requests_s"], "KServe": k["requests_s"]},
                                 "goal": ">= 10x KServe"}]})
        tables.append(("Identity model, REST, 32 concurrent connections (server pinned to one CPU)", [
            ("requests/s", g["requests_s"], k["requests_s"], "KServe", r, ">= 10x", r is not None and r >= 10),
            ("latency p50 (ms)", g["latency_ms"]["p50"], k["latency_ms"]["p50"], "KServe", ratio(g["latency_ms"]["p50"], k["latency_ms"]["p50"]), "", None),
            ("latency p99 (ms)", g["latency_ms"]["p99"], k["latency_ms"]["p99"], "KServe", ratio(g["latency_ms"]["p99"], k["latency_ms"]["p99"]), "", None),
            ("errors + non-2xx", g["errors"] + g["non_2xx"], k["errors"] + k["non_2xx"], "KServe", None, "", None),
        ]))

    # --- batching ---
    on, off = load(raw, "batching-on"), load(raw, "batching-off")
    if on and off:
        r = ratio(on["requests_s"], off["requests_s"])
        groups.append({"id": "batching", "title": "MiniLM embeddings, 32 concurrent clients", "unit": "requests/s",
                       "higher_is_better": True, "primary": "batching on",
                       "note": f"p95 {on['latency_ms']['p95']:.1f} ms with batching, {off['latency_ms']['p95']:.1f} ms without",
                       "rows": [{"label": "8-token texts", "values": {"batching on": on["requests_s"], "batching off": off["requests_s"]},
                                 "goal": ">= 3x batching off"}]})
        tables.append(("Dynamic batching (MiniLM, 8-token texts, 32 concurrent clients, max batch 32, 2 ms delay)", [
            ("requests/s", on["requests_s"], off["requests_s"], "batching off", r, ">= 3x", r is not None and r >= 3),
            ("latency p95 (ms)", on["latency_ms"]["p95"], off["latency_ms"]["p95"], "batching off", None, "<= 50 ms",
             on["latency_ms"]["p95"] <= 50),
        ]))

    report = {"machine": a.machine, "date": datetime.date.today().isoformat(), "primary": GOGRID, "groups": groups}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")

    md = ["# Benchmark results (generated by `make bench`)", "",
          f"Generated {report['date']} by `hack/bench.sh` (`make bench`); do not edit by hand.", "",
          f"- Machine: {a.machine}",
          f"- GoGrid build: {a.build}",
          f"- Threads: {a.threads} per engine, pinned with taskset (engines on one CPU; servers and the load tool on separate CPUs)",
          f"- Single-thread read bandwidth: {fmt(bw)} GB/s" if bw else "- Single-thread read bandwidth: n/a"]
    for name, v in versions.items():
        md.append(f"- {name}: {v}")
    md.append("")
    for title, rows in tables:
        md += [f"## {title}", "", "| measure | GoGrid | peer | ratio | goal | met |", "| --- | --- | --- | --- | --- | --- |"]
        for label, ours_v, peer_v, peer_name, r, goal, met in rows:
            peer_cell = f"{fmt(peer_v)} ({peer_name})"
            met_cell = "" if met is None else ("yes" if met else "**no**")
            md.append(f"| {label} | {fmt(ours_v)} | {peer_cell} | {fmt(r, 2) + 'x' if r is not None else ''} | {goal} | {met_cell} |")
        md.append("")
    for g in groups:
        md.append(f"![{g['title']}]({g['id']}.png)")
    (a.out / "results.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
