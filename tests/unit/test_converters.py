"""Converters: one test per bad-row kind (file, line, reason), skip counting, STS / example-based rules."""

from __future__ import annotations

import json

import pytest

from nvembed.data import converters as conv
from nvembed.data.readers import DataError, ErrorPolicy


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _beir(tmp_path, corpus=None, queries=None, qrels=None):
    d = tmp_path / "beir"
    (d / "qrels").mkdir(parents=True)
    _jsonl(d / "corpus.jsonl", corpus or [{"_id": "d1", "title": "T", "text": "doc one"}, {"_id": "d2", "text": "two"}])
    _jsonl(d / "queries.jsonl", queries or [{"_id": "q1", "text": "query one"}])
    (d / "qrels" / "train.tsv").write_text(qrels or "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return d


def test_invalid_json_names_file_and_line(tmp_path):
    f = _jsonl(tmp_path / "t.jsonl", [{"query": "a", "positive": "b"}, '{"query": "a", "positive": '])
    with pytest.raises(DataError, match=r"t\.jsonl:2: invalid JSON"):
        conv.triplet_examples(f, "x", None)


def test_missing_field(tmp_path):
    f = _jsonl(tmp_path / "t.jsonl", [{"query": "a"}])
    with pytest.raises(DataError, match=r"t\.jsonl:1: missing field: 'positive'"):
        conv.triplet_examples(f, "x", None)


def test_empty_text(tmp_path):
    f = _jsonl(tmp_path / "s.jsonl", [{"sentence1": "a b", "sentence2": "  ", "score": 5}])
    with pytest.raises(DataError, match=r"s\.jsonl:1: empty text: field 'sentence2'"):
        conv.sts_examples(f, "x", None)


def test_unknown_id_in_qrels(tmp_path):
    d = _beir(tmp_path, qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td9\t1\n")
    with pytest.raises(DataError, match=r"train\.tsv:3: unknown id: document 'd9'"):
        conv.load_beir(d, "train")


def test_duplicate_id(tmp_path):
    d = _beir(tmp_path, corpus=[{"_id": "d1", "text": "a"}, {"_id": "d1", "text": "b"}])
    with pytest.raises(DataError, match=r"corpus\.jsonl:2: duplicate id: 'd1'"):
        conv.load_beir(d, "train")


def test_skip_policy_counts_per_reason(tmp_path):
    f = _jsonl(
        tmp_path / "t.jsonl",
        [
            {"query": "a", "positive": "b"},
            "{bad",
            {"query": "a"},
            {"query": "", "positive": "c"},
            "[1]",
            {"query": "q", "positive": "p"},
        ],
    )
    policy = ErrorPolicy("skip")
    rows = conv.triplet_examples(f, "x", None, policy=policy)
    assert len(rows) == 2
    assert policy.skipped == {"invalid JSON": 2, "missing field": 1, "empty text": 1}
    assert "invalid JSON x2" in policy.report()


def test_sts_keeps_score_4_and_up_both_ways_with_instruction_on_both_sides(tmp_path):
    f = _jsonl(
        tmp_path / "s.jsonl",
        [{"sentence1": "a", "sentence2": "b", "score": 4.2}, {"sentence1": "c", "sentence2": "d", "score": 3.9}],
    )
    rows = conv.sts_examples(f, "sts", "Retrieve semantically similar text.")
    assert [(r.query, r.positive) for r in rows] == [("a", "b"), ("b", "a")]
    assert all(r.doc_instruction == r.instruction == "Retrieve semantically similar text." for r in rows)
    assert not any(r.in_batch_negatives for r in rows)
    scaled = conv.sts_examples(f, "sts", None, max_score=1.0)  # a 0-1 file: every pair is >= 4/5 after scaling
    assert len(scaled) == 4


def test_example_based_multiclass_and_binary(tmp_path):
    multi = _jsonl(
        tmp_path / "m.jsonl", [{"text": f"{lab} text {i}", "label": lab} for lab in "abcd" for i in range(3)]
    )
    rows = conv.example_based_examples(multi, "m", "Classification", "Classify", num_negatives=3, seed=0)
    for r in rows:
        label = r.query.split()[0]
        assert r.positive.split()[0] == label and r.positive != r.query
        assert len(r.negatives) == 3 and all(n.split()[0] != label for n in r.negatives)
        assert len({n.split()[0] for n in r.negatives}) == 3  # distinct other classes
    binary = _jsonl(tmp_path / "b.jsonl", [{"text": "great film", "label": "pos"}, {"text": "awful", "label": "neg"}])
    rows = conv.example_based_examples(binary, "b", "Classification", "Classify", label_texts={"pos": "positive"})
    assert [(r.positive, r.negatives) for r in rows] == [("positive", ["neg"]), ("neg", ["positive"])]


def test_decontamination_exact_and_near(tmp_path):
    from nvembed.data.schema import TrainingExample

    rows = [
        TrainingExample("The cat sat on the mat!", "x"),
        TrainingExample("a dog", "the quick brown fox jumps over the lazy dog today"),
        TrainingExample("unrelated", "text"),
    ]
    evals = ["the cat sat on the mat", "the quick brown fox jumps over the lazy dog"]
    kept, report = conv.decontaminate(rows, evals)
    assert report.exact == 1 and len(kept) == 2
    kept, report = conv.decontaminate(rows, evals, near_threshold=0.6)
    assert (report.exact, report.near, [r.query for r in kept]) == (1, 1, ["unrelated"])


def test_reranking_and_pair_files(tmp_path):
    rr = _jsonl(tmp_path / "r.jsonl", [{"query": "q", "positive": ["p1", "p2"], "negative": ["n1"]}])
    assert [(r.positive, r.negatives) for r in conv.reranking_examples(rr, "r", None)] == [
        ("p1", ["n1"]),
        ("p2", ["n1"]),
    ]
    pc = _jsonl(
        tmp_path / "p.jsonl",
        [{"sentence1": "a", "sentence2": "b", "label": 1}, {"sentence1": "a", "sentence2": "c", "label": 0}],
    )
    rows = conv.pair_classification_examples(pc, "p", "Retrieve paraphrases")
    assert [(r.query, r.positive, r.negatives) for r in rows] == [("a", "b", ["c"]), ("b", "a", [])]
