"""Curation of one BEIR dataset cut into parts: the per-part work that ``nvembed prepare`` runs on Ray workers.

Plain functions over files (no Ray here): nvembed/launch/prepare.py maps them over parts with Ray Data, and the
tests call them directly. The phases and what each writes under the dataset's work folder:

1. ``parse_part``: one newline-aligned byte range of ``corpus.jsonl`` / ``queries.jsonl`` -> ``<kind>/part-i.parquet``
   (``_id``, ``text``, ``line`` within the part, ``h`` a text hash); bad rows come back as (line in part, reason),
   turned into ``file:line`` by :func:`global_line` only when one must be reported.
2. ``link``: the qrels of the split, validated against the parts' ids (``file:line`` of the qrels line), become the
   (query, positive) pairs in the single-process order (qrels order, then the seeded ``max_rows`` shuffle), written as
   ``pairs/part-j.parquet``; ``canon.npy`` maps every corpus row to the first row with the same text (the
   single-process path mines over unique texts) or -1 for a duplicate id.
3. ``encode_part``: a corpus part's texts -> ``emb/part-i.npy`` with the teacher.
4. ``search_pairs_part``: a pairs part -> its queries encoded, exact top-k over every corpus part (faiss' exact
   inner-product k-NN per part, merged), TopK-PercPos selection, the negatives' texts gathered, decontaminated ->
   ``rows/part-j.parquet`` in the curated format.

Every output is written to a temporary name and renamed, and a phase skips parts whose output exists, so a rerun
after a crash continues where the crash left it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nvembed.data.converters import decontaminate, id_text, qrels_entry, qrels_lines
from nvembed.data.readers import DataError
from nvembed.data.schema import TrainingExample
from nvembed.mining import select_negatives

# ----------------------------------------------------------------------------------------------- files and lines


def byte_parts(path: str | Path, part_bytes: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` byte ranges of about ``part_bytes`` each, every one ending after a newline."""
    size = os.path.getsize(path)
    bounds = [0]
    with open(path, "rb") as fh:
        while bounds[-1] < size:
            nxt = bounds[-1] + max(1, part_bytes)
            if nxt >= size:
                bounds.append(size)
                break
            fh.seek(nxt)
            fh.readline()  # to the end of the line the cut fell in
            bounds.append(min(size, fh.tell()))
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def global_line(path: str | Path, start: int, line_in_part: int) -> int:
    """The 1-based line number in the file of line ``line_in_part`` of the part starting at byte ``start``.

    Counting the newlines before ``start`` reads the file up to there once; it is done only to report an error.
    """
    before = 0
    with open(path, "rb") as fh:
        remaining = start
        while remaining > 0:
            chunk = fh.read(min(remaining, 1 << 24))
            if not chunk:
                break
            before += chunk.count(b"\n")
            remaining -= len(chunk)
    return before + line_in_part


def text_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little", signed=True)


def _atomic_parquet(table, out: Path) -> None:
    import pyarrow.parquet as pq

    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, tmp)
    os.replace(tmp, out)


def _atomic_text(text: str, out: Path) -> None:
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, out)


def _atomic_npy(array: np.ndarray, out: Path) -> None:
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.npy")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(tmp, array)
    os.replace(tmp, out)


def pq_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


# ----------------------------------------------------------------------------------------------- 1. parse


def parse_part(path: str | Path, start: int, end: int, out: str | Path, *, with_title: bool) -> dict:
    """Parse one byte range of a BEIR JSONL file into ``out`` (Parquet). Returns ``{"n", "errors"}``, errors as
    ``[line_in_part, reason]`` (the rows are left out; the caller stops or counts them)."""
    import pyarrow as pa

    out = Path(out)
    if out.is_file():  # resumed: this part was written by an earlier run
        meta = json.loads(out.with_suffix(".json").read_text())
        return meta
    ids, texts, lines, hashes, errors = [], [], [], [], []
    with open(path, "rb") as fh:
        fh.seek(start)
        data = fh.read(end - start)  # whole lines: byte_parts cuts after a newline
    # universal newlines, as the single-process reader's text mode (a lone \r ends a line there too)
    for i, raw in enumerate(io.StringIO(data.decode("utf-8"), newline=None), start=1):
        if not raw.strip():
            continue
        try:
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as err:
                raise DataError(path, i, f"invalid JSON: {err.msg} at column {err.colno}") from None
            if not isinstance(row, dict):
                raise DataError(path, i, f"invalid JSON: expected an object, got {type(row).__name__}")
            rid, text = id_text(row, path, i, with_title)
        except DataError as err:
            errors.append([i, err.reason])
            continue
        ids.append(rid)
        texts.append(text)
        lines.append(i)
        hashes.append(text_hash(text))
    table = pa.table(
        {
            "_id": pa.array(ids, pa.string()),
            "text": pa.array(texts, pa.string()),
            "line": pa.array(lines, pa.int32()),
            "h": pa.array(hashes, pa.int64()),
        }
    )
    meta = {"n": len(ids), "errors": errors}
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_text(json.dumps(meta), out.with_suffix(".json"))  # before the Parquet, whose existence marks it done
    _atomic_parquet(table, out)
    return meta


