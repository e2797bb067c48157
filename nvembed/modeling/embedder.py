"""``NVEmbedModel``: backbone + pooler, returning embeddings (the loss lives elsewhere; DESIGN.md rule 5)."""

from __future__ import annotations

import torch
from torch import nn


class NVEmbedModel(nn.Module):
    """A text embedder: ``forward(input_ids, attention_mask, pool_mask) -> [B, D]``.

    Args:
        backbone: a transformers model returning ``last_hidden_state`` (possibly wrapped by peft); already made
            bidirectional when it is a decoder (see :mod:`nvembed.modeling.bidirectional`).
        pooler: one of :mod:`nvembed.modeling.latent_attention`'s poolers.
    """

    def __init__(self, backbone: nn.Module, pooler: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooler = pooler

    @property
    def output_dim(self) -> int:
        return int(self.pooler.output_dim)

    def token_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last-layer states ``[B, L, H]`` of the backbone (every real token attends to every other)."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state  # [B, L, H]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
        """Args: ``[B, L]`` each. Returns ``[B, D]`` embeddings (unit norm unless pooling.normalize is off)."""
        hidden = self.token_states(input_ids, attention_mask)  # [B, L, H]
        head = next(self.pooler.parameters(), None)
        if head is not None and head.dtype != hidden.dtype and not torch.is_autocast_enabled(hidden.device.type):
            # a bf16 base under an fp32 head (training's precision policy, nvembed/training/precision.py), outside
            # autocast (encode, dev metrics): the head takes its input in its own dtype. Under autocast the input
            # stays as it is: casting it up would run the head's non-matmul ops in fp32 (bf16 steps 1.24x slower)
            hidden = hidden.to(head.dtype)  # [B, L, H]
        return self.pooler(hidden, pool_mask, attention_mask)  # [B, D]
