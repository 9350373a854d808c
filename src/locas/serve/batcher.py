"""The generation scheduler: continuous batching of concurrent requests, each row with its own memory.

One thread runs the model. When it is idle, a request waits at most ``max_wait_ms`` for company (up
to ``max_batch`` rows); while rows are decoding, a new request joins them at the next step
(iteration-level scheduling, as vLLM and TGI do): the newcomers' prompts are prefilled together
with their own memories, their KV caches left-padded to the batch's and appended as new rows. Every
step then decodes one token for every row. A row that ends (its limit, a stop token or string, a
client that left) leaves the batch at once, and cache columns no row needs any more are trimmed.

Row ``b`` reads the batch memory's row ``b`` (``core.memory.batch_serving``: written once per batch change
in channel layout from each row's ``ServingMemory``; memories of other widths padded with zero-value slots
and rescaled, so each row gives what its memory gives alone; rows that all share one memory read it once; a
row without memory is the exact base model). Every row has its own sampler (its own seeded
generator, ``text.decoding.draw``), token limit, stop strings and stop tokens (EOS for all, as
``lm.generate``; a chat row also ends at its turn's end token); tokens reach each request as they
come (streaming).

    >>> batcher = Batcher(lm, max_batch=16, max_wait_ms=10)
    >>> req = batcher.submit(Generation(prompt_ids, memory=mem, max_tokens=64, sampling=None))
    >>> batcher.admit([a, b])          # both queued, or Overloaded when the queue is full (the server's 503)
    >>> req.future.result().text
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from ..core.kvcache import cache_arg, new_cache
from ..core.memory import ServingMemory, batch_serving
from ..errors import LocasError
from ..text.decoding import Decoder, Sampling, draw, eos_token_ids


@dataclass
class Generation:
    """One row to decode, and what it produced."""

    prompt_ids: list[int]
    memory: ServingMemory | torch.Tensor | None = None  # (L, 1, r, d, C) or laid out, or None: the base model
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

    def finish(self) -> None:
        if self.finish_reason is None:
            self.finish_reason = "length"
        self._emit()
        if not self.future.done():
            self.future.set_result(self)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


def _left_padded(t: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """``t`` with zeros in front along ``dim`` up to ``length``."""
    extra = length - t.shape[dim]
    if extra <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t.new_zeros(shape), t], dim)


class _Running:
    """The rows decoding together: their KV cache, attention mask, next positions and last tokens."""

    def __init__(self):
        self.rows: list[Generation] = []
        self.cache = None  # transformers DynamicCache: per layer keys/values (B, H, T, D)
        self.mask: torch.Tensor | None = None  # (B, T) 1 where a row has a token
        self.pos: torch.Tensor | None = None  # (B,) the position of each row's last token
        self.last: torch.Tensor | None = None  # (B,) each row's last token: the next step's input

    def add(self, rows, cache, mask, pos, last) -> None:
        """Append rows (their own cache, left-padded): the shorter side is padded in front to the longer."""
        if not self.rows:
            self.rows, self.cache, self.mask, self.pos, self.last = list(rows), cache, mask, pos, last
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([_left_padded(mine.keys, width, 2), _left_padded(theirs.keys, width, 2)])
            mine.values = torch.cat([_left_padded(mine.values, width, 2), _left_padded(theirs.values, width, 2)])
        self.mask = torch.cat([_left_padded(self.mask, width, 1), _left_padded(mask, width, 1)])
        self.rows += rows
        self.pos, self.last = torch.cat([self.pos, pos]), torch.cat([self.last, last])

    def keep(self, index: list[int]) -> None:
        """Keep only rows ``index``; drop the cache columns in front that no row attends to any more."""
        if not index:
            self.rows, self.cache, self.mask, self.pos, self.last = [], None, None, None, None
            return
        sel = torch.tensor(index, device=self.mask.device)
        mask = self.mask[sel]
        lead = int((mask.sum(0) == 0).cumprod(0).sum())  # leading columns masked for every row
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[sel, :, lead:], layer.values[sel, :, lead:]
        self.mask = mask[:, lead:]
        self.rows = [self.rows[i] for i in index]
        self.pos, self.last = self.pos[sel], self.last[sel]


class Overloaded(LocasError):
    """As many rows are waiting as the batcher queues (``max_queue``): a request sheds, never waits unbounded."""


class Batcher:
    """A thread that decodes queued ``Generation`` rows on ``lm``, continuously batched; at most ``max_queue``
    rows wait for a place in the batch (default: one batch, so an admitted row waits at most about one request's
    time; benchmarks/soak.py measured 3.8x the knee's p99 at twice the knee with four batches)."""

    def __init__(self, lm, max_batch: int = 16, max_wait_ms: float = 10.0, max_queue: int | None = None,
                 memory_dtype: torch.dtype | None = None):
        self.lm, self.max_batch, self.max_wait = lm, max_batch, max_wait_ms / 1000
        self.memory_dtype = memory_dtype  # a row's memory tensor is laid out in this dtype (None: its own, float32)
        self.max_queue = max_batch if max_queue is None else max_queue
        self.queue: queue.Queue[Generation | None] = queue.Queue()
        self.steps = 0  # decoding steps (one token for every running row)
        self.shared_steps = 0  # steps that decoded more than one row
        self.peak = 0  # the most rows one step has decoded
        self.rows = 0  # rows finished
        self.dropped = 0  # rows whose client left before they finished
        self.eos = eos_token_ids(lm.tokenizer, lm.model)  # what lm.generate stops at: a row's default
        self.padder = Decoder(lm.model, lm.tokenizer, [], stop_ids=())  # its left padding (no prefix)
        if self.padder.sliding:  # windowed layers would count a padded row's padding inside its window: one row
            self.max_batch = 1  # at a time, unpadded, decodes exactly as transformers' generate does
        self.running = _Running()
        self._closing = False
        self._admitting = threading.Lock()  # the queue check and the puts of one request, together
        self.thread = threading.Thread(target=self._loop, name="locas-batcher", daemon=True)
        self.thread.start()

    def submit(self, gen: Generation) -> Generation:
        gen.tokenizer = self.lm.tokenizer
        self.queue.put(gen)
        return gen

    def admit(self, rows: list[Generation]) -> None:
        """Queue all of ``rows``, or none of them (``Overloaded``) when they would pass ``max_queue`` waiting rows."""
        with self._admitting:
            waiting = self.queue.qsize()
            if waiting + len(rows) > self.max_queue:
                raise Overloaded(f"{waiting} requests are already waiting for the model (the queue holds "
                                 f"{self.max_queue})")
            for g in rows:
                self.submit(g)

    @property
    def active(self) -> int:
        return len(self.running.rows)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=30)

    # ---- the loop ------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._closing:
            newcomers = self._take(wait=not self.running.rows)
            try:
                with torch.no_grad():
                    if newcomers:
                        self._join(newcomers)
                    if self.running.rows:
                        self._step()
            except Exception as exc:  # a failed step fails its rows, never the server
                failed, self.running = self.running.rows + newcomers, _Running()
                self.lm.set_memory(None)
                for g in failed:
                    g.fail(exc)
        self.lm.set_memory(None)
        stopping = LocasError("the server is stopping")
        for g in self.running.rows:
            g.fail(stopping)
        while not self.queue.empty():
            g = self.queue.get_nowait()
            if g is not None:
                g.fail(stopping)

    def _take(self, wait: bool) -> list[Generation]:
        """Requests to start now: when idle, the first one and whatever arrives within ``max_wait``; while
        decoding, whatever is queued (no waiting), up to the free rows."""
        room = self.max_batch - len(self.running.rows)
        got: list[Generation] = []
        deadline = None
        while len(got) < room:
            try:
                if wait and not got:
                    item = self.queue.get()
                    deadline = time.perf_counter() + self.max_wait
                elif deadline is not None:
                    item = self.queue.get(timeout=max(deadline - time.perf_counter(), 0))
                else:
                    item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._closing = True
                break
            if item.cancelled:  # its client left while it waited
                self._end(item)
                continue
            item.stop_ids = self.eos if item.stop_ids is None else item.stop_ids
            got.append(item)
        return got

    def _join(self, rows: list[Generation]) -> None:
        """Prefill the newcomers together (with their memories) and add those still going to the batch."""
        lm = self.lm
        ids, mask, pos = self.padder.left_pad([g.prompt_ids for g in rows])  # (N, W) each
        lm.set_memory_channels(batch_serving([_serving(g, self.memory_dtype) for g in rows]))
        cache = new_cache(lm.model)
        logits = lm.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                          **cache_arg(cache)).logits[:, -1]  # (N, V)
        tokens = draw(logits, [g.sampling for g in rows])  # (N,)
        self.running.add(rows, cache, mask, pos[:, -1] + 1, tokens)
        self._after(tokens, first=len(self.running.rows) - len(rows), changed=True)

    def _step(self) -> None:
        """One token for every running row."""
        run, lm = self.running, self.lm
        mask = torch.cat([run.mask, run.mask.new_ones((len(run.rows), 1))], dim=1)  # (B, T + 1)
        logits = lm.model(input_ids=run.last[:, None], attention_mask=mask, position_ids=run.pos[:, None],
                          use_cache=True, **cache_arg(run.cache)).logits[:, -1]  # (B, V)
        run.mask, run.pos = mask, run.pos + 1
        self.steps += 1
        self.shared_steps += len(run.rows) > 1
        self.peak = max(self.peak, len(run.rows))
        run.last = draw(logits, [g.sampling for g in run.rows])  # (B,)
        self._after(run.last, first=0)

    def _after(self, tokens: torch.Tensor, first: int, changed: bool = False) -> None:
        """Hand rows ``first..`` their new tokens; rows that end leave the batch, and the model gets the batch
        memory of the rows left (``changed``: the rows changed anyway) before the ended rows are answered,
        so that an answered client finds the model as it will stay."""
        run = self.running
        keep, ended = list(range(first)), []
        for b in range(first, len(run.rows)):
            g = run.rows[b]
            if g.push(int(tokens[b - first])) and len(g.tokens) < g.max_tokens:
                keep.append(b)
            else:
                ended.append(g)
        if ended:
            run.keep(keep)
        if ended or changed:  # row b: row b's memory; no rows (or no memories): the plain base model
            self.lm.set_memory_channels(batch_serving([_serving(g, self.memory_dtype) for g in run.rows]))
        for g in ended:
            self._end(g)

    def _end(self, g: Generation) -> None:
        self.rows += 1
        self.dropped += g.cancelled
        if g.cancelled:
            g.finish_reason = g.finish_reason or "cancelled"
        g.finish()


def _serving(g: Generation, dtype: torch.dtype | None = None) -> ServingMemory | None:
    """The row's memory laid out for decoding in ``dtype`` (once per request: a tensor is converted where it is first
    met)."""
    if isinstance(g.memory, torch.Tensor):
        g.memory = ServingMemory.of(g.memory, dtype)
    return g.memory
