"""The compression study (issue 16): weight pruning and quantization, embedding truncation and quantization, one
table against the uncompressed model measured in the same run.

For each variant: ``nvembed compress`` (weights) or the mteb encoder's ``dimensions=`` / ``precision=`` (vectors),
then mteb's evaluators on local folders under ``$NVEMBED_DATA`` (default: SciFact, STSBenchmark, Banking77), then
one row: score per task, mean, retention (mean / uncompressed mean), non-zero backbone parameters, bytes of the
export on disk, bytes the compressed weights take packed (codes + scales; what a compact serialisation would
store), bytes per vector, encode throughput as a ratio to the uncompressed model (same texts, same process).

    NVEMBED_DATA=../shared/data .venv/bin/python benchmarks/compression.py --model runs/recipe/recipe/stage2/final \
        --out runs/compression

Pruned and quantized exports hold float weights (zeros / dequantized values), so they load anywhere and encode at
the uncompressed speed: speed needs sparse or low-bit kernels, which this CPU study does not have. A
"<variant> + recovery" row trains the compressed export for --recover-steps steps of --recover-config's stage 2 with
distillation from the uncompressed model (``loss.distill_from``), through nvembed's training driver.
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
sys.path.insert(0, str(ROOT))
DATA = Path(os.environ.get("NVEMBED_DATA") or ROOT.parent / "shared" / "data")
TASKS = {"SciFact": "scifact", "STSBenchmark": "stsbenchmark", "Banking77Classification": "banking77"}
SHORT = {"Banking77Classification": "Banking77", "STSBenchmark": "STS-B"}

# name -> nvembed compress options (weights) or encoder options (vectors)
WEIGHT_VARIANTS = {
    "magnitude 50%": {"prune_method": "magnitude", "sparsity": "0.5"},
    "magnitude 2:4": {"prune_method": "magnitude", "sparsity": "2:4"},
    "wanda 50%": {"prune_method": "wanda", "sparsity": "0.5"},
    "wanda 2:4": {"prune_method": "wanda", "sparsity": "2:4"},
    "sparsegpt 50%": {"prune_method": "sparsegpt", "sparsity": "0.5"},
    "sparsegpt 2:4": {"prune_method": "sparsegpt", "sparsity": "2:4"},
    "int8 weights": {"quantize": "int8"},
    "int4 weights": {"quantize": "int4"},
}
# recovery rows: "<weight variant> + recovery" trains the compressed export with distillation from the uncompressed
# model (loss.distill_from) through nvembed's training driver, on stage 2 of --recover-config
RECOVERY = " + recovery"
VECTOR_VARIANTS = {
    "vectors d/2": {"dimensions": 0.5},
    "vectors d/4": {"dimensions": 0.25},
    "vectors int8": {"precision": "int8"},
    "vectors binary": {"precision": "binary"},
}


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def nonzero_params(embedder) -> int:
    return sum(int((p != 0).sum()) for p in embedder._base_backbone().parameters())


def evaluate(embedder, source: str, work: Path, tasks: dict[str, str], **encoder_options) -> dict[str, float]:
    from evaluation.encoder import NVEmbedEncoder
    from evaluation.local import score_local

    encoder = NVEmbedEncoder(embedder, max_length=256, source=source, **encoder_options)
    return score_local(encoder, {name: DATA / folder for name, folder in tasks.items()}, work)


def recover(compressed: Path, args, work: Path, options: dict) -> Path:
    """Distil the uncompressed model into ``compressed`` with stage 2 of ``--recover-config`` (nvembed's own
    training driver, in this process); a quantized model is quantized again afterwards (training leaves the grid)."""
    from nvembed.compress import compress_model
    from nvembed.config import JobConfig, load_yaml
    from nvembed.training.job import run_job_locally

    overrides = [
        f"output_dir={work}",
        f"stage2.run.init_from={compressed}",
        f"stage2.run.max_steps={args.recover_steps}",
        f"stage2.run.checkpoint_every={args.recover_steps}",
        f"stage2.optim.lr={args.recover_lr}",
        f"stage2.optim.head_lr={args.recover_lr}",
        f"stage2.loss.distill_from={Path(args.model).resolve()}",
        f"stage2.loss.distill_weight={args.distill_weight}",
    ]
    if args.data_cache:
        overrides.append(f"stage2.data.cache_dir={Path(args.data_cache).resolve()}")
    cwd = os.getcwd()
    os.chdir(ROOT)  # the job's data paths are relative to the project root
    try:
        run_job_locally(load_yaml(args.recover_config, JobConfig, overrides), stages=[2])
    finally:
        os.chdir(cwd)
    final = work / "stage2" / "final"
    if options.get("quantize"):
        return compress_model(str(final), work / "requantized", quantize=options["quantize"])
    return final


def throughput(embedder, texts: list[str]) -> float:
    embedder.encode(texts[:64], show_progress=False)  # warm-up
    t0 = time.perf_counter()
    embedder.encode(texts, show_progress=False, batch_size=32)
    return len(texts) / (time.perf_counter() - t0)


def main() -> None:
    from nvembed import Embedder
    from nvembed.compress import compress_model, read_calibration_texts
    from nvembed.compression import Int8Calibration

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="the trained export to compress")
    parser.add_argument("--out", default="runs/compression")
    parser.add_argument("--variants", default="all", help="comma-separated names of the grid, or 'all'")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated, of " + ", ".join(TASKS))
    parser.add_argument(
        "--calibration", default=None, help="calibration texts (default: SNLI validation triplets of $NVEMBED_DATA)"
    )
    parser.add_argument("--calibration-texts", type=int, default=128)
    parser.add_argument("--int8-vectors", type=int, default=5000, help="corpus vectors for int8 vector ranges")
    parser.add_argument(
        "--recover-config", default=str(ROOT / "jobs/configs/quickstart.yaml"), help="job whose stage 2 recovers"
    )
    parser.add_argument("--recover-steps", type=int, default=40)
    parser.add_argument("--recover-lr", type=float, default=5e-5)
    parser.add_argument("--distill-weight", type=float, default=5.0)
    parser.add_argument("--data-cache", default=None, help="curated rows of the recovery job (reused when present)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tasks = {t: TASKS[t] for t in args.tasks.split(",")}
    grid = {**WEIGHT_VARIANTS, **{k + RECOVERY: v for k, v in WEIGHT_VARIANTS.items()}, **VECTOR_VARIANTS}
    names = list(grid) if args.variants == "all" else [v.strip() for v in args.variants.split(",")]
    unknown = [n for n in names if n not in grid]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; known: {', '.join(grid)}")
    calibration = Path(args.calibration or DATA / "snli-devtest" / "triplets_validation.jsonl")
    probe = [json.loads(line)["sentence1"] for line in open(DATA / "stsbenchmark" / "test.jsonl")][:1000]

    results_file = out / "results.json"
    rows: dict[str, dict] = json.loads(results_file.read_text()) if results_file.exists() else {}
    reference = Embedder.from_pretrained(args.model)
    if "uncompressed" not in rows:
        t0 = time.perf_counter()
        rows["uncompressed"] = {
            "scores": evaluate(reference, args.model, out, tasks),
            "params": nonzero_params(reference),
            "disk": folder_bytes(Path(args.model)),
            "packed": None,
            "vector_bytes": reference.dim * 4,
            "speed": 1.0,
        }
        print("uncompressed", rows["uncompressed"]["scores"], f"({time.perf_counter() - t0:.0f} s)", flush=True)
    for name in names:
        t0 = time.perf_counter()
        options = grid[name]
        if name.removesuffix(RECOVERY) in WEIGHT_VARIANTS:
            folder = out / "models" / name.replace(" ", "_").replace(":", "-").replace("%", "pct").replace("+", "")
            compress_model(
                args.model, folder, calibration_path=calibration, calibration_texts=args.calibration_texts, **options
            )
            if name.endswith(RECOVERY):
                folder = recover(folder, args, out / "recovery" / folder.name, options)
            model = Embedder.from_pretrained(str(folder))
            steps = json.loads((folder / "nvembed_config.json").read_text())["card"]["compression"]
            quant = next((s for s in steps if s["step"] == "quantize"), None)
            row = {
                "scores": evaluate(model, str(folder), out, tasks),
                "params": nonzero_params(model),
                "disk": folder_bytes(folder),
                "packed": quant["packed_bytes"] if quant else None,
                "vector_bytes": model.dim * 4,
                # measured next to the reference each time: one reference figure at start-up drifted by 1.5x
                "speed": round(throughput(model, probe) / throughput(reference, probe), 3),
            }
        else:
            enc: dict = {}
            width = reference.dim
            if "dimensions" in options:
                width = int(reference.dim * options["dimensions"])
                enc["dimensions"] = width
            precision = options.get("precision", "float32")
            if precision != "float32":
                enc["precision"] = precision
            if precision == "int8":
                corpus = read_calibration_texts(DATA / "scifact", args.int8_vectors, seed=1)
                enc["calibration"] = Int8Calibration.from_vectors(reference.encode(corpus, show_progress=False))
            row = {
                "scores": evaluate(reference, args.model, out, tasks, **enc),
                "params": nonzero_params(reference),
                "disk": folder_bytes(Path(args.model)),
                "packed": None,
                "vector_bytes": {"float32": width * 4, "int8": width, "binary": width // 8}[precision],
                "speed": 1.0,
            }
        rows[name] = row
        print(name, row["scores"], f"({time.perf_counter() - t0:.0f} s)", flush=True)
        results_file.write_text(json.dumps(rows, indent=2))
    print()
    print(table(rows, list(tasks)))


def table(rows: dict[str, dict], tasks: list[str]) -> str:
    ref = rows["uncompressed"]
    ref_mean = sum(ref["scores"][t] for t in tasks) / len(tasks)
    head = "| variant | " + " | ".join(SHORT.get(t, t) for t in tasks)
    head += " | mean | retention | non-zero params | disk MB | packed weights MB | bytes/vector | encode speed |"
    lines = [head, "|" + "---|" * (len(tasks) + 8)]
    for name, row in rows.items():
        mean = sum(row["scores"][t] for t in tasks) / len(tasks)
        packed = f"{row['packed'] / 1e6:.1f}" if row["packed"] else ""
        lines.append(
            f"| {name} | "
            + " | ".join(f"{row['scores'][t]:.2f}" for t in tasks)
            + f" | {mean:.2f} | {100 * mean / ref_mean:.1f}% | {row['params'] / 1e6:.2f}M | {row['disk'] / 1e6:.1f}"
            + f" | {packed} | {row['vector_bytes']} | {row['speed']:.2f}x |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
