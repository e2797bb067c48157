"""The per-worker training function that Ray Train runs on every rank: the thin part.

Context in (rank, world, device, Ray Train's checkpoint storage and reports), the shared driver out
(:func:`nvembed.training.driver.train_stage`): build the model (ZeRO-3: partitioned load) and the engine, stream
this rank's rows of the step plan with Ray Data, and let the driver train, report, checkpoint and export.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from nvembed.config import TrainConfig, from_dict
from nvembed.data.curated import CuratedStore
from nvembed.data.plan import plan_sources, rank_files
from nvembed.modeling.builders import resolve_model_path
from nvembed.training.driver import RunContext, train_stage
from nvembed.training.stage import (
    build_stage_embedder,
    make_collator,
    make_dev_set,
    make_engine,
    seed_everything,
    stage_precision,
)


def plan_batches(plan_dir: str, rank: int, start_step: int, per_rank: int, collator):
    """This rank's batches for steps > ``start_step``: the plan's references streamed by Ray Data in step order,
    resolved against the curated rows this worker loads (the driver never held them; nvembed/data/plan.py)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    import pyarrow.parquet as pq

    refs = pq.read_table(rank_files(plan_dir, rank), columns=["step", "dataset", "row"]).to_pylist()
    needed: dict[str, set[int]] = {}
    for r in refs:
        if r["step"] > start_step:
            needed.setdefault(r["dataset"], set()).add(r["row"])
    store = CuratedStore(plan_sources(plan_dir), needed)  # this rank's rows only
    del refs
    ds = ray.data.read_parquet(rank_files(plan_dir, rank))
    if start_step:
        ds = ds.filter(expr=f"step > {start_step}")
    for table in ds.iter_batches(batch_size=per_rank, batch_format="pyarrow", prefetch_batches=2):
        records = table.to_pylist()
        steps = {r["step"] for r in records}
        if len(steps) != 1 or len(records) != per_rank:
            raise RuntimeError(f"rank {rank}: plan batch misaligned (steps {sorted(steps)}, {len(records)} rows)")
        yield collator(store.rows([(r["dataset"], r["row"]) for r in records]))


class RayTrainStore:
    """Checkpoints and reports through Ray Train: every rank writes its part of the checkpoint folder into a
    temporary directory and reports it; Ray Train merges them in its storage (``scaling.storage_path``)."""

    @contextlib.contextmanager
    def latest(self) -> Iterator[Path | None]:
        import pyarrow.fs
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        if isinstance(checkpoint.filesystem, pyarrow.fs.LocalFileSystem):
            yield Path(checkpoint.path)  # what as_directory gives for local storage: the folder itself
            return
        # object storage: each rank downloads into its own folder. `as_directory` shares one temp folder per
        # checkpoint between the ranks of a node and lets the first one delete it while another still waits for it
        # ("Checkpoint directory ... does not exist, even though it should have been created"; docs/bugs.md)
        with tempfile.TemporaryDirectory(prefix="nvembed-restore-") as tmp:
            checkpoint.to_directory(tmp)
            yield Path(tmp)

    def save(self, step: int, metrics: dict[str, Any], write: Callable[[Path], None]) -> None:
        import ray.train

        with tempfile.TemporaryDirectory() as tmp:
            write(Path(tmp))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))

    def report(self, metrics: dict[str, Any]) -> None:
        import ray.train

        ray.train.report(metrics)


def _log(line: str) -> None:
    print(f"[nvembed] {line}", flush=True)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import logging

    import ray.train

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one INFO line per report otherwise; we log our own
    _quiet_report_dumps()

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    cfg: TrainConfig = from_dict(TrainConfig, config["cfg"])
    device = torch.device("cuda", context.get_local_rank()) if cfg.scaling.use_gpu else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    precision = stage_precision(cfg, device)
    if rank == 0:
        _log(f"stage {cfg.run.stage} precision: {precision.reason}")
    seed_everything(cfg.run.seed)  # identical initialisation on every rank
    # A model built on first use (tiny:...) is built here, before ZeRO-3's partitioned init is switched on:
    # under it the build would run collectives while the other ranks wait on the build lock (docs/bugs.md).
    resolve_model_path(cfg.model.name_or_path)

    keep_alive = None
    if cfg.scaling.engine == "deepspeed":
        import deepspeed
        from transformers.integrations import HfDeepSpeedConfig

        from nvembed.training.deepspeed_engine import DeepSpeedEngine

        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")  # Ray's process group
        ds_config = config["ds_config"]
        if ds_config["zero_optimization"]["stage"] == 3:
            keep_alive = HfDeepSpeedConfig(ds_config)  # must outlive from_pretrained: partitioned loading
        emb = build_stage_embedder(cfg)
        engine = DeepSpeedEngine(cfg, emb.model, ds_config, precision)
        if rank == 0:
            _write_partition(engine.unwrapped, Path(cfg.run.output_dir))
    else:
        emb = build_stage_embedder(cfg)
        emb.to(device)
        engine = make_engine(cfg, emb.model, precision)

    collator = make_collator(cfg, emb)
    per_rank = cfg.run.batch_size // world

    def batches(start: int):
        return plan_batches(config["plan_dir"], rank, start, per_rank, collator)

    ctx = RunContext(RayTrainStore(), rank, world, device, int(config.get("step_offset", 0)))
    train_stage(cfg, emb, engine, batches, ctx, dev_set=make_dev_set(cfg), log=_log)
    del keep_alive


def _quiet_report_dumps() -> None:
    """Ray Train 2.60 logs every ``ray.train.report`` of every rank at INFO as the whole ``TrainingReport(...)``
    (300+ characters each) through ``logging.getLogger(__file__)`` of its private context module, a logger that
    the ``ray.train`` level does not reach. Raise that one logger to WARNING; if Ray moves it, say so once."""
    import logging

    try:
        from ray.train.v2._internal.execution import context
    except ImportError:
        _log("could not silence Ray Train's per-report log lines (ray.train.v2 internals moved)")
        return
    getattr(context, "logger", logging.getLogger(context.__file__)).setLevel(logging.WARNING)


def _write_partition(model: torch.nn.Module, out: Path) -> None:
    """``zero_partition.json``: the elements this rank holds vs the model's (tests check ZeRO-3 partitions)."""
    params = list(model.parameters())
    partition = {
        "local_numel": sum(p.numel() if not hasattr(p, "ds_tensor") else p.ds_tensor.numel() for p in params),
        "full_numel": sum(getattr(p, "ds_numel", p.numel()) for p in params),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "zero_partition.json").write_text(json.dumps(partition))
