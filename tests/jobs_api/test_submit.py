"""`nvembed submit` against a Ray head started on loopback: the smoke job SUCCEEDS with its logs; a failing job
returns non-zero. Runs last among the Ray tests: it stops the session's local Ray and ends with `ray stop`."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]  # tests/jobs_api/ sorts after tests/integration/: this stops Ray


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    port, dash = _free_port(), _free_port()
    subprocess.run(
        [
            str(bin_dir / "ray"),
            "start",
            "--head",
            f"--port={port}",
            f"--dashboard-port={dash}",
            "--dashboard-host=127.0.0.1",
            "--num-cpus=4",
            "--disable-usage-stats",
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=120,
    )
    yield f"http://127.0.0.1:{dash}", env
    subprocess.run([str(bin_dir / "ray"), "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_submit_smoke_job_and_failing_job(ray_head, tmp_path):
    from tests.helpers import save_tiny_backbone

    address, env = ray_head
    model = save_tiny_backbone(tmp_path / "tiny")
    runtime_env = tmp_path / "runtime_env.yaml"
    runtime_env.write_text(
        yaml.safe_dump(
            {
                "working_dir": str(ROOT),
                "excludes": [".venv", "runs", ".git", "*.egg-info", ".ci"],
                "env_vars": {
                    "NVEMBED_TINY_MODEL": model,
                    "HF_HUB_OFFLINE": "1",
                    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
                    "TOKENIZERS_PARALLELISM": "false",
                    "PYTHONWARNINGS": "ignore",
                },
            }
        )
    )
    out = tmp_path / "smoke-out"
    cmd = [
        sys.executable,
        "-m",
        "nvembed",
        "submit",
        "--address",
        address,
        "--runtime-env",
        str(runtime_env),
        "--",
        "python",
        "-m",
        "nvembed",
        "train",
        "jobs/configs/smoke_cpu.yaml",
        "--set",
        f"output_dir={out}",
        "--stage",
        "1",
        "--set",
        "stage1.run.max_steps=2",
    ]
    ok = subprocess.run(cmd, env={**env, "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True, timeout=800)
    assert ok.returncode == 0, ok.stdout[-4000:] + ok.stderr[-2000:]
    assert "SUCCEEDED" in ok.stdout and "stage 1 final model" in ok.stdout  # the job's own logs were streamed
    assert (out / "stage1" / "final" / "nvembed_config.json").is_file()

    bad = [
        sys.executable,
        "-m",
        "nvembed",
        "submit",
        "--address",
        address,
        "--runtime-env",
        str(runtime_env),
        "--",
        "python",
        "-c",
        "import sys; print('about to fail'); sys.exit(3)",
    ]
    failed = subprocess.run(bad, env={**env, "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True, timeout=300)
    assert failed.returncode != 0
    assert "FAILED" in failed.stdout and "about to fail" in failed.stdout
    shutil.rmtree(out, ignore_errors=True)
