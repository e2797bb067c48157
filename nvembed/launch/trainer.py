"""Build the Ray Train ``TorchTrainer`` for one stage, and drive a whole job on Ray."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from nvembed.config import JobConfig, TrainConfig, to_dict
from nvembed.data.plan import plan_key, write_plan
from nvembed.launch.storage import STORAGE_ENV_KEYS, alive_nodes, check_shared_paths, train_storage
from nvembed.progress import follow_metrics
from nvembed.training.precision import resolve_precision


def make_trainer(
    cfg: TrainConfig, plan_dir: str, ds_config: dict | None = None, callbacks: list | None = None, step_offset: int = 0
):
    """``TorchTrainer`` over :func:`nvembed.launch.worker.train_loop_per_worker` (gloo on CPU, NCCL on GPU).

    ``callbacks`` are Ray Train ``UserCallback``s (a Tune sweep passes ``TuneReportCallback``); ``step_offset`` is
    added to the reported ``global_step`` (stage 2 of a sweep continues stage 1's step count).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from nvembed.launch.worker import train_loop_per_worker

    s = cfg.scaling
    storage, storage_fs = train_storage(cfg)  # shared folder or object store; one run folder per job
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": to_dict(cfg),
            "plan_dir": plan_dir,
            "ds_config": ds_config,
            "step_offset": step_offset,
        },
        scaling_config=ScalingConfig(
            num_workers=s.num_workers,
            use_gpu=s.use_gpu,
            resources_per_worker={"CPU": s.cpus_per_worker, **s.worker_resources},
        ),
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        run_config=RunConfig(
            name=f"stage{cfg.run.stage}",
            storage_path=storage,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=s.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=max(1, cfg.run.keep_checkpoints)),
            worker_runtime_env={"env_vars": worker_env_for(cfg)},
            callbacks=callbacks or None,
        ),
    )


def worker_env() -> dict[str, str]:
    keys = (
        "HF_HUB_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "TOKENIZERS_PARALLELISM",
        "DS_ACCELERATOR",
        "PYTHONWARNINGS",
        "TORCH_EXTENSIONS_DIR",
        *STORAGE_ENV_KEYS,  # the S3 endpoint and region every process must agree on
    )
    env = {k: os.environ[k] for k in keys if k in os.environ}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONWARNINGS", "ignore")
    # Ray Train re-routes print() into its logger *and* tees it to the wrapped stdout: every worker line reached
    # the console twice (docs/bugs.md)
    env.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    return env


def worker_env_for(cfg: TrainConfig) -> dict[str, str]:
    env = worker_env()
    if not cfg.scaling.use_gpu:
        env.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed's CPU accelerator (gloo) on CPU workers
    return env


def prepare_stage(cfg: TrainConfig, log: Callable[[str], None] = print) -> str:
    """On the driver, before any worker starts: curate what the stage lacks on the Ray cluster (``nvembed
    prepare``'s pipeline; bad rows stop here with file:line), check instructions against token limits on samples of
    the curated rows, then draw the step plan from positive hashes (the driver never loads the rows). Returns the
    plan folder."""
    from nvembed.data import curated
    from nvembed.launch.prepare import prepare_stage_data
    from nvembed.training.batching import BlendedBatcher
    from nvembed.training.preflight import check_stage_inputs

    targets = prepare_stage_data(cfg, log)
    sources = {t.ds.name: str(t.folder) for t in targets}
    # instructions vs token limits, dev data: fails here, not at a worker's first step
    check_stage_inputs(cfg, {name: curated.sample_rows(folder) for name, folder in sources.items()})
    world = cfg.scaling.num_workers
    extra = {
        "steps": cfg.run.max_steps,
        "batch": cfg.run.batch_size,
        "world": world,
        "seed": cfg.run.seed,
        "weights": {d.name: d.weight for d in cfg.data.datasets},
        "in_batch": cfg.in_batch_negatives,
    }
    folder = Path(cfg.run.output_dir) / "plan" / plan_key(sources, extra)
    keys = {name: curated.positive_keys(f) for name, f in sources.items()}
    empty = [name for name, k in keys.items() if len(k) == 0]
    if empty:
        raise ValueError(f"datasets with no curated rows: {empty} ({[sources[n] for n in empty]})")
    weights = {d.name: d.weight for d in cfg.data.datasets if d.name in keys}
    batcher = BlendedBatcher(
        keys, weights, cfg.run.batch_size, seed=cfg.run.seed * 1000, unique_positives=cfg.in_batch_negatives, key=int
    )  # = make_batcher(rank 0, world 1)
    write_plan(batcher, cfg.run.max_steps, world, folder, sources)
    log(f"plan: {cfg.run.max_steps} steps x {cfg.run.batch_size} rows over {world} workers -> {folder}")
    return str(folder)


