"""Learning on real data: the two-stage recipe on MiniLM, judged in domain and on tasks it never trained on.

Trains ``jobs/configs/minilm_recipe.yaml`` (and, for ablations, the same config with one setting changed) and scores
each model with mteb's evaluators on two suites of local folders under ``$NVEMBED_DATA``:

* **in domain**: SciFact (its train split shares the test corpus), STSBenchmark, Banking77Classification: tasks
  whose training splits the recipe uses;
* **out of domain** (the generalisation suite; no training row comes from these sets, and the config's
  ``decontaminate`` lists drop any training row that shares a text with them): STS12, Cranfield (retrieval), MRPC
  (pair classification), MR and SUBJ (SentEval sentence classification, 10-fold cross-validation), WikiQA test
  (reranking). The last five are mteb task classes of ``evaluation/suite.py``.

The base MiniLM row is the published setting (mean pooling, no instruction). Prints one Markdown table (per task,
both means, training wall time) and writes ``results.json``; a later call on the same ``--out`` adds its rows.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/minilm_recipe.py --out runs/recipe --variants recipe
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/minilm_recipe.py --out runs/recipe --variants mean,inst_all

Variants (``VARIANTS``): ``recipe`` = the config as shipped; every other one changes one setting of it (the
ablations of docs/recipe.md). ``stage1`` rows come free with each trained variant (its stage-1 model). The first
variant trained on a fresh ``--out`` mines negatives, so its time is the from-scratch time; later ones reuse the
curated rows when their data settings are the same.
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
IN_DOMAIN = {"SciFact": "scifact", "STSBenchmark": "stsbenchmark", "Banking77Classification": "banking77"}
OUT_OF_DOMAIN = {
    "STS12": "sts12",
    "Cranfield": "cranfield",
    "MRPC": "mrpc",
    "MR": "mr-sentence-polarity",
    "SUBJ": "subj-subjectivity",
    "WikiQAReranking": "wikiqa",
}
SHORT = {"Banking77Classification": "Banking77", "STSBenchmark": "STS-B", "WikiQAReranking": "WikiQA"}
PUBLISHED_BASE = {"SciFact": 64.51, "STSBenchmark": 82.03, "Banking77Classification": 80.04, "STS12": 72.37}

# one setting changed against the shipped recipe each (docs/recipe.md, the ablation table)
VARIANTS: dict[str, list[str]] = {
    "recipe": [],
    "inst_all": ["model.instruction_policy=all"],  # NV-Embed: instructions on every task type
    "inst_none": ["model.instruction_policy=none"],
    "mean": ["pooling.kind=mean"],
    "last": ["pooling.kind=last"],
    "s2_inbatch": ["stage2.loss.in_batch_negatives=true"],
    "naive_mining": ["stage1.data.mining.margin=1000.0", "stage2.data.mining.margin=1000.0"],  # plain top-k
}


def evaluate(model_path: str, work: Path, instructions: bool) -> dict[str, float]:
    from evaluation.encoder import NVEmbedEncoder
    from evaluation.local import score_local
    from nvembed import Embedder

    options = {"pooling": "mean"} if model_path.startswith("packaged:") else {}  # a saved model keeps its head
    emb = Embedder.from_pretrained(model_path, **options)
    encoder = NVEmbedEncoder(emb, max_length=256, source=model_path)
    if not instructions:
        encoder.instruction = lambda *a: None
    return score_local(encoder, {name: DATA / folder for name, folder in {**IN_DOMAIN, **OUT_OF_DOMAIN}.items()}, work)


def means(scores: dict[str, float]) -> tuple[float, float]:
    ind = sum(scores[t] for t in IN_DOMAIN) / len(IN_DOMAIN)
    ood = sum(scores[t] for t in OUT_OF_DOMAIN) / len(OUT_OF_DOMAIN)
    return round(ind, 2), round(ood, 2)


def table(results: dict[str, dict], timings: dict[str, float]) -> str:
    tasks = [*IN_DOMAIN, *OUT_OF_DOMAIN]
    head = (
        "| model | " + " | ".join(SHORT.get(t, t) for t in tasks) + " | in-domain mean | out-of-domain mean | train s |"
    )
    lines = [head, "|" + "---|" * (len(tasks) + 4)]
    for name, scores in results.items():
        ind, ood = means(scores)
        variant = name.split(" ")[0]
        seconds = timings.get(variant, "") if "stage 2" in name else ""
        cells = " | ".join(f"{scores[t]:.2f}" for t in tasks)
        lines.append(f"| {name} | {cells} | {ind:.2f} | {ood:.2f} | {seconds} |")
    return "\n".join(lines)


def main() -> None:
    from nvembed.config import JobConfig, load_yaml
    from nvembed.training.job import run_job_locally

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/minilm_recipe")
    parser.add_argument("--config", default=str(ROOT / "jobs/configs/minilm_recipe.yaml"))
    parser.add_argument("--variants", default="recipe", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--set", action="append", default=[], help="extra overrides for every variant")
    parser.add_argument("--skip-train", action="store_true", help="evaluate the models an earlier run left in --out")
    parser.add_argument("--no-base", action="store_true", help="do not (re)evaluate the base MiniLM")
    parser.add_argument("--stage1", action="store_true", help="also evaluate each variant's stage-1 model")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    os.chdir(ROOT)  # config paths are relative to the project root
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    results: dict[str, dict] = previous.get("scores", {})
    timings: dict[str, float] = previous.get("train_seconds", {})
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    if not args.no_base and "base MiniLM (mean, no instruction)" not in results:
        t0 = time.perf_counter()
        results["base MiniLM (mean, no instruction)"] = evaluate("packaged:all-MiniLM-L6-v2", out, False)
        print("base", results["base MiniLM (mean, no instruction)"], f"({time.perf_counter() - t0:.0f} s)", flush=True)
    for variant in variants:
        job = load_yaml(
            args.config,
            JobConfig,
            [
                f"output_dir={out / variant}",
                f"stage1.data.cache_dir={out / 'data'}",
                f"stage2.data.cache_dir={out / 'data'}",
                *VARIANTS[variant],
                *args.set,
            ],
        )
        if not args.skip_train:
            t0 = time.perf_counter()
            run_job_locally(job)
            timings[variant] = round(time.perf_counter() - t0, 1)
            print(f"{variant}: both stages trained in {timings[variant]} s", flush=True)
        stages = [1, 2] if args.stage1 else [2]
        for stage in stages:
            label = f"{variant} (stage {stage})"
            t0 = time.perf_counter()
            results[label] = evaluate(str(out / variant / f"stage{stage}" / "final"), out, True)
            print(label, results[label], f"({time.perf_counter() - t0:.0f} s)", flush=True)
        (out / "results.json").write_text(
            json.dumps({"scores": results, "train_seconds": timings, "published_base": PUBLISHED_BASE}, indent=2)
        )
    print()
    print(table(results, timings))
    print("\ninstructions: each trained model as its config's model.instruction_policy says; base: none")
    print("train s: both stages, incl. data preparation and mining (a later variant reuses the curated rows)")
    (out / "results.json").write_text(
        json.dumps({"scores": results, "train_seconds": timings, "published_base": PUBLISHED_BASE}, indent=2)
    )


if __name__ == "__main__":
    main()
