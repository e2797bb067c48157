"""Embedding-level compression for serving: Matryoshka-style truncation, int8 and binary vectors, matching faiss
indexes (issue 16, item 2; weight-level compression of the model is not here).

The quantisation itself is sentence-transformers' ``quantize_embeddings`` (the same buckets its users get); what
this module adds are the checks whose absence makes it fail silently:

* a truncated vector is renormalised to unit length (cosine = dot product again); a bare slice is not;
* int8 ranges come from a calibration set of a stated minimum size, and a dimension whose calibration range is
  zero (every calibration vector equal there) is an error, not a division that maps every value to one bucket;
* binary vectors are packed bits (``d / 8`` bytes) searched by Hamming distance (``faiss.IndexBinaryFlat``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

PRECISIONS = ("float32", "int8", "binary")
MIN_CALIBRATION = 1000  # vectors; ranges from fewer are dominated by chance (sentence-transformers suggests ~10k)


def truncate(embeddings: np.ndarray, dimensions: int) -> np.ndarray:
    """The first ``dimensions`` components of each row, renormalised to unit L2 norm: ``[n, d] -> [n, k]``."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be [n, d], got shape {embeddings.shape}")
    d = embeddings.shape[1]
    if not 1 <= dimensions <= d:
        raise ValueError(f"dimensions must be in 1..{d} (the embedding width), got {dimensions}")
    head = embeddings[:, :dimensions]  # [n, k]
    norms = np.linalg.norm(head, axis=1, keepdims=True)  # [n, 1]
    if np.any(norms == 0):
        raise ValueError(f"row {int(np.argmin(norms[:, 0]))} is all zeros in its first {dimensions} components")
    return head / norms


@dataclass(frozen=True)
class Int8Calibration:
    """Per-dimension ``[2, d]`` (min, max) ranges for int8 buckets, measured on corpus vectors."""

    ranges: np.ndarray  # [2, d]

    @classmethod
    def from_vectors(cls, vectors: np.ndarray, min_vectors: int = MIN_CALIBRATION) -> Int8Calibration:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) < min_vectors:
            raise ValueError(
                f"int8 calibration needs at least {min_vectors} vectors, got {len(vectors)} (pass more corpus "
                "vectors, or lower min_vectors knowingly)"
            )
        ranges = np.stack([vectors.min(axis=0), vectors.max(axis=0)])  # [2, d]
        flat = np.flatnonzero(ranges[1] - ranges[0] <= 0)
        if flat.size:
            raise ValueError(
                f"int8 calibration: dimension(s) {flat[:8].tolist()} have a zero range over {len(vectors)} vectors "
                "(every value would fall into one bucket); calibrate on varied corpus vectors"
            )
        return cls(ranges)

    def save(self, path: str | Path) -> Path:
        """Writes ``path`` with a ``.npy`` suffix (added if missing, as numpy does); returns the written path."""
        path = Path(path).with_suffix(".npy")
        np.save(path, self.ranges)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Int8Calibration:
        ranges = np.load(Path(path).with_suffix(".npy"))
        if ranges.ndim != 2 or ranges.shape[0] != 2:
            raise ValueError(f"{path}: int8 ranges must be [2, d] (min, max), got shape {ranges.shape}")
        return cls(ranges)

    def fingerprint(self) -> str:
        import hashlib

        return hashlib.sha1(np.ascontiguousarray(self.ranges, dtype=np.float32).tobytes()).hexdigest()[:8]


def quantize(embeddings: np.ndarray, precision: str, calibration: Int8Calibration | None = None) -> np.ndarray:
    """``float32`` (unchanged), ``int8`` (``[n, d]`` int8, needs ``calibration``) or ``binary`` (``[n, d/8]``
    packed uint8 bits, sign of each component), with sentence-transformers' buckets (its ``eval`` extra)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if precision == "float32":
        return embeddings
    try:
        from sentence_transformers.util.quantization import quantize_embeddings
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.quantization import quantize_embeddings

    if precision == "int8":
        if calibration is None:
            raise ValueError("int8 needs an Int8Calibration (ranges from corpus vectors), not ranges of the batch")
        if calibration.ranges.shape != (2, embeddings.shape[1]):
            raise ValueError(f"calibration ranges {calibration.ranges.shape} do not match width {embeddings.shape[1]}")
        return quantize_embeddings(embeddings, "int8", ranges=calibration.ranges)
    if precision == "binary":
        if embeddings.shape[1] % 8:
            raise ValueError(
                f"binary vectors pack 8 dimensions per byte; width {embeddings.shape[1]} is not a multiple"
            )
        return quantize_embeddings(embeddings, "ubinary")
    raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")


def bytes_per_vector(dimensions: int, precision: str) -> int:
    return {"float32": 4 * dimensions, "int8": dimensions, "binary": dimensions // 8}[precision]


def _rows_unit(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def build_index(vectors: np.ndarray, precision: str):
    """A faiss index of the matching kind: inner product over float32 vectors; cosine over int8 codes (decoded to
    float32 and normalised: faiss has no int8 inner-product index on CPU, and cosine is what the mteb encoder
    scores them by, so evaluation measures what search serves); Hamming distance over packed binary codes."""
    import faiss

    if precision == "binary":
        codes = np.ascontiguousarray(vectors, dtype=np.uint8)  # [n, d/8]
        index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
        index.add(codes)
        return index
    if precision not in ("float32", "int8"):
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    data = _rows_unit(vectors) if precision == "int8" else np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexFlatIP(data.shape[1])
    index.add(data)
    return index


def search(index, queries: np.ndarray, k: int, precision: str) -> tuple[np.ndarray, np.ndarray]:
    """``(scores [n, k], ids [n, k])``; for binary indexes scores are negated Hamming distances (higher = closer)."""
    if precision == "binary":
        dist, ids = index.search(np.ascontiguousarray(queries, dtype=np.uint8), k)
        return -dist.astype(np.float32), ids
    if precision == "int8":
        return index.search(_rows_unit(queries), k)
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
