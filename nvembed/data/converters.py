"""Raw datasets -> :class:`TrainingExample` rows (spec §2.3), with line-level validation.

Every converter takes an :class:`ErrorPolicy`: by default the first bad row raises :class:`DataError` naming the
file, the line and the reason; with ``ErrorPolicy("skip")`` bad rows are skipped and counted per reason.
Reasons are the fixed strings ``invalid JSON``, ``missing field``, ``empty text``, ``unknown id``,
``duplicate id``, ``bad qrels line``.
"""

from __future__ import annotations

import csv
import random
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from nvembed.data.readers import DataError, ErrorPolicy, read_rows, require_text, require_text_list
from nvembed.data.schema import TrainingExample

# ----------------------------------------------------------------------------------------------- BEIR retrieval


@dataclass
class BeirData:
    """A BEIR folder: ``corpus.jsonl`` {_id, title, text}, ``queries.jsonl`` {_id, text}, ``qrels/<split>.tsv``."""

    corpus: dict[str, str] = field(default_factory=dict)  # id -> "title text"
    queries: dict[str, str] = field(default_factory=dict)
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)  # qid -> {doc id: score}


def id_text(row: dict, path: str | Path, line: int, with_title: bool) -> tuple[str, str]:
    """``(_id, text)`` of one BEIR corpus / queries row (``title + " " + text`` for the corpus), or DataError."""
    if "_id" not in row:
        raise DataError(path, line, "missing field: '_id'")
    if "text" not in row or not isinstance(row["text"], str):
        raise DataError(path, line, "missing field: 'text'")
    text = row["text"]
    if with_title and isinstance(row.get("title"), str) and row["title"].strip():
        text = f"{row['title']} {text}"
    if not text.strip():
        raise DataError(path, line, "empty text: field 'text'")
    return str(row["_id"]), text


def _read_id_texts(path: Path, policy: ErrorPolicy, with_title: bool) -> dict[str, str]:
    out: dict[str, str] = {}
    for line, row in read_rows(path, policy):
        try:
            rid, text = id_text(row, path, line, with_title)
            if rid in out:
                raise DataError(path, line, f"duplicate id: {rid!r}")
            out[rid] = text
        except DataError as err:
            policy.handle(err)
    return out


def qrels_lines(path: str | Path):
    """``(line number, columns)`` of a qrels TSV, its header line skipped."""
    with open(path, encoding="utf-8", newline="") as fh:
        for line, cols in enumerate(csv.reader(fh, delimiter="\t"), start=1):
            if line == 1 and cols[:2] == ["query-id", "corpus-id"]:
                continue
            yield line, cols


def qrels_entry(cols: list[str], path: str | Path, line: int) -> tuple[str, str, int]:
    """``(query id, document id, score)`` of one qrels TSV line, or DataError."""
    if len(cols) != 3:
        raise DataError(path, line, f"bad qrels line: expected 3 tab-separated columns, got {len(cols)}")
    qid, did, score = cols
    try:
        return qid, did, int(float(score))
    except ValueError as err:
        raise DataError(path, line, f"bad qrels line: score {score!r} is not a number") from err


def load_beir(folder: str | Path, split: str, policy: ErrorPolicy | None = None) -> BeirData:
    """Read and validate a BEIR folder; corpus text is ``title + " " + text`` as mteb builds it."""
    policy = policy or ErrorPolicy()
    folder = Path(folder)
    data = BeirData(
        corpus=_read_id_texts(folder / "corpus.jsonl", policy, with_title=True),
        queries=_read_id_texts(folder / "queries.jsonl", policy, with_title=False),
    )
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        raise DataError(qrels_path, None, "file not found")
    for line, cols in qrels_lines(qrels_path):
        try:
            qid, did, value = qrels_entry(cols, qrels_path, line)
            if qid not in data.queries:
                raise DataError(qrels_path, line, f"unknown id: query {qid!r} not in queries.jsonl")
            if did not in data.corpus:
                raise DataError(qrels_path, line, f"unknown id: document {did!r} not in corpus.jsonl")
            data.qrels.setdefault(qid, {})[did] = value
        except DataError as err:
            policy.handle(err)
    return data


def retrieval_examples(
    data: BeirData,
    task: str,
    instruction: str | None,
    negatives: dict[str, list[str]] | None = None,
) -> list[TrainingExample]:
    """One row per (query, relevant document); ``negatives`` maps query id -> negative doc ids (mined)."""
    rows = []
    for qid, docs in data.qrels.items():
        negs = [data.corpus[d] for d in (negatives or {}).get(qid, [])]
        for did, score in docs.items():
            if score > 0:
                rows.append(
                    TrainingExample(
                        query=data.queries[qid],
                        positive=data.corpus[did],
                        negatives=list(negs),
                        instruction=instruction,
                        task=task,
                        task_type="Retrieval",
                        in_batch_negatives=True,
                    )
                )
    return rows


