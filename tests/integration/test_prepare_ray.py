"""``nvembed prepare`` on Ray Data = the single-process curation, row for row; errors, skips, reuse, object storage.

The BEIR set is built in code (a few hundred short documents over a shared vocabulary, so that the teacher's
neighbours are not trivial); the teacher is the packaged MiniLM, exact search, as in the shipped recipe.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from nvembed.config import DataConfig, DatasetConfig, MiningConfig, TrainConfig
from nvembed.data import curated

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600), pytest.mark.usefixtures("ray_local")]

TOPICS = ("protein folding", "bank transfer", "river city", "music film", "gene disease", "weather rain")
WORDS = "cell study claim evidence drug patient virus money account loan road house tree bird fish paper".split()


def make_beir(folder: Path, n_docs: int = 240, n_queries: int = 40, seed: int = 0) -> Path:
    rng = random.Random(seed)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    docs = []
    for i in range(n_docs):
        topic = TOPICS[i % len(TOPICS)]
        docs.append({"_id": f"d{i}", "title": topic, "text": " ".join(rng.choices(WORDS, k=8)) + f" {topic} {i % 7}"})
    docs.append({"_id": "dup", "title": docs[3]["title"], "text": docs[3]["text"]})  # same text, another id
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    train, queries = ["query-id\tcorpus-id\tscore"], []
    for j in range(n_queries):  # a query shares its topic and three words with its (first) positive
        picks = rng.sample(range(j % len(TOPICS), n_docs, len(TOPICS)), 1 + (j % 2))
        words = docs[picks[0]]["text"].split()[:8]
        queries.append({"_id": f"q{j}", "text": f"{TOPICS[j % len(TOPICS)]} " + " ".join(rng.sample(words, 3))})
        if j < n_queries - 8:  # the last 8 queries are the "test" split
            train += [f"q{j}\td{d}\t1" for d in picks]
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (folder / "qrels" / "train.tsv").write_text("\n".join(train) + "\n")
    test = ["query-id\tcorpus-id\tscore"] + [f"q{j}\td{j}\t1" for j in range(n_queries - 8, n_queries)]
    (folder / "qrels" / "test.tsv").write_text("\n".join(test) + "\n")
    return folder


def stage_cfg(beir: Path, cache: Path, workers: int = 1, **data_kw) -> TrainConfig:
    cfg = TrainConfig()
    ds = DatasetConfig(name="toy", format="beir", path=str(beir), split="train", mine_negatives=True,
                       instruction="Given a topic, retrieve passages about it")  # a name the registry lacks
    mining = MiningConfig(k=3, depth=20, max_length=64, batch_size=32)
    data = DataConfig(datasets=[ds], mining=mining, cache_dir=str(cache), **data_kw)
    data.curation.workers = workers
    data.curation.part_bytes = 4000  # several corpus parts and pair parts even on a small set
    data.curation.pairs_per_part = 10
    cfg.data = data
    cfg.run.num_negatives = 3
    cfg.run.output_dir = str(cache.parent / "run")
    return cfg


def local_rows(cfg: TrainConfig, cache: Path):
    from nvembed.data.build import build_training_rows
    from nvembed.training.job import make_teacher

    return build_training_rows(cfg.data, cfg.run.num_negatives, cache, None, make_teacher(cfg), cfg.run.seed, print)


def ray_rows(cfg: TrainConfig, log=print):
    from nvembed.data.build import load_targets
    from nvembed.launch.prepare import prepare_stage_data

    return load_targets(prepare_stage_data(cfg, log), set(), log)


@pytest.mark.parametrize("workers", [1, 2])
def test_ray_pipeline_mines_what_the_single_process_path_mines(tmp_path, workers):
    beir = make_beir(tmp_path / "toy")
    reference = local_rows(stage_cfg(beir, tmp_path / "local"), tmp_path / "local")["toy"]
    lines: list[str] = []
    got = ray_rows(stage_cfg(beir, tmp_path / "ray", workers), lines.append)["toy"]
    assert len(got) == len(reference) > 30
    same = sum(a.to_dict() == b.to_dict() for a, b in zip(got, reference, strict=True))
    assert [r.query for r in got] == [r.query for r in reference]
    assert [r.positive for r in got] == [r.positive for r in reference]
    # equal vectors up to float rounding (batches differ): at most one row may swap two near-tied negatives
    assert same >= len(reference) - 1, f"{len(reference) - same} of {len(reference)} rows differ"
    assert all(len(r.negatives) <= 3 and r.positive not in r.negatives for r in got)
    # TopK-PercPos keeps fewer than k where every candidate scores above 0.95 x the positive's score
    assert sum(len(r.negatives) == 3 for r in got) >= len(got) // 2
    manifest = curated.read_manifest(next((tmp_path / "ray" / "curated").glob("toy-*")))
    assert manifest["by"].startswith(f"ray-data ({workers} workers") and manifest["rows"] == len(got)
    assert not (tmp_path / "ray" / "work" / next((tmp_path / "ray" / "curated").glob("toy-*")).name).exists()
