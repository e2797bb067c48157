"""``nvembed`` (outside ``nvembed/launch``) must import and work without Ray (DESIGN.md §5 rule 7)."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_no_ray_import_outside_launch():
    offenders = []
    for path in (ROOT / "nvembed").rglob("*.py"):
        if "launch" in path.relative_to(ROOT / "nvembed").parts:
            continue
        if re.search(r"^\s*(import ray|from ray\b)", path.read_text(), flags=re.M):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_library_imports_with_ray_unimportable():
    modules = [
        p.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
        for p in (ROOT / "nvembed").rglob("*.py")
        if "launch" not in p.parts and p.name != "__main__.py"
    ]
    code = (
        "import sys, importlib\n"
        "sys.modules['ray'] = None\n"  # any `import ray` now raises ImportError
        f"for m in {sorted(modules)!r}:\n"
        "    importlib.import_module(m)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
