"""mteb encoders: nvembed models with NV-Embed's per-task instructions, and plain sentence-transformers baselines.

Instruction placement (spec §3): retrieval and reranking put the task instruction on the query side only
(QuoraRetrieval on both); every other task type (mteb passes ``prompt_type=None``) encodes every text with it.

The :class:`ModelMeta` name and revision change with the checkpoint's contents **and** with the instruction set,
so mteb's result cache never silently serves a result computed under another configuration.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mteb.models.abs_encoder import AbsEncoder
from mteb.types import PromptType

from nvembed.data.instructions import REGISTRY, UnknownTaskError, get_instruction, policy_applies

TYPE_FALLBACK = {
    "Retrieval": "Given a query, retrieve relevant documents that answer the query",
    "Reranking": "Given a query, retrieve relevant documents that answer the query",
    "STS": "Retrieve semantically similar text.",
    "Summarization": "Given a news summary, retrieve other semantically similar summaries",
    "PairClassification": "Retrieve text that is semantically similar to the given text",
    "Classification": "Classify the given text",
    "Clustering": "Identify the topic or theme of the given text",
}


def task_instruction(
    task_name: str,
    task_type: str,
    prompt_type: PromptType | None,
    overrides: dict[str, str] | None = None,
    policy: str = "all",
) -> str | None:
    """The instruction an nvembed model gets for one side of a task: ``None`` for retrieval/reranking documents,
    and for every task type the model's ``instruction_policy`` leaves uninstructed. As in training, the policy
    decides *whether* a task type is instructed and an override only chooses the text.

    A pure function of names (no model), so the driver can key the embedding cache the way an actor encodes.
    """
    overrides = overrides or {}
    if not policy_applies(policy, task_type):
        return None
    if task_name in overrides:
        text, documents = overrides[task_name], task_type not in ("Retrieval", "Reranking")
    else:
        try:
            entry = get_instruction(task_name)
            text, documents = entry.instruction, entry.documents
        except UnknownTaskError:
            text = TYPE_FALLBACK.get(task_type, TYPE_FALLBACK["Retrieval"])
            documents = task_type not in ("Retrieval", "Reranking")
    if prompt_type == PromptType.document and not documents:
        return None
    return text


def folder_fingerprint(path: str | Path) -> str:
    """Hash of a model folder's config and weight files (sizes + first/last MiB), cheap even for 15 GB."""
    path = Path(path)
    h = hashlib.sha1()
    if not path.is_dir():
        h.update(str(path).encode())
        return h.hexdigest()[:12]
    for f in sorted(path.rglob("*")):
        if not f.is_file() or f.suffix not in (".json", ".safetensors", ".bin", ".model", ".txt"):
            continue
        h.update(str(f.relative_to(path)).encode())
        size = f.stat().st_size
        h.update(str(size).encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))
            if size > 2 << 20:
                fh.seek(-(1 << 20), 2)
                h.update(fh.read())
    return h.hexdigest()[:12]


def instruction_fingerprint(overrides: dict[str, str] | None = None, template: str = "", policy: str = "all") -> str:
    table = {k: (v.instruction, v.documents) for k, v in REGISTRY.items()}
    blob = {"registry": table, "overrides": overrides or {}, "template": template}
    if policy != "all":  # under "all" the blob is the one the registry alone gives
        blob["policy"] = policy
    blob = json.dumps(blob, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:8]


def make_meta(name: str, revision: str, embed_dim: int | None, max_tokens: int | None, n_parameters: int | None):
    import mteb

    base = mteb.get_model_meta("sentence-transformers/all-MiniLM-L6-v2")
    return base.model_copy(
        update=dict(
            name=name,
            revision=revision,
            loader=None,
            loader_kwargs={},
            release_date=None,
            n_parameters=n_parameters,
            memory_usage_mb=None,
            max_tokens=max_tokens,
            embed_dim=embed_dim,
            license=None,
            open_weights=True,
            public_training_code=None,
            public_training_data=None,
            reference=None,
            use_instructions=True,
            training_datasets=None,
            adapted_from=None,
            citation=None,
        )
    )


