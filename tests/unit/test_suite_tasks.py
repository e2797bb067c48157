"""The generalisation suite's local tasks (evaluation/suite.py) run through mteb's own evaluators, and the
instruction policy decides which task types are instructed, in training batches and in evaluation alike."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nvembed.config import ConfigError, ModelConfig
from nvembed.data.instructions import policy_applies


def _jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


TOPICS = {
    "space": ["rocket launch orbit", "astronaut moon landing", "satellite orbit station", "mars rover mission"],
    "food": ["pasta tomato sauce", "baking bread oven", "cheese pizza dinner", "fresh fruit salad"],
    "music": ["guitar rock concert", "piano classical sonata", "drum band rhythm", "violin orchestra symphony"],
}


def _folders(root: Path) -> dict[str, Path]:
    """Folders in the layouts of $NVEMBED_DATA (README "Data") whose answers an off-the-shelf embedder gets right."""
    texts = [(t, s) for t, ss in TOPICS.items() for s in ss]
    cran = root / "cranfield"
    _jsonl(cran / "corpus.jsonl", [{"_id": f"d{i}", "title": "", "text": s} for i, (_, s) in enumerate(texts)])
    _jsonl(cran / "queries.jsonl", [{"_id": f"q{i}", "text": s} for i, (_, s) in enumerate(texts)])
    (cran / "qrels").mkdir()
    (cran / "qrels/test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t2\n" for i in range(len(texts)))
    )
    _jsonl(
        root / "mrpc/test.jsonl",
        [{"sentence1": s, "sentence2": s + " today", "label": 1} for _, s in texts]
        + [
            {"sentence1": a, "sentence2": b, "label": 0}
            for (_, a), (_, b) in zip(texts, texts[5:] + texts[:5], strict=True)
        ],
    )
    # binary, as MR and SUBJ; word labels, as their files; every fold of 10 holds both classes
    rows = [{"text": f"{s} {i}", "label": t} for i in range(5) for t in ("space", "food") for s in TOPICS[t]]
    _jsonl(root / "mr/all.jsonl", rows)
    _jsonl(root / "subj/all.jsonl", rows)
    _jsonl(
        root / "wikiqa/test.jsonl",
        [
            {
                "query": ss[0],
                "positive": [f"all about {ss[0]}"],
                "negative": [o[0] for k, o in TOPICS.items() if k != t],
            }
            for t, ss in TOPICS.items()
        ],
    )
    return {
        "Cranfield": cran,
        "MRPC": root / "mrpc",
        "MR": root / "mr",
        "SUBJ": root / "subj",
        "WikiQAReranking": root / "wikiqa",
    }


def test_local_tasks_run_through_mteb_evaluators(minilm, tmp_path):
    import mteb

    from evaluation.encoder import NVEmbedEncoder
    from evaluation.local import local_task
    from evaluation.suite import register
    from nvembed import Embedder

    register()
    register()  # idempotent
    folders = _folders(tmp_path / "data")
    tasks = [local_task(mteb.get_task(name), folder, tmp_path / "work") for name, folder in folders.items()]
    encoder = NVEmbedEncoder(Embedder.from_pretrained(minilm, pooling="mean"), max_length=64, source=minilm)
    res = mteb.evaluate(encoder, tasks, cache=None, overwrite_strategy="always", show_progress_bar=False)
    assert not res.exceptions, res.exceptions
    scores = {r.task_name: float(r.get_score()) for r in res.task_results}
    assert set(scores) == set(folders)
    assert scores["Cranfield"] == pytest.approx(1.0)  # every query is its own document
    assert scores["MRPC"] == pytest.approx(1.0)  # paraphrases are near copies, non-paraphrases other topics
    assert scores["WikiQAReranking"] == pytest.approx(1.0)
    assert scores["MR"] > 0.9 and scores["SUBJ"] > 0.9  # topic words decide the label
    # MR was scored by 10-fold cross-validation over all.jsonl: mteb encoded all 40 rows once
    assert ("MR", None, 40) in encoder.calls
    # classification and pair classification texts got their instruction (policy "all"), retrieval documents none
    sides = {(task, side) for task, side, _ in encoder.calls}
    assert ("Cranfield", "document") in sides


def test_local_task_reports_a_missing_file(tmp_path):
    import mteb

    from evaluation.local import LocalDataError, local_task
    from evaluation.suite import register

    register()
    (tmp_path / "mr").mkdir()
    with pytest.raises(LocalDataError, match="missing train.jsonl"):
        local_task(mteb.get_task("MR"), tmp_path / "mr", tmp_path / "work")


def test_policy_decides_instructions_per_task_type():
    from mteb.types import PromptType

    from evaluation.encoder import instruction_fingerprint, task_instruction

    assert policy_applies("all", "STS") and policy_applies("asymmetric", "Retrieval")
    assert not policy_applies("asymmetric", "Classification") and not policy_applies("none", "Retrieval")
    query = task_instruction("SciFact", "Retrieval", PromptType.query, policy="asymmetric")
    assert query.startswith("Given a scientific claim")
    assert task_instruction("SciFact", "Retrieval", PromptType.document, policy="asymmetric") is None
    assert task_instruction("STS12", "STS", None, policy="all") == "Retrieve semantically similar text."
    assert task_instruction("STS12", "STS", None, policy="asymmetric") is None
    assert task_instruction("MR", "Classification", None, policy="none") is None
    # an override chooses the text, the policy whether the type is instructed (as the collator does in training)
    assert task_instruction("MR", "Classification", None, {"MR": "Say it"}, policy="all") == "Say it"
    assert task_instruction("MR", "Classification", None, {"MR": "Say it"}, policy="none") is None
    # the evaluation cache key changes with the policy; "all" keeps the keys results were stored under before
    assert instruction_fingerprint(policy="asymmetric") != instruction_fingerprint(policy="all")
    assert instruction_fingerprint(policy="all") == instruction_fingerprint()
    with pytest.raises(ConfigError, match="instruction_policy"):
        ModelConfig(instruction_policy="queries")


def test_collator_drops_instructions_of_symmetric_rows_under_asymmetric(minilm):
    from nvembed import Embedder
    from nvembed.data.collate import ContrastiveCollator
    from nvembed.data.schema import TrainingExample

    emb = Embedder.from_pretrained(minilm, pooling="mean")
    retrieval = TrainingExample("a claim", "a document", ["other"], instruction="Given a claim, retrieve documents")
    sts = TrainingExample(
        "a sentence", "a similar one", ["unlike"], instruction="Retrieve semantically similar text.",
        doc_instruction="Retrieve semantically similar text.", task_type="STS",
    )  # fmt: skip
    rows = [retrieval, sts]

    def batch(policy: str):
        return ContrastiveCollator(emb.inputs, num_negatives=1, query_max_length=32, doc_max_length=32,
                                   instruction_policy=policy)(rows)  # fmt: skip

    plain = ContrastiveCollator(emb.inputs, num_negatives=1, query_max_length=32, doc_max_length=32)
    uninstructed = [TrainingExample(r.query, r.positive, r.negatives, task_type=r.task_type) for r in rows]
    ref_plain, ref_all, asym = plain(uninstructed), batch("all"), batch("asymmetric")
    qmask, dmask = asym.queries["attention_mask"], asym.docs["attention_mask"]
    # retrieval query keeps its instruction (as under "all"); the STS row's query and documents lose theirs
    assert qmask[0].sum() == ref_all.queries["attention_mask"][0].sum() > ref_plain.queries["attention_mask"][0].sum()
    assert qmask[1].sum() == ref_plain.queries["attention_mask"][1].sum()
    for i in (1, 3):  # docs: [pos0, pos1, neg0, neg1]
        assert dmask[i].sum() == ref_plain.docs["attention_mask"][i].sum() < ref_all.docs["attention_mask"][i].sum()
    with pytest.raises(ValueError, match="instruction policy"):
        ContrastiveCollator(emb.inputs, instruction_policy="queries")


def test_saved_policy_reaches_evaluation(minilm, tmp_path):
    """A model trained under ``asymmetric`` is evaluated under it: the encoder, the driver's cache keys (computed
    without loading the model) and the reloaded model agree, and the keys differ from the same weights under ``all``."""
    import mteb
    from mteb.types import PromptType

    from evaluation.encoder import NVEmbedEncoder
    from evaluation.runner import identity
    from evaluation.sharded import side_identity
    from nvembed import Embedder

    emb = Embedder.from_pretrained(minilm, pooling="mean")
    emb.save_pretrained(tmp_path / "all")
    emb.config.model.instruction_policy = "asymmetric"
    emb.save_pretrained(tmp_path / "asym")
    reloaded = Embedder.from_pretrained(tmp_path / "asym")
    assert reloaded.config.model.instruction_policy == "asymmetric"
    sts, scifact = mteb.get_task("STS12").metadata, mteb.get_task("SciFact").metadata
    encoder = NVEmbedEncoder(reloaded, source=str(tmp_path / "asym"))
    assert encoder.instruction(sts.name, sts.type, None) is None
    assert encoder.instruction(scifact.name, scifact.type, PromptType.query).startswith("Given a scientific claim")
    assert json.loads(side_identity("nvembed", False, sts, None, {}, "asymmetric"))["instruction"] is None
    _, rev_all = identity("m", str(tmp_path / "all"), "nvembed")
    _, rev_asym = identity("m", str(tmp_path / "asym"), "nvembed")
    assert rev_all.split("-")[1] != rev_asym.split("-")[1]  # the instruction part of the revision
