"""Build the training rows of a run from its ``data`` config: convert, mine, decontaminate, keep.

The result is a dict ``dataset name -> rows`` that the batcher blends. Each dataset's rows are kept as a curated
folder (nvembed/data/curated.py) keyed by what determines them, so another stage, trial or rerun with the same
settings reads them instead of mining again. This module curates in one process; ``nvembed prepare``
(nvembed/launch/prepare.py) writes the same folders with a Ray pipeline.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nvembed.config import DataConfig, DatasetConfig, MiningConfig
from nvembed.data import converters as conv
from nvembed.data import curated
from nvembed.data.curated import REMOTE_SCHEMES, is_complete
from nvembed.data.instructions import instruction_for
from nvembed.data.readers import ErrorPolicy
from nvembed.data.schema import TrainingExample

logger = logging.getLogger(__name__)

Teacher = Callable[[], object]  # returns an Embedder, built lazily (only if something needs mining)


def resolve_path(path: str, base: str | Path | None, cache_dir: str | Path | None = None) -> Path:
    """A local path for ``path``; object-store URIs (s3://, gs://, ...) are copied once into ``cache_dir/remote``
    with pyarrow's filesystems (the ones Ray Data reads with), so that validation can name file and line."""
    if path.startswith(REMOTE_SCHEMES):
        return fetch_remote(path, Path(cache_dir or ".nvembed-cache") / "remote")
    p = Path(os.path.expandvars(os.path.expanduser(path)))
    return p if p.is_absolute() or base is None else Path(base) / p


def fetch_remote(uri: str, cache: Path) -> Path:
    import pyarrow.fs as pafs

    fs, remote = pafs.FileSystem.from_uri(uri)
    local = cache / hashlib.sha1(uri.encode()).hexdigest()[:12] / Path(remote).name
    if local.exists():
        return local
    info = fs.get_file_info(remote)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{uri}: not found")
    tmp = local.with_name(local.name + ".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    if info.type == pafs.FileType.Directory:
        pafs.copy_files(remote, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    else:
        with fs.open_input_stream(remote) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 24)  # streamed: a corpus file never sits in memory whole
    os.replace(tmp, local)
    return local


def teacher_encoder(teacher, mining: MiningConfig, instruction: str | None):
    """``texts -> float32 [n, D]`` with the mining teacher at the mining section's batch size and token cap."""

    def encode(texts):
        return teacher.encode(
            list(texts),
            instruction=instruction,
            batch_size=mining.batch_size,
            max_length=mining.max_length,
            show_progress=False,
        )

    return encode


def _mine_for_rows(rows: list[TrainingExample], pool: list[str], teacher, mining: MiningConfig, k: int) -> None:
    """Fill ``row.negatives`` by mining ``pool`` (positives of every row included) with the teacher."""
    from nvembed.mining import mine_hard_negatives

    index = {t: i for i, t in enumerate(dict.fromkeys(pool))}
    corpus = list(index)
    for r in rows:
        index.setdefault(r.positive, len(corpus))
        if len(corpus) < len(index):
            corpus.append(r.positive)
    known: dict[str, set[int]] = {}
    for r in rows:
        known.setdefault(r.query, set()).add(index[r.positive])

    def enc(texts, instruction=None):
        return teacher_encoder(teacher, mining, instruction)(texts)

    instructions = {r.instruction for r in rows} if mining.use_instructions else {None}
    for instruction in instructions:
        group = [r for r in rows if (r.instruction if mining.use_instructions else None) == instruction]
        result = mine_hard_negatives(
            lambda t, ins=instruction: enc(t, ins),
            enc,
            [r.query for r in group],
            [index[r.positive] for r in group],
            corpus,
            known_positives=[known[r.query] for r in group],
            k=k,
            margin=mining.margin,
            depth=mining.depth,
            sample_from_top=mining.sample_from_top,
            index_kind=mining.index,
            shard_size=mining.shard_size,
        )
        for r, negs in zip(group, result.negatives, strict=True):
            r.negatives = [corpus[i] for i in negs]


def convert_dataset(
    ds: DatasetConfig,
    num_negatives: int,
    policy: ErrorPolicy,
    base: str | Path | None,
    teacher: Teacher | None,
    mining: MiningConfig,
    seed: int,
    cache_dir: str | Path | None = None,
) -> list[TrainingExample]:
    """One dataset's rows (no caching)."""
    task = ds.task or ds.name
    query_instr = ds.instruction if ds.instruction is not None else instruction_for(task, "query")
    k = ds.num_negatives or num_negatives
    path = resolve_path(ds.path, base, cache_dir)
    if ds.format == "beir":
        data = conv.load_beir(path, ds.split, policy)
        rows = conv.retrieval_examples(data, ds.name, query_instr)
        pool = list(data.corpus.values())
    elif ds.format == "triplets":
        rows = conv.triplet_examples(path, ds.name, query_instr, None if ds.mine_negatives else k, policy)
        pool = [r.positive for r in rows] + [n for r in rows for n in r.negatives]
    elif ds.format == "sts":
        rows = conv.sts_examples(path, ds.name, query_instr, ds.min_score, ds.max_score, policy)
        pool = [r.positive for r in rows]
    elif ds.format == "pair":
        rows = conv.pair_classification_examples(path, ds.name, query_instr, policy)
        pool = [r.positive for r in rows]
    elif ds.format == "reranking":
        rows = conv.reranking_examples(path, ds.name, query_instr, k, policy)
        pool = []
    else:
        task_type = "Classification" if ds.format == "classification" else "Clustering"
        rows = conv.example_based_examples(path, ds.name, task_type, query_instr, k, seed, ds.label_texts, policy)
        pool = []
    if ds.max_rows is not None and len(rows) > ds.max_rows:
        random.Random(f"{seed}/{ds.name}").shuffle(rows)
        rows = rows[: ds.max_rows]
    if ds.mine_negatives:
        if not pool:
            raise ValueError(f"dataset {ds.name!r}: mining is not available for format {ds.format!r}")
        if teacher is None:
            raise ValueError(f"dataset {ds.name!r} asks for mined negatives but no teacher was given")
        _mine_for_rows(rows, pool, teacher(), mining, k)
    if ds.doc_instruction is not None:
        for r in rows:
            r.doc_instruction = ds.doc_instruction
    return rows


@dataclass
class CurationTarget:
    """One dataset of a run: its config, where its curated rows live (``folder``) and what keys them."""

    ds: DatasetConfig
    key: str
    folder: Path

    @property
    def done(self) -> bool:
        return is_complete(self.folder)


def curation_targets(
    data: DataConfig, num_negatives: int, cache_dir: str | Path, base: str | Path | None, seed: int
) -> tuple[list[CurationTarget], list[Path]]:
    """Keys and folders of every dataset of ``data`` and the decontamination sources (local paths), without reading
    any data and without contacting an object store (a remote source is keyed by its URI)."""
    decon_paths = [resolve_path(p, base, cache_dir) for p in data.decontaminate]
    decon = (
        {"sources": [curated.source_fingerprint(str(p), p) for p in decon_paths], "near": data.near_duplicate_threshold}
        if decon_paths
        else None
    )
    targets = []
    for ds in data.datasets:
        local = None if curated.is_remote(ds.path) else resolve_path(ds.path, base)
        source = curated.source_fingerprint(ds.path, local, ds.format, ds.split)
        key = curated.curation_key(
            ds,
            source=source,
            num_negatives=num_negatives,
            seed=seed,
            mining=data.mining,
            decontamination=decon,
            on_error=data.on_error,
        )
        targets.append(CurationTarget(ds, key, curated.curated_folder(cache_dir, ds.name, key)))
    return targets, decon_paths


def load_targets(
    targets: list[CurationTarget], built: set[str], log: Callable[[str], None] = print
) -> dict[str, list[TrainingExample]]:
    """The rows of every target; ``built`` names those curated by this run (the others were cached)."""
    out = {}
    for t in targets:
        rows = curated.load_curated(t.folder)
        if not rows:
            raise ValueError(f"dataset {t.ds.name!r} produced no training rows ({t.folder})")
        how = "curated now" if t.ds.name in built else "cached"
        log(f"data: {t.ds.name}: {len(rows)} rows ({t.ds.format}, weight {t.ds.weight}; {how} {t.folder.name})")
        out[t.ds.name] = rows
    return out


def build_training_rows(
    data: DataConfig,
    num_negatives: int,
    cache_dir: str | Path | None = None,
    base: str | Path | None = None,
    teacher: Teacher | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, list[TrainingExample]]:
    """All datasets of ``data`` as rows, curated in this process (``nvembed train --local``; the reference the Ray
    pipeline of ``nvembed prepare`` is checked against) and kept under ``cache_dir/curated``."""
    cache_dir = Path(cache_dir or ".nvembed-cache")
    policy = ErrorPolicy(data.on_error)
    targets, decon_paths = curation_targets(data, num_negatives, cache_dir, base, seed)
    eval_texts = curated.evaluation_texts(decon_paths) if decon_paths and not all(t.done for t in targets) else []
    built = set()
    for t in targets:
        if t.done:
            continue
        built.add(t.ds.name)
        before = Counter(policy.skipped)
        rows = convert_dataset(t.ds, num_negatives, policy, base, teacher, data.mining, seed, cache_dir)
        converted = len(rows)
        decon = None
        if eval_texts:
            rows, report = conv.decontaminate(rows, eval_texts, data.near_duplicate_threshold)
            decon = {"exact": report.exact, "near": report.near}
            log(f"data: {t.ds.name}: {report}")
        skipped = dict(policy.skipped - before)
        manifest = {
            "dataset": t.ds.name,
            "key": t.key,
            "format": t.ds.format,
            "source": t.ds.path,
            "converted": converted,
            "skipped": skipped,
            "mined": converted if t.ds.mine_negatives else 0,
            "decontaminated": decon,
            "by": "local",
        }
        curated.write_curated(t.folder, rows, manifest)
    if policy.skipped:
        log(f"data: {policy.report()}")
    return load_targets(targets, built, log)
