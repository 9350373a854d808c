"""One optimisation step on the memory, the way every learner and objective takes it.

``train_window`` scores a window and updates on it with the same forward pass (the streaming
protocol); ``guarded_step`` applies an optimiser step and rolls it back if a parameter turns
non-finite, so one bad window never poisons a memory.

    >>> optimizer = make_optimizer(learner.parameters(), cfg)
    >>> nll, skipped = train_window(learner, optimizer, objective, tokens, (0, 1024), cfg)
    >>> ok = guarded_step(learner, optimizer)      # after loss.backward()
"""

from __future__ import annotations

import math

import torch

from ..errors import LocasError


def make_optimizer(params, cfg) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(cfg.adam_beta1, cfg.adam_beta2),
                             eps=cfg.adam_eps)


def lr_at(cfg, index: int, total: int) -> float:
    """Learning rate of step ``index`` of ``total``: constant, or cosine from ``cfg.lr`` down to 10 %; times a
    linear warm-up ``(index + 1) / warmup_windows`` over the first ``warmup_windows`` steps."""
    lr = cfg.lr
    if cfg.schedule == "cosine" and total > 1:
        lr = cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * index / (total - 1))))
    warmup = cfg.warmup_windows
    if warmup and index < warmup:
        lr *= (index + 1) / warmup
    return lr


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def teacher_context(lm, cfg) -> int:
    """Tokens the self-distillation teacher reads, ending at the window's end."""
    return min(lm.max_length, cfg.sd_context or 4 * cfg.window_size)


def guarded_step(learner, optimizer) -> bool:
    """The learner's pre-step hook, an optimiser step scaled per element by ``learner.update_scales()``, the
    post-step hook; rolled back (False) if a parameter turns non-finite."""
    backup = [p.detach().clone() for p in learner.parameters()]
    learner.before_step()
    optimizer.step()
    with torch.no_grad():  # a per-channel learning rate: AdamW's whole step is linear in lr
        for p, b, scale in zip(learner.parameters(), backup, learner.update_scales()):
            if scale is not None:
                p.copy_(b + scale * (p - b))
    learner.after_step()
    if all(torch.isfinite(p).all() for p in learner.parameters()):
        return True
    with torch.no_grad():
        for p, b in zip(learner.parameters(), backup):
            p.copy_(b)
    return False


def backward_step(learner, optimizer, loss: torch.Tensor) -> bool:
    """Backward and a guarded step; a non-finite loss or update is skipped. Returns True when skipped."""
    if not torch.isfinite(loss):
        return True
    loss.backward()
    return not guarded_step(learner, optimizer)


def train_window(learner, optimizer, objective, tokens, span, cfg, teacher=None) -> tuple[torch.Tensor, bool]:
    """Score the window ``tokens[span]``, then update on it (``cfg.steps_per_window`` steps).

    Returns (per-token NLL (T-1,) before the update, skipped?). ``teacher`` reuses targets
    computed earlier for this window (a window objective's ``teacher(...)``).
    """
    start, end = span
    ids = tokens[start:end][None].to(learner.lm.device)
    if teacher is None and objective.needs_teacher:
        with learner.frozen():
            teacher = objective.teacher(learner.lm, tokens, start, end, teacher_context(learner.lm, cfg))
    skipped = False
    score = None
    tail = cfg.extra_step_tokens
    if tail and teacher is not None and cfg.steps_per_window > 1:
        raise LocasError("--extra-step-tokens works with the ntp objective only (a teacher's targets cover the "
                         "whole window); drop it or use --objective ntp")
    for step in range(cfg.steps_per_window):
        optimizer.zero_grad(set_to_none=True)
        step_ids = ids[:, -tail:] if step and tail and tail < ids.shape[1] else ids  # (1, T) or its last tail tokens
        loss, nll = objective.loss(learner, step_ids, teacher)
        if step == 0:
            score = nll.detach()
        if not torch.isfinite(loss):
            skipped = True
            break
        loss.backward()
        if not guarded_step(learner, optimizer):
            skipped = True
            break
    return score, skipped
