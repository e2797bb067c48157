"""Run one training stage in this process: build, resume, train, checkpoint, save the final model.

This is the single-process driver (CPU or one GPU). The Ray job runs the same pieces per worker; nothing here
imports Ray.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from nvembed.config import TrainConfig, to_dict
from nvembed.data.collate import ContrastiveCollator
from nvembed.data.schema import TrainingExample
from nvembed.embedder import Embedder
from nvembed.training.batching import BlendedBatcher
from nvembed.training.checkpoint import latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint
from nvembed.training.loop import StepMetrics, TorchEngine, train_steps
from nvembed.training.optim import build_optimizer, linear_warmup_decay


@dataclass
class StageResult:
    history: list[StepMetrics] = field(default_factory=list)
    final_model: Path | None = None
    resumed_from: int = 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast_dtype(mode: str) -> torch.dtype | None:
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    return None


def build_stage_embedder(cfg: TrainConfig) -> Embedder:
    """Stage 1: backbone + fresh head (+ LoRA); stage 2: the stage-1 model with its adapter trainable."""
    if cfg.run.init_from:
        emb = Embedder.from_pretrained(cfg.run.init_from, trainable=True)
        if not any(p.requires_grad for p in emb.model.parameters()):
            raise ValueError(f"{cfg.run.init_from}: nothing trainable after loading (no adapter and no head?)")
        for p in emb.model.pooler.parameters():
            p.requires_grad_(True)
        return emb
    return Embedder.from_config(cfg.embedder_config(), seed=cfg.run.seed)


def make_collator(cfg: TrainConfig, emb: Embedder) -> ContrastiveCollator:
    return ContrastiveCollator(
        emb.inputs,
        num_negatives=cfg.run.num_negatives,
        query_max_length=cfg.run.query_max_length,
        doc_max_length=cfg.run.doc_max_length,
        force_in_batch=cfg.in_batch_negatives,
    )


def make_batcher(cfg: TrainConfig, datasets: dict[str, list[TrainingExample]], rank: int = 0, world: int = 1):
    if cfg.run.batch_size % world:
        raise ValueError(f"run.batch_size={cfg.run.batch_size} is not divisible by {world} workers")
    weights = {d.name: d.weight for d in cfg.data.datasets if d.name in datasets}
    return BlendedBatcher(
        datasets,
        weights,
        cfg.run.batch_size // world,
        seed=cfg.run.seed * 1000 + rank,
        unique_positives=cfg.in_batch_negatives,
    )


def make_engine(cfg: TrainConfig, model: torch.nn.Module) -> TorchEngine:
    optimizer = build_optimizer(
        model, cfg.optim.lr, cfg.optim.head_lr, cfg.optim.weight_decay, tuple(cfg.optim.betas), cfg.optim.eps
    )
    scheduler = linear_warmup_decay(optimizer, cfg.optim.warmup_steps, cfg.run.max_steps)
    return TorchEngine(
        model,
        optimizer,
        scheduler,
        cfg.loss.temperature,
        cfg.run.chunk_size,
        cfg.optim.grad_clip,
        autocast_dtype(cfg.run.autocast),
    )


def dev_due(cfg: TrainConfig, step: int) -> bool:
    """Dev metrics are computed every ``dev.every`` steps and at the last step of the stage."""
    if cfg.dev is None:
        return False
    return step == cfg.run.max_steps or bool(cfg.dev.every and step % cfg.dev.every == 0)


def make_dev_set(cfg: TrainConfig):
    """The stage's :class:`~nvembed.dev.DevSet` (None without a ``dev`` section), checked against its data."""
    if cfg.dev is None:
        return None
    from nvembed.dev import DevSet, check_dev_data

    check_dev_data(cfg.dev, [d.path for d in cfg.data.datasets], cfg.data.decontaminate)
    dev = DevSet(cfg.dev, seed=0)
    if dev.policy.skipped:
        print(f"dev data: {dev.policy.report()}", flush=True)
    return dev


