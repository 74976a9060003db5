"""all-MiniLM-L6-v2 embedding peer benchmark: sentence-transformers (PyTorch) or ONNX Runtime.

    PY=$(hack/reference-env.sh)
    MODEL_DIR=$(dirname "$(hack/models.sh minilm)")
    $PY bench/peers/minilm_bench.py --engine torch --model-dir "$MODEL_DIR" --threads 1
    $PY bench/peers/minilm_bench.py --engine ort --model-dir "$MODEL_DIR" \
        --onnx "$(hack/models.sh minilm-onnx)" --threads 1
    options: [--reps 20] [--iters-8 200] [--iters-128 100] [--warmup 10]

Inputs: bench/peers/minilm_inputs.json (text_8: 8 tokens, text_128: 128 tokens,
batch_32: 32 sentences of 16..39 tokens; counts include [CLS]/[SEP]).

Measures, each call timed end to end (tokenization + model + pooling +
normalization, output as a numpy float32 array):
  latency_8_ms    batch 1, text_8,   --iters-8 calls   -> p50, p99 (and mean, min)
  latency_128_ms  batch 1, text_128, --iters-128 calls -> p50, p99
  batch32_sentences_s  one call on all 32 sentences (padded to the longest,
                       39 tokens), --reps calls -> 32/seconds, median + samples
Every case is warmed up first (--warmup calls, untimed).

Engines:
  torch  SentenceTransformer(model_dir, device="cpu").encode(texts,
         batch_size=len(texts), normalize_embeddings=True, convert_to_numpy=True)
         with torch.set_num_threads(N) and torch.set_num_interop_threads(N).
  ort    tokenizers.Tokenizer.from_file(model_dir/tokenizer.json) with the
         file's own Fixed-128 padding replaced by pad-to-longest and truncation
         at 256 (what sentence-transformers does: max_seq_length 256), then an
         onnxruntime CPU session (intra_op_num_threads=N, inter_op_num_threads=1,
         ORT_SEQUENTIAL, ORT_ENABLE_ALL) on the ONNX file (inputs input_ids,
         attention_mask, token_type_ids, int64; output last_hidden_state), then
         attention-masked mean pooling and L2 normalization in numpy.
         Also reports the cosine between its embeddings and sentence-transformers'
         (text_8, and the minimum over batch_32) to show the int8 accuracy cost.
Tokenizer threads: the HF tokenizers library batch-encodes on its own rayon
pool; RAYON_NUM_THREADS=N (and TOKENIZERS_PARALLELISM=false when N=1) is set
before it is imported, so both engines use N threads there too.

Prints exactly one JSON object on stdout; progress goes to stderr.
"""

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def log(msg: str) -> None:
    print(f"minilm_bench: {msg}", file=sys.stderr, flush=True)


def parse_args():
    ap = argparse.ArgumentParser(description="all-MiniLM-L6-v2 embedding benchmark (torch or ort)")
    ap.add_argument("--engine", choices=["torch", "ort"], required=True)
    ap.add_argument("--model-dir", required=True, help="sentence-transformers model directory")
    ap.add_argument("--onnx", help="ONNX file (required for --engine ort)")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--reps", type=int, default=20, help="batch-32 timed calls")
    ap.add_argument("--iters-8", type=int, default=200, help="batch-1 8-token timed calls")
    ap.add_argument("--iters-128", type=int, default=100, help="batch-1 128-token timed calls")
    ap.add_argument("--warmup", type=int, default=10, help="untimed calls per case")
    ap.add_argument("--inputs", default=os.path.join(HERE, "minilm_inputs.json"))
    a = ap.parse_args()
    if a.engine == "ort" and not a.onnx:
        ap.error("--engine ort needs --onnx")
    return a


A = parse_args()
# Thread pools that read the environment at import/first use: set before importing.
os.environ["RAYON_NUM_THREADS"] = str(A.threads)
os.environ["OMP_NUM_THREADS"] = str(A.threads)
os.environ["MKL_NUM_THREADS"] = str(A.threads)
if A.threads == 1:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"

import numpy as np  # noqa: E402


def timed(fn, n: int, warmup: int):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def lat_stats(samples_s):
    ms = np.array(samples_s) * 1e3
    return {
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "mean": float(ms.mean()),
        "min": float(ms.min()),
        "n": len(ms),
    }


def torch_model(model_dir: str, threads: int):
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cpu")

    def encode(texts):
        return model.encode(texts, batch_size=len(texts), normalize_embeddings=True,
                            convert_to_numpy=True, show_progress_bar=False)

    return torch, model, encode


