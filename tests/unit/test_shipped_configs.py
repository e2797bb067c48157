"""Every shipped YAML loads into its typed config (torchtune test_configs / litgpt test_config_hub pattern)."""

from __future__ import annotations

import pathlib

import pytest

from nvembed.config import JobConfig, load_yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
JOB_CONFIGS = sorted((ROOT / "jobs" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", JOB_CONFIGS, ids=lambda p: p.name)
def test_job_config_loads(path):
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
