"""The repository works from a clone alone: default-run tests and the configs a user runs offline read only files
that ship in the repository.

The project's dev machines have real data in a sibling folder (``../shared``); a clone does not. A test or config
that quietly reads it passes there and breaks (or, with a skip, silently tests nothing) everywhere else. External
data is allowed only where it is opt-in: slow tests through the ``shared_data`` fixture (``$NVEMBED_DATA``), and
configs through a ``${NVEMBED_DATA:-...}`` variable that the config's comments document. ``.ci/run`` runs the suite
in a copy of the checkout with no sibling folders, which is the end-to-end form of this check.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"

#: What reading the sibling folder looks like in test code. A folder merely *named* "shared" (a tmp dir standing
#: for a cluster's shared volume) or setting $NVEMBED_DATA for a config under test is fine; reaching it is not.
EXTERNAL = re.compile(
    r"\.\./shared\b"  # a relative path to the sibling folder
    r"|/shared/data\b"  # its data folder, however reached
    r"|[\"']\.\.[\"']\s*,\s*[\"']shared[\"']"  # os.path.join(here, "..", "shared")
    r"|\.parents?(?:\[\d+\])?\s*/\s*[\"']shared[\"']"  # Path(here).parent / "shared"
    r"|\bshared_data\b"  # the opt-in fixture of slow tests
    r"|(?:getenv|environ\.get)\(\s*[\"']NVEMBED_DATA|environ\[\s*[\"']NVEMBED_DATA"  # reading the variable
)

#: Configs a user runs with nothing but the clone (README: quickstart, smoke sweep; the Ray tests' smoke job).
OFFLINE_JOBS = ("jobs/configs/quickstart.yaml", "jobs/configs/smoke_cpu.yaml", "tune/configs/smoke_job.yaml")
OFFLINE_SWEEPS = ("tune/configs/smoke.yaml",)
CONFIGS = sorted([*(ROOT / "jobs" / "configs").rglob("*.yaml"), *(ROOT / "tune" / "configs").glob("*.yaml")])
DATA_VARIABLE = re.compile(r"\$\{NVEMBED_DATA(?::-[^}]*)?\}")
SENTINEL = "/nvembed-data-variable"  # what $NVEMBED_DATA is set to while the configs load below


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _default_run_test_files() -> list[Path]:
    """Every Python file of the test tree except ``tests/slow`` (opt-in, checked below to be all slow) and this one."""
    here = Path(__file__).resolve()
    return [p for p in sorted(TESTS.rglob("*.py")) if p.relative_to(TESTS).parts[0] != "slow" and p != here]


#: The opt-in machinery itself: top-level definitions (and the comment lines right above them) allowed to name it.
OPT_IN = {"tests/conftest.py": {"DEFAULT_DATA", "shared_data_path", "shared_data"}}


def _opt_in_lines(path: Path, names: set[str]) -> set[int]:
    lines = path.read_text().splitlines()
    allowed: set[int] = set()
    for node in ast.parse("\n".join(lines)).body:
        defined = {node.name} if isinstance(node, ast.FunctionDef) else set()
        if isinstance(node, ast.Assign):
            defined = {t.id for t in node.targets if isinstance(t, ast.Name)}
        if defined & names:
            first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
            while first > 1 and lines[first - 2].lstrip().startswith("#"):
                first -= 1
            allowed |= set(range(first, node.end_lineno + 1))
    return allowed


def test_default_run_tests_read_nothing_outside_the_repository():
    offenders = []
    for path in _default_run_test_files():
        rel = _rel(path)
        allowed = _opt_in_lines(path, OPT_IN[rel]) if rel in OPT_IN else set()
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            if EXTERNAL.search(line) and n not in allowed:
                offenders.append(f"{rel}:{n}: {line.strip()}")
    assert offenders == [], "default-run tests must use data shipped in the repository:\n" + "\n".join(offenders)


def test_every_test_under_tests_slow_is_marked_slow():
    """Files under tests/slow may read ``$NVEMBED_DATA``; that is only safe if the default run never collects them."""
    unmarked = []
    for path in sorted((TESTS / "slow").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        module_marked = any(
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets)
            and "mark.slow" in ast.unparse(node.value)
            for node in tree.body
        )
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_"):
                if not module_marked and not any("mark.slow" in ast.unparse(d) for d in node.decorator_list):
                    unmarked.append(f"{_rel(path)}::{node.name}")
    assert unmarked == []


def test_shared_data_fixture_refuses_default_run_tests(tmp_path, monkeypatch):
    from tests.conftest import shared_data_path

    with pytest.raises(pytest.fail.Exception, match="for slow tests only"):
        shared_data_path("tests/unit/test_x.py::test_y", slow=False)
    monkeypatch.setenv("NVEMBED_DATA", str(tmp_path))
    assert shared_data_path("tests/slow/test_x.py::test_y", slow=True) == str(tmp_path)
    monkeypatch.setenv("NVEMBED_DATA", str(tmp_path / "missing"))
    with pytest.raises(pytest.skip.Exception, match="NVEMBED_DATA"):
        shared_data_path("tests/slow/test_x.py::test_y", slow=True)


def _strip_comments(text: str) -> str:
    return "\n".join(re.sub(r"(^|\s)#.*$", "", line) for line in text.splitlines())


@pytest.mark.parametrize("path", CONFIGS, ids=_rel)
def test_shipped_config_names_external_data_only_through_the_variable(path):
    text = path.read_text()
    body = _strip_comments(text)
    left = DATA_VARIABLE.sub("", body)
    assert not re.search(r"\.\./shared\b|/shared/data\b", left), (
        f"{_rel(path)}: data outside the repository must be named as ${{NVEMBED_DATA:-...}} (README 'Data')"
    )
    if DATA_VARIABLE.search(body):
        assert _rel(path) not in (*OFFLINE_JOBS, *OFFLINE_SWEEPS), f"{_rel(path)} must run from a clone alone"
        comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
        assert "NVEMBED_DATA" in comments, f"{_rel(path)} reads $NVEMBED_DATA: say so (and what it holds) in a comment"


def _data_paths(job) -> list[str]:
    paths = []
    for n in job.stages():
        cfg = job.stage_config(n)
        paths += [d.path for d in cfg.data.datasets] + list(cfg.data.decontaminate)
    if job.evaluation is not None:
        paths += list(job.evaluation.tasks.values())
    if job.dev is not None:
        paths += [p for p in (job.dev.retrieval, job.dev.sts) if p]
    return paths


def _load(rel: str):
    from nvembed.config import JobConfig, load_yaml
    from tune.config import load_base_job, load_sweep

    if rel in OFFLINE_SWEEPS or (rel.startswith("tune/") and not rel.endswith("_job.yaml")):
        return load_base_job(load_sweep(rel))
    return load_yaml(rel, JobConfig)


@pytest.fixture
def _config_env(monkeypatch):
    monkeypatch.chdir(ROOT)  # config paths are relative to the project root
    monkeypatch.setenv("NVEMBED_TINY_MODEL", "tiny:mistral")  # smoke_cpu.yaml takes its model from the env
    monkeypatch.setenv("NVEMBED_DATA", SENTINEL)


@pytest.mark.usefixtures("_config_env")
@pytest.mark.parametrize("path", CONFIGS, ids=_rel)
def test_relative_data_paths_of_shipped_configs_are_in_the_repository(path):
    """Relative paths resolve against the project root; each must be a file or folder of the clone."""
    if "deepspeed" in path.relative_to(ROOT).parts:
        return  # a DeepSpeed section, not a job
    rel = _rel(path)
    for p in _data_paths(_load(rel)):
        if "://" in p or os.path.isabs(p):
            continue  # object store / cluster storage, or $NVEMBED_DATA (the sentinel): named on purpose
        resolved = (ROOT / p).resolve()
        assert resolved.is_relative_to(ROOT), f"{rel}: {p} is outside the repository; use ${{NVEMBED_DATA:-...}}"
        assert resolved.exists(), f"{rel}: {p} does not exist"


@pytest.mark.usefixtures("_config_env")
@pytest.mark.parametrize("rel", [*OFFLINE_JOBS, *OFFLINE_SWEEPS])
def test_offline_configs_need_nothing_but_the_clone(rel):
    job = _load(rel)
    paths = _data_paths(job)
    assert paths, rel
    for p in paths:
        assert p and "://" not in p and not os.path.isabs(p), f"{rel}: {p!r} is not a path inside the clone"
        assert (ROOT / p).resolve().is_relative_to(ROOT) and (ROOT / p).exists(), f"{rel}: {p}"
    models = [job.model.name_or_path]
    if job.evaluation is not None and job.evaluation.baseline:
        models.append(job.evaluation.baseline)
    for name in models:  # no hub download: the packaged MiniLM or a tiny model built in code
        assert name.startswith(("packaged:", "tiny:")), f"{rel}: model {name!r} needs the hub"
