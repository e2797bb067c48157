"""Rank / world helpers and a differentiable all-gather; all no-ops at world size 1 (DESIGN.md §5 rule 6)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, keeping the autograd graph.

    The backward pass sums, on each rank, the gradients that every rank's loss sends to that rank's slice
    (``torch.distributed.nn.functional.all_gather``), so after the usual gradient *average* across ranks the
    result equals the gradient of the global mean loss. Shapes must match across ranks.
    """
    if not is_distributed():
        return tensor
    return _AllGather.apply(tensor)


class _AllGather(torch.autograd.Function):
    """all_gather forward; backward all-reduces (sums) the full gradient and keeps this rank's slice.

    Written out (nine lines) rather than using ``torch.distributed.nn.functional.all_gather``: torch 2.13
    deprecates that function (FutureWarning on every call) in favour of a private ``_functional_collectives`` API.
    Only all_gather and all_reduce are used, which every backend (gloo included) supports.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rows = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = rank() * ctx.rows
        return grad[start : start + ctx.rows]


def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return tensor
    out = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(out, tensor.contiguous())
    return torch.cat(out, dim=0)
