"""Rows -> a tokenised contrastive batch (queries, positives + negatives, masks)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nvembed.data.instructions import policy_applies
from nvembed.data.schema import TrainingExample
from nvembed.tokenization import InputBuilder

PAD_NEGATIVE = "."  # stands in for a missing negative; masked out of the loss by ``neg_mask``


@dataclass
class ContrastiveBatch:
    """One step's worth of rows, tokenised.

    Attributes:
        queries: ``input_ids``/``attention_mask``/``pool_mask`` ``[B, Lq]``.
        docs: the same for ``B * (1 + K)`` documents: B positives, then each row's K negatives.
        neg_mask: ``[B, K]`` True where the negative is real.
        in_batch: ``[B]`` whether a row may use other rows' documents as negatives.
    """

    queries: dict[str, torch.Tensor]
    docs: dict[str, torch.Tensor]
    neg_mask: torch.Tensor
    in_batch: torch.Tensor

    @property
    def size(self) -> int:
        return int(self.neg_mask.shape[0])

    def to(self, device: torch.device | str) -> ContrastiveBatch:
        return ContrastiveBatch(
            {k: v.to(device) for k, v in self.queries.items()},
            {k: v.to(device) for k, v in self.docs.items()},
            self.neg_mask.to(device),
            self.in_batch.to(device),
        )

    def num_tokens(self) -> int:
        return int(self.queries["attention_mask"].sum() + self.docs["attention_mask"].sum())


class ContrastiveCollator:
    """Tokenise rows for :func:`nvembed.losses.contrastive_loss`.

    Args:
        inputs: the embedder's :class:`InputBuilder` (decides specials, EOS, pool masks).
        num_negatives: K, hard negatives per row (extra ones dropped, missing ones padded and masked).
        query_max_length / doc_max_length: token caps.
        force_in_batch: override every row's ``in_batch_negatives`` (stage 2 sets False; None keeps the rows').
        instruction_policy: which rows keep their instructions, by task type (``model.instruction_policy``): applied
            here, when batches are made, so curated rows stay the same whatever the policy.
    """

    def __init__(
        self,
        inputs: InputBuilder,
        num_negatives: int = 7,
        query_max_length: int = 512,
        doc_max_length: int = 512,
        force_in_batch: bool | None = None,
        instruction_policy: str = "all",
    ) -> None:
        policy_applies(instruction_policy, "Retrieval")  # a bad policy fails here, not at the first batch
        self.inputs = inputs
        self.num_negatives = num_negatives
        self.query_max_length = query_max_length
        self.doc_max_length = doc_max_length
        self.force_in_batch = force_in_batch
        self.instruction_policy = instruction_policy

    def __call__(self, rows: Sequence[TrainingExample | dict[str, Any]]) -> ContrastiveBatch:
        rows = [r if isinstance(r, TrainingExample) else TrainingExample.from_dict(r) for r in rows]
        k = self.num_negatives
        keep = [policy_applies(self.instruction_policy, r.task_type) for r in rows]
        instr = [r.instruction if kept else None for r, kept in zip(rows, keep, strict=True)]
        queries = self.inputs([r.query for r in rows], instr, self.query_max_length)
        doc_texts = [r.positive for r in rows]
        doc_instr = [r.doc_instruction if kept else None for r, kept in zip(rows, keep, strict=True)]
        neg_mask = torch.zeros(len(rows), k, dtype=torch.bool)  # [B, K]
        for i, r in enumerate(rows):
            negs = list(r.negatives[:k])
            neg_mask[i, : len(negs)] = True
            doc_texts += negs + [PAD_NEGATIVE] * (k - len(negs))
            doc_instr += [doc_instr[i]] * k
        docs = self.inputs(doc_texts, doc_instr, self.doc_max_length)  # [B(1+K), Ld]
        flags = [r.in_batch_negatives if self.force_in_batch is None else self.force_in_batch for r in rows]
        return ContrastiveBatch(queries, docs, neg_mask, torch.tensor(flags, dtype=torch.bool))
