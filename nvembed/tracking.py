"""Experiment tracking: MLflow and TensorBoard, written by rank 0 of the training driver.

One MLflow run per job (both stages, and a restart after a crash, log into it: the run is found again by its
``nvembed.job`` tag), with each stage's resolved config as params (``stage1.optim.lr``, ...), per-step metrics
(``stage1/loss``, ``stage1/samples_per_s``, dev metrics ``stage1/dev_objective``...) at the stage's step, and the
final evaluation scores (``eval/<task>``). TensorBoard event files go under ``<output_dir>/tensorboard/stageN``.

The default MLflow store is ``sqlite:///<output_dir>/mlflow.db``: a local file, MLflow's recommended backend
(MLflow 3 refuses its old ``./mlruns`` file store unless ``MLFLOW_ALLOW_FILE_STORE`` is set). Any tracking URI
works (``tracking.mlflow_uri``: an MLflow server on a cluster). Logging happens in the training driver rather than
in Ray's ``MLflowLoggerCallback`` (a Tune callback, which sees only reported results, not every step, and not the
local launcher); it is the pattern Ray Train documents (``setup_mlflow`` on rank 0), without importing Ray here.
mlflow and tensorboardX come with the ``track`` extra and are imported only when tracking is on.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from nvembed.config import TrackingConfig

_SKIP = {"step", "stage", "world_size", "global_step", "seconds", "samples", "tokens"}


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}} -> {"a.b": "1"}`` (MLflow params are strings of at most 6000 characters)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)[:6000]
    return out


class Tracker:
    """Rank 0's view of the job's MLflow run and TensorBoard writer (both optional, per ``TrackingConfig``)."""

    def __init__(self, cfg: TrackingConfig, job_key: str) -> None:
        self.cfg = cfg
        self.job_key = job_key  # the job's absolute output folder: identifies its run
        self.client = None
        self.run_id: str | None = None
        self.writers: dict[str, Any] = {}
        if cfg.mlflow:
            self._open_mlflow()

    def _open_mlflow(self) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.cfg.mlflow_uri)
        exp = self.client.get_experiment_by_name(self.cfg.experiment)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(self.cfg.experiment)
        found = self.client.search_runs([exp_id], filter_string=f"tags.`nvembed.job` = '{self.job_key}'")
        if found:
            self.run_id = found[0].info.run_id
        else:
            run = self.client.create_run(exp_id, run_name=self.cfg.run_name, tags={"nvembed.job": self.job_key})
            self.run_id = run.info.run_id

    def log_params(self, params: dict[str, Any], prefix: str) -> None:
        """Params of one stage, once (MLflow refuses to change a logged param: a resumed stage logs nothing)."""
        if self.client is None:
            return
        from mlflow.entities import Param

        logged = self.client.get_run(self.run_id).data.params
        items = [Param(k, v) for k, v in flatten(params, prefix + ".").items() if k not in logged]
        for i in range(0, len(items), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, Any], step: int, prefix: str) -> None:
        values = {
            f"{prefix}/{k}": float(v)
            for k, v in metrics.items()
            if k not in _SKIP and isinstance(v, int | float) and math.isfinite(float(v))
        }
        if self.client is not None and values:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            batch = [Metric(k, v, now, step) for k, v in values.items()]
            self.client.log_batch(self.run_id, metrics=batch)
        if self.cfg.tensorboard_dir:
            writer = self._writer(prefix)
            for k, v in values.items():
                writer.add_scalar(k, v, step)
            writer.flush()

    def _writer(self, prefix: str):
        if prefix not in self.writers:
            from tensorboardX import SummaryWriter

            self.writers[prefix] = SummaryWriter(logdir=str(Path(self.cfg.tensorboard_dir) / prefix))
        return self.writers[prefix]

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()
