"""The evaluation actor: one model per actor, three kinds of job (a whole mteb task, a shard encode, a shard top-k).

GPU-ready by construction: the actor uses CUDA only when Ray gave it a GPU (``ray.get_gpu_ids()``), in bf16 unless
told otherwise, with LoRA merged into the backbone and as many torch threads as Ray gave it CPUs.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.planning import WorkItem

HELD_BYTES = 2 << 30  # shard embeddings an actor keeps in memory for the top-k jobs that follow (files otherwise)


@dataclass(frozen=True)
class ModelSpec:
    """The evaluated model as every actor loads it; ``name``/``revision`` are what the results folder says."""

    model: str  # as the user gave it
    path: str  # resolved local folder or hub name
    kind: str  # "nvembed" (our exports, plain backbones) or "st" (a sentence-transformers baseline)
    name: str
    revision: str
    max_length: int = 512
    batch_size: int | None = None  # None: by tokens
    batch_tokens: int = 16384
    dtype: str = "auto"  # resolved by the runner: "bfloat16" on GPU actors, "stored" (as saved) on CPU
    merge_lora: bool = True

    @property
    def encode_batch(self) -> int:
        """mteb's ``batch_size`` (its dataloaders): the fixed size, or texts of max length in ``batch_tokens``."""
        return self.batch_size or max(1, self.batch_tokens // self.max_length)

    @property
    def cache_identity(self) -> str:
        """Everything of the model that changes its vectors (the embedding cache's key, with each side's texts)."""
        return f"{self.name}@{self.revision}:len{self.max_length}:{self.dtype}:merge{int(self.merge_lora)}"


def _torch_dtype(name: str):
    import torch

    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(name)


def build_encoder(spec: ModelSpec, device: str):
    """The mteb model object for a spec, on ``device``."""
    from evaluation.encoder import folder_fingerprint, make_meta

    dtype = _torch_dtype(spec.dtype)
    if spec.kind == "st":
        import mteb
        from sentence_transformers import SentenceTransformer

        kwargs = {"model_kwargs": {"torch_dtype": dtype}} if dtype is not None else {}
        st = SentenceTransformer(spec.path, device=device, **kwargs)
        st.max_seq_length = min(st.max_seq_length or spec.max_length, spec.max_length)  # the request's token cap
        wrapper = mteb.SentenceTransformerEncoderWrapper(st)
        wrapper.mteb_model_meta = make_meta(
            spec.name,
            folder_fingerprint(spec.path),
            st.get_embedding_dimension(),
            st.max_seq_length,
            sum(p.numel() for p in st.parameters()),
        )
        return wrapper
    from evaluation.encoder import NVEmbedEncoder
    from nvembed import Embedder

    options = {"dtype": spec.dtype} if dtype is not None else {}
    emb = Embedder.from_pretrained(spec.path, **options)
    if spec.merge_lora:
        emb.merge_lora()  # a no-op without LoRA
    emb.to(device)
    batch_tokens = None if spec.batch_size else spec.batch_tokens
    return NVEmbedEncoder(
        emb, name=spec.name, revision=spec.revision, max_length=spec.max_length, source=spec.path,
        batch_tokens=batch_tokens,
    )  # fmt: skip


def build_task(item: WorkItem, work_dir: str, benchmark: str):
    """The mteb task object of a work item: the benchmark's own (its restrictions), a subset, or local data."""
    import mteb

    from evaluation.local import local_task
    from evaluation.suite import register

    register()
    if item.subset is not None:
        base = mteb.get_task(item.name)
        task = mteb.get_task(item.name, eval_splits=base.metadata.eval_splits, hf_subsets=[item.subset])
    else:
        bench = {t.metadata.name: t for t in mteb.get_benchmark(benchmark).tasks}
        task = bench.get(item.name) or mteb.get_task(item.name)
    if item.data_dir:
        task = local_task(task, item.data_dir, work_dir)
    return task


def run_mteb(model, task, batch_size: int):
    """``mteb.evaluate`` of one task as every path here runs it: no mteb cache (the driver writes results), errors
    raised; returns the ``TaskResult``. ``model`` is an encoder (whole items) or a ``ShardedSearch``."""
    import mteb

    res = mteb.evaluate(
        model,
        [task],
        cache=None,
        overwrite_strategy="always",
        show_progress_bar=False,
        encode_kwargs={"batch_size": batch_size},
        raise_error=True,
    )
    return res.task_results[0]


def evaluate_item(encoder, item: WorkItem, work_dir: str, benchmark: str, batch_size: int) -> dict[str, Any]:
    """Run one whole work item; returns the TaskResult as a dict and how many texts were encoded."""
    before = sum(n for *_, n in getattr(encoder, "calls", []))
    task = build_task(item, work_dir, benchmark)
    t0 = time.perf_counter()
    result = run_mteb(encoder, task, batch_size)
    encoded = sum(n for *_, n in getattr(encoder, "calls", [])) - before
    return {"result": result.to_dict(), "encoded": encoded, "seconds": time.perf_counter() - t0}


class EvalWorker:
    """Ray actor body (the runner wraps it with ``ray.remote``)."""

    def __init__(self, spec: ModelSpec, threads: int, cache_root: str) -> None:
        import ray
        import torch

        torch.set_num_threads(max(1, threads))
        self.device = "cuda" if ray.get_gpu_ids() else "cpu"
        self.spec = spec
        self.cache_root = Path(cache_root)
        self.encoder = build_encoder(spec, self.device)
        self.held: OrderedDict[str, np.ndarray] = OrderedDict()

    def ready(self) -> str:
        return self.device

    def task(self, item: WorkItem, work_dir: str, benchmark: str) -> dict[str, Any]:
        return evaluate_item(self.encoder, item, work_dir, benchmark, self.spec.encode_batch)

    def encode(self, key: str, rows: dict[str, list], task_metadata, hf_split: str, hf_subset: str, side: str) -> int:
        from evaluation.sharded import encode_rows, write_array

        emb = encode_rows(self.encoder, rows, task_metadata, hf_split, hf_subset, side, self.spec.encode_batch)
        write_array(emb, self.cache_root / f"{key}.npy")
        self._hold(key, emb)
        return len(emb)

    def search(self, shard_key: str, query_key: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        from evaluation.sharded import top_k

        return top_k(self.encoder, self._load(query_key), self._load(shard_key), k, self.device)

    def _hold(self, key: str, emb: np.ndarray) -> None:
        self.held[key] = emb
        while sum(a.nbytes for a in self.held.values()) > HELD_BYTES and len(self.held) > 1:
            self.held.popitem(last=False)

    def _load(self, key: str) -> np.ndarray:
        if key in self.held:
            self.held.move_to_end(key)
            return self.held[key]
        emb = np.load(self.cache_root / f"{key}.npy")
        self._hold(key, emb)
        return emb
