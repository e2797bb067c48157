"""Latent-attention pooling, the NV-Embed pooling layer (arXiv 2405.17428, §3.2).

The layout follows the released NV-Embed-v2 checkpoint (``LatentAttentionModel`` in its
``modeling_nvembed.py``) rather than the paper's looser prose, because only the released layout loads the
released weights (spec §1.2, pitfalls 1, 2 and 17):

* the token states are the *queries*; a trainable latent array ``latents`` (r x d) provides keys and values
  through one projection ``to_kv`` that is split into K and V (so K != V, unlike the paper's "K = V");
* ``h`` heads of width ``d_head`` (8 x 4096 for Mistral-7B: the inner width is 32768, not 4096);
* both blocks are pre-LayerNorm with residuals; the latents have their own LayerNorm;
* the feed-forward block is GEGLU with 4x expansion: ``Linear(d, 8d) -> a * gelu(b) -> Linear(4d, d)``;
* masked mean over the pool mask, then L2 normalisation.

This module knows nothing of configs: it takes explicit numbers (DESIGN.md §5 rule 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` over the positions where ``mask`` is 1.

    Args:
        hidden: ``[B, L, D]`` token states.
        mask: ``[B, L]`` 0/1 pool mask.

    Returns:
        ``[B, D]``. Rows whose mask is empty are zero rather than NaN (the caller validates masks).
    """
    mask = mask.to(hidden.dtype).unsqueeze(-1)  # [B, L, 1]
    summed = (hidden * mask).sum(dim=1)  # [B, D]
    count = mask.sum(dim=1).clamp_min(1.0)  # [B, 1]
    return summed / count


