"""Sweep configs and the dev objective, without Ray: validation at load time, dev-data guards, nDCG, concurrency."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from nvembed.config import ConfigError, DevConfig, JobConfig, load_yaml
from tune.config import load_sweep

ROOT = pathlib.Path(__file__).resolve().parents[2]
SWEEPS = sorted(p for p in (ROOT / "tune" / "configs").glob("*.yaml") if not p.stem.endswith("_job"))
JOBS = sorted((ROOT / "tune" / "configs").glob("*_job.yaml"))


@pytest.fixture(autouse=True)
def _root(monkeypatch):
    monkeypatch.chdir(ROOT)  # sweep configs name their base job relative to the project root


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_shipped_sweeps_load(path):
    from tune.config import load_base_job, representative_points

    sweep = load_sweep(str(path.relative_to(ROOT)))
    job = load_base_job(sweep)
    assert job.dev is not None and (job.dev.retrieval or job.dev.sts)
    assert {"lora.rank", "pooling.num_latents"} <= set(sweep.space)
    for spec in sweep.space.values():
        assert representative_points(spec)


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_shipped_sweep_jobs_load(path):
    job = load_yaml(str(path.relative_to(ROOT)), JobConfig)
    assert job.dev is not None


def test_gpu_sweep_is_mistral7b_on_gpus():
    from tune.config import load_base_job
    from tune.sweep import concurrency, trial_demand

    sweep = load_sweep("tune/configs/mistral7b_gpu.yaml")
    job = load_base_job(sweep)
    assert job.model.name_or_path == "mistralai/Mistral-7B-v0.1" and job.scaling.use_gpu
    assert sweep.space["lora.rank"] == {"grid": [8, 16, 32, 64]}
    assert sweep.space["pooling.num_latents"] == {"grid": [128, 256, 512, 1024]}
    assert trial_demand(sweep)["GPU"] == 8  # one 8-GPU node per trial
    assert concurrency(sweep, {"CPU": 1024, "GPU": 32}) == 4  # 4 nodes, capped by max_concurrent=4
    assert concurrency(sweep, {"CPU": 1024, "GPU": 8}) == 1


def _write(tmp_path, text: str) -> str:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return str(path)


BASE = "base: tune/configs/smoke_job.yaml\n"


def test_unknown_space_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match="space.lora.rnk"):
        load_sweep(_write(tmp_path, BASE + "space: {lora.rnk: {grid: [4, 8]}}\n"))


def test_invalid_space_value_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"space.lora.rank=0.*lora.rank must be >= 1"):
        load_sweep(_write(tmp_path, BASE + "space: {lora.rank: {grid: [0, 8]}}\n"))


def test_grid_search_needs_grid_values(tmp_path):
    text = BASE + "space: {stage1.optim.lr: {loguniform: [1.0e-4, 1.0e-2]}}\n"
    with pytest.raises(ConfigError, match="grid values"):
        load_sweep(_write(tmp_path, text))
    sweep = load_sweep(_write(tmp_path, text + "search: {algorithm: random, num_samples: 3}\n"))
    assert sweep.search.num_samples == 3


def test_bad_distribution_and_unknown_sweep_key(tmp_path):
    with pytest.raises(ConfigError, match="space.lora.rank"):
        load_sweep(_write(tmp_path, BASE + "space: {lora.rank: {normal: [4, 8]}}\n"))
    with pytest.raises(ConfigError, match="unknown key 'schedular'"):
        load_sweep(_write(tmp_path, BASE + "space: {lora.rank: {grid: [4]}}\nschedular: {kind: asha}\n"))


def test_base_without_dev_section_is_refused(tmp_path):
    text = "base: jobs/configs/minilm_recipe.yaml\nspace: {pooling.num_latents: {grid: [8, 16]}}\n"
    with pytest.raises(ConfigError, match="no dev section"):
        load_sweep(_write(tmp_path, text))


def test_fixed_job_overrides_from_the_command_line():
    from tune.config import load_base_job

    sweep = load_sweep("tune/configs/smoke.yaml", ["set.stage1.run.max_steps=10", "resources.max_concurrent=1"])
    assert sweep.set["stage1.run.max_steps"] == 10 and sweep.resources.max_concurrent == 1
    assert load_base_job(sweep).stage1.run.max_steps == 10


def test_param_space_per_algorithm():
    from ray.tune.search.sample import Categorical, Float

    from tune.sweep import param_space

    sweep = load_sweep("tune/configs/smoke.yaml")
    assert param_space(sweep)["lora.rank"] == {"grid_search": [4, 8]}
    random = load_sweep("tune/configs/smoke.yaml", ["search.algorithm=random"])
    assert isinstance(param_space(random)["lora.rank"], Categorical)
    import dataclasses

    lr = dataclasses.replace(random, space={**random.space, "stage1.optim.lr": {"loguniform": [1e-4, 1e-2]}})
    assert isinstance(param_space(lr)["stage1.optim.lr"], Float)


def test_concurrency_never_exceeds_the_machine():
    from tune.sweep import concurrency

    sweep = load_sweep("tune/configs/smoke.yaml", ["resources.max_concurrent=8"])
    assert concurrency(sweep, {"CPU": 2.0}) == 2
    assert concurrency(sweep, {"CPU": 0.5}) == 1  # at least one trial, queued until resources free up
    train = load_sweep("tune/configs/smoke.yaml", ["resources.mode=train"])  # 1 worker x 1 CPU + 1 for Ray Data
    assert concurrency(train, {"CPU": 2.0}) == 1


# ------------------------------------------------------------------------------------------------- dev objective


DEV = ROOT / "nvembed" / "resources" / "dev"  # the bundled dev slices (nvembed/resources/PROVENANCE.md)


def test_dev_data_must_not_be_an_mteb_test_split(tmp_path):
    from nvembed.dev import check_dev_data

    # judged by folder / file name, before anything is read: the folders need not exist
    scifact = tmp_path / "scifact"
    with pytest.raises(ConfigError, match="test split of MTEB task SciFact"):
        check_dev_data(DevConfig(retrieval=str(scifact), retrieval_split="test"))
    with pytest.raises(ConfigError, match="test split of MTEB task STSBenchmark"):
        check_dev_data(DevConfig(sts=str(ROOT / "nvembed/resources/eval/stsbenchmark/test.jsonl")))
    check_dev_data(DevConfig(retrieval=str(scifact), retrieval_split="train"))
    check_dev_data(DevConfig(retrieval=str(tmp_path / "cranfield"), retrieval_split="test"))  # not an MTEB task
    check_dev_data(DevConfig(retrieval=str(DEV / "snli"), retrieval_split="dev"))  # not an MTEB task either
    check_dev_data(DevConfig(sts=str(DEV / "stsbenchmark" / "dev.jsonl")))
    with pytest.raises(ConfigError, match="also trained or evaluated on"):
        check_dev_data(DevConfig(retrieval=str(scifact), retrieval_split="train"), [str(scifact)])


def test_ndcg_matches_a_hand_computation():
    from nvembed.dev import ndcg_at_10

    # one query, graded qrels d1:2, d2:1; ranking d2 > d0 > d1
    scores = np.array([[0.5, 0.1, 0.9]])  # [1 query, 3 docs]: d0, d1, d2
    got = ndcg_at_10(scores, ["q"], ["d0", "d1", "d2"], {"q": {"d1": 2, "d2": 1}})
    # trec_eval's ndcg_cut (what mteb reports through pytrec_eval) uses linear gain: rel / log2(rank + 1)
    dcg = 1 / np.log2(2) + 2 / np.log2(4)
    ideal = 2 / np.log2(2) + 1 / np.log2(3)
    assert got == pytest.approx(dcg / ideal, abs=1e-6)


def test_dev_set_scores_are_deterministic_and_bounded(tiny_mistral_embedder, tmp_path):
    import shutil

    from nvembed.data.readers import DataError
    from nvembed.dev import DevSet

    snli = tmp_path / "snli"  # the bundled slice plus one empty document, as real collections have
    shutil.copytree(DEV / "snli", snli)
    lines = (snli / "corpus.jsonl").read_text().splitlines(keepends=True)
    lines.insert(4, '{"_id": "empty", "title": "", "text": ""}\n')
    (snli / "corpus.jsonl").write_text("".join(lines))
    dev = DevConfig(
        retrieval=str(snli),
        max_queries=8,
        max_corpus=60,
        sts=str(DEV / "stsbenchmark" / "dev.jsonl"),
        max_sts_pairs=40,
        max_length=48,
        on_error="skip",
    )
    first = DevSet(dev).evaluate(tiny_mistral_embedder)
    again = DevSet(dev).evaluate(tiny_mistral_embedder)
    assert first == again
    assert 0 <= first["ndcg_at_10"] <= 100 and -100 <= first["sts_spearman"] <= 100
    assert first["objective"] == pytest.approx((first["ndcg_at_10"] + first["sts_spearman"]) / 2)
    assert DevSet(dev).policy.skipped  # the empty document was counted, not silently dropped
    with pytest.raises(DataError, match=r"corpus.jsonl:5: empty text"):
        DevSet(DevConfig(retrieval=str(snli)))  # on_error: raise (the default) names file and line


def test_env_default_in_configs(tmp_path, monkeypatch):
    path = tmp_path / "job.yaml"
    path.write_text("model: {name_or_path: '${NVEMBED_TEST_MODEL:-tiny:mistral}'}\nstage1: {}\n")
    monkeypatch.delenv("NVEMBED_TEST_MODEL", raising=False)
    assert load_yaml(str(path), JobConfig).model.name_or_path == "tiny:mistral"
    monkeypatch.setenv("NVEMBED_TEST_MODEL", "/models/x")
    assert load_yaml(str(path), JobConfig).model.name_or_path == "/models/x"
