"""Files that make an nvembed export loadable by sentence-transformers, and its model card.

No sentence-transformers import here: an export is written by nvembed alone.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from nvembed.config import to_dict
from nvembed.model_card import ModelCard

ST_CLASS = "nvembed.st_module.NVEmbedSTModule"
MODEL_CARD = "README.md"


def export_prompts(embedder) -> dict[str, str]:
    """The ``prompts`` of ``config_sentence_transformers.json``.

    The folder's own sentence-transformers prompts (raw prefixes, for a model that came from an ST folder) are
    kept; ``"query"`` is the templated query instruction when one is set (``Instruct: ...\\nQuery: ``),
    ``"document"`` is empty unless the folder had one.
    """
    prompts = dict(embedder.prompts)
    if embedder.query_instruction or "query" not in prompts:
        prompts["query"] = embedder.inputs.format_instruction(embedder.query_instruction)
    prompts.setdefault("document", "")
    return prompts


def write_sentence_transformers_files(folder: Path, embedder) -> None:
    """``modules.json`` + ``config_sentence_transformers.json`` + ``sentence_bert_config.json``."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": ST_CLASS}]
    (folder / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    st_config = {
        "model_type": "SentenceTransformer",
        "prompts": export_prompts(embedder),
        "default_prompt_name": embedder.default_prompt_name,
        "similarity_fn_name": "cosine",
    }
    (folder / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2) + "\n")
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": embedder.config.model.max_length}, indent=2) + "\n"
    )


def build_model_card(embedder, card: ModelCard | None, cfg, name: str) -> ModelCard:
    """``card`` (what the caller knows: training, data, scores) completed with what the model knows.

    Args:
        embedder: the model being saved.
        card: the caller's card, or ``None``; its fields win over derived ones (e.g. the LoRA settings of a
            training run whose adapters were merged before saving).
        cfg: the configuration written with the export (``lora.enabled`` is False in a merged export).
        name: the export folder's name, the default ``model_id`` of the loading snippets.
    """
    lora = to_dict(embedder.config.lora)
    if lora["enabled"] and not cfg.lora.enabled:
        lora["merged"] = True  # trained with LoRA, exported with the adapters folded into the weights
    facts = {
        "model_id": name,
        "base_model": embedder.base_model,
        "pooling": to_dict(cfg.pooling),
        "lora": lora,
        "dim": embedder.dim,
        "max_length": cfg.model.max_length,
        "instruction_template": cfg.model.instruction_template,
        "instruction_policy": cfg.model.instruction_policy,
        "query_instruction": embedder.query_instruction,
        "prompts": dict(embedder.prompts) or None,
    }
    return _complete(card, facts)


def _complete(card: ModelCard | None, facts: dict) -> ModelCard:
    card = dataclasses.replace(card) if card is not None else ModelCard()
    for key, value in facts.items():
        if getattr(card, key) is None:
            setattr(card, key, value)
    return card


def update_model_card(folder: str | Path, card) -> Path:
    """Add metadata to an existing export's card without loading the model (e.g. the evaluation table once the
    evaluation of a saved model has finished): fields set in ``card`` replace the stored ones, ``README.md`` is
    rendered again. ``card`` is a :class:`ModelCard` or a dict of some of its fields.

    Returns the path of ``README.md``. Raises ``FileNotFoundError`` if ``folder`` is not an nvembed export.
    """
    from nvembed.embedder import NVEMBED_CONFIG

    folder = Path(folder)
    meta_file = folder / NVEMBED_CONFIG
    if not meta_file.is_file():
        raise FileNotFoundError(f"{folder}: not an nvembed export (no {NVEMBED_CONFIG})")
    meta = json.loads(meta_file.read_text())
    stored = dict(meta.get("card") or {})
    given = card.to_dict() if isinstance(card, ModelCard) else dict(card)
    defaults = ModelCard().to_dict()
    stored.update({k: v for k, v in given.items() if v != defaults.get(k, object())})
    merged = ModelCard.from_dict(stored)
    meta["card"] = merged.to_dict()
    tmp = meta_file.with_name(f".{meta_file.name}.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(meta_file)  # atomic: a crash leaves the old file, never half of one
    config = meta.get("config", {})
    lora = dict(config.get("lora") or {})
    facts = {
        "model_id": folder.resolve().name,
        "base_model": meta.get("base_model") or config.get("model", {}).get("name_or_path"),
        "pooling": config.get("pooling"),
        "lora": lora or None,
        "dim": meta.get("embedding_dim"),
        "max_length": config.get("model", {}).get("max_length"),
        "instruction_template": config.get("model", {}).get("instruction_template"),
        "instruction_policy": config.get("model", {}).get("instruction_policy"),
        "query_instruction": meta.get("query_instruction"),
        "prompts": meta.get("prompts") or None,
    }
    write_model_card(folder, _complete(merged, facts))
    return folder / MODEL_CARD


def write_model_card(folder: Path, card: ModelCard) -> None:
    """``README.md``: the rendered card (hub front matter + usage + training + evaluation)."""
    (folder / MODEL_CARD).write_text(card.render(), encoding="utf-8")
