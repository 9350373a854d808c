"""Memorising one text with any objective: what `locas memorize` and the server's background jobs run.

Window objectives (ntp, sd, mix) without a budget stream the text window by window (each scored
before it is learned, ``epochs`` passes); self-study, GRPO, or any objective under a CPU budget
train the whole text as one segment (``epochs`` passes over what the objective trains on).

    >>> result = memorize_text(lm, text, TrainConfig(objective="selfstudy"), settings, examples=train)
    >>> result.learner.full_memory(), result.summary()
    >>> memorize_text(lm, text, cfg, on_progress=lambda fraction, info: print(fraction, info))
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..errors import LocasError
from ..text.tokens import tokenize_text
from .learners import make_learner
from .objectives import ObjectiveSettings, make_objective
from .segments import Segment, train_segments
from .stream import stream

# what an objective trains with when the command leaves it unset (chosen on benchmarks/recall.py's tuning documents
# for selfstudy: docs/RECALL.md); window objectives keep TrainConfig's defaults (one pass, lr 3e-2, 1024-token windows)
OBJECTIVE_DEFAULTS = {"selfstudy": {"epochs": 1, "lr": 0.1, "window_size": 256}, "grpo": {"epochs": 8}}


@dataclass
class MemorizeResult:
    """A trained learner and what the run did."""

    learner: object
    objective: str
    tokens: int
    streamed: object = None  # StreamResult of a streaming run
    stats: dict = field(default_factory=dict)  # train_segments' stats of a segment run
    train_s: float = 0.0

    @property
    def steps(self) -> int:
        if self.streamed is not None:
            return len(self.streamed.window_nll)
        return self.stats["segments"][0]["steps"]

    def summary(self) -> dict:
        """The facts a memory file records about its training."""
        return {"objective": self.objective, "tokens": self.tokens, "steps": self.steps,
                "train_s": round(self.train_s, 2)}


def objective_defaults(objective: str, model: str | None = None) -> dict:
    """The TrainConfig values ``objective`` trains with on ``model`` unless told otherwise (``OBJECTIVE_DEFAULTS``,
    then what the model changes: ``locas.learn.presets.MODEL_SETTINGS``)."""
    from .presets import model_settings

    return {**OBJECTIVE_DEFAULTS.get(str(objective).lower(), {}), **model_settings(model, objective)}


def memorize_text(lm, text: str, cfg, settings: ObjectiveSettings | None = None, *, tokens: torch.Tensor | None = None,
                  start_memory: torch.Tensor | None = None, budget_s: float | None = None, examples=None,
                  progress: bool = True, on_progress=None) -> MemorizeResult:
    """Train a Locas memory on ``text`` with ``cfg.objective``.

    ``tokens`` (default: the whole text) is what is learned; ``start_memory`` continues a memory;
    ``budget_s`` trains for that many CPU-seconds of the process instead of ``cfg.epochs`` passes;
    ``examples`` are prepared self-study probes. ``on_progress(fraction | None, info)`` sees every
    window or step (``info``: ``{"tokens_done", "steps"}``, and for a window objective ``"nll"``, the window's
    mean NLL scored before it was learned).
    """
    tokens = tokenize_text(lm.tokenizer, text) if tokens is None else tokens.flatten().cpu()
    if len(tokens) < 2:
        raise LocasError(f"the text has {len(tokens)} token(s); a memory needs a text of at least 2 tokens")
    objective = make_objective(cfg, settings)
    t0 = time.perf_counter()
    if objective.windows and budget_s is None:
        learner = make_learner("locas", lm, cfg, memory=start_memory)

        def window(done, total, result):
            if on_progress is not None:
                nll = result.window_nll[-1] / max(result.window_tokens[-1], 1)
                on_progress(done / total, {"tokens_done": result.tokens, "steps": done, "nll": nll})

        streamed = stream(learner, tokens, cfg, desc="memorize", progress=progress, on_window=window)
        return MemorizeResult(learner, cfg.objective, len(tokens), streamed=streamed, train_s=time.perf_counter() - t0)
    c0 = time.process_time()
    bar = tqdm(total=None, desc=f"memorize ({cfg.objective})", unit="step", disable=not progress, dynamic_ncols=True)

    def step(done, total):
        if total and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)
        if on_progress is not None:
            fraction = done / total if total else min((time.process_time() - c0) / budget_s, 1.0) if budget_s else None
            on_progress(fraction, {"tokens_done": len(tokens), "steps": done})

    segment = Segment.from_text(lm.tokenizer, text, cfg.window_size, tokens=tokens, seed=cfg.seed)
    try:  # one segment: a bar of steps (with their total when it is known), not of the single segment
        learner, stats = train_segments(lm, [segment], objective, cfg, passes=cfg.epochs, epochs=1, budget_s=budget_s,
                                        start_memory=start_memory, examples=examples, progress=False, on_step=step)
    finally:
        bar.close()
    return MemorizeResult(learner, cfg.objective, len(tokens), stats=stats, train_s=time.perf_counter() - t0)
