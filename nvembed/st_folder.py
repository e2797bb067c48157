"""Read a sentence-transformers folder's own pipeline, so that loading it means loading *that* model.

A sentence-transformers (ST) folder is a transformers backbone plus ``modules.json``, which lists the modules
``SentenceTransformer(folder)`` runs: ``Transformer`` (tokenise + backbone, ``sentence_bert_config.json``),
``Pooling`` (``1_Pooling/config.json``) and, for most published models, ``Normalize``. ``Embedder.from_pretrained``
used to ignore all of it and add a freshly initialised latent-attention head, so ``all-MiniLM-L6-v2`` came out
up to 0.08 away from ``SentenceTransformer(folder).encode`` (docs/bugs.md, 2026-12-01).

This module only *reads* the folder (no sentence-transformers import): it returns what nvembed needs to rebuild
the same pipeline (pooling kind, normalisation, truncation length, prompts) and lists whatever nvembed cannot
reproduce (a ``Dense`` layer, max pooling, several pooling modes concatenated, ``do_lower_case``), so the caller
can refuse rather than return different vectors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODULES_FILE = "modules.json"

# ST pooling modes -> nvembed pooling kinds (the three nvembed can compute exactly).
_POOLING_KINDS = {"mean": "mean", "cls": "cls", "lasttoken": "last"}
# ST < 5 config keys (``1_Pooling/config.json`` of models saved before ST 5), in ST's concatenation order.
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# Module class names as written in modules.json by ST 2-6 (``sentence_transformers.models.Pooling`` or
# ``sentence_transformers.sentence_transformer.modules.pooling.Pooling``): matched on the class name only.
_TRANSFORMER, _POOLING, _NORMALIZE = "Transformer", "Pooling", "Normalize"
# What ST's Transformer reads its settings from (the first that exists; older per-architecture names too).
_TRANSFORMER_CONFIGS = (
    "sentence_bert_config.json",
    "sentence_roberta_config.json",
    "sentence_distilbert_config.json",
    "sentence_camembert_config.json",
    "sentence_albert_config.json",
    "sentence_xlm-roberta_config.json",
    "sentence_xlnet_config.json",
)
# Tokenisers without a configured limit report a huge model_max_length (int(1e30)); not a real limit.
_NO_LIMIT = 1_000_000


@dataclass
class SentenceTransformersFolder:
    """What ``SentenceTransformer(folder)`` would run, in nvembed's terms.

    Attributes:
        folder: the ST folder.
        backbone_path: where the transformers model and tokenizer are (the folder itself, or ``0_Transformer/``
            for old layouts).
        pooling: nvembed pooling kind (``mean``, ``cls``, ``last``); ``None`` when the folder's pooling cannot be
            reproduced (see ``problems``).
        normalize: a ``Normalize`` module follows the pooling.
        max_seq_length: ST's truncation length (tokens, specials included), or ``None`` if the folder sets none.
        include_prompt: ST pools the prompt tokens too (``Pooling.include_prompt``, True unless the folder says
            otherwise). nvembed's own instructions are never pooled; ST prompts follow this flag.
        prompts: raw prefixes by name from ``config_sentence_transformers.json`` (``{"query": "query: "}``).
        default_prompt_name: the prompt ST applies when ``encode`` gets none.
        problems: features of the pipeline nvembed cannot reproduce; empty when the vectors will match.
    """

    folder: Path
    backbone_path: Path
    pooling: str | None
    normalize: bool
    max_seq_length: int | None
    include_prompt: bool = True
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    problems: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line for logs: ``mean pooling, normalised, max_seq_length 256``."""
        parts = [f"{self.pooling or '?'} pooling", "normalised" if self.normalize else "not normalised"]
        if self.max_seq_length:
            parts.append(f"max_seq_length {self.max_seq_length}")
        return ", ".join(parts)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable sentence-transformers file: {err}") from err
    return data if isinstance(data, dict) else {}


def _pooling_modes(config: dict[str, Any]) -> list[str]:
    """ST's active pooling modes; ST 5+ writes ``pooling_mode``, older versions one boolean per mode."""
    mode = config.get("pooling_mode")
    if mode is not None:
        return [mode] if isinstance(mode, str) else list(mode)
    modes = [m for key, m in _LEGACY_POOLING_KEYS.items() if config.get(key)]
    return modes or ["mean"]  # ST's own fallback when no mode is set


