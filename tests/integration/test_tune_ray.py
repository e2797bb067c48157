"""`nvembed tune` end to end, as a user runs it from the project root: the 4-trial smoke sweep (table, best YAML,
plots; the best YAML trains with `nvembed train`), and a sweep killed after 2 trials that resumes without
re-training them. Each run starts its own local Ray in a subprocess (address="local")."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        NVEMBED_CACHE=str(tmp_path_factory.mktemp("nvembed-cache")),  # tiny:mistral is built here, once
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONWARNINGS="ignore",
        RAY_DEDUP_LOGS="0",
    )
    return env


def _nvembed(args, env, timeout=600, **kw):
    return subprocess.run(
        [sys.executable, "-m", "nvembed", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def _table(out: Path) -> list[dict]:
    with (out / "trials.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_smoke_sweep_from_the_cli_then_train_the_best(env, tmp_path):
    out = tmp_path / "sweep"
    t0 = time.perf_counter()
    run = _nvembed(["tune", "tune/configs/smoke.yaml", "--set", f"output_dir={out}"], env, timeout=300)
    seconds = time.perf_counter() - t0
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    print(f"smoke sweep: {seconds:.1f} s")
    assert seconds < 300

    rows = _table(out)
    assert sorted((r["lora.rank"], r["pooling.num_latents"]) for r in rows) == [
        ("4", "16"), ("4", "8"), ("8", "16"), ("8", "8")
    ]  # fmt: skip
    assert all(r["objective"] for r in rows)
    objectives = [float(r["objective"]) for r in rows if r["status"] == "completed"]
    assert objectives and objectives[0] == max(objectives)  # sorted, best first among finished trials
    for png in ("objective.png", "curves.png"):
        assert (out / png).stat().st_size > 1000
    assert "| rank |" in (out / "trials.md").read_text()

    best = next(out.glob("best*.yaml"))
    job = yaml.safe_load(best.read_text())
    assert job["lora"]["rank"] == int(rows[0]["lora.rank"])
    assert job["pooling"]["num_latents"] == int(rows[0]["pooling.num_latents"])
    trained = _nvembed(["train", str(best), "--local"], env, timeout=300)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    final = Path(job["output_dir"]) / "stage1" / "final"
    assert (final / "pooler.safetensors").is_file() and (final / "adapter").is_dir()
    dev = [json.loads(line) for line in (Path(job["output_dir"]) / "stage1" / "dev.jsonl").read_text().splitlines()]
    # the same job at the same seed scores what its trial scored
    assert dev[-1]["objective"] == pytest.approx(float(rows[0]["objective"]), abs=0.01)


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the sweep driver and every process of its session (its local Ray: GCS, raylet, trial workers)."""
    sid = os.getsid(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
        try:
            if os.getsid(pid) == sid:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@pytest.mark.slow  # 1.5 min; the default run keeps the smoke sweep (tests/integration/test_shipped_configs_train.py)
def test_killed_sweep_resumes_without_rerunning_finished_trials(env, tmp_path):
    out = tmp_path / "sweep"
    args = ["tune", "tune/configs/smoke.yaml", "--set", f"output_dir={out}", "--set", "resources.max_concurrent=1"]
    args += ["--set", "scheduler.kind=fifo"]  # one trial at a time, none stopped early: a deterministic order
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nvembed", *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.time() + 400
    while len(list(out.glob("trials/*/DONE.json"))) < 2:
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.time() < deadline, "two trials did not finish in time"
        time.sleep(0.5)
    _kill_session(proc)
    finished = sorted(p.parent.name for p in out.glob("trials/*/DONE.json"))
    assert len(finished) == 2 and not (out / "trials.csv").exists()

    run = _nvembed(args, env, timeout=400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "resuming the interrupted sweep" in run.stdout
    rows = _table(out)
    assert len(rows) == 4 and all(r["status"] == "completed" for r in rows)
    for trial in finished:  # trained exactly once, before the kill
        assert len((out / "trials" / trial / "starts.log").read_text().splitlines()) == 1
    assert {r["trial_id"] for r in rows} >= set(finished)
    assert len(list(out.glob("trials/*/DONE.json"))) == 4

    changed = _nvembed([*args, "--set", "scheduler.grace_period=5"], env, timeout=120)
    assert changed.returncode == 2 and "different config" in changed.stderr