# ----------------------------------------------------------------------------------------------- triplets, reranking


def triplet_examples(
    path: str | Path,
    task: str,
    instruction: str | None,
    max_negatives: int | None = None,
    policy: ErrorPolicy | None = None,
) -> list[TrainingExample]:
    """``{"query", "positive", "negatives": [...]}`` rows (retrieval-style training triplets)."""
    policy = policy or ErrorPolicy()
    rows = []
    for line, row in read_rows(path, policy):
        try:
            negs = require_text_list(row, "negatives", path, line) if "negatives" in row else []
            rows.append(
                TrainingExample(
                    query=require_text(row, "query", path, line),
                    positive=require_text(row, "positive", path, line),
                    negatives=negs[:max_negatives] if max_negatives else negs,
                    instruction=instruction,
                    task=task,
                    task_type="Retrieval",
                )
            )
        except DataError as err:
            policy.handle(err)
    return rows


def reranking_examples(
    path: str | Path, task: str, instruction: str | None, max_negatives: int = 7, policy: ErrorPolicy | None = None
) -> list[TrainingExample]:
    """``{"query", "positive": [...], "negative": [...]}``: one row per positive, the listed negatives as hard ones."""
    policy = policy or ErrorPolicy()
    rows = []
    for line, row in read_rows(path, policy):
        try:
            query = require_text(row, "query", path, line)
            positives = require_text_list(row, "positive", path, line, allow_empty=False)
            negatives = require_text_list(row, "negative", path, line)
            for pos in positives:
                rows.append(
                    TrainingExample(query, pos, negatives[:max_negatives], instruction, None, task, "Reranking")
                )
        except DataError as err:
            policy.handle(err)
    return rows


# ----------------------------------------------------------------------------------------------- symmetric pairs


def sts_examples(
    path: str | Path,
    task: str,
    instruction: str | None,
    min_score: float = 4.0,
    max_score: float = 5.0,
    policy: ErrorPolicy | None = None,
) -> list[TrainingExample]:
    """STS pairs scoring >= 4 on a 0-5 scale, both directions, instruction on both sides (spec §2.3, pitfall 11).

    ``max_score`` is the file's scale (scores are rescaled to 0-5 before the threshold).
    """
    policy = policy or ErrorPolicy()
    rows = []
    for line, row in read_rows(path, policy):
        try:
            a = require_text(row, "sentence1", path, line)
            b = require_text(row, "sentence2", path, line)
            if "score" not in row:
                raise DataError(path, line, "missing field: 'score'")
            try:
                score = float(row["score"]) * 5.0 / max_score
            except (TypeError, ValueError) as err:
                raise DataError(path, line, f"missing field: 'score' is not a number: {row['score']!r}") from err
            if score >= min_score:
                for q, d in ((a, b), (b, a)):
                    rows.append(TrainingExample(q, d, [], instruction, instruction, task, "STS", False))
        except DataError as err:
            policy.handle(err)
    return rows


def pair_classification_examples(
    path: str | Path, task: str, instruction: str | None, policy: ErrorPolicy | None = None
) -> list[TrainingExample]:
    """``{"sentence1", "sentence2", "label"}``: positive pairs both ways; a sentence's label-0 partners as negatives."""
    policy = policy or ErrorPolicy()
    positives: list[tuple[str, str]] = []
    non_paraphrase: dict[str, list[str]] = defaultdict(list)
    for line, row in read_rows(path, policy):
        try:
            a = require_text(row, "sentence1", path, line)
            b = require_text(row, "sentence2", path, line)
            if row.get("label") not in (0, 1, "0", "1", True, False):
                raise DataError(path, line, f"missing field: 'label' must be 0 or 1, got {row.get('label')!r}")
            if int(row["label"]) == 1:
                positives.append((a, b))
            else:
                non_paraphrase[a].append(b)
                non_paraphrase[b].append(a)
        except DataError as err:
            policy.handle(err)
    rows = []
    for a, b in positives:
        for q, d in ((a, b), (b, a)):
            rows.append(
                TrainingExample(
                    q, d, list(non_paraphrase.get(q, [])), instruction, instruction, task, "PairClassification", False
                )
            )
    return rows


# ----------------------------------------------------------------------------------------------- classes / clusters


