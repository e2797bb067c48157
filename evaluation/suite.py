"""Local tasks that are not in mteb's registry, defined as mteb tasks and registered so mteb treats them as its own.

The generalisation suite of the recipe (docs/recipe.md) scores a model on tasks no training row comes from. Five
of them are public sets mteb does not ship: Cranfield (classic IR), MRPC (paraphrase pairs), MR and SUBJ (the
SentEval sentence classification sets), and WikiQA's test split as reranking; one more, SNLIRetrieval, is the
quickstart's retrieval task (its data ships in the repository). Each is an ordinary mteb task class
(mteb's own evaluator, metric and splits), so ``mteb.evaluate``, ``mteb.get_task``, the result cache and the
Ray evaluation job handle them like any MTEB task; the data comes from a local folder through
:func:`evaluation.local.local_task` (the layouts of README "Data").

MR and SUBJ have no official split: like SentEval they are scored by 10-fold cross-validation over the whole set
(mteb's ``is_cross_validation``; the classifier trains on every row of the other nine folds).

Registration writes into mteb's task registry, which is private API (mteb 2.x ``mteb.get_tasks._TASKS_REGISTRY``);
:func:`register` fails loudly if that changes.
"""

from __future__ import annotations

import sys

from mteb.abstasks.classification import AbsTaskClassification
from mteb.abstasks.pair_classification import AbsTaskPairClassification
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.task_metadata import TaskMetadata


def _meta(name: str, type_: str, main_score: str, description: str, reference: str, splits=("test",), **kw):
    return TaskMetadata(
        name=name,
        description=description,
        reference=reference,
        type=type_,
        category="t2t",
        modalities=["text"],
        # never fetched: local_task points the task at a folder (or fills its dataset) before loading
        dataset={"path": f"nvembed-local/{name}", "revision": "local"},
        eval_splits=list(splits),
        eval_langs=["eng-Latn"],
        main_score=main_score,
        domains=kw.pop("domains", None),
        license="not specified",
        **kw,
    )


class Cranfield(AbsTaskRetrieval):
    """Cranfield-1400: 225 aerodynamics questions, 1,400 abstracts, graded judgements (BEIR layout, split test)."""

    metadata = _meta(
        "Cranfield",
        "Retrieval",
        "ndcg_at_10",
        "Cranfield-1400 classic IR collection: aeronautics abstracts, questions, graded relevance.",
        "https://ir.dcs.gla.ac.uk/resources/test_collections/cran/",
        domains=["Academic"],
    )


class SNLIRetrieval(AbsTaskRetrieval):
    """SNLI test premises retrieving their entailed hypotheses among the hypotheses of every premise (neutral and
    contradicting ones of the same scene included): the quickstart's retrieval task, shipped in
    ``nvembed/resources/eval/snli-retrieval`` (provenance there)."""

    metadata = _meta(
        "SNLIRetrieval",
        "Retrieval",
        "ndcg_at_10",
        "SNLI 1.0 test: premise -> entailed hypotheses, among all hypotheses of 500 premises.",
        "https://nlp.stanford.edu/projects/snli/",
        domains=["Fiction"],
    )


class WikiQAReranking(AbsTaskRetrieval):
    """WikiQA test (Yang et al., 2015): rank each question's candidate Wikipedia sentences; MAP@1000 as mteb's
    other reranking tasks (``{"query", "positive", "negative"}`` rows)."""

    metadata = _meta(
        "WikiQAReranking",
        "Reranking",
        "map_at_1000",
        "WikiQA answer-sentence selection (test split, questions with a correct and an incorrect candidate).",
        "https://aclanthology.org/D15-1237/",
        domains=["Encyclopaedic"],
    )


class MRPC(AbsTaskPairClassification):
    """Microsoft Research Paraphrase Corpus, test split: 1,725 news sentence pairs labelled paraphrase or not."""

    metadata = _meta(
        "MRPC",
        "PairClassification",
        "max_ap",
        "MSR paraphrase corpus (test): is the second sentence a paraphrase of the first?",
        "https://aclanthology.org/I05-5002/",
        domains=["News"],
    )


class _CrossValidatedClassification(AbsTaskClassification):
    # SentEval protocol: k-fold cross-validation over the one labelled set, the classifier trained on all of the
    # other folds (samples_per_label larger than any class)
    is_cross_validation = True
    n_splits = 10
    samples_per_label = 100_000
    n_experiments = 1

    def dataset_transform(self, num_proc: int | None = None, **kwargs) -> None:
        # the files label with words ("pos"/"neg"); mteb's binary metrics (average precision) need 0/1 labels
        for split, data in self.dataset.items():
            names = sorted(set(data["label"]))
            index = {name: i for i, name in enumerate(names)}
            self.dataset[split] = data.map(lambda row, index=index: {"label": index[row["label"]]}, num_proc=num_proc)


class MR(_CrossValidatedClassification):
    """Movie-review sentence polarity (Pang and Lee, 2005): 10,662 snippets, positive or negative."""

    metadata = _meta(
        "MR",
        "Classification",
        "accuracy",
        "Rotten Tomatoes sentence polarity (SentEval MR), 10-fold cross-validation.",
        "https://www.cs.cornell.edu/people/pabo/movie-review-data/",
        splits=("train",),
        domains=["Reviews"],
    )


class SUBJ(_CrossValidatedClassification):
    """Subjectivity (Pang and Lee, 2004): 10,000 movie sentences, subjective (reviews) or objective (plots)."""

    metadata = _meta(
        "SUBJ",
        "Classification",
        "accuracy",
        "Subjective review snippets vs objective plot sentences (SentEval SUBJ), 10-fold cross-validation.",
        "https://www.cs.cornell.edu/people/pabo/movie-review-data/",
        splits=("train",),
        domains=["Reviews"],
    )


LOCAL_TASKS = (Cranfield, SNLIRetrieval, WikiQAReranking, MRPC, MR, SUBJ)


def register() -> None:
    """Make the local tasks known to ``mteb.get_task`` (idempotent; every process that builds tasks calls it)."""
    registry = getattr(sys.modules.get("mteb.get_tasks"), "_TASKS_REGISTRY", None)
    if registry is None:
        import mteb  # noqa: F401  (loads mteb.get_tasks)

        registry = getattr(sys.modules.get("mteb.get_tasks"), "_TASKS_REGISTRY", None)
    if not isinstance(registry, dict):
        raise RuntimeError(
            "mteb's task registry (mteb.get_tasks._TASKS_REGISTRY) was not found: this mteb version is not supported "
            "by evaluation/suite.py"
        )
    for cls in LOCAL_TASKS:
        known = registry.get(cls.metadata.name)
        if known is not None and known is not cls:
            raise RuntimeError(
                f"mteb already has a task named {cls.metadata.name!r} ({known.__module__}): evaluation/suite.py would "
                "feed it local files of another layout; rename the local task"
            )
        registry[cls.metadata.name] = cls
