"""sentence-transformers packaging: ``SentenceTransformer(dir)`` on an nvembed export (nvembed installed).

One input module does tokenisation, backbone, pooling and normalisation, so the vectors are those of
``Embedder.encode`` by construction. sentence-transformers >= 6 hands the prompt to ``preprocess`` separately
(``prompt=``), so the instruction boundary is computed exactly as in :mod:`nvembed.tokenization`; the released
NV-Embed-v2 ST path instead concatenated prompt and text, then ST's ``strip()`` and ``len - 1`` leaked the last
instruction token into the pool (spec §1.5). The query instruction is stored as the ``"query"`` prompt
(already templated: ``Instruct: ...\\nQuery: ``) and documents get the empty ``"document"`` prompt. A model loaded
from a sentence-transformers folder keeps that folder's prompts (raw prefixes) and their pooling
(``include_prompt``), see :meth:`NVEmbedSTModule.pools`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from sentence_transformers.base.modules.input_module import InputModule


class NVEmbedSTModule(InputModule):
    """The whole nvembed model as one sentence-transformers input module."""

    save_in_root = True
    config_keys = ["max_seq_length"]

    def __init__(self, embedder, max_seq_length: int = 512) -> None:
        super().__init__()
        self.embedder = embedder
        self.model = embedder.model  # registered, so SentenceTransformer.to(device) moves it
        self.max_seq_length = max_seq_length

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs: Any) -> NVEmbedSTModule:
        from nvembed.embedder import Embedder

        folder = Path(model_name_or_path) / subfolder
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            folder = (
                Path(
                    snapshot_download(
                        model_name_or_path,
                        revision=kwargs.get("revision"),
                        token=kwargs.get("token"),
                        cache_dir=kwargs.get("cache_folder"),
                        local_files_only=kwargs.get("local_files_only", False),
                    )
                )
                / subfolder
            )
        embedder = Embedder.from_pretrained(folder)
        return cls(embedder, max_seq_length=embedder.config.model.max_length)

    def preprocess(self, inputs, prompt: str | None = None, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Tokenise like ``Embedder.encode``: an nvembed instruction prefix is kept out of the pool; a prompt of a
        model that came from a sentence-transformers folder is pooled when that folder's ``include_prompt`` was
        True (as its own ``Pooling`` module did)."""
        texts = [x if isinstance(x, str) else str(x) for x in inputs]
        if prompt and self.pools(prompt):
            texts, prompt = [prompt + t for t in texts], ""
        ids, starts = self.embedder.inputs.tokenize(texts, prompt or "", self.max_seq_length)
        return self.embedder.inputs.pad(ids, starts)

    def pools(self, prompt: str) -> bool:
        """Whether ``prompt`` is part of the pooled text: never for nvembed's own models (``pool_prompts`` None)
        or for the templated query instruction, else as the source folder's ``include_prompt`` said."""
        emb = self.embedder
        if not emb.pool_prompts:
            return False
        return not (emb.query_instruction and prompt == emb.inputs.format_instruction(emb.query_instruction))

    def forward(self, features: dict[str, torch.Tensor], **kwargs: Any) -> dict[str, torch.Tensor]:
        features["sentence_embedding"] = self.model(
            features["input_ids"], features["attention_mask"], features["pool_mask"]
        )
        return features

    def get_sentence_embedding_dimension(self) -> int:
        return self.embedder.dim

    def get_embedding_dimension(self) -> int:
        return self.embedder.dim

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        self.embedder._write(Path(output_path), merge_lora=False)
