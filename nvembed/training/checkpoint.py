"""Training checkpoints: trainable weights, optimizer, scheduler, RNG, data position; written atomically.

Layout of ``<dir>/step-<N>/``: ``trainable.safetensors`` (LoRA adapter + pooling head, or whatever is trainable),
``state.pt`` (optimizer, scheduler, RNG states, data position, step, free-form ``extra``). The folder is written
under a temporary name and renamed, then ``<dir>/latest`` is replaced atomically, so a crash at any moment
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

TRAINABLE = "trainable.safetensors"
STATE = "state.pt"


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


def save_checkpoint(
    directory: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    data_state: dict[str, Any] | None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``<directory>/step-<step>`` atomically and point ``<directory>/latest`` at it."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".step-{step}.", dir=directory))
    try:
        save_file(trainable_state_dict(model), str(tmp / TRAINABLE))
        torch.save(
            {
                "step": step,
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "rng": rng_state(),
                "data": data_state,
                "extra": extra or {},
            },
            tmp / STATE,
        )
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pointer = directory / ".latest.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, directory / "latest")
    return final


def latest_checkpoint(directory: str | Path) -> Path | None:
    directory = Path(directory)
    pointer = directory / "latest"
    if not pointer.is_file():
        return None
    path = directory / pointer.read_text().strip()
    return path if (path / STATE).is_file() else None


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore a checkpoint into the given objects; returns the state dict (``step``, ``data``, ``extra``)."""
    from safetensors.torch import load_file

    path = Path(path)
    load_trainable(model, load_file(str(path / TRAINABLE)))
    state = torch.load(path / STATE, weights_only=False)
    if optimizer is not None and state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if restore_rng:
        set_rng_state(state["rng"])
    return state


def prune_checkpoints(directory: str | Path, keep: int) -> None:
    """Keep the ``keep`` newest ``step-N`` folders (never the one ``latest`` points at)."""
    directory = Path(directory)
    latest = latest_checkpoint(directory)
    steps = sorted(directory.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    for old in steps[:-keep] if keep > 0 else []:
        if latest is None or old.resolve() != latest.resolve():
            shutil.rmtree(old, ignore_errors=True)
