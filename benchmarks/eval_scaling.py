"""Distributed evaluation scaling: wall time of `run_evaluation` with 1 vs 2 Ray workers on the same tasks, one run.

Each worker gets 1 CPU (1 torch thread), so the ratio measures task-level parallelism, not BLAS threading. The
task set is real data from ``$NVEMBED_DATA`` (default ``../shared/data``) through mteb's own tasks; both runs start
from empty output folders.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/eval_scaling.py
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# real public data, not shipped: $NVEMBED_DATA (README "Data"), default ../shared/data beside the checkout
DATA = Path(os.environ.get("NVEMBED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
TASKS = {
    "STSBenchmark": DATA / "stsbenchmark",
    "STS12": DATA / "sts12",
    "SprintDuplicateQuestions": DATA / "mrpc",
    "AskUbuntuDupQuestions": DATA / "wikiqa",
}


def main() -> None:
    import ray

    from evaluation.runner import run_evaluation

    ray.init(
        num_cpus=3,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}},
    )
    data = {k: str(v) for k, v in TASKS.items()}
    times, scores = {}, {}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            res = run_evaluation(
                "packaged:all-MiniLM-L6-v2",
                out,
                task_data=data,
                workers=workers,
                max_length=256,
                cpus_per_worker=1,
                log=lambda _: None,
            )
            times[workers] = time.perf_counter() - t0
            scores[workers] = res.scores
            assert not res.failed, res.failed
    ray.shutdown()
    print(f"tasks: {', '.join(TASKS)} (MiniLM, 1 CPU per worker)\n")
    print("| workers | wall s |\n|---|---|")
    for w, t in times.items():
        print(f"| {w} | {t:.1f} |")
    print(f"\nspeed-up 2 vs 1 workers: {times[1] / times[2]:.2f}x (goal >= 1.6)")
    print(f"identical scores: {scores[1] == scores[2]}  {scores[2]}")


if __name__ == "__main__":
    main()