def main() -> int:
    a = A
    with open(a.inputs, encoding="utf-8") as f:
        inp = json.load(f)
    text_8, text_128, batch = [inp["text_8"]], [inp["text_128"]], inp["batch_32"]
    extra = {}

    t_load = time.perf_counter()
    if a.engine == "torch":
        torch, model, encode = torch_model(a.model_dir, a.threads)
        import sentence_transformers
        import transformers

        peer = "sentence-transformers"
        impl = (f"sentence-transformers {sentence_transformers.__version__}, transformers "
                f"{transformers.__version__}, torch {torch.__version__} (CPU)")
        extra["threads_effective"] = {"num_threads": torch.get_num_threads(),
                                      "num_interop_threads": torch.get_num_interop_threads()}
        extra["settings"] = {"max_seq_length": model.max_seq_length,
                             "attn_implementation": getattr(model[0].auto_model.config, "_attn_implementation", None)}
    else:
        import onnxruntime as ort
        import tokenizers
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(os.path.join(a.model_dir, "tokenizer.json"))
        tok.no_padding()
        tok.enable_padding(pad_id=0, pad_type_id=0, pad_token="[PAD]")  # pad to the longest in the batch
        tok.enable_truncation(max_length=256)
        so = ort.SessionOptions()
        so.intra_op_num_threads = a.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(a.onnx, so, providers=["CPUExecutionProvider"])
        in_names = [i.name for i in sess.get_inputs()]
        out_name = sess.get_outputs()[0].name

        def encode(texts):
            encs = tok.encode_batch(texts)
            ids = np.array([e.ids for e in encs], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in in_names:
                feeds["token_type_ids"] = np.array([e.type_ids for e in encs], dtype=np.int64)
            hidden = sess.run([out_name], feeds)[0]  # [B, T, 384]
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
            norm = np.linalg.norm(pooled, axis=1, keepdims=True)
            return pooled / np.clip(norm, 1e-12, None)

        peer = "onnxruntime-int8"
        impl = (f"onnxruntime {ort.__version__} (CPUExecutionProvider), tokenizers {tokenizers.__version__}, "
                f"numpy {np.__version__}")
        extra["onnx"] = os.path.basename(a.onnx)
        extra["onnx_inputs"] = in_names
        extra["onnx_output"] = out_name
        extra["settings"] = {"intra_op_num_threads": a.threads, "inter_op_num_threads": 1,
                             "execution_mode": "ORT_SEQUENTIAL", "graph_optimization_level": "ORT_ENABLE_ALL",
                             "padding": "longest", "truncation": 256}
        extra["note"] = ("the ONNX file stores int8 weights dequantized in-graph (Cast+Mul); ORT constant-folds "
                         "them at load, so compute is fp32 MatMul on int8-rounded weights")
    load_s = time.perf_counter() - t_load
    log(f"engine {a.engine} loaded in {load_s:.2f} s; threads {a.threads}")

    e8 = encode(text_8)
    assert e8.shape == (1, 384), e8.shape

    t = time.perf_counter()
    lat8 = timed(lambda: encode(text_8), a.iters_8, a.warmup)
    log(f"latency 8 tokens: p50 {np.percentile(lat8, 50)*1e3:.2f} ms ({time.perf_counter()-t:.1f} s)")
    t = time.perf_counter()
    lat128 = timed(lambda: encode(text_128), a.iters_128, a.warmup)
    log(f"latency 128 tokens: p50 {np.percentile(lat128, 50)*1e3:.2f} ms ({time.perf_counter()-t:.1f} s)")
    t = time.perf_counter()
    b32 = timed(lambda: encode(batch), a.reps, max(1, a.warmup // 5))
    tput = [len(batch) / s for s in b32]
    log(f"batch 32: median {statistics.median(tput):.1f} sentences/s ({time.perf_counter()-t:.1f} s)")

    if a.engine == "ort":
        # Accuracy against the fp32 reference (sentence-transformers), outside the timing.
        _, _, ref_encode = torch_model(a.model_dir, a.threads)
        r8 = ref_encode(text_8)
        rb = ref_encode(batch)
        eb = encode(batch)
        extra["cosine_vs_torch_text_8"] = float((e8[0] * r8[0]).sum())
        extra["cosine_vs_torch_batch_32_min"] = float((eb * rb).sum(axis=1).min())
        log(f"cosine vs sentence-transformers: text_8 {extra['cosine_vs_torch_text_8']:.5f}, "
            f"batch_32 min {extra['cosine_vs_torch_batch_32_min']:.5f}")

    result = {
        "peer": peer,
        "impl": impl,
        "model": "all-MiniLM-L6-v2",
        "engine": a.engine,
        "threads": a.threads,
        "load_s": round(load_s, 3),
        "latency_8_ms": lat_stats(lat8),
        "latency_128_ms": lat_stats(lat128),
        "batch32_sentences_s": {"median": statistics.median(tput), "samples": tput},
        "batch32_padded_len": inp["batch_32_padded_len"],
        "embedding_text_8_head": [round(float(x), 6) for x in e8[0][:8]],
        **extra,
    }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
