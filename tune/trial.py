"""What one Ray Tune trial runs: the training job at one point of the space, reporting dev metrics.

Both trainables train with the code of ``nvembed train``: ``worker_trial`` with the in-process loop of
``nvembed train --local`` (:func:`nvembed.training.stage.run_stage`), ``train_trial`` with one Ray Train run per
stage (:func:`nvembed.launch.trainer.run_stage_on_ray`, the job's ``scaling`` and engine, DeepSpeed included).

Each trial owns ``<sweep output>/trials/<trial id>/`` (stable across a sweep restore), so an interrupted trial resumes
from its last training checkpoint, and a trial that had finished (``DONE.json``) only replays its reports.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nvembed.config import JobConfig
from tune.config import SweepConfig, sweep_from_dict, trial_job

DONE = "DONE.json"


@dataclass
class _Trial:
    params: dict[str, Any]  # this trial's point of the search space
    sweep: SweepConfig
    out: Path  # <sweep output>/trials/<trial id>
    job: JobConfig  # base + set + this trial's point
    log: Callable[[str], None]
    started: float

    @property
    def total(self) -> int:
        """Global steps of the trial (its stages' steps in sequence): the step of its final report."""
        return sum(self.job.stage_config(n).run.max_steps for n in self.sweep.stages)


def _start(params: dict[str, Any], sweep_dict: dict[str, Any], root: str) -> _Trial | None:
    """Set up a trial; None when it had finished before an interruption (its reports are replayed, nothing
    is trained)."""
    from ray import tune

    if root and Path(root).is_dir():
        os.chdir(root)  # config paths are relative to where `nvembed tune` ran (RAY_CHDIR_TO_TRIAL_DIR=0 too)
    sweep = sweep_from_dict(sweep_dict)
    out = Path(sweep.output_dir) / "trials" / tune.get_context().get_trial_id()
    out.mkdir(parents=True, exist_ok=True)
    if (out / DONE).is_file():
        for row in json.loads((out / DONE).read_text())["reports"]:
            tune.report(row)
        return None
    with (out / "starts.log").open("a") as fh:  # one line per training start (tests count them)
        fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {json.dumps(params)}\n")
    return _Trial(params, sweep, out, trial_job(sweep, params, str(out)), _logger(out), time.time())


def _dev_reports(out: Path, stages: list[int], job) -> list[dict[str, Any]]:
    """Every dev evaluation of the trial, in order, with its global step (the last one wins after a resume)."""
    reports: dict[int, dict[str, Any]] = {}
    offset = 0
    for n in stages:
        path = out / f"stage{n}" / "dev.jsonl"
        if path.is_file():
            for line in path.read_text().splitlines():
                row = json.loads(line)
                reports[offset + row["step"]] = {"global_step": offset + row["step"], "stage": n, **row}
        offset += job.stage_config(n).run.max_steps
    return [reports[k] for k in sorted(reports)]


def _finish(trial: _Trial) -> None:
    """Write ``DONE.json`` (every dev report, in order), then report the dev metrics of the last step.

    That report comes last on purpose: Tune may end the trial process as soon as it receives a final result
    (ASHA at ``max_t``), so the final model and ``DONE.json`` must already be on disk.
    """
    from ray import tune

    reports = _dev_reports(trial.out, trial.sweep.stages, trial.job)
    record = {"params": trial.params, "reports": reports, "seconds": time.time() - trial.started}
    tmp = trial.out / f".{DONE}.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, trial.out / DONE)
    if reports and reports[-1]["global_step"] == trial.total:
        tune.report(reports[-1])


def _logger(out: Path):
    log_file = out / "train.log"

    def log(line: str) -> None:
        with log_file.open("a") as fh:
            fh.write(line + "\n")
        if " dev " in line or "final model" in line:
            print(f"[{out.name}] {line}", flush=True)

    return log


def worker_trial(params: dict[str, Any], sweep_dict: dict[str, Any], root: str) -> None:
    """One process trains every stage (the trial fits one device)."""
    from ray import tune

    from nvembed.training.job import stage_rows
    from nvembed.training.stage import run_stage

    trial = _start(params, sweep_dict, root)
    if trial is None:
        return
    sweep, job, log, total = trial.sweep, trial.job, trial.log, trial.total
    offset = 0
    for n in sweep.stages:
        cfg = job.stage_config(n)

        def on_dev(step: int, dev: dict[str, float], n: int = n, offset: int = offset) -> None:
            if offset + step != total:  # the last one is reported by _finish, after the model is saved
                tune.report({"global_step": offset + step, "stage": n, "step": step, **dev})

        run_stage(cfg, stage_rows(cfg, log=log), log=log, on_dev=on_dev)
        offset += cfg.run.max_steps
    _finish(trial)


def train_trial(params: dict[str, Any], sweep_dict: dict[str, Any], root: str) -> None:
    """Each stage is a Ray Train run with the job's scaling; its workers' dev metrics reach Tune through
    ``TuneReportCallback`` as they are computed. Workers report only at dev steps (``log_every=0``, checkpoints at
    ``dev.every``) because Tune rejects results without the objective; the trial's very last result is held back
    until the run has saved its final model (see :func:`_finish`)."""
    from nvembed.config import apply_overrides
    from nvembed.launch.trainer import run_stage_on_ray

    trial = _start(params, sweep_dict, root)
    if trial is None:
        return
    sweep, job, log, total = trial.sweep, trial.job, trial.log, trial.total
    offset = 0
    for n in sweep.stages:
        every = job.dev.every or job.stage_config(n).run.max_steps
        job = apply_overrides(job, {f"stage{n}.run.log_every": 0, f"stage{n}.run.checkpoint_every": every})
        cfg = job.stage_config(n)
        run_stage_on_ray(cfg, log, callbacks=[_report_all_but(total)], step_offset=offset)
        offset += cfg.run.max_steps
    _finish(trial)


def _report_all_but(last_step: int):
    """``TuneReportCallback`` that forwards every worker report except the one of ``last_step``."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class ReportAllBut(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metrics and metrics[0].get("global_step") == last_step:
                return
            super().after_report(run_context, metrics, checkpoint)

    return ReportAllBut()
