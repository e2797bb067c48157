"""Ray Train checkpoints on an S3-compatible object store (``scaling.storage_path: s3://...``), end to end.

The store is a real S3 API (moto's server) on loopback, started by the test; the endpoint reaches Ray Train's
controller and workers only through what the job itself passes on (nvembed/launch/storage.py), as on a cluster.
2 workers, one SIGKILLed once the step-2 checkpoint is reported: the run restores from that object-store checkpoint and
ends with the losses of an uninterrupted run; a job stopped that way and started again resumes from the store; both
export a final model that loads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from nvembed.config import JobConfig, load_yaml

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600), pytest.mark.usefixtures("ray_local")]
ROOT = Path(__file__).resolve().parents[2]
BUCKET = "nvembed-checkpoints"
STEPS = 4


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tests.helpers import save_tiny_backbone

    path = save_tiny_backbone(tmp_path_factory.mktemp("tiny-mistral"))
    os.environ["NVEMBED_TINY_MODEL"] = path
    return path


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on 127.0.0.1 with one bucket; the S3 settings are in this process's environment only."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "nvembed-test",
        "AWS_SECRET_ACCESS_KEY": "nvembed-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"])
    client.create_bucket(Bucket=BUCKET)
    try:
        yield client
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


def _job(out: Path, *overrides: str) -> JobConfig:
    os.chdir(ROOT)  # config paths are relative to the project root
    common = [
        f"output_dir={out}",
        f"scaling.storage_path=s3://{BUCKET}/ray",
        f"stage1.run.max_steps={STEPS}",
        "stage1.run.checkpoint_every=2",
    ]
    return load_yaml(str(ROOT / "jobs/configs/smoke_cpu.yaml"), JobConfig, [*common, *overrides])


def _kill_one_worker_after(step: int, marker: Path) -> list:
    """Fault injection, in one place: Ray Train callbacks that SIGKILL one training worker once the report of
    ``step`` (a checkpoint) has arrived, once (``marker``), as tests/integration/test_train_ray.py's killed-worker
    test does."""
    from tests.helpers import kill_one_worker_once

    return [kill_one_worker_once(step, marker)]


def _losses(out: Path) -> dict[int, float]:
    by_step = {}
    for line in (out / "stage1" / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        by_step[m["step"]] = m["loss"]  # after a restart the re-run step overwrites the first attempt
    return by_step


def _steps_run(out: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (out / "stage1" / "metrics.jsonl").read_text().splitlines()]


def _checkpoint_objects(client, out: Path) -> list[str]:
    from nvembed.launch.storage import run_folder

    prefix = f"ray/{run_folder(out)}/stage1/"
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"][len(prefix) :] for page in pages for o in page.get("Contents", [])]


def _check_exported(out: Path) -> None:
    import numpy as np

    from nvembed import Embedder
    from nvembed.training.driver import PROBE

    final = out / "stage1" / "final"
    reloaded = Embedder.from_pretrained(final).encode(PROBE, show_progress=False)
    assert np.abs(reloaded - np.load(out / "stage1" / "probe_embeddings.npy")).max() <= 1e-5


@pytest.fixture(scope="module")
def straight(tiny_model, s3, tmp_path_factory):
    """The uninterrupted run: the reference losses."""
    from nvembed.launch.trainer import run_job_on_ray

    out = tmp_path_factory.mktemp("s3") / "straight"
    run_job_on_ray(_job(out), stages=[1])
    return out


def test_killed_worker_restores_from_object_store_checkpoint(straight, s3, tmp_path):
    from nvembed.launch.trainer import run_job_on_ray

    out = tmp_path / "crashed"
    kill = _kill_one_worker_after(2, tmp_path / "killed")
    run_job_on_ray(_job(out, "scaling.max_failures=1"), stages=[1], callbacks=kill)

    assert (tmp_path / "killed").exists()
    steps = _steps_run(out)
    assert steps.count(1) == steps.count(2) == 1  # restored from the step-2 checkpoint, not from scratch
    expected = _losses(straight)
    assert set(expected) == set(_losses(out)) == set(range(1, STEPS + 1))
    for step, loss in _losses(out).items():
        assert loss == pytest.approx(expected[step], abs=1e-6), step
    for run in (straight, out):
        objects = _checkpoint_objects(s3, run)
        assert any(k.startswith("checkpoint_") and k.endswith("trainable.safetensors") for k in objects), objects
        assert not (run / "ray").exists()  # nothing went to the default local storage
        _check_exported(run)


@pytest.mark.slow  # the killed-worker test above covers restore from the store in the default run
def test_stopped_job_resumes_from_object_store(straight, s3, tmp_path):
    """No failure budget: the kill stops the job; the same job started again continues from the store's checkpoint
    (a new driver: what a resubmitted RayJob does), not from step 0."""
    from nvembed.launch.trainer import run_job_on_ray

    out = tmp_path / "resumed"
    with pytest.raises(Exception):  # noqa: B017 - Ray Train's error type for a dead worker group varies by version
        run_job_on_ray(_job(out), stages=[1], callbacks=_kill_one_worker_after(2, tmp_path / "killed"))
    assert not (out / "stage1" / "final").exists()
    run_job_on_ray(_job(out), stages=[1])

    steps = _steps_run(out)
    assert steps[:2] == [1, 2] and steps.count(1) == steps.count(2) == 1  # resumed after step 2
    expected = _losses(straight)
    assert set(_losses(out)) == set(range(1, STEPS + 1))
    for step, loss in _losses(out).items():
        assert loss == pytest.approx(expected[step], abs=1e-6), step
    _check_exported(out)
