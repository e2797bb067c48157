"""Instructions and masks (spec §1.3, pitfalls 3-6) on a SentencePiece-style BPE and on MiniLM's WordPiece."""

from __future__ import annotations

import pytest

from nvembed.tokenization import InputBuilder

INSTRUCTIONS = [
    "Given a claim, retrieve documents",
    "Retrieve semantically similar text.",
    "Classify the topic",
    "find relevant passage",
]


def test_decoder_layout_bos_text_eos_right_padding(sp_tokenizer):
    b = InputBuilder(sp_tokenizer, is_decoder=True)
    batch = b(["the cat", "the big red dog sat on the road"], max_length=64)
    ids, att, pool = batch["input_ids"], batch["attention_mask"], batch["pool_mask"]
    bos, eos = sp_tokenizer.bos_token_id, sp_tokenizer.eos_token_id
    for row in range(2):
        n = int(att[row].sum())
        assert ids[row, 0] == bos and ids[row, n - 1] == eos
        assert att[row, :n].all() and not att[row, n:].any()  # right padding, every real token attended
        assert (pool[row] == att[row]).all()  # no instruction: BOS and EOS pooled too, as the reference


def test_truncated_text_still_ends_with_eos(sp_tokenizer):
    b = InputBuilder(sp_tokenizer, is_decoder=True)
    long = " ".join(["the cat sat on the house"] * 30)
    batch = b([long], max_length=16)
    assert batch["input_ids"].shape == (1, 16)
    assert batch["input_ids"][0, -1] == sp_tokenizer.eos_token_id
    assert batch["input_ids"][0, 0] == sp_tokenizer.bos_token_id


@pytest.mark.parametrize("instruction", INSTRUCTIONS)
def test_pool_boundary_matches_the_reference_on_sentencepiece(sp_tokenizer, instruction):
    """Reference: zero ``[0, len(tokenize(prefix)))`` where the prefix's trailing ``▁`` stands in for BOS."""
    b = InputBuilder(sp_tokenizer, is_decoder=True)
    prefix = b.format_instruction(instruction)
    reference_start = len(sp_tokenizer.tokenize(prefix))
    assert sp_tokenizer.tokenize(prefix)[-1] == "\u2581"  # the trailing-space token the reference relies on
    batch = b(["the cat sat on the house", "a dog"], instruction=instruction, max_length=64)
    for row in range(2):
        pool, att = batch["pool_mask"][row], batch["attention_mask"][row]
        start = int(pool.nonzero()[0])
        assert start == reference_start
        n = int(att.sum())
        assert pool[start:n].all() and not pool[n:].any()  # query tokens and final EOS pooled, padding not
        tokens = sp_tokenizer.convert_ids_to_tokens(batch["input_ids"][row, :start].tolist())
        assert tokens[0] == "<s>"  # BOS excluded along with the instruction


def test_boundary_comes_from_the_joined_text_not_the_instruction_length(sp_tokenizer):
    """A prefix whose last token merges with the text: counting the prefix's own tokens would be off by one."""
    b = InputBuilder(sp_tokenizer, is_decoder=True, instruction_template="{instruction}")
    ids, starts = b.tokenize(["cat"], "the ", max_length=32)  # "the " + "cat" -> "▁the", "▁cat"
    tokens = sp_tokenizer.convert_ids_to_tokens(ids[0])
    assert tokens[starts[0]] == "\u2581cat"
    assert len(sp_tokenizer.tokenize("the ")) == 2  # "▁the", "▁": the naive count would start one too late


def test_wordpiece_keeps_its_own_specials_and_drops_cls_and_instruction(minilm):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm)
    b = InputBuilder(tok, is_decoder=False)
    batch = b(["a cat sat"], instruction="Find it", max_length=64)
    tokens = tok.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    pooled = [t for t, m in zip(tokens, batch["pool_mask"][0].tolist(), strict=True) if m]
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert pooled == ["a", "cat", "sat", "[SEP]"]
    plain = b(["a cat sat"], max_length=64)
    assert plain["pool_mask"][0].tolist() == [1] * 5  # [CLS] a cat sat [SEP]


def test_per_text_instructions(sp_tokenizer):
    b = InputBuilder(sp_tokenizer, is_decoder=True)
    batch = b(["the cat", "the cat"], instruction=["Classify the topic", None], max_length=64)
    assert batch["pool_mask"][0].sum() < batch["pool_mask"][1].sum()
    assert batch["pool_mask"][1][0] == 1


def test_instruction_filling_max_length_is_a_clear_error(minilm):
    from transformers import AutoTokenizer

    b = InputBuilder(AutoTokenizer.from_pretrained(minilm), is_decoder=False)
    with pytest.raises(ValueError, match="no token of the text is left"):
        b(["a cat"], instruction="Given a very long instruction " * 5, max_length=8)
