"""Training a memory on a sequence of segments: a conversation session by session, or one document.

A ``Segment`` is a plain piece of material (token stream, its windows, its text and passages);
``train_segments`` gives each segment, in order, to the objective's ``update`` with a ``Plan``:
``passes`` passes over what the objective trains on (windows, probes, cloze items), or passes
until a CPU deadline (``budget_s`` CPU-seconds of this process per segment, preparation such as
probe making included, so every objective gets the same compute whatever else runs on the
machine).

    >>> segment = Segment.from_text(tokenizer, text, window=1024)
    >>> learner, stats = train_segments(lm, [segment], make_objective(cfg), cfg, passes=8)
    >>> learner.full_memory()                                        # (L, 1, r, d, C)
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..errors import LocasError
from ..text.sentences import sentences
from ..text.tokens import tokenize_text
from .learners import make_learner
from .step import lr_at, make_optimizer, set_lr
from .stream import check_window, window_spans


@dataclass
class Segment:
    """One piece of the material, in plain terms: no harness objects.

    ``tokens`` is the whole token stream the segment lives in (a teacher may read further back),
    ``span`` its range in it; ``passages`` are (lead-in, utterance) pairs that cloze questions are
    cut from (a conversation's ``Ann said, "`` + turn; a text's sentences), shown after ``header``.
    """

    tokens: torch.Tensor  # (N,)
    span: tuple[int, int]
    text: str = ""
    passages: list[tuple[str, str]] = field(default_factory=list)
    header: str = ""
    seed: int = 0  # seeds what an objective makes from this segment (probes)
    name: str = ""
    window: int = 1024

    @property
    def spans(self) -> list[tuple[int, int]]:
        """Windows of at most ``window`` tokens over ``span`` (consecutive windows share one token)."""
        start, end = self.span
        return window_spans(end, self.window, start) if end - start >= 2 else []

    @property
    def first_window(self) -> tuple[int, int]:
        start, end = self.span
        return start, min(end, start + self.window)

    @classmethod
    def from_text(cls, tokenizer, text: str, window: int, tokens: torch.Tensor | None = None, seed: int = 0,
                  name: str = "text") -> Segment:
        """A whole text as one segment; its sentences are the passages."""
        tokens = tokenize_text(tokenizer, text) if tokens is None else tokens.flatten().cpu()
        return cls(tokens, (0, len(tokens)), text, [("", s) for s in sentences(text)], "", seed, name, window)


@dataclass
class Plan:
    """How long an objective trains on one segment, and the run's random generators.

    ``passes`` passes over the items, or, with ``deadline`` (a ``time.process_time()`` value), as
    many passes as fit before it. With ``optimizer`` and a cosine ``cfg.schedule`` (no deadline),
    the learning rate of every batch follows the cosine over all the batches of the passes.
    """

    passes: int
    rng: random.Random
    generator: torch.Generator
    deadline: float | None = None
    optimizer: object = None
    cfg: object = None
    step: int = 0
    on_step: object = None  # on_step(step, total or None): called before every batch (progress)

    def batches(self, items: list, batch: int = 1, passes: int | None = None, shuffle: bool = False
                ) -> Iterator[list]:
        """Batches of ``items`` to train on: ``passes`` passes (default ``self.passes``), or passes until the
        deadline. The clock is read before every batch; the first batch always runs, and ``shuffle``
        reshuffles ``items`` (in place, with ``rng``) before each pass.

        >>> [b for b in plan.batches([1, 2, 3], batch=2, passes=2)]   # no deadline
        [[1, 2], [3], [1, 2], [3]]
        """
        passes = self.passes if passes is None else passes
        total = passes * -(-len(items) // batch) if self.deadline is None else 0
        done = 0
        while items and (self.deadline is not None or done < passes):
            if shuffle:
                self.rng.shuffle(items)
            for i in range(0, len(items), batch):
                if self.deadline is not None and (done or i) and time.process_time() >= self.deadline:
                    return
                if self.optimizer is not None and self.cfg.schedule == "cosine" and total:
                    set_lr(self.optimizer, lr_at(self.cfg, self.step, total))
                self.step += 1
                if self.on_step is not None:
                    self.on_step(self.step, total or None)
                yield items[i:i + batch]
            done += 1


def train_segments(lm, segments: list[Segment], objective, cfg, *, method: str = "locas", passes: int | None = None,
                   epochs: int | None = None, budget_s: float | None = None, start_memory: torch.Tensor | None = None,
                   examples=None, progress: bool = True, desc: str = "memorise", on_step=None):
    """Train a fresh ``method`` learner (locas or lora) on ``segments`` in order with ``objective``.

    ``epochs`` (default ``cfg.epochs``) passes over the segment list; each segment gets ``passes`` passes
    of the objective (default: one for window objectives, whose windows take ``steps_per_window``
    steps each; ``cfg.steps_per_window`` for the others), or ``budget_s`` CPU-seconds.
    ``examples`` hands prepared probes to a one-segment self-study run; ``on_step(step, total | None)``
    sees every step (``total`` when known). Returns (learner, stats):
    wall and CPU seconds, extra parameters, one stats dict per segment.
    """
    if not segments:
        raise LocasError("nothing to memorise: no segments")
    epochs = cfg.epochs if epochs is None else epochs
    if passes is None:
        passes = 1 if objective.windows else cfg.steps_per_window
    if cfg.schedule == "cosine" and (budget_s is not None or len(segments) * epochs > 1):
        raise LocasError("--schedule cosine needs one run of known length (pg19, or memorize without --budget); "
                         "training segment by segment or under a budget takes --schedule constant")
    if cfg.update_every != 1:
        raise LocasError("--update-every applies to streaming a text (locas pg19); memorize and locomo learn from "
                         "every window: drop it")
    check_window(lm, cfg)
    torch.manual_seed(cfg.seed)  # every run starts from the seed: no dependence on rank or order
    learner = make_learner(method, lm, cfg, memory=start_memory)
    learner.begin(segments[0].tokens, segments[0].first_window)
    optimizer = make_optimizer(learner.parameters(), cfg)
    rng, gen = random.Random(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    t0, c0 = time.perf_counter(), time.process_time()
    per_segment = []
    jobs = [(e, s) for e in range(epochs) for s in segments]
    for epoch, segment in tqdm(jobs, desc=desc, disable=not progress, unit="segment", dynamic_ncols=True):
        c = time.process_time()
        plan = Plan(passes, rng, gen, deadline=None if budget_s is None else c + budget_s, optimizer=optimizer, cfg=cfg,
                    on_step=on_step)
        if examples is not None:
            stats = objective.update(learner, optimizer, segment, plan, examples=examples)
        else:
            stats = objective.update(learner, optimizer, segment, plan)
        per_segment.append({"epoch": epoch, "segment": segment.name, **stats, "cpu_s": time.process_time() - c})
    return learner, {"train_s": time.perf_counter() - t0, "train_cpu_s": time.process_time() - c0,
                     "extra_params": learner.extra_params(), "segments": per_segment}
