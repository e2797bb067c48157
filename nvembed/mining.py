"""Positive-aware hard-negative mining, TopK-PercPos (NV-Retriever, arXiv 2407.15831; spec §2.3, pitfall 12).

For each (query, positive) pair the teacher scores the corpus; every known positive of the query is dropped, and
so is every candidate scoring above ``margin × score(query, positive)`` (margin 0.95): those are likely unlabelled
positives. The top ``k`` survivors are kept, or ``k`` are sampled from the top ``sample_from_top``.

The corpus is encoded shard by shard into a faiss index (exact inner product by default; IVF or HNSW for large
corpora), so only the index, not the texts' activations, grows with the corpus.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm


@dataclass
class MiningResult:
    """``negatives[i]`` holds corpus indices for pair i, best first; ``scores[i]`` their teacher scores."""

    negatives: list[list[int]]
    scores: list[list[float]]
    positive_scores: list[float]


def build_index(dim: int, kind: str = "flat", nlist: int = 1024, hnsw_m: int = 32):
    """A faiss inner-product index: ``flat`` (exact), ``ivf`` (IVF-flat, trained on the first shard), ``hnsw``."""
    import faiss

    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "ivf":
        return faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    if kind == "hnsw":
        return faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    raise ValueError(f"index kind must be flat|ivf|hnsw, got {kind!r}")


def encode_corpus_into_index(
    encode: Callable[[Sequence[str]], np.ndarray],
    corpus: Sequence[str],
    kind: str = "flat",
    shard_size: int = 50_000,
    show_progress: bool = True,
    progress_step: int = 2048,
):
    """Encode ``corpus`` shard by shard and add each shard to a new index.

    A shard is encoded in pieces of ``progress_step`` texts so the bar moves while a shard is encoded (one
    50,000-text shard is minutes of CPU); each piece is length-sorted by ``encode`` on its own.
    """
    index = None
    with tqdm(total=len(corpus), desc="mining: encode corpus", unit="doc", disable=not show_progress) as bar:
        for start in range(0, len(corpus), shard_size):
            shard = corpus[start : start + shard_size]
            pieces = []
            for p0 in range(0, len(shard), progress_step):
                pieces.append(np.asarray(encode(shard[p0 : p0 + progress_step]), dtype=np.float32))  # [p, D]
                bar.update(len(pieces[-1]))
            emb = np.ascontiguousarray(np.concatenate(pieces))  # [s, D]
            if index is None:
                index = build_index(emb.shape[1], kind, nlist=max(1, min(1024, len(corpus) // 39)))
                if not index.is_trained:
                    index.train(emb)
            index.add(emb)
    return index


def select_negatives(
    candidates: np.ndarray,
    scores: np.ndarray,
    positive_score: float,
    known_positives: set[int],
    k: int = 7,
    margin: float = 0.95,
    sample_from_top: int | None = None,
    rng: random.Random | None = None,
) -> tuple[list[int], list[float]]:
    """TopK-PercPos on one ranked candidate list (descending scores); -1 candidates (faiss padding) are ignored."""
    threshold = margin * positive_score
    kept = [
        (int(c), float(s))
        for c, s in zip(candidates, scores, strict=True)
        if c >= 0 and int(c) not in known_positives and s <= threshold
    ]
    if sample_from_top is not None and len(kept) > k:
        pool = kept[:sample_from_top]
        kept = sorted((rng or random.Random(0)).sample(pool, min(k, len(pool))), key=lambda x: -x[1])
    kept = kept[:k]
    return [c for c, _ in kept], [s for _, s in kept]


def mine_hard_negatives(
    encode_queries: Callable[[Sequence[str]], np.ndarray],
    encode_docs: Callable[[Sequence[str]], np.ndarray],
    queries: Sequence[str],
    positives: Sequence[int],
    corpus: Sequence[str],
    known_positives: Sequence[set[int]] | None = None,
    k: int = 7,
    margin: float = 0.95,
    depth: int = 100,
    sample_from_top: int | None = None,
    index_kind: str = "flat",
    shard_size: int = 50_000,
    seed: int = 0,
    show_progress: bool = True,
) -> MiningResult:
    """Mine negatives for (query, positive) pairs against ``corpus``.

    Args:
        encode_queries / encode_docs: the teacher (e.g. ``partial(embedder.encode, instruction=...)`` for queries).
        queries: query text per pair.
        positives: corpus index of the pair's positive.
        corpus: candidate texts (the positives included).
        known_positives: per pair, every corpus index that is relevant to the query (default: its positive).
        k: negatives per pair (NV-Embed: 7).
        margin: drop candidates scoring above ``margin * positive score`` (NV-Retriever's best: 0.95).
        depth: candidates retrieved per query before filtering.
        sample_from_top: sample ``k`` from the top-n survivors instead of taking the top ``k``.
    """
    import faiss

    if len(queries) != len(positives):
        raise ValueError(f"{len(queries)} queries but {len(positives)} positives")
    known = known_positives or [{p} for p in positives]
    index = encode_corpus_into_index(encode_docs, corpus, index_kind, shard_size, show_progress)
    if hasattr(index, "nprobe"):
        index.nprobe = 32
    q = np.ascontiguousarray(encode_queries(queries), dtype=np.float32)  # [n, D]
    # the positive's score is recomputed exactly (an approximate index might not return it)
    pos = np.ascontiguousarray(encode_docs([corpus[p] for p in positives]), dtype=np.float32)  # [n, D]
    pos_scores = np.sum(q * pos, axis=1)  # [n]
    depth = min(depth + max(len(s) for s in known), len(corpus))
    faiss.omp_set_num_threads(1)  # avoid oversubscription next to other workers (RAY_DEEPSPEED_CPU.md §7)
    scores, ids = index.search(q, depth)  # [n, depth]
    rng = random.Random(seed)
    result = MiningResult([], [], [float(s) for s in pos_scores])
    for i in range(len(queries)):
        negs, negs_scores = select_negatives(
            ids[i], scores[i], float(pos_scores[i]), set(known[i]) | {positives[i]}, k, margin, sample_from_top, rng
        )
        result.negatives.append(negs)
        result.scores.append(negs_scores)
    return result