class LatentCrossAttention(nn.Module):
    """Cross-attention from token states (queries) to the latent array (keys and values).

    Parameter names (``to_q``, ``to_kv``, ``to_out``) match the released checkpoint so the weight mapping in
    :mod:`nvembed.modeling.released` is a pure rename.
    """

    def __init__(self, query_dim: int, context_dim: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, query_dim, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, L, Dq]`` token states; context ``[R, Dc]`` normalised latents (shared by the batch)."""
        b, length, _ = x.shape
        h, d = self.num_heads, self.head_dim
        q = self.to_q(x).view(b, length, h, d).transpose(1, 2)  # [B, h, L, d]
        k, v = self.to_kv(context).chunk(2, dim=-1)  # [R, h*d] each; K first, as in the release
        r = context.shape[0]
        k = k.view(r, h, d).transpose(0, 1).unsqueeze(0).expand(b, h, r, d)  # [B, h, R, d]
        v = v.view(r, h, d).transpose(0, 1).unsqueeze(0).expand(b, h, r, d)  # [B, h, R, d]
        # No mask: the keys are latents, never padding. Default scale 1/sqrt(d).
        out = F.scaled_dot_product_attention(q, k, v)  # [B, h, L, d]
        out = out.transpose(1, 2).reshape(b, length, h * d)  # [B, L, h*d]
        return self.to_out(out)  # [B, L, Dq]


class GEGLUFeedForward(nn.Module):
    """``Linear(d, 2*mult*d) -> a * gelu(b) -> Linear(mult*d, d)``; the first half is the value, as released."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.proj_in = nn.Linear(dim, dim * mult * 2)
        self.proj_out = nn.Linear(dim * mult, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj_in(x).chunk(2, dim=-1)  # [B, L, mult*d] each
        return self.proj_out(a * F.gelu(gate))  # [B, L, d]


class LatentAttentionPooling(nn.Module):
    """NV-Embed latent-attention pooling: cross-attention to a latent array, GEGLU MLP, masked mean.

    Args:
        hidden_size: width of the backbone's token states. Every width of the block follows it (the released
            config's ``latent_dim``/``hidden_dim`` naming is swapped; spec pitfall 17).
        num_latents: rows of the latent array, r (512 in NV-Embed).
        num_heads: attention heads, h (8 in NV-Embed).
        head_dim: width per head, d_head (4096 in NV-Embed-v2, i.e. the Mistral hidden size). ``None`` means
            ``hidden_size``, which is how we generalise the release to other backbones.
        ff_mult: feed-forward expansion (4 in the release).
        normalize: L2-normalise the pooled output (``output_normalize=True`` in the release).
        zero_init_residual: zero the two output projections (``to_out`` and the FF's second linear) so that both
            blocks start as the identity and a freshly added head starts exactly at mean pooling. Not in the
            paper; it helped a pretrained MiniLM in our calibration runs. Off by default.
    """

    def __init__(
        self,
        hidden_size: int,
        num_latents: int = 512,
        num_heads: int = 8,
        head_dim: int | None = None,
        ff_mult: int = 4,
        normalize: bool = True,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        head_dim = hidden_size if head_dim is None else head_dim
        self.hidden_size = hidden_size
        self.normalize = normalize
        self.latents = nn.Parameter(torch.randn(num_latents, hidden_size))
        self.norm_q = nn.LayerNorm(hidden_size)
        self.norm_latents = nn.LayerNorm(hidden_size)
        self.cross_attn = LatentCrossAttention(hidden_size, hidden_size, num_heads, head_dim)
        self.norm_ff = nn.LayerNorm(hidden_size)
        self.ff = GEGLUFeedForward(hidden_size, ff_mult)
        if zero_init_residual:
            nn.init.zeros_(self.cross_attn.to_out.weight)
            nn.init.zeros_(self.ff.proj_out.weight)
            nn.init.zeros_(self.ff.proj_out.bias)

    @property
    def output_dim(self) -> int:
        return self.hidden_size

    def token_states(self, hidden: torch.Tensor) -> torch.Tensor:
        """The two residual blocks, per token: ``[B, L, D] -> [B, L, D]`` (what the ST path of the release pools)."""
        hidden = hidden.to(self.latents.dtype)
        context = self.norm_latents(self.latents)  # [R, D]
        hidden = hidden + self.cross_attn(self.norm_q(hidden), context)  # [B, L, D]
        return hidden + self.ff(self.norm_ff(hidden))  # [B, L, D]

    def forward(
        self, hidden: torch.Tensor, pool_mask: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Args: hidden ``[B, L, D]``; pool_mask ``[B, L]``. Returns ``[B, D]`` (unit norm if ``normalize``)."""
        pooled = masked_mean(self.token_states(hidden), pool_mask)  # [B, D]
        return F.normalize(pooled, p=2, dim=-1) if self.normalize else pooled


class _TokenPooling(nn.Module):
    """A parameter-free pooling of token states, L2-normalised when ``normalize``; subclasses define
    ``pool(hidden, pool_mask, attention_mask) -> [B, D]``."""

    def __init__(self, hidden_size: int, normalize: bool = True) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.normalize = normalize

    @property
    def output_dim(self) -> int:
        return self.hidden_size

    def forward(
        self, hidden: torch.Tensor, pool_mask: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        pooled = self.pool(hidden, pool_mask, attention_mask)  # [B, D]
        return F.normalize(pooled, p=2, dim=-1) if self.normalize else pooled


class MeanPooling(_TokenPooling):
    """Masked mean over the pool mask (the ablation baseline of spec §4.2, and sentence-transformers' default)."""

    def pool(self, hidden, pool_mask, attention_mask):
        return masked_mean(hidden, pool_mask)  # [B, D]


class LastTokenPooling(_TokenPooling):
    """State of the last real token (the appended EOS for decoders), as E5-Mistral; needs right padding."""

    def pool(self, hidden, pool_mask, attention_mask):
        if attention_mask is None:
            raise ValueError("last-token pooling needs the attention mask to find the last real token")
        last = attention_mask.long().sum(dim=1) - 1  # [B]
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # [B, D]


class ClsPooling(_TokenPooling):
    """State of the first token ([CLS] of BERT-style encoders): sentence-transformers' ``cls`` pooling mode.

    Position 0 is the tokenizer's leading special even when an instruction follows it (the pool mask is not
    used: [CLS] attends to the whole input, instruction included, which is what a CLS-trained model expects).
    """

    def pool(self, hidden, pool_mask, attention_mask):
        return hidden[:, 0]  # [B, D]; right padding, so position 0 is always a real token
