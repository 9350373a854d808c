"""Answering questions about a long text: prompting and prefix-cached greedy decoding.

Every question of a conversation shares one prompt prefix (system text, the conversation or
its recent window, the instruction). ``PrefixAnswerer`` runs that prefix through the model
once, keeps its KV cache, and answers all questions in batches on top of it: each batch row
is ``prefix | left-padded question | generated tokens`` in a static cache whose prefix part
is written once, so a question costs its own tokens only (docs/LOCOMO.md).

    >>> prompt = Prompt.build(lm.tokenizer, context_ids, style="auto")   # prefix ids + suffix renderer
    >>> with AnswerState(memory=mem).apply(lm) as model:                  # Locas memory, LoRA or nothing
    ...     answerer = PrefixAnswerer(model, lm.tokenizer, prompt.prefix_ids)
    ...     texts = answerer.answer([prompt.suffix_ids(q) for q in questions])
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .errors import LocasError

INSTRUCTION = ("Answer the question with a short phrase, using exact words from the conversation when possible. "
               "If the conversation does not mention it, answer \"Not mentioned in the conversation\".")
TEMPORAL_HINT = " Use the DATE of the conversation to answer with an approximate date."
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
        if style not in ("auto", "chat", "plain"):
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
        ids = _encode(tokenizer, head) + ctx + _encode(tokenizer, mid)
        return cls(tokenizer, style, ids, len(ctx))

    def suffix_ids(self, question: str, history: list[tuple[str, str]] = (), hint: str = "") -> list[int]:
        """Tokens after the prefix for ``question`` (after earlier (question, answer) turns)."""
        _, _, tail = _split(_render(self.tokenizer, self.style, "", list(history), question + hint))
        return _encode(self.tokenizer, tail)

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
        text += ("" if i == 0 else "Question: ") + q + " Short answer:"
        if i < len(history):
            text += f" {history[i][1]}\n"
    return text


def _split(text: str) -> tuple[str, str, str]:
    head, rest = text.split(_CTX, 1)
    mid, tail = rest.split(_Q, 1)
    return head, mid, tail


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def context_ids(tokenizer, text: str) -> list[int]:
    return _encode(tokenizer, text)


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


# ---- what the model carries while answering ---------------------------------------------
@dataclass
class AnswerState:
    """A Locas memory ``(L, 1, r, d, C)`` (+ layers), a live peft model (LoRA), or nothing (base model)."""

    memory: torch.Tensor | None = None
    layers: list[int] | None = None
    module: torch.nn.Module | None = None  # e.g. the peft model while a LoRA adapter is attached

    @contextmanager
    def apply(self, lm):
        """Install the state on ``lm``; yields the module to call."""
        if self.memory is not None:
            with lm.use_memory(self.memory.detach(), self.layers), torch.no_grad():
                yield self.module or lm.model
        else:
            with lm.disabled(), torch.no_grad():
                yield self.module or lm.model


def stop_token_ids(tokenizer, model=None, stop_at_newline: bool = True) -> set[int]:
    """Token ids that end an answer: EOS (and <|im_end|>) and, optionally, any token with a newline."""
    ids = set()
    for t in (getattr(tokenizer, "eos_token_id", None),
              getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        ids.update(t if isinstance(t, (list, tuple)) else [t] if t is not None else [])
    end = tokenizer.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tokenizer.get_vocab() else None
    if end is not None:
        ids.add(end)
    if stop_at_newline:
        vocab = tokenizer.get_vocab()
        ids.update(i for tok, i in vocab.items() if "\n" in tokenizer.convert_tokens_to_string([tok]))
    return ids


class PrefixAnswerer:
    """Greedy answers for many suffixes on one shared prefix, with the prefix prefilled once.

    ``model`` is the callable transformers model (with any memory/adapter already installed).
    """

    def __init__(self, model, tokenizer, prefix_ids: list[int], *, max_new_tokens: int = 24,
                 batch_size: int = 16, prefill_chunk: int = 2048, stop_at_newline: bool = True):
        if not prefix_ids:
            raise LocasError("the prompt prefix is empty; give some instruction or context")
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.stop_ids = stop_token_ids(tokenizer, model, stop_at_newline)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(self.stop_ids), 0)
        self.device = next(model.parameters()).device
        t0 = time.perf_counter()
        self.prefix_kv = self._prefill(torch.tensor(prefix_ids, device=self.device)[None], prefill_chunk)
        self.prefix_len = len(prefix_ids)
        self.prefill_s = time.perf_counter() - t0
        self.decode_s = 0.0
        self.answered = 0

    @torch.no_grad()
    def _prefill(self, ids: torch.Tensor, chunk: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for s in range(0, ids.shape[1], chunk):
            self.model(input_ids=ids[:, s:s + chunk], past_key_values=cache, use_cache=True)
        return [(layer.keys, layer.values) for layer in cache.layers]  # each (1, H, P, D)

    def _static_cache(self, batch: int, length: int):
        from transformers import StaticCache

        cache = StaticCache(config=self.model.config, max_cache_len=length)
        for layer, (k, v) in zip(cache.layers, self.prefix_kv):
            layer.lazy_initialization(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
            layer.keys[:, :, :self.prefix_len] = k
            layer.values[:, :, :self.prefix_len] = v
        return cache

    @staticmethod
    def _rewind(cache, position: int) -> None:
        for layer in cache.layers:
            layer.cumulative_length.fill_(position)

    @torch.no_grad()
    def answer_ids(self, suffixes: list[list[int]], streamer=None) -> list[list[int]]:
        """Greedy continuations (stop tokens excluded) of ``prefix + suffix`` for every suffix."""
        if any(len(s) == 0 for s in suffixes):
            raise LocasError("every question needs at least one token")
        out: list[list[int]] = []
        t0 = time.perf_counter()
        batch = min(self.batch_size, max(len(suffixes), 1))
        cache, cache_len = None, 0
        for lo in range(0, len(suffixes), batch):
            group = suffixes[lo:lo + batch]
            rows = group + [group[-1]] * (batch - len(group))  # fixed batch: pad with copies
            width = max(len(s) for s in rows)
            need = self.prefix_len + width + self.max_new_tokens
            if cache is None or need > cache_len:
                cache_len = need + 64
                cache = self._static_cache(batch, cache_len)
            self._rewind(cache, self.prefix_len)
            out.extend(self._decode(cache, rows, width, streamer)[:len(group)])
        self.decode_s += time.perf_counter() - t0
        self.answered += len(suffixes)
        return out

    def _decode(self, cache, rows: list[list[int]], width: int, streamer) -> list[list[int]]:
        B, P, dev = len(rows), self.prefix_len, self.device
        ids = torch.full((B, width), self.pad_id, dtype=torch.long, device=dev)
        mask = torch.zeros((B, P + width), dtype=torch.long, device=dev)
        mask[:, :P] = 1
        pos = torch.zeros((B, width), dtype=torch.long, device=dev)
        for b, s in enumerate(rows):  # left-pad each question against the prefix
            n = len(s)
            ids[b, width - n:] = torch.tensor(s, device=dev)
            mask[b, P + width - n:] = 1
            pos[b, width - n:] = torch.arange(P, P + n, device=dev)
        next_pos = pos[:, -1:] + 1  # (B, 1)
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        answers: list[list[int]] = [[] for _ in range(B)]
        for _ in range(self.max_new_tokens):
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                                use_cache=True).logits[:, -1]  # (B, V)
            token = logits.argmax(-1)  # (B,)
            for b in range(B):
                if done[b]:
                    continue
                t = int(token[b])
                if t in self.stop_ids:
                    done[b] = True
                else:
                    answers[b].append(t)
                    if streamer is not None and b == 0:
                        streamer.put(torch.tensor([t]))
            if bool(done.all()):
                break
            ids, pos = token[:, None], next_pos
            next_pos = next_pos + 1
            mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=dev)], dim=1)
        if streamer is not None:
            streamer.end()
        return answers

    def answer(self, suffixes: list[list[int]], streamer=None) -> list[str]:
        return [self.tokenizer.decode(a, skip_special_tokens=True).strip()
                for a in self.answer_ids(suffixes, streamer)]

    @property
    def questions_per_second(self) -> float:
        return self.answered / self.decode_s if self.decode_s else 0.0
