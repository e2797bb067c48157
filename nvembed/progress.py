"""Progress bars for long work: one bar per training stage on the process that launched it."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

from tqdm.auto import tqdm


def step_bar(stage: int, total: int, start: int = 0) -> tqdm:
    """The stage's bar: steps done, ETA, and the last step's loss and samples/s as postfix."""
    return tqdm(total=total, initial=start, desc=f"stage {stage}", unit="step", dynamic_ncols=True)


def show_step(bar: tqdm, step: int, loss: float, samples_per_s: float) -> None:
    bar.update(step - bar.n)
    bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{samples_per_s:.1f}", refresh=True)


@contextlib.contextmanager
def follow_metrics(metrics: Path, stage: int, total: int, every: float = 1.0) -> Iterator[None]:
    """A bar on the driver that follows ``metrics.jsonl`` while workers elsewhere (Ray Train) write it.

    Rank 0 appends one line per step to the stage's shared output folder; this thread reads what is new every
    ``every`` seconds. It never raises into the caller: a bar is not worth failing a job over.
    """
    bar = step_bar(stage, total)
    stop = threading.Event()
    offset = metrics.stat().st_size if metrics.is_file() else 0  # a resumed stage's earlier lines

    def follow() -> None:
        nonlocal offset
        while not stop.wait(every):
            try:
                if not metrics.is_file():
                    continue
                with metrics.open() as fh:
                    fh.seek(offset)
                    chunk = fh.read()
                complete = chunk[: chunk.rfind("\n") + 1]
                offset += len(complete.encode())
                for line in complete.splitlines():
                    row = json.loads(line)
                    show_step(bar, int(row["step"]), float(row["loss"]), float(row["samples_per_s"]))
            except (OSError, ValueError, KeyError):
                continue

    thread = threading.Thread(target=follow, name=f"stage{stage}-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        bar.close()
