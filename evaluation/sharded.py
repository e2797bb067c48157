"""Retrieval over a corpus sharded across all actors, scored by mteb's own retrieval evaluator.

mteb's ``RetrievalEvaluator`` calls a model's ``index(corpus)`` and then ``search(queries)`` (mteb's
``SearchProtocol``). :class:`ShardedSearch` is that model on the driver: ``index`` cuts the corpus into fixed-size
shards and submits one encode job per shard not already cached; ``search`` submits the query encoding, then one
top-k job per shard on the actor that holds the shard's embeddings, and merges the per-shard top-k lists exactly as
mteb's single-process ``chunked_full_corpus_search`` merges its chunks (top ``k + 1`` per chunk, a heap of ``k``
per query). Metrics stay mteb's.

**Embedding cache** (``<output>/embeddings/<key>.npy``): why not mteb's ``CachedEmbeddingWrapper``: it keys its
files by task name and keeps one writer per file, so FEVER and ClimateFEVER (one 5.4M-passage corpus) would encode
twice and concurrent actors would race on one file. Ours is keyed by what determines the vectors: the model's name
and revision, the instruction actually applied to that side of the task, max length, dtype and LoRA merge, and a
hash of every text field of every row in the shard (ids excluded, so the same corpus under other ids is shared).
Files are written to a temporary name and renamed: a run killed mid-corpus leaves whole shards only, and the rerun
encodes just the missing ones. A shard being encoded for one task is awaited, not submitted again, by another.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.planning import CORPUS_SHARE, QUERY_SHARE, SEARCH_SHARE


def rows_digest(rows: dict[str, list]) -> str:
    """Hash of every text field of every row (columnar ``{field: [values]}``), ids excluded, order kept."""
    h = hashlib.sha1()
    fields = sorted(k for k in rows if k != "id")
    for f in fields:
        h.update(f.encode() + b"\x00")
        for value in rows[f]:
            h.update(str(value).encode() + b"\x01")
    return h.hexdigest()


class EmbeddingCache:
    """Shard embeddings on (shared) disk, keyed by what determines them; see the module docstring."""

    def __init__(self, root: str | Path, identity: str) -> None:
        self.root = Path(root)
        self.identity = identity  # model name, revision, max length, dtype, merge: the same for every key
        self._lock = threading.Lock()
        self._inflight: dict[str, Future] = {}

    def key(self, side: str, rows: dict[str, list]) -> str:
        blob = json.dumps({"model": self.identity, "side": side, "rows": rows_digest(rows)}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:24]

    def path(self, key: str) -> Path:
        return self.root / f"{key}.npy"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def claim(self, key: str, submit: Callable[[], Future]) -> tuple[Future | None, bool]:
        """``(future, submitted)``: ``None`` when cached, the in-flight future of another task, or a new one."""
        with self._lock:
            if self.has(key):
                return None, False
            if key in self._inflight:
                return self._inflight[key], False
            future = submit()
            self._inflight[key] = future
            return future, True


def write_array(array: np.ndarray, path: Path) -> None:
    """Atomic ``.npy`` write (temporary name, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}-{threading.get_ident()}.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def side_identity(
    kind: str, prompts: bool, task_metadata, prompt_type, overrides: dict[str, str], policy: str = "all"
) -> str:
    """What an encoder puts in front of one side's texts, computed on the driver without the model.

    nvembed models: the instruction :func:`evaluation.encoder.task_instruction` gives (``None`` for retrieval
    documents, so every retrieval task over one corpus shares its documents' vectors). sentence-transformers
    baselines: nothing unless the folder defines prompts, which mteb selects by task: then the task and side.
    """
    from evaluation.encoder import task_instruction

    side = getattr(prompt_type, "value", prompt_type)
    if kind == "st":
        return f"st:{task_metadata.name}:{side}" if prompts else f"st:{side}"
    instruction = task_instruction(task_metadata.name, task_metadata.type, prompt_type, overrides, policy)
    return json.dumps({"side": side, "instruction": instruction})