def run_stage(
    cfg: TrainConfig,
    datasets: dict[str, list[TrainingExample]],
    on_step: Callable[[StepMetrics], None] | None = None,
    stop_after: int | None = None,
    log: Callable[[str], None] = print,
    on_dev: Callable[[int, dict[str, float]], None] | None = None,
) -> StageResult:
    """Train ``cfg.run.max_steps`` steps (resuming from ``<output_dir>/checkpoints`` if present).

    Args:
        cfg: the stage's config.
        datasets: name -> rows (see :func:`nvembed.data.build.build_training_rows`).
        on_step: extra per-step callback (after logging and checkpointing).
        stop_after: stop (as if killed) once this step is done; used by tests and smoke runs.
        on_dev: called with (step, dev metrics) whenever dev metrics are computed (``cfg.dev``), after the
            step's checkpoint is written, so a sweep that reports them can always resume from that step.
    """
    out = Path(cfg.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    seed_everything(cfg.run.seed)
    emb = build_stage_embedder(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    emb.to(device)
    collator = make_collator(cfg, emb)
    batcher = make_batcher(cfg, datasets)
    engine = make_engine(cfg, emb.model)
    ckpt_dir = out / "checkpoints"
    dev_set = make_dev_set(cfg)
    result = StageResult()
    latest = latest_checkpoint(ckpt_dir)
    if latest is not None:
        state = load_checkpoint(latest, emb.model, engine.optimizer, engine.scheduler)
        batcher.load_state_dict(state["data"])
        result.resumed_from = int(state["step"])
        log(f"resumed from {latest} (step {result.resumed_from})")
    if result.resumed_from >= cfg.run.max_steps:
        log(f"stage already complete ({result.resumed_from}/{cfg.run.max_steps} steps)")
    batches = (collator(rows) for rows in batcher)
    metrics_file = (out / "metrics.jsonl").open("a")
    t_start = time.perf_counter()

    def after_step(m: StepMetrics) -> None:
        metrics_file.write(json.dumps(m.as_dict()) + "\n")
        metrics_file.flush()
        if cfg.run.log_every and (m.step % cfg.run.log_every == 0 or m.step == cfg.run.max_steps):
            log(
                f"stage {cfg.run.stage} step {m.step}/{cfg.run.max_steps} loss {m.loss:.4f} lr {m.lr:.2e} "
                f"grad_norm {m.grad_norm:.3f} {m.samples_per_s:.1f} samples/s {m.tokens_per_s:.0f} tokens/s"
            )
        every = cfg.run.checkpoint_every
        due_dev = dev_set is not None and dev_due(cfg, m.step)
        if (every and m.step % every == 0) or m.step in (cfg.run.max_steps, stop_after) or due_dev:
            save_checkpoint(ckpt_dir, m.step, emb.model, engine.optimizer, engine.scheduler, batcher.state_dict())
            prune_checkpoints(ckpt_dir, cfg.run.keep_checkpoints)
        if due_dev:
            dev = dev_set.evaluate(emb)
            with (out / "dev.jsonl").open("a") as fh:
                fh.write(json.dumps({"step": m.step, **dev}) + "\n")
            log(f"stage {cfg.run.stage} step {m.step} dev " + " ".join(f"{k} {v:.2f}" for k, v in dev.items()))
            if on_dev is not None:
                on_dev(m.step, dev)
        if on_step is not None:
            on_step(m)

    last = min(cfg.run.max_steps, stop_after) if stop_after else cfg.run.max_steps
    try:
        result.history = train_steps(engine, batches, last, result.resumed_from, after_step, device)
    finally:
        metrics_file.close()
    log(f"stage {cfg.run.stage}: {len(result.history)} steps in {time.perf_counter() - t_start:.1f} s")
    if last == cfg.run.max_steps:
        result.final_model = emb.save_pretrained(out / "final")
        log(f"stage {cfg.run.stage} final model: {result.final_model}")
    return result
