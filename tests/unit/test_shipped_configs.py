"""Every shipped YAML loads into its typed config (torchtune test_configs / litgpt test_config_hub pattern)."""

from __future__ import annotations

import pathlib

import pytest

from nvembed.config import JobConfig, load_yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
JOB_CONFIGS = sorted((ROOT / "jobs" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", JOB_CONFIGS, ids=lambda p: p.name)
def test_job_config_loads(path, monkeypatch):
    monkeypatch.setenv("NVEMBED_TINY_MODEL", "/models/tiny")  # smoke_cpu.yaml takes the tiny model from the env
    job = load_yaml(str(path), JobConfig)
    for n in job.stages():
        cfg = job.stage_config(n)
        assert cfg.run.stage == n
        assert cfg.in_batch_negatives is (n == 1)  # the recipe: in-batch on in stage 1 only (pitfall 9)
        for ds in cfg.data.datasets:
            from nvembed.data.instructions import get_instruction

            get_instruction(ds.task or ds.name)  # every dataset has a registered instruction


def test_there_are_configs():
    assert JOB_CONFIGS


def test_unset_environment_variable_is_named(tmp_path, monkeypatch):
    from nvembed.config import ConfigError

    monkeypatch.delenv("NVEMBED_TINY_MODEL", raising=False)
    with pytest.raises(ConfigError, match="NVEMBED_TINY_MODEL"):
        load_yaml(str(ROOT / "jobs/configs/smoke_cpu.yaml"), JobConfig)


def test_config_paths_exist(monkeypatch):
    """Every data path of the shipped configs that lives in the project exists (paths relative to the root)."""
    monkeypatch.setenv("NVEMBED_TINY_MODEL", "/models/tiny")
    for path in JOB_CONFIGS:
        job = load_yaml(str(path), JobConfig)
        for n in job.stages():
            for ds in job.stage_config(n).data.datasets:
                if "://" not in ds.path and not ds.path.startswith("../"):
                    assert (ROOT / ds.path).exists(), (path.name, ds.path)
        for folder in job.evaluation.tasks.values() if job.evaluation else []:
            assert (ROOT / folder).is_dir(), (path.name, folder)
