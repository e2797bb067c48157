"""Make a loaded Hugging Face decoder attend bidirectionally (NV-Embed §3.1, spec §1.1, pitfall 7).

NV-Embed removes the causal mask during contrastive training. The released code does it by copying
``MistralModel.forward``; we do it surgically on the loaded model instead, so no modeling file is vendored and
new transformers releases keep working (DESIGN.md §3, rule 9; tevatron's ``bidirectional.py`` pattern).

In transformers >= 5, ``merge_with_config_defaults`` forwards ``config.is_causal`` both to the mask factory
(``create_causal_mask`` falls back to ``create_bidirectional_mask`` when it is False) and to every attention
kernel (eager, SDPA, flash, flex honour the ``is_causal`` kwarg). We set it, clear ``is_causal`` on each attention
module as a second guard, and remove every sliding window: with ``is_causal=False`` a window would silently turn
into a *bidirectional* band (|i - j| < window) instead of full attention (tests/unit/test_bidirectional.py).

Only allow-listed architectures are patched; anything else decoder-only fails loudly, because a model whose
masking code we have not checked could stay causal without any error.
"""

from __future__ import annotations

from torch import nn

#: Decoder-only model types whose masking path has been checked (tests/unit/test_bidirectional.py).
SUPPORTED_DECODERS: tuple[str, ...] = ("mistral", "llama", "qwen2", "qwen3")

_MARKER = "nvembed_bidirectional"


class UnsupportedBackboneError(ValueError):
    """Raised for a decoder-only architecture that is not on the allow-list."""


def is_decoder_only(config) -> bool:
    """True when ``config.model_type`` is a causal LM with no masked-LM head (BERT has both, GPT/Mistral only one)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None)
    if model_type in SUPPORTED_DECODERS:
        return True
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(getattr(m, "is_causal", None), bool)]


def make_bidirectional(model: nn.Module) -> nn.Module:
    """Turn a loaded decoder-only backbone bidirectional, in place; idempotent.

    Args:
        model: a transformers ``PreTrainedModel`` (e.g. ``MistralModel`` from ``AutoModel``).

    Returns:
        The same model, now attending to every real (non-padding) token in both directions.

    Raises:
        UnsupportedBackboneError: the model is decoder-only but its type is not in :data:`SUPPORTED_DECODERS`.
        RuntimeError: the model does not have one attention module per layer (its code changed under us).
    """
    config = model.config
    model_type = getattr(config, "model_type", None)
    if not is_decoder_only(config):
        return model  # encoder (BERT-style): already bidirectional, passes through unchanged
    if model_type not in SUPPORTED_DECODERS:
        raise UnsupportedBackboneError(
            f"model_type {model_type!r} is a decoder-only architecture that nvembed cannot make bidirectional; "
            f"supported decoder types: {', '.join(SUPPORTED_DECODERS)} (encoders such as BERT need no change)"
        )
    # No early return on the marker: a model reloaded from a saved config has the marker but fresh attention
    # modules, so every step below is re-applied (each is idempotent).
    config.is_causal = False
    config.use_cache = False
    if hasattr(config, "sliding_window"):
        config.sliding_window = None
    if hasattr(config, "use_sliding_window"):
        config.use_sliding_window = False
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = ["full_attention"] * len(config.layer_types)
    if hasattr(model, "has_sliding_layers"):  # Qwen2 caches this at construction
        model.has_sliding_layers = False

    attention = _attention_modules(model)
    expected = config.num_hidden_layers
    if len(attention) != expected:
        raise RuntimeError(
            f"expected {expected} attention modules with an `is_causal` flag in {type(model).__name__}, "
            f"found {len(attention)}; the transformers modeling code changed, refusing to guess"
        )
    for module in attention:
        module.is_causal = False
        if hasattr(module, "sliding_window"):
            module.sliding_window = None
    setattr(config, _MARKER, True)
    return model


def is_bidirectional(model: nn.Module) -> bool:
    """Whether :func:`make_bidirectional` has been applied (or the model is an encoder)."""
    return not is_decoder_only(model.config) or bool(getattr(model.config, _MARKER, False))
