"""The training loop, engine-agnostic and free of I/O other than checkpoints it is asked for.

``TorchEngine`` owns model + optimizer + scheduler for plain PyTorch (CPU, one GPU, or DDP); the DeepSpeed engine
of the Ray job implements the same three methods (``step``, ``state_for_checkpoint``, ``restore``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch

from nvembed.data.collate import ContrastiveBatch
from nvembed.training.step import contrastive_backward


@dataclass
class StepMetrics:
    step: int
    loss: float
    lr: float
    grad_norm: float
    samples: int
    tokens: int
    seconds: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else math.nan

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else math.nan

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "samples_per_s": self.samples_per_s, "tokens_per_s": self.tokens_per_s}


class TorchEngine:
    """Plain PyTorch optimisation of an :class:`NVEmbedModel` (optionally inside DDP).

    Args:
        model: the module to call (the DDP wrapper when distributed).
        optimizer / scheduler: from :mod:`nvembed.training.optim`.
        temperature: InfoNCE τ.
        chunk_size: GradCache chunk rows, or None for the plain loss.
        grad_clip: max global grad norm (None/0: off).
        autocast_dtype: e.g. torch.bfloat16 on GPUs.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        temperature: float = 0.02,
        chunk_size: int | None = None,
        grad_clip: float | None = 1.0,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.temperature = temperature
        self.chunk_size = chunk_size
        self.grad_clip = grad_clip
        self.autocast_dtype = autocast_dtype

    @property
    def unwrapped(self) -> torch.nn.Module:
        return getattr(self.model, "module", self.model)

    def step(self, batch: ContrastiveBatch) -> tuple[float, float]:
        """One optimizer step; returns (loss, grad norm before clipping)."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = contrastive_backward(self.model, batch, self.temperature, self.chunk_size, self.autocast_dtype)
        params = [p for p in self.unwrapped.parameters() if p.requires_grad]
        average_gradients(params)
        max_norm = self.grad_clip if self.grad_clip else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        self.optimizer.step()
        self.scheduler.step()
        return float(loss), float(norm)

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Average gradients over ranks (a no-op at world size 1), once per step: DDP's arithmetic.

    Done by hand rather than by wrapping the model in ``DistributedDataParallel``: GradCache runs several
    forward/backward passes per step, which DDP's reducer would synchronise (or refuse) at every backward.
    One flat all-reduce per step over the trainable tensors (LoRA + head) is also cheap.
    """
    from nvembed.distributed import is_distributed, world_size

    if not is_distributed():
        return
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def train_steps(
    engine: TorchEngine,
    batches: Iterable[ContrastiveBatch],
    num_steps: int,
    start_step: int = 0,
    on_step: Callable[[StepMetrics], None] | None = None,
    device: torch.device | str | None = None,
) -> list[StepMetrics]:
    """Run steps ``start_step + 1 .. num_steps``; ``on_step`` sees each step's metrics (log, report, checkpoint)."""
    history = []
    iterator: Iterator[ContrastiveBatch] = iter(batches)
    for step in range(start_step + 1, num_steps + 1):
        t0 = time.perf_counter()
        batch = next(iterator)
        if device is not None:
            batch = batch.to(device)
        lr = engine.current_lr()
        loss, norm = engine.step(batch)
        metrics = StepMetrics(step, loss, lr, norm, batch.size, batch.num_tokens(), time.perf_counter() - t0)
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at step {step}; lower the learning rate or check the data")
        history.append(metrics)
        if on_step is not None:
            on_step(metrics)
    return history
