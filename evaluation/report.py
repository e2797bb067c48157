"""One leaderboard table from per-task results: per-task main scores, per-type and benchmark averages.

Averages follow mteb's definitions (``Mean(Task)``: plain mean of the tasks' main scores; per-type means;
``Mean(TaskType)``: mean of the type means). They are printed only over finished tasks, and the table says how
many of the benchmark's tasks that is, so an incomplete run is never mistaken for a full average.
Reference columns: NV-Embed-v2's published per-task scores (model card, spec §4.3) and any other mteb results
folder given with ``--compare``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

NV_EMBED_V2 = {
    "ArguAna": 70.07, "ClimateFEVER": 45.39, "CQADupstackRetrieval": 50.24, "DBPedia": 53.50, "FEVER": 93.75,
    "FiQA2018": 65.73, "HotpotQA": 85.48, "MSMARCO": 45.63, "NFCorpus": 45.17, "NQ": 73.57, "QuoraRetrieval": 89.04,
    "SCIDOCS": 21.90, "SciFact": 80.13, "Touche2020": 31.78, "TRECCOVID": 88.44,
    "AmazonCounterfactualClassification": 94.28, "AmazonPolarityClassification": 97.74,
    "AmazonReviewsClassification": 63.96, "Banking77Classification": 92.42, "EmotionClassification": 93.38,
    "ImdbClassification": 97.14, "MassiveIntentClassification": 86.10, "MassiveScenarioClassification": 92.17,
    "MTOPDomainClassification": 99.25, "MTOPIntentClassification": 94.37, "ToxicConversationsClassification": 92.74,
    "TweetSentimentExtractionClassification": 80.87,
    "ArxivClusteringP2P": 55.80, "ArxivClusteringS2S": 51.26, "BiorxivClusteringP2P": 54.09,
    "BiorxivClusteringS2S": 49.60, "MedrxivClusteringP2P": 46.09, "MedrxivClusteringS2S": 44.86,
    "RedditClustering": 71.10, "RedditClusteringP2P": 74.94, "StackExchangeClustering": 82.10,
    "StackExchangeClusteringP2P": 48.36, "TwentyNewsgroupsClustering": 64.82,
    "AskUbuntuDupQuestions": 67.46, "MindSmallReranking": 31.76, "SciDocsRR": 87.59, "StackOverflowDupQuestions": 55.79,
    "SprintDuplicateQuestions": 97.02, "TwitterSemEval2015": 81.11, "TwitterURLCorpus": 87.87,
    "BIOSSES": 87.42, "SICK-R": 82.15, "STS12": 77.89, "STS13": 88.30, "STS14": 84.30, "STS15": 89.04, "STS16": 86.77,
    "STS17": 90.67, "STS22": 68.12, "STSBenchmark": 88.41, "SummEval": 30.70,
}  # fmt: skip


def load_folder_scores(folder: str | Path) -> dict[str, float]:
    """Main scores (0-100) of every ``<Task>.json`` under an mteb results folder."""
    from mteb.results import TaskResult

    scores = {}
    for path in Path(folder).rglob("*.json"):
        if path.name in ("model_meta.json",) or path.name.startswith("."):
            continue
        try:
            result = TaskResult.from_disk(path)
        except Exception:  # not a task result (e.g. another JSON file)
            continue
        scores[result.task_name] = round(100 * result.get_score(), 2)
    return scores


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 2) if values else None


def build_table(
    scores: dict[str, float], types: dict[str, str], failed: dict[str, str], references: dict[str, dict[str, float]]
) -> list[dict]:
    rows = []
    for task in sorted(types, key=lambda t: (types[t], t)):
        row = {"task": task, "type": types[task], "score": scores.get(task), "status": "ok"}
        if task in failed:
            row["status"] = f"failed: {failed[task]}"
        elif task not in scores:
            row["status"] = "missing"
        for ref, table in references.items():
            row[ref] = table.get(task)
        rows.append(row)
    return rows


def summarise(rows: list[dict], references: dict[str, dict[str, float]]) -> list[dict]:
    """Per-type means and the benchmark means over the tasks that have a score."""
    columns = ["score", *references]
    summary = []
    for task_type in sorted({r["type"] for r in rows}):
        sub = [r for r in rows if r["type"] == task_type]
        line = {
            "task": f"mean {task_type}",
            "type": task_type,
            "status": f"{sum(r['score'] is not None for r in sub)}/{len(sub)}",
        }
        for col in columns:
            line[col] = _mean([r[col] for r in sub if r["score"] is not None and r.get(col) is not None])
        summary.append(line)
    done = [r for r in rows if r["score"] is not None]
    line = {"task": "Mean(Task)", "type": "", "status": f"{len(done)}/{len(rows)} tasks"}
    for col in columns:
        line[col] = _mean([r[col] for r in done if r.get(col) is not None])
    summary.append(line)
    line = {"task": "Mean(TaskType)", "type": "", "status": ""}
    for col in columns:
        line[col] = _mean([s[col] for s in summary[:-1] if s[col] is not None])
    summary.append(line)
    return summary


def write_report(
    out_dir: str | Path,
    model_name: str,
    scores: dict[str, float],
    types: dict[str, str],
    failed: dict[str, str],
    compare: dict[str, str] | None = None,
) -> dict[str, Path]:
    """Write ``report.md``, ``report.csv`` and ``report.png``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    references = {"NV-Embed-v2 (published)": NV_EMBED_V2}
    for label, folder in (compare or {}).items():
        references[label] = load_folder_scores(folder)
    rows = build_table(scores, types, failed, references)
    summary = summarise(rows, references)
    columns = ["task", "type", "score", *references, "status"]
    fmt = lambda v: "" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))  # noqa: E731
    md = [
        f"# MTEB results: {model_name}\n",
        "| " + " | ".join(c if c != "score" else model_name for c in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    md += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows + summary]
    paths = {
        "md": out_dir / "report.md",
        "csv": out_dir / "report.csv",
        "png": out_dir / "report.png",
        "json": out_dir / "report.json",
    }
    paths["md"].write_text("\n".join(md) + "\n")
    with open(paths["csv"], "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows + summary)
    paths["json"].write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))
    _chart(rows, references, model_name, paths["png"])
    return paths


def _chart(rows, references, model_name, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["score"] is not None]
    if not done:
        return
    labels = [r["task"] for r in done]
    series = {model_name: [r["score"] for r in done]}
    for ref in references:
        series[ref] = [r.get(ref) or 0.0 for r in done]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(labels) * len(series)), 4.5))
    for i, (name, values) in enumerate(series.items()):
        ax.bar([x + i * width for x in range(len(labels))], values, width, label=name)
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(labels))])
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("main score")
    ax.set_title(f"MTEB main scores: {model_name}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
