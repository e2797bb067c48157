"""GradCache (Gao et al., 2021): a large contrastive batch in fixed activation memory.

1. Embed every chunk without a graph, remembering each chunk's RNG state (dropout must repeat exactly).
2. Compute the loss on the cached embeddings and backpropagate to the embeddings only.
3. Re-run each chunk with a graph under its saved RNG state and backpropagate ``<embedding, cached grad>``.

The very last chunk is embedded *with* its graph in step 1 and backpropagated right after step 2, so it is never
run twice: one chunk's activations are alive at a time, as in step 3, and one forward per step is saved.

Gradients equal those of the plain loss (tests/unit/test_gradcache.py); peak activation memory is one chunk's.
Works with LoRA and non-reentrant gradient checkpointing (the recompute in step 3 is an ordinary forward).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

Features = dict[str, torch.Tensor]


class RngState:
    """CPU and CUDA RNG states captured now, restorable later (so a recomputed forward draws the same dropout)."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = (
            torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        )

    @contextlib.contextmanager
    def restored(self) -> Iterator[None]:
        devices = list(range(len(self.cuda))) if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state_all(self.cuda)
            yield


def split_features(features: Features, chunk_size: int) -> list[Features]:
    """Row chunks of a padded batch, each trimmed to its own longest sequence (less padding per chunk)."""
    n = features["input_ids"].shape[0]
    chunks = []
    for start in range(0, n, chunk_size):
        part = {k: v[start : start + chunk_size] for k, v in features.items()}
        width = int(part["attention_mask"].sum(dim=1).max())
        chunks.append({k: v[:, :width] for k, v in part.items()})
    return chunks


def gradcache_backward(
    embed: Callable[[Features], torch.Tensor],
    groups: list[list[Features]],
    loss_fn: Callable[..., torch.Tensor],
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
) -> torch.Tensor:
    """Run one GradCache step; returns the (detached) loss. Parameter gradients are accumulated.

    Args:
        embed: features -> ``[n, D]`` embeddings (the model's forward).
        groups: one list of feature chunks per loss argument (e.g. ``[query_chunks, doc_chunks]``).
        loss_fn: called with one ``[N, D]`` tensor per group.
        backward: how to backpropagate a surrogate (engines override it, e.g. DeepSpeed's ``engine.backward``).
    """
    cached: list[list[torch.Tensor]] = []
    states: list[list[RngState]] = []
    with torch.no_grad():
        for g, chunks in enumerate(groups):
            reps, rngs = [], []
            for i, chunk in enumerate(chunks):
                rngs.append(RngState())
                if g == len(groups) - 1 and i == len(chunks) - 1:
                    with torch.enable_grad():  # the very last chunk keeps its graph: no replay needed
                        kept = embed(chunk)  # [c, D], with graph
                    reps.append(kept.detach())
                else:
                    reps.append(embed(chunk))  # [c, D]
            cached.append(reps)
            states.append(rngs)
    leaves = [torch.cat(reps).detach().requires_grad_() for reps in cached]  # one [N, D] per group
    loss = loss_fn(*leaves)
    loss.backward()  # gradients w.r.t. the cached embeddings only
    # the kept chunk first, so that (for ZeRO-3) its backward directly follows its forward
    backward(torch.sum(kept * leaves[-1].grad[-kept.shape[0] :]))
    for g, (chunks, rngs, leaf) in enumerate(zip(groups, states, leaves, strict=True)):
        start = 0
        for i, (chunk, rng) in enumerate(zip(chunks, rngs, strict=True)):
            if g == len(groups) - 1 and i == len(chunks) - 1:
                break  # the kept chunk, done above
            with rng.restored():
                rep = embed(chunk)  # [c, D], with graph
            grad = leaf.grad[start : start + rep.shape[0]]
            start += rep.shape[0]
            backward(torch.sum(rep * grad))  # d/dθ <rep, dL/drep>
    return loss.detach()
