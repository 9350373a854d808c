"""The generation scheduler: concurrent requests decoded together, each row with its own memory.

Requests wait at most ``max_wait_ms`` for company (up to ``max_batch``), then one ``Decoder`` call
(the one generator of locas) decodes them together on a KV cache: row ``b`` reads the batch memory's
row ``b`` (``core.memory.batch_memories``: memories of other widths padded with zero-value slots and
rescaled, so each row gives what its memory gives alone; a row without memory is the exact base
model). Every row has its own sampler (its own seeded generator), token limit, stop strings and stop
tokens (EOS for all, as ``lm.generate``; a chat row also ends at its turn's end token);
tokens reach each request as they come (streaming), and a request whose client left is dropped at
its next token.

    >>> batcher = Batcher(lm, max_batch=16, max_wait_ms=10)
    >>> req = batcher.submit(Generation(prompt_ids, memory=mem, max_tokens=64, sampling=None))
    >>> req.future.result().text
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from ..core.memory import batch_memories
from ..text.decoding import Decoder, Sampling, eos_token_ids


@dataclass
class Generation:
    """One row to decode, and what it produced."""

    prompt_ids: list[int]
    memory: torch.Tensor | None = None  # (L, 1, r, d, C), or None: the exact base model
    max_tokens: int = 16
    sampling: Sampling | None = None  # None: greedy
    stop: list[str] = field(default_factory=list)
    stop_ids: frozenset | None = None  # tokens that end this row, not returned (None: the model's EOS)
    listener: object = None  # listener(delta_text) for streaming, called from the decoding thread
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    cancelled: bool = False
    future: Future = field(default_factory=Future)
    tokenizer: object = None
    _sent: int = 0

    def push(self, token: int) -> bool:
        """A new token; returns False to end the row (a stop string, or the client left)."""
        if self.cancelled:
            self.finish_reason = self.finish_reason or "cancelled"
            return False
        if token in self.stop_ids:
            self.finish_reason = "stop"
            return False
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        cut = min((text.find(s) for s in self.stop if s and s in text), default=-1)
        if cut >= 0:
            self.text, self.finish_reason = text[:cut], "stop"
            self._emit()
            return False
        self.text = text
        hold = max((len(s) - 1 for s in self.stop if s), default=0)  # a stop string may still be forming
        self._emit(upto=len(text) - hold)
        return True

    def _emit(self, upto: int | None = None) -> None:
        end = len(self.text) if upto is None else max(upto, self._sent)
        if self.listener is not None and end > self._sent:
            self.listener(self.text[self._sent:end])
        self._sent = end

    def finish(self, out) -> None:
        if self.finish_reason is None:
            self.finish_reason = "length"
        self._emit()
        if not self.future.done():
            self.future.set_result(self)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class Batcher:
    """A thread that decodes queued ``Generation`` rows in batches on ``lm``."""

    def __init__(self, lm, max_batch: int = 16, max_wait_ms: float = 10.0):
        self.lm, self.max_batch, self.max_wait = lm, max_batch, max_wait_ms / 1000
        self.queue: queue.Queue[Generation | None] = queue.Queue()
        self.batches = 0
        self.rows = 0
        self.dropped = 0  # rows whose client left before they finished
        self.eos = eos_token_ids(lm.tokenizer, lm.model)  # what lm.generate stops at: a row's default
        self.thread = threading.Thread(target=self._loop, name="locas-batcher", daemon=True)
        self.thread.start()

    def submit(self, gen: Generation) -> Generation:
        gen.tokenizer = self.lm.tokenizer
        self.queue.put(gen)
        return gen

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.perf_counter() + self.max_wait
            while len(batch) < self.max_batch:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    nxt = self.queue.get(timeout=left)
                except queue.Empty:
                    break
                if nxt is None:
                    self.queue.put(None)  # close after this batch
                    break
                batch.append(nxt)
            for rows in self._fitting([g for g in batch if not g.cancelled]):
                self._run(rows)

    def _fitting(self, rows: list[Generation]) -> list[list[Generation]]:
        """Rows split so that each batch fits the context: its rows are left-padded to the longest prompt
        and decoded for the largest ``max_tokens``."""
        groups: list[list[Generation]] = []
        longest = most = 0
        for g in rows:
            a, b = max(longest, len(g.prompt_ids)), max(most, g.max_tokens)
            if groups and a + b <= self.lm.max_length:
                groups[-1].append(g)
                longest, most = a, b
            else:
                groups.append([g])
                longest, most = len(g.prompt_ids), g.max_tokens
        return groups

    def _run(self, rows: list[Generation]) -> None:
        lm = self.lm
        try:
            memory = batch_memories([g.memory for g in rows])
            context = lm.use_memory(memory) if memory is not None else lm.disabled()
            with context, torch.no_grad():
                for g in rows:
                    g.stop_ids = self.eos if g.stop_ids is None else g.stop_ids
                # the rows' own stop tokens end them (``Generation.push``); the decoder stops only at their limits
                decoder = Decoder(lm.model, lm.tokenizer, [], batch_size=len(rows), stop_ids=())
                outs = decoder.generate([g.prompt_ids for g in rows], [g.max_tokens for g in rows],
                                        sampling=[g.sampling for g in rows],
                                        on_token=lambda row, token: rows[row].push(token))
            self.batches, self.rows = self.batches + 1, self.rows + len(rows)
            for g, out in zip(rows, outs):
                self.dropped += g.finish_reason == "cancelled"
                g.finish(out)
        except Exception as exc:  # a failed batch fails its requests, never the server
            for g in rows:
                g.fail(exc)