def _labelled_texts(path: str | Path, policy: ErrorPolicy) -> list[tuple[str, str]]:
    """``{"text", "label"}`` rows, or MTEB clustering rows ``{"sentences": [...], "labels": [...]}``."""
    out = []
    for line, row in read_rows(path, policy):
        try:
            if "sentences" in row:
                texts = require_text_list(row, "sentences", path, line, allow_empty=False)
                labels = row.get("labels")
                if not isinstance(labels, list) or len(labels) != len(texts):
                    raise DataError(path, line, "missing field: 'labels' must be a list as long as 'sentences'")
                out += [(t, str(lab)) for t, lab in zip(texts, labels, strict=True)]
            else:
                text = require_text(row, "text", path, line)
                if row.get("label") is None:
                    raise DataError(path, line, "missing field: 'label'")
                out.append((text, str(row["label"])))
        except DataError as err:
            policy.handle(err)
    return out


def example_based_examples(
    path: str | Path,
    task: str,
    task_type: str,
    instruction: str | None,
    num_negatives: int = 7,
    seed: int = 0,
    label_texts: dict[str, str] | None = None,
    policy: ErrorPolicy | None = None,
) -> list[TrainingExample]:
    """Classification / clustering rows, NV-Embed-v2 style (spec §2.3, pitfall 10).

    Multi-class (more than two labels): the positive is another example of the same class, the negatives are
    examples of other classes (distinct classes while there are enough). Binary: the positive and negative are the
    label texts (``label_texts`` maps a label to its text; default: the label itself). Every text carries the
    instruction (the task is encoded symmetrically at evaluation time).
    """
    policy = policy or ErrorPolicy()
    items = _labelled_texts(path, policy)
    by_label: dict[str, list[str]] = defaultdict(list)
    for text, label in items:
        by_label[label].append(text)
    labels = sorted(by_label)
    rng = random.Random(seed)
    rows = []
    if len(labels) == 2:
        names = {lab: (label_texts or {}).get(lab, lab) for lab in labels}
        for text, label in items:
            other = labels[1] if label == labels[0] else labels[0]
            rows.append(TrainingExample(text, names[label], [names[other]], instruction, None, task, task_type, False))
        return rows
    for text, label in items:
        same = by_label[label]
        if len(same) < 2:
            policy.skipped["singleton class"] += 1
            continue
        positive = text
        while positive == text and len(set(same)) > 1:
            positive = rng.choice(same)
        if positive == text:
            policy.skipped["singleton class"] += 1
            continue
        others = [lab for lab in labels if lab != label]
        picked = rng.sample(others, min(num_negatives, len(others)))
        while len(picked) < num_negatives and others:
            picked.append(rng.choice(others))
        negatives = [rng.choice(by_label[lab]) for lab in picked]
        rows.append(TrainingExample(text, positive, negatives, instruction, instruction, task, task_type, False))
    return rows


# ----------------------------------------------------------------------------------------------- decontamination

_NON_WORD = re.compile(r"[^\w]+")


def normalise(text: str) -> str:
    """Lower-case, punctuation and whitespace collapsed: what "exact duplicate" compares."""
    return _NON_WORD.sub(" ", text.lower()).strip()


def _shingles(text: str, n: int = 3) -> set[str]:
    words = normalise(text).split()
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


@dataclass
class DecontaminationReport:
    kept: int = 0
    exact: int = 0
    near: int = 0

    def __str__(self) -> str:
        return f"decontamination: kept {self.kept}, dropped {self.exact} exact and {self.near} near duplicates"


def decontaminate(
    rows: list[TrainingExample], eval_texts: Iterable[str], near_threshold: float | None = None
) -> tuple[list[TrainingExample], DecontaminationReport]:
    """Drop rows any of whose texts duplicates an evaluation text (spec §2.3, pitfall 13).

    Exact: equal after :func:`normalise`. Near (when ``near_threshold`` is set): Jaccard similarity of word
    3-gram sets at or above the threshold, found through an inverted index over the evaluation shingles.
    """
    eval_list = list(eval_texts)
    exact = {normalise(t) for t in eval_list}
    index: dict[str, list[int]] = defaultdict(list)
    eval_shingles: list[set[str]] = []
    if near_threshold is not None:
        for i, t in enumerate(eval_list):
            sh = _shingles(t)
            eval_shingles.append(sh)
            for s in sh:
                index[s].append(i)

    def near_dup(text: str) -> bool:
        sh = _shingles(text)
        if not sh:
            return False
        counts: dict[int, int] = defaultdict(int)
        for s in sh:
            for i in index.get(s, ()):
                counts[i] += 1
        for i, inter in counts.items():
            if inter / (len(sh) + len(eval_shingles[i]) - inter) >= near_threshold:
                return True
        return False

    report = DecontaminationReport()
    kept = []
    for row in rows:
        texts = [row.query, row.positive, *row.negatives]
        if any(normalise(t) in exact for t in texts):
            report.exact += 1
        elif near_threshold is not None and any(near_dup(t) for t in texts):
            report.near += 1
        else:
            kept.append(row)
    report.kept = len(kept)
    return kept, report