@dataclass
class Shard:
    start: int
    stop: int
    key: str
    future: Future | None  # None: found in the cache
    submitted: bool  # this task submitted the encode (it counts its texts)


class ShardedSearch:
    """mteb ``SearchProtocol`` over actor-held corpus shards (driver side; see the module docstring).

    Args:
        pool: the run's :class:`evaluation.scheduler.ActorPool` (``submit`` jobs, ``holder`` of a finished job).
        cache: the run's :class:`EmbeddingCache`.
        meta: the mteb ``ModelMeta`` of the evaluated model (result files carry its name and revision).
        side: ``(task_metadata, prompt_type) -> str``, :func:`side_identity` bound to the model.
        shard_docs: documents per shard (one number per run, see :mod:`evaluation.planning`).
        cost: the task's planned cost, split over its jobs for scheduling and progress.
        label: the work item's key, for job names and error files.
    """

    def __init__(self, pool, cache: EmbeddingCache, meta, side, shard_docs: int, cost: float, label: str) -> None:
        self.pool, self.cache, self.mteb_model_meta, self.side = pool, cache, meta, side
        self.shard_docs, self.cost, self.label = shard_docs, cost, label
        self.encoded = 0  # texts this task sent to encode (cached and shared shards excluded)
        self.shards: list[Shard] = []
        self.corpus_ids: list[str] = []

    # -------------------------------------------------------------------------------------- SearchProtocol

    def index(self, corpus, *, task_metadata, hf_split: str, hf_subset: str, encode_kwargs, num_proc=None, **_):
        from mteb.types import PromptType

        self.corpus_ids = [str(i) for i in corpus["id"]]
        n = len(corpus)
        side = self.side(task_metadata, PromptType.document)
        self.shards = []
        for start in range(0, n, self.shard_docs):
            stop = min(n, start + self.shard_docs)
            rows = corpus.select(range(start, stop)).to_dict()
            key = self.cache.key(side, rows)
            cost = self.cost * CORPUS_SHARE * (stop - start) / max(1, n)
            future, submitted = self.cache.claim(
                key,
                lambda rows=rows, key=key, cost=cost, start=start: self.pool.submit(
                    f"{self.label}::corpus[{start}:{start + len(rows['id'])}]",
                    "encode",
                    (key, rows, task_metadata, hf_split, hf_subset, "document"),
                    cost=cost,
                ),
            )
            if not submitted:
                self.pool.skip(cost)  # cached, or another task encodes it: progress moves on
            self.encoded += (stop - start) if submitted else 0
            self.shards.append(Shard(start, stop, key, future, submitted))

    def search(
        self,
        queries,
        *,
        task_metadata,
        hf_split: str,
        hf_subset: str,
        top_k: int,
        encode_kwargs,
        top_ranked=None,
        num_proc=None,
        **_,
    ) -> dict[str, dict[str, float]]:
        from mteb.types import PromptType

        if not self.shards and self.corpus_ids:
            raise RuntimeError("search before index")
        query_ids = [str(i) for i in queries["id"]]
        rows = queries.to_dict()
        qkey = self.cache.key(self.side(task_metadata, PromptType.query), rows)
        qcost = self.cost * QUERY_SHARE
        qfuture, submitted = self.cache.claim(
            qkey,
            lambda: self.pool.submit(
                f"{self.label}::queries",
                "encode",
                (qkey, rows, task_metadata, hf_split, hf_subset, "query"),
                cost=qcost,
            ),
        )
        if not submitted:
            self.pool.skip(qcost)
        self.encoded += len(query_ids) if submitted else 0
        for shard in self.shards:  # every shard's embeddings exist before any search
            if shard.future is not None:
                shard.future.result()
        if qfuture is not None:
            qfuture.result()
        if top_ranked is not None:
            return self._rerank(query_ids, qkey, top_ranked, top_k)
        searches = []
        for shard in self.shards:
            cost = self.cost * SEARCH_SHARE * (shard.stop - shard.start) / max(1, len(self.corpus_ids))
            searches.append(
                self.pool.submit(
                    f"{self.label}::search[{shard.start}:{shard.stop}]",
                    "search",
                    (shard.key, qkey, top_k + 1),  # + 1 as mteb's chunked search (search_k_offset)
                    cost=cost,
                    prefer=self.pool.holder(shard.future),
                )
            )
        heaps: dict[str, list[tuple[float, str]]] = {qid: [] for qid in query_ids}
        for shard, future in zip(self.shards, searches, strict=True):
            values, indices = future.result()  # [nq, k'] each, this shard's best first
            ids = self.corpus_ids[shard.start : shard.stop]
            for q, qid in enumerate(query_ids):
                heap = heaps[qid]
                for score, idx in zip(values[q].tolist(), indices[q].tolist(), strict=True):
                    if len(heap) < top_k:
                        heapq.heappush(heap, (score, ids[idx]))
                    else:
                        heapq.heappushpop(heap, (score, ids[idx]))
        return {qid: {doc: score for score, doc in heap} for qid, heap in heaps.items()}

    def _rerank(self, query_ids: list[str], qkey: str, top_ranked, top_k: int) -> dict[str, dict[str, float]]:
        """Reranking (mteb passes each query's candidates): cosine over cached vectors on the driver."""
        import torch

        docs = np.concatenate([np.load(self.cache.path(s.key)) for s in self.shards])  # [n_docs, d]
        queries = np.load(self.cache.path(qkey))  # [n_queries, d]
        row = {doc: i for i, doc in enumerate(self.corpus_ids)}
        out: dict[str, dict[str, float]] = {}
        for q, qid in enumerate(query_ids):
            ranked = top_ranked.get(qid) or []
            if not ranked:
                out[qid] = {}
                continue
            cand = torch.as_tensor(docs[[row[d] for d in ranked]])
            scores = torch.nn.functional.cosine_similarity(torch.as_tensor(queries[q])[None], cand)  # [n_cand]
            values, idx = torch.topk(scores, min(top_k, len(ranked)))
            out[qid] = {ranked[i]: float(v) for v, i in zip(values.tolist(), idx.tolist(), strict=True)}
        return out


