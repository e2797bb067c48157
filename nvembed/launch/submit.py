"""``nvembed submit``: run a command as a Ray job through the Jobs API (the SDK behind ``ray job submit``).

Equivalent CLI: ``ray job submit --address http://HEAD:8265 --runtime-env cluster/runtime_env.yaml -- CMD``.
Clusters started with Ray >= 2.59 require a token by default: set ``RAY_AUTH_MODE=token`` where this runs (the
client then reads the token Ray wrote on that machine) or start the cluster with ``RAY_AUTH_MODE=disabled`` on a
private network (cluster/README.md).
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import yaml

TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def load_runtime_env(path: str | None) -> dict:
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"runtime env file not found: {path}")
    env = yaml.safe_load(p.read_text()) or {}
    if not isinstance(env, dict):
        raise ValueError(f"{path}: a runtime_env must be a mapping")
    return env


def submit(
    address: str,
    entrypoint: list[str],
    runtime_env: str | None = None,
    wait: bool = True,
    poll_s: float = 1.0,
    out=sys.stdout,
) -> int:
    """Submit, stream logs until the job ends, and return 0 only if it SUCCEEDED."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    job_id = client.submit_job(entrypoint=shlex.join(entrypoint), runtime_env=load_runtime_env(runtime_env))
    print(f"submitted {job_id} to {address}: {shlex.join(entrypoint)}", file=out, flush=True)
    if not wait:
        return 0
    shown = 0
    while True:
        status = client.get_job_status(job_id)
        status = str(getattr(status, "value", status))
        logs = client.get_job_logs(job_id)
        if len(logs) > shown:
            out.write(logs[shown:])
            out.flush()
            shown = len(logs)
        if status in TERMINAL:
            info = client.get_job_info(job_id)
            print(f"job {job_id}: {status}" + (f" ({info.message})" if info.message else ""), file=out, flush=True)
            return 0 if status == "SUCCEEDED" else 1
        time.sleep(poll_s)
