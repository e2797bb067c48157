"""The sweep's report: trials sorted by objective, the best configuration as a ready-to-run job YAML, and plots.

``trials.md`` / ``trials.csv``: one row per trial (its point of the space, last and best dev metrics, steps
reached, status: completed, stopped early by ASHA, or error). ``best.yaml``: the full resolved job of the best
trial, with its own output folder, runnable as ``nvembed train best.yaml``. ``objective.png``: the objective over
the first two keys of the space (rank x latents by default), ``curves.png``: the objective per trial over steps.

The best trial is the one with the highest *last* objective among trials that ran to the end; ASHA stops trials
on a lower rung, so a stopped trial's early score is not compared with finished ones (only if none finished).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import yaml

from nvembed.config import to_dict
from tune.config import SweepConfig, trial_job
from tune.sweep import max_steps

METRICS = ("objective", "ndcg_at_10", "sts_spearman")


def collect(grid, sweep: SweepConfig) -> list[dict[str, Any]]:
    """One row per trial of a ``ResultGrid``, best first."""
    total = max_steps(sweep)
    rows = []
    for result in grid:
        params = {k: result.config[k] for k in sweep.space if k in result.config}
        df = result.metrics_dataframe
        curve: list[tuple[int, float]] = []
        if df is not None and sweep.metric in df.columns and "global_step" in df.columns:
            ok = df[["global_step", sweep.metric]].dropna()
            curve = [(int(s), float(v)) for s, v in zip(ok["global_step"], ok[sweep.metric], strict=True)]
        last = result.metrics or {}
        step = int(last.get("global_step", 0) or 0)
        if result.error is not None:
            status = f"error: {type(result.error).__name__}"
        elif step >= total:
            status = "completed"
        else:
            status = "stopped early" if curve else "not started"
        row = {
            "trial_id": last.get("trial_id") or _trial_id(result.path),
            **params,
            "status": status,
            "steps": step,
            **{m: _round(last.get(m)) for m in METRICS},
            f"best_{sweep.metric}": _round(max((v for _, v in curve), default=None)),
            "curve": curve,
        }
        rows.append(row)
    rows.sort(key=lambda r: (r["status"] != "completed", -(r[sweep.metric] if r[sweep.metric] is not None else -1e9)))
    return rows


def _trial_id(path: str | None) -> str:
    # Tune trial folders are named <trainable>_<trial_id>_<index>_<params>_<date>
    parts = Path(path).name.split("_") if path else []
    return parts[2] if len(parts) > 2 else "?"


def _round(value: Any) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return round(float(value), 2)


def write_report(grid, sweep: SweepConfig, out: Path) -> tuple[list[dict[str, Any]], dict[str, Path], Path | None]:
    rows = collect(grid, sweep)
    files = {"md": out / "trials.md", "csv": out / "trials.csv", "json": out / "trials.json"}
    keys = list(sweep.space)
    columns = ["trial_id", *keys, "status", "steps", *METRICS, f"best_{sweep.metric}"]
    with files["csv"].open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    files["json"].write_text(json.dumps(rows, indent=1))
    lines = [
        f"# Sweep `{sweep.name}`: {len(rows)} trials, sorted by {sweep.metric} (dev, higher is better)",
        "",
        "| rank | " + " | ".join(columns) + " |",
        "| --- | " + " | ".join("---" for _ in columns) + " |",
    ]
    for i, row in enumerate(rows, 1):
        lines.append(f"| {i} | " + " | ".join("" if row.get(c) is None else str(row[c]) for c in columns) + " |")
    best = next((r for r in rows if r["status"] == "completed"), rows[0] if rows else None)
    best_yaml = None
    if best is not None and best[sweep.metric] is not None:
        best_yaml = out / "best.yaml"
        params = {k: best[k] for k in keys}
        job = trial_job(sweep, params, str(out / "best"))
        header = (
            f"# Best trial {best['trial_id']} of sweep '{sweep.name}': dev {sweep.metric} {best[sweep.metric]} "
            f"({best['status']}).\n# Point: {json.dumps(params)}\n# Train it: nvembed train {best_yaml}\n"
        )
        best_yaml.write_text(header + yaml.safe_dump(to_dict(job), sort_keys=False))
        lines += ["", f"Best: trial {best['trial_id']} {json.dumps(params)} -> `{best_yaml}`"]
    files["md"].write_text("\n".join(lines) + "\n")
    files.update(plot(rows, sweep, out))
    return rows, files, best_yaml


def plot(rows: list[dict[str, Any]], sweep: SweepConfig, out: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    files = {}
    keys = list(sweep.space)
    metric = sweep.metric
    scored = [r for r in rows if r[metric] is not None]
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    if len(keys) >= 2 and scored:
        xs = sorted({r[keys[0]] for r in scored})
        ys = sorted({r[keys[1]] for r in scored})
        grid = np.full((len(ys), len(xs)), np.nan)
        for r in scored:  # the best trial per cell (repeats / other keys collapse onto the same cell)
            i, j = ys.index(r[keys[1]]), xs.index(r[keys[0]])
            grid[i, j] = np.nanmax([grid[i, j], r[metric]])
        image = ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(xs)), [_fmt(x) for x in xs])
        ax.set_yticks(range(len(ys)), [_fmt(y) for y in ys])
        ax.set_xlabel(keys[0])
        ax.set_ylabel(keys[1])
        for i in range(len(ys)):
            for j in range(len(xs)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", color="white")
        fig.colorbar(image, ax=ax, label=f"dev {metric}")
    else:
        ax.scatter([r[keys[0]] for r in scored], [r[metric] for r in scored])
        ax.set_xlabel(keys[0])
        ax.set_ylabel(f"dev {metric}")
    ax.set_title(f"{sweep.name}: last dev {metric} per trial")
    fig.tight_layout()
    files["objective_png"] = out / "objective.png"
    fig.savefig(files["objective_png"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in rows:
        if r["curve"]:
            steps, values = zip(*r["curve"], strict=True)
            label = " ".join(f"{k.split('.')[-1]}={_fmt(r[k])}" for k in keys)
            ax.plot(steps, values, marker="o", label=f"{label} ({r['status']})")
    ax.set_xlabel("global step")
    ax.set_ylabel(f"dev {metric}")
    ax.set_title("learning curves")
    ax.legend(fontsize=7)
    fig.tight_layout()
    files["curves_png"] = out / "curves.png"
    fig.savefig(files["curves_png"], dpi=110)
    plt.close(fig)
    return files


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
