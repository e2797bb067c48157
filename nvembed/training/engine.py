"""Engines: what one optimizer step means for an execution backend, behind one protocol.

The training driver (:mod:`nvembed.training.driver`) sees only :class:`Engine`. :class:`TorchEngine` is plain
PyTorch (CPU, one GPU, or data parallel with gradients averaged by hand); the DeepSpeed ZeRO engine lives in
:mod:`nvembed.training.deepspeed_engine`. Both follow :mod:`nvembed.training.precision`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

from nvembed.data.collate import ContrastiveBatch
from nvembed.training.step import contrastive_backward

ENGINE_DIR = "engine"  # the engine's part of a checkpoint folder (nvembed/training/checkpoint.py)


class Engine(Protocol):
    """One optimizer step and everything that must survive a restart.

    ``save_state`` / ``load_state`` write and read the engine's part of a checkpoint folder instead of returning a
    state dict, because a ZeRO engine's state is partitioned: every rank writes its own shard. Every rank calls
    them (and ``save_final``); an engine decides which ranks write.
    """

    collective_forward: bool  # True when a forward needs every rank (ZeRO-3 gathers parameters)

    @property
    def unwrapped(self) -> torch.nn.Module: ...

    def step(self, batch: ContrastiveBatch) -> tuple[float, float]: ...

    def current_lr(self) -> float: ...

    def save_state(self, folder: Path, rank: int) -> None: ...

    def load_state(self, folder: Path) -> None: ...

    def save_final(self, emb: Any, folder: Path, rank: int) -> None: ...


class TorchEngine:
    """Plain PyTorch optimisation of an :class:`NVEmbedModel`; each rank holds a full replica.

    Args:
        model: the model (trainable tensors already fp32, see :mod:`nvembed.training.precision`).
        optimizer / scheduler: from :mod:`nvembed.training.optim`.
        temperature: InfoNCE τ.
        chunk_size: GradCache chunk rows, or None for the plain loss.
        grad_clip: max global grad norm (None/0: off).
        autocast_dtype: compute dtype of the forward (None: the weights' dtype).
        matryoshka_dims: leading slices trained as embeddings too (``loss.matryoshka_dims``).
        teacher, distill_weight, distill_kind: distillation from a frozen model (``loss.distill_from``).
    """

    collective_forward = False

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        temperature: float = 0.02,
        chunk_size: int | None = None,
        grad_clip: float | None = 1.0,
        autocast_dtype: torch.dtype | None = None,
        matryoshka_dims: tuple[int, ...] = (),
        teacher: torch.nn.Module | None = None,
        distill_weight: float = 1.0,
        distill_kind: str = "cosine",
    ) -> None:
        self.model = model
        self.teacher = teacher
        self.distill_weight = distill_weight
        self.distill_kind = distill_kind
        self.matryoshka_dims = tuple(matryoshka_dims)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.temperature = temperature
        self.chunk_size = chunk_size
        self.grad_clip = grad_clip
        self.autocast_dtype = autocast_dtype
        self.params = [p for g in optimizer.param_groups for p in g["params"]]

    @property
    def unwrapped(self) -> torch.nn.Module:
        return getattr(self.model, "module", self.model)

    def step(self, batch: ContrastiveBatch) -> tuple[float, float]:
        """One optimizer step; returns (this rank's loss, global grad norm before clipping)."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = contrastive_backward(
            self.model,
            batch,
            self.temperature,
            self.chunk_size,
            self.autocast_dtype,
            matryoshka_dims=self.matryoshka_dims,
            teacher=self.teacher,
            distill_weight=self.distill_weight,
            distill_kind=self.distill_kind,
        )
        average_gradients(self.params)
        max_norm = self.grad_clip if self.grad_clip else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        self.optimizer.step()
        self.scheduler.step()
        return float(loss), float(norm)

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def save_state(self, folder: Path, rank: int) -> None:
        """Rank 0 writes the trainable tensors and optimizer/scheduler state (all replicas are identical)."""
        if rank != 0:
            return
        from safetensors.torch import save_file

        from nvembed.training.checkpoint import trainable_state_dict

        target = folder / ENGINE_DIR
        target.mkdir(parents=True, exist_ok=True)
        save_file(trainable_state_dict(self.unwrapped), str(target / "trainable.safetensors"))
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        torch.save(state, target / "optimizer.pt")

    def load_state(self, folder: Path) -> None:
        from safetensors.torch import load_file

        from nvembed.training.checkpoint import load_trainable

        load_trainable(self.unwrapped, load_file(str(folder / ENGINE_DIR / "trainable.safetensors")))
        state = torch.load(folder / ENGINE_DIR / "optimizer.pt", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def save_final(self, emb: Any, folder: Path, rank: int) -> None:
        """Rank 0 writes the whole model (``Embedder.save_pretrained``): every rank holds all of it."""
        if rank == 0:
            emb.model = self.unwrapped
            emb.save_pretrained(folder)


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average gradients over ranks (a no-op at world size 1), once per step: DDP's arithmetic.

    Done by hand rather than by wrapping the model in ``DistributedDataParallel``: GradCache runs several
    forward/backward passes per step, which DDP's reducer would synchronise (or refuse) at every backward.
    One flat all-reduce per dtype over the trainable tensors (LoRA + head): ``torch.cat`` of mixed dtypes
    would promote and write the result back in the wrong dtype (docs/bugs.md).
    """
    from nvembed.distributed import is_distributed, world_size

    if not is_distributed():
        return
    import torch.distributed as dist

    buckets: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        buckets.setdefault(p.grad.dtype, []).append(p)
    for bucket in buckets.values():
        flat = torch.cat([p.grad.reshape(-1) for p in bucket])  # [sum numel], one dtype
        dist.all_reduce(flat)
        flat /= world_size()
        offset = 0
        for p in bucket:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n