# ----------------------------------------------------------------------------------------------- 2. link


@dataclass
class LinkResult:
    """What the driver learns from linking: counts only (the pairs are on disk)."""

    pairs: int
    pair_parts: int
    max_known: int
    skipped: dict[str, int]
    first_error: dict | None  # {"kind": "corpus"|"qrels", "part", "line", "reason"} under on_error=raise

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def link(
    work: str | Path,
    corpus_parts: int,
    query_parts: int,
    qrels_path: str | Path,
    *,
    on_error: str,
    max_rows: int | None,
    seed: int,
    name: str,
    pairs_per_part: int,
) -> LinkResult:
    """Qrels -> (query, positive) pairs in the single-process order; the corpus id map lives only in this call."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    work = Path(work)
    done = work / "link.json"
    if done.is_file():
        return LinkResult(**json.loads(done.read_text()))
    skipped: Counter = Counter()
    doc_index: dict[str, int] = {}
    canon_parts: list[np.ndarray] = []
    first_text: dict[int, int] = {}
    offset = 0
    for i in range(corpus_parts):
        t = pq.read_table(work / "corpus" / f"part-{i:05d}.parquet", columns=["_id", "h", "line"])
        ids, hs, lines = t["_id"].to_pylist(), t["h"].to_numpy(), t["line"].to_pylist()
        canon = np.empty(len(ids), dtype=np.int64)
        for j, (rid, h) in enumerate(zip(ids, hs, strict=True)):
            if rid in doc_index:  # a later row with an id seen before: skipped, as the single-process reader does
                if on_error == "raise":
                    return LinkResult(
                        0, 0, 0, {}, {"kind": "corpus", "part": i, "line": lines[j], "reason": f"duplicate id: {rid!r}"}
                    )
                skipped["duplicate id"] += 1
                canon[j] = -1
                continue
            doc_index[rid] = offset + j
            canon[j] = first_text.setdefault(int(h), offset + j)
        canon_parts.append(canon)
        offset += len(ids)
    del first_text
    canon_all = np.concatenate(canon_parts) if canon_parts else np.zeros(0, np.int64)
    _atomic_npy(canon_all, work / "canon.npy")

    queries: dict[str, str] = {}
    for i in range(query_parts):
        t = pq.read_table(work / "queries" / f"part-{i:05d}.parquet", columns=["_id", "line"])
        for rid, line in zip(t["_id"].to_pylist(), t["line"].to_pylist(), strict=True):
            if rid in queries:
                if on_error == "raise":
                    return LinkResult(
                        0, 0, 0, {}, {"kind": "queries", "part": i, "line": line, "reason": f"duplicate id: {rid!r}"}
                    )
                skipped["duplicate id"] += 1
                continue
            queries[rid] = ""
    for i in range(query_parts):  # texts of the kept (first) rows
        t = pq.read_table(work / "queries" / f"part-{i:05d}.parquet", columns=["_id", "text"])
        for rid, text in zip(t["_id"].to_pylist(), t["text"].to_pylist(), strict=True):
            if queries.get(rid) == "":
                queries[rid] = text

    qrels: dict[str, dict[str, int]] = {}
    for line, cols in qrels_lines(qrels_path):
        try:
            qid, did, score = qrels_entry(cols, qrels_path, line)
            if qid not in queries:
                raise DataError(qrels_path, line, f"unknown id: query {qid!r} not in queries.jsonl")
            if did not in doc_index:
                raise DataError(qrels_path, line, f"unknown id: document {did!r} not in corpus.jsonl")
            qrels.setdefault(qid, {})[did] = score
        except DataError as err:
            if on_error == "raise":
                return LinkResult(0, 0, 0, {}, {"kind": "qrels", "part": None, "line": line, "reason": err.reason})
            skipped[err.reason.split(":")[0]] += 1
    pairs = [(qid, doc_index[did]) for qid, docs in qrels.items() for did, score in docs.items() if score > 0]
    if max_rows is not None and len(pairs) > max_rows:  # the single-process shuffle: same count, same permutation
        random.Random(f"{seed}/{name}").shuffle(pairs)
        pairs = pairs[:max_rows]
    known: dict[str, set[int]] = {}
    for qid, pos in pairs:  # the relevant documents of a query *text* among the kept pairs, as the single-process
        known.setdefault(queries[qid], set()).add(int(canon_all[pos]))  # miner groups them (two ids, one text)
    n_parts = 0
    for n_parts, start in enumerate(range(0, len(pairs), pairs_per_part), start=1):
        chunk = pairs[start : start + pairs_per_part]
        _atomic_parquet(
            pa.table(
                {
                    "row_id": pa.array(range(start, start + len(chunk)), pa.int64()),
                    "query": [queries[q] for q, _ in chunk],
                    "positive": pa.array([p for _, p in chunk], pa.int64()),
                    "known": [sorted(known[queries[q]]) for q, _ in chunk],
                }
            ),
            work / "pairs" / f"part-{n_parts - 1:05d}.parquet",
        )
    result = LinkResult(len(pairs), n_parts, max((len(s) for s in known.values()), default=1), dict(skipped), None)
    _atomic_text(json.dumps(result.to_dict()), done)
    return result


# ----------------------------------------------------------------------------------------------- 3. encode


def encode_part(encode: Callable[[list[str]], np.ndarray], part: str | Path, out: str | Path) -> int:
    """The teacher's document vectors of one corpus part -> ``out`` (.npy, float32 ``[n, D]``)."""
    import pyarrow.parquet as pq

    out = Path(out)
    if out.is_file():
        return int(np.load(out, mmap_mode="r").shape[0])
    texts = pq.read_table(part, columns=["text"])["text"].to_pylist()
    emb = np.ascontiguousarray(encode(texts), dtype=np.float32) if texts else np.zeros((0, 1), np.float32)
    _atomic_npy(emb, out)
    return len(texts)


