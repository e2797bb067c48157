"""Step time of the Ray Train path (1 worker) vs the plain single-process loop: same model, same batches.

Both run stage 1 of ``jobs/configs/quickstart.yaml`` (MiniLM, latent head) for the same steps and seed; the plan /
batcher produce the same rows. Per-step times come from each run's ``metrics.jsonl`` (the loop's own timer: data
wait + forward/backward + optimizer step), median over steps after the first. Start-up (Ray, actors, Ray Data
planning) is reported separately: it is paid once per stage.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/ray_overhead.py [--steps 24]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]


def step_times(metrics: Path) -> list[float]:
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    return [r["seconds"] for r in sorted(rows, key=lambda r: r["step"])][1:]


def main() -> None:
    from nvembed.config import JobConfig, load_yaml
    from nvembed.launch.trainer import run_job_on_ray
    from nvembed.training.job import run_job_locally

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--set", action="append", default=[], help="extra overrides, e.g. stage1.run.autocast=off")
    args = parser.parse_args()
    os.chdir(ROOT)
    with tempfile.TemporaryDirectory() as tmp:
        common = [
            f"stage1.run.max_steps={args.steps}",
            "stage1.run.checkpoint_every=0",
            "scaling.num_workers=1",
            "scaling.cpus_per_worker=2",
            "stage1.run.log_every=0",
            *args.set,
        ]
        walls = {}
        t0 = time.perf_counter()
        run_job_locally(
            load_yaml("jobs/configs/quickstart.yaml", JobConfig, [f"output_dir={tmp}/plain", *common]),
            stages=[1],
            log=lambda _: None,
        )
        walls["plain loop"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_job_on_ray(
            load_yaml("jobs/configs/quickstart.yaml", JobConfig, [f"output_dir={tmp}/ray", *common]),
            stages=[1],
            log=lambda _: None,
        )
        walls["Ray Train, 1 worker"] = time.perf_counter() - t0
        plain = step_times(Path(tmp) / "plain/stage1/metrics.jsonl")
        ray = step_times(Path(tmp) / "ray/stage1/metrics.jsonl")
    half = len(plain) // 2
    rows = {
        f"all steps 2..{args.steps}": (statistics.median(plain), statistics.median(ray)),
        f"steady state, steps {half + 2}..{args.steps}": (
            statistics.median(plain[half:]),
            statistics.median(ray[half:]),
        ),
    }
    extra = f", {' '.join(args.set)}" if args.set else ""
    print(f"MiniLM + latent head, batch 32 x (1 + 1), {args.steps} steps{extra}; median seconds per step\n")
    print("| steps | plain loop | Ray Train, 1 worker | Ray / plain |\n|---|---|---|---|")
    for name, (p, r) in rows.items():
        print(f"| {name} | {p:.3f} | {r:.3f} | {r / p:.2f}x |")
    plain_wall, ray_wall = walls["plain loop"], walls["Ray Train, 1 worker"]
    print(f"\nstage wall time incl. start-up: plain {plain_wall:.1f} s, Ray {ray_wall:.1f} s")
    print("goal: Ray / plain <= 1.10x. The first steps of the Ray run overlap Ray Data reading the plan and Ray")
    print("prestarting workers on the same 2 cores; the steady-state row is the per-step cost after that.")


if __name__ == "__main__":
    main()
