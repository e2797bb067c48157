"""Build a stage (model, precision, engine, data, dev set) and run it in this process.

The builders here are shared by every launcher: ``nvembed train --local`` and Tune's worker trials call
:func:`run_stage`; the Ray Train worker (nvembed/launch/worker.py) calls the same builders and the same driver
(:func:`nvembed.training.driver.train_stage`) with its own context. Nothing here imports Ray.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import yaml

from nvembed.config import TrainConfig, to_dict
from nvembed.data.collate import ContrastiveBatch, ContrastiveCollator
from nvembed.data.schema import TrainingExample
from nvembed.embedder import Embedder
from nvembed.training.batching import BlendedBatcher
from nvembed.training.checkpoint import LocalCheckpointStore
from nvembed.training.driver import RunContext, StageResult, train_stage
from nvembed.training.engine import TorchEngine
from nvembed.training.optim import build_optimizer, linear_warmup_decay
from nvembed.training.precision import Precision, cast_trainable, check_optimizer_dtypes, resolve_precision
from nvembed.training.preflight import check_stage_inputs


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def stage_precision(cfg: TrainConfig, device: torch.device) -> Precision:
    """The stage's precision on ``device`` (decided where the work runs; :mod:`nvembed.training.precision`)."""
    return resolve_precision(cfg.model.dtype, cfg.run.autocast, device)


def build_stage_embedder(cfg: TrainConfig) -> Embedder:
    """Stage 1: backbone + fresh head (+ LoRA); stage 2: the stage-1 model with its adapter trainable."""
    if cfg.run.init_from:
        emb = Embedder.from_pretrained(cfg.run.init_from, trainable=True)
        if not any(p.requires_grad for p in emb.model.parameters()):
            raise ValueError(f"{cfg.run.init_from}: nothing trainable after loading (no adapter and no head?)")
        for p in emb.model.pooler.parameters():
            p.requires_grad_(True)
        # the stage's policy is what this stage trains with, so it is what the export records
        emb.config.model.instruction_policy = cfg.model.instruction_policy
        if emb.card is not None and any(s.get("step") == "prune" for s in emb.card.compression):
            keep_sparsity(emb.model)  # recovery of a pruned export: its zeros stay zero
        if cfg.loss.distill_from and emb.card is not None and emb.card.compression:
            emb.card.compression.append(  # recovery is a compression step too: the export's card says so
                {
                    "step": "recover",
                    "teacher": cfg.loss.distill_from,
                    "distill_kind": cfg.loss.distill_kind,
                    "distill_weight": cfg.loss.distill_weight,
                    "steps": cfg.run.max_steps,
                    "lr": cfg.optim.lr,
                }
            )
        return emb
    return Embedder.from_config(cfg.embedder_config(), seed=cfg.run.seed)


