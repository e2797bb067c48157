"""One contrastive forward/backward, plain or GradCache; the engine around it does optimizer steps."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from nvembed.data.collate import ContrastiveBatch
from nvembed.losses import contrastive_loss, distillation_loss, matryoshka_loss
from nvembed.training.gradcache import gradcache_backward, split_features


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for the step's forward passes, or a no-op when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def sorted_chunks(features: dict[str, torch.Tensor], size: int) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
    """Rows sorted by length (longest first) and cut into chunks trimmed to their own longest row.

    One long document otherwise pads every row of the batch to its length: on the stage-1 data of
    ``jobs/configs/minilm_recipe.yaml`` three quarters of the positions were padding (docs/bugs.md).

    Returns:
        The chunks and the inverse permutation that puts their concatenated outputs back in batch order.
    """
    lengths = features["attention_mask"].sum(dim=1)  # [n]
    order = torch.argsort(lengths, descending=True, stable=True)  # [n]
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return split_features({k: v[order] for k, v in features.items()}, size), inverse


def contrastive_backward(
    model: torch.nn.Module,
    batch: ContrastiveBatch,
    temperature: float,
    chunk_size: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    micro_batch: int = 32,
    matryoshka_dims: tuple[int, ...] = (),
    teacher: torch.nn.Module | None = None,
    distill_weight: float = 1.0,
    distill_kind: str = "cosine",
) -> torch.Tensor:
    """Embed queries and documents, compute InfoNCE, backpropagate; returns the detached loss.

    Args:
        model: ``features -> [n, D]`` (an :class:`NVEmbedModel`, possibly wrapped by DDP/DeepSpeed).
        batch: a :class:`ContrastiveBatch` on the model's device.
        temperature: τ.
        chunk_size: rows per GradCache chunk; ``None`` keeps the whole graph (plain loss).
        autocast_dtype: e.g. ``torch.bfloat16`` on GPUs; None runs in the weights' dtype.
        backward: how to backpropagate (DeepSpeed passes ``engine.backward``).
        micro_batch: without GradCache, rows per length-sorted forward pass (less padding, same result).
        matryoshka_dims: also train these leading slices as embeddings (:func:`nvembed.losses.matryoshka_loss`).
        teacher: a frozen model whose embeddings of the same texts the student is pulled towards
            (:func:`nvembed.losses.distillation_loss`, weighted by ``distill_weight``); None = contrastive only.
    """
    device = batch.neg_mask.device

    def embed(features: dict[str, torch.Tensor]) -> torch.Tensor:
        with autocast_context(device, autocast_dtype):
            return model(**features).float()  # [n, D]

    q_chunks, q_inv = sorted_chunks(batch.queries, chunk_size or micro_batch)
    d_chunks, d_inv = sorted_chunks(batch.docs, chunk_size or micro_batch)
    targets = None
    if teacher is not None:
        teacher.eval()
        with torch.no_grad(), autocast_context(device, autocast_dtype):  # same chunks, same (sorted) order
            targets = (
                torch.cat([teacher(**c).float() for c in q_chunks]),  # [B, D]
                torch.cat([teacher(**c).float() for c in d_chunks]),  # [B(1+K), D]
            )

    def loss_fn(queries: torch.Tensor, docs: torch.Tensor) -> torch.Tensor:
        # inputs arrive in length-sorted order; put them back in batch order: [B, D], [B(1+K), D]
        if matryoshka_dims:
            loss = matryoshka_loss(
                queries[q_inv], docs[d_inv], batch.neg_mask, batch.in_batch, temperature, matryoshka_dims
            )
        else:
            loss = contrastive_loss(queries[q_inv], docs[d_inv], batch.neg_mask, batch.in_batch, temperature)
        if targets is not None:
            pull = distillation_loss(queries, targets[0], distill_kind) + distillation_loss(
                docs, targets[1], distill_kind
            )
            loss = loss + distill_weight * pull / 2
        return loss

    if chunk_size is None:
        queries = torch.cat([embed(c) for c in q_chunks])  # [B, D]
        docs = torch.cat([embed(c) for c in d_chunks])  # [B(1+K), D]
        loss = loss_fn(queries, docs)
        backward(loss)
        return loss.detach()
    return gradcache_backward(embed, [q_chunks, d_chunks], loss_fn, backward)
