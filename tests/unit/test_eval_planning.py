"""The evaluation planner and its pieces without Ray: shard sizes, which tasks are sharded, the scheduler's policy
in simulation, the makespan on the real cost table, token-budget batches, the request type."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.planning import Job, WorkItem, expand, plan, resolve_tasks, shard_size, simulate


def test_shard_size_is_one_number_per_run_about_four_shards_per_worker_and_never_below_the_minimum():
    assert shard_size(8_000_000, 8, 1000) == 250_000
    assert shard_size(5183, 2, 1000) == 1000  # 648 would be below the minimum
    assert shard_size(0, 8, 1000) == 1000


def test_only_retrieval_corpora_of_two_shards_or_more_are_sharded(tmp_path):
    tasks = resolve_tasks("MTEB(eng, v1)", ["SciFact", "STSBenchmark", "NFCorpus"])
    big = tmp_path / "big"
    big.mkdir()
    (big / "corpus.jsonl").write_text("".join(f'{{"_id": "d{i}", "text": "x"}}\n' for i in range(5000)))
    small = tmp_path / "small"
    small.mkdir()
    (small / "corpus.jsonl").write_text('{"_id": "d0", "text": "x"}\n' * 30)
    costs = {"SciFact": (1.0, 0, 0, "Retrieval"), "STSBenchmark": (0.1, 0, 0, "STS"), "NFCorpus": (0.5, 0, 0, "")}
    data = {"SciFact": str(big), "NFCorpus": str(small), "STSBenchmark": str(tmp_path)}
    items, size = plan(tasks, data, costs, workers=2, min_shard_docs=1000)
    by_key = {i.key: i for i in items}
    assert size == 1000 and [i.key for i in items] == ["SciFact", "NFCorpus", "STSBenchmark"]  # largest first
    assert by_key["SciFact"].sharded and by_key["SciFact"].docs == 5000
    assert not by_key["NFCorpus"].sharded  # 30 documents: one whole task
    assert not by_key["STSBenchmark"].sharded


def test_simulation_follows_the_pools_policy_and_waits_for_dependencies():
    assert simulate([Job("a", 3), Job("b", 2), Job("c", 2)], 2) == 4  # a | b then c
    # a search waits for its shard and its queries, which run in parallel
    jobs = [Job("s", 5), Job("q", 1), Job("t", 1, ("s", "q"))]
    assert simulate(jobs, 2) == 6
    item = WorkItem("R", "R", "R", cost=10.0, sharded=True, docs=4000)
    expanded = expand([item], 1000)
    assert len(expanded) == 4 + 1 + 4 and sum(j.cost for j in expanded) == pytest.approx(10.0)
    assert simulate(expanded, 4) < simulate([Job("R", 10.0)], 4) / 3  # sharding is what spreads one task


def test_planned_makespan_for_a_7b_model_is_within_1_15_of_the_lower_bound_at_8_workers():
    from benchmarks.mteb_makespan import H100_FLOPS, PARAMS_7B, SHARED_CORPUS
    from evaluation.planning import load_cost_rows

    rows = load_cost_rows("MTEB(eng, v1)")
    costs = {n: (2 * PARAMS_7B * r[2] / H100_FLOPS / 3600, *r[1:]) for n, r in rows.items()}
    tasks = resolve_tasks("MTEB(eng, v1)", None)
    items, size = plan(tasks, {}, costs, workers=8, min_shard_docs=1000)
    jobs = expand(items, size, SHARED_CORPUS)
    bound = max(sum(j.cost for j in jobs) / 8, max(j.cost for j in jobs))
    ours = simulate(jobs, 8)
    for i in items:
        i.sharded = False
    task_per_worker = simulate(expand(items, size), 8)
    assert ours <= 1.15 * bound
    assert task_per_worker >= 1.5 * ours  # MSMARCO alone bounds the old plan


def test_token_budget_batches_cut_by_padded_tokens_and_give_the_same_vectors():
    from nvembed import Embedder, PoolingConfig
    from tests.helpers import WORDS, sentencepiece_style_tokenizer, tiny_decoder

    lengths = [40, 3, 10, 39, 5, 5]
    cut = lambda budget: [sorted(lengths[i] for i in b) for b in Embedder._batches(lengths, 2, budget)]  # noqa: E731
    assert cut(80) == [[39, 40], [3, 5, 5, 10]]  # short texts batch wider than batch_size
    assert cut(20) == [[40], [39], [5, 10], [3, 5]]  # never more padded tokens than the budget (one text at least)
    assert cut(None) == [[39, 40], [5, 10], [3, 5]]

    tok = sentencepiece_style_tokenizer()
    emb = Embedder.from_model(tiny_decoder("mistral", len(tok)), tok, pooling=PoolingConfig("latent", num_latents=4))
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 30)))) for _ in range(37)]
    fixed = emb.encode(texts, batch_size=4, show_progress=False)
    by_tokens = emb.encode(texts, batch_tokens=64, show_progress=False)
    np.testing.assert_allclose(by_tokens, fixed, atol=1e-5)
    with pytest.raises(ValueError, match="batch_tokens"):
        emb.encode(texts, batch_tokens=0)


def test_request_checks_and_the_job_config_section_map_onto_one_type():
    from evaluation.request import EvalRequest, Resources
    from nvembed.config import EvaluationConfig

    with pytest.raises(ValueError, match="workers"):
        Resources(workers=0)
    with pytest.raises(ValueError, match="dtype"):
        EvalRequest(model="m", output="o", dtype="int8")
    with pytest.raises(ValueError, match="batch_tokens"):
        EvalRequest(model="m", output="o", max_length=512, batch_tokens=100)
    ev = EvaluationConfig(tasks={"SciFact": "data/scifact", "STS12": ""}, workers=3, shard_docs=500)
    req = EvalRequest.from_config(ev, "runs/x/final", "runs/x/eval", address="ray://head:10001")
    assert req.task_names == ["SciFact", "STS12"] and req.task_data == {"SciFact": "data/scifact"}
    assert req.resources.workers == 3 and req.resources.gpus_per_worker is None  # GPU when the cluster has one
    assert req.shard_docs == 500 and req.resources.address == "ray://head:10001" and req.benchmark == ev.benchmark
