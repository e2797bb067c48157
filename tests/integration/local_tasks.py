"""Tiny local task folders of every mteb task type, in the formats `--task-data` reads (README "Data")."""

from __future__ import annotations

import json
import random
from pathlib import Path

from tests.helpers import WORDS

TASKS = {
    "SciFact": "retrieval",
    "STSBenchmark": "sts",
    "Banking77Classification": "classification",
    "TwentyNewsgroupsClustering": "clustering",
    "SprintDuplicateQuestions": "pair",
    "AskUbuntuDupQuestions": "reranking",
    "SummEval": "summarization",
}


def _jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def make_local_tasks(root: Path, seed: int = 0) -> dict[str, str]:
    rng = random.Random(seed)
    text = lambda n: " ".join(rng.choice(WORDS) for _ in range(n))  # noqa: E731
    out = {}
    for task, kind in TASKS.items():
        d = root / task
        if kind == "retrieval":
            docs = [{"_id": f"d{i}", "title": "", "text": text(12)} for i in range(30)]
            _jsonl(d / "corpus.jsonl", docs)
            _jsonl(d / "queries.jsonl", [{"_id": f"q{i}", "text": docs[i]["text"][:20]} for i in range(8)])
            (d / "qrels").mkdir(parents=True, exist_ok=True)
            (d / "qrels" / "test.tsv").write_text(
                "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(8))
            )
        elif kind == "sts":
            _jsonl(
                d / "test.jsonl",
                [{"sentence1": text(6), "sentence2": text(6), "score": rng.uniform(0, 5)} for _ in range(20)],
            )
        elif kind == "classification":
            for split, n in (("train", 40), ("test", 20)):
                _jsonl(d / f"{split}.jsonl", [{"text": text(5), "label": f"l{i % 4}"} for i in range(n)])
        elif kind == "clustering":
            _jsonl(
                d / "test.jsonl",
                [{"sentences": [text(5) for _ in range(12)], "labels": [f"c{i % 3}" for i in range(12)]}],
            )
        elif kind == "pair":
            _jsonl(d / "test.jsonl", [{"sentence1": text(5), "sentence2": text(5), "label": i % 2} for i in range(16)])
        elif kind == "reranking":
            _jsonl(
                d / "test.jsonl",
                [{"query": text(4), "positive": [text(8)], "negative": [text(8), text(8)]} for _ in range(6)],
            )
        elif kind == "summarization":
            _jsonl(
                d / "test.jsonl",
                [
                    {
                        "text": text(20),
                        "human_summaries": [text(6)],
                        "machine_summaries": [text(6), text(6), text(6)],
                        "relevance": [rng.uniform(1, 5) for _ in range(3)],
                    }
                    for _ in range(5)
                ],
            )
        out[task] = str(d)
    return out
