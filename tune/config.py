"""The sweep config: a base training job, fixed overrides, and a search space over the same dotted keys.

A sweep YAML looks like (``tune/configs/smoke.yaml`` is a complete one)::

    base: jobs/configs/smoke_cpu.yaml        # any `nvembed train` job with a `dev:` section
    set: {stage1.run.max_steps: 20}          # fixed overrides, applied first
    space:                                   # dotted key -> one distribution
      lora.rank: {grid: [4, 8]}
      pooling.num_latents: {grid: [8, 16]}
      stage1.optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
    search: {algorithm: grid}                # grid | random | optuna
    scheduler: {kind: asha, grace_period: 10}
    resources: {mode: worker, cpus: 1, max_concurrent: 2}

Every key of ``set`` and ``space`` goes through :func:`nvembed.config.apply_overrides`, the function behind
``nvembed train --set``, so a typo fails at load time with the key's path, before any trial starts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from nvembed.config import ConfigError, JobConfig, apply_overrides, from_dict, load_yaml, parse_override

DISTRIBUTIONS = ("grid", "choice", "uniform", "loguniform", "randint")


@dataclass
class SearchConfig:
    """How points of the space are chosen (Ray Tune search algorithms)."""

    algorithm: str = "grid"  # grid: every combination | random: sample | optuna: TPE (pip install optuna)
    num_samples: int = 1  # grid: repeats of the whole grid; random/optuna: number of trials
    seed: int = 0  # sampler seed (random/optuna)

    def __post_init__(self) -> None:
        if self.algorithm not in ("grid", "random", "optuna"):
            raise ConfigError(f"search.algorithm must be grid|random|optuna, got {self.algorithm!r}")
        if self.num_samples < 1:
            raise ConfigError(f"search.num_samples must be >= 1, got {self.num_samples}")


@dataclass
class SchedulerConfig:
    """Early stopping on the dev objective; time is the global training step (stage 2 continues stage 1)."""

    kind: str = "asha"  # asha: successive halving | fifo: run every trial to the end
    grace_period: int = 1  # steps a trial always gets before ASHA may stop it
    reduction_factor: int = 2  # ASHA keeps 1/reduction_factor of the trials at each rung

    def __post_init__(self) -> None:
        if self.kind not in ("asha", "fifo"):
            raise ConfigError(f"scheduler.kind must be asha|fifo, got {self.kind!r}")
        if self.grace_period < 1 or self.reduction_factor < 2:
            raise ConfigError("scheduler.grace_period must be >= 1 and scheduler.reduction_factor >= 2")


@dataclass
class ResourcesConfig:
    """What one trial holds, and how many run at once.

    ``worker``: the trial is one Ray task that trains in-process with the same code as ``nvembed train --local``
    (the trial fits one device: ``gpus: 1`` on a cluster). ``train``: the trial drives a Ray Train run per stage with
    the job's ``scaling`` section (e.g. 8 GPUs, DeepSpeed ZeRO-3), exactly ``nvembed train``'s Ray path.
    """

    mode: str = "worker"  # worker | train
    cpus: float = 1.0  # worker mode: CPUs per trial
    gpus: float = 0.0  # worker mode: GPUs per trial
    max_concurrent: int | None = None  # cap on running trials (None: as many as the cluster's resources fit)

    def __post_init__(self) -> None:
        if self.mode not in ("worker", "train"):
            raise ConfigError(f"resources.mode must be worker|train, got {self.mode!r}")
        if self.cpus <= 0:
            raise ConfigError(f"resources.cpus must be > 0, got {self.cpus}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ConfigError(f"resources.max_concurrent must be >= 1, got {self.max_concurrent}")


@dataclass
class SweepConfig:
    """A Ray Tune sweep over a training job."""

    base: str  # the job YAML every trial starts from (must have a dev section: the objective)
    space: dict[str, dict[str, Any]]  # dotted key -> {grid|choice: [...]} or {uniform|loguniform|randint: [lo, hi]}
    set: dict[str, Any] = field(default_factory=dict)  # fixed dotted overrides on the base, applied first
    stages: list[int] = field(default_factory=lambda: [1])  # job stages each trial trains, in order
    metric: str = "objective"  # dev metric to maximise: objective | ndcg_at_10 | sts_spearman
    search: SearchConfig = field(default_factory=SearchConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    name: str = "sweep"  # Tune experiment name
    output_dir: str = "runs/sweep"  # trials/, tune/ (Ray Tune state), trials.md/.csv, best.yaml, PNGs

    def __post_init__(self) -> None:
        if not self.space:
            raise ConfigError("space: give at least one dotted key to search over")
        for key, spec in self.space.items():
            check_distribution(key, spec)
        if self.metric not in ("objective", "ndcg_at_10", "sts_spearman"):
            raise ConfigError(f"metric must be objective|ndcg_at_10|sts_spearman, got {self.metric!r}")
        if not self.stages or any(s not in (1, 2) for s in self.stages) or sorted(self.stages) != self.stages:
            raise ConfigError(f"stages must be [1], [2] or [1, 2], got {self.stages}")
        if self.search.algorithm == "grid":
            loose = [k for k, spec in self.space.items() if next(iter(spec)) != "grid"]
            if loose:
                raise ConfigError(f"search.algorithm=grid needs grid values for every key; not for {loose}")


def check_distribution(key: str, spec: Any) -> None:
    where = f"space.{key}"
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: expected one of {{{'|'.join(DISTRIBUTIONS)}: ...}}, got {spec!r}")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}.{kind}: expected a non-empty list, got {values!r}")
    if kind in ("uniform", "loguniform", "randint"):
        if len(values) != 2 or not all(isinstance(v, int | float) for v in values) or values[0] >= values[1]:
            raise ConfigError(f"{where}.{kind}: expected [low, high] numbers with low < high, got {values!r}")
        if kind == "loguniform" and values[0] <= 0:
            raise ConfigError(f"{where}.loguniform: bounds must be > 0, got {values!r}")


def representative_points(spec: dict[str, Any]) -> list[Any]:
    """Values that must all be valid in the job (every grid/choice value; the bounds of a range)."""
    kind, values = next(iter(spec.items()))
    if kind == "randint":
        return [values[0], values[1] - 1]  # randint's upper bound is exclusive
    if kind == "loguniform":
        return [values[0], math.sqrt(values[0] * values[1]), values[1]]
    return list(values)


def load_sweep(path: str, overrides: list[str] | None = None) -> SweepConfig:
    """Read a sweep YAML; ``--set`` overrides address its keys (``resources.max_concurrent=1``, ``base=...``), and
    ``set.<job key>=value`` adds a fixed override of the base job (``set.stage1.run.max_steps=10``).

    The base job is loaded and every value of the space is applied to it once, so invalid keys or values
    (``lora.rank: {grid: [0]}``) fail here with their path.
    """
    overrides = list(overrides or [])
    fixed = [o for o in overrides if o.startswith("set.")]  # set.stage1.run.max_steps=10: a fixed job override
    sweep = load_yaml(path, SweepConfig, [o for o in overrides if not o.startswith("set.")])
    if fixed:
        extra = dict(parse_override(o.removeprefix("set.")) for o in fixed)
        sweep = dataclasses.replace(sweep, set={**sweep.set, **extra})
    job = load_base_job(sweep)
    if job.dev is None:
        raise ConfigError(f"{path}: the base job {sweep.base} has no dev section (the trial objective)")
    missing = [s for s in sweep.stages if s not in job.stages()]
    if missing:
        raise ConfigError(f"{path}: stages {missing} are not in the base job {sweep.base}")
    for key, spec in sweep.space.items():
        for value in representative_points(spec):
            try:
                apply_overrides(job, {key: value})
            except ConfigError as err:
                raise ConfigError(f"{path}: space.{key}={value!r}: {err}") from err
    return sweep


def load_base_job(sweep: SweepConfig) -> JobConfig:
    job = load_yaml(sweep.base, JobConfig)
    try:
        return apply_overrides(job, sweep.set)
    except ConfigError as err:
        raise ConfigError(f"set: {err}") from err


def trial_job(sweep: SweepConfig, params: dict[str, Any], output_dir: str) -> JobConfig:
    """The job one trial trains: base + ``set`` + the trial's point + its own output folder."""
    job = load_base_job(sweep)
    return apply_overrides(job, {**params, "output_dir": output_dir})


def sweep_from_dict(data: dict[str, Any]) -> SweepConfig:
    return from_dict(SweepConfig, data)
