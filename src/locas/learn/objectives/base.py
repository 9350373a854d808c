"""What every test-time objective is: a loss on a plain piece of text, and how it updates a learner on it.

An objective gets a ``Segment`` (token stream, its windows, its text and passages; no harness
object) and a ``Plan`` (how many passes, or a CPU deadline; the run's random generators), and
trains the learner's memory on the segment with its own loss. Window objectives (``windows =
True``: ntp, sd, mix) can also *score* each window before learning it, which the streaming loop
(``locas.learn.stream``) needs; the others (selfstudy, grpo) learn from things they make from the
segment (probes, cloze questions).

    >>> stats = objective.update(learner, optimizer, segment, plan)     # dict of per-segment stats
"""

from __future__ import annotations


class Objective:
    """Base class; subclasses set ``name`` and implement ``update``."""

    name = ""
    windows = False  # can score-then-update text windows (the streaming protocol)
    needs_teacher = False
    summary = ""  # one line for `locas objectives`
    requires: tuple[str, ...] = ()  # modules of an optional extra it needs (locas/extras.py)

    def __init__(self, cfg, settings=None):
        self.cfg = cfg
        self.settings = settings

    def update(self, learner, optimizer, segment, plan) -> dict:
        """Train ``learner`` on ``segment`` for the time ``plan`` allows; returns per-segment stats."""
        raise NotImplementedError