# ----------------------------------------------------------------------------------------------- 4. search


class CorpusParts:
    """The corpus vectors (memory-mapped) and texts (read on demand, a bounded cache) of a linked dataset."""

    def __init__(self, work: str | Path, n_parts: int, text_cache_bytes: int = 1 << 30) -> None:
        self.work = Path(work)
        self.emb = [np.load(self.work / "emb" / f"part-{i:05d}.npy", mmap_mode="r") for i in range(n_parts)]
        self.offsets = np.cumsum([0] + [len(e) for e in self.emb])  # [parts + 1]
        self.canon = np.load(self.work / "canon.npy")
        self._texts: dict[int, list[str]] = {}
        self._cache_bytes, self._cached_bytes = text_cache_bytes, 0

    def vectors(self, idx: np.ndarray) -> np.ndarray:
        part = np.searchsorted(self.offsets, idx, side="right") - 1
        return np.stack([self.emb[p][i - self.offsets[p]] for p, i in zip(part, idx, strict=True)])

    def texts(self, idx: Sequence[int]) -> list[str]:
        import pyarrow.parquet as pq

        out = []
        for i in idx:
            p = int(np.searchsorted(self.offsets, i, side="right") - 1)
            if p not in self._texts:
                if self._cached_bytes > self._cache_bytes:  # bounded: start over rather than grow with the corpus
                    self._texts.clear()
                    self._cached_bytes = 0
                path = self.work / "corpus" / f"part-{p:05d}.parquet"
                self._texts[p] = pq.read_table(path, columns=["text"])["text"].to_pylist()
                self._cached_bytes += sum(len(t) for t in self._texts[p])
            out.append(self._texts[p][int(i - self.offsets[p])])
        return out

    def top(self, q: np.ndarray, m: int, threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``m`` corpus rows by inner product for each query: faiss' exact k-NN on each part, merged.

        Returns ``(scores [n, m], global row ids [n, m])``, best first.
        """
        import faiss

        faiss.omp_set_num_threads(threads)
        all_s, all_i = [], []
        for p, e in enumerate(self.emb):
            if len(e) == 0:
                continue
            kk = min(m, len(e))
            s, i = faiss.knn(q, np.ascontiguousarray(e), kk, metric=faiss.METRIC_INNER_PRODUCT)  # [n, kk]
            all_s.append(s)
            all_i.append(i + self.offsets[p])
        s = np.concatenate(all_s, axis=1)  # [n, m * parts]
        i = np.concatenate(all_i, axis=1)
        order = np.argsort(-s, axis=1, kind="stable")[:, :m]
        return np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)


def search_pairs_part(
    corpus: CorpusParts,
    encode_queries: Callable[[list[str]], np.ndarray],
    part: str | Path,
    out: str | Path,
    *,
    k: int,
    margin: float,
    depth: int,
    max_known: int,
    sample_from_top: int | None,
    seed: int,
    instruction: str | None,
    doc_instruction: str | None,
    task: str,
    eval_texts: list[str] | None,
    near_threshold: float | None,
    threads: int = 1,
    query_batch: int = 1024,
) -> dict:
    """Mine one pairs part and write its curated rows. Returns counts ``{"n", "rows", "exact", "near"}``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from nvembed.data.curated import rows_table

    out = Path(out)
    meta_file = out.with_suffix(".json")
    if out.is_file() and meta_file.is_file():
        return json.loads(meta_file.read_text())
    t = pq.read_table(part)
    row_ids, queries = t["row_id"].to_pylist(), t["query"].to_pylist()
    positives = t["positive"].to_numpy()
    known = [set(k) for k in t["known"].to_pylist()]
    n_unique = int((corpus.canon == np.arange(len(corpus.canon))).sum())
    want = min(depth + max_known, n_unique)  # the single-process depth, over unique texts
    extra = int(len(corpus.canon) - n_unique)  # duplicate texts can take slots before they are folded
    rng = random.Random(f"{seed}/{Path(part).name}")
    rows: list[TrainingExample] = []
    for b in range(0, len(queries), query_batch):
        q = np.ascontiguousarray(encode_queries(queries[b : b + query_batch]), dtype=np.float32)  # [n, D]
        pos = corpus.canon[positives[b : b + query_batch]]
        pos_vec = corpus.vectors(pos)  # [n, D]
        pos_scores = np.sum(q * pos_vec, axis=1)  # [n]
        # every duplicate copy may rank above the unique texts: fetch enough rows to keep ``want`` after folding
        scores, ids = corpus.top(q, min(want + extra, len(corpus.canon)), threads)  # [n, m]
        for j in range(len(q)):
            cand = corpus.canon[ids[j]]
            keep = cand >= 0
            cand, cs = cand[keep], scores[j][keep]
            _, first = np.unique(cand, return_index=True)  # a text's best-scoring copy, in score order
            first.sort()
            cand, cs = cand[first][:want], cs[first][:want]
            negs, _ = select_negatives(
                cand, cs, float(pos_scores[j]), known[b + j] | {int(pos[j])}, k, margin, sample_from_top, rng
            )
            texts = corpus.texts([int(pos[j]), *negs])
            rows.append(
                TrainingExample(
                    queries[b + j], texts[0], texts[1:], instruction, doc_instruction, task, "Retrieval", True
                )
            )
    ids_kept = row_ids
    exact = near = 0
    if eval_texts:
        tagged = list(zip(row_ids, rows, strict=True))
        kept, report = decontaminate(rows, eval_texts, near_threshold)
        kept_ids = {id(r) for r in kept}
        ids_kept = [rid for rid, r in tagged if id(r) in kept_ids]
        rows, exact, near = kept, report.exact, report.near
    table = rows_table(rows)
    table = table.set_column(0, "row_id", pa.array(ids_kept, type=pa.int64()))
    meta = {"n": len(queries), "rows": len(rows), "exact": exact, "near": near}
    _atomic_parquet(table, out)
    _atomic_text(json.dumps(meta), meta_file)
    return meta
