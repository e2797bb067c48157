"""The final evaluation step of a training job: the config's ``evaluation:`` section as one
:class:`evaluation.request.EvalRequest` (the type ``nvembed evaluate`` builds from its flags)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from nvembed.config import EvaluationConfig


def evaluate_final(
    model: Path, ev: EvaluationConfig, out: Path, address: str | None = None, log: Callable[[str], None] = print
) -> tuple[Path, dict[str, float]]:
    """Evaluate the job's final model (and ``ev.baseline``); returns the report's path and the model's scores.

    The baseline's results are reused when its folder already holds them (its identity is its weights), so a rerun
    or a second job with the same baseline evaluates it once.
    """
    from evaluation.report import write_report
    from evaluation.request import EvalRequest
    from evaluation.runner import resolve_tasks, run_evaluation

    request = EvalRequest.from_config(ev, model, out / "eval", address)
    outcome = run_evaluation(request, log=log)
    compare = {}
    if ev.baseline:
        base = run_evaluation(dataclasses.replace(request, model=ev.baseline, output=out / "eval-baseline"), log=log)
        compare = {f"baseline {ev.baseline}": str(base.results_dir)}
    types = {t.metadata.name: t.metadata.type for t in resolve_tasks(request.benchmark, request.task_names)}
    paths = write_report(out / "eval", model.name, outcome.scores, types, outcome.failed, compare)
    log(paths["md"].read_text())
    return paths["md"], dict(outcome.scores)
