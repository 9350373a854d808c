"""The one decoder: continuations of many suffixes after one shared prefix, with the prefix prefilled once.

Every generation in locas goes through ``Decoder``: answers to questions (``locas ask``/``chat``,
LoCoMo), the teacher's answers and the held-out recall of self-study, probes written by the model,
and GRPO's sampled completions. The prefix (instruction, context, the text the teacher reads) runs
through the model once; its key/value cache is copied into a static cache for a batch of
left-padded suffixes, so a suffix costs its own tokens only. Decoding is greedy or nucleus
sampling (a CPU generator makes it reproducible), stops on ``stop_token_ids`` (one set for every
caller), and can keep the top-k logits of every generated position (the self-study teacher).

    >>> dec = Decoder(model, tokenizer, prefix_ids, batch_size=16)          # model: memory/adapter installed
    >>> outs = dec.generate([suffix_a, suffix_b], max_new_tokens=24)        # greedy; list[Continuation]
    >>> outs[0].tokens, outs[0].stopped
    >>> dec.generate([s] * 4, 32, sampling=Sampling(0.8, 0.95, torch.Generator().manual_seed(0)))
    >>> dec.answer([suffix_a])                                              # decoded strings
    >>> dec.nll([suffix_a], [target_ids])                                   # mean NLL of a continuation
"""

from __future__ import annotations

import copy
import time
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core.kvcache import cache_arg, has_sliding_window, new_cache
from ..errors import LocasError

_WHITESPACE_TOKENS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _whitespace_tokens(tokenizer) -> tuple[frozenset[int], frozenset[int]]:
    """(tokens whose text contains a line break, tokens whose text is only whitespace): one pass over the
    vocabulary per tokenizer."""
    if tokenizer not in _WHITESPACE_TOKENS:
        newline, blank = set(), set()
        for tok, i in tokenizer.get_vocab().items():
            text = tokenizer.convert_tokens_to_string([tok])
            if "\n" in text:
                newline.add(i)
            if not text.strip():
                blank.add(i)
        _WHITESPACE_TOKENS[tokenizer] = frozenset(newline), frozenset(blank)
    return _WHITESPACE_TOKENS[tokenizer]


def blank_token_ids(tokenizer) -> frozenset[int]:
    """Tokens whose text is only whitespace (spaces, line breaks): they do not make an answer non-empty."""
    return _whitespace_tokens(tokenizer)[1] if tokenizer is not None else frozenset()


