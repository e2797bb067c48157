"""Distributed evaluation through Ray on tiny local tasks of every type: determinism, resume, faults."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.local_tasks import TASKS, make_local_tasks

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600), pytest.mark.usefixtures("ray_local")]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from nvembed import Embedder, PoolingConfig
    from tests.helpers import sentencepiece_style_tokenizer, tiny_decoder

    tok = sentencepiece_style_tokenizer()
    emb = Embedder.from_model(tiny_decoder("mistral", len(tok)), tok, pooling=PoolingConfig("latent", num_latents=8))
    return str(emb.save_pretrained(tmp_path_factory.mktemp("model") / "tiny-nvembed"))


@pytest.fixture(scope="module")
def local_data(tmp_path_factory):
    return make_local_tasks(tmp_path_factory.mktemp("tasks"))


def run_evaluation(model, output, *, task_data, workers, retries=1, **options):
    from evaluation.request import EvalRequest, Resources
    from evaluation.runner import run_evaluation as run

    resources = Resources(workers=workers, retries=retries)
    request = EvalRequest(model=model, output=output, task_data=task_data, resources=resources, **options)
    return run(request)


def test_every_task_type_one_and_two_workers_agree_and_rerun_encodes_nothing(tiny_model, local_data, tmp_path):
    two = run_evaluation(tiny_model, tmp_path / "w2", task_data=local_data, workers=2)
    assert not two.failed, two.failed
    assert set(two.scores) == set(TASKS)
    assert all(n > 0 for n in two.encoded.values())
    one = run_evaluation(tiny_model, tmp_path / "w1", task_data=local_data, workers=1)
    assert one.scores == two.scores
    again = run_evaluation(tiny_model, tmp_path / "w2", task_data=local_data, workers=2)
    assert again.encoded == {} and sorted(again.skipped) == sorted(TASKS) and again.scores == two.scores
    assert (two.results_dir / "SciFact.json").is_file()  # mteb's layout: results/<org__model>/<revision>/<Task>.json


def test_interrupted_run_resumes_without_reencoding_finished_tasks(tiny_model, local_data, tmp_path):
    first = {k: local_data[k] for k in ("STSBenchmark", "SummEval", "SprintDuplicateQuestions")}
    partial = run_evaluation(tiny_model, tmp_path / "out", task_data=first, workers=2)
    assert set(partial.scores) == set(first)  # what a run killed after three tasks leaves on disk
    full = run_evaluation(tiny_model, tmp_path / "out", task_data=local_data, workers=2)
    assert set(full.skipped) == set(first)
    assert set(full.encoded) == set(TASKS) - set(first)  # the finished tasks were not encoded again
    assert all(full.scores[k] == partial.scores[k] for k in first)


def test_a_failing_task_is_reported_and_the_others_finish(tiny_model, local_data, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "test.jsonl").write_text('{"sentence1": "a"}\n')  # no sentence2 / score
    data = {"STSBenchmark": str(broken), "SummEval": local_data["SummEval"]}
    out = run_evaluation(tiny_model, tmp_path / "out", task_data=data, workers=2, retries=1)
    assert set(out.scores) == {"SummEval"}
    message = out.failed["STSBenchmark"]
    assert "sentence2" in message
    # the whole error is on disk, every frame down to the raise, and the report names the file
    path = Path(message[message.rindex("(") + 1 : -1])
    assert path.parent == tmp_path / "out" / "errors" and path.is_file()
    text = path.read_text()
    assert 'evaluation/workers.py", line' in text and 'evaluation/local.py", line' in text and "sentence2" in text
    assert "\x1b[" not in text  # Ray's colour codes stripped
    from evaluation.report import write_report

    report = write_report(tmp_path / "out", "m", out.scores, {"STSBenchmark": "STS", "SummEval": "Summarization"},
                          out.failed, {})  # fmt: skip
    assert str(path) in report["md"].read_text()
