"""Training checkpoints: one folder format for every engine and launcher, written atomically where it is stored.

A checkpoint folder holds::

    state.json            {"step": N} (rank 0)
    rng-rank<R>.pt        every rank's RNG states (dropout must resume identically on each rank)
    engine/               the engine's part (nvembed/training/engine.py): trainable tensors + optimizer for the
                          torch engine, every rank's ZeRO shard for DeepSpeed

The step alone fixes the data position: the local batcher is deterministic and replayed to it, the Ray path
filters the step plan by it. Where the folder lives is the store's business: :class:`LocalCheckpointStore`
(``<output_dir>/checkpoints/step-N``, renamed into place, ``latest`` pointer) for ``nvembed train --local`` and
Tune's worker trials, Ray Train's storage (``ray.train.report``) for the Ray path (nvembed/launch/worker.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

STATE = "state.json"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable tensors into ``model``; every saved name must exist and every trainable one be saved."""
    params = dict(model.named_parameters())
    missing = sorted(n for n, p in params.items() if p.requires_grad and n not in tensors)
    unknown = sorted(set(tensors) - set(params))
    if missing or unknown:
        raise KeyError(f"checkpoint does not match the model: missing {missing[:5]}, unexpected {unknown[:5]}")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value.to(params[name].dtype))


def write_checkpoint(folder: Path, step: int, engine: Any, rank: int) -> None:
    """This rank's part of the checkpoint of ``step`` into ``folder`` (every rank calls it)."""
    engine.save_state(folder, rank)
    torch.save(rng_state(), folder / f"rng-rank{rank}.pt")
    if rank == 0:
        (folder / STATE).write_text(json.dumps({"step": step}))


def read_checkpoint(folder: Path, engine: Any, rank: int) -> int:
    """Restore ``engine`` and this rank's RNG from ``folder``; returns the step it was taken after."""
    engine.load_state(folder)
    rng = folder / f"rng-rank{rank}.pt"
    if rng.is_file():  # a run resumed on more ranks than it was saved with starts their RNG fresh
        set_rng_state(torch.load(rng, weights_only=False))
    return int(json.loads((folder / STATE).read_text())["step"])


class CheckpointStore(Protocol):
    """Where checkpoints and metric reports go (local folder or Ray Train's storage)."""

    def latest(self) -> contextlib.AbstractContextManager[Path | None]: ...

    def save(self, step: int, metrics: dict[str, Any], write: Callable[[Path], None]) -> None: ...

    def report(self, metrics: dict[str, Any]) -> None: ...


class LocalCheckpointStore:
    """``<directory>/step-N`` folders, each written under a temporary name and renamed, then ``latest`` replaced
    atomically: a crash at any moment leaves the previous checkpoint intact. Single process only."""

    def __init__(self, directory: str | Path, keep: int) -> None:
        self.directory = Path(directory)
        self.keep = keep

    @contextlib.contextmanager
    def latest(self) -> Iterator[Path | None]:
        pointer = self.directory / "latest"
        path = self.directory / pointer.read_text().strip() if pointer.is_file() else None
        yield path if path is not None and (path / STATE).is_file() else None

    def save(self, step: int, metrics: dict[str, Any], write: Callable[[Path], None]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"step-{step}"
        tmp = Path(tempfile.mkdtemp(prefix=f".step-{step}.", dir=self.directory))
        try:
            write(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        pointer = self.directory / ".latest.tmp"
        pointer.write_text(final.name)
        os.replace(pointer, self.directory / "latest")
        self._prune(final)

    def report(self, metrics: dict[str, Any]) -> None:
        """Nothing leaves the process: metrics.jsonl (written by the driver) is the record."""

    def _prune(self, latest: Path) -> None:
        """Keep the ``keep`` newest ``step-N`` folders (never ``latest``)."""
        steps = sorted(self.directory.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        for old in steps[: -self.keep] if self.keep > 0 else []:
            if old.resolve() != latest.resolve():
                shutil.rmtree(old, ignore_errors=True)
