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
    from nvembed.data.readers import DataError, read_rows

    try:  # the single-process reader's report of the same file
        list(read_rows(f))
    except DataError as err:
        expected = (err.line, err.reason)
    assert seen == 499 and bad == [expected] and expected[0] == 312


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


def test_plan_of_references_resolves_to_the_batches_drawn_from_rows(tmp_path):
    """The driver draws the plan from positive hashes; resolved by a worker's store it is the row batcher's."""
    import pyarrow.parquet as pq

    from nvembed.data.plan import plan_sources, rank_files, write_plan
    from nvembed.data.schema import TrainingExample
    from nvembed.training.batching import BlendedBatcher

    def rows(name, n, dup_every):  # repeated positives: the distinct-positive rule must bite
        return [
            TrainingExample(f"{name} q{i}", f"{name} Doc {i // dup_every}", [f"n{i}"], "Find it", None, name)
            for i in range(n)
        ]

    data = {"a": rows("a", 90, 3), "b": rows("b", 40, 1)}
    sources = {}
    for name, rs in data.items():
        folder = curated.curated_folder(tmp_path, name, "k" + name)
        curated.write_curated(folder, rs, {"dataset": name})
        sources[name] = str(folder)
    keys = {n: curated.positive_keys(f) for n, f in sources.items()}
    weights = {"a": 2.0, "b": 1.0}
    batcher = BlendedBatcher(keys, weights, batch_size=8, seed=7, unique_positives=True, key=int)
    plan = write_plan(batcher, 30, 2, tmp_path / "plan", sources)
    reference = BlendedBatcher({n: curated.load_curated(f) for n, f in sources.items()}, weights, 8, seed=7)
    by_rank = [pq.read_table(rank_files(plan, r)).to_pylist() for r in (0, 1)]
    stores = []
    for r in (0, 1):  # each rank keeps only the rows its plan references
        needed: dict[str, set[int]] = {}
        for x in by_rank[r]:
            needed.setdefault(x["dataset"], set()).add(x["row"])
        stores.append(curated.CuratedStore(plan_sources(plan), needed))
        assert sum(len(w) for w in stores[r].where.values()) == sum(map(len, needed.values())) < 130
    for step in range(1, 31):
        got = [stores[r].rows([(x["dataset"], x["row"])])[0] for r in (0, 1) for x in by_rank[r] if x["step"] == step]
        assert [g.to_dict() for g in got] == [r.to_dict() for r in reference.next_batch()]
        assert len({g.positive for g in got}) == 8
    samples = curated.sample_rows(sources["a"], per_instruction=5)  # what preflight sees: no negatives read
    assert [(r.query, r.positive, r.instruction) for r in samples] == [
        (r.query, r.positive, r.instruction) for r in data["a"][:5]
    ]
