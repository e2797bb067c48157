"""The one normalised training row (DESIGN.md §5 rule 8: structured fields, not magic strings)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

TASK_TYPES = (
    "Retrieval",
    "Reranking",
    "STS",
    "Classification",
    "Clustering",
    "PairClassification",
    "Summarization",
)


@dataclass
class TrainingExample:
    """One contrastive row: (instructed query, positive, hard negatives) for every task type (NV-Embed §4.2).

    Attributes:
        query: the query text (without instruction).
        positive: the positive document (or, for example-based classification, another example of the class).
        negatives: hard negatives, most similar first.
        instruction: task description put on the query as ``Instruct: ...\\nQuery: `` (None: no instruction).
        doc_instruction: instruction also put on positive and negatives (symmetric tasks such as STS), else None.
        task: dataset / task name (for blending weights and reporting).
        task_type: one of :data:`TASK_TYPES`.
        in_batch_negatives: whether other rows' documents may serve as negatives for this row (stage 1 retrieval);
            False for everything in stage 2 (spec §2.1, pitfall 9).
    """

    query: str
    positive: str
    negatives: list[str] = field(default_factory=list)
    instruction: str | None = None
    doc_instruction: str | None = None
    task: str = ""
    task_type: str = "Retrieval"
    in_batch_negatives: bool = True

    def __post_init__(self) -> None:
        if self.task_type not in TASK_TYPES:
            raise ValueError(f"task_type must be one of {TASK_TYPES}, got {self.task_type!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> TrainingExample:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names})
