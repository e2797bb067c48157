"""Weight pruning of an embedder's backbone: magnitude, Wanda and SparseGPT, unstructured or N:M (issue 16).

Which weights: every ``nn.Linear`` inside the backbone's transformer blocks (attention projections and MLP); the
token embeddings and the pooling head stay dense. Which models: the backbone families of :data:`PRUNABLE` (an
allow-list; anything else stops before any work, with the model type named).

The methods (each per layer, each comparing weights within one output row, as the papers do):

* ``magnitude``: drop the smallest ``|W|``;
* ``wanda`` (Sun et al. 2023, "A Simple and Effective Pruning Approach for LLMs"): drop the smallest
  ``|W_ij| * ||X_j||_2``, the weight times the norm of its input feature over calibration tokens;
* ``sparsegpt`` (Frantar & Alistarh 2023): choose the mask column block by column block from
  ``W^2 / diag(H^-1)^2`` and update the weights not yet pruned to compensate (optimal brain surgeon on the
  layer's Hessian ``H = X^T X``).

Calibration is sequential, block after block: a block's statistics are gathered with the blocks before it already
pruned, so later blocks compensate for what earlier ones lost (SparseGPT's and Wanda's setting). Texts run one at a
time, so no padding token enters a statistic.

Why written here and not taken from a library: llm-compressor (SparseGPT/Wanda modifiers) pins transformers <= 5.17
and compressed-tensors 0.19 (this project runs transformers 5.24); torch.ao's sparsifiers have no Hessian-based
method and no sequential calibration. The algorithms are short; the tests check each against its definition.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)

METHODS = ("magnitude", "wanda", "sparsegpt")
# backbone families whose blocks are plain nn.Linear layers under one ModuleList (BERT-style encoders, the decoders
# of the mission, and this project's tiny test models built from the same classes)
PRUNABLE = ("bert", "mpnet", "xlm-roberta", "roberta", "mistral", "llama", "qwen2", "qwen3")
MIN_CALIBRATION_TEXTS = 8


@dataclass(frozen=True)
class Sparsity:
    """How much to prune per layer: an unstructured ``ratio`` or an N:M pattern (keep ``n`` of every ``m``)."""

    ratio: float
    n: int = 0  # kept weights per group of m consecutive inputs (N:M); 0 = unstructured
    m: int = 0

    @classmethod
    def parse(cls, text: str | float) -> Sparsity:
        """``"0.5"`` / ``0.5`` (unstructured) or ``"2:4"`` (keep 2 of every 4 consecutive input weights)."""
        if isinstance(text, str) and ":" in text:
            n_text, _, m_text = text.partition(":")
            try:
                n, m = int(n_text), int(m_text)
            except ValueError:
                raise ValueError(f"an N:M pattern is two integers like 2:4, got {text!r}") from None
            if not 0 < n < m:
                raise ValueError(f"N:M needs 0 < N < M (N kept of every M), got {text!r}")
            return cls(ratio=1 - n / m, n=n, m=m)
        try:
            ratio = float(text)
        except ValueError:
            raise ValueError(f"sparsity is a fraction like 0.5 or an N:M pattern like 2:4, got {text!r}") from None
        if not 0 < ratio < 1:
            raise ValueError(f"an unstructured sparsity is a fraction in (0, 1), got {ratio}")
        return cls(ratio=ratio)

    @property
    def label(self) -> str:
        return f"{self.n}:{self.m}" if self.m else f"{self.ratio:g}"


def transformer_blocks(backbone: nn.Module) -> nn.ModuleList:
    """The backbone's list of transformer blocks (the largest ``nn.ModuleList`` of modules holding Linears)."""
    lists = [m for m in backbone.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    lists = [m for m in lists if any(isinstance(x, nn.Linear) for x in m[0].modules())]
    if not lists:
        raise ValueError(f"{type(backbone).__name__}: no list of transformer blocks with Linear layers found")
    return max(lists, key=len)


def check_prunable(backbone: nn.Module, sparsity: Sparsity, method: str) -> dict[str, nn.Linear]:
    """Validate everything before any work; returns the Linear layers to prune by name.

    Raises ``ValueError`` for an unknown method, a model family outside :data:`PRUNABLE`, or an N:M pattern whose
    M does not divide a layer's input width (naming the layer and its width).
    """
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; one of {', '.join(METHODS)}")
    model_type = getattr(getattr(backbone, "config", None), "model_type", None)
    if model_type not in PRUNABLE:
        raise ValueError(
            f"pruning supports the model types {', '.join(PRUNABLE)}; this backbone is {model_type!r} "
            f"({type(backbone).__name__})"
        )
    blocks = transformer_blocks(backbone)
    layers = {  # a peft model's adapters are skipped here: prune() needs them merged, and checks that
        f"{i}.{name}": module
        for i, block in enumerate(blocks)
        for name, module in block.named_modules()
        if isinstance(module, nn.Linear) and "lora_" not in name
    }
    if sparsity.m:
        bad = {name: layer.in_features for name, layer in layers.items() if layer.in_features % sparsity.m}
        if bad:
            name, width = next(iter(bad.items()))
            raise ValueError(
                f"N:M {sparsity.label}: M={sparsity.m} does not divide the input width of {len(bad)} layer(s), "
                f"e.g. block {name} ({width} inputs)"
            )
    return layers


def _row_mask(score: torch.Tensor, sparsity: Sparsity) -> torch.Tensor:
    """Boolean ``[out, in]`` mask of the weights to drop: the lowest scores per row (or per group of M)."""
    out_features, in_features = score.shape
    if sparsity.m:
        groups = score.reshape(out_features, in_features // sparsity.m, sparsity.m)  # [out, in/M, M]
        drop = groups.topk(sparsity.m - sparsity.n, dim=-1, largest=False).indices  # [out, in/M, M-N]
        mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, drop, True)
        return mask.reshape(out_features, in_features)
    k = int(in_features * sparsity.ratio)
    mask = torch.zeros_like(score, dtype=torch.bool)
    if k:
        mask.scatter_(1, score.topk(k, dim=1, largest=False).indices, True)  # [out, k] positions
    return mask


def prune_magnitude(weight: torch.Tensor, sparsity: Sparsity) -> torch.Tensor:
    """Zero the smallest ``|W|`` per output row (per group of M for N:M); returns the pruned ``[out, in]``."""
    return weight.masked_fill(_row_mask(weight.abs().float(), sparsity), 0)


def prune_wanda(weight: torch.Tensor, input_sq_norm: torch.Tensor, sparsity: Sparsity) -> torch.Tensor:
    """Wanda: score ``|W_ij| * ||X_j||`` with ``input_sq_norm`` = ``sum_t X_tj^2`` ``[in]`` over calibration tokens."""
    score = weight.abs().float() * input_sq_norm.float().sqrt().unsqueeze(0)  # [out, in]
    return weight.masked_fill(_row_mask(score, sparsity), 0)


def prune_sparsegpt(
    weight: torch.Tensor, hessian: torch.Tensor, sparsity: Sparsity, *, block_size: int = 128, damp: float = 0.01
) -> torch.Tensor:
    """SparseGPT on one layer: ``weight [out, in]``, ``hessian = X^T X [in, in]`` over calibration tokens.

    Columns are processed left to right in blocks; each pruned weight's error is spread over the columns to its
    right through the upper Cholesky factor of ``H^-1`` (the OBS update). Unstructured masks are chosen per block
    of ``block_size`` columns (the paper's adaptive mask selection), N:M masks every M columns.
    """
    w = weight.detach().float().clone()  # [out, in]
    h = hessian.detach().float().clone()  # [in, in]
    n_in = w.shape[1]
    dead = torch.diag(h) == 0  # inputs never active in calibration: their weights cannot matter there
    h[dead, dead] = 1
    w[:, dead] = 0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(n_in, dtype=h.dtype)
    h_inv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)  # [in, in]
    if sparsity.m:
        block_size = max(sparsity.m, block_size - block_size % sparsity.m)  # a block holds whole groups
    for b0 in range(0, n_in, block_size):
        b1 = min(b0 + block_size, n_in)
        w_blk = w[:, b0:b1].clone()  # [out, c]
        h_blk = h_inv[b0:b1, b0:b1]  # [c, c]
        err = torch.zeros_like(w_blk)  # [out, c]
        d = torch.diag(h_blk)  # [c]
        if sparsity.m:
            mask = torch.zeros_like(w_blk, dtype=torch.bool)
        else:
            score = w_blk**2 / d.unsqueeze(0) ** 2  # [out, c]
            k = int(score.numel() * sparsity.ratio)
            mask = torch.zeros_like(score, dtype=torch.bool).flatten()
            if k:
                mask[score.flatten().topk(k, largest=False).indices] = True
            mask = mask.reshape(score.shape)
        for i in range(b1 - b0):
            if sparsity.m and i % sparsity.m == 0:
                score = w_blk[:, i : i + sparsity.m] ** 2 / d[i : i + sparsity.m].unsqueeze(0) ** 2  # [out, M]
                drop = score.topk(sparsity.m - sparsity.n, dim=1, largest=False).indices
                mask[:, i : i + sparsity.m].scatter_(1, drop, True)
            col = w_blk[:, i]  # [out]
            kept = col.masked_fill(mask[:, i], 0)
            e = (col - kept) / d[i]  # [out]
            w_blk[:, i:] -= e.unsqueeze(1) * h_blk[i, i:].unsqueeze(0)  # spread the error to the right
            w_blk[:, i] = kept
            err[:, i] = e
        w[:, b0:b1] = w_blk
        w[:, b1:] -= err @ h_inv[b0:b1, b1:]  # the error's effect on the blocks to come
    return w.to(weight.dtype)


