"""Learning on real data: the two-stage recipe on MiniLM, latent-attention vs mean pooling, scored with mteb.

Trains ``jobs/configs/minilm_recipe.yaml`` twice (latent-attention head; the same budget with mean pooling), then
evaluates with mteb's own SciFact, STSBenchmark and Banking77Classification tasks on the local folders of
``$NVEMBED_DATA`` (default ``../shared/data``): base MiniLM (mean pooling, no instruction: the published setting),
after stage 1, after stage 2, and the mean-pooling run after stage 2. Prints a Markdown table and writes
``results.json``.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/minilm_recipe.py --out runs/minilm_recipe

``--poolings latent`` trains one run only (the first run of a fresh ``--out`` mines negatives, so its time is the
from-scratch time); a later call on the same ``--out`` adds its rows and timings to ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # evaluation/ and nvembed/ from this checkout
# real public data, not shipped: $NVEMBED_DATA (README "Data"), default ../shared/data beside the checkout
DATA = Path(os.environ.get("NVEMBED_DATA") or ROOT.parent / "shared" / "data")
TASKS = {"SciFact": "scifact", "STSBenchmark": "stsbenchmark", "Banking77Classification": "banking77"}
PUBLISHED_BASE = {"SciFact": 64.51, "STSBenchmark": 82.03, "Banking77Classification": 80.04}


def evaluate(model_path: str, work: Path, instructions: bool) -> dict[str, float]:
    import mteb

    from evaluation.encoder import NVEmbedEncoder
    from evaluation.local import local_task
    from nvembed import Embedder

    options = {"pooling": "mean"} if model_path.startswith("packaged:") else {}  # a saved model keeps its head
    emb = Embedder.from_pretrained(model_path, **options)
    encoder = NVEmbedEncoder(emb, max_length=256, source=model_path)
    if not instructions:
        encoder.instruction = lambda *a: None
    tasks = [local_task(mteb.get_task(name), DATA / folder, work / "mteb-data") for name, folder in TASKS.items()]
    res = mteb.evaluate(
        encoder,
        tasks,
        cache=None,
        overwrite_strategy="always",
        show_progress_bar=False,
        encode_kwargs={"batch_size": 32},
    )
    if res.exceptions:
        raise RuntimeError(res.exceptions)
    return {r.task_name: round(100 * float(r.get_score()), 2) for r in res.task_results}


def main() -> None:
    from nvembed.config import JobConfig, load_yaml
    from nvembed.training.job import run_job_locally

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/minilm_recipe")
    parser.add_argument("--config", default=str(ROOT / "jobs/configs/minilm_recipe.yaml"))
    parser.add_argument("--set", action="append", default=[], help="extra overrides for both runs")
    parser.add_argument("--skip-train", action="store_true", help="evaluate the models an earlier run left in --out")
    parser.add_argument("--poolings", default="latent,mean", help="runs to train (the first one mines, from scratch)")
    parser.add_argument(
        "--only", default="base,latent1,latent2,mean2", help="rows to evaluate (also: base_instr, latent2_plain)"
    )
    args = parser.parse_args()
    out = Path(args.out).resolve()
    os.chdir(ROOT)  # config paths are relative to the project root
    # rows and timings of earlier invocations on the same --out are kept (train one pooling, evaluate, go on)
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    results: dict[str, dict] = previous.get("scores", {})
    timings: dict[str, float] = previous.get("train_seconds", {})
    for pooling in args.poolings.split(","):
        job = load_yaml(
            args.config,
            JobConfig,
            [
                f"output_dir={out / pooling}",
                f"pooling.kind={pooling}",
                f"stage1.data.cache_dir={out / 'data'}",
                f"stage2.data.cache_dir={out / 'data'}",
                *args.set,
            ],
        )
        if args.skip_train:
            continue
        t0 = time.perf_counter()
        run_job_locally(job)
        timings[pooling] = round(time.perf_counter() - t0, 1)
        print(f"{pooling}: both stages trained in {timings[pooling]} s", flush=True)
    rows = {
        "base": ("base MiniLM (mean, no instruction)", "packaged:all-MiniLM-L6-v2", False),
        "latent1": ("latent, after stage 1", str(out / "latent/stage1/final"), True),
        "latent2": ("latent, after stage 2", str(out / "latent/stage2/final"), True),
        "mean2": ("mean, after stage 2 (same budget)", str(out / "mean/stage2/final"), True),
        # protocol checks: what the NV-Embed instructions do to the untrained and to the trained model
        "base_instr": ("base MiniLM (mean, with instructions)", "packaged:all-MiniLM-L6-v2", True),
        "latent2_plain": ("latent, after stage 2, no instructions", str(out / "latent/stage2/final"), False),
    }
    for key in args.only.split(","):
        label, path, instructions = rows[key]
        results[label] = evaluate(path, out, instructions=instructions)
        print(label, results[label], flush=True)
    print("\n| model | SciFact nDCG@10 | STSBenchmark Spearman | Banking77 accuracy |\n|---|---|---|---|")
    for name, scores in results.items():
        print(
            f"| {name} | {scores['SciFact']:.2f} | {scores['STSBenchmark']:.2f} | "
            f"{scores['Banking77Classification']:.2f} |"
        )
    print(f"\ntraining wall time (both stages, incl. data prep/mining): {timings}")
    (out / "results.json").write_text(
        json.dumps({"scores": results, "train_seconds": timings, "published_base": PUBLISHED_BASE}, indent=2)
    )


if __name__ == "__main__":
    main()
