"""InfoNCE against a hand computation: 2 queries, 3 documents (p0, p1, and row 0's one hard negative)."""

from __future__ import annotations

import math

import pytest
import torch

from nvembed.losses import contrastive_loss

TAU = 0.5
# unit vectors in 2D so the cosines are easy to write down
Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
P0 = [math.cos(0.3), math.sin(0.3)]  # cos(q0, p0) = cos 0.3
P1 = [math.sin(0.2), math.cos(0.2)]  # cos(q1, p1) = cos 0.2
N0 = [math.cos(1.0), math.sin(1.0)]  # row 0's hard negative
DOCS = torch.tensor([P0, P1, N0, [0.0, 0.0]])  # B*(1+K) with K=1: p0, p1, n0, (row 1 has no negative: padded)
NEG_MASK = torch.tensor([[True], [False]])


def _dot(a, b):
    return a[0] * b[0] + a[1] * b[1]


def _ce(scores, label):
    return -scores[label] / TAU + math.log(sum(math.exp(s / TAU) for s in scores))


def test_stage1_in_batch_plus_hard_negatives_by_hand():
    q0, q1 = [1.0, 0.0], [0.0, 1.0]
    row0 = _ce([_dot(q0, P0), _dot(q0, P1), _dot(q0, N0)], 0)  # own positive, other positive, own negative
    row1 = _ce([_dot(q1, P0), _dot(q1, P1), _dot(q1, N0)], 1)  # other row's negative is a candidate too
    loss = contrastive_loss(Q, DOCS, NEG_MASK, torch.tensor([True, True]), TAU)
    assert loss.item() == pytest.approx((row0 + row1) / 2, abs=1e-6)


def test_stage2_own_positive_and_hard_negatives_only_by_hand():
    q0 = [1.0, 0.0]
    row0 = _ce([_dot(q0, P0), _dot(q0, N0)], 0)
    row1 = 0.0  # only its own positive is a candidate: log-softmax of a single logit
    loss = contrastive_loss(Q, DOCS, NEG_MASK, torch.tensor([False, False]), TAU)
    assert loss.item() == pytest.approx((row0 + row1) / 2, abs=1e-6)


def test_temperature_scales_logits():
    sharp = contrastive_loss(Q, DOCS, NEG_MASK, torch.tensor([True, True]), 0.02)
    soft = contrastive_loss(Q, DOCS, NEG_MASK, torch.tensor([True, True]), 1.0)
    assert sharp < soft  # positives are the most similar documents here


def test_wrong_document_count_is_an_error():
    with pytest.raises(ValueError, match="expected B\\*\\(1\\+K\\)"):
        contrastive_loss(Q, DOCS[:3], NEG_MASK, torch.tensor([True, True]))
