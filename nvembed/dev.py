"""Held-out dev metrics during training: nDCG@10 on a retrieval dev slice and Spearman on an STS dev set.

Used two ways: ``nvembed train`` logs them every ``dev.every`` steps (``dev.jsonl`` next to ``metrics.jsonl``), and
Ray Tune sweeps (``tune/``) use their weighted mean as the trial objective. They are a cheap proxy for MTEB, so
they must never be computed on an evaluation task's test split (:func:`check_dev_data` refuses that), nor on data
the job trains on.

Why not mteb's evaluators here: they re-encode the whole corpus through the task machinery and write results
folders; a dev check runs every few steps inside the training loop on a capped slice, so it encodes once with the
model being trained and scores with ``pytrec_eval`` (the library mteb itself uses for nDCG) and scipy's Spearman.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nvembed.config import ConfigError, DevConfig
from nvembed.data.converters import load_beir
from nvembed.data.instructions import MTEB_ENG_V1, instruction_for, policy_applies
from nvembed.data.readers import DataError, ErrorPolicy, read_rows, require_text

_METRICS = ("ndcg_at_10", "sts_spearman")


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _mteb_task_for_folder(folder: Path) -> str | None:
    """The MTEB task a local data folder holds, judged by its name (``stsbenchmark`` -> ``STSBenchmark``)."""
    key = _norm(folder.name)
    if not key:
        return None
    for task in MTEB_ENG_V1:
        if _norm(task) == key or _norm(task).startswith(key) and len(key) >= 4:
            return task
    return None


def check_dev_data(dev: DevConfig, training_paths: list[str] = (), evaluation_paths: list[str] = ()) -> None:
    """Refuse dev data that is an evaluation task's test split, or that the job also trains / evaluates on.

    Raises:
        ConfigError: naming the offending ``dev.*`` key and why.
    """
    used = {str(Path(p).resolve()) for p in training_paths} | {str(Path(p).resolve()) for p in evaluation_paths}
    if dev.retrieval:
        folder = Path(dev.retrieval)
        task = _mteb_task_for_folder(folder)
        if task and dev.retrieval_split == "test":
            raise ConfigError(
                f"dev.retrieval: {folder} split 'test' is the test split of MTEB task {task}; "
                "use a held-out train/dev split or a non-MTEB collection (e.g. cranfield)"
            )
        if str(folder.resolve()) in used:
            raise ConfigError(f"dev.retrieval: {folder} is also trained or evaluated on by this job")
    if dev.sts:
        path = Path(dev.sts)
        task = _mteb_task_for_folder(path.parent)
        if task and path.stem == "test":
            raise ConfigError(f"dev.sts: {path} is the test split of MTEB task {task}; use its dev/validation file")
        if str(path.resolve()) in used:
            raise ConfigError(f"dev.sts: {path} is also trained or evaluated on by this job")


@dataclass
class _Retrieval:
    queries: list[str]
    query_ids: list[str]
    docs: list[str]
    doc_ids: list[str]
    qrels: dict[str, dict[str, int]]
    instruction: str | None


@dataclass
class _Sts:
    left: list[str]
    right: list[str]
    scores: np.ndarray
    instruction: str | None


class DevSet:
    """The dev data of one config, loaded once; :meth:`evaluate` scores an embedder on it.

    Args:
        dev: the ``dev`` section (paths already resolved by the caller if relative to something else).
        seed: which queries / corpus documents / pairs the caps keep (fixed across trials, so trials compare).
    """

    def __init__(self, dev: DevConfig, seed: int = 0) -> None:
        if not dev.retrieval and not dev.sts:
            raise ConfigError("dev: give dev.retrieval and/or dev.sts")
        self.cfg = dev
        self.policy = ErrorPolicy(dev.on_error)  # policy.report() says what was skipped
        rng = random.Random(seed)
        self.retrieval = self._load_retrieval(dev, rng, self.policy) if dev.retrieval else None
        self.sts = self._load_sts(dev, rng, self.policy) if dev.sts else None

    @staticmethod
    def _load_retrieval(dev: DevConfig, rng: random.Random, policy: ErrorPolicy) -> _Retrieval:
        folder = Path(dev.retrieval)
        data = load_beir(folder, dev.retrieval_split, policy)
        qids = sorted(q for q, docs in data.qrels.items() if any(s > 0 for s in docs.values()))
        if dev.max_queries and len(qids) > dev.max_queries:
            qids = sorted(rng.sample(qids, dev.max_queries))
        relevant = sorted({d for q in qids for d in data.qrels[q]})
        others = sorted(set(data.corpus) - set(relevant))
        if dev.max_corpus and len(relevant) + len(others) > dev.max_corpus:
            others = sorted(rng.sample(others, max(0, dev.max_corpus - len(relevant))))
        doc_ids = relevant + others  # every judged document stays: the slice keeps its answers
        task = dev.retrieval_task or folder.name
        return _Retrieval(
            queries=[data.queries[q] for q in qids],
            query_ids=qids,
            docs=[data.corpus[d] for d in doc_ids],
            doc_ids=doc_ids,
            qrels={q: {d: int(s) for d, s in data.qrels[q].items()} for q in qids},
            instruction=instruction_for(task, "query"),
        )

    @staticmethod
    def _load_sts(dev: DevConfig, rng: random.Random, policy: ErrorPolicy) -> _Sts:
        path = Path(dev.sts)
        rows = []
        for line, row in read_rows(path, policy):
            try:
                a, b = require_text(row, "sentence1", path, line), require_text(row, "sentence2", path, line)
                try:
                    rows.append((a, b, float(row["score"])))
                except (KeyError, TypeError, ValueError) as err:
                    score = row.get("score")
                    raise DataError(path, line, f"missing field: 'score' must be a number, got {score!r}") from err
            except DataError as err:
                policy.handle(err)
        if dev.max_sts_pairs and len(rows) > dev.max_sts_pairs:
            rows = rng.sample(rows, dev.max_sts_pairs)
        return _Sts(
            [r[0] for r in rows],
            [r[1] for r in rows],
            np.array([r[2] for r in rows], dtype=np.float64),
            instruction_for(dev.sts_task, "query"),
        )

    def evaluate(self, embedder) -> dict[str, float]:
        """``{"ndcg_at_10", "sts_spearman", "objective"}`` (0-100 scale; missing parts are left out).

        Deterministic for a given model: every rank of a ZeRO-3 run calls this with the same texts in the same
        order, so the collective all-gathers inside each forward line up.
        """
        enc = dict(batch_size=self.cfg.batch_size, max_length=self.cfg.max_length, show_progress=False)
        policy = embedder.config.model.instruction_policy  # the model is scored the way it is trained
        out: dict[str, float] = {}
        if self.retrieval is not None:
            r = self.retrieval
            instruction = r.instruction if policy_applies(policy, "Retrieval") else None
            q = embedder.encode(r.queries, instruction=instruction, **enc)  # [n_q, d]
            d = embedder.encode(r.docs, instruction=None, **enc)  # [n_d, d]
            out["ndcg_at_10"] = 100.0 * ndcg_at_10(q @ d.T, r.query_ids, r.doc_ids, r.qrels)
        if self.sts is not None:
            s = self.sts
            instruction = s.instruction if policy_applies(policy, "STS") else None
            a = embedder.encode(s.left, instruction=instruction, **enc)  # [n, d]
            b = embedder.encode(s.right, instruction=instruction, **enc)  # [n, d]
            cos = np.sum(_unit(a) * _unit(b), axis=1)  # [n]
            from scipy.stats import spearmanr

            out["sts_spearman"] = 100.0 * float(spearmanr(cos, s.scores).statistic)
        out["objective"] = self.objective(out)
        return out

    def objective(self, metrics: dict[str, float]) -> float:
        """Weighted mean of the available metrics (weights ``dev.retrieval_weight`` / ``dev.sts_weight``)."""
        weights = {"ndcg_at_10": self.cfg.retrieval_weight, "sts_spearman": self.cfg.sts_weight}
        total = sum(weights[k] for k in _METRICS if k in metrics)
        if total <= 0:
            raise ConfigError("dev: the weights of the available dev metrics sum to 0")
        return sum(weights[k] * metrics[k] for k in _METRICS if k in metrics) / total


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def ndcg_at_10(scores: np.ndarray, query_ids: list[str], doc_ids: list[str], qrels: dict[str, dict[str, int]]) -> float:
    """Mean nDCG@10 with ``pytrec_eval`` (graded relevance, as mteb computes it) over ``scores [n_q, n_d]``."""
    import pytrec_eval

    k = min(10, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # [n_q, k] (unordered; pytrec_eval sorts)
    run = {qid: {doc_ids[j]: float(scores[i, j]) for j in top[i]} for i, qid in enumerate(query_ids)}
    evaluator = pytrec_eval.RelevanceEvaluator({q: qrels[q] for q in query_ids}, {"ndcg_cut.10"})
    per_query = evaluator.evaluate(run)
    return float(np.mean([per_query[q]["ndcg_cut_10"] for q in query_ids]))
