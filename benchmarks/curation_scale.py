"""Curation at scale: ``nvembed prepare``'s Ray Data pipeline on a synthetic BEIR corpus, 2 workers vs 1.

A corpus of short documents (a query per 20 documents, one positive each) is mined with a tiny random teacher
(``tiny:mistral``: the pipeline's cost, not a model's, is what is measured). Each configuration runs in a fresh
process with its own local Ray, so the driver's peak RSS is that run's own. Printed: a table of wall time,
documents per second, the 2-vs-1 worker throughput ratio at the same size, and the driver's peak RSS against the
smallest run (goal: <= 1.2x at 10x the documents: the driver holds counts, not data).

    .venv/bin/python benchmarks/curation_scale.py     # 300k with 1 and 2 workers; 100k and 1M with 2 (~11 min)
    .venv/bin/python benchmarks/curation_scale.py --pair 20000 --sizes 20000,60000   # a quick look

Exact search costs (queries x documents): with a query per 20 documents it grows with the square of the corpus,
so the 1M run is search-bound and the small runs are bound by fixed costs (actor start, teacher load per phase).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = [f"w{i}" for i in range(5000)]


def make_corpus(folder: Path, n_docs: int, seed: int = 0) -> None:
    """Streamed to disk: 8-word documents, a query per 20 documents sharing 3 words with its positive."""
    rng = random.Random(seed)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with (
        open(folder / "corpus.jsonl", "w") as c,
        open(folder / "queries.jsonl", "w") as q,
        open(folder / "qrels" / "train.tsv", "w") as r,
    ):
        r.write("query-id\tcorpus-id\tscore\n")
        for i in range(n_docs):
            words = rng.choices(WORDS, k=8)
            c.write(json.dumps({"_id": f"d{i}", "title": "", "text": " ".join(words)}) + "\n")
            if i % 20 == 0:
                q.write(json.dumps({"_id": f"q{i}", "text": " ".join(rng.sample(words, 3))}) + "\n")
                r.write(f"q{i}\td{i}\t1\n")


def run_one(data: Path, workers: int, cache: Path) -> dict:
    """One pipeline run in this process (the child): returns wall time and the driver's peak RSS."""
    import ray

    from nvembed.config import DataConfig, DatasetConfig, MiningConfig, TrainConfig
    from nvembed.launch.prepare import prepare_stage_data

    ray.init(
        num_cpus=workers,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}},
    )
    cfg = TrainConfig()
    ds = DatasetConfig(
        name="synthetic",
        format="beir",
        path=str(data),
        mine_negatives=True,
        instruction="Given a query, retrieve documents",
    )
    cfg.data = DataConfig(
        datasets=[ds],
        cache_dir=str(cache),
        mining=MiningConfig(teacher="tiny:mistral", k=7, depth=50, max_length=32, batch_size=256),
    )
    cfg.data.curation.workers = workers
    cfg.data.curation.part_bytes = 1 << 19  # ~9k documents per part: enough parts to keep 2 workers busy
    cfg.data.curation.pairs_per_part = 1000
    cfg.run.output_dir = str(cache / "run")
    t0 = time.perf_counter()
    targets = prepare_stage_data(cfg, log=lambda s: print(s, file=sys.stderr))
    seconds = time.perf_counter() - t0
    from nvembed.data.curated import read_manifest

    manifest = read_manifest(targets[0].folder)
    ray.shutdown()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "rss_mb": rss_mb, "rows": manifest["rows"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000,1000000", help="corpus sizes run with 2 workers (peak RSS vs the first)")
    p.add_argument("--pair", type=int, default=300000, help="corpus size run with 1 and with 2 workers")
    p.add_argument("--child", nargs=3, metavar=("DATA", "WORKERS", "CACHE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_one(Path(args.child[0]), int(args.child[1]), Path(args.child[2]))))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    runs = [(args.pair, 1), (args.pair, 2)] + [(n, 2) for n in sizes if n != args.pair]
    rows = []
    with tempfile.TemporaryDirectory(prefix="curation-scale-") as tmp:
        for n in sorted({args.pair, *sizes}):
            make_corpus(Path(tmp) / f"beir-{n}", n)
        for n, w in runs:
            cache = Path(tmp) / f"cache-{n}-{w}"
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(Path(tmp) / f"beir-{n}"), str(w), str(cache)],
                capture_output=True,
                text=True,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            if out.returncode:
                sys.exit(f"run {n} docs x {w} workers failed:\n{out.stderr[-4000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"docs": n, "workers": w, **r})
            print(f"{n} docs, {w} workers: {r['seconds']:.1f} s, driver peak RSS {r['rss_mb']:.0f} MB", flush=True)
    base = {(r["docs"], r["workers"]): r for r in rows}
    small = base[(sizes[0], 2)]
    print(
        "\n| documents | workers | wall s | docs/s | x vs 1 worker (same size) | s per 1M docs | driver peak RSS MB "
        "| RSS x vs smallest (2 workers) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        one = base.get((r["docs"], 1))
        speed = f"{one['seconds'] / r['seconds']:.2f}" if one and r["workers"] > 1 else "-"
        print(
            f"| {r['docs']:,} | {r['workers']} | {r['seconds']:.1f} | {r['docs'] / r['seconds']:,.0f} | {speed} "
            f"| {r['seconds'] / r['docs'] * 1e6:,.0f} | {r['rss_mb']:.0f} | {r['rss_mb'] / small['rss_mb']:.2f} |"
        )


if __name__ == "__main__":
    main()
