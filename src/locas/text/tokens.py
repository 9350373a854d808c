"""Turning text into token ids: the one ``encode``, whole-text tokenising, and tails that fit a budget.

    >>> ids = encode(tokenizer, "Caroline went to the support group.")   # list[int], no special tokens
    >>> tokens = tokenize_text(tokenizer, book_text, max_tokens=16384)   # (T,) long tensor
    >>> recent = tail_tokens(ids, budget=1024, tokenizer=tokenizer)      # starts after a line break
"""

from __future__ import annotations

import torch


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (an empty text gives [])."""
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_text(tokenizer, text: str, max_tokens: int | None = None) -> torch.Tensor:
    """1-D token ids (T,) of ``text`` (no special tokens), cut to ``max_tokens``."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    if max_tokens:
        ids = ids[:max_tokens]
    return torch.tensor(ids, dtype=torch.long)


def tail_tokens(ids: list[int], budget: int, tokenizer=None) -> list[int]:
    """The last ``budget`` tokens of ``ids``, starting after a line break when one is near."""
    if budget <= 0:
        return []
    if len(ids) <= budget:
        return list(ids)
    cut = list(ids[-budget:])
    if tokenizer is not None:
        for i, t in enumerate(cut[:256]):
            if "\n" in tokenizer.decode([t]):
                return cut[i + 1:]
    return cut
