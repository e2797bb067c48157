"""``nvembed prepare``: curate a stage's datasets on the Ray cluster with Ray Data (docs/curation.md).

A mined BEIR dataset (the paper-scale case: MS MARCO, NQ, HotpotQA...) runs as a pipeline whose driver holds only
counts: its JSONL files are cut into byte ranges and parsed by Ray Data tasks (``map_batches``) into Parquet parts;
one task links the qrels to the parts' ids (the id map lives in that task, not on the driver); an actor pool of
teachers (``num_gpus`` per actor when the cluster has GPUs) encodes the corpus parts; a second pool encodes each
part of (query, positive) pairs and searches it exactly against every corpus part (faiss k-NN per part, merged),
applies TopK-PercPos, gathers the negatives' texts and decontaminates. Each part's output is written atomically and
skipped when it exists, so a crashed ``prepare`` continues where it stopped; the curated folder is published only
complete (nvembed/data/curated.py). Every other dataset (triplets, STS, classification...: small, and some need
whole-file state such as the rows of each class) is curated by one Ray task with the single-process code, so the
driver still holds none of its rows.

The functions mapped over parts live in nvembed/data/parts.py (no Ray); this module is the wiring.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from nvembed.config import ConfigError, DataConfig, MiningConfig, TrainConfig
from nvembed.data import curated
from nvembed.data.build import CurationTarget, curation_targets, resolve_path, teacher_encoder
from nvembed.data.readers import DataError

Log = Callable[[str], None]


# ----------------------------------------------------------------------------------------------- actors and tasks


def load_teacher(mining: MiningConfig, threads: int):
    """The mining teacher on this worker's device (a GPU when Ray gave this actor one)."""
    import ray
    import torch

    from nvembed.embedder import Embedder

    torch.set_num_threads(max(1, threads))
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    return Embedder.from_pretrained(
        mining.teacher or "packaged:all-MiniLM-L6-v2",
        pooling=mining.teacher_pooling,
        bidirectional=mining.teacher_bidirectional,
        device=device,
    )


def _parse_batch(batch: dict) -> dict:
    from nvembed.data.parts import parse_part

    out = {"part": [], "n": [], "errors": []}
    for part, src, start, end, dst, title in zip(
        batch["part"], batch["src"], batch["start"], batch["end"], batch["out"], batch["with_title"], strict=True
    ):
        meta = parse_part(str(src), int(start), int(end), str(dst), with_title=bool(title))
        out["part"].append(int(part))
        out["n"].append(meta["n"])
        out["errors"].append(json.dumps(meta["errors"]))
    return out


class EncodeCorpus:
    """Ray Data actor: the teacher's document vectors of corpus parts."""

    def __init__(self, mining: dict, threads: int) -> None:
        self.mining = MiningConfig(**mining)
        self.encode = teacher_encoder(load_teacher(self.mining, threads), self.mining, None)

    def __call__(self, batch: dict) -> dict:
        from nvembed.data.parts import encode_part

        n = [encode_part(self.encode, str(src), str(dst)) for src, dst in zip(batch["src"], batch["out"], strict=True)]
        return {"part": batch["part"], "n": np.asarray(n)}


class SearchPairs:
    """Ray Data actor: encode a part's queries, exact top-k over every corpus part, select, write curated rows."""

    def __init__(self, mining: dict, threads: int, work: str, corpus_parts: int, settings: dict) -> None:
        from nvembed.data.parts import CorpusParts

        self.mining = MiningConfig(**mining)
        self.threads = threads
        teacher = load_teacher(self.mining, threads)
        self.settings = dict(settings)
        teacher_instruction = self.settings["instruction"] if self.mining.use_instructions else None
        self.encode = teacher_encoder(teacher, self.mining, teacher_instruction)
        self.corpus = CorpusParts(work, corpus_parts)
        eval_file = self.settings.pop("eval_texts_file")
        self.eval_texts = json.loads(Path(eval_file).read_text()) if eval_file else None

    def __call__(self, batch: dict) -> dict:
        from nvembed.data.parts import search_pairs_part

        metas = [
            search_pairs_part(
                self.corpus,
                self.encode,
                str(src),
                str(dst),
                eval_texts=self.eval_texts,
                threads=self.threads,
                **self.settings,
            )
            for src, dst in zip(batch["src"], batch["out"], strict=True)
        ]
        return {key: np.asarray([m[key] for m in metas]) for key in ("n", "rows", "exact", "near")}


