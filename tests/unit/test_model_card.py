"""The model card an export carries (README.md): derived facts, caller metadata, licences, hub front matter."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from nvembed import Embedder, PoolingConfig
from nvembed.model_card import CardDataset, ModelCard, as_model_card, licence_from_provenance
from tests.helpers import sentencepiece_style_tokenizer, tiny_decoder

RESOURCES = Path(__file__).resolve().parents[2] / "nvembed" / "resources"


@pytest.fixture(scope="module")
def tiny():
    tok = sentencepiece_style_tokenizer()
    emb = Embedder.from_model(tiny_decoder("mistral", len(tok)), tok, pooling=PoolingConfig("latent", num_latents=8))
    emb.base_model = "mistralai/Mistral-7B-v0.1"  # as if it had been loaded by that name
    return emb


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_saving_writes_a_card_with_base_model_pooling_and_load_snippets(tiny, tmp_path):
    out = tiny.save_pretrained(tmp_path / "my-embedder")
    card = (out / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["library_name"] == "sentence-transformers" and meta["base_model"] == "mistralai/Mistral-7B-v0.1"
    assert "nvembed" in meta["tags"] and "license" not in meta  # no licence given: none claimed
    assert "`mistralai/Mistral-7B-v0.1`" in card and "latent attention (NV-Embed): 8 latents" in card
    assert "| embedding dimension | 64 |" in card
    assert 'Embedder.from_pretrained("my-embedder")' in card
    assert 'SentenceTransformer("my-embedder", trust_remote_code=True)' in card
    assert "| Retrieval | ArguAna | Given a claim, retrieve documents" in card  # instructions per task type
    assert "## Evaluation" not in card and "## Training" not in card


def test_a_card_with_training_and_evaluation_renders_them_and_survives_reloading(tiny, tmp_path):
    card = {
        "license": "apache-2.0",
        "stages": [
            {
                "stage": 1,
                "steps": 40,
                "batch": 32,
                "hard_negatives": 3,
                "datasets": [
                    ("snli", str(RESOURCES / "train" / "snli_triplets.jsonl"), None),
                    {"name": "own", "path": "somewhere/else.jsonl", "licence": "CC0 1.0", "rows": 12},
                ],
            }
        ],
        "evaluation": {
            "STSBenchmark": {"trained": 79.58, "base": 82.03},
            "Banking77Classification": {"trained": 81.14},
        },
        "evaluation_note": "MTEB main scores x100.",
    }
    out = tiny.save_pretrained(tmp_path / "m", card=card)
    text = (out / "README.md").read_text()
    assert _front_matter(text)["license"] == "apache-2.0"
    assert "| task | trained | base |" in text
    assert "| STSBenchmark | 79.58 | 82.03 |" in text and "| Banking77Classification | 81.14 |  |" in text
    assert "| 1 | 40 | 32 | 3 |" in text
    assert "| snli |" in text and "CC BY-SA 4.0" in text  # looked up in nvembed/resources/PROVENANCE.md
    assert "| own | `somewhere/else.jsonl` | 12 | CC0 1.0 |" in text
    # the caller's metadata is stored with the model: re-saving the reloaded model keeps it
    again = Embedder.from_pretrained(out)
    assert again.card.evaluation["STSBenchmark"]["trained"] == 79.58
    resaved = again.save_pretrained(tmp_path / "m2")
    assert "| STSBenchmark | 79.58 | 82.03 |" in (resaved / "README.md").read_text()


def test_single_column_evaluation_and_typed_card():
    card = ModelCard(model_id="org/model", base_model="packaged:all-MiniLM-L6-v2", evaluation={"SciFact": 75.456})
    text = card.render()
    assert "| task | score |" in text and "| SciFact | 75.46 |" in text
    assert _front_matter(text)["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert ModelCard(base_model="tiny:mistral").hub_base_model() is None


def test_bad_card_metadata_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown model-card stage field\(s\) \['stpes'\]"):
        as_model_card({"stages": [{"stage": 1, "stpes": 3}]})
    with pytest.raises(ValueError, match=r"unknown model-card field\(s\) \['licence'\]"):
        as_model_card({"licence": "mit"})
    with pytest.raises(TypeError, match="evaluation"):
        ModelCard(evaluation={"STS": "high"})
    with pytest.raises(TypeError, match="card must be"):
        as_model_card(["x"])


def test_licences_are_read_from_provenance_files():
    assert licence_from_provenance(RESOURCES / "train" / "snli_triplets.jsonl") == "CC BY-SA 4.0"
    assert licence_from_provenance(RESOURCES / "train" / "banking77_train.jsonl") == "CC BY 4.0"
    assert licence_from_provenance(RESOURCES / "eval" / "banking77" / "test.jsonl") == "CC BY 4.0"  # named in prose
    assert "CC BY-SA 4.0" in licence_from_provenance(RESOURCES / "eval" / "stsbenchmark" / "test.jsonl")
    assert licence_from_provenance(RESOURCES / "train") is None  # several licences: none is claimed
    assert licence_from_provenance("no/such/file.jsonl") is None
    assert CardDataset("x", "no/such/file.jsonl").licence is None


def test_per_folder_provenance_layout(tmp_path):
    """The shared data's layout: one PROVENANCE.md per dataset folder with a top-level Licence line."""
    folder = tmp_path / "scifact"
    (folder / "qrels").mkdir(parents=True)
    (folder / "qrels" / "train.tsv").write_text("q\td\t1\n")
    (folder / "PROVENANCE.md").write_text(
        "# SciFact\n\n- Source: somewhere\n- Licence (as stated in the source): CC BY-NC 2.0.\n\n"
        "## Files\n| file | rows |\n| --- | --- |\n| qrels/train.tsv | 1 |\n"
    )
    assert licence_from_provenance(folder) == "CC BY-NC 2.0."
    assert licence_from_provenance(folder / "qrels" / "train.tsv") == "CC BY-NC 2.0."


def test_an_evaluation_table_can_be_added_to_a_saved_export(tiny, tmp_path):
    from nvembed.export import update_model_card

    out = tiny.save_pretrained(tmp_path / "trained", card={"stages": [{"stage": 1, "steps": 5}]})
    weights = (out / "model.safetensors").stat().st_mtime_ns
    readme = update_model_card(out, {"evaluation": {"SciFact": 70.0}})
    text = readme.read_text()
    assert "| SciFact | 70.00 |" in text and "| 1 | 5 |" in text  # the stored stages are kept
    assert "latent attention (NV-Embed): 8 latents" in text and "`mistralai/Mistral-7B-v0.1`" in text
    assert (out / "model.safetensors").stat().st_mtime_ns == weights
    assert Embedder.from_pretrained(out).card.evaluation == {"SciFact": 70.0}
    with pytest.raises(FileNotFoundError, match="not an nvembed export"):
        update_model_card(tmp_path, {"evaluation": {}})
