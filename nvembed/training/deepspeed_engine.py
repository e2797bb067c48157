"""DeepSpeed ZeRO engine behind the :class:`~nvembed.training.engine.Engine` protocol (DeepSpeed imported lazily).

ZeRO-3 partitions parameters, gradients and optimizer states over ranks. Outside the HF Trainer the partitioned
load needs ``transformers.integrations.HfDeepSpeedConfig`` alive *before* ``from_pretrained`` (HF docs; PR #16238):
:func:`deepspeed_config` builds the dict, the worker creates and keeps that object, then builds the model.

Precision (nvembed/training/precision.py): with a bf16 base, DeepSpeed's bf16 mode is on and every trainable
tensor is handed over in bf16 (its ZeRO-3 ``defragment`` asserts one dtype per group); DeepSpeed keeps their fp32
masters and steps those. With an fp32 base, DeepSpeed runs in fp32 and the forward runs under our autocast, as in
the torch engine.

When is ZeRO-3 the right engine for a frozen-base LoRA run? It partitions the *base* too, so each forward and
backward all-gathers every layer's weights (2 x the bf16 base per step over the interconnect). That buys memory:
a 7B bf16 base is 14.5 GB per GPU replicated, 1.8 GB per GPU partitioned over 8. With LoRA the optimizer state is
small either way, so ``scaling.engine: ddp`` (replicated bf16 base, only LoRA + head gradients all-reduced) is
faster whenever the replicated base plus activations fit; ZeRO-3 is for when they do not (long sequences, large
batches without GradCache, bigger backbones). README "Engines" has the numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml

from nvembed.config import ConfigError, TrainConfig
from nvembed.training.engine import ENGINE_DIR
from nvembed.training.optim import build_optimizer, linear_warmup_decay
from nvembed.training.precision import Precision, cast_trainable
from nvembed.training.step import contrastive_backward


def deepspeed_config(cfg: TrainConfig, world: int, precision: Precision, base: str | Path | None = None) -> dict:
    """The ``ds_config`` dict: the ZeRO section file, then the run's numbers (batch, clipping, precision).

    Raises:
        ConfigError: ``deepspeed.bf16`` set against what ``model.dtype`` implies (checked on the driver).
    """
    path = Path(base or cfg.deepspeed.config)
    section = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else json.loads(path.read_text())
    ds = dict(section or {})
    zero = dict(ds.get("zero_optimization", {}))
    zero["stage"] = cfg.deepspeed.stage
    if cfg.deepspeed.param_persistence_threshold is not None:
        zero["stage3_param_persistence_threshold"] = cfg.deepspeed.param_persistence_threshold
    if cfg.deepspeed.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    ds["zero_optimization"] = zero
    ds["train_micro_batch_size_per_gpu"] = cfg.run.batch_size // world
    ds["gradient_accumulation_steps"] = 1
    ds["train_batch_size"] = cfg.run.batch_size
    ds["gradient_clipping"] = float(cfg.optim.grad_clip or 0.0)
    bf16 = precision.deepspeed_mixed and precision.compute == torch.bfloat16
    fp16 = precision.deepspeed_mixed and precision.compute == torch.float16
    if cfg.deepspeed.bf16 is not None and cfg.deepspeed.bf16 != bf16:
        raise ConfigError(
            f"deepspeed.bf16={cfg.deepspeed.bf16} contradicts model.dtype={cfg.model.dtype}: DeepSpeed's bf16 mode "
            "follows the base weights' dtype (nvembed/training/precision.py); drop deepspeed.bf16 or change model.dtype"
        )
    ds["bf16"] = {"enabled": bf16}
    ds["fp16"] = {"enabled": fp16}
    ds.setdefault("zero_allow_untested_optimizer", True)  # our AdamW with a separate head learning rate
    return ds


class DeepSpeedEngine:
    """``step(batch) -> (loss, grad_norm)`` on a ``deepspeed.initialize``d model."""

    def __init__(self, cfg: TrainConfig, model: torch.nn.Module, ds_config: dict[str, Any], precision: Precision):
        import deepspeed

        # attach DeepSpeed's comm layer to the process group Ray Train (or torchrun) already created
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        cast_trainable(model, precision.trainable_dtype("deepspeed"))
        optimizer = build_optimizer(
            model, cfg.optim.lr, cfg.optim.head_lr, cfg.optim.weight_decay, tuple(cfg.optim.betas), cfg.optim.eps
        )
        scheduler = linear_warmup_decay(optimizer, cfg.optim.warmup_steps, cfg.run.max_steps)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
        )
        self.zero_stage = int(ds_config["zero_optimization"]["stage"])
        self.collective_forward = self.zero_stage == 3
        self.temperature = cfg.loss.temperature
        self.matryoshka_dims = tuple(cfg.loss.matryoshka_dims or ())
        self.chunk_size = cfg.run.chunk_size
        self.autocast_dtype = precision.compute
        self.lora = cfg.lora.enabled

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.engine.module

    def step(self, batch) -> tuple[float, float]:
        self.engine.train()
        loss = contrastive_backward(
            self.engine,
            batch,
            self.temperature,
            self.chunk_size,
            self.autocast_dtype,
            self.engine.backward,
            matryoshka_dims=self.matryoshka_dims,
        )
        self.engine.step()  # clip, optimizer step (fp32 masters), scheduler step, zero grads
        norm = self.engine.get_global_grad_norm()
        return float(loss), float(norm) if norm is not None else float("nan")

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def save_state(self, folder: Path, rank: int) -> None:
        """Every rank writes its ZeRO shard; the frozen base is not saved (it never changes)."""
        self.engine.save_checkpoint(str(folder / ENGINE_DIR), tag="ds", exclude_frozen_parameters=True)

    def load_state(self, folder: Path) -> None:
        self.engine.load_checkpoint(str(folder / ENGINE_DIR), tag="ds", load_module_strict=False)

    def full_tensors(self, rank: int, include_frozen: bool) -> dict[str, torch.Tensor]:
        """Full tensors for an export, one parameter at a time: the fp32 master of every trainable one and, when
        asked, the gathered frozen ones. Collective (every rank calls, in the same order); rank 0 keeps them on CPU.
        """
        import deepspeed
        from deepspeed.utils import safe_get_full_fp32_param

        out = {}
        for name, p in self.unwrapped.named_parameters():
            if p.requires_grad:
                full = safe_get_full_fp32_param(p)
            elif include_frozen and hasattr(p, "ds_id"):
                with deepspeed.zero.GatheredParameters([p]):
                    full = p.data.detach().clone()
            else:
                continue
            if rank == 0:
                out[name] = full.detach().cpu()
            del full
        return out

    def save_final(self, emb: Any, folder: Path, rank: int) -> None:
        """Export the trained tensors from DeepSpeed's fp32 masters, one parameter at a time.

        With LoRA the export holds adapter + head and names its base (``Embedder.save_pretrained(...,
        base_weights=False)``): the frozen base is never gathered. Without LoRA every parameter is trainable and
        rank 0 collects the whole model once, in CPU memory. No rank ever holds all parameters on its device at
        once, and the model is never copied (docs/bugs.md, 2026-12-01).
        """
        model = self.unwrapped
        masters = self.full_tensors(rank, include_frozen=not self.lora)  # every rank takes part in the gathers
        if rank != 0:
            return
        params = dict(model.named_parameters())
        live = {name: params[name].data for name in masters}
        try:
            for name, value in masters.items():
                params[name].data = value
            emb.model = model
            emb.save_pretrained(folder, base_weights=not self.lora)
        finally:
            for name, data in live.items():
                params[name].data = data
