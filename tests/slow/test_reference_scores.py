"""`nvembed evaluate` with 2 workers reproduces the published all-MiniLM-L6-v2 scores on the local data; SciFact's
corpus goes through the sharded path and scores exactly what mteb's single-process evaluation scores (64.51)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PUBLISHED = {"SciFact": 64.51, "STSBenchmark": 82.03, "STS12": 72.37, "Banking77Classification": 80.04}
TOLERANCE = {"SciFact": 0.0, "STSBenchmark": 0.3, "STS12": 0.3, "Banking77Classification": 1.0}


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_minilm_reference_scores(tmp_path, shared_data):
    folders = {
        "SciFact": "scifact",
        "STSBenchmark": "stsbenchmark",
        "STS12": "sts12",
        "Banking77Classification": "banking77",
    }
    cmd = [
        sys.executable,
        "-m",
        "nvembed",
        "evaluate",
        "--model",
        "packaged:all-MiniLM-L6-v2",
        "--workers",
        "2",
        "--max-length",
        "256",
        "--output",
        str(tmp_path / "eval"),
    ]
    for task, folder in folders.items():
        cmd += ["--task-data", f"{task}={shared_data}/{folder}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1700)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1 retrieval corpora in shards" in proc.stdout, proc.stdout[-3000:]
    rows = json.loads((tmp_path / "eval" / "report.json").read_text())["rows"]
    scores = {r["task"]: r["score"] for r in rows}
    print(scores)
    for task, ref in PUBLISHED.items():
        assert abs(scores[task] - ref) <= TOLERANCE[task], (task, scores[task], ref)
