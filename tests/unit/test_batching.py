"""Blended batches: weights, distinct positives, exact resume."""

from __future__ import annotations

from collections import Counter

import pytest

from nvembed.data.schema import TrainingExample
from nvembed.training.batching import BlendedBatcher


def _rows(name, n, dup_every=None):
    return [
        TrainingExample(f"{name} q{i}", f"{name} p{i % dup_every if dup_every else i}", [], None, None, name)
        for i in range(n)
    ]


def test_every_batch_blends_by_weight():
    b = BlendedBatcher({"a": _rows("a", 500), "b": _rows("b", 500)}, {"a": 3.0, "b": 1.0}, batch_size=40, seed=1)
    counts = Counter(r.task for _ in range(50) for r in b.next_batch())
    assert 0.70 < counts["a"] / (counts["a"] + counts["b"]) < 0.80
    mixed = [len({r.task for r in b.next_batch()}) for _ in range(20)]
    assert min(mixed) == 2  # no single-dataset batches (SFR style is what NV-Embed avoids)


def test_no_duplicate_positive_inside_a_batch_when_in_batch_negatives():
    b = BlendedBatcher({"a": _rows("a", 60, dup_every=5)}, batch_size=5, seed=0, unique_positives=True)
    for _ in range(30):
        positives = [r.positive for r in b.next_batch()]
        assert len(set(positives)) == len(positives)


def test_state_dict_resume_reproduces_the_sequence():
    data = {"a": _rows("a", 37, dup_every=11), "b": _rows("b", 23)}
    ref = BlendedBatcher(data, {"b": 2.0}, batch_size=8, seed=5)
    expected = [[r.query for r in ref.next_batch()] for _ in range(12)]
    first = BlendedBatcher(data, {"b": 2.0}, batch_size=8, seed=5)
    for _ in range(5):
        first.next_batch()
    resumed = BlendedBatcher(data, {"b": 2.0}, batch_size=8, seed=5)
    resumed.load_state_dict(first.state_dict())
    assert [[r.query for r in resumed.next_batch()] for _ in range(7)] == expected[5:]


def test_bad_weights_are_rejected():
    with pytest.raises(ValueError, match="unknown datasets"):
        BlendedBatcher({"a": _rows("a", 3)}, {"c": 1.0})
    with pytest.raises(ValueError, match="no rows"):
        BlendedBatcher({"a": []})
