"""Issues 3 and 17: the two-stage recipe on MiniLM + latent attention, real data, scored with mteb, makes a
generalist.

Trains ``jobs/configs/minilm_recipe.yaml`` from scratch (mining included) through ``benchmarks/minilm_recipe.py``
and checks the acceptance against the base MiniLM measured in the same run (mean pooling, no instruction): SciFact
at least 8 points above it, and the mean over the generalisation suite (STS12, Cranfield, MRPC, MR, SUBJ, WikiQA
test: no training row comes from them) at least 1 point above it. The wall time (target: 30 minutes on a 2-core
CPU) is printed, not asserted: timings belong to the benchmark's report, and this machine's are noisy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.mark.slow
@pytest.mark.timeout(5400)
@pytest.mark.xfail(
    strict=True,
    reason="issue 17 open: out-of-domain mean 72.24 vs base 72.39 on 2026-12-02 (docs/recipe.md); strict, so a recipe "
    "that meets the acceptance turns this into a failure until the mark is removed",
)
def test_recipe_generalises_and_beats_base_minilm(tmp_path, shared_data):
    from minilm_recipe import means

    cmd = [
        sys.executable,
        str(ROOT / "benchmarks/minilm_recipe.py"),
        "--out",
        str(tmp_path / "r"),
        "--variants",
        "recipe",
    ]
    env = {**os.environ, "NVEMBED_DATA": shared_data}  # the config's data and the benchmark's eval folders
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=5300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "r" / "results.json").read_text())
    base = result["scores"]["base MiniLM (mean, no instruction)"]
    trained = result["scores"]["recipe (stage 2)"]
    print(json.dumps(result, indent=1))
    base_in, base_out = means(base)
    trained_in, trained_out = means(trained)
    assert trained["SciFact"] >= base["SciFact"] + 8.0, (trained, base)
    assert trained_out >= base_out + 1.0, (trained_out, base_out, trained, base)
    assert trained_in > base_in, (trained_in, base_in)
