"""The single-process stage driver: exact resume, stage 2 from stage 1, checkpoint contents."""

from __future__ import annotations

import pathlib

import pytest

from nvembed.config import TrainConfig, from_dict
from nvembed.training.stage import run_stage
from tests.helpers import save_tiny_backbone, toy_rows

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _cfg(model_dir, out, **run):
    return from_dict(
        TrainConfig,
        {
            "model": {"name_or_path": model_dir, "max_length": 64},
            "pooling": {"kind": "latent", "num_latents": 8, "num_heads": 2},
            "lora": {"enabled": True, "rank": 4, "alpha": 8, "dropout": 0.1},
            "data": {"datasets": [{"name": "toy", "task": "SciFact", "format": "triplets", "path": "unused"}]},
            "loss": {"temperature": 0.05},
            "optim": {"lr": 1e-3, "head_lr": 1e-3, "warmup_steps": 2},
            "run": {
                "max_steps": 6,
                "batch_size": 4,
                "num_negatives": 2,
                "chunk_size": 2,
                "seed": 3,
                "checkpoint_every": 0,
                "log_every": 0,
                "output_dir": str(out),
                "query_max_length": 32,
                "doc_max_length": 32,
                **run,
            },
        },
    )


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_backbone(tmp_path_factory.mktemp("tiny"))


def test_stop_and_resume_gives_the_same_losses(tiny_dir, tmp_path):
    rows = {"toy": toy_rows(40, 3)}
    straight = run_stage(_cfg(tiny_dir, tmp_path / "a"), rows, log=lambda _: None)
    assert [m.step for m in straight.history] == [1, 2, 3, 4, 5, 6]

    first = run_stage(_cfg(tiny_dir, tmp_path / "b"), rows, stop_after=3, log=lambda _: None)
    assert first.final_model is None and len(first.history) == 3
    assert (tmp_path / "b" / "checkpoints" / "step-3" / "engine" / "trainable.safetensors").is_file()
    second = run_stage(_cfg(tiny_dir, tmp_path / "b"), rows, log=lambda _: None)
    assert second.resumed_from == 3
    assert [m.step for m in second.history] == [4, 5, 6]
    for a, b in zip(straight.history[3:], second.history, strict=True):
        assert a.loss == pytest.approx(b.loss, abs=1e-6), (a.step, a.loss, b.loss)
    # and the run really learns something different at each step (the equality above is not vacuous)
    assert len({round(m.loss, 6) for m in straight.history}) == 6


def test_stage2_starts_from_stage1_without_in_batch_negatives(tiny_dir, tmp_path):
    rows = {"toy": toy_rows(40, 3)}
    one = run_stage(_cfg(tiny_dir, tmp_path / "s1", max_steps=3), rows, log=lambda _: None)
    cfg2 = _cfg(tiny_dir, tmp_path / "s2", max_steps=3, stage=2, init_from=str(one.final_model))
    assert cfg2.in_batch_negatives is False
    two = run_stage(cfg2, rows, log=lambda _: None)
    assert two.final_model is not None and len(two.history) == 3
    from nvembed import Embedder

    a = Embedder.from_pretrained(one.final_model).encode(["the cat"], show_progress=False)
    b = Embedder.from_pretrained(two.final_model).encode(["the cat"], show_progress=False)
    assert abs(a - b).max() > 1e-6  # stage 2 trained on top of stage 1


def test_row_cache_is_reused_when_only_the_blend_weight_changes(tmp_path):
    from nvembed.config import DataConfig, DatasetConfig
    from nvembed.data.build import build_training_rows

    path = str(ROOT / "nvembed/resources/train/snli_triplets.jsonl")
    lines: list[str] = []

    def build(weight: float, max_rows: int):
        ds = DatasetConfig(name="snli", format="triplets", path=path, weight=weight, max_rows=max_rows)
        return build_training_rows(DataConfig(datasets=[ds]), 1, tmp_path, log=lines.append)["snli"]

    first = build(1.0, 50)
    again = build(3.0, 50)  # same rows, another weight: served from the cache
    other = build(1.0, 40)  # another conversion: converted anew
    assert [r.to_dict() for r in again] == [r.to_dict() for r in first] and len(other) == 40
    assert ["cached" in line for line in lines] == [False, True, False]
