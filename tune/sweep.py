"""Run a sweep with Ray Tune: build the search space, size the concurrency, fit or restore, write the report.

Layout of ``<output_dir>``:
    sweep.yaml          the resolved sweep config (a rerun with a different config is refused, not mixed in)
    tune/<name>/        Ray Tune's experiment state (what ``Tuner.restore`` resumes)
    trials/<trial id>/  each trial's training output (stage1/, stage2/, dev.jsonl, train.log, DONE.json)
    data/               converted training rows, shared by all trials
    trials.md/.csv, best.yaml, objective.png, curves.png   (tune/report.py)
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nvembed.config import ConfigError, apply_overrides, to_dict
from nvembed.launch.storage import alive_nodes, check_shared_paths
from tune.config import SweepConfig, load_base_job


@dataclass
class SweepOutcome:
    rows: list[dict[str, Any]]  # one per trial, best first (tune/report.py)
    best_yaml: Path | None
    files: dict[str, Path]
    seconds: float
    resumed: bool


def param_space(sweep: SweepConfig) -> dict[str, Any]:
    """Dotted key -> Ray Tune domain; grid values become ``grid_search`` only for the grid algorithm."""
    from ray import tune

    space = {}
    for key, spec in sweep.space.items():
        kind, values = next(iter(spec.items()))
        if kind == "grid" and sweep.search.algorithm == "grid":
            space[key] = tune.grid_search(values)
        elif kind in ("grid", "choice"):
            space[key] = tune.choice(values)
        elif kind == "uniform":
            space[key] = tune.uniform(*values)
        elif kind == "loguniform":
            space[key] = tune.loguniform(*values)
        else:
            space[key] = tune.randint(*values)
    return space


def search_algorithm(sweep: SweepConfig):
    """None (Tune's variant generator: grid / random), or Optuna's TPE sampler through Ray's integration."""
    if sweep.search.algorithm != "optuna":
        return None
    try:
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ConfigError("search.algorithm=optuna needs `pip install optuna`") from err
    return OptunaSearch(metric=sweep.metric, mode="max", seed=sweep.search.seed)


def max_steps(sweep: SweepConfig) -> int:
    job = load_base_job(sweep)
    return sum(job.stage_config(n).run.max_steps for n in sweep.stages)


def scheduler(sweep: SweepConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if sweep.scheduler.kind == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="global_step",
        max_t=max_steps(sweep),
        grace_period=sweep.scheduler.grace_period,
        reduction_factor=sweep.scheduler.reduction_factor,
    )


def trial_demand(sweep: SweepConfig) -> dict[str, float]:
    """Resources one running trial occupies (its Ray Train workers included in train mode)."""
    r = sweep.resources
    if r.mode == "worker":
        return {"CPU": r.cpus, "GPU": r.gpus}
    s = load_base_job(sweep).scaling
    return {"CPU": 0.01 + s.num_workers * s.cpus_per_worker, "GPU": float(s.num_workers if s.use_gpu else 0)}


def concurrency(sweep: SweepConfig, cluster: dict[str, float]) -> int:
    """Trials that fit the cluster at once (at least 1), capped by ``resources.max_concurrent``.

    Without this cap, train-mode trials would all start their driver and then wait for Train workers that never
    fit, each retrying its worker-group start forever (RAY_DEEPSPEED_CPU.md); worker-mode trials just queue.
    Train mode leaves one CPU for Ray Data's read tasks.
    """
    demand = trial_demand(sweep)
    fits = []
    spare = 1.0 if sweep.resources.mode == "train" else 0.0
    for key, need in demand.items():
        if need > 0:
            fits.append(math.floor((cluster.get(key, 0.0) - spare * (key == "CPU")) / need + 1e-9))
    fit = max(1, min(fits) if fits else 1)
    return min(fit, sweep.resources.max_concurrent or fit)


def _init_ray(sweep: SweepConfig, address: str | None) -> bool:
    import ray

    from nvembed.launch.trainer import worker_env

    if ray.is_initialized():
        return False
    env = {**worker_env(), "RAY_CHDIR_TO_TRIAL_DIR": "0"}
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or os.environ["RAY_ADDRESS"], runtime_env={"env_vars": env})
        return True
    demand = trial_demand(sweep)
    ray.init(
        address="local",
        num_cpus=max(os.cpu_count() or 1, math.ceil(demand["CPU"] + (1 if sweep.resources.mode == "train" else 0))),
        include_dashboard=sweep.resources.mode == "train",  # Train-in-Tune needs the State API (doc trap)
        runtime_env={"env_vars": env},
    )
    return True


