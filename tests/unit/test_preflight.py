"""Driver-side checks (nvembed/training/preflight.py): what a worker would only find at its first step is found
before any worker starts, with the dataset, the instruction's token count and the limit in the message."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from nvembed.config import ConfigError, DataConfig, DatasetConfig, DevConfig, ModelConfig, RunConfig, TrainConfig
from nvembed.data.collate import ContrastiveCollator
from nvembed.data.instructions import UnknownTaskError, instruction_for
from nvembed.data.readers import DataError
from nvembed.data.schema import TrainingExample
from nvembed.tokenization import InputBuilder
from nvembed.training.preflight import check_stage_inputs, driver_input_builder, instruction_tokens
from tests.helpers import save_tiny_backbone, sentencepiece_style_tokenizer

ROOT = Path(__file__).resolve().parents[2]
DEV = ROOT / "nvembed" / "resources" / "dev"
SNLI = instruction_for("snli", "query")
STS = instruction_for("stsbenchmark", "query")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_backbone(tmp_path_factory.mktemp("tiny-mistral"))


@pytest.fixture(scope="module")
def inputs():
    return InputBuilder(sentencepiece_style_tokenizer(), is_decoder=True)


def _cfg(model="unused", datasets=("snli",), dev=None, **run) -> TrainConfig:
    data = DataConfig(datasets=[DatasetConfig(name=n, format="triplets", path=f"{n}.jsonl") for n in datasets])
    return TrainConfig(model=ModelConfig(name_or_path=model), data=data, run=RunConfig(**run), dev=dev)


def _row(name="snli", instruction=SNLI, doc_instruction=None, query="a cat sat on the house"):
    return TrainingExample(query, "the cat", ["a dog"], instruction, doc_instruction, name)


def test_too_long_instruction_names_dataset_tokens_and_limit(tiny_dir):
    inputs = driver_input_builder(_cfg(tiny_dir))  # the driver's own tokenizer + config.json: a decoder
    assert inputs.is_decoder and inputs.suffix_ids == [inputs.tokenizer.eos_token_id]
    n = instruction_tokens(inputs, SNLI)
    specials = len(inputs.prefix_ids) + len(inputs.suffix_ids)
    with pytest.raises(ConfigError) as err:
        check_stage_inputs(_cfg(tiny_dir, query_max_length=n), {"snli": [_row()]})
    message = str(err.value)
    assert "dataset 'snli' (queries)" in message
    assert f"takes {n} tokens (+{specials} special)" in message and f"stage1.run.query_max_length={n}" in message
    assert f"at least {n + specials + 1}" in message


def test_the_driver_limit_is_exactly_the_workers(inputs):
    """At the limit the check passes and a worker's collator tokenises; one token less, both refuse."""
    row = _row()
    fits = instruction_tokens(inputs, SNLI, row.query) + len(inputs.prefix_ids) + len(inputs.suffix_ids) + 1
    check_stage_inputs(_cfg(query_max_length=fits), {"snli": [row]}, inputs=inputs)
    ContrastiveCollator(inputs, num_negatives=1, query_max_length=fits, doc_max_length=32)([row])
    with pytest.raises(ConfigError, match=f"query_max_length={fits - 1}"):
        check_stage_inputs(_cfg(query_max_length=fits - 1), {"snli": [row]}, inputs=inputs)
    with pytest.raises(ValueError, match="its instruction fills max_length"):
        ContrastiveCollator(inputs, num_negatives=1, query_max_length=fits - 1, doc_max_length=32)([row])


def test_document_side_instruction_is_checked_against_doc_max_length(inputs):
    rows = {"stsbenchmark": [_row("stsbenchmark", STS, doc_instruction=STS)]}
    n = instruction_tokens(inputs, STS)
    cfg = _cfg(datasets=("stsbenchmark",), query_max_length=128, doc_max_length=n)
    with pytest.raises(ConfigError, match=rf"dataset 'stsbenchmark' \(documents\).*doc_max_length={n}"):
        check_stage_inputs(cfg, rows, inputs=inputs)
    check_stage_inputs(
        dataclasses.replace(cfg, run=RunConfig(query_max_length=128, doc_max_length=128)), rows, inputs=inputs
    )


def test_each_distinct_instruction_is_tokenised_once(inputs):
    calls = []

    class Counting(InputBuilder):
        def tokenize(self, texts, prefixes, max_length):
            calls.append(len(texts))
            return super().tokenize(texts, prefixes, max_length)

    counting = Counting(inputs.tokenizer, is_decoder=True)
    rows = {"snli": [_row(query=f"a cat {i}") for i in range(500)], "wordnet": [_row("wordnet", SNLI)] * 500}
    check_stage_inputs(_cfg(datasets=("snli", "wordnet"), query_max_length=64), rows, inputs=counting)
    assert len(calls) <= 2, calls  # one per distinct (instruction, side), not one per row


def test_datasets_sharing_a_too_long_instruction_are_all_named(inputs):
    rows = {"snli": [_row()], "wordnet": [_row("wordnet")]}
    with pytest.raises(ConfigError, match=r"datasets 'snli', 'wordnet' \(queries\)"):
        check_stage_inputs(_cfg(datasets=("snli", "wordnet"), query_max_length=4), rows, inputs=inputs)


