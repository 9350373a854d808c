"""Test-time training objectives over one window.

* ``NTP``       next-token prediction on the window.
* ``SD``/``ST`` self-distillation: the teacher is the frozen base model reading a longer context
                (up to ``sd_context`` tokens ending at the window's end); the student is the memory
                model reading only the window. Loss = KL(teacher || student) per scored token,
                optionally restricted (and renormalised) to the teacher's top-k tokens.
* ``MIX``       ``NTP + mix_weight * SD``.

Every objective also returns the per-token NLL of the student, which is the reported score: one
forward pass serves both the score and the first update step.

    >>> obj = get_objective("MIX", mix_weight=0.5, topk=64)
    >>> teacher = obj.teacher(lm, tokens, start, end, context=4096) if obj.needs_teacher else None
    >>> loss, nll = obj(student_logits, window_ids, teacher)   # scalar, (T-1,)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import LocasError


@dataclass
class TeacherTargets:
    """Teacher next-token distributions for the window's scored positions."""

    logprobs: torch.Tensor  # (T-1, k) log-probabilities (renormalised over ``index`` when top-k)
    index: torch.Tensor | None  # (T-1, k) vocabulary ids, or None for the full vocabulary


@torch.no_grad()
def teacher_targets(lm, tokens: torch.Tensor, start: int, end: int, context: int, topk: int = 0) -> TeacherTargets:
    """Base model (memory off) reading ``tokens[max(0, end - context):end]``; targets for ``start+1..end-1``."""
    lo = max(0, end - max(context, end - start))
    ids = tokens[lo:end][None].to(lm.device)
    with lm.disabled():
        logits = lm.model(input_ids=ids, use_cache=False).logits[0].float()  # (end-lo, V)
    logits = logits[start - lo: end - lo - 1]  # (T-1, V) predictions of tokens start+1..end-1
    if topk and topk < logits.shape[-1]:
        values, index = logits.topk(topk, dim=-1)
        return TeacherTargets(torch.log_softmax(values, -1), index)
    return TeacherTargets(torch.log_softmax(logits, -1), None)


def distill_kl(student_logits: torch.Tensor, teacher: TeacherTargets) -> torch.Tensor:
    """Mean over positions of KL(teacher || student); student_logits (T-1, V)."""
    student = student_logits.float()
    if teacher.index is not None:
        student = student.gather(-1, teacher.index)
    logq = torch.log_softmax(student, -1)
    p = teacher.logprobs.exp()
    return (p * (teacher.logprobs - logq)).sum(-1).mean()


class Objective:
    name = "NTP"
    needs_teacher = False

    def __init__(self, mix_weight: float = 1.0, topk: int = 0):
        self.mix_weight = mix_weight
        self.topk = topk

    def teacher(self, lm, tokens, start, end, context):
        return teacher_targets(lm, tokens, start, end, context, self.topk)

    def __call__(self, logits: torch.Tensor, ids: torch.Tensor, teacher: TeacherTargets | None):
        """logits (1, T, V), ids (1, T) -> (loss scalar, per-token NLL (T-1,) float32)."""
        nll = F.cross_entropy(logits[0, :-1].float(), ids[0, 1:], reduction="none")
        return self.combine(nll, logits[0, :-1], teacher), nll

    def combine(self, nll, student_logits, teacher):
        return nll.mean()


class SelfDistillation(Objective):
    name = "SD"
    needs_teacher = True

    def combine(self, nll, student_logits, teacher):
        return distill_kl(student_logits, teacher)


class Mix(Objective):
    name = "MIX"
    needs_teacher = True

    def combine(self, nll, student_logits, teacher):
        return nll.mean() + self.mix_weight * distill_kl(student_logits, teacher)


OBJECTIVES = {"NTP": Objective, "SD": SelfDistillation, "ST": SelfDistillation, "MIX": Mix}


def get_objective(name: str, mix_weight: float = 1.0, topk: int = 0) -> Objective:
    key = name.upper()
    if key not in OBJECTIVES:
        raise LocasError(f"unknown loss '{name}'; choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[key](mix_weight=mix_weight, topk=topk)
