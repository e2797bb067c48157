"""The per-worker training function that Ray Train runs on every rank.

Readable top to bottom: rebuild the config, build the model (ZeRO-3: partitioned load), restore the last
checkpoint, stream this rank's rows of the step plan with Ray Data, train, report, checkpoint, save the final model.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from nvembed.config import TrainConfig, from_dict
from nvembed.data.plan import rank_files, row_from_record
from nvembed.training.checkpoint import load_trainable, rng_state, set_rng_state, trainable_state_dict
from nvembed.training.loop import StepMetrics, train_steps
from nvembed.training.stage import (
    build_stage_embedder,
    dev_due,
    make_collator,
    make_dev_set,
    make_engine,
    seed_everything,
)


def plan_batches(plan_dir: str, rank: int, start_step: int, per_rank: int, collator):
    """This rank's batches for steps > ``start_step``, streamed by Ray Data in step order."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ds = ray.data.read_parquet(rank_files(plan_dir, rank))
    if start_step:
        ds = ds.filter(expr=f"step > {start_step}")
    for table in ds.iter_batches(batch_size=per_rank, batch_format="pyarrow", prefetch_batches=2):
        records = table.to_pylist()
        steps = {r["step"] for r in records}
        if len(steps) != 1 or len(records) != per_rank:
            raise RuntimeError(f"rank {rank}: plan batch misaligned (steps {sorted(steps)}, {len(records)} rows)")
        yield collator([row_from_record(r) for r in records])


def save_state(folder: Path, step: int, engine, rank: int) -> None:
    """Rank 0: trainable weights + optimizer + scheduler; every rank: its RNG (dropout must resume identically)."""
    from safetensors.torch import save_file

    if hasattr(engine, "save"):  # DeepSpeed: every rank writes its ZeRO shard
        engine.save(folder, step)
    elif rank == 0:
        save_file(trainable_state_dict(engine.unwrapped), str(folder / "trainable.safetensors"))
        torch.save(
            {"step": step, "optimizer": engine.optimizer.state_dict(), "scheduler": engine.scheduler.state_dict()},
            folder / "state.pt",
        )
    torch.save({"step": step, "rng": rng_state()}, folder / f"rng-rank{rank}.pt")


def load_state(folder: Path, engine, rank: int) -> int:
    from safetensors.torch import load_file

    if hasattr(engine, "load"):
        step = engine.load(folder)
    else:
        load_trainable(engine.unwrapped, load_file(str(folder / "trainable.safetensors")))
        state = torch.load(folder / "state.pt", weights_only=False)
        engine.optimizer.load_state_dict(state["optimizer"])
        engine.scheduler.load_state_dict(state["scheduler"])
        step = int(state["step"])
    rng = folder / f"rng-rank{rank}.pt"
    if rng.is_file():
        set_rng_state(torch.load(rng, weights_only=False)["rng"])
    return step


