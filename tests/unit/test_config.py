"""The config tree: unknown keys, overrides, validation."""

from __future__ import annotations

import pytest

from nvembed.config import ConfigError, EmbedderConfig, apply_overrides, from_dict, load_yaml


def test_unknown_key_names_its_path():
    with pytest.raises(ConfigError, match="'pooling.num_latent'"):
        from_dict(EmbedderConfig, {"pooling": {"num_latent": 8}})


def test_dotted_overrides_apply_and_validate():
    cfg = apply_overrides(EmbedderConfig(), ["lora.rank=32", "pooling.num_latents=128", "model.dtype=bfloat16"])
    assert (cfg.lora.rank, cfg.pooling.num_latents, cfg.model.dtype) == (32, 128, "bfloat16")
    with pytest.raises(ConfigError, match="lora.rnk"):
        apply_overrides(EmbedderConfig(), ["lora.rnk=3"])
    with pytest.raises(ConfigError, match="pooling.kind"):
        apply_overrides(EmbedderConfig(), {"pooling.kind": "max"})
    with pytest.raises(ConfigError, match="expected int"):
        apply_overrides(EmbedderConfig(), {"lora.rank": "sixteen"})


def test_yaml_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  name_or_path: x\n  colour: red\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'model.colour'"):
        load_yaml(str(path), EmbedderConfig)


def test_overrides_address_list_items_by_position_or_name():
    from nvembed.config import JobConfig

    job = from_dict(
        JobConfig,
        {
            "stage2": {
                "data": {
                    "datasets": [
                        {"name": "snli", "format": "triplets", "path": "a.jsonl"},
                        {"name": "stsbenchmark", "format": "sts", "path": "b.jsonl"},
                    ]
                },
                "run": {"init_from": "x"},
            }
        },
    )
    new = apply_overrides(job, ["stage2.data.datasets[stsbenchmark].weight=3", "stage2.data.datasets[0].max_rows=5"])
    assert [(d.weight, d.max_rows) for d in new.stage2.data.datasets] == [(1.0, 5), (3.0, None)]
    with pytest.raises(ConfigError, match=r"no item 'wordnet' \(0..1 or one of \['snli', 'stsbenchmark'\]\)"):
        apply_overrides(job, ["stage2.data.datasets[wordnet].weight=3"])
    with pytest.raises(ConfigError, match=r"unknown key 'stage2.data.datasets\[1\].wieght'"):
        apply_overrides(job, ["stage2.data.datasets[1].wieght=3"])
    with pytest.raises(ConfigError, match="'lora\\[0\\]' .*not a list"):
        apply_overrides(job, ["lora[0].rank=3"])


def test_override_words_that_yaml_1_1_reads_as_booleans_stay_words():
    """``--set stage1.run.autocast=off`` used to fail with "expected str, got False" (docs/bugs.md 2026-12-01)."""
    from nvembed.config import JobConfig, parse_override

    assert parse_override("stage1.run.autocast=off") == ("stage1.run.autocast", "off")
    assert parse_override("x=[on, no, true]") == ("x", ["on", "no", True])
    job = from_dict(JobConfig, {"stage1": {}})
    assert apply_overrides(job, ["stage1.run.autocast=off"]).stage1.run.autocast == "off"
    # bool fields still take the YAML 1.1 words, and true/false
    for word, value in (("yes", True), ("on", True), ("off", False), ("No", False), ("true", True), ("false", False)):
        assert apply_overrides(job, [f"scaling.use_gpu={word}"]).scaling.use_gpu is value
    assert apply_overrides(job, ["deepspeed.bf16=on"]).deepspeed.bf16 is True  # bool | None
    with pytest.raises(ConfigError, match="expected bool"):
        apply_overrides(job, ["scaling.use_gpu=maybe"])
    with pytest.raises(ConfigError, match=r"run.autocast: expected str, got False \(write the word as a string"):
        apply_overrides(job, {"stage1.run.autocast": False})  # a Python bool is still refused, with a hint
    with pytest.raises(ConfigError, match="invalid YAML value"):
        parse_override("lora.rank=[1, 2")


def test_config_files_keep_such_words_too(tmp_path):
    from nvembed.config import JobConfig

    path = tmp_path / "job.yaml"
    path.write_text("scaling: {use_gpu: no}\nstage1:\n  run: {autocast: off, max_steps: 3}\n")
    job = load_yaml(str(path), JobConfig, ["stage1.run.max_steps=4"])
    assert (job.stage1.run.autocast, job.scaling.use_gpu, job.stage1.run.max_steps) == ("off", False, 4)
