"""Tracking: a run with ``tracking`` on writes one MLflow run per job (params, per-step and final metrics) and
TensorBoard event files; both stages and a resumed stage log into the same run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
mlflow = pytest.importorskip("mlflow", reason="the track extra (mlflow) is part of the test install")


def test_tracked_job_reads_back_from_mlflow(tmp_path, monkeypatch):
    from nvembed.cli import main
    from tests.helpers import save_tiny_backbone

    monkeypatch.setenv("NVEMBED_TINY_MODEL", save_tiny_backbone(tmp_path / "tiny"))
    monkeypatch.chdir(ROOT)
    out = tmp_path / "job"
    steps = ["stage1.run.max_steps=3", "stage2.run.max_steps=2"]
    args = ["train", "jobs/configs/smoke_cpu.yaml", "--local", "--set", f"output_dir={out}", "--set", "tracking={}"]
    assert main([*args, *(a for s in steps for a in ("--set", s))]) == 0

    uri = f"sqlite:///{out.resolve()}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["nvembed"], output_format="list")
    assert len(runs) == 1  # both stages in one run
    run = runs[0]
    assert run.info.run_name == "job" and run.data.tags["nvembed.job"] == str(out.resolve())
    params = run.data.params
    assert params["stage1.lora.rank"] == "4" and params["stage2.run.max_steps"] == "2"
    assert params["stage1.model.name_or_path"] == os.environ["NVEMBED_TINY_MODEL"]
    final = run.data.metrics  # the last value of each metric
    assert {"stage1/loss", "stage1/samples_per_s", "stage2/loss", "stage2/grad_norm"} <= set(final)
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    history = client.get_metric_history(run.info.run_id, "stage1/loss")
    assert [m.step for m in history] == [1, 2, 3]
    import json

    last = json.loads((out / "stage2" / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["stage2/loss"] == pytest.approx(last["loss"])
    events = list((out / "tensorboard").rglob("events.out.tfevents.*"))
    assert {p.parent.name for p in events} == {"stage1", "stage2"}

    from nvembed.config import JobConfig, load_yaml
    from nvembed.tracking import Tracker

    job = load_yaml("jobs/configs/smoke_cpu.yaml", JobConfig, [f"output_dir={out}", "tracking={}"])
    tracker = Tracker(job.resolved_tracking(), job_key=str(out.resolve()))  # what `nvembed train` does after eval
    tracker.log_metrics({"STSBenchmark": 81.5}, step=0, prefix="eval")
    tracker.close()
    again = mlflow.search_runs(experiment_names=["nvembed"], output_format="list")
    assert len(again) == 1 and again[0].data.metrics["eval/STSBenchmark"] == 81.5
