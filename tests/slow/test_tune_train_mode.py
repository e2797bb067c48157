"""`nvembed tune` with `resources.mode=train` (a Ray Train run per trial, the job's scaling) scores every trial
exactly as the in-process `worker` mode does: same code, same data order, same dev objective."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _sweep(out: Path, mode: str, env: dict) -> dict[tuple[str, str], float]:
    args = ["tune", "tune/configs/smoke.yaml", "--set", f"output_dir={out}", "--set", f"resources.mode={mode}"]
    args += ["--set", "scheduler.kind=fifo"]
    run = subprocess.run(
        [sys.executable, "-m", "nvembed", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    with (out / "trials.csv").open() as fh:
        return {(r["lora.rank"], r["pooling.num_latents"]): float(r["objective"]) for r in csv.DictReader(fh)}


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_train_mode_trials_score_like_worker_mode(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(NVEMBED_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    worker = _sweep(tmp_path / "worker", "worker", env)
    train = _sweep(tmp_path / "train", "train", env)
    assert len(worker) == 4 and worker.keys() == train.keys()
    for point in worker:
        assert train[point] == pytest.approx(worker[point], abs=0.02), point
