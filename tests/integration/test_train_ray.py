"""The Ray training job on CPU: 2 workers, both stages, ZeRO-3 really partitioned, worker crash and exact resume,
bad rows caught before any worker starts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from nvembed.config import JobConfig, load_yaml

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900), pytest.mark.usefixtures("ray_local")]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tests.helpers import save_tiny_backbone

    path = save_tiny_backbone(tmp_path_factory.mktemp("tiny-mistral"))
    os.environ["NVEMBED_TINY_MODEL"] = path
    return path


def _job(out, *overrides):
    os.chdir(ROOT)  # config paths are relative to the project root
    return load_yaml(str(ROOT / "jobs/configs/smoke_cpu.yaml"), JobConfig, [f"output_dir={out}", *overrides])


def _losses(metrics: Path) -> dict[int, float]:
    by_step = {}
    for line in metrics.read_text().splitlines():
        m = json.loads(line)
        by_step[m["step"]] = m["loss"]  # after a restart the re-run step overwrites the first attempt
    return by_step


def _check_final(out: Path, stage: int) -> None:
    from safetensors.torch import load_file

    from nvembed import Embedder
    from nvembed.training.driver import PROBE

    final = out / f"stage{stage}" / "final"
    adapter = load_file(str(final / "adapter" / "adapter_model.safetensors"))
    pooler = load_file(str(final / "pooler.safetensors"))
    assert adapter and all(t.numel() > 0 for t in adapter.values())
    assert any(float(t.abs().sum()) > 0 for k, t in adapter.items() if "lora_B" in k)  # trained, not the zero init
    assert pooler and all(t.numel() > 0 for t in pooler.values())
    reloaded = Embedder.from_pretrained(final).encode(PROBE, show_progress=False)
    expected = np.load(out / f"stage{stage}" / "probe_embeddings.npy")
    assert np.abs(reloaded - expected).max() <= 1e-5
    assert (out / f"stage{stage}" / "loss.png").is_file()


@pytest.mark.slow  # the same kill and restore runs by default on object storage (test_object_storage_ray.py)
def test_killed_worker_restarts_from_checkpoint_with_identical_losses(tiny_model, tmp_path):
    """Also runs on very uneven datasets (3 rows next to 2,000): every rank still runs every step (no hang)."""
    from nvembed.launch.trainer import run_job_on_ray
    from tests.helpers import kill_one_worker_once

    small = tmp_path / "small.jsonl"
    small.write_text(
        "".join(json.dumps({"query": f"q{i}", "positive": f"p{i}", "negatives": ["n"]}) + "\n" for i in range(3))
    )
    datasets = (
        f"stage1.data.datasets=[{{name: snli, format: triplets, path: {small}}}, "
        "{name: wordnet, format: triplets, path: nvembed/resources/train/wordnet_triplets.jsonl, weight: 3}]"
    )
    common = ["stage1.run.max_steps=6", "stage1.run.checkpoint_every=2", "scaling.max_failures=1", datasets]
    run_job_on_ray(_job(tmp_path / "straight", *common), stages=[1])
    marker = tmp_path / "killed"
    run_job_on_ray(_job(tmp_path / "crashed", *common), stages=[1], callbacks=[kill_one_worker_once(2, marker)])
    assert marker.exists()  # a worker was killed after the step-2 checkpoint was reported
    straight = _losses(tmp_path / "straight/stage1/metrics.jsonl")
    crashed = _losses(tmp_path / "crashed/stage1/metrics.jsonl")
    steps = [json.loads(x)["step"] for x in (tmp_path / "crashed/stage1/metrics.jsonl").read_text().splitlines()]
    assert steps.count(1) == steps.count(2) == 1  # the restart resumed from the checkpoint, not from scratch
    assert set(straight) == set(crashed) == set(range(1, 7))
    for step in range(1, 7):
        assert crashed[step] == pytest.approx(straight[step], abs=1e-6), step
    _check_final(tmp_path / "crashed", 1)


def test_malformed_row_stops_the_job_before_workers_start(tiny_model, tmp_path):
    from nvembed.data.readers import DataError
    from nvembed.launch.trainer import run_job_on_ray

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "a", "positive": "b"}\n{"query": "c"}\n')
    job = _job(tmp_path / "out", f"stage1.data.datasets=[{{name: snli, format: triplets, path: {bad}}}]")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: missing field: 'positive'"):
        run_job_on_ray(job, stages=[1])
    assert not (tmp_path / "ray").exists() and not (tmp_path / "out" / "ray").exists()  # no trainer was created


def test_too_long_instruction_stops_the_job_before_workers_start(tiny_model, tmp_path):
    from nvembed.config import ConfigError
    from nvembed.launch.trainer import run_job_on_ray

    job = _job(tmp_path / "out", "stage1.run.query_max_length=6")  # the snli instruction alone is longer
    with pytest.raises(ConfigError, match=r"stage1: dataset 'snli' \(queries\): the instruction takes \d+ tokens"):
        run_job_on_ray(job, stages=[1])
    assert not (tmp_path / "ray").exists() and not (tmp_path / "out" / "ray").exists()  # no trainer was created
    assert not (tmp_path / "out" / "stage1" / "plan").exists()  # stopped before the step plan, too