def _convert_task(
    ds,
    num_negatives: int,
    data: DataConfig,
    seed: int,
    cache_dir: str,
    eval_file: str | None,
    folder: str,
    key: str,
    threads: int,
) -> dict:
    """One non-pipelined dataset curated in a Ray task with the single-process code (see the module docstring)."""
    from nvembed.data import converters as conv
    from nvembed.data.build import convert_dataset
    from nvembed.data.readers import ErrorPolicy

    policy = ErrorPolicy(data.on_error)
    rows = convert_dataset(
        ds, num_negatives, policy, None, lambda: load_teacher(data.mining, threads), data.mining, seed, cache_dir
    )
    converted = len(rows)
    decon = None
    if eval_file:
        rows, report = conv.decontaminate(rows, json.loads(Path(eval_file).read_text()), data.near_duplicate_threshold)
        decon = {"exact": report.exact, "near": report.near}
    manifest = {
        "dataset": ds.name,
        "key": key,
        "format": ds.format,
        "source": ds.path,
        "converted": converted,
        "skipped": dict(policy.skipped),
        "mined": converted if ds.mine_negatives else 0,
        "decontaminated": decon,
        "by": "ray-task",
    }
    curated.write_curated(Path(folder), rows, manifest)
    return curated.read_manifest(folder)


def _eval_texts_task(paths: list[str], out: str) -> int:
    texts = curated.evaluation_texts([Path(p) for p in paths])
    tmp = Path(out).with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(texts))
    os.replace(tmp, out)
    return len(texts)


# ----------------------------------------------------------------------------------------------- the pipeline


@dataclasses.dataclass
class Resources:
    workers: int
    cpus: float
    gpus: float

    @classmethod
    def of(cls, cfg: TrainConfig) -> Resources:
        import ray

        c = cfg.data.curation
        gpus = c.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        return cls(c.workers or cfg.scaling.num_workers, c.cpus_per_worker, gpus)

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus))


def _quiet_ray_data() -> None:
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the driver draws one bar per phase instead
    if hasattr(ctx, "print_on_execution_start"):
        ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _stream(items: list[dict], fn, *, desc: str, unit: str, total: int, count: str = "n", **map_args) -> Iterator[dict]:
    """Map ``fn`` over ``items`` (one item per batch) with Ray Data; yield each result row with a driver-side bar."""
    import ray

    if not items:
        return
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(fn, batch_size=1, **map_args)
    with tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True) as bar:
        for row in ds.iter_rows():
            bar.update(int(row[count]))
            yield row


def _get(ref):
    """``ray.get`` that re-raises a task's own data or config error as itself (its message names file and line)."""
    import ray

    from nvembed.config import ConfigError

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, (DataError, ConfigError, ValueError, FileNotFoundError)):
            raise err.cause from None
        raise


def _raise_first(errors: list[tuple[str, int, int, str]]) -> None:
    """``errors``: (file, part start byte, line in part, reason); raises the earliest as ``file:line: reason``."""
    from nvembed.data.parts import global_line

    path, start, line, reason = min(errors, key=lambda e: (e[0], e[1], e[2]))
    raise DataError(path, global_line(path, start, line), reason)


