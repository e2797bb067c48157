"""The step plan: which rows each rank trains on at each step, fixed before any worker starts.

The driver draws every global batch with :class:`BlendedBatcher` (weighted blend, seeded shuffles, distinct positives
per global batch when in-batch negatives are on) over the curated datasets' positive hashes, not their rows, and
writes ``(step, rank, dataset, row)`` references as Parquet, with ``sources.json`` naming each dataset's curated
folder (nvembed/data/curated.py). Workers stream their own references with Ray Data (``rank == r and step > resumed
step``) and resolve them against the curated rows they load (:class:`nvembed.data.curated.CuratedStore`), so:

* the driver's memory grows by a hash and a shuffle position per row (~50 bytes), not by the rows;
* every rank runs exactly the same number of steps whatever the sizes of the source datasets (no collective
  waits on a rank that ran out of data);
* a restarted run continues at the exact data position: the step is the position;
* the global batch's positives are distinct across ranks, as the gathered in-batch negatives require.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

COLUMNS = ("step", "rank", "dataset", "row")
STEPS_PER_FILE = 2000


def plan_key(sources: dict[str, str], extra: dict) -> str:
    """The plan's identity: the curated folders (named by their keys) and the drawing settings."""
    blob = {"sources": {n: Path(f).name for n, f in sorted(sources.items())}, "extra": extra}
    return hashlib.sha1(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def write_plan(batcher, num_steps: int, world: int, folder: str | Path, sources: dict[str, str]) -> Path:
    """Draw ``num_steps`` global batches (``batcher.next_refs()``); write ``folder/rank-<r>/part-*.parquet`` (one
    folder per rank) and ``folder/sources.json`` (dataset -> curated folder).

    The folder is built under a temporary name and renamed when complete (``_SUCCESS`` marks it), so a crash
    never leaves a half-written plan that a restarted run would trust.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    if (folder / "_SUCCESS").is_file():
        return folder
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    per_rank = batcher.batch_size // world
    if per_rank * world != batcher.batch_size:
        raise ValueError(f"global batch {batcher.batch_size} is not divisible by {world} workers")
    columns = [{c: [] for c in COLUMNS} for _ in range(world)]
    part = 0

    def flush() -> None:
        nonlocal part
        for rank, cols in enumerate(columns):
            if cols["step"]:
                (tmp / f"rank-{rank}").mkdir(parents=True, exist_ok=True)
                pq.write_table(pa.table(cols), tmp / f"rank-{rank}" / f"part-{part:05d}.parquet")
                for c in cols.values():
                    c.clear()
        part += 1

    for step in range(1, num_steps + 1):
        for slot, (name, idx) in enumerate(batcher.next_refs()):
            cols = columns[slot // per_rank]
            cols["step"].append(step)
            cols["rank"].append(slot // per_rank)
            cols["dataset"].append(name)
            cols["row"].append(int(idx))
        if step % STEPS_PER_FILE == 0:
            flush()
    flush()
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "sources.json").write_text(json.dumps({n: str(Path(f).resolve()) for n, f in sources.items()}))
    (tmp / "_SUCCESS").write_text(json.dumps({"steps": num_steps, "world": world, "per_rank": per_rank}))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def rank_files(folder: str | Path, rank: int) -> list[str]:
    """The rank's Parquet files in step order."""
    files = sorted(str(p) for p in (Path(folder) / f"rank-{rank}").glob("part-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no plan files for rank {rank} under {Path(folder).resolve()} (a relative path?)")
    return files


def plan_sources(folder: str | Path) -> dict[str, str]:
    return json.loads((Path(folder) / "sources.json").read_text())
