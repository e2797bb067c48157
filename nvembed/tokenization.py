"""Turn texts (+ optional instructions) into ``input_ids``, ``attention_mask`` and ``pool_mask``.

What NV-Embed feeds its model (spec §1.3, pitfalls 3-6), and how we reproduce it for any tokenizer:

* A query with an instruction is the string ``"Instruct: {instruction}\\nQuery: " + text``; documents carry no
  prefix. The instruction is a separate field here, never recovered by splitting on a sentinel string.
* Decoder-only backbones: the tokenizer's leading specials (BOS for Mistral/Llama, none for Qwen2), the content,
  then EOS. The content is truncated *before* EOS is appended, so a truncated text still ends in EOS (the release
  truncates after appending, losing it; we document the difference in README).
  Encoder backbones keep their own specials (``[CLS] ... [SEP]``).
* Right padding. ``attention_mask`` covers every real token, instruction included: the backbone attends to it.
* ``pool_mask`` = ``attention_mask`` minus, when there is an instruction, the leading specials and every
  instruction token. The boundary comes from the tokenised *joined* string (character offsets): a token belongs
  to the query as soon as it covers a character of the query text. That is what the reference gets from
  ``len(tokenize(instruction))`` thanks to SentencePiece's trailing ``▁`` (spec §1.3) and what ST's
  ``strip()`` + ``- 1`` gets wrong (spec §1.5). Without an instruction every real token is pooled, BOS and EOS
  included, as the reference does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

DEFAULT_INSTRUCTION_TEMPLATE = "Instruct: {instruction}\nQuery: "


def _split_specials(tokenizer) -> tuple[list[int], list[int]]:
    """The special ids the tokenizer puts before and after a text (e.g. ``[CLS]``/``[SEP]``, or ``<s>``)."""
    probe = "hello world"
    with_specials = tokenizer(probe, add_special_tokens=True)["input_ids"]
    plain = tokenizer(probe, add_special_tokens=False)["input_ids"]
    for start in range(len(with_specials) - len(plain) + 1):
        if with_specials[start : start + len(plain)] == plain:
            return list(with_specials[:start]), list(with_specials[start + len(plain) :])
    raise ValueError(f"cannot locate the plain tokenisation inside the special-token one for {type(tokenizer)}")


class InputBuilder:
    """Tokenise batches for an embedder; the one place that decides special tokens, truncation and masks.

    Args:
        tokenizer: a *fast* Hugging Face tokenizer (offsets are needed for the instruction boundary).
        is_decoder: decoder-only backbone (EOS appended to every text) or encoder (own specials kept).
        instruction_template: how an instruction becomes a query prefix; must contain ``{instruction}``.
    """

    def __init__(self, tokenizer, is_decoder: bool, instruction_template: str = DEFAULT_INSTRUCTION_TEMPLATE) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("nvembed needs a fast tokenizer (offset mapping) to place the instruction boundary")
        if "{instruction}" not in instruction_template:
            raise ValueError(f"instruction_template must contain '{{instruction}}', got {instruction_template!r}")
        self.tokenizer = tokenizer
        self.is_decoder = is_decoder
        self.instruction_template = instruction_template
        prefix, suffix = _split_specials(tokenizer)
        if is_decoder:
            if tokenizer.eos_token_id is None:
                raise ValueError("a decoder-only backbone needs a tokenizer with an EOS token")
            suffix = [tokenizer.eos_token_id]
        self.prefix_ids = prefix
        self.suffix_ids = suffix
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)

    def format_instruction(self, instruction: str | None) -> str:
        """``"Instruct: {instruction}\\nQuery: "``, or ``""`` for no instruction (documents)."""
        return self.instruction_template.format(instruction=instruction) if instruction else ""

    def tokenize(
        self, texts: Sequence[str], prefixes: str | Sequence[str] | None, max_length: int
    ) -> tuple[list[list[int]], list[int]]:
        """Token ids per text (specials included, unpadded) and the index where pooling starts.

        Args:
            texts: the texts to embed.
            prefixes: already formatted instruction prefixes: one for all, one per text, or ``None``.
            max_length: total length cap, specials included.
        """
        n = len(texts)
        if isinstance(prefixes, str) or prefixes is None:
            prefixes = [prefixes or ""] * n
        if len(prefixes) != n:
            raise ValueError(f"got {len(prefixes)} instruction prefixes for {n} texts")
        budget = max_length - len(self.prefix_ids) - len(self.suffix_ids)
        if budget < 1:
            raise ValueError(f"max_length={max_length} leaves no room for text next to the special tokens")
        joined = [p + t for p, t in zip(prefixes, texts, strict=True)]
        any_prefix = any(prefixes)
        enc = self.tokenizer(
            joined,
            add_special_tokens=False,
            truncation=True,
            max_length=budget,
            return_attention_mask=False,
            return_token_type_ids=False,
            return_offsets_mapping=any_prefix,
        )
        ids: list[list[int]] = []
        starts: list[int] = []
        for i, content in enumerate(enc["input_ids"]):
            ids.append(self.prefix_ids + content + self.suffix_ids)
            plen = len(prefixes[i])
            if not plen:
                starts.append(0)  # no instruction: pool every real token, BOS/CLS included
                continue
            # first token that covers a character of the text proper (ends past the prefix)
            offsets = enc["offset_mapping"][i]
            first = next((j for j, (_, end) in enumerate(offsets) if end > plen), None)
            if first is None:
                raise ValueError(
                    f"text #{i}: its instruction fills max_length={max_length}, no token of the text is left "
                    f"to pool; raise max_length or shorten the instruction"
                )
            starts.append(len(self.prefix_ids) + first)
        return ids, starts

    def pad(self, ids: list[list[int]], starts: list[int]) -> dict[str, torch.Tensor]:
        """Right-pad to the longest sequence; build ``attention_mask`` and ``pool_mask`` ``[B, L]``."""
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        width = int(lengths.max())
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int64)  # [B, L]
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = seq
        positions = np.arange(width)[None, :]  # [1, L]
        attention = positions < lengths[:, None]  # [B, L]
        pool = attention & (positions >= np.asarray(starts)[:, None])  # [B, L]
        if not pool.any(axis=1).all():
            bad = int(np.flatnonzero(~pool.any(axis=1))[0])
            raise ValueError(f"text #{bad} has no token to pool (pool start past its end)")
        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention.astype(np.int64)),
            "pool_mask": torch.from_numpy(pool.astype(np.int64)),
        }

    def __call__(
        self, texts: Sequence[str], instruction: str | Sequence[str | None] | None = None, max_length: int = 512
    ) -> dict[str, torch.Tensor]:
        """Tokenise, truncate, pad. ``instruction`` is the raw task description (not yet templated)."""
        if instruction is None or isinstance(instruction, str):
            prefixes: str | list[str] = self.format_instruction(instruction)
        else:
            prefixes = [self.format_instruction(x) for x in instruction]
        ids, starts = self.tokenize(texts, prefixes, max_length)
        return self.pad(ids, starts)
