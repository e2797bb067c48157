"""LoRA on the backbone through peft (spec §2.2: r 16, alpha 32, dropout 0.1; targets not published)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def apply_lora(
    backbone: nn.Module,
    rank: int = 16,
    alpha: int = 32,
    dropout: float = 0.1,
    target_modules: Sequence[str] | str = "all-linear",
) -> nn.Module:
    """Wrap ``backbone`` in a ``PeftModel``: base weights frozen, adapters trainable.

    ``"all-linear"`` targets every Linear layer of the LLM (q, k, v, o, gate, up, down for Mistral), the common
    choice for Mistral embedders; the NV-Embed paper does not list its targets (spec §2.2).
    """
    from peft import LoraConfig, get_peft_model

    if not isinstance(target_modules, str):
        target_modules = list(target_modules)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules, bias="none")
    return get_peft_model(backbone, config)


def is_peft(module: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(module, PeftModel)


def base_state_dict(backbone: nn.Module) -> dict:
    """The backbone's weights under plain transformers names, without adapter tensors.

    For a ``PeftModel`` the wrapped layers keep their original weight under ``.base_layer.``; strip that and the
    ``lora_`` tensors so the result loads into a plain ``AutoModel``.
    """
    if not is_peft(backbone):
        return backbone.state_dict()
    model = backbone.get_base_model()
    out = {}
    for key, value in model.state_dict().items():
        if "lora_" in key:
            continue
        out[key.replace(".base_layer.", ".")] = value
    return out


def trainable_report(model: nn.Module) -> dict[str, int]:
    """Counts of trainable and total parameters, for logs and tests."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total}
