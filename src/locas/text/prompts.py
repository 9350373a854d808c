"""Prompts: a question prompt split into a shared prefix and per-question suffixes, and one-turn user prompts.

Every question about one text shares a prompt prefix (system text, the text or its recent window,
the instruction); ``Prompt`` renders it once as token ids and renders each question's suffix, in
the tokenizer's chat template (``chat``) or as plain text (``plain``), so a decoder can prefill the
prefix once and answer many questions on top of it (``locas.text.decoding.Decoder``).

    >>> prompt = Prompt.build(tokenizer, context_ids, style="auto")     # prefix ids + suffix renderer
    >>> suffix = prompt.suffix_ids("When did Caroline go to the group?")
    >>> ids = user_prompt_ids(tokenizer, "Write one question about the text above.", use_chat=True)
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.model import bos_prefix
from ..errors import LocasError
from .tokens import encode

INSTRUCTION = ("Answer the question with a short phrase, using exact words from the conversation when possible. "
               "If the conversation does not mention it, answer \"Not mentioned in the conversation\".")
DOCUMENT_INSTRUCTION = "Answer the question with a short phrase."
TEMPORAL_HINT = " Use the DATE of the conversation to answer with an approximate date."
# what follows a question in the plain style: a base model (no chat template) answers after "Answer:" on a line of
# its own. gemma3-270m with the document in the prompt, the 173 questions of the recall tuning documents: 61 % of
# greedy answers contain the reference, against 39 % after " Short answer:" (which it often continued with
# underscores) and 59 % in the qa style (benchmarks/prompts.py; docs/RECALL.md)
ANSWER_CUE = "\nAnswer:"
PROMPT_STYLES = ("auto", "chat", "plain")
_CTX, _Q = "\x00CTX\x00", "\x00Q\x00"


@dataclass
class Prompt:
    """A prompt split into a shared prefix (token ids) and a per-question suffix renderer."""

    tokenizer: object
    style: str  # chat | plain
    prefix_ids: list[int]
    context_tokens: int  # how many context tokens the prefix holds

    @staticmethod
    def resolve_style(tokenizer, style: str = "auto") -> str:
        if style not in PROMPT_STYLES:
            raise LocasError(f"unknown prompt style '{style}'; use auto, chat or plain")
        if style == "auto":
            return "chat" if getattr(tokenizer, "chat_template", None) else "plain"
        if style == "chat" and not getattr(tokenizer, "chat_template", None):
            raise LocasError("this tokenizer has no chat template; use --prompt-style plain")
        return style

    @classmethod
    def build(cls, tokenizer, context_ids: list[int] | None = None, style: str = "auto",
              instruction: str = INSTRUCTION) -> Prompt:
        """``context_ids``: the text to put before the question (already cut to fit), or None."""
        style = cls.resolve_style(tokenizer, style)
        head, mid, _ = _split(_render(tokenizer, style, instruction, [], "?"))
        ctx = list(context_ids or [])
        ids = bos_first(tokenizer, encode(tokenizer, head) + ctx + encode(tokenizer, mid))
        return cls(tokenizer, style, ids, len(ctx))

    def suffix_ids(self, question: str, history: list[tuple[str, str]] = (), hint: str = "") -> list[int]:
        """Tokens after the prefix for ``question`` (after earlier (question, answer) turns)."""
        _, _, tail = _split(_render(self.tokenizer, self.style, "", list(history), question + hint))
        return encode(self.tokenizer, tail)

    def overhead(self) -> int:
        """Prefix tokens that are not context."""
        return len(self.prefix_ids) - self.context_tokens


def _render(tokenizer, style: str, instruction: str, history: list[tuple[str, str]], question: str) -> str:
    """Full prompt text with sentinels where the context starts and the first question starts."""
    first = f"{_CTX}{instruction}\n\nQuestion: {_Q}"
    turns = [q for q, _ in history] + [question]
    if style == "chat":
        msgs = []
        for i, q in enumerate(turns):
            msgs.append({"role": "user", "content": (first if i == 0 else "Question: ") + q})
            if i < len(history):
                msgs.append({"role": "assistant", "content": history[i][1]})
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    text = first
    for i, q in enumerate(turns):
        text += ("" if i == 0 else "Question: ") + q + ANSWER_CUE
        if i < len(history):
            text += f" {history[i][1]}\n"
    return text


def _split(text: str) -> tuple[str, str, str]:
    head, rest = text.split(_CTX, 1)
    mid, tail = rest.split(_Q, 1)
    return head, mid, tail


def answer_stop_id(tokenizer, style: str) -> int:
    """The token that ends a short answer in ``style``: ``<|im_end|>`` (or EOS) in chat, else a line break (EOS
    for a tokenizer without one)."""
    if style == "chat" and "<|im_end|>" in tokenizer.get_vocab():
        return tokenizer.convert_tokens_to_ids("<|im_end|>")
    newline = encode(tokenizer, "\n") if style != "chat" else []
    return newline[-1] if newline else tokenizer.eos_token_id


def user_prompt_ids(tokenizer, content: str, use_chat: bool = True) -> list[int]:
    """One user turn ready for the model to reply: the chat template when asked for and present, else
    ``content`` and a line break."""
    if use_chat and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                            tokenize=True)
        return bos_first(tokenizer, list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids))
    return bos_first(tokenizer, encode(tokenizer, content + "\n"))


def bos_first(tokenizer, ids: list[int]) -> list[int]:
    """``ids`` from the start of a sequence, with the BOS its tokenizer puts before every text (Gemma's; none for
    SmolLM2) unless they start with it (a chat template may write it)."""
    bos = bos_prefix(tokenizer)
    return ids if not bos or ids[:len(bos)] == bos else bos + ids
