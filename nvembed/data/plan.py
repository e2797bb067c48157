"""The step plan: which rows each rank trains on at each step, fixed before any worker starts.

The driver draws every global batch with :class:`BlendedBatcher` (weighted blend, seeded shuffles, distinct positives
per global batch when in-batch negatives are on) and writes them as Parquet with ``step`` and ``rank`` columns.
Workers stream their own rows with Ray Data (``rank == r and step > resumed step``), so:

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

from nvembed.data.schema import TrainingExample

COLUMNS = (
    "step",
    "rank",
    "query",
    "positive",
    "negatives",
    "instruction",
    "doc_instruction",
    "task",
    "task_type",
    "in_batch_negatives",
)
STEPS_PER_FILE = 2000


def plan_key(datasets: dict[str, list[TrainingExample]], extra: dict) -> str:
    h = hashlib.sha1(json.dumps(extra, sort_keys=True).encode())
    for name in sorted(datasets):
        h.update(name.encode())
        for r in datasets[name]:
            h.update(r.query.encode())
            h.update(r.positive.encode())
            h.update("\x1f".join(r.negatives).encode())
    return h.hexdigest()[:16]


def write_plan(batcher, num_steps: int, world: int, folder: str | Path) -> Path:
    """Draw ``num_steps`` global batches; write ``folder/rank-<r>/part-*.parquet`` (one folder per rank).

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
        for slot, row in enumerate(batcher.next_batch()):
            cols = columns[slot // per_rank]
            cols["step"].append(step)
            cols["rank"].append(slot // per_rank)
            for c in COLUMNS[2:]:
                cols[c].append(getattr(row, c))
        if step % STEPS_PER_FILE == 0:
            flush()
    flush()
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


def row_from_record(record: dict) -> TrainingExample:
    return TrainingExample(
        query=record["query"],
        positive=record["positive"],
        negatives=list(record["negatives"] or []),
        instruction=record["instruction"],
        doc_instruction=record["doc_instruction"],
        task=record["task"],
        task_type=record["task_type"],
        in_batch_negatives=bool(record["in_batch_negatives"]),
    )
