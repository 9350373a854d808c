"""The learner protocol: one method in the streaming and segment loops (Locas, Locas-MLP, TempLoRA, baselines).

A learner owns what a method keeps between windows (a memory, an adapter, nothing). The loops
call ``begin`` once, then for each window ``learn`` (score, then update; trainable learners) or
``score`` (frozen baselines), and ``finish`` at the end. ``frozen()`` gives the exact base model
(every teacher reads through it), ``state()`` what answering needs (``ModelState``).

    >>> learner = make_learner("locas", lm, cfg)
    >>> learner.begin(tokens, (0, 1024))
    >>> nll, skipped = learner.learn(optimizer, objective, tokens, (0, 1024), cfg)
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ..core.head import next_token_nll
from ..core.memory import clip_vectors_
from ..core.model import ModelState
from .step import train_window


class Learner:
    """A method in the streaming protocol. Subclasses define how a window is scored and learned."""

    name = "base"
    trainable = False  # has parameters the loops' optimiser trains

    def __init__(self, lm, cfg):
        self.lm = lm
        self.cfg = cfg

    def begin(self, tokens: torch.Tensor, first_span: tuple[int, int]) -> None:
        """Called once before the first window (e.g. to initialise a memory)."""

    def finish(self) -> None:
        """Called once after the stream (e.g. to remove adapters)."""

    def extra_params(self) -> int:
        return 0

    def parameters(self) -> list[torch.Tensor]:
        return []

    @contextmanager
    def applied(self):
        """``lm.model`` (or the module that wraps it) with this learner's state on: a memory installed, an adapter
        active, or nothing."""
        yield self.lm.model

    def logits(self, ids: torch.Tensor, **inputs) -> torch.Tensor:
        """(B, T) -> (B, T, V) with the learner's current state; ``inputs``: attention_mask, position_ids,
        logits_to_keep (then (B, K, V))."""
        ids, k = self._from_bos(ids, inputs)
        with self.applied() as model:
            logits = model(input_ids=ids, use_cache=False, **inputs).logits
        return logits if "logits_to_keep" in inputs else logits[:, k:]

    def nll(self, ids: torch.Tensor, **inputs) -> torch.Tensor:
        """Per-token NLL (B, T-1) of ``ids`` with the learner's current state, through the head in chunks
        (``core.head``: no (T, V) logits); differentiable. ``inputs``: attention_mask, position_ids."""
        ids, k = self._from_bos(ids, inputs)
        with self.applied() as model:
            return next_token_nll(model, ids, **inputs)[:, k:]

    def _from_bos(self, ids: torch.Tensor, inputs: dict) -> tuple[torch.Tensor, int]:
        """A window of a text (no mask, no positions) read from the model's BOS (``lm.with_bos``); a batch the
        caller laid out itself (a mask or positions: prompts, which carry their own BOS) as it is."""
        if "attention_mask" in inputs or "position_ids" in inputs:
            return ids, 0
        return self.lm.with_bos(ids)

    @contextmanager
    def frozen(self):
        """The exact base model while active: what a teacher reads (memory off, adapters off)."""
        with self.lm.disabled():
            yield

    def state(self) -> ModelState:
        """What answering with this learner needs (a memory, an adapter module, or nothing)."""
        return ModelState()

    def score(self, tokens: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Per-token NLL (T-1,) of the window ``tokens[start:end]``, no learning."""
        with torch.no_grad():
            return self.nll(tokens[start:end][None].to(self.lm.device))[0]

    def learn(self, optimizer, objective, tokens: torch.Tensor, span: tuple[int, int], cfg,
              teacher=None) -> tuple[torch.Tensor, bool]:
        """Score the window, then update on it; returns (NLL (T-1,) before the update, skipped?)."""
        return train_window(self, optimizer, objective, tokens, span, cfg, teacher)

    def before_step(self) -> None:
        """Hook after the backward, before each optimiser step (Locas's gradient-informed value init)."""

    def update_scales(self) -> list:
        """Per parameter: None, or a number or tensor broadcast over it that multiplies the optimiser's step (a
        per-channel learning rate)."""
        return [None] * len(self.parameters())

    def after_step(self) -> None:
        """Hook after each optimiser step (norm clipping for Locas)."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"param.{i}": p.detach() for i, p in enumerate(self.parameters())}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for i, p in enumerate(self.parameters()):
                p.copy_(tensors[f"param.{i}"])


class MemoryLearner(Learner):
    """A learner whose state is a Locas memory on ``self.layers``: the parameter ``self.memory`` (L', 1, r, d, C).

    The model reads ``model_memory()``: the parameter with its values times ``cfg.output_scale(r)`` (``--tau-scale``,
    ``--tau-law``) and, with ``gain_lr > 0``, a learned per-layer gain ``exp(self.log_gain)``, so what is saved,
    fused or served has the scale baked in and the model's own ``tau`` stays the paper's.
    Clipping (``value_radius`` for values, 1 for keys and gates), the per-channel learning rate
    (``key_lr_scale``) and the gradient-informed first step (``value_init="gradient"``) act on the parameter.
    """

    trainable = True
    memory: torch.nn.Parameter
    layers: list[int]
    log_gain: torch.nn.Parameter | None = None  # (L', 1, 1, 1, 1) with gain_lr > 0: LocasLearner.begin makes it

    def parameters(self):
        return [self.memory] if self.log_gain is None else [self.memory, self.log_gain]

    def extra_params(self):
        """The memory's trainable numbers (``lm.memory_parameters``: an unused gate channel of an attention slot not
        counted) and the gains."""
        gain = 0 if self.log_gain is None else self.log_gain.numel()
        return self.lm.memory_parameters(self.memory.shape[-3], list(self.layers)) * self.memory.shape[1] + gain

    def _channel(self, key: float, value: float) -> torch.Tensor:
        """(C,) per-channel factors: ``key`` on keys (and gates), ``value`` on values."""
        factors = torch.full((self.memory.shape[-1],), float(key), dtype=self.memory.dtype, device=self.memory.device)
        factors[-1] = value
        return factors

    def value_scale(self) -> float:
        return self.cfg.output_scale(self.memory.shape[-3])

    def model_memory(self) -> torch.Tensor:
        """(L', 1, r, d, C) as the model reads it: values times the output scale and the learned gain
        (differentiable)."""
        scale = self.value_scale()
        if self.log_gain is not None:  # keys and gates x 1, values x scale * exp(log_gain)
            factors = torch.ones_like(self.log_gain).expand(*self.log_gain.shape[:-1], self.memory.shape[-1] - 1)
            return self.memory * torch.cat([factors, scale * self.log_gain.exp()], dim=-1)  # (L', 1, 1, 1, C)
        return self.memory if scale == 1.0 else self.memory * self._channel(1.0, scale)

    @contextmanager
    def applied(self):
        with self.lm.use_memory(self.model_memory(), self.layers):
            yield self.lm.model

    def before_step(self):
        """``value_init="gradient"``: while every value is still zero, write them in closed form from this step's
        gradient G (L', 1, r, d): ``v_j = -radius * G_j / max_k |G_k|`` per layer; the optimiser then moves only
        keys and gates on this step."""
        if self.cfg.value_init != "gradient" or self.memory.grad is None:
            return
        with torch.no_grad():
            if self.memory[..., -1].any():
                return
            grad = self.memory.grad[..., -1]  # (L', 1, r, d)
            top = grad.norm(dim=-1, keepdim=True).amax(dim=-2, keepdim=True).clamp(min=1e-12)  # (L', 1, 1, 1)
            self.memory[..., -1] = -self.cfg.value_radius * grad / top
            self.memory.grad[..., -1] = 0.0

    def update_scales(self):
        k, a = self.cfg.key_lr_scale, getattr(self.cfg, "attn_lr_scale", 1.0)
        scale = None if k == 1.0 else self._channel(k, 1.0)  # (C,)
        attn = [self.lm.wrappers[i].reads_output for i in self.layers]
        if a != 1.0 and any(attn):  # (L', 1, 1, 1, 1): the attention-path slots' lr
            slots = torch.tensor([a if x else 1.0 for x in attn], dtype=self.memory.dtype, device=self.memory.device)
            slots = slots.view(-1, 1, 1, 1, 1)
            scale = slots if scale is None else slots * scale
        return [scale] if self.log_gain is None else [scale, self.cfg.gain_lr / self.cfg.lr]

    def after_step(self):
        with torch.no_grad():  # in place on the parameter itself: its version moves, so no cached copy goes stale
            clip_vectors_(self.memory, radius=self._channel(1.0, self.cfg.value_radius))

    def state(self) -> ModelState:
        return ModelState(memory=self.model_memory().detach(), layers=self.layers, site=self.lm.site)

    def full_memory(self) -> torch.Tensor:
        """(L, 1, r, d, C) as the model reads it, with zeros on layers without memory."""
        mem = self.model_memory().detach()
        full = torch.zeros((self.lm.num_layers,) + tuple(mem.shape[1:]), dtype=mem.dtype, device=mem.device)
        full[self.layers] = mem
        return full