# ------------------------------------------------------------------------------------------------ actor side


def encode_rows(encoder, rows: dict[str, list], task_metadata, hf_split: str, hf_subset: str, side: str, batch_size):
    """Embed one shard's rows the way mteb would (its own dataloader: titles joined, instructions by side)."""
    from datasets import Dataset
    from mteb._create_dataloaders import create_dataloader
    from mteb.types import PromptType

    prompt_type = PromptType.document if side == "document" else PromptType.query
    loader = create_dataloader(
        Dataset.from_dict(rows), task_metadata=task_metadata, prompt_type=prompt_type, batch_size=batch_size
    )
    emb = encoder.encode(
        loader,
        task_metadata=task_metadata,
        hf_split=hf_split,
        hf_subset=hf_subset,
        prompt_type=prompt_type,
        batch_size=batch_size,
    )
    return np.asarray(emb, dtype=np.float32)  # [n, d]


def top_k(encoder, queries: np.ndarray, docs: np.ndarray, k: int, device: str) -> tuple[np.ndarray, np.ndarray]:
    """The model's own similarity (mteb's ``similarity``) and top-k, on the actor's device."""
    import torch

    q = torch.as_tensor(queries, device=device)  # [nq, d]
    d = torch.as_tensor(docs, device=device)  # [nd, d]
    scores = torch.as_tensor(encoder.similarity(q, d))  # [nq, nd]
    values, idx = torch.topk(scores, min(k, scores.shape[1]), dim=1, largest=True)  # [nq, k]
    return values.float().cpu().numpy(), idx.cpu().numpy()