def _parse_files(
    files: list[tuple[str, Path, bool]], work: Path, part_bytes: int, on_error: str, skipped: Counter
) -> dict[str, int]:
    """Parse corpus / queries into Parquet parts. Returns parts per kind; bad rows raise or are counted."""
    from nvembed.data.parts import byte_parts

    items, starts = [], {}
    parts = {}
    for kind, path, title in files:
        if not path.is_file():
            raise DataError(path, None, "file not found")
        ranges = byte_parts(path, part_bytes)
        parts[kind] = len(ranges)
        for i, (a, b) in enumerate(ranges):
            items.append(
                {
                    "part": len(items),
                    "src": str(path),
                    "start": a,
                    "end": b,
                    "with_title": title,
                    "out": str(work / kind / f"part-{i:05d}.parquet"),
                }
            )
            starts[len(items) - 1] = (str(path), a)
    errors = []
    # every part is parsed before the first error is reported: parts finish in any order, and the report must name
    # the first bad line of the file, as the single-process reader does (parsing is the cheap phase)
    for row in _stream(items, _parse_batch, desc="prepare: parse", unit="row", total=0, num_cpus=1):
        for line, reason in json.loads(row["errors"]):
            path, start = starts[int(row["part"])]
            errors.append((path, start, line, reason))
    if errors:
        if on_error == "raise":
            _raise_first(errors)
        skipped.update(reason.split(":")[0] for *_, reason in errors)
    return parts