def test_limit_below_the_special_tokens_is_refused(inputs):
    with pytest.raises(ConfigError, match=r"stage1.run.doc_max_length=2 leaves no room for text next to the 2"):
        check_stage_inputs(_cfg(doc_max_length=2), {"snli": [_row()]}, inputs=inputs)


def test_dataset_without_an_instruction_is_named(inputs):
    with pytest.raises(UnknownTaskError, match=r"stage1.data.datasets\[1\] \(name 'snlii'\).*did you mean snli"):
        check_stage_inputs(_cfg(datasets=("snli", "snlii")), {"snli": [_row()]}, inputs=inputs)


def test_dev_section_is_checked_on_the_driver(inputs, tmp_path):
    sts = str(DEV / "stsbenchmark" / "dev.jsonl")
    good = DevConfig(retrieval=str(DEV / "snli"), sts=sts, max_length=64)
    check_stage_inputs(_cfg(dev=good), {"snli": [_row()]}, inputs=inputs)
    with pytest.raises(ConfigError, match=r"dev.retrieval \(.*snli\): the instruction takes \d+ tokens.*max_length=8"):
        check_stage_inputs(_cfg(dev=dataclasses.replace(good, max_length=8)), {"snli": [_row()]}, inputs=inputs)
    with pytest.raises(ConfigError, match="test split of MTEB task STSBenchmark"):
        test_split = DevConfig(sts=str(ROOT / "nvembed/resources/eval/stsbenchmark/test.jsonl"))
        check_stage_inputs(_cfg(dev=test_split), {"snli": [_row()]}, inputs=inputs)
    with pytest.raises(DataError, match="dev.jsonl: file not found"):
        check_stage_inputs(_cfg(dev=DevConfig(sts=str(tmp_path / "dev.jsonl"))), {"snli": [_row()]}, inputs=inputs)
    with pytest.raises(UnknownTaskError, match="no instruction registered for task 'nosuchtask'"):
        unknown = dataclasses.replace(good, retrieval_task="nosuchtask")
        check_stage_inputs(_cfg(dev=unknown), {"snli": [_row()]}, inputs=inputs)


def test_encoder_counts_its_own_specials(minilm):
    inputs = driver_input_builder(_cfg(minilm))
    assert not inputs.is_decoder and len(inputs.prefix_ids) == 1 and len(inputs.suffix_ids) == 1  # [CLS] [SEP]
    n = instruction_tokens(inputs, SNLI)
    with pytest.raises(ConfigError, match=rf"takes {n} tokens \(\+2 special\)"):
        check_stage_inputs(_cfg(minilm, query_max_length=n + 2), {"snli": [_row()]}, inputs=inputs)
    check_stage_inputs(_cfg(minilm, query_max_length=n + 3), {"snli": [_row()]}, inputs=inputs)


def test_local_job_stops_before_training(tiny_dir, tmp_path, monkeypatch):
    """``nvembed train --local`` (and Tune's worker trials, which call ``run_stage`` too) run the same checks
    between building rows and building the model."""
    import nvembed.training.job as job_module
    import nvembed.training.stage as stage_module
    from nvembed.config import JobConfig, load_yaml

    def no_model(*args, **kwargs):
        raise AssertionError("no model may be built")

    monkeypatch.setattr(stage_module, "build_stage_embedder", no_model)
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("NVEMBED_TINY_MODEL", tiny_dir)
    job = load_yaml(
        "jobs/configs/smoke_cpu.yaml", JobConfig, [f"output_dir={tmp_path}", "stage1.run.query_max_length=6"]
    )
    with pytest.raises(ConfigError, match=r"stage1: dataset 'snli' \(queries\).*query_max_length=6"):
        job_module.run_job_locally(job, stages=[1], log=lambda _: None)


def test_every_dev_text_is_checked_not_only_the_first(monkeypatch):
    """With the tiny tokenizer the STS instruction leaves room for the first dev pair at dev.max_length=32, not for a
    later one whose first character joins the boundary token: a Tune trial failed on its workers that way."""
    from nvembed.config import JobConfig, load_yaml

    monkeypatch.chdir(ROOT)
    dev = "{every: 3, sts: nvembed/resources/dev/stsbenchmark/dev.jsonl, max_sts_pairs: 32, max_length: 32}"
    job = load_yaml(
        "jobs/configs/nvembed_v2_mistral7b.yaml",
        JobConfig,
        [
            "model.name_or_path=tiny:mistral",
            "output_dir=/nonexistent/unused",
            f"dev={dev}",
            "stage1.data.datasets=[{name: snli, format: triplets, path: nvembed/resources/train/snli_triplets.jsonl}]",
        ],
    )
    cfg = job.stage_config(1)
    rows = {"snli": [_row(query="a cat")]}
    with pytest.raises(ConfigError, match=r"dev.sts .*dev.max_length=32, leaving no room for the text '‘Nelson"):
        check_stage_inputs(cfg, rows)