class NVEmbedEncoder(AbsEncoder):
    """An :class:`nvembed.Embedder` for ``mteb.evaluate``.

    Args:
        embedder: the model.
        name: mteb model name (``org/model``); default ``nvembed/<folder name>``.
        revision: default ``<weights fingerprint>-<instruction fingerprint>``.
        instructions: task name -> instruction overrides (otherwise the registry, then a per-type fallback).
        max_length: token cap at evaluation (NV-Embed evaluated at 512).
        batch_tokens: padded tokens per forward pass (``Embedder.encode(batch_tokens=)``); ``None``: mteb's
            ``batch_size``.
        dimensions: score truncated embeddings (the first ``dimensions`` components, renormalised); part of the
            revision, so a truncated model's results never mix with the full one's.
        precision: ``float32``, ``int8`` or ``binary``: score the quantised vectors (int8 codes as numbers; binary
            codes as +-1, whose cosine is ``1 - 2 * hamming / d``: mteb's cosine ranks exactly as Hamming search
            does). Part of the revision.
        calibration: the :class:`nvembed.compression.Int8Calibration` int8 needs (ranges from corpus vectors).
    """

    def __init__(
        self,
        embedder,
        name: str | None = None,
        revision: str | None = None,
        instructions: dict[str, str] | None = None,
        max_length: int = 512,
        source: str | None = None,
        batch_tokens: int | None = None,
        dimensions: int | None = None,
        precision: str = "float32",
        calibration=None,
    ) -> None:
        from nvembed.compression import PRECISIONS

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision == "int8" and calibration is None:
            raise ValueError("precision='int8' needs calibration= (Int8Calibration.from_vectors(corpus vectors))")
        width = dimensions or embedder.dim
        if dimensions is not None and not 1 <= dimensions <= embedder.dim:
            raise ValueError(f"dimensions must be in 1..{embedder.dim} (the embedding width), got {dimensions}")
        if precision == "binary" and width % 8:
            raise ValueError(f"binary vectors pack 8 dimensions per byte; width {width} is not a multiple of 8")
        if precision == "int8" and calibration.ranges.shape != (2, width):
            raise ValueError(
                f"int8 calibration ranges are {calibration.ranges.shape}, the vectors [n, {width}]: calibrate on "
                "vectors encoded with the same dimensions="
            )
        self.model = embedder
        self.batch_tokens = batch_tokens
        self.dimensions = dimensions
        self.precision = precision
        self.calibration = calibration
        self.instructions = dict(instructions or {})
        self.max_length = max_length
        folder = source or embedder.config.model.name_or_path
        name = name or f"nvembed/{Path(str(folder)).name or 'model'}"
        template = embedder.inputs.instruction_template
        self.instruction_policy = embedder.config.model.instruction_policy
        fingerprint = instruction_fingerprint(self.instructions, template, self.instruction_policy)
        compressed = f"-d{dimensions}" if dimensions else ""
        if precision != "float32":
            compressed += f"-{precision}" + (f"-{calibration.fingerprint()}" if precision == "int8" else "")
        # the compression suffix also follows an explicit revision: compressed results never mix with full ones
        revision = (revision or f"{folder_fingerprint(folder)}-{fingerprint}") + compressed
        n_params = sum(p.numel() for p in embedder.model.parameters())
        self.mteb_model_meta = make_meta(name, revision, dimensions or embedder.dim, max_length, n_params)
        self.calls: list[tuple[str, str | None, int]] = []  # (task, prompt type, n texts), for tests and logs

    def instruction(self, task_name: str, task_type: str, prompt_type: PromptType | None) -> str | None:
        return task_instruction(task_name, task_type, prompt_type, self.instructions, self.instruction_policy)

    def encode(self, inputs, *, task_metadata, hf_split: str, hf_subset: str, prompt_type=None, **kwargs: Any):
        texts = [t for batch in inputs for t in batch["text"]]
        texts = [t if t.strip() else " ." for t in texts]  # mteb data can hold empty strings; keep rows aligned
        instruction = self.instruction(task_metadata.name, task_metadata.type, prompt_type)
        self.calls.append((task_metadata.name, getattr(prompt_type, "value", prompt_type), len(texts)))
        vectors = self.model.encode(
            texts,
            instruction=instruction,
            batch_size=int(kwargs.get("batch_size", 32)),
            max_length=self.max_length,
            show_progress=bool(kwargs.get("show_progress_bar", False)),
            batch_tokens=self.batch_tokens,
            dimensions=self.dimensions,
        )  # [n, d]
        if self.precision == "float32":
            return vectors
        import numpy as np

        from nvembed.compression import quantize

        codes = quantize(vectors, self.precision, self.calibration)
        if self.precision == "binary":  # packed bits [n, d/8] -> +-1 [n, d]
            return np.unpackbits(codes, axis=1).astype(np.float32) * 2.0 - 1.0
        return codes.astype(np.float32)  # int8 codes [n, d]
