"""Build the training rows of a run from its ``data`` config: convert, mine, decontaminate, cache.

The result is a dict ``dataset name -> rows`` that the batcher blends. Rows are cached as JSONL under
``data.cache_dir`` keyed by a hash of the dataset's config (and the mining settings), so a resumed or repeated run
does not mine again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from nvembed.config import DataConfig, DatasetConfig, MiningConfig
from nvembed.data import converters as conv
from nvembed.data.instructions import instruction_for
from nvembed.data.readers import ErrorPolicy, read_rows
from nvembed.data.schema import TrainingExample

logger = logging.getLogger(__name__)

Teacher = Callable[[], object]  # returns an Embedder, built lazily (only if something needs mining)


REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "hdfs://", "abfs://")


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
            dst.write(src.read())
    os.replace(tmp, local)
    return local


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
        return teacher.encode(
            list(texts),
            instruction=instruction,
            batch_size=mining.batch_size,
            max_length=mining.max_length,
            show_progress=False,
        )

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
    query_instr = instruction_for(task, "query")
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
    return rows


def _eval_texts(paths: list[str], base: str | Path | None) -> list[str]:
    texts: list[str] = []
    for raw in paths:
        path = resolve_path(raw, base)
        files = [path / "corpus.jsonl", path / "queries.jsonl"] if path.is_dir() else [path]
        for f in files:
            for _, row in read_rows(f):
                for key in ("text", "sentence1", "sentence2", "query", "title"):
                    if isinstance(row.get(key), str):
                        texts.append(row[key])
                for key in ("sentences", "positive", "negative"):
                    if isinstance(row.get(key), list):
                        texts += [t for t in row[key] if isinstance(t, str)]
    return texts


def build_training_rows(
    data: DataConfig,
    num_negatives: int,
    cache_dir: str | Path | None = None,
    base: str | Path | None = None,
    teacher: Teacher | None = None,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, list[TrainingExample]]:
    """All datasets of ``data`` as rows, cached by config hash under ``cache_dir``."""
    policy = ErrorPolicy(data.on_error)
    eval_texts = _eval_texts(data.decontaminate, base) if data.decontaminate else []
    out: dict[str, list[TrainingExample]] = {}
    for ds in data.datasets:
        key = json.dumps(
            {
                # the blend weight only matters to the batcher: re-weighting reuses the converted (mined) rows
                "ds": asdict(replace(ds, path=str(resolve_path(ds.path, base)), weight=1.0)),
                "k": num_negatives,
                "seed": seed,
                "mining": asdict(data.mining) if ds.mine_negatives else None,
                "decon": data.decontaminate,
                "near": data.near_duplicate_threshold,
                "v": 1,
            },
            sort_keys=True,
        )
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        cached = Path(cache_dir) / f"{ds.name}-{digest}.jsonl" if cache_dir else None
        if cached is not None and cached.is_file():
            rows = [TrainingExample.from_dict(json.loads(line)) for line in cached.read_text().splitlines()]
            log(f"data: {ds.name}: {len(rows)} rows (cached {cached.name})")
        else:
            rows = convert_dataset(ds, num_negatives, policy, base, teacher, data.mining, seed, cache_dir)
            if eval_texts:
                rows, report = conv.decontaminate(rows, eval_texts, data.near_duplicate_threshold)
                log(f"data: {ds.name}: {report}")
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_suffix(f".{os.getpid()}.tmp")  # concurrent sweep trials share the cache
                tmp.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in rows))
                os.replace(tmp, cached)
            log(f"data: {ds.name}: {len(rows)} rows ({ds.format}, weight {ds.weight})")
        if not rows:
            raise ValueError(f"dataset {ds.name!r} produced no training rows")
        out[ds.name] = rows
    if policy.skipped:
        log(f"data: {policy.report()}")
    return out