def _curate_beir_mined(
    t: CurationTarget, cfg: TrainConfig, local: Path, work: Path, eval_file: str | None, res: Resources, log: Log
) -> dict:
    import ray

    from nvembed.data import parts as P
    from nvembed.data.instructions import instruction_for

    ds, data, mining = t.ds, cfg.data, cfg.data.mining
    qrels = local / "qrels" / f"{ds.split}.tsv"
    if not qrels.is_file():  # found before any part is parsed
        raise DataError(qrels, None, "file not found")
    skipped: Counter = Counter()
    n_parts = _parse_files(
        [("corpus", local / "corpus.jsonl", True), ("queries", local / "queries.jsonl", False)],
        work,
        data.curation.part_bytes,
        data.on_error,
        skipped,
    )
    linked = _get(
        ray.remote(num_cpus=1)(P.link).remote(
            str(work),
            n_parts["corpus"],
            n_parts["queries"],
            str(local / "qrels" / f"{ds.split}.tsv"),
            on_error=data.on_error,
            max_rows=ds.max_rows,
            seed=cfg.run.seed,
            name=ds.name,
            pairs_per_part=data.curation.pairs_per_part,
        )
    )
    if linked.first_error:
        e = linked.first_error
        if e["kind"] == "qrels":
            raise DataError(local / "qrels" / f"{ds.split}.tsv", e["line"], e["reason"])
        path = local / f"{e['kind']}.jsonl"
        start = P.byte_parts(path, data.curation.part_bytes)[e["part"]][0]
        raise DataError(path, P.global_line(path, start, e["line"]), e["reason"])
    skipped.update(linked.skipped)
    if not linked.pairs:
        raise ValueError(f"dataset {ds.name!r}: no (query, positive) pairs in {local}/qrels/{ds.split}.tsv")
    mining_dict = dataclasses.asdict(mining)
    actor_args = {"compute": ray.data.ActorPoolStrategy(size=res.workers), "num_cpus": res.cpus, "num_gpus": res.gpus}
    corpus_items = [
        {
            "part": i,
            "src": str(work / "corpus" / f"part-{i:05d}.parquet"),
            "out": str(work / "emb" / f"part-{i:05d}.npy"),
        }
        for i in range(n_parts["corpus"])
    ]
    n_docs = sum(P.pq_rows(Path(it["src"])) for it in corpus_items)
    encoded = sum(
        int(row["n"])
        for row in _stream(
            corpus_items,
            EncodeCorpus,
            desc="prepare: encode corpus",
            unit="doc",
            total=n_docs,
            fn_constructor_kwargs={"mining": mining_dict, "threads": res.threads},
            **actor_args,
        )
    )
    if encoded != n_docs:
        raise RuntimeError(f"dataset {ds.name!r}: {encoded} of {n_docs} corpus documents encoded")
    instruction = ds.instruction if ds.instruction is not None else instruction_for(ds.task or ds.name, "query")
    settings = {
        "k": ds.num_negatives or cfg.run.num_negatives,
        "margin": mining.margin,
        "depth": mining.depth,
        "max_known": linked.max_known,
        "sample_from_top": mining.sample_from_top,
        "seed": cfg.run.seed,
        "instruction": instruction,
        "doc_instruction": ds.doc_instruction,
        "task": ds.name,
        "near_threshold": data.near_duplicate_threshold,
        "eval_texts_file": eval_file,
    }
    pair_items = [
        {
            "part": j,
            "src": str(work / "pairs" / f"part-{j:05d}.parquet"),
            "out": str(work / "rows" / f"part-{j:05d}.parquet"),
        }
        for j in range(linked.pair_parts)
    ]
    totals = Counter()
    for row in _stream(
        pair_items,
        SearchPairs,
        desc="prepare: search queries",
        unit="query",
        total=linked.pairs,
        fn_constructor_kwargs={
            "mining": mining_dict,
            "threads": res.threads,
            "work": str(work),
            "corpus_parts": n_parts["corpus"],
            "settings": settings,
        },
        **actor_args,
    ):
        totals.update({k: int(row[k]) for k in ("n", "rows", "exact", "near")})
    tmp = t.folder.with_name(t.folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for j in range(linked.pair_parts):
        os.replace(work / "rows" / f"part-{j:05d}.parquet", tmp / f"part-{j:05d}.parquet")
    manifest = {
        "dataset": ds.name,
        "key": t.key,
        "format": ds.format,
        "source": ds.path,
        "converted": linked.pairs,
        "skipped": dict(skipped),
        "mined": totals["n"],
        "rows": totals["rows"],
        "decontaminated": {"exact": totals["exact"], "near": totals["near"]} if eval_file else None,
        "by": f"ray-data ({res.workers} workers, {n_docs} documents, {n_parts['corpus']} corpus parts)",
    }
    curated.publish(tmp, t.folder, manifest)
    shutil.rmtree(work, ignore_errors=True)
    return manifest


def curate_targets_on_ray(
    cfg: TrainConfig, targets: list[CurationTarget], decon_paths: list[Path], cache_dir: Path, log: Log = print
) -> list[dict]:
    """Curate every incomplete target on the connected Ray cluster; returns their manifests."""
    import ray

    from nvembed.data.build import fetch_remote

    todo = [t for t in targets if not t.done]
    if not todo:
        return []
    mining = cfg.data.mining
    if any(t.ds.mine_negatives for t in todo) and mining.index != "flat":
        raise ConfigError(
            f"data.mining.index={mining.index!r}: the Ray pipeline searches exactly (faiss k-NN per corpus part, "
            "the same result as a flat index); set data.mining.index=flat, or curate with --local for an "
            "approximate index"
        )
    if mining.teacher and Path(mining.teacher).exists():  # actors run in another working directory
        cfg = dataclasses.replace(
            cfg,
            data=dataclasses.replace(
                cfg.data, mining=dataclasses.replace(mining, teacher=str(Path(mining.teacher).resolve()))
            ),
        )
    _quiet_ray_data()
    res = Resources.of(cfg)
    eval_file = None
    if decon_paths:
        eval_file = str(cache_dir / "work" / f"eval-texts-{os.getpid()}.json")
        Path(eval_file).parent.mkdir(parents=True, exist_ok=True)
        n = _get(ray.remote(num_cpus=1)(_eval_texts_task).remote([str(p) for p in decon_paths], eval_file))
        log(f"prepare: decontamination set: {n} evaluation texts from {len(decon_paths)} sources")
    manifests, tasks = [], []
    # single-task datasets are submitted first and run side by side; the pipelines run one after the other (each
    # spreads over every worker); then the tasks' results are collected
    for t in sorted(todo, key=lambda t: t.ds.format == "beir" and t.ds.mine_negatives):
        ds = t.ds
        if curated.is_remote(ds.path):
            # one streamed copy into the (shared) cache, by the driver, which holds the credentials; the pipeline
            # reads the copy, so the object is downloaded once, and a cached dataset is never looked up remotely
            local = fetch_remote(ds.path, cache_dir / "remote")
        else:
            local = resolve_path(ds.path, None).resolve()
        log(f"prepare: {ds.name}: {ds.format} from {ds.path}" + (" (mining)" if ds.mine_negatives else ""))
        if ds.format == "beir" and ds.mine_negatives:
            # the parts' layout names the work folder: a resumed run with other part sizes starts a new one
            work = cache_dir / "work" / f"{t.folder.name}-p{data_layout(cfg)}"
            manifest = _curate_beir_mined(t, cfg, local, work, eval_file, res, log)
            log(f"prepare: {ds.name}: {describe(manifest)}")
            manifests.append(manifest)
        else:
            task = ray.remote(_convert_task).options(num_cpus=res.cpus, num_gpus=res.gpus if ds.mine_negatives else 0)
            ds_local = dataclasses.replace(ds, path=str(local))
            args = (ds_local, cfg.run.num_negatives, cfg.data, cfg.run.seed, str(cache_dir), eval_file)
            tasks.append((ds.name, task.remote(*args, str(t.folder), t.key, res.threads)))
    for name, ref in tasks:
        manifest = _get(ref)
        log(f"prepare: {name}: {describe(manifest)}")
        manifests.append(manifest)
    if eval_file:
        Path(eval_file).unlink(missing_ok=True)
    return manifests


def data_layout(cfg: TrainConfig) -> str:
    c = cfg.data.curation
    return f"{c.part_bytes}-{c.pairs_per_part}"


def describe(m: dict) -> str:
    skipped = ", ".join(f"{r} x{n}" for r, n in sorted(m.get("skipped", {}).items())) or "none"
    decon = m.get("decontaminated")
    dropped = f", decontamination dropped {decon['exact']} exact / {decon['near']} near" if decon else ""
    return f"{m['converted']} rows in, {m.get('mined', 0)} mined, {m['rows']} curated; skipped: {skipped}{dropped}"


def stage_targets(cfg: TrainConfig) -> tuple[list[CurationTarget], list[Path], Path]:
    cache = Path(cfg.data.cache_dir or Path(cfg.run.output_dir) / "data").resolve()
    targets, decon = curation_targets(cfg.data, cfg.run.num_negatives, cache, None, cfg.run.seed)
    return targets, [p.resolve() for p in decon], cache


def prepare_stage_data(cfg: TrainConfig, log: Log = print) -> list[CurationTarget]:
    """Curate what the stage lacks (Ray must be connected); return its targets, all complete."""
    from nvembed.training.preflight import check_instructions_registered

    check_instructions_registered(cfg)  # before any data is read
    targets, decon, cache = stage_targets(cfg)
    for t in targets:
        if t.done:
            log(f"prepare: {t.ds.name}: cached ({t.folder.name}): {describe(curated.read_manifest(t.folder))}")
    curate_targets_on_ray(cfg, targets, decon, cache, log)
    return targets


def prepare_job(job, stages: list[int] | None = None, address: str | None = None, log: Log = print) -> dict[int, list]:
    """``nvembed prepare``: curate the data of the job's stages (stage 2 reuses what stage 1 curated)."""
    from nvembed.launch.storage import alive_nodes, check_shared_paths
    from nvembed.launch.trainer import ray_connection

    out = {}
    with ray_connection(job, address):
        check_shared_paths(job, alive_nodes(), stages)
        for n in stages or job.stages():
            log(f"== stage {n}: data")
            out[n] = [t.folder for t in prepare_stage_data(job.stage_config(n), log)]
    for n, folders in out.items():
        for f in folders:
            log(f"stage {n}: {f}")
    return out
