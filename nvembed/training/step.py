"""One contrastive forward/backward, plain or GradCache; the engine around it does optimizer steps."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from nvembed.data.collate import ContrastiveBatch
from nvembed.losses import contrastive_loss
from nvembed.training.gradcache import gradcache_backward, split_features


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for the step's forward passes, or a no-op when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def contrastive_backward(
    model: torch.nn.Module,
    batch: ContrastiveBatch,
    temperature: float,
    chunk_size: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
) -> torch.Tensor:
    """Embed queries and documents, compute InfoNCE, backpropagate; returns the detached loss.

    Args:
        model: ``features -> [n, D]`` (an :class:`NVEmbedModel`, possibly wrapped by DDP/DeepSpeed).
        batch: a :class:`ContrastiveBatch` on the model's device.
        temperature: τ.
        chunk_size: rows per GradCache chunk; ``None`` embeds the whole batch at once (plain).
        autocast_dtype: e.g. ``torch.bfloat16`` on GPUs; None runs in the weights' dtype.
        backward: how to backpropagate (DeepSpeed passes ``engine.backward``).
    """
    device = batch.neg_mask.device

    def embed(features: dict[str, torch.Tensor]) -> torch.Tensor:
        with autocast_context(device, autocast_dtype):
            return model(**features).float()  # [n, D]

    def loss_fn(queries: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
        return contrastive_loss(queries, docs, batch.neg_mask, batch.in_batch, temperature)

    if chunk_size is None:
        loss = loss_fn(embed(batch.queries), embed(batch.docs))
        backward(loss)
        return loss.detach()
    groups = [split_features(batch.queries, chunk_size), split_features(batch.docs, chunk_size)]
    return gradcache_backward(embed, groups, loss_fn, backward)
