"""Files that make an nvembed export loadable by sentence-transformers (no sentence-transformers import here)."""

from __future__ import annotations

import json
from pathlib import Path

ST_CLASS = "nvembed.st_module.NVEmbedSTModule"


def write_sentence_transformers_files(folder: Path, embedder) -> None:
    """``modules.json`` + ``config_sentence_transformers.json`` next to an nvembed export."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": ST_CLASS}]
    (folder / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    prompts = {"query": embedder.inputs.format_instruction(embedder.query_instruction), "document": ""}
    st_config = {
        "model_type": "SentenceTransformer",
        "prompts": prompts,
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    }
    (folder / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2) + "\n")
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": embedder.config.model.max_length}, indent=2) + "\n"
    )