def _max_seq_length(st_config: dict[str, Any], backbone: Path) -> int | None:
    """ST's truncation length: ``max_seq_length`` in sentence_bert_config.json (ST < 6) or the processor's
    ``model_max_length`` there, else the saved tokenizer's ``model_max_length`` (where ST 6 stores it) capped at
    the model's ``max_position_embeddings``, exactly as ST's ``Transformer`` resolves it."""
    if isinstance(st_config.get("max_seq_length"), int):
        return st_config["max_seq_length"]
    for key in ("processor_kwargs", "tokenizer_args"):
        value = (st_config.get(key) or {}).get("model_max_length")
        if isinstance(value, int):
            return value
    tok = backbone / "tokenizer_config.json"
    limit = _read_json(tok).get("model_max_length") if tok.is_file() else None
    cfg = backbone / "config.json"
    positions = _read_json(cfg).get("max_position_embeddings") if cfg.is_file() else None
    if isinstance(limit, int | float) and limit < _NO_LIMIT:
        limit = int(limit)
        if isinstance(positions, int) and positions > 0:
            limit = min(limit, positions)
        return limit
    return positions if isinstance(positions, int) and positions > 0 else None


def read_sentence_transformers_folder(folder: str | Path) -> SentenceTransformersFolder | None:
    """The ST pipeline of ``folder``, or ``None`` if it has no ``modules.json`` (not an ST folder).

    Raises:
        ValueError: ``modules.json`` or a module config is unreadable.
    """
    folder = Path(folder)
    modules_file = folder / MODULES_FILE
    if not modules_file.is_file():
        return None
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{modules_file}: unreadable: {err}") from err
    if not isinstance(modules, list):
        raise ValueError(f"{modules_file}: expected a list of modules, got {type(modules).__name__}")
    problems: list[str] = []
    backbone = folder
    st_config: dict[str, Any] = {}
    pooling: str | None = None
    include_prompt = True
    normalize = False
    seen: list[str] = []
    for module in sorted(modules, key=lambda m: m.get("idx", 0)):
        cls_name = str(module.get("type", "")).rsplit(".", 1)[-1]
        sub = folder / module.get("path", "")
        seen.append(cls_name)
        if cls_name == _TRANSFORMER and len(seen) == 1:
            backbone = sub
            for name in _TRANSFORMER_CONFIGS:
                if (sub / name).is_file():
                    st_config = _read_json(sub / name)
                    break
            if st_config.get("do_lower_case"):
                problems.append("the Transformer module lower-cases inputs (do_lower_case: true)")
            task = st_config.get("transformer_task", "feature-extraction")
            if task != "feature-extraction":
                problems.append(f"the Transformer module runs transformer_task {task!r}")
        elif cls_name == _POOLING and seen[:-1] == [_TRANSFORMER]:
            config = _read_json(sub / "config.json") if (sub / "config.json").is_file() else {}
            modes = _pooling_modes(config)
            include_prompt = bool(config.get("include_prompt", True))
            if len(modes) != 1:
                problems.append(f"the Pooling module concatenates {len(modes)} poolings ({'+'.join(modes)})")
            elif modes[0] not in _POOLING_KINDS:
                problems.append(f"the Pooling module uses {modes[0]!r} pooling (nvembed has mean, cls, lasttoken)")
            else:
                pooling = _POOLING_KINDS[modes[0]]
        elif cls_name == _NORMALIZE and seen[:-1] == [_TRANSFORMER, _POOLING]:
            config = _read_json(sub / "config.json") if (sub / "config.json").is_file() else {}
            if config.get("module_input_name", "sentence_embedding") != "sentence_embedding":
                problems.append("the Normalize module normalises token embeddings")
            normalize = True
        else:
            problems.append(f"module {module.get('type')!r} at position {len(seen) - 1}")
    if not seen or seen[0] != _TRANSFORMER:
        problems.append("the first module is not a Transformer")
    elif _POOLING not in seen:
        problems.append("there is no Pooling module (the folder yields token embeddings)")
    st_model = folder / "config_sentence_transformers.json"
    meta = _read_json(st_model) if st_model.is_file() else {}
    prompts = {str(k): str(v) for k, v in (meta.get("prompts") or {}).items()}
    default_prompt_name = meta.get("default_prompt_name")
    if default_prompt_name is not None and default_prompt_name not in prompts:
        problems.append(f"default_prompt_name {default_prompt_name!r} is not one of its prompts {sorted(prompts)}")
    return SentenceTransformersFolder(
        folder=folder,
        backbone_path=backbone,
        pooling=pooling,
        normalize=normalize,
        max_seq_length=_max_seq_length(st_config, backbone),
        include_prompt=include_prompt,
        prompts=prompts,
        default_prompt_name=default_prompt_name,
        problems=problems,
    )