def make_collator(cfg: TrainConfig, emb: Embedder) -> ContrastiveCollator:
    return ContrastiveCollator(
        emb.inputs,
        num_negatives=cfg.run.num_negatives,
        query_max_length=cfg.run.query_max_length,
        doc_max_length=cfg.run.doc_max_length,
        force_in_batch=cfg.in_batch_negatives,
        instruction_policy=cfg.model.instruction_policy,
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


def make_engine(cfg: TrainConfig, model: torch.nn.Module, precision: Precision) -> TorchEngine:
    """The torch engine: trainable tensors cast to fp32 first, so AdamW never steps a bf16 weight."""
    cast_trainable(model, precision.trainable_dtype("ddp"))
    optimizer = build_optimizer(
        model, cfg.optim.lr, cfg.optim.head_lr, cfg.optim.weight_decay, tuple(cfg.optim.betas), cfg.optim.eps
    )
    check_optimizer_dtypes(optimizer)
    scheduler = linear_warmup_decay(optimizer, cfg.optim.warmup_steps, cfg.run.max_steps)
    return TorchEngine(
        model,
        optimizer,
        scheduler,
        cfg.loss.temperature,
        cfg.run.chunk_size,
        cfg.optim.grad_clip,
        precision.compute,
        tuple(cfg.loss.matryoshka_dims or ()),
        teacher=load_teacher(cfg, next(model.parameters()).device),
        distill_weight=cfg.loss.distill_weight,
        distill_kind=cfg.loss.distill_kind,
    )


def load_teacher(cfg: TrainConfig, device: torch.device) -> torch.nn.Module | None:
    """The frozen teacher of ``loss.distill_from`` (no gradients, eval mode), or None."""
    if not cfg.loss.distill_from:
        return None
    teacher = Embedder.from_pretrained(cfg.loss.distill_from).merge_lora().model.to(device)
    teacher.requires_grad_(False)
    return teacher.eval()


def keep_sparsity(model: torch.nn.Module) -> int:
    """Keep a pruned backbone's zeros at zero while it trains: each block Linear that has exact zeros gets a
    gradient hook masking them. Under AdamW a weight whose gradient is always zero never moves (its moments stay
    zero; decoupled decay scales zero), so the export has the pattern ``nvembed compress`` wrote. Returns the
    number of masked layers."""
    from nvembed.modeling.lora import is_peft
    from nvembed.pruning import transformer_blocks

    backbone = model.backbone.get_base_model() if is_peft(model.backbone) else model.backbone
    masked = 0
    for block in transformer_blocks(backbone):
        for layer in block.modules():
            if isinstance(layer, torch.nn.Linear) and layer.weight.requires_grad and bool((layer.weight == 0).any()):
                keep = (layer.weight != 0).detach()
                layer.weight.register_hook(lambda grad, keep=keep: grad * keep)
                masked += 1
    return masked


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


def local_batches(
    cfg: TrainConfig, datasets: dict[str, list[TrainingExample]], collator: ContrastiveCollator
) -> Callable[[int], Iterator[ContrastiveBatch]]:
    """``start_step -> batches`` from the in-memory batcher, replayed to ``start_step``: the batcher is
    deterministic, so the step alone is the data position (as in the Ray path's step plan)."""

    def batches(start: int) -> Iterator[ContrastiveBatch]:
        rows = iter(make_batcher(cfg, datasets))
        return (collator(r) for r in itertools.islice(rows, start, None))

    return batches


def run_stage(
    cfg: TrainConfig,
    datasets: dict[str, list[TrainingExample]],
    stop_after: int | None = None,
    log: Callable[[str], None] = print,
    on_dev: Callable[[int, dict[str, float]], None] | None = None,
) -> StageResult:
    """Train one stage in this process (CPU or one GPU), resuming from ``<output_dir>/checkpoints``.

    Args:
        cfg: the stage's config.
        datasets: name -> rows (see :func:`nvembed.data.build.build_training_rows`).
        stop_after: stop (as if killed) once this step is done; used by tests and smoke runs.
        on_dev: called with (step, dev metrics) whenever dev metrics are computed (``cfg.dev``), after the
            step's checkpoint is written.
    """
    check_stage_inputs(cfg, datasets)  # the same checks as the Ray path's driver (nvembed/training/preflight.py)
    out = Path(cfg.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = stage_precision(cfg, device)
    log(f"stage {cfg.run.stage} precision: {precision.reason}")
    seed_everything(cfg.run.seed)
    emb = build_stage_embedder(cfg)
    emb.to(device)
    engine = make_engine(cfg, emb.model, precision)
    store = LocalCheckpointStore(out / "checkpoints", cfg.run.keep_checkpoints)
    ctx = RunContext(store, device=device, progress=True)
    batches = local_batches(cfg, datasets, make_collator(cfg, emb))
    return train_stage(
        cfg, emb, engine, batches, ctx, dev_set=make_dev_set(cfg), on_dev=on_dev, stop_after=stop_after, log=log
    )
