"""The final evaluation step of a training job (Ray actors through ``evaluation.runner``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nvembed.config import EvaluationConfig


def evaluate_final(
    model: Path, ev: EvaluationConfig, out: Path, address: str | None = None, log: Callable[[str], None] = print
) -> tuple[Path, dict[str, float]]:
    """Evaluate the job's final model (and ``ev.baseline``); returns the report's path and the model's scores."""
    from evaluation.report import write_report
    from evaluation.runner import resolve_tasks, run_evaluation

    task_data = {k: v for k, v in ev.tasks.items() if v}
    names = list(ev.tasks)
    kwargs = dict(
        tasks=names,
        task_data=task_data,
        workers=ev.workers,
        address=address,
        batch_size=ev.batch_size,
        max_length=ev.max_length,
        cpus_per_worker=ev.cpus_per_worker,
        gpus_per_worker=ev.gpus_per_worker,
        log=log,
    )
    outcome = run_evaluation(str(model), out / "eval", **kwargs)
    compare = {}
    if ev.baseline:
        base = run_evaluation(ev.baseline, out / "eval-baseline", **kwargs)
        compare = {f"baseline {ev.baseline}": str(base.results_dir)}
    types = {t.metadata.name: t.metadata.type for t in resolve_tasks(None, names)}
    paths = write_report(out / "eval", model.name, outcome.scores, types, outcome.failed, compare)
    log(paths["md"].read_text())
    return paths["md"], dict(outcome.scores)
