"""llama.cpp peer benchmark: prefill and greedy decode speed, batch 1.

    $(hack/reference-env.sh) bench/peers/llama_cpp_bench.py \
        --model "$(hack/bench-models.sh q4_0)" --threads 1 \
        [--prompt-tokens 128] [--gen-tokens 64] [--reps 5] [--warmup-gen 8]

Engine: llama-cpp-python's `llama_cpp.Llama(model_path, n_threads=N,
n_threads_batch=N, n_ctx=512, n_batch=512, verbose=False, logits_all=False)`
(its defaults otherwise: n_ubatch=512, flash_attn=False, f16 KV cache, mmap).

Prompt: bench/peers/prompt.txt tokenized with the model's own tokenizer (BOS
added only if the model's GGUF metadata says so, i.e. llama_vocab_get_add_bos;
parse_special=False), truncated to exactly --prompt-tokens ids (the text is
repeated, joined by a space, if it is too short). The ids go into the output
(`prompt_ids`) so other engines can be fed the identical sequence.

One rep:
  prefill = llm.reset(); llm.eval(prompt_ids)      -> prompt_tokens / seconds
  decode  = gen_tokens x (argmax of the last position's logits; llm.eval([tok]))
                                                    -> gen_tokens / seconds
  Greedy, EOS is not special: always exactly --gen-tokens steps. The first
  generated token comes from the prefill's logits, so the decode time covers
  gen_tokens single-token forward passes (KV positions prompt_tokens ..
  prompt_tokens+gen_tokens-1) plus as many argmax calls (~20 us each).
Before timing: one untimed rep with --warmup-gen decode steps.
Reported: median and all samples of both rates; generated_ids of the first
timed rep (all reps produce the same ids; a mismatch is reported on stderr).

Prints exactly one JSON object on stdout; progress goes to stderr.
"""

import argparse
import ctypes
import json
import os
import statistics
import sys
import time

import numpy as np
import llama_cpp

HERE = os.path.dirname(os.path.abspath(__file__))


def log(msg: str) -> None:
    print(f"llama_cpp_bench: {msg}", file=sys.stderr, flush=True)


def llama_cpp_commit() -> str:
    """The vendored llama.cpp/ggml commit, as ggml_commit() reports it."""
    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so"))
        lib.ggml_commit.restype = ctypes.c_char_p
        return lib.ggml_commit().decode()
    except (OSError, AttributeError):
        return "unknown"


def prompt_ids(llm: "llama_cpp.Llama", n: int) -> list:
    with open(os.path.join(HERE, "prompt.txt"), encoding="utf-8") as f:
        text = " ".join(f.read().split())
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(llm._model.vocab))
    reps = 1
    while True:
        ids = llm.tokenize(" ".join([text] * reps).encode("utf-8"), add_bos=add_bos, special=False)
        if len(ids) >= n:
            return ids[:n], add_bos
        reps += 1


def main() -> int:
    ap = argparse.ArgumentParser(description="llama.cpp prefill/decode benchmark (batch 1)")
    ap.add_argument("--model", required=True, help="GGUF file")
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--warmup-gen", type=int, default=8, help="decode steps in the untimed warm-up rep")
    ap.add_argument("--n-ctx", type=int, default=512)
    a = ap.parse_args()
    if a.prompt_tokens + a.gen_tokens > a.n_ctx:
        ap.error("prompt-tokens + gen-tokens must fit in --n-ctx")

    t_load = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=a.model,
        n_threads=a.threads,
        n_threads_batch=a.threads,
        n_ctx=a.n_ctx,
        n_batch=512,
        verbose=False,
        logits_all=False,
    )
    load_s = time.perf_counter() - t_load
    ctx = llm._ctx.ctx
    eff = (llama_cpp.llama_n_threads(ctx), llama_cpp.llama_n_threads_batch(ctx))
    if eff != (a.threads, a.threads):
        log(f"WARNING: context reports n_threads={eff[0]} n_threads_batch={eff[1]}, asked {a.threads}")
    n_vocab = llm.n_vocab()
    ids, add_bos = prompt_ids(llm, a.prompt_tokens)
    log(f"loaded {os.path.basename(a.model)} in {load_s:.2f} s; n_vocab={n_vocab} add_bos={add_bos} "
        f"threads={eff}; prompt {len(ids)} tokens")

    def last_argmax() -> int:
        ptr = llama_cpp.llama_get_logits_ith(ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(ptr, shape=(n_vocab,))))

    def one_rep(gen: int):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        t1 = time.perf_counter()
        out = []
        for _ in range(gen):
            tok = last_argmax()
            out.append(tok)
            llm.eval([tok])
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, out

    one_rep(a.warmup_gen)  # warm-up: page in weights, repack, allocate graphs

    prefill, decode, first_ids = [], [], None
    for r in range(a.reps):
        tp, td, out = one_rep(a.gen_tokens)
        prefill.append(a.prompt_tokens / tp)
        decode.append(a.gen_tokens / td if a.gen_tokens else 0.0)
        if first_ids is None:
            first_ids = out
        elif out != first_ids:
            log(f"WARNING: rep {r} generated different ids than rep 0")
        log(f"rep {r}: prefill {prefill[-1]:.1f} tok/s ({tp*1e3:.1f} ms), decode {decode[-1]:.1f} tok/s")

    result = {
        "peer": "llama.cpp",
        "impl": f"llama-cpp-python {llama_cpp.__version__} (llama.cpp {llama_cpp_commit()})",
        "model": os.path.basename(a.model),
        "threads": a.threads,
        "threads_effective": {"n_threads": eff[0], "n_threads_batch": eff[1]},
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "settings": {"n_ctx": a.n_ctx, "n_batch": 512, "n_ubatch": 512, "flash_attn": False,
                     "logits_all": False, "add_bos": add_bos, "warmup_gen": a.warmup_gen},
        "load_s": round(load_s, 3),
        "prompt_tokens": a.prompt_tokens,
        "gen_tokens": a.gen_tokens,
        "reps": a.reps,
        "prefill_tok_s": {"median": statistics.median(prefill), "samples": prefill},
        "decode_tok_s": {"median": statistics.median(decode), "samples": decode},
        "generated_ids": first_ids,
        "generated_text": llm.detokenize(first_ids).decode("utf-8", errors="replace"),
        "prompt_ids": ids,
    }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
