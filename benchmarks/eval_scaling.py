"""Distributed evaluation scaling: wall time of `run_evaluation` with 1 vs 2 Ray workers on the same tasks, one run.

Each worker gets 1 CPU (1 torch thread), so the ratio measures parallelism, not BLAS threading. Two rows:

* **task set**: four small tasks, each a whole work item (task-level parallelism);
* **SciFact alone**: one retrieval task; its 5,183-document corpus is sharded over the workers (a task-per-worker
  plan cannot exceed 1.0x here).

Real data from ``$NVEMBED_DATA`` (default ``../shared/data``) through mteb's own tasks; every run starts from an
empty output folder (no embedding cache).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/eval_scaling.py [--only scifact|set]
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


def _run(data: dict[str, str], workers: int) -> tuple[float, dict]:
    from evaluation.request import EvalRequest, Resources
    from evaluation.runner import run_evaluation

    with tempfile.TemporaryDirectory() as out:
        request = EvalRequest(
            model="packaged:all-MiniLM-L6-v2",
            output=out,
            task_data=data,
            max_length=256,
            resources=Resources(workers=workers, cpus_per_worker=1),
        )
        t0 = time.perf_counter()
        res = run_evaluation(request, log=lambda _: None)
        seconds = time.perf_counter() - t0
    assert not res.failed, res.failed
    return seconds, res.scores


def main() -> None:
    import argparse

    import ray

    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=("set", "scifact"), default=None)
    args = parser.parse_args()
    rows = {"task set": {k: str(v) for k, v in TASKS.items()}, "SciFact alone": {"SciFact": str(DATA / "scifact")}}
    if args.only:
        rows = {k: v for k, v in rows.items() if (args.only == "set") == (k == "task set")}
    ray.init(
        num_cpus=3,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}},
    )
    table = []
    for label, data in rows.items():
        (t1, s1), (t2, s2) = _run(data, 1), _run(data, 2)
        table.append((label, t1, t2, s1 == s2, s2))
    ray.shutdown()
    print("MiniLM, 1 CPU per worker, max_length 256\n")
    print("| row | 1 worker s | 2 workers s | speed-up | identical scores | scores |\n|---|---|---|---|---|---|")
    for label, t1, t2, same, scores in table:
        print(f"| {label} | {t1:.1f} | {t2:.1f} | {t1 / t2:.2f}x | {same} | {scores} |")
    print("\ngoal: >= 1.6x on 2 cores")


if __name__ == "__main__":
    main()