def eos_token_ids(tokenizer, model=None) -> frozenset[int]:
    """EOS: the tokenizer's and the model's generation config's (what ``model.generate`` stops at)."""
    ids = set()
    for t in (getattr(tokenizer, "eos_token_id", None),
              getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        ids.update(t if isinstance(t, (list, tuple)) else [t] if t is not None else [])
    return frozenset(ids)


def stop_token_ids(tokenizer, model=None, newline: bool = True) -> frozenset[int]:
    """The tokens that end an answer: EOS (``eos_token_ids``), ``<|im_end|>``, and with ``newline`` every
    token whose text contains a line break. Without a tokenizer (a model trained on raw ids), only EOS."""
    ids = set(eos_token_ids(tokenizer, model))
    if tokenizer is None:
        return frozenset(ids)
    vocab = tokenizer.get_vocab()
    if "<|im_end|>" in vocab:
        ids.add(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    if newline:
        ids |= _whitespace_tokens(tokenizer)[0]
    return frozenset(ids)


@dataclass
class Sampling:
    """Nucleus sampling: the smallest set of tokens with probability mass >= ``top_p``, at ``temperature``.

    Draws come from ``generator`` (a CPU ``torch.Generator``), so a seeded run is reproducible."""

    temperature: float = 1.0
    top_p: float = 1.0
    generator: torch.Generator | None = None

    def __post_init__(self):
        if not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise LocasError(f"sampling needs temperature > 0 and 0 < top_p <= 1, got {self.temperature}, "
                             f"{self.top_p}")

    def draw(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, V) logits -> (B,) sampled token ids (on the logits' device)."""
        probs = torch.softmax(logits.float().cpu() / self.temperature, -1)
        overflow = probs.isnan().any(-1)  # a temperature so low that logits / temperature is inf or nan in fp32
        if overflow.any():  # its limit: the argmax
            probs[overflow] = torch.nn.functional.one_hot(logits[overflow].float().cpu().argmax(-1),
                                                          probs.shape[-1]).float()
        sorted_p, order = probs.sort(-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < self.top_p  # the smallest set with mass >= top_p
        keep[:, 0] = True  # the likeliest token always (a top_p below fp32's smallest number keeps nothing else)
        pick = order.gather(-1, torch.multinomial(sorted_p * keep, 1, generator=self.generator))  # (B, 1)
        return pick[:, 0].to(logits.device)


def draw(logits: torch.Tensor, sampling) -> torch.Tensor:
    """(B, V) logits -> (B,) next tokens: greedy (None), one sampler for the batch, or a list with one
    sampler (or None: greedy) per row, each drawing from its own generator."""
    if sampling is None:
        return logits.argmax(-1)
    if not isinstance(sampling, list):
        return sampling.draw(logits)
    return torch.stack([logits[b].argmax(-1) if s is None else s.draw(logits[b:b + 1])[0]
                        for b, s in enumerate(sampling)])


@dataclass
class Continuation:
    """One generated continuation.

    ``tokens`` excludes the stop token; ``stop`` is the stop token that ended it (None: the length
    limit did). ``topk_values``/``topk_index`` (A, k), when asked for, hold the logits of every
    generated position, the stop position included (A = len(tokens) + (stop is not None))."""

    tokens: list[int]
    stop: int | None = None
    topk_values: torch.Tensor | None = None
    topk_index: torch.Tensor | None = None

    @property
    def with_stop(self) -> list[int]:
        return self.tokens + ([self.stop] if self.stop is not None else [])


class Decoder:
    """Continuations of ``prefix + suffix`` for many suffixes; the prefix (may be empty) is prefilled once.

    ``model`` is the callable transformers model in the state to decode with (memory installed,
    adapter active, or plain). ``stop_ids`` defaults to ``stop_token_ids(tokenizer, model, newline)``.
    """

    def __init__(self, model, tokenizer, prefix_ids: list[int], *, max_new_tokens: int = 24, batch_size: int = 16,
                 prefill_chunk: int = 2048, newline: bool = True, stop_ids=None):
        if max_new_tokens < 1 or batch_size < 1:
            raise LocasError(f"decoding needs max_new_tokens >= 1 and batch_size >= 1, got {max_new_tokens}, "
                             f"{batch_size}")
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.stop_ids = frozenset(stop_ids) if stop_ids is not None else stop_token_ids(tokenizer, model, newline)
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else min(self.stop_ids, default=0)
        self.device = next(model.parameters()).device
        # Layers with a sliding window (Gemma 2/3, Mistral, Qwen2's option) keep only their last window of keys, and
        # a padded row would spend window slots on padding: such a model decodes one unpadded row at a time, from
        # a copy of the prefix's own cache (exactly what transformers' generate does for that row alone).
        self.sliding = has_sliding_window(model)
        if self.sliding:
            self.batch_size = 1
        t0 = time.perf_counter()
        self.prefix_len = len(prefix_ids)
        self.prefix_cache = self._prefill(torch.tensor(prefix_ids, dtype=torch.long, device=self.device)[None],
                                          prefill_chunk) if prefix_ids else None
        self.prefix_kv = None if self.prefix_cache is None or self.sliding else \
            [(layer.keys, layer.values) for layer in self.prefix_cache.layers]  # each (1, H, P, D)
        self.prefill_s = time.perf_counter() - t0
        self.decode_s = 0.0
        self.answered = 0
        self._cache, self._cache_shape = None, (0, 0)

    # ---- caches ----------------------------------------------------------------------------------
    @torch.no_grad()
    def _prefill(self, ids: torch.Tensor, chunk: int):
        """The prefix's KV cache (a transformers DynamicCache), prefilled ``chunk`` tokens at a time."""
        cache = new_cache(self.model)
        for s in range(0, ids.shape[1], chunk):
            self.model(input_ids=ids[:, s:s + chunk], use_cache=True, **cache_arg(cache))
        return cache

    def _row_cache(self):
        """A cache holding the prefix for one row of a sliding-window model, to grow as that row decodes."""
        return new_cache(self.model) if self.prefix_cache is None else copy.deepcopy(self.prefix_cache)

    def _cache_for(self, batch: int, length: int):
        return self._row_cache() if self.sliding else self._static_cache(batch, length)

    def _static_cache(self, batch: int, length: int):
        """A static cache for ``batch`` rows of up to ``length`` tokens with the prefix written in; reused
        (rewound to the prefix) while it is large enough, within one call."""
        from transformers import StaticCache

        if self._cache is None or self._cache_shape[0] != batch or self._cache_shape[1] < length:
            length += 64
            cache = StaticCache(config=self.model.config, max_cache_len=length)
            if self.prefix_kv is not None:
                for layer, (k, v) in zip(cache.layers, self.prefix_kv):
                    layer.lazy_initialization(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
                    layer.keys[:, :, :self.prefix_len] = k
                    layer.values[:, :, :self.prefix_len] = v
            self._cache, self._cache_shape = cache, (batch, length)
        for layer in self._cache.layers:  # rewind to the end of the prefix
            layer.cumulative_length.fill_(self.prefix_len)
        return self._cache

    def left_pad(self, rows: list[list[int]]):
        """Input ids (B, W), attention mask (B, P + W) and position ids (B, W) of left-padded rows."""
        B, P, dev = len(rows), self.prefix_len, self.device
        width = max(len(s) for s in rows)
        ids = torch.full((B, width), self.pad_id, dtype=torch.long, device=dev)
        mask = torch.zeros((B, P + width), dtype=torch.long, device=dev)
        mask[:, :P] = 1
        pos = torch.zeros((B, width), dtype=torch.long, device=dev)
        for b, s in enumerate(rows):  # left-pad each suffix against the prefix
            n = len(s)
            ids[b, width - n:] = torch.tensor(s, device=dev)
            mask[b, P + width - n:] = 1
            pos[b, width - n:] = torch.arange(P, P + n, device=dev)
        return ids, mask, pos

    def _check_fits(self, tokens: int) -> None:
        """The prefix, a suffix and its continuation must fit the model's context."""
        context = getattr(self.model.config, "max_position_embeddings", None)
        if context and self.prefix_len + tokens > context:
            raise LocasError(f"the prompt ({self.prefix_len} + {tokens} tokens with the answer) is longer than the "
                             f"model's context ({context}); ask a shorter question or lower --max-new-tokens")

    def _groups(self, suffixes: list[list[int]], pad: bool):
        """(start, rows) batches of at most ``batch_size``; with ``pad`` the last is filled with copies."""
        if not suffixes:
            return
        if any(len(s) == 0 for s in suffixes):
            raise LocasError("every question needs at least one token")
        batch = min(self.batch_size, len(suffixes))
        for lo in range(0, len(suffixes), batch):
            group = suffixes[lo:lo + batch]
            yield lo, group + [group[-1]] * (batch - len(group)) if pad else group

    # ---- generating -------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, suffixes: list[list[int]], max_new_tokens: int | None = None, *,
                 sampling: Sampling | None = None, topk: int = 0, min_new_tokens: int = 0,
                 streamer=None) -> list[Continuation]:
        """One continuation per suffix: greedy, or sampled with ``sampling``.

        ``min_new_tokens`` forbids the stop tokens until a row has that many tokens that are not blank
        (``1``: never an empty or whitespace-only answer, within the length limit); ``topk`` keeps the
        top-k logits of every generated position; ``streamer``
        (e.g. transformers' ``TextStreamer``) receives the first row's tokens as they come.
        """
        limit = max_new_tokens or self.max_new_tokens
        out: list[Continuation] = []
        t0 = time.perf_counter()
        self._cache = None  # a fresh static cache per call, sized by its first batch
        # greedy batches are padded to a fixed size (one static cache); sampled ones are not (the draws
        # of a row must not depend on how many rows follow it)
        for lo, rows in self._groups(suffixes, pad=sampling is None):
            n = min(len(rows), len(suffixes) - lo)
            out.extend(self._decode(rows, limit, sampling, topk, min_new_tokens, streamer)[:n])
        self.decode_s += time.perf_counter() - t0
        self.answered += len(suffixes)
        return out

    def _decode(self, rows, limit, sampling, topk, min_new_tokens, streamer) -> list[Continuation]:
        B, dev = len(rows), self.device
        ids, mask, pos = self.left_pad(rows)
        self._check_fits(ids.shape[1] + limit)
        cache = self._cache_for(B, self.prefix_len + ids.shape[1] + limit)
        next_pos = pos[:, -1:] + 1  # (B, 1)
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        outs = [Continuation([]) for _ in range(B)]
        values: list[list[torch.Tensor]] = [[] for _ in range(B)]
        index: list[list[torch.Tensor]] = [[] for _ in range(B)]
        stops = torch.tensor(sorted(self.stop_ids), dtype=torch.long, device=dev)
        blank = blank_token_ids(self.tokenizer) if min_new_tokens else frozenset()
        content = [0] * B  # non-blank tokens so far, per row
        for _ in range(limit):
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                                **cache_arg(cache)).logits[:, -1]  # (B, V)
            if topk:  # the model's own distribution, before any stop token is forbidden
                v, i = logits.float().topk(min(topk, logits.shape[-1]), dim=-1)  # (B, k)
                v, i = v.cpu(), i.cpu()
            short = [b for b in range(B) if content[b] < min_new_tokens]
            if short and len(stops) < logits.shape[-1]:
                logits = logits.clone()
                rows = torch.tensor(short, device=dev)
                logits[rows[:, None], stops[stops < logits.shape[-1]][None]] = float("-inf")
            token = draw(logits, sampling)  # (B,)
            for b in range(B):
                if done[b]:
                    continue
                t = int(token[b])
                if topk:
                    values[b].append(v[b])
                    index[b].append(i[b])
                if t in self.stop_ids:
                    done[b] = True
                    outs[b].stop = t
                else:
                    outs[b].tokens.append(t)
                    content[b] += t not in blank
                    if streamer is not None and b == 0:
                        streamer.put(torch.tensor([t]))
            if bool(done.all()):
                break
            ids, pos = token[:, None], next_pos
            next_pos = next_pos + 1
            mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=dev)], dim=1)
        if streamer is not None:
            streamer.end()
        if topk:
            for b, o in enumerate(outs):
                o.topk_values, o.topk_index = torch.stack(values[b]), torch.stack(index[b])
        return outs

    def answer_ids(self, suffixes: list[list[int]], streamer=None, min_new_tokens: int = 0) -> list[list[int]]:
        """Greedy continuations (stop tokens excluded) of ``prefix + suffix`` for every suffix."""
        return [c.tokens for c in self.generate(suffixes, streamer=streamer, min_new_tokens=min_new_tokens)]

    def answer(self, suffixes: list[list[int]], streamer=None, min_new_tokens: int = 0) -> list[str]:
        """Greedy answers as text (``min_new_tokens=1``: never blank while the length limit allows)."""
        return [self.tokenizer.decode(a, skip_special_tokens=True).strip()
                for a in self.answer_ids(suffixes, streamer, min_new_tokens)]

    # ---- scoring a given continuation ---------------------------------------------------------------
    @torch.no_grad()
    def nll(self, suffixes: list[list[int]], targets: list[list[int]]) -> list[float]:
        """Mean NLL of each ``target`` right after ``prefix + suffix`` (teacher forcing, batched)."""
        if len(suffixes) != len(targets) or any(not t for t in targets):
            raise LocasError("every suffix needs a non-empty target to score")
        out: list[float] = []
        rows = [s + t for s, t in zip(suffixes, targets)]
        self._cache = None
        for lo, group in self._groups(rows, pad=False):
            ids, mask, pos = self.left_pad(group)
            cache = self._cache_for(len(group), self.prefix_len + ids.shape[1])
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                                **cache_arg(cache)).logits.float()  # (B, W, V)
            W = ids.shape[1]
            for b in range(len(group)):
                s, t = suffixes[lo + b], targets[lo + b]
                start = W - len(group[b]) + len(s) - 1  # the position that predicts the first target token
                pred = logits[b, start:start + len(t)]  # (A, V)
                out.append(float(F.cross_entropy(pred, torch.tensor(t, device=pred.device))))
        return out

    @property
    def questions_per_second(self) -> float:
        return self.answered / self.decode_s if self.decode_s else 0.0
