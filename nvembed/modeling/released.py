"""Load the released NV-Embed-v2 checkpoint without the hub's remote code.

The release (``nvidia/NV-Embed-v2``) stores one ``NVEmbedModel`` whose state dict has two prefixes:
``embedding_model.`` (a ``MistralModel``, config ``text_config`` of model type ``bidir_mistral``) and
``latent_attention_model.`` (config ``latent_attention_config``). Its pooling block is built from generic
``PreNorm``/``Attention``/``FeedForward`` modules, hence the names on the left below:

=======================================================================  =====================================
released name (``latent_attention_model.`` prefix)                       nvembed name (``pooler.``)
=======================================================================  =====================================
``latents``                                                              ``latents``
``cross_attend_blocks.0.norm.{weight,bias}``                             ``norm_q.{weight,bias}``
``cross_attend_blocks.0.norm_context.{weight,bias}``                     ``norm_latents.{weight,bias}``
``cross_attend_blocks.0.fn.to_q.weight``                                 ``cross_attn.to_q.weight``
``cross_attend_blocks.0.fn.to_kv.weight``                                ``cross_attn.to_kv.weight``
``cross_attend_blocks.0.fn.to_out.weight``                               ``cross_attn.to_out.weight``
``cross_attend_blocks.1.norm.{weight,bias}``                             ``norm_ff.{weight,bias}``
``cross_attend_blocks.1.fn.net.0.{weight,bias}``                         ``ff.proj_in.{weight,bias}``
``cross_attend_blocks.1.fn.net.2.{weight,bias}``                         ``ff.proj_out.{weight,bias}``
=======================================================================  =====================================

``embedding_model.X`` maps to the backbone's ``X`` unchanged (``MistralModel`` names). The tensors are loaded as
they are: same shapes, same K-then-V split of ``to_kv``, same value-then-gate split of the GEGLU input.

Usage: ``Embedder.from_pretrained("/path/to/NV-Embed-v2")`` on a folder holding the release's ``config.json``,
``model-0000x-of-0000y.safetensors`` (+ index) and tokenizer files.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from nvembed.config import EmbedderConfig

BACKBONE_PREFIX = "embedding_model."
POOLER_PREFIX = "latent_attention_model."

POOLER_RENAMES: dict[str, str] = {
    "latents": "latents",
    "cross_attend_blocks.0.norm.weight": "norm_q.weight",
    "cross_attend_blocks.0.norm.bias": "norm_q.bias",
    "cross_attend_blocks.0.norm_context.weight": "norm_latents.weight",
    "cross_attend_blocks.0.norm_context.bias": "norm_latents.bias",
    "cross_attend_blocks.0.fn.to_q.weight": "cross_attn.to_q.weight",
    "cross_attend_blocks.0.fn.to_kv.weight": "cross_attn.to_kv.weight",
    "cross_attend_blocks.0.fn.to_out.weight": "cross_attn.to_out.weight",
    "cross_attend_blocks.1.norm.weight": "norm_ff.weight",
    "cross_attend_blocks.1.norm.bias": "norm_ff.bias",
    "cross_attend_blocks.1.fn.net.0.weight": "ff.proj_in.weight",
    "cross_attend_blocks.1.fn.net.0.bias": "ff.proj_in.bias",
    "cross_attend_blocks.1.fn.net.2.weight": "ff.proj_out.weight",
    "cross_attend_blocks.1.fn.net.2.bias": "ff.proj_out.bias",
}

#: ``LatentAttentionConfig`` defaults of the release (its config.json stores none of them; spec §1.2).
LATENT_DEFAULTS = {"num_latents_value": 512, "num_cross_heads": 8, "cross_dim_head": 4096, "output_normalize": True}


def split_released_state_dict(
    state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Released names -> (backbone state dict, pooler state dict) under nvembed names.

    Raises:
        KeyError: a tensor name that belongs to neither part, or a pooler name not in :data:`POOLER_RENAMES`.
    """
    backbone, pooler = {}, {}
    for name, tensor in state.items():
        if name.startswith(BACKBONE_PREFIX):
            backbone[name[len(BACKBONE_PREFIX) :]] = tensor
        elif name.startswith(POOLER_PREFIX):
            rest = name[len(POOLER_PREFIX) :]
            if rest not in POOLER_RENAMES:
                raise KeyError(f"unexpected latent-attention tensor {name!r} in the NV-Embed checkpoint")
            pooler[POOLER_RENAMES[rest]] = tensor
        else:
            raise KeyError(f"tensor {name!r} is neither under {BACKBONE_PREFIX!r} nor {POOLER_PREFIX!r}")
    missing = set(POOLER_RENAMES.values()) - set(pooler)
    if missing:
        raise KeyError(f"NV-Embed checkpoint lacks latent-attention tensors: {sorted(missing)}")
    return backbone, pooler


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    )
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(folder / name)))
    return state


def _materialise_buffers(model: torch.nn.Module) -> None:
    """Rebuild modules whose non-persistent buffers (rotary ``inv_freq``) are still on the meta device."""
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if any(b.is_meta for b in child.buffers(recurse=False)) and hasattr(child, "inv_freq"):
                setattr(parent, child_name, type(child)(config=model.config))
    leftovers = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftovers:
        raise RuntimeError(f"tensors not found in the NV-Embed checkpoint: {leftovers[:5]}")


def load_released_nvembed(folder: Path, cfg: EmbedderConfig):
    """Build ``(NVEmbedModel, tokenizer, EmbedderConfig)`` from a released NV-Embed-v2 folder."""
    from transformers import AutoConfig, AutoModel

    from nvembed.modeling.builders import build_pooler, build_tokenizer, maybe_apply_lora, prepare_backbone
    from nvembed.modeling.embedder import NVEmbedModel

    raw = json.loads((folder / "config.json").read_text())
    text = dict(raw["text_config"])
    text.pop("model_type", None)  # "bidir_mistral": a MistralConfig plus the remote-code class
    for key in ("architectures", "_name_or_path", "auto_map"):
        text.pop(key, None)
    latent = {**LATENT_DEFAULTS, **raw.get("latent_attention_config", {})}
    dtype_name = text.pop("torch_dtype", None) or text.pop("dtype", None) or raw.get("torch_dtype") or "float32"
    dtype = getattr(torch, dtype_name) if cfg.model.dtype == "auto" else getattr(torch, cfg.model.dtype)

    pooling = dataclasses.replace(
        cfg.pooling,
        kind="latent",
        num_latents=int(latent["num_latents_value"]),
        num_heads=int(latent["num_cross_heads"]),
        head_dim=int(latent["cross_dim_head"]),
        normalize=bool(latent["output_normalize"]),
    )
    cfg = dataclasses.replace(cfg, pooling=pooling)
    mistral_cfg = AutoConfig.for_model("mistral", **text)
    if cfg.model.attn_implementation:
        mistral_cfg._attn_implementation = cfg.model.attn_implementation
    with torch.device("meta"):
        backbone = AutoModel.from_config(mistral_cfg, dtype=dtype)
    backbone_sd, pooler_sd = split_released_state_dict(_read_safetensors(folder))
    backbone.load_state_dict({k: v.to(dtype) for k, v in backbone_sd.items()}, strict=True, assign=True)
    _materialise_buffers(backbone)
    prepare_backbone(backbone, cfg.model)
    pooler = build_pooler(cfg.pooling, mistral_cfg.hidden_size)
    pooler.load_state_dict(pooler_sd, strict=True)
    pooler.to(dtype)
    model = NVEmbedModel(maybe_apply_lora(backbone, cfg.lora), pooler)
    return model, build_tokenizer(str(folder)), cfg
