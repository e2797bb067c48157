"""The results folder: mteb ``ResultCache`` layout, written only by the driver, every file atomically.

``<out>/results/<org__model>/<revision>/<Task>.json`` + ``model_meta.json`` (a full mteb ``ModelMeta``, so
``mteb.ResultCache(<out>).load_results()`` reads the run); parts of split tasks under ``<out>/parts/...``; shard
embeddings under ``<out>/embeddings/``; one whole error per failed item under ``<out>/errors/``. mteb's own writes are
not atomic, so we never let it write here.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path


class ResultsFolder:
    def __init__(self, output: Path, name: str, revision: str) -> None:
        key = name.replace("/", "__").replace(" ", "_")
        self.root = output
        self.results = output / "results" / key / revision
        self.parts = output / "parts" / key / revision
        self.embeddings = output / "embeddings"
        self.errors = output / "errors"
        self.local_data = output / "local-data"

    def task_file(self, task: str) -> Path:
        return self.results / f"{task}.json"

    def part_file(self, key: str) -> Path:
        return self.parts / f"{key}.json"

    def write_result(self, result, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        result.to_disk(tmp)
        os.replace(tmp, path)

    def write_meta(self, meta) -> None:
        """mteb's ``model_meta.json`` (what ``ResultCache`` reads), once."""
        path = self.results / "model_meta.json"
        if path.is_file():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(meta.to_dict(), default=str, indent=2))
        os.replace(tmp, path)


def combine(task, parts: list):
    """Merge the parts of one task: the aggregate's own combination, or TaskResult.merge over subsets."""
    if hasattr(task, "combine_task_results") and getattr(task.metadata, "tasks", None):
        return task.combine_task_results(parts)
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    return merged
