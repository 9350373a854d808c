"""Window objectives: next-token prediction, self-distillation from a longer-context teacher, and their mix.

* ``ntp``       next-token prediction on the window.
* ``sd``/``st`` self-distillation: the teacher is the frozen base model reading a longer context
                (up to ``sd_context`` tokens ending at the window's end); the student is the memory
                model reading only the window. Loss = KL(teacher || student) per scored token,
                optionally restricted (and renormalised) to the teacher's top-k tokens.
* ``mix``       ``ntp + mix_weight * sd``.

Every window objective also returns the student's per-token NLL, which is the reported score: one
forward pass serves both the score and the first update step.

    >>> obj = make_objective(TrainConfig(objective="mix", mix_weight=0.5, sd_topk=64))
    >>> teacher = obj.teacher(lm, tokens, start, end, context=4096) if obj.needs_teacher else None
    >>> loss, nll = obj.loss(learner, window_ids, teacher)     # scalar, (T-1,); ntp needs no (T, V) logits
    >>> loss, nll = obj(student_logits, window_ids, teacher)   # the same from logits already computed
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...core.head import token_nll
from ..step import teacher_context, train_window
from .base import Objective

TEACHER_CACHE_ELEMENTS = 1 << 28  # teacher targets kept for repeated passes (1 GiB of float32)


@dataclass
class TeacherTargets:
    """Teacher next-token distributions for the window's scored positions."""

    logprobs: torch.Tensor  # (T-1, k) log-probabilities (renormalised over ``index`` when top-k)
    index: torch.Tensor | None  # (T-1, k) vocabulary ids, or None for the full vocabulary


@torch.no_grad()
def teacher_targets(lm, tokens: torch.Tensor, start: int, end: int, context: int, topk: int = 0) -> TeacherTargets:
    """Base model (memory off) reading ``tokens[max(0, end - context):end]``; targets for ``start+1..end-1``."""
    lo = max(0, end - max(context, end - start))
    ids, k = lm.with_bos(tokens[lo:end][None].to(lm.device))
    with lm.disabled():
        logits = lm.model(input_ids=ids, use_cache=False).logits[0, k:].float()  # (end-lo, V)
    logits = logits[start - lo: end - lo - 1]  # (T-1, V) predictions of tokens start+1..end-1
    if topk and topk < logits.shape[-1]:
        values, index = logits.topk(topk, dim=-1)
        return TeacherTargets(torch.log_softmax(values.contiguous(), -1), index)
    return TeacherTargets(torch.log_softmax(logits.contiguous(), -1), None)


class _KL(torch.autograd.Function):
    """Mean over rows of KL(p || softmax(student)), with the gradient written as ``q - p``.

    Autograd's own gradient, ``q * sum(p) - p``, is float noise (~1e-9) where the student equals the teacher
    (a zero memory on the teacher's own context), and Adam scales noise up to a step that differs from one
    CPU's kernels to another's. Here both sides go through the same ``log_softmax`` and ``exp``, so equal
    logits give a gradient of exactly zero.
    """

    @staticmethod
    def forward(ctx, student: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:  # (N, k), (N, k)
        logq = torch.log_softmax(student, -1)
        p = logp.exp()
        ctx.save_for_backward(logq, p)
        return (p * (logp - logq)).sum(-1).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logq, p = ctx.saved_tensors
        return (logq.exp() - p) * (grad / logq.shape[0]), None


def distill_kl(student_logits: torch.Tensor, teacher: TeacherTargets) -> torch.Tensor:
    """Mean over positions of KL(teacher || student); student_logits (T-1, V)."""
    student = student_logits.float()
    if teacher.index is not None:
        student = student.gather(-1, teacher.index)
    return _KL.apply(student.contiguous(), teacher.logprobs.contiguous())


class NextToken(Objective):
    name = "ntp"
    windows = True
    summary = "next-token prediction on each window"
    student_logits = False  # the loss needs the NLL only: the learner's chunked head gives it (core.head)

    def teacher(self, lm, tokens, start, end, context) -> TeacherTargets:
        return teacher_targets(lm, tokens, start, end, context, self.cfg.sd_topk)

    def loss(self, learner, ids: torch.Tensor, teacher: TeacherTargets | None):
        """The learner on the window ids (1, T) -> (loss scalar, per-token NLL (T-1,) float32)."""
        if not self.student_logits:
            nll = learner.nll(ids)[0]
            return nll.mean(), nll
        return self(learner.logits(ids), ids, teacher)

    def __call__(self, logits: torch.Tensor, ids: torch.Tensor, teacher: TeacherTargets | None):
        """logits (1, T, V), ids (1, T) -> (loss scalar, per-token NLL (T-1,) float32)."""
        nll = token_nll(logits, ids)[0]
        return self.combine(nll, logits[0, :-1], teacher), nll

    def combine(self, nll, student_logits, teacher):
        return nll.mean()

    def update(self, learner, optimizer, segment, plan) -> dict:
        """The plan's passes over the segment's windows (``steps_per_window`` steps each), or passes until its
        CPU deadline; the NLL is the first pass's, before each update."""
        teachers: dict = {}
        cached = 0
        nll, n, skipped, windows = 0.0, 0, 0, 0
        for (span,) in plan.batches(segment.spans):
            teacher = teachers.get(span)
            if teacher is None and self.needs_teacher and plan.deadline is not None:  # passes repeat: keep it
                with learner.frozen():
                    teacher = self.teacher(learner.lm, segment.tokens, *span, teacher_context(learner.lm, self.cfg))
                if cached + teacher.logprobs.numel() <= TEACHER_CACHE_ELEMENTS:
                    teachers[span], cached = teacher, cached + teacher.logprobs.numel()
            score, skip = train_window(learner, optimizer, self, segment.tokens, span, self.cfg, teacher)
            if score is not None and windows < len(segment.spans):  # NLL before training, first pass only
                nll, n = nll + float(score.sum()), n + score.numel()
            skipped, windows = skipped + int(skip), windows + 1
        return {"nll": nll / max(n, 1), "skipped": skipped, "steps": windows * self.cfg.steps_per_window}


class SelfDistillation(NextToken):
    name = "sd"
    needs_teacher = True
    student_logits = True
    summary = "KL to the frozen model reading a longer context (--sd-context, --sd-topk); st is the same"

    def combine(self, nll, student_logits, teacher):
        return distill_kl(student_logits, teacher)


class Mix(NextToken):
    name = "mix"
    needs_teacher = True
    student_logits = True
    summary = "ntp + --mix-weight x sd"

    def combine(self, nll, student_logits, teacher):
        return nll.mean() + self.cfg.mix_weight * distill_kl(student_logits, teacher)
