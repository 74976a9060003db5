"""Requantize a GGUF file with llama.cpp's own quantizer (via llama-cpp-python).

    $(hack/reference-env.sh) bench/peers/quantize.py IN.gguf OUT.gguf q4_0|q8_0 [--threads N]

Used by hack/bench-models.sh to make the Q4_0 / Q8_0 SmolLM2 files from the
Q4_1 one (the only one shipped). The input is already quantized, so this is a
requantization (allow_requantize=True): weights go Q4_1 -> dequantized -> the
target type, exactly as llama.cpp's `llama-quantize --allow-requantize` does.
Writes to OUT.gguf.tmp first and renames, so a killed run leaves nothing.
Progress and llama.cpp's log go to stderr; nothing is printed on stdout.
"""

import argparse
import os
import sys

import llama_cpp

FTYPES = {
    "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
    "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inp")
    ap.add_argument("out")
    ap.add_argument("qtype", choices=sorted(FTYPES))
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = a.threads
    params.ftype = FTYPES[a.qtype]
    params.allow_requantize = True
    tmp = a.out + ".tmp"
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    # llama.cpp logs to stderr (fd 2) itself; stdout stays clean.
    rc = llama_cpp.llama_model_quantize(a.inp.encode(), tmp.encode(), params)
    if rc != 0:
        if os.path.exists(tmp):
            os.unlink(tmp)
        print(f"quantize.py: llama_model_quantize returned {rc}", file=sys.stderr)
        return 1
    os.replace(tmp, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