def run_stage_on_ray(
    cfg: TrainConfig, log: Callable[[str], None] = print, callbacks: list | None = None, step_offset: int = 0
) -> Path:
    # workers run in their own working directory: every path they read must be absolute
    run = dataclasses.replace(cfg.run, output_dir=str(Path(cfg.run.output_dir).resolve()))
    if run.init_from and Path(run.init_from).exists():
        run.init_from = str(Path(run.init_from).resolve())
    cfg = dataclasses.replace(cfg, run=run)
    if cfg.dev is not None:  # workers read the dev data themselves
        absolute = {k: str(Path(v).resolve()) for k in ("retrieval", "sts") if (v := getattr(cfg.dev, k))}
        cfg = dataclasses.replace(cfg, dev=dataclasses.replace(cfg.dev, **absolute))
    out = Path(cfg.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    device = torch.device("cuda" if cfg.scaling.use_gpu else "cpu")
    precision = resolve_precision(cfg.model.dtype, cfg.run.autocast, device)
    ds_config = None
    if cfg.scaling.engine == "deepspeed":  # a contradictory precision fails here, once, before any worker starts
        from nvembed.training.deepspeed_engine import deepspeed_config

        ds_config = deepspeed_config(cfg, cfg.scaling.num_workers, precision)
    plan_dir = prepare_stage(cfg, log)
    trainer = make_trainer(cfg, plan_dir, ds_config, callbacks, step_offset)
    with follow_metrics(out / "metrics.jsonl", cfg.run.stage, cfg.run.max_steps):
        result = trainer.fit()
    if result.error:
        raise result.error
    final = out / "final"
    log(f"stage {cfg.run.stage} final model: {final.resolve()}")
    return final


def run_job_on_ray(
    job: JobConfig,
    stages: list[int] | None = None,
    address: str | None = None,
    log: Callable[[str], None] = print,
    callbacks: list | None = None,
) -> dict[int, Path]:
    """Run the job's stages on Ray (an existing cluster at ``address``, else an embedded local one).

    ``callbacks``: Ray Train ``UserCallback``s for every stage (tests inject faults with one).
    """
    with ray_connection(job, address):
        check_shared_paths(job, alive_nodes(), stages)  # multi-node: refuse node-local paths before any work
        finals = {}
        for n in stages or job.stages():
            cfg = job.stage_config(n)
            negatives = "on" if cfg.in_batch_negatives else "off"
            log(
                f"== stage {n} on Ray: {cfg.scaling.num_workers} x {cfg.scaling.engine} workers, {cfg.run.max_steps} "
                f"steps, global batch {cfg.run.batch_size}, in-batch negatives {negatives}"
            )
            finals[n] = run_stage_on_ray(cfg, log, callbacks)
        return finals


@contextlib.contextmanager
def ray_connection(job: JobConfig, address: str | None = None):
    """Connected to Ray for the block: the cluster at ``address`` (or ``RAY_ADDRESS``: inside a Ray job), else an
    embedded local one sized for the job's workers. A connection made here is closed here."""
    import ray

    if ray.is_initialized():
        yield
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address or os.environ["RAY_ADDRESS"])
    else:
        need = job.scaling.num_workers * job.scaling.cpus_per_worker + 2  # + Ray Data read/filter tasks
        ray.init(
            num_cpus=max(int(need + 0.999), os.cpu_count() or 1),
            include_dashboard=True,  # Train's placement-group cleaner needs the State API (else it spams)
            runtime_env={"env_vars": worker_env()},
        )
    try:
        yield
    finally:
        ray.shutdown()
