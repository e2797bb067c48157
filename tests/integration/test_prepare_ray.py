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
    # the same text under other ids: 30 copies of one document (boilerplate), folded into one by both paths
    docs += [{"_id": f"dup{c}", "title": docs[3]["title"], "text": docs[3]["text"]} for c in range(30)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    train, queries = ["query-id\tcorpus-id\tscore"], []
    for j in range(n_queries):  # a query shares its topic and three words with its (first) positive
        picks = rng.sample(range(j % len(TOPICS), n_docs, len(TOPICS)), 1 + (j % 2))
        words = docs[picks[0]]["text"].split()[:8]
        queries.append({"_id": f"q{j}", "text": f"{TOPICS[j % len(TOPICS)]} " + " ".join(rng.sample(words, 3))})
        if j < n_queries - 8:  # the last 8 queries are the "test" split
            train += [f"q{j}\td{d}\t1" for d in picks]
    queries[5]["text"] = queries[4]["text"]  # two ids, one text: their positives are known positives of both
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (folder / "qrels" / "train.tsv").write_text("\n".join(train) + "\n")
    test = ["query-id\tcorpus-id\tscore"] + [f"q{j}\td{j}\t1" for j in range(n_queries - 8, n_queries)]
    (folder / "qrels" / "test.tsv").write_text("\n".join(test) + "\n")
    return folder


def stage_cfg(beir: Path, cache: Path, workers: int = 1, **data_kw) -> TrainConfig:
    cfg = TrainConfig()
    ds = DatasetConfig(
        name="toy",
        format="beir",
        path=str(beir),
        split="train",
        mine_negatives=True,
        instruction="Given a topic, retrieve passages about it",
    )  # a name the registry lacks
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


def _compare(got, reference) -> int:
    """Rows of the Ray pipeline vs the single-process path: same rows in the same order; returns how many differ."""
    assert len(got) == len(reference) > 30
    assert [r.query for r in got] == [r.query for r in reference]
    assert [r.positive for r in got] == [r.positive for r in reference]
    assert all(len(r.negatives) <= 3 and r.positive not in r.negatives for r in got)
    # TopK-PercPos keeps fewer than k where every candidate scores above 0.95 x the positive's score
    assert sum(len(r.negatives) == 3 for r in got) >= len(got) // 2
    return sum(a.to_dict() != b.to_dict() for a, b in zip(got, reference, strict=True))


def test_ray_pipeline_mines_what_the_single_process_path_mines_and_is_reused(tmp_path):
    """2 workers; other speed settings and blend weights (stage 2's sections) reuse the mined rows. 1 worker and a
    result-changing setting: the slow test below (the key's fields: tests/unit/test_curation.py)."""
    beir = make_beir(tmp_path / "toy")
    reference = local_rows(stage_cfg(beir, tmp_path / "local"), tmp_path / "local")["toy"]
    first: list[str] = []
    got = ray_rows(stage_cfg(beir, tmp_path / "ray", workers=2), first.append)["toy"]
    # equal vectors up to float rounding (batches differ): at most one row may swap two near-tied negatives
    assert _compare(got, reference) <= 1
    folder = next((tmp_path / "ray" / "curated").glob("toy-*"))
    manifest = curated.read_manifest(folder)
    assert manifest["by"].startswith("ray-data (2 workers") and manifest["rows"] == len(got)
    assert not (tmp_path / "ray" / "work" / folder.name).exists(), "the work folder outlived the published rows"
    assert any("prepare: toy: beir" in line for line in first)

    again = stage_cfg(beir, tmp_path / "ray", workers=1)  # stage 2's mining section: other batch size / shards
    again.data.mining.batch_size, again.data.mining.shard_size, again.data.datasets[0].weight = 8, 100, 3.0
    second: list[str] = []
    assert [r.to_dict() for r in ray_rows(again, second.append)["toy"]] == [r.to_dict() for r in got]
    assert not any("prepare: toy: beir" in line for line in second) and any("cached" in line for line in second)


@pytest.mark.slow
def test_one_worker_mines_what_the_single_process_path_mines_and_a_new_margin_mines_again(tmp_path):
    beir = make_beir(tmp_path / "toy")
    cfg = stage_cfg(beir, tmp_path / "ray", workers=1)
    ray_rows(cfg)
    changed = stage_cfg(beir, tmp_path / "ray", workers=1)
    changed.data.mining.margin = 0.9  # changes which negatives are kept: mined again
    lines: list[str] = []
    got = ray_rows(changed, lines.append)["toy"]
    assert any("prepare: toy: beir" in line for line in lines)
    reference = stage_cfg(beir, tmp_path / "local")
    reference.data.mining.margin = 0.9
    assert _compare(got, local_rows(reference, tmp_path / "local")["toy"]) <= 1


def _bad_line(beir: Path, line: int, text: str) -> None:
    lines = (beir / "corpus.jsonl").read_text().splitlines()
    lines[line - 1] = text
    (beir / "corpus.jsonl").write_text("\n".join(lines) + "\n")


def test_malformed_row_stops_with_file_and_line_or_is_counted_and_skipped(tmp_path):
    from nvembed.data.readers import DataError

    beir = make_beir(tmp_path / "toy")
    _bad_line(beir, 150, '{"_id": "d149", "text": ')  # in the middle: neither the first nor the last part
    cfg = stage_cfg(beir, tmp_path / "cache")
    with pytest.raises(DataError) as err:
        ray_rows(cfg)
    assert str(err.value).startswith(f"{beir / 'corpus.jsonl'}:150: invalid JSON")
    assert not list((tmp_path / "cache" / "curated").glob("toy-*")), "a failed prepare published a dataset"

    cfg.data.on_error = "skip"
    rows = ray_rows(cfg)["toy"]
    manifest = curated.read_manifest(next((tmp_path / "cache" / "curated").glob("toy-*")))
    assert manifest["skipped"] == {"invalid JSON": 1} and manifest["rows"] == len(rows)
    reference = local_rows(stage_cfg(beir, tmp_path / "local", on_error="skip"), tmp_path / "local")["toy"]
    assert [r.query for r in rows] == [r.query for r in reference]  # nothing else was lost


@pytest.fixture
def s3_recording():
    """moto's S3 server on loopback, recording every request it serves (moto's own recorder API)."""
    import os

    import boto3
    import requests
    from moto.server import ThreadedMotoServer

    os.environ["MOTO_ENABLE_RECORDING"] = "True"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    env = {
        "AWS_ENDPOINT_URL_S3": url,
        "AWS_ACCESS_KEY_ID": "t",
        "AWS_SECRET_ACCESS_KEY": "t",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    client = boto3.client("s3", endpoint_url=url)
    client.create_bucket(Bucket="data")
    requests.post(f"{url}/moto-api/recorder/reset-recording")
    requests.post(f"{url}/moto-api/recorder/start-recording")

    def requests_for(key: str, method: str = "GET") -> int:
        log = requests.get(f"{url}/moto-api/recorder/download-recording").text
        records = [json.loads(line) for line in log.splitlines() if line.strip()]
        return sum(1 for r in records if r["method"] == method and r["url"].endswith(key))

    try:
        yield client, requests_for, server
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        os.environ.pop("MOTO_ENABLE_RECORDING", None)
        server.stop()


def test_object_store_dataset_is_read_once_and_a_rerun_needs_no_endpoint(tmp_path, s3_recording):
    client, requests_for, server = s3_recording
    rows = [{"query": f"what is {w}", "positive": f"{w} is a word", "negatives": [f"{w}s are not"]} for w in WORDS]
    client.put_object(Bucket="data", Key="sets/pairs.jsonl", Body="".join(json.dumps(r) + "\n" for r in rows))
    cfg = TrainConfig()
    ds = DatasetConfig(name="pairs", format="triplets", path="s3://data/sets/pairs.jsonl", instruction="Find it")
    cfg.data = DataConfig(datasets=[ds], cache_dir=str(tmp_path / "cache"))
    cfg.run.output_dir = str(tmp_path / "run")
    got = ray_rows(cfg)["pairs"]
    assert [r.query for r in got] == [r["query"] for r in rows]
    assert requests_for("/data/sets/pairs.jsonl") == 1  # one download, none for the cache key
    assert len(list((tmp_path / "cache" / "remote").rglob("pairs.jsonl"))) == 1
    server.stop()  # the rerun must not need the endpoint at all
    lines: list[str] = []
    assert [r.to_dict() for r in ray_rows(cfg, lines.append)["pairs"]] == [r.to_dict() for r in got]
    assert any("cached" in line for line in lines)
