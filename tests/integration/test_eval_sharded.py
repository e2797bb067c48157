"""Retrieval with the corpus sharded over Ray actors = mteb's own single-process evaluation; shared corpora and
reruns encode nothing twice; mteb's ResultCache reads the folder; the GPU default follows the cluster."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import WORDS

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900), pytest.mark.usefixtures("ray_local")]

MODEL = "packaged:all-MiniLM-L6-v2"
DOCS, QUERIES, SHARD = 900, 40, 150


def _beir(root: Path, seed: int = 0) -> Path:
    """A BEIR folder whose queries are paraphrase-free fragments of their documents: MiniLM ranks them well, not
    perfectly, so nDCG is a number that moves with every ranking difference."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))) for _ in range(DOCS)]
    with open(root / "corpus.jsonl", "w") as fh:
        for i, text in enumerate(docs):
            fh.write(json.dumps({"_id": f"d{i}", "title": rng.choice(["", "a title"]), "text": text}) + "\n")
    with open(root / "queries.jsonl", "w") as fh:
        for q in range(QUERIES):
            words = docs[q * 7].split()
            fh.write(json.dumps({"_id": f"q{q}", "text": " ".join(rng.sample(words, min(4, len(words))))}) + "\n")
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{q}\td{q * 7}\t1\n" for q in range(QUERIES))
    )
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _beir(tmp_path_factory.mktemp("beir") / "scifact-like")


def _request(output, task_data, workers, retries=1):
    from evaluation.request import EvalRequest, Resources

    return EvalRequest(
        model=MODEL,
        output=output,
        task_data=task_data,
        max_length=128,
        shard_docs=SHARD,
        resources=Resources(workers=workers, retries=retries),
    )


def _mteb_single_process(data: Path, work: Path) -> dict:
    """mteb's own evaluation in this process, no Ray, no shards: the reference."""
    import mteb
    from sentence_transformers import SentenceTransformer

    from evaluation.local import local_task
    from nvembed.modeling.builders import resolve_model_path

    task = local_task(mteb.get_task("SciFact"), data, work)
    model = mteb.SentenceTransformerEncoderWrapper(SentenceTransformer(resolve_model_path(MODEL), device="cpu"))
    model.model.max_seq_length = 128
    res = mteb.evaluate(model, [task], cache=None, show_progress_bar=False, encode_kwargs={"batch_size": 32})
    return res.task_results[0].scores["test"][0]


def test_sharded_retrieval_scores_what_mteb_scores_with_one_and_two_workers_and_reruns_encode_nothing(corpus, tmp_path):
    from evaluation.runner import run_evaluation

    reference = _mteb_single_process(corpus, tmp_path / "ref")
    two = run_evaluation(_request(tmp_path / "w2", {"SciFact": str(corpus)}, 2))
    assert not two.failed, two.failed
    assert two.sharded == {"SciFact": DOCS // SHARD}  # really sharded: 6 shards of the smallest size
    assert two.encoded == {"SciFact": DOCS + QUERIES}
    one = run_evaluation(_request(tmp_path / "w1", {"SciFact": str(corpus)}, 1))
    assert one.sharded == {"SciFact": 4}  # one worker: ~4 shards per worker, each larger

    from mteb.results import TaskResult

    for outcome in (one, two):
        scores = TaskResult.from_disk(outcome.results_dir / "SciFact.json").scores["test"][0]
        for metric in ("ndcg_at_10", "ndcg_at_1", "recall_at_100", "map_at_10", "mrr_at_10"):
            assert scores[metric] == pytest.approx(reference[metric], abs=1e-6), metric
    assert 0.2 < reference["ndcg_at_10"] < 0.99  # a ranking with errors: equality above is not trivial
    assert one.scores == two.scores

    again = run_evaluation(_request(tmp_path / "w2", {"SciFact": str(corpus)}, 2))
    assert again.encoded == {} and again.skipped == ["SciFact"] and again.scores == two.scores

    # mteb's own result cache reads the folder the report reads
    import mteb

    cache = mteb.ResultCache(tmp_path / "w2")
    loaded = cache.load_results(tasks=["SciFact"], include_remote=False)
    [model_result] = loaded.model_results
    assert round(100 * model_result.task_results[0].get_score(), 2) == two.scores["SciFact"]


def test_two_tasks_over_one_corpus_encode_it_once_and_a_killed_run_encodes_only_missing_shards(corpus, tmp_path):
    from evaluation.runner import run_evaluation

    data = {"SciFact": str(corpus), "NFCorpus": str(corpus)}
    both = run_evaluation(_request(tmp_path / "out", data, 2))
    assert not both.failed, both.failed
    # one corpus, one set of queries (a baseline without prompts gives both tasks the same vectors)
    assert sum(both.encoded.values()) == DOCS + QUERIES
    assert both.scores["SciFact"] == both.scores["NFCorpus"]

    # what a run killed mid-corpus leaves: whole shard files (atomic writes), no result for the task
    shards = sorted((tmp_path / "out" / "embeddings").glob("*.npy"))
    assert both.sharded == {"SciFact": 4, "NFCorpus": 4}  # 1800 corpus rows planned over 2 workers: 225 per shard
    assert len(shards) == 4 + 1  # one set of shards for both tasks, + the queries
    sizes = {p: len(np.load(p)) for p in shards}
    lost = [p for p in shards if sizes[p] == DOCS // 4][:2]
    for p in lost:
        p.unlink()
    (both.results_dir / "SciFact.json").unlink()
    (both.results_dir / "NFCorpus.json").unlink()
    resumed = run_evaluation(_request(tmp_path / "out", data, 2))
    assert sum(resumed.encoded.values()) == 2 * DOCS // 4  # only the two missing shards, once for both tasks
    assert resumed.scores == both.scores


def test_gpu_default_follows_the_cluster_and_workers_fit_what_it_can_place(tmp_path):
    from evaluation.request import EvalRequest, Resources
    from evaluation.runner import _fit_workers

    lines = []
    many = EvalRequest(model=MODEL, output=tmp_path, resources=Resources(workers=8))
    assert _fit_workers(many, lines.append) == (4, 0.0)  # the session's local Ray: 4 CPUs, no GPU
    assert "places 4 of 8 workers" in lines[0]
    gpu = EvalRequest(model=MODEL, output=tmp_path, resources=Resources(workers=1, gpus_per_worker=1))
    with pytest.raises(ValueError, match="has 0 GPUs"):
        _fit_workers(gpu, lines.append)
