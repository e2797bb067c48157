"""Run mteb tasks on local folders (``--task-data TASK=DIR``), through mteb's own task classes and evaluators.

Formats (README "Data"; the layout of ``$NVEMBED_DATA``):

* Retrieval / Reranking (BEIR layout): ``corpus.jsonl`` {_id, title, text}, ``queries.jsonl`` {_id, text},
  ``qrels/<split>.tsv``. mteb's retrieval loader asks ``datasets`` for the configs ``corpus``, ``queries`` and
  ``default`` (qrels), so we materialise a small folder whose ``README.md`` declares them, with links to the files.
* STS, classification: ``<split>.jsonl`` files (``test.jsonl``, ``train.jsonl``, ...) with the task's usual
  columns; ``datasets`` reads links to exactly those files, and the task's own ``dataset_transform`` runs.
* Pair classification ``{"sentence1", "sentence2", "label"}``, clustering ``{"sentences": [...], "labels": [...]}``,
  summarization ``{"text", "human_summaries", "machine_summaries", "relevance"}`` and reranking
  ``{"query", "positive": [...], "negative": [...]}`` (``test.jsonl``): their Hub layouts differ from these files
  (e.g. Sprint's ``sent1``/``sent2``), so we build the task's in-memory dataset ourselves and mark it loaded
  (mteb's documented offline route for local data); mteb's evaluator for the type then scores it.

A folder that does not match raises :class:`LocalDataError` naming the missing file or column.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

REQUIRED_COLUMNS = {
    "STS": {"sentence1", "sentence2", "score"},
    "Classification": {"text", "label"},
    "PairClassification": {"sentence1", "sentence2"},
    "Clustering": {"sentences", "labels"},
    "Summarization": {"text", "human_summaries", "machine_summaries"},
}


class LocalDataError(ValueError):
    pass


def _first_row(path: Path) -> dict:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                try:
                    return json.loads(line)
                except json.JSONDecodeError as err:
                    raise LocalDataError(f"{path}:1: invalid JSON: {err.msg}") from err
    raise LocalDataError(f"{path}: empty file")


def _fingerprint(files: list[Path]) -> str:
    """Resolved path, size and mtime of each file: changes when any source file does."""
    import hashlib

    h = hashlib.sha1()
    for f in files:
        stat = f.resolve().stat()
        h.update(f"{f.resolve()}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


def _materialise_beir(src: Path, split: str, work: Path) -> Path:
    for name in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        if not (src / name).is_file():
            raise LocalDataError(
                f"{src}: not a BEIR folder for split {split!r}: missing {name} "
                f"(expected corpus.jsonl, queries.jsonl, qrels/{split}.tsv)"
            )
    for name, keys in (("corpus.jsonl", {"_id", "text"}), ("queries.jsonl", {"_id", "text"})):
        missing = keys - set(_first_row(src / name))
        if missing:
            raise LocalDataError(f"{src / name}: first row lacks {sorted(missing)}")
    # `datasets` keys its cache of a folder by the README's config text, not by the files it names: link names
    # carry the sources' fingerprint, or a second folder for the same task would load the first one's rows
    # (docs/bugs.md, 2026-12-01)
    fp = _fingerprint([src / "corpus.jsonl", src / "queries.jsonl", src / "qrels" / f"{split}.tsv"])
    work = work / fp
    work.mkdir(parents=True, exist_ok=True)
    for name in ("corpus", "queries"):
        link = work / f"{name}-{fp}.jsonl"
        if not link.exists():
            os.symlink((src / f"{name}.jsonl").resolve(), link)
    # qrels as JSONL: `datasets` picks one builder for the whole repo from the file extensions, so a .tsv next
    # to .jsonl files would be parsed as JSON
    qrels = work / f"qrels-{split}-{fp}.jsonl"
    with open(src / "qrels" / f"{split}.tsv", encoding="utf-8") as fh, open(qrels, "w", encoding="utf-8") as out:
        for i, line in enumerate(fh, start=1):
            cols = line.rstrip("\n").split("\t")
            if i == 1 and cols[:2] == ["query-id", "corpus-id"]:
                continue
            if len(cols) != 3:
                raise LocalDataError(f"{src / 'qrels' / f'{split}.tsv'}:{i}: expected 3 tab-separated columns")
            out.write(json.dumps({"query-id": cols[0], "corpus-id": cols[1], "score": int(float(cols[2]))}) + "\n")
    (work / "README.md").write_text(
        "---\nconfigs:\n"
        f"- config_name: corpus\n  data_files:\n  - split: corpus\n    path: corpus-{fp}.jsonl\n"
        f"- config_name: queries\n  data_files:\n  - split: queries\n    path: queries-{fp}.jsonl\n"
        f"- config_name: default\n  data_files:\n  - split: {split}\n    path: qrels-{split}-{fp}.jsonl\n"
        "---\nLocal copy materialised by nvembed for mteb.\n"
    )
    return work


def _materialise_plain(src: Path, task_type: str, splits: list[str], work: Path, whole: bool = False) -> Path:
    """Links to exactly the split files mteb needs (other *.jsonl in the folder, e.g. a clustering view, stay out).

    ``whole``: a cross-validated task (one labelled set, e.g. SentEval's MR) reads ``all.jsonl`` as its one split.
    """
    if not src.is_dir():
        raise LocalDataError(f"{src}: not a folder")
    required = REQUIRED_COLUMNS.get(task_type, set())
    work.mkdir(parents=True, exist_ok=True)
    for split in splits:
        candidates = [src / f"{split}.jsonl"] + ([src / "dev.jsonl"] if split == "validation" else [])
        if whole:
            candidates.append(src / "all.jsonl")
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            also = " (or all.jsonl: the task is cross-validated over one set)" if whole else ""
            raise LocalDataError(
                f"{src}: missing {split}.jsonl{also} for a {task_type} task (columns {sorted(required)})"
            )
        missing = required - set(_first_row(path))
        if missing:
            raise LocalDataError(f"{path}: first row lacks column(s) {sorted(missing)} needed by {task_type}")
        link = work / f"{split}.jsonl"
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(path.resolve(), link)
    return work


def _rows(src: Path, split: str, required: set[str], prefix: str = "") -> list[dict]:
    path = src / f"{prefix}{split}.jsonl"
    if prefix and not path.is_file():
        path = src / f"{split}.jsonl"
    if not path.is_file():
        raise LocalDataError(f"{src}: missing {split}.jsonl (rows with {sorted(required)})")
    rows = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise LocalDataError(f"{path}:{i}: invalid JSON: {err.msg}") from err
            missing = required - set(row)
            if missing:
                raise LocalDataError(f"{path}:{i}: missing field(s) {sorted(missing)}")
            rows.append(row)
    if not rows:
        raise LocalDataError(f"{path}: no rows")
    return rows


def _in_memory(task, src: Path, split: str):
    """The task's ``dataset`` built from our local formats (types whose Hub layout differs from ours)."""
    from datasets import Dataset, DatasetDict

    task_type = task.metadata.type
    if task_type == "PairClassification":
        rows = _rows(src, split, {"sentence1", "sentence2", "label"})
        data = Dataset.from_list(
            [{"sentence1": r["sentence1"], "sentence2": r["sentence2"], "labels": int(r["label"])} for r in rows]
        )
        return DatasetDict({split: data})
    if task_type == "Clustering":
        rows = _rows(src, split, {"sentences", "labels"}, prefix="clustering_")
        if type(task).__mro__[1].__name__ == "AbsTaskClusteringLegacy":  # rows are whole cluster sets
            data = Dataset.from_list(
                [{"sentences": r["sentences"], "labels": [str(x) for x in r["labels"]]} for r in rows]
            )
        else:  # v2: one row per document
            flat = [
                {"sentences": t, "labels": str(lab)}
                for r in rows
                for t, lab in zip(r["sentences"], r["labels"], strict=True)
            ]
            data = Dataset.from_list(flat)
        return DatasetDict({split: data})
    if task_type == "Summarization":
        rows = _rows(src, split, {"text", "human_summaries", "machine_summaries", "relevance"})
        return DatasetDict({split: Dataset.from_list(rows)})
    if task_type == "Reranking":
        rows = _rows(src, split, {"query", "positive", "negative"})
        texts: dict[str, str] = {}
        queries, qrels, top = [], {}, {}
        for i, r in enumerate(rows):
            qid = f"q{i}"
            queries.append({"id": qid, "text": r["query"]})
            ids = []
            for label, docs in ((1, r["positive"]), (0, r["negative"])):
                for d in docs:
                    did = texts.setdefault(d, f"d{len(texts)}")
                    ids.append(did)
                    if label:
                        qrels.setdefault(qid, {})[did] = 1
            top[qid] = ids
        corpus = Dataset.from_list([{"id": did, "title": "", "text": t} for t, did in texts.items()])
        keep = [q for q in queries if q["id"] in qrels]
        return {
            "default": {
                split: {
                    "corpus": corpus,
                    "queries": Dataset.from_list(keep),
                    "relevant_docs": qrels,
                    "top_ranked": {q["id"]: top[q["id"]] for q in keep},
                }
            }
        }
    raise LocalDataError(f"{task.metadata.name}: no in-memory builder for type {task_type}")


def local_task(task, data_dir: str | Path, work_dir: str | Path):
    """Point an mteb task object at local data; returns the same task (metadata copied, not mutated in place)."""
    src = Path(data_dir).resolve()
    if not src.is_dir():
        raise LocalDataError(f"{src}: not a folder")
    task_type = task.metadata.type
    splits = list(task.metadata.eval_splits)
    if task_type in ("PairClassification", "Clustering", "Summarization") or (
        task_type == "Reranking" and not (src / "corpus.jsonl").is_file()
    ):
        if len(splits) != 1:
            raise LocalDataError(f"{task.metadata.name}: local data supports one eval split, got {splits}")
        task.dataset = _in_memory(task, src, splits[0])
        task.data_loaded = True
        return task
    if task_type in ("Retrieval", "Reranking"):
        if len(splits) != 1:
            raise LocalDataError(f"{task.metadata.name}: local retrieval data supports one eval split, got {splits}")
        path = _materialise_beir(src, splits[0], Path(work_dir) / task.metadata.name)
    else:
        needed = list(dict.fromkeys(splits + (["train"] if task_type == "Classification" else [])))
        whole = bool(getattr(task, "is_cross_validation", False))
        path = _materialise_plain(src, task_type, needed, Path(work_dir) / task.metadata.name, whole=whole)
    dataset = dict(task.metadata.dataset)
    dataset["path"] = str(path)
    task.metadata = task.metadata.model_copy(update={"dataset": dataset})
    task.data_loaded = False
    return task


def score_local(encoder, folders: dict[str, str | Path], work_dir: str | Path) -> dict[str, float]:
    """Score one mteb encoder on mteb tasks read from local folders (``task name -> folder``), in this process,
    without a result cache; returns ``task -> main score x 100`` (2 decimals). Raises if any task failed.

    What the benchmarks use to compare models on the same local data (``nvembed evaluate`` is the Ray path)."""
    import mteb

    from evaluation.suite import register

    register()
    tasks = [local_task(mteb.get_task(name), folder, Path(work_dir) / "mteb-data") for name, folder in folders.items()]
    res = mteb.evaluate(
        encoder,
        tasks,
        cache=None,
        overwrite_strategy="always",
        show_progress_bar=False,
        encode_kwargs={"batch_size": 32},
    )
    if res.exceptions:
        raise RuntimeError(res.exceptions)
    return {r.task_name: round(100 * float(r.get_score()), 2) for r in res.task_results}
