"""DeepSpeed ZeRO engine with the TorchEngine interface (DeepSpeed imported lazily: CPU installs need not have it).

ZeRO-3 partitions parameters, gradients and optimizer states over ranks. Outside the HF Trainer the partitioned
load needs ``transformers.integrations.HfDeepSpeedConfig`` alive *before* ``from_pretrained`` (HF docs; PR #16238):
:func:`deepspeed_config` builds the dict, the worker creates and keeps that object, then builds the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml

from nvembed.config import TrainConfig
from nvembed.training.optim import build_optimizer, linear_warmup_decay
from nvembed.training.step import contrastive_backward


def deepspeed_config(cfg: TrainConfig, world: int, use_gpu: bool, base: str | Path | None = None) -> dict[str, Any]:
    """The ``ds_config`` dict: the ZeRO section file, then the run's numbers (batch, clipping, precision)."""
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
    bf16 = cfg.deepspeed.bf16 if cfg.deepspeed.bf16 is not None else use_gpu
    ds["bf16"] = {"enabled": bool(bf16)}
    ds.setdefault("zero_allow_untested_optimizer", True)  # our AdamW with a separate head learning rate
    return ds


class DeepSpeedEngine:
    """``step(batch) -> (loss, grad_norm)`` on a ``deepspeed.initialize``d model."""

    def __init__(self, cfg: TrainConfig, model: torch.nn.Module, ds_config: dict[str, Any]) -> None:
        import deepspeed

        # attach DeepSpeed's comm layer to the process group Ray Train (or torchrun) already created
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        optimizer = build_optimizer(
            model, cfg.optim.lr, cfg.optim.head_lr, cfg.optim.weight_decay, tuple(cfg.optim.betas), cfg.optim.eps
        )
        scheduler = linear_warmup_decay(optimizer, cfg.optim.warmup_steps, cfg.run.max_steps)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
        )
        self.temperature = cfg.loss.temperature
        self.chunk_size = cfg.run.chunk_size

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.engine.module

    def step(self, batch) -> tuple[float, float]:
        self.engine.train()
        loss = contrastive_backward(self.engine, batch, self.temperature, self.chunk_size, None, self.engine.backward)
        self.engine.step()  # clip, optimizer step, scheduler step, zero grads
        norm = self.engine.get_global_grad_norm()
        return float(loss), float(norm) if norm is not None else float("nan")

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def save(self, folder: str | Path, step: int) -> None:
        """Every rank writes its ZeRO shard (``ds/``); the step rides in the client state."""
        self.engine.save_checkpoint(str(folder), tag="ds", client_state={"step": step})

    def load(self, folder: str | Path) -> int:
        _, client = self.engine.load_checkpoint(str(folder), tag="ds")
        return int((client or {}).get("step", 0))