def train_loop_per_worker(config: dict[str, Any]) -> None:
    import logging

    import ray.train

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one INFO line per report otherwise; we log our own

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg: TrainConfig = from_dict(TrainConfig, config["cfg"])
    per_rank = cfg.run.batch_size // world
    device = torch.device("cuda", ctx.get_local_rank()) if cfg.scaling.use_gpu else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    seed_everything(cfg.run.seed)  # identical initialisation on every rank

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
        engine = DeepSpeedEngine(cfg, emb.model, ds_config)
    else:
        emb = build_stage_embedder(cfg)
        emb.to(device)
        engine = make_engine(cfg, emb.model)

    if cfg.scaling.engine == "deepspeed" and rank == 0:
        params = list(engine.unwrapped.parameters())
        partition = {
            "local_numel": sum(p.numel() for p in params),
            "full_numel": sum(getattr(p, "ds_numel", p.numel()) for p in params),
        }
        Path(cfg.run.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.run.output_dir) / "zero_partition.json").write_text(json.dumps(partition))

    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            start = load_state(Path(folder), engine, rank)
        if rank == 0:
            print(f"[nvembed] rank {rank}: resumed at step {start}", flush=True)

    out = Path(cfg.run.output_dir)
    metrics_path = out / "metrics.jsonl"
    collator = make_collator(cfg, emb)
    batches = plan_batches(config["plan_dir"], rank, start, per_rank, collator)
    offset = int(config.get("step_offset", 0))
    dev_set = make_dev_set(cfg)  # every rank: under ZeRO-3 a forward needs all ranks (see save_final)

    def on_step(m: StepMetrics) -> None:
        metrics = {**m.as_dict(), "stage": cfg.run.stage, "world_size": world, "global_step": offset + m.step}
        due_dev = dev_set is not None and dev_due(cfg, m.step)
        if due_dev:
            emb.model = engine.unwrapped
            dev = dev_set.evaluate(emb)  # same texts, same order on every rank
            metrics.update(dev)
            if rank == 0:
                with open(out / "dev.jsonl", "a") as fh:
                    fh.write(json.dumps({"step": m.step, **dev}) + "\n")
                print(f"[nvembed] stage {cfg.run.stage} step {m.step} dev objective {dev['objective']:.2f}", flush=True)
        if rank == 0:
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(metrics) + "\n")
            if cfg.run.log_every and m.step % cfg.run.log_every == 0:
                print(
                    f"[nvembed] stage {cfg.run.stage} step {m.step}/{cfg.run.max_steps} loss {m.loss:.4f} "
                    f"lr {m.lr:.2e} grad_norm {m.grad_norm:.3f} {m.samples_per_s * world:.1f} samples/s "
                    f"{m.tokens_per_s * world:.0f} tokens/s",
                    flush=True,
                )
        every = cfg.run.checkpoint_every
        due = (every and m.step % every == 0) or m.step == cfg.run.max_steps or due_dev
        if due:
            with tempfile.TemporaryDirectory() as tmp:
                save_state(Path(tmp), m.step, engine, rank)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        elif cfg.run.log_every and m.step % cfg.run.log_every == 0:
            ray.train.report(metrics)
        marker = Path(cfg.run.output_dir) / ".simulated-crash-done"
        if os.environ.get("NVEMBED_FAIL_AT_STEP") == str(m.step) and rank == world - 1 and not marker.exists():
            marker.touch()  # crash once: the restarted run goes through
            print(f"[nvembed] rank {rank}: simulated crash after step {m.step}", flush=True)
            os._exit(1)  # fault-tolerance tests: the process dies as a killed worker would

    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    train_steps(engine, batches, cfg.run.max_steps, start, on_step, device)
    save_final(emb, engine, cfg, rank)
    del keep_alive


PROBE = ["the cat sat on the mat", "a question about bank cards", "rain in the city"]


def save_final(emb, engine, cfg: TrainConfig, rank: int) -> None:
    """``Embedder.save_pretrained`` on rank 0 under ``<output_dir>/final``; ZeRO-3 gathers the full weights first.

    The probe embeddings are computed by *every* rank: under ZeRO-3 each forward starts with collectives, so a
    forward on rank 0 alone waits forever for the others (docs/bugs.md).
    """
    final = Path(cfg.run.output_dir) / "final"
    model = engine.unwrapped
    emb.model = model
    probe = emb.encode(PROBE, show_progress=False)
    if cfg.scaling.engine == "deepspeed" and cfg.deepspeed.stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            if rank == 0:
                _save_gathered(emb, model, final)
    elif rank == 0:
        emb.save_pretrained(final)
    if rank == 0:
        import numpy as np

        np.save(final.parent / "probe_embeddings.npy", probe)
        print(f"[nvembed] stage {cfg.run.stage} final model: {final}", flush=True)


def _save_gathered(emb, model, final: Path) -> None:
    """Copy gathered (full) tensors into a CPU replica and save it, so the export never holds ZeRO placeholders."""
    import copy

    replica = copy.deepcopy(model).to("cpu")
    with torch.no_grad():
        for (_, src), (_, dst) in zip(model.named_parameters(), replica.named_parameters(), strict=True):
            dst.data = src.data.detach().to("cpu").clone()
    live = emb.model
    emb.model = replica
    try:
        emb.save_pretrained(final)
    finally:
        emb.model = live
