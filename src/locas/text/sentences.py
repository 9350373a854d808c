"""Cutting text into paragraph-aligned chunks and into sentences (line wraps undone).

    >>> chunks = split_chunks(tokenizer, text, chunk_tokens=512)   # list[str], each ~<= 512 tokens
    >>> sentences("In 1857 Mr. Moore bought a Hoe press. It arrived at St. Paul by steamboat.")
    ['In 1857 Mr. Moore bought a Hoe press.', 'It arrived at St. Paul by steamboat.']
"""

from __future__ import annotations

import re

from ..errors import LocasError
from .tokens import encode


def split_chunks(tokenizer, text: str, chunk_tokens: int = 512) -> list[str]:
    """Paragraph-aligned chunks of at most ~``chunk_tokens`` tokens (long paragraphs are cut)."""
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    if not paras:
        raise LocasError("the text is empty; give a file with some text in it")
    chunks, cur, n = [], [], 0
    for p in paras:
        ids = encode(tokenizer, p)
        pieces = [p] if len(ids) <= chunk_tokens else [
            tokenizer.decode(ids[i:i + chunk_tokens]) for i in range(0, len(ids), chunk_tokens)]
        for piece in pieces:
            m = len(ids) if len(pieces) == 1 else chunk_tokens
            if cur and n + m > chunk_tokens:
                chunks.append("\n\n".join(cur))
                cur, n = [], 0
            cur.append(piece)
            n += m
    if cur:
        chunks.append("\n\n".join(cur))
    return chunks


_ABBREV = re.compile(r"(?:\b(?:St|Mr|Mrs|Dr|Gen|Col|Capt|Gov|Hon|Rev|Jr|Sr|Co|Lt|Maj|Messrs|vs|No)|\b[A-Z])\.$")


def sentences(text: str, min_words: int = 5) -> list[str]:
    """Sentences of a passage with hard line wraps undone (abbreviations like "St." do not end one);
    sentences of fewer than ``min_words`` words are dropped."""
    flat = re.sub(r"\s+", " ", re.sub(r"(?:\*\s*){2,}", " ", text)).strip()
    parts = re.split(r"(?<=[.!?])[\"')\]]?\s+(?=[\"'(\[]?[A-Z0-9])", flat)
    merged: list[str] = []
    for p in parts:
        if merged and _ABBREV.search(merged[-1]):
            merged[-1] += " " + p
        else:
            merged.append(p)
    return [s.strip() for s in merged if len(s.split()) >= min_words]
