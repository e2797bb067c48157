"""Curated datasets on disk: what determines them (the key), their folder format, and the decontamination set.

A curated dataset is the rows one ``data.datasets`` entry turns into (converted, mined, decontaminated), written
once as Parquet under ``<cache_dir>/curated/<name>-<key>/`` and read by every stage, trial and rerun whose settings
give the same key. The key holds only what changes the rows (docs/curation.md):

* the source's fingerprint (local: resolved path, size, mtime; object store: the URI, so a rerun never has to
  contact the endpoint to find its cache), the conversion settings, the seed;
* for mined datasets, the teacher and the mining settings that change the result (``k``, ``margin``, ``depth``,
  ``sample_from_top``, ``index``, ``max_length``, instructions); not ``batch_size`` or ``shard_size``, which only
  change speed, so two stages whose mining sections differ only there share their mined rows;
* the decontamination sources' fingerprints and the near-duplicate threshold.

A folder is complete when ``manifest.json`` exists: it is written last, after the rows, and the folder is built
under a temporary name and renamed, so a crash never leaves a half-written dataset a rerun would trust.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from nvembed.config import DatasetConfig, MiningConfig
from nvembed.data.readers import read_rows
from nvembed.data.schema import TrainingExample

REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "hdfs://", "abfs://")
KEY_VERSION = 2
# mining settings that change which negatives are kept (batch_size / shard_size change only speed)
MINING_RESULT_FIELDS = (
    "teacher",
    "teacher_pooling",
    "teacher_bidirectional",
    "use_instructions",
    "k",
    "margin",
    "depth",
    "sample_from_top",
    "index",
    "max_length",
)
COLUMNS = ("row_id", *(f.name for f in dataclasses.fields(TrainingExample)))


def is_remote(path: str) -> bool:
    return path.startswith(REMOTE_SCHEMES)


def source_fingerprint(path: str, local: Path | None, ds_format: str | None = None, split: str = "train") -> dict:
    """What identifies a source without reading it: the URI for object stores, path/size/mtime for local files."""
    if is_remote(path):
        return {"uri": path}
    assert local is not None
    if local.is_dir():
        names = ["corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"] if ds_format == "beir" else None
        files = [local / n for n in names] if names else sorted(p for p in local.rglob("*") if p.is_file())
        return {"dir": str(local.resolve()), "files": [_file_stamp(f) for f in files]}
    return _file_stamp(local)


def _file_stamp(f: Path) -> dict:
    if not f.exists():
        return {"path": str(f), "missing": True}
    st = f.stat()
    return {"path": str(f.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def mining_key(mining: MiningConfig) -> dict:
    key = {k: getattr(mining, k) for k in MINING_RESULT_FIELDS}
    if mining.teacher and Path(mining.teacher).is_dir():  # a local teacher retrained in place mines other rows
        key["teacher_files"] = source_fingerprint(mining.teacher, Path(mining.teacher))
    return key


def curation_key(
    ds: DatasetConfig,
    *,
    source: dict,
    num_negatives: int,
    seed: int,
    mining: MiningConfig,
    decontamination: dict | None,
    on_error: str = "raise",
) -> str:
    """A short hash of everything that determines the curated rows of ``ds`` (see the module docstring)."""
    conversion = dataclasses.asdict(dataclasses.replace(ds, path="", weight=1.0))  # the weight is the batcher's
    blob = {
        "v": KEY_VERSION,
        "source": source,
        "conversion": conversion,
        "k": ds.num_negatives or num_negatives,
        "seed": seed,
        "mining": mining_key(mining) if ds.mine_negatives else None,
        "decontamination": decontamination,
        "on_error": on_error,  # rows skipped under "skip" must not satisfy a run that asks to stop on them
    }
    return hashlib.sha1(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:12]


def curated_folder(cache_dir: str | Path, name: str, key: str) -> Path:
    return Path(cache_dir) / "curated" / f"{name}-{key}"


def is_complete(folder: str | Path) -> bool:
    return (Path(folder) / "manifest.json").is_file()


def read_manifest(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text())


def rows_table(rows: Iterable[TrainingExample], first_id: int = 0):
    """Rows as an Arrow table with a stable ``row_id`` (their position in the dataset's conversion order)."""
    import pyarrow as pa

    cols: dict[str, list] = {c: [] for c in COLUMNS}
    for i, r in enumerate(rows, start=first_id):
        cols["row_id"].append(i)
        for c in COLUMNS[1:]:
            cols[c].append(getattr(r, c))
    schema = pa.schema(
        [
            ("row_id", pa.int64()),
            ("query", pa.string()),
            ("positive", pa.string()),
            ("negatives", pa.list_(pa.string())),
            ("instruction", pa.string()),
            ("doc_instruction", pa.string()),
            ("task", pa.string()),
            ("task_type", pa.string()),
            ("in_batch_negatives", pa.bool_()),
        ]
    )
    return pa.table(cols, schema=schema)


def publish(tmp: Path, folder: Path, manifest: dict) -> Path:
    """Write the manifest into the finished ``tmp`` folder and rename it to ``folder`` (atomic on one filesystem)."""
    manifest = {**manifest, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    if folder.exists():  # an incomplete leftover (no manifest) or a concurrent writer's identical result
        if is_complete(folder):
            shutil.rmtree(tmp, ignore_errors=True)
            return folder
        shutil.rmtree(folder, ignore_errors=True)
    try:
        os.replace(tmp, folder)
    except OSError:  # another writer published the same key in between: its rows are these rows
        if not is_complete(folder):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def write_curated(folder: Path, rows: list[TrainingExample], manifest: dict) -> Path:
    """Single-process writer: one Parquet file, then the manifest (see :func:`publish`)."""
    import pyarrow.parquet as pq

    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pq.write_table(rows_table(rows), tmp / "part-00000.parquet")
    return publish(tmp, folder, {**manifest, "rows": len(rows)})


def load_curated(folder: str | Path) -> list[TrainingExample]:
    """The rows of a complete curated folder, in ``row_id`` order."""
    import pyarrow.parquet as pq

    folder = Path(folder)
    if not is_complete(folder):
        raise FileNotFoundError(f"{folder}: not a complete curated dataset (no manifest.json)")
    rows: list[tuple[int, TrainingExample]] = []
    for part in sorted(folder.glob("part-*.parquet")):
        for rec in pq.read_table(part).to_pylist():
            rid = rec.pop("row_id")
            rec["negatives"] = list(rec["negatives"] or [])
            rows.append((rid, TrainingExample.from_dict(rec)))
    rows.sort(key=lambda x: x[0])
    return [r for _, r in rows]


# ----------------------------------------------------------------------------------------------- decontamination set


def evaluation_texts(paths: Iterable[Path]) -> list[str]:
    """The texts training must not contain: every text of an evaluation *file*; for a BEIR folder, only its
    evaluation queries (those of its non-train qrels), never its corpus.

    MS MARCO, HotpotQA, FEVER... share their test corpus with their training data: matching whole corpora would
    drop every training row of those sets (docs/bugs.md 2026-12-02).
    """
    texts: list[str] = []
    for path in paths:
        if path.is_dir():
            texts += _beir_eval_queries(path)
            continue
        for _, row in read_rows(path):
            for key in ("text", "sentence1", "sentence2", "query", "title"):
                if isinstance(row.get(key), str):
                    texts.append(row[key])
            for key in ("sentences", "positive", "negative"):
                if isinstance(row.get(key), list):
                    texts += [t for t in row[key] if isinstance(t, str)]
    return texts


def _beir_eval_queries(folder: Path) -> list[str]:
    qrels = [p for p in sorted((folder / "qrels").glob("*.tsv")) if p.stem != "train"]
    wanted: set[str] | None = None
    if qrels:
        wanted = set()
        for q in qrels:
            for line in q.read_text(encoding="utf-8").splitlines():
                cols = line.split("\t")
                if len(cols) >= 2 and cols[:2] != ["query-id", "corpus-id"]:
                    wanted.add(cols[0])
    out = []
    for _, row in read_rows(folder / "queries.jsonl"):
        if (wanted is None or str(row.get("_id")) in wanted) and isinstance(row.get("text"), str):
            out.append(row["text"])
    return out


# ----------------------------------------------------------------------------------------------- reading without rows


def _parts(folder: str | Path) -> list[Path]:
    if not is_complete(folder):
        raise FileNotFoundError(f"{folder}: not a complete curated dataset (no manifest.json)")
    return sorted(Path(folder).glob("part-*.parquet"))


def _ordered_parts(folder: str | Path) -> list[Path]:
    """The parts in ``row_id`` order (each holds an increasing run of row ids; the runs do not overlap)."""
    import pyarrow.parquet as pq

    parts = _parts(folder)
    firsts = []
    for p in parts:
        ids = pq.read_table(p, columns=["row_id"])["row_id"]
        firsts.append(ids[0].as_py() if len(ids) else -1)
    return [p for _, p in sorted(zip(firsts, parts, strict=True))]


def _ordered_batches(folder: str | Path, columns: list[str]):
    """Record batches of ``columns`` in ``row_id`` order."""
    import pyarrow.parquet as pq

    for p in _ordered_parts(folder):
        yield from pq.ParquetFile(p).iter_batches(columns=columns, batch_size=8192)


def positive_keys(folder: str | Path):
    """One 64-bit hash of the normalised positive per row, in row order: what the batcher needs to keep a global
    batch's positives distinct, at 8 bytes a row instead of the rows (the driver's plan, docs/curation.md)."""
    import numpy as np

    from nvembed.data.converters import normalise

    out = []
    for batch in _ordered_batches(folder, ["positive"]):
        out.append(
            np.fromiter(
                (
                    int.from_bytes(
                        hashlib.blake2b(normalise(t).encode(), digest_size=8).digest(), "little", signed=True
                    )
                    for t in batch.column(0).to_pylist()
                ),
                dtype=np.int64,
            )
        )
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def sample_rows(folder: str | Path, per_instruction: int = 256) -> list[TrainingExample]:
    """Up to ``per_instruction`` rows for each distinct (instruction, doc_instruction) of a curated dataset, read in
    batches: what the driver's preflight checks (instruction vs token limits) need, without the dataset."""
    counts: dict[tuple, int] = {}
    out = []
    cols = ["query", "positive", "instruction", "doc_instruction", "task", "task_type", "in_batch_negatives"]
    for batch in _ordered_batches(folder, cols):
        for rec in batch.to_pylist():
            key = (rec["instruction"], rec["doc_instruction"])
            if counts.get(key, 0) < per_instruction:
                counts[key] = counts.get(key, 0) + 1
                out.append(TrainingExample.from_dict(rec))
    return out


class CuratedStore:
    """Rows of curated datasets held as Arrow tables (compact; Python objects only when asked for); a training
    worker resolves its plan's ``(dataset, position)`` references with :meth:`rows`.

    ``needed`` (dataset -> positions) keeps only the rows a rank's plan references: the store reads one part at a
    time and takes those rows, so a rank holds its share of the data, not every dataset.
    """

    def __init__(self, sources: dict[str, str], needed: dict[str, Iterable[int]] | None = None) -> None:
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.tables: dict = {}
        self.where: dict[str, dict[int, int]] = {}
        for name, folder in sources.items():
            want = None
            if needed is not None:
                want = np.unique(np.fromiter(needed.get(name, ()), dtype=np.int64))
            pieces, where, offset, kept = [], {}, 0, 0
            for part in _ordered_parts(folder):
                table = pq.read_table(part)
                n = table.num_rows
                sel = np.arange(n) if want is None else want[(want >= offset) & (want < offset + n)] - offset
                if len(sel):
                    pieces.append(table.take(pa.array(sel)))
                    where.update({int(offset + i): kept + j for j, i in enumerate(sel)})
                    kept += len(sel)
                offset += n
            self.tables[name] = pa.concat_tables(pieces) if pieces else None
            self.where[name] = where

    def rows(self, refs: list[tuple[str, int]]) -> list[TrainingExample]:
        out = []
        for name, idx in refs:
            rec = self.tables[name].slice(self.where[name][int(idx)], 1).to_pylist()[0]
            rec.pop("row_id")
            rec["negatives"] = list(rec["negatives"] or [])
            out.append(TrainingExample.from_dict(rec))
        return out
