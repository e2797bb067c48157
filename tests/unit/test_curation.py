"""Curation pieces without Ray: byte-range parts and their line numbers, the key, the decontamination set."""

from __future__ import annotations

import dataclasses
import json

from nvembed.config import DatasetConfig, MiningConfig
from nvembed.data import curated
from nvembed.data.parts import byte_parts, global_line, parse_part


def test_parts_cover_the_file_on_line_boundaries_and_name_global_lines(tmp_path):
    f = tmp_path / "corpus.jsonl"
    rows = [json.dumps({"_id": str(i), "text": "x" * (i % 13 + 1)}) for i in range(500)]
    rows[311] = '{"_id": "311", "text": '
    f.write_text("\n".join(rows) + "\n")
    parts = byte_parts(f, 700)
    assert parts[0][0] == 0 and parts[-1][1] == f.stat().st_size and len(parts) > 10
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
    data = f.read_bytes()
    assert all(data[end - 1 : end] == b"\n" for _, end in parts)
    seen, bad = 0, []
    for i, (a, b) in enumerate(parts):
        meta = parse_part(f, a, b, tmp_path / "out" / f"part-{i:05d}.parquet", with_title=True)
        seen += meta["n"]
        bad += [(global_line(f, a, line), reason) for line, reason in meta["errors"]]
    assert seen == 499 and bad == [(312, "invalid JSON: Expecting value at column 24")]


def test_key_changes_with_what_changes_rows_only():
    ds = DatasetConfig(name="msmarco", format="beir", path="s3://bucket/msmarco", mine_negatives=True)

    def key(ds=ds, mining=None, decon=None):
        mining = mining or MiningConfig()
        source = curated.source_fingerprint(ds.path, None, ds.format, ds.split)  # a URI: nothing is fetched
        return curated.curation_key(ds, source=source, num_negatives=7, seed=0, mining=mining, decontamination=decon)

    base = key()
    assert key(mining=MiningConfig(batch_size=8, shard_size=10)) == base  # speed settings
    assert key(ds=dataclasses.replace(ds, weight=3.0)) == base  # the batcher's business
    assert key(mining=MiningConfig(margin=0.9)) != base
    assert key(mining=MiningConfig(teacher="other/teacher")) != base
    assert key(ds=dataclasses.replace(ds, instruction="Find passages")) != base
    assert key(decon={"sources": [], "near": 0.8}) != base
    plain = dataclasses.replace(ds, mine_negatives=False)
    assert key(ds=plain, mining=MiningConfig(margin=0.9)) == key(ds=plain)  # not mined: mining does not matter


def test_beir_folder_contributes_its_evaluation_queries_not_its_corpus(tmp_path):
    beir = tmp_path / "msmarco"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "text": "a shared passage"}) + "\n")
    queries = [{"_id": "q1", "text": "a training query"}, {"_id": "q2", "text": "a test query"}]
    (beir / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (beir / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq2\td1\t1\n")
    sts = tmp_path / "sts_test.jsonl"
    sts.write_text(json.dumps({"sentence1": "one", "sentence2": "two", "score": 3.0}) + "\n")
    assert curated.evaluation_texts([beir, sts]) == ["a test query", "one", "two"]