class _InputStats:
    """Forward hook on a Linear: accumulates ``sum_t x_t^2`` ``[in]`` (Wanda) or ``X^T X`` ``[in, in]`` (SparseGPT)."""

    def __init__(self, layer: nn.Linear, hessian: bool) -> None:
        n = layer.in_features
        self.hessian = hessian
        self.stat = torch.zeros((n, n) if hessian else (n,), dtype=torch.float32)
        self.tokens = 0
        self.handle = layer.register_forward_hook(self)

    def __call__(self, module, args, output) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float().cpu()  # [tokens, in]
        self.tokens += x.shape[0]
        self.stat += x.T @ x if self.hessian else (x * x).sum(0)


@dataclass
class PruneReport:
    method: str
    sparsity: str
    layers: int
    pruned_weights: int
    total_weights: int  # in the pruned layers
    calibration_texts: int
    calibration_tokens: int

    @property
    def achieved(self) -> float:
        return self.pruned_weights / max(1, self.total_weights)


def prune(
    backbone: nn.Module,
    *,
    method: str,
    sparsity: Sparsity,
    run_calibration: Callable[[], int] | None = None,
    calibration_texts: Sequence[str] = (),
) -> PruneReport:
    """Prune ``backbone`` in place, block by block.

    Args:
        backbone: a transformers model of a :data:`PRUNABLE` family, LoRA merged.
        method: one of :data:`METHODS`.
        sparsity: ratio or N:M.
        run_calibration: runs the calibration texts through the whole embedder (hooks record the inputs of the
            block being pruned) and returns the number of texts; required by ``wanda`` and ``sparsegpt``.
        calibration_texts: only counted for the report and the minimum check.
    """
    layers = check_prunable(backbone, sparsity, method)
    if any("lora_" in name for name, _ in backbone.named_parameters()):
        raise ValueError("prune a model with merged LoRA weights (Embedder.merge_lora()), not live adapters")
    needs_data = method != "magnitude"
    if needs_data and (run_calibration is None or len(calibration_texts) < MIN_CALIBRATION_TEXTS):
        raise ValueError(
            f"{method} needs at least {MIN_CALIBRATION_TEXTS} calibration texts, got {len(calibration_texts)}"
        )
    blocks = transformer_blocks(backbone)
    pruned = total = tokens = 0
    for b, block in enumerate(blocks):
        named = {name: mod for name, mod in block.named_modules() if isinstance(mod, nn.Linear)}
        stats: dict[str, _InputStats] = {}
        if needs_data:
            stats = {name: _InputStats(mod, hessian=method == "sparsegpt") for name, mod in named.items()}
            try:
                run_calibration()
            finally:
                for s in stats.values():
                    s.handle.remove()
            tokens = max(tokens, max(s.tokens for s in stats.values()))
        with torch.no_grad():
            for name, layer in named.items():
                w = layer.weight
                if method == "magnitude":
                    new = prune_magnitude(w.data, sparsity)
                elif method == "wanda":
                    new = prune_wanda(w.data, stats[name].stat, sparsity)
                else:
                    new = prune_sparsegpt(w.data.cpu(), stats[name].stat, sparsity).to(w.device)
                w.data.copy_(new)
                pruned += int((new == 0).sum())
                total += new.numel()
        logger.info("pruned block %d/%d (%s %s)", b + 1, len(blocks), method, sparsity.label)
    report = PruneReport(method, sparsity.label, len(layers), pruned, total, len(calibration_texts), tokens)
    if not math.isclose(report.achieved, sparsity.ratio, abs_tol=0.01):
        logger.warning("asked for %.3f sparsity, reached %.3f", sparsity.ratio, report.achieved)
    return report


def sparsity_of(backbone: nn.Module) -> float:
    """Fraction of exact zeros over the Linear weights of the transformer blocks."""
    zeros = total = 0
    for block in transformer_blocks(backbone):
        for mod in block.modules():
            if isinstance(mod, nn.Linear):
                zeros += int((mod.weight == 0).sum())
                total += mod.weight.numel()
    return zeros / max(1, total)