def _check_same_sweep(sweep: SweepConfig, out: Path, fresh: bool) -> None:
    saved = out / "sweep.yaml"
    current = to_dict(sweep)
    if fresh:
        for sub in ("tune", "trials"):
            shutil.rmtree(out / sub, ignore_errors=True)
    elif saved.is_file() and yaml.safe_load(saved.read_text()) != current:
        raise ConfigError(
            f"{out} holds a sweep with a different config ({saved}); resume it unchanged, start over with "
            "--fresh, or choose another output_dir"
        )
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(yaml.safe_dump(current, sort_keys=False))


def run_sweep(
    sweep: SweepConfig,
    address: str | None = None,
    fresh: bool = False,
    log: Callable[[str], None] = print,
) -> SweepOutcome:
    """Fit the sweep (or resume the interrupted one in ``output_dir``) and write its report."""
    from ray import tune

    from tune.report import write_report
    from tune.trial import train_trial, worker_trial

    out = Path(sweep.output_dir).resolve()
    sweep = dataclasses.replace(sweep, output_dir=str(out))
    _check_same_sweep(sweep, out, fresh)
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")  # experiment state after every event: cheap vs trials
    job = load_base_job(sweep)
    data_cache = {f"stage{n}.data.cache_dir": str(out / "data") for n in job.stages()}
    sweep = dataclasses.replace(sweep, set={**data_cache, **sweep.set})
    import ray

    started = _init_ray(sweep, address)
    t0 = time.perf_counter()
    try:
        # on a multi-node cluster every trial's paths must be shared, as for `nvembed train`: refuse before any trial
        trial = apply_overrides(load_base_job(sweep), {"output_dir": str(out / "trials" / "trial")})
        check_shared_paths(trial, alive_nodes(), sweep.stages)
        from nvembed.launch.prepare import prepare_stage_data

        for n in sweep.stages or trial.stages():  # curated once here; trials with the base job's data settings read it
            prepare_stage_data(trial.stage_config(n), log)
        fn = worker_trial if sweep.resources.mode == "worker" else train_trial
        trainable = tune.with_parameters(fn, sweep_dict=to_dict(sweep), root=os.getcwd())
        demand = trial_demand(sweep)
        if sweep.resources.mode == "worker":
            request = {"cpu": demand["CPU"], "gpu": demand["GPU"]}
        else:
            request = {"cpu": 0.01}  # the trial driver; its Ray Train workers reserve their own resources
        trainable = tune.with_resources(trainable, request)
        cap = concurrency(sweep, ray.cluster_resources())
        experiment = out / "tune" / sweep.name
        resumed = tune.Tuner.can_restore(str(experiment))
        if resumed:
            log(f"resuming the interrupted sweep in {experiment}")
            tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=param_space(sweep),
                tune_config=tune.TuneConfig(
                    metric=sweep.metric,
                    mode="max",
                    num_samples=sweep.search.num_samples,
                    max_concurrent_trials=cap,
                    scheduler=scheduler(sweep),
                    search_alg=search_algorithm(sweep),
                ),
                run_config=tune.RunConfig(
                    name=sweep.name,
                    storage_path=str(out / "tune"),
                    verbose=1,
                    failure_config=tune.FailureConfig(max_failures=0),
                ),
            )
        log(f"sweep {sweep.name}: {sweep.resources.mode} trials, {demand} each, at most {cap} at once")
        grid = tuner.fit()
        seconds = time.perf_counter() - t0
        rows, files, best = write_report(grid, sweep, out)
        return SweepOutcome(rows, best, files, seconds, resumed)
    finally:
        if started:
            ray.shutdown()
