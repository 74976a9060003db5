"""Generates bench/peers/minilm_inputs.json, the fixed inputs of the MiniLM benchmarks.

    $(hack/reference-env.sh) bench/peers/make_minilm_inputs.py \
        --model-dir "$(dirname "$(hack/models.sh minilm)")" > bench/peers/minilm_inputs.json

Run once; the JSON is committed, so every engine embeds exactly the same texts.
Token counts are those of the model's own tokenizer (tokenizer.json, BERT
uncased WordPiece) INCLUDING [CLS] and [SEP], with the tokenizer.json's own
padding (Fixed 128) and truncation (128) turned off. The script fails unless:
  text_8    tokenizes to exactly 8 tokens,
  text_128  tokenizes to exactly 128 tokens (built word by word from prose),
  batch_32  is 32 distinct sentences of 16..40 tokens each.
"""

import argparse
import json
import os
import sys

from tokenizers import Tokenizer

TEXT_8 = "The cat sat on the mat"

# Source prose for the 128-token text; words are taken from the start until the
# count is exactly 128.
PROSE_128 = (
    "Early on a grey Monday morning the small harbour town began to wake. Fishermen checked "
    "their nets and engines while gulls circled above the quay, waiting for scraps. In the "
    "bakery on the corner the first loaves came out of the oven, and the smell of fresh bread "
    "drifted along the narrow street toward the school. Teachers unlocked the classrooms, "
    "opened the windows and wrote the day's lessons on the board. By eight o'clock the buses "
    "had arrived from the villages in the hills, bringing children who talked loudly about "
    "football, homework and the storm that was expected later in the week. Down at the "
    "station the early train to the city left on time for once, carrying office workers, "
    "students and a few tourists with heavy bags who had missed the last ferry the night "
    "before and slept in the waiting room."
)

BATCH_32 = [
    "How do I reset my password if I no longer have access to the email address on my account?",
    "The quarterly report shows revenue growth of twelve percent, driven mainly by new customers in Europe.",
    "Heavy rain is expected across the northern region tonight, with possible flooding near rivers.",
    "Preheat the oven to 200 degrees, then roast the vegetables for about thirty minutes.",
    "Kubernetes schedules pods onto nodes based on resource requests, taints and affinity rules, and it evicts low-priority pods when a node runs out of memory.",
    "She finished the marathon in just under four hours despite an injury to her left knee.",
    "Photosynthesis converts light energy into chemical energy stored in glucose molecules.",
    "Please remember to bring a valid photo ID and your booking reference to the check-in desk.",
    "The museum's new exhibition explores three centuries of textile design from around the world.",
    "Our support team is available around the clock by chat, phone and email.",
    "A sudden drop in pressure caused the valve to close and the pump to shut down automatically.",
    "The novel follows two sisters who reunite after twenty years of silence to settle their late father's estate, a crumbling farmhouse on the edge of a windswept moor in northern England.",
    "Interest rates were left unchanged as the central bank waits for clearer signs of inflation easing.",
    "To install the package, run the setup script and restart your terminal session afterwards.",
    "The hiking trail climbs steeply through pine forest before reaching a quiet alpine lake.",
    "Customers who ordered before Friday will receive their parcels by the middle of next week.",
    "Researchers found that regular and sufficient sleep improves memory consolidation in healthy older adults.",
    "The striker scored twice in the second half to secure a dramatic victory for the home side.",
    "Make sure the graphics driver matches the CUDA version required by your framework, otherwise the library will fail to load with a confusing error about missing symbols.",
    "The city council approved a plan to plant ten thousand trees along major roads by 2030, paid for by a new parking levy and by grants from the regional government.",
    "I would like to cancel my subscription and request a refund for the unused months.",
    "Volcanic ash from the eruption has forced several airlines to cancel flights across the region.",
    "The recipe calls for two eggs, a cup of flour, some butter and a pinch of salt.",
    "Latency increased sharply after Tuesday's deployment because the cache was cold, every request went straight to the database, and the connection pool was exhausted within minutes.",
    "Migrating birds use the Earth's magnetic field, the position of the sun and stars, and familiar landmarks such as coastlines and mountain ranges to navigate thousands of kilometres every year.",
    "The orchestra will perform Beethoven's ninth symphony at the open-air concert on Saturday evening.",
    "Children under twelve must be accompanied by an adult when using the swimming pool.",
    "The young startup raised forty million dollars to expand its battery recycling plants in Texas.",
    "Clean the filter every three months to keep the air conditioner running efficiently.",
    "The ancient city was abandoned after a series of earthquakes destroyed its aqueducts and water supply, and its people moved to the fertile valley further south.",
    "Which of these three laptops has the longest battery life, the best keyboard for programming, and enough memory to run a few containers and a local database at the same time?",
    "Scientists detected water vapour in the atmosphere of a planet orbiting a distant red dwarf star.",
]


def main() -> int:
    ap = argparse.ArgumentParser(description="generate minilm_inputs.json")
    ap.add_argument("--model-dir", required=True, help="sentence-transformers model directory (has tokenizer.json)")
    a = ap.parse_args()
    tok = Tokenizer.from_file(os.path.join(a.model_dir, "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()

    def n(text: str) -> int:
        return len(tok.encode(text).ids)

    errors = []
    if n(TEXT_8) != 8:
        errors.append(f"text_8 has {n(TEXT_8)} tokens, not 8")

    words = PROSE_128.split()
    text_128 = None
    for k in range(1, len(words) + 1):
        cand = " ".join(words[:k])
        c = n(cand)
        if c == 128:
            text_128 = cand
            break
        if c > 128:
            break
    if text_128 is None:
        errors.append("no prefix of PROSE_128 has exactly 128 tokens; edit the prose")

    counts = [n(s) for s in BATCH_32]
    if len(BATCH_32) != 32 or len(set(BATCH_32)) != 32:
        errors.append("batch_32 must be 32 distinct sentences")
    for s, c in zip(BATCH_32, counts):
        if not 16 <= c <= 40:
            errors.append(f"{c} tokens (want 16..40): {s!r}")
    if errors:
        for e in errors:
            print("make_minilm_inputs:", e, file=sys.stderr)
        return 1

    out = {
        "_about": "Fixed inputs of the all-MiniLM-L6-v2 benchmarks (bench/peers/minilm_bench.py and the "
                  "Rust side). Generated by bench/peers/make_minilm_inputs.py; token counts are of the "
                  "model's tokenizer.json including [CLS] and [SEP], without padding or truncation.",
        "text_8": TEXT_8,
        "text_8_tokens": n(TEXT_8),
        "text_8_ids": tok.encode(TEXT_8).ids,
        "text_128": text_128,
        "text_128_tokens": n(text_128),
        "batch_32": BATCH_32,
        "batch_32_tokens": counts,
        "batch_32_total_tokens": sum(counts),
        "batch_32_padded_len": max(counts),
    }
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    print(f"make_minilm_inputs: ok; batch_32 tokens min {min(counts)} max {max(counts)} "
          f"total {sum(counts)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
