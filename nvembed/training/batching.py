"""Blended batches with exact, resumable positions (spec §2.4, pitfall 14).

Every batch mixes datasets: each slot picks a dataset with probability proportional to its weight, then takes that
dataset's next row from a per-epoch shuffled order. When in-batch negatives are on, a row whose positive text is
already in the batch is deferred to a later batch (it would otherwise be a false negative for the other row).
The state (cursors, epochs, deferred rows, RNG) is a plain dict, saved in checkpoints so a resumed run draws the
same sequence of batches as an uninterrupted one.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any

from nvembed.data.converters import normalise
from nvembed.data.schema import TrainingExample


class BlendedBatcher:
    """Infinite iterator of row batches over weighted datasets.

    Args:
        datasets: name -> rows.
        weights: name -> sampling weight (missing names weigh 1; NV-Embed's weights are unpublished).
        batch_size: rows per batch (per rank when each rank has its own batcher).
        seed: controls shuffles and dataset picks.
        unique_positives: refuse duplicate positive texts inside a batch (set when in-batch negatives are on).
        key: what "the same positive" means for an item of ``datasets`` (default: the normalised positive text of a
            row). The Ray driver passes one positive hash per curated row instead of the rows
            (nvembed/data/curated.py ``positive_keys``) and draws the plan with :meth:`next_refs`.
    """

    def __init__(
        self,
        datasets: dict[str, Sequence[TrainingExample]],
        weights: dict[str, float] | None = None,
        batch_size: int = 32,
        seed: int = 0,
        unique_positives: bool = True,
        key: Callable[[Any], Hashable] | None = None,
    ) -> None:
        empty = [name for name, rows in datasets.items() if len(rows) == 0]
        if empty:
            raise ValueError(f"datasets with no rows: {empty}")
        self.datasets = dict(datasets)
        self.names = sorted(self.datasets)
        weights = weights or {}
        unknown = set(weights) - set(self.names)
        if unknown:
            raise ValueError(f"weights given for unknown datasets: {sorted(unknown)}")
        self.weights = [float(weights.get(n, 1.0)) for n in self.names]
        if any(w < 0 for w in self.weights) or not any(self.weights):
            raise ValueError(
                f"weights must be >= 0 and not all 0, got {dict(zip(self.names, self.weights, strict=True))}"
            )
        self.batch_size = batch_size
        self.seed = seed
        self.unique_positives = unique_positives
        self._key = key or _positive_key
        self._rng = random.Random(seed)
        self._epoch = dict.fromkeys(self.names, 0)
        self._cursor = dict.fromkeys(self.names, 0)
        self._order = {n: self._shuffled(n, 0) for n in self.names}
        self._deferred: list[tuple[str, int]] = []
        self.batches_drawn = 0

    def _shuffled(self, name: str, epoch: int) -> list[int]:
        order = list(range(len(self.datasets[name])))
        random.Random(f"{self.seed}/{name}/{epoch}").shuffle(order)
        return order

    def _next_index(self, name: str) -> int:
        if self._cursor[name] >= len(self._order[name]):
            self._epoch[name] += 1
            self._cursor[name] = 0
            self._order[name] = self._shuffled(name, self._epoch[name])
        idx = self._order[name][self._cursor[name]]
        self._cursor[name] += 1
        return idx

    def next_refs(self) -> list[tuple[str, int]]:
        """The next batch as ``(dataset, index)`` references (what the step plan stores)."""
        batch: list[tuple[str, int]] = []
        seen: set[Hashable] = set()
        still_deferred = []
        for name, idx in self._deferred:
            key = self._key(self.datasets[name][idx])
            if len(batch) < self.batch_size and key not in seen:
                batch.append((name, idx))
                seen.add(key)
            else:
                still_deferred.append((name, idx))
        self._deferred = still_deferred
        attempts = 0
        while len(batch) < self.batch_size:
            name = self._rng.choices(self.names, weights=self.weights)[0]
            idx = self._next_index(name)
            key = self._key(self.datasets[name][idx])
            if self.unique_positives and key in seen:
                attempts += 1
                if attempts > 100 * self.batch_size:
                    raise RuntimeError("cannot fill a batch with distinct positives; lower batch_size")
                if len(self._deferred) < 10 * self.batch_size:
                    self._deferred.append((name, idx))
                continue
            batch.append((name, idx))
            seen.add(key)
        self.batches_drawn += 1
        return batch

    def next_batch(self) -> list[TrainingExample]:
        return [self.datasets[name][idx] for name, idx in self.next_refs()]

    def __iter__(self) -> Iterator[list[TrainingExample]]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {
            "rng": self._rng.getstate(),
            "epoch": dict(self._epoch),
            "cursor": dict(self._cursor),
            "deferred": list(self._deferred),
            "batches_drawn": self.batches_drawn,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rng.setstate(_as_tuple(state["rng"]))
        self._epoch = dict(state["epoch"])
        self._cursor = dict(state["cursor"])
        self._order = {n: self._shuffled(n, self._epoch[n]) for n in self.names}
        self._deferred = [tuple(x) for x in state["deferred"]]
        self.batches_drawn = state["batches_drawn"]


def _positive_key(row: TrainingExample) -> str:
    return normalise(row.positive)


def _as_tuple(x: Any) -> Any:
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list | tuple) else x
