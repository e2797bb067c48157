"""A two-node Ray cluster on this machine: a head (1 CPU, the driver's node) and a second node with its own temp
dir and the custom resource the training workers require (``scaling.worker_resources``), so every worker runs on
the second node, as GPU workers do on a real cluster.

The smoke job trains both stages there with all shared paths under one folder given as ``scaling.shared_root``;
a job whose output folder is relative (node-local) is refused before anything starts. The driver runs in a
subprocess (``nvembed train --address``), never in the pytest process, whose own local Ray (``ray_local``) stays
untouched; teardown ends exactly the processes of these two nodes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
STEP_LINE = "[nvembed] stage 1 step"  # rank 0's console line: lands in the log folder of the node it runs on


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports() -> list[str]:
    """Every per-node port Ray would otherwise take a fixed default for (two nodes share this machine)."""
    names = (
        "node-manager-port",
        "object-manager-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
        "metrics-export-port",
    )
    return [f"--{name}={_free_port()}" for name in names]


def _processes_under(temp_dir: str) -> list[int]:
    """PIDs of the Ray processes of one node: each names its node's temp dir on its command line."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if temp_dir in cmdline:
            pids.append(int(entry.name))
    return pids


def _stop_node(temp_dir: str) -> None:
    """``ray stop --force`` for one node only: ``ray stop`` ends every Ray process of the machine, the session's
    local Ray and other test runs included."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _processes_under(temp_dir)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        while pids and time.time() < deadline and _processes_under(temp_dir):
            time.sleep(0.2)


@pytest.fixture(scope="module")
def two_nodes():
    # short temp dirs: Ray's socket paths must stay under the 107-byte limit
    head_dir = tempfile.mkdtemp(prefix="nv2n-head-", dir="/tmp")
    worker_dir = tempfile.mkdtemp(prefix="nv2n-node-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "NVEMBED_FAIL_AT_STEP")}
    env.update(
        RAY_AUTH_MODE="disabled",  # Ray >= 2.59 requires a token otherwise (cluster/README.md, "Authentication")
        PATH=f"{Path(sys.executable).parent}:{env['PATH']}",
        PYTHONPATH=str(ROOT),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        DS_ACCELERATOR="cpu",
        RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=env.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2"),
    )
    port = _free_port()
    common = ["--disable-usage-stats", "--object-store-memory=200000000"]
    try:
        subprocess.run(
            [RAY, "start", "--head", f"--port={port}", "--num-cpus=1", f"--temp-dir={head_dir}",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={_free_port()}",
             f"--ray-client-server-port={_free_port()}", *_node_ports(), *common],
            check=True, env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        subprocess.run(
            [RAY, "start", f"--address=127.0.0.1:{port}", "--num-cpus=3", f"--temp-dir={worker_dir}",
             '--resources={"nvembed_worker": 2}', *_node_ports(), *common],
            check=True, env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        yield {"address": f"127.0.0.1:{port}", "env": env, "head_dir": head_dir, "worker_dir": worker_dir}
    except subprocess.CalledProcessError as err:
        pytest.fail(f"ray start failed: {err.stderr[-3000:]}")
    finally:
        _stop_node(worker_dir)
        _stop_node(head_dir)
        for folder in (worker_dir, head_dir):
            shutil.rmtree(folder, ignore_errors=True)


def _train(cluster, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "nvembed", "train", "jobs/configs/smoke_cpu.yaml", "--address", cluster["address"]]
    for o in overrides:
        cmd += ["--set", o]
    return subprocess.run(cmd, cwd=ROOT, env=cluster["env"], capture_output=True, text=True, timeout=480)


def _logs_mentioning(temp_dir: str, text: str) -> list[Path]:
    logs = Path(temp_dir) / "session_latest" / "logs"
    return [p for p in logs.rglob("*.out") if text in p.read_text(errors="replace")]


def test_smoke_job_on_two_nodes_with_workers_on_the_second(two_nodes, tmp_path):
    from tests.helpers import save_tiny_backbone

    shared = tmp_path / "shared"  # stands for the volume every node mounts
    model = save_tiny_backbone(shared / "tiny-mistral")
    env = {**two_nodes["env"], "NVEMBED_TINY_MODEL": model}
    proc = _train(
        {**two_nodes, "env": env},
        f"scaling.shared_root={shared}",
        f"output_dir={shared}/runs/smoke",
        "scaling.worker_resources={nvembed_worker: 1}",
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    out = shared / "runs" / "smoke"
    for stage, steps in ((1, 4), (2, 3)):
        lines = (out / f"stage{stage}" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(x)["step"] for x in lines] == list(range(1, steps + 1))
        assert (out / f"stage{stage}" / "final" / "nvembed_config.json").is_file()
    assert (out / "ray").is_dir()  # Ray Train storage followed output_dir onto the shared folder
    assert _logs_mentioning(two_nodes["worker_dir"], STEP_LINE), "no training worker ran on the second node"
    assert not _logs_mentioning(two_nodes["head_dir"], STEP_LINE), "a training worker ran on the head"


def test_node_local_paths_are_refused_before_the_job_starts(two_nodes, tmp_path):
    from tests.helpers import save_tiny_backbone

    model = save_tiny_backbone(tmp_path / "tiny-mistral")
    relative = f"runs/refused-{tmp_path.name}"
    env = {**two_nodes["env"], "NVEMBED_TINY_MODEL": model}
    proc = _train({**two_nodes, "env": env}, f"output_dir={relative}", "scaling.worker_resources={nvembed_worker: 1}")
    assert proc.returncode != 0
    assert f"output_dir='{relative}' is relative" in proc.stderr, proc.stderr[-4000:]
    assert "2 Ray nodes" in proc.stderr
    assert not (ROOT / relative).exists()  # refused before any plan, cache or stage folder was written
