"""Weight-only quantization of an embedder's backbone: int8 per output channel, int4 per group (issue 16).

Round-to-nearest, symmetric: ``scale = max|W| / qmax`` per output row (int8) or per group of ``group_size``
consecutive inputs of a row (int4), ``q = round(W / scale)`` clipped to ``[-qmax, qmax]``. Activations stay in
floating point (weight-only), so what changes the embeddings is exactly the rounding of the weights; the model keeps
``W = q * scale`` in its own dtype, which any loader (nvembed, sentence-transformers, transformers) reads without
custom code. :func:`packed_bytes` gives the size the codes and scales take in a compact serialisation (int8: one
byte per weight; int4: half a byte; one fp16 scale per row / group), the number the compression table reports as
weight bytes.

Why not torchao / compressed-tensors here: their int4 kernels are CUDA-only (torchao's CPU layout needs a CPU build
with the matching ops) and their serialised formats need their loader at read time, while an export must load in
plain sentence-transformers. Round-to-nearest is a few lines; GPTQ/AWQ are not implemented (say so, not approximate).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nvembed.pruning import transformer_blocks

SCHEMES = {"int8": 8, "int4": 4}


@dataclass(frozen=True)
class QuantReport:
    scheme: str
    group_size: int | None
    layers: int
    weights: int
    packed_bytes: int  # codes + fp16 scales of the quantized layers
    float_bytes: int  # the same layers in their float dtype

    @property
    def ratio(self) -> float:
        return self.packed_bytes / max(1, self.float_bytes)


def quantize_weight(weight: torch.Tensor, bits: int, group_size: int | None = None) -> torch.Tensor:
    """Quantize-dequantize ``[out, in]`` (symmetric RTN); per row, or per ``group_size`` inputs of a row."""
    out_features, in_features = weight.shape
    qmax = 2 ** (bits - 1) - 1
    w = weight.detach().float()
    if group_size:
        w = w.reshape(out_features, in_features // group_size, group_size)  # [out, groups, g]
    scale = w.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / qmax  # [out, 1] or [out, groups, 1]
    q = torch.round(w / scale).clamp_(-qmax, qmax)
    return (q * scale).reshape(out_features, in_features).to(weight.dtype)


def check_quantizable(backbone: nn.Module, scheme: str, group_size: int | None) -> list[nn.Linear]:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown weight quantization {scheme!r}; one of {', '.join(SCHEMES)}")
    layers = [m for block in transformer_blocks(backbone) for m in block.modules() if isinstance(m, nn.Linear)]
    if group_size is not None:
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        bad = [m.in_features for m in layers if m.in_features % group_size]
        if bad:
            raise ValueError(f"group_size {group_size} does not divide a layer's input width ({bad[0]})")
    return layers


def quantize_backbone(backbone: nn.Module, scheme: str, group_size: int | None = None) -> QuantReport:
    """Quantize the Linear weights of the transformer blocks in place (embeddings and the head stay float).

    int4 defaults to groups of 128 inputs (or the whole row when 128 does not divide it); int8 is per row.
    """
    bits = SCHEMES.get(scheme)
    if scheme == "int4" and group_size is None:
        widths = {
            m.in_features for block in transformer_blocks(backbone) for m in block.modules() if isinstance(m, nn.Linear)
        }
        group_size = 128 if all(w % 128 == 0 for w in widths) else None
    layers = check_quantizable(backbone, scheme, group_size)
    weights = packed = floats = 0
    with torch.no_grad():
        for layer in layers:
            w = layer.weight
            w.data.copy_(quantize_weight(w.data, bits, group_size))
            n = w.numel()
            scales = w.shape[0] * (w.shape[1] // group_size if group_size else 1)
            weights += n
            packed += n * bits // 8 + 2 * scales
            floats += n * w.element_size()
    return QuantReport(scheme, group_size, len(layers), weights, packed, floats)
