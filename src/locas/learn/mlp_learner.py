"""Locas-MLP in the streaming protocol: step-wise writes with NL-SVD compression, or backprop.

``LocasMLPLearner`` keeps a memory of fixed capacity ``(L', 1, capacity, d, 2)`` (free slots are
zero, so ``tau = value_norm / capacity`` never changes) and, for each window, first scores it
with the current memory, then learns from it with the *same* forward pass:

* ``update="nlsvd"``: the scoring backward also yields the gradients for a step-wise write
  (``locas.learn.write``); the window's highest-loss (or all) tokens get new slots. When the next write
  would overflow the capacity, NL-SVD (``locas.learn.nlsvd``) first compresses the memory to
  ``capacity // 2`` slots: the expansion-compression cycle. No optimiser; with ``clip`` the
  weight-norm clipping of PAPER.md 4 follows each write (it bounds the memory's growth but makes
  compression inexact for values longer than 1).
* ``update="bp"``: a memory of ``memory_width`` slots refined by AdamW on the window loss (the
  paper's default). ``init="write"`` fills it on the first window with a step-wise write of that
  window's highest-loss tokens (principled init); any ``locas.core.init`` name (``random``,
  ``highest``, ``activation``) initialises keys from the first window with zero values instead.
  Weight-norm clipping after each step, as for Locas-GLU.

    >>> cfg = MLPTrainConfig(window_size=1024, update="nlsvd", write_eps=4.0, write_count=128, capacity=1024)
    >>> learner = LocasMLPLearner(lm, cfg)        # keyword arguments override the config
    >>> result = stream(learner, tokens, cfg)
    >>> learner.timings            # seconds spent in writes, NL-SVD and backprop steps
"""

from __future__ import annotations

import time

import torch

from ..core.init import INITS
from ..core.memory import CHANNELS, MLP, clip_vectors_
from ..errors import LocasError
from .config import UPDATES, WRITE_TOKENS, MLPTrainConfig, TrainConfig, parse_layers
from .learner import MemoryLearner
from .nlsvd import compress_memory
from .step import train_window
from .write import append_slots, step_write


class LocasMLPLearner(MemoryLearner):
    """Locas-MLP memory on ``cfg.memory_layers``; see the module docstring for the two update rules.

    Settings come from keyword arguments, else from an ``MLPTrainConfig``, else the defaults.
    """

    # trainable: bp steps come from the loops' optimiser (and its schedule); nlsvd writes inside ``learn``

    def __init__(self, lm, cfg: TrainConfig, *, update: str | None = None, init: str | None = None,
                 eps: float | None = None, write_tokens: str | None = None, write_count: int | None = None,
                 capacity: int | None = None, clip: bool | None = None):
        super().__init__(lm, cfg)
        d = MLPTrainConfig()

        def pick(value, field):
            return value if value is not None else getattr(cfg, field, getattr(d, field))

        update, init, eps = pick(update, "update"), pick(init, "mlp_init"), pick(eps, "write_eps")
        write_tokens, write_count = pick(write_tokens, "write_tokens"), pick(write_count, "write_count") or None
        capacity = pick(capacity, "capacity") or None
        self.clip = bool(pick(clip, "nlsvd_clip"))
        if lm.memory_kind != MLP:
            raise LocasError(f"Locas-MLP needs a two-layer FFN model (gpt2, gpt_neox, opt, gptj, phi, falcon); "
                             f"{lm.config.model_type} is a GLU model: use --variant glu")
        if update not in UPDATES:
            raise LocasError(f"unknown update '{update}'; choose bp or nlsvd")
        if init != "write" and init not in INITS:
            raise LocasError(f"unknown MLP init '{init}'; choose write or one of {', '.join(INITS)}")
        if write_tokens not in WRITE_TOKENS:
            raise LocasError(f"unknown write selection '{write_tokens}'; choose all or top")
        if not eps > 0:
            raise LocasError(f"write eps must be positive, got {eps}")
        self.update, self.init, self.eps = update, init, float(eps)
        self.write_tokens = write_tokens
        self.layers = parse_layers(cfg.memory_layers, lm.num_layers)
        self.capacity = int(capacity or cfg.memory_width)
        per_window = cfg.window_size - 1 if write_tokens == "all" else (write_count or self.capacity // 2)
        if update == "nlsvd":
            if self.capacity < 2:
                raise LocasError("NL-SVD needs a capacity of at least 2 slots")
            per_window = min(per_window, cfg.window_size - 1)
            if per_window > self.capacity // 2:
                raise LocasError(f"writing {per_window} slots per window needs --capacity >= {2 * per_window} "
                                 f"(the memory is compressed to capacity/2 = {self.capacity // 2} before each write)")
        else:
            self.capacity = cfg.memory_width
            per_window = self.capacity
        self.write_count = per_window
        self.name = f"locas-mlp-{update}{'-clip' if self.clip and update == 'nlsvd' else ''}"
        shape = (len(self.layers), 1, self.capacity, lm.hidden_size, CHANNELS[MLP])
        self.memory = torch.nn.Parameter(torch.zeros(shape, dtype=torch.float32, device=lm.device))
        self.used = 0  # slots filled so far (the rest are zero)
        self.compressions = 0
        self.skipped = 0
        self.timings = {"write_s": 0.0, "nlsvd_s": 0.0, "bp_s": 0.0}
        if cfg.output_scale(self.capacity) != 1.0 or cfg.gain_lr:
            raise LocasError("Locas-MLP writes its values at the paper's output scale; drop --tau-scale / --tau-law "
                             "/ --gain-lr")
        if update == "nlsvd" and (cfg.value_init != "zero" or cfg.key_lr_scale != 1.0 or cfg.value_radius != 1.0):
            raise LocasError("--value-init, --key-lr-scale and --value-radius shape optimiser steps, which "
                             "--update nlsvd does not take; drop them or use --update bp")

    # ---- protocol -----------------------------------------------------------------------------
    def begin(self, tokens, first_span):
        if self.update == "bp" and self.init != "write" and self.used == 0:
            ids = tokens[first_span[0]:first_span[1]][None]
            mem = self.lm.init_memory(ids, width=self.capacity, init=self.init, seed=self.cfg.seed)
            with torch.no_grad():
                self.memory.copy_(mem[self.layers])
            self.used = self.capacity

    def learn(self, optimizer, objective, tokens, span, cfg, teacher=None):
        """nlsvd (and bp's first window with ``init="write"``): a step-wise write, which needs the scoring
        pass's backward; bp: the optimiser step of every learner (``train_window``)."""
        if self.update == "nlsvd" or self.used == 0:
            return self._write(tokens[span[0]:span[1]][None].to(self.lm.device)), False
        t0 = time.perf_counter()
        nll, skipped = train_window(self, optimizer, objective, tokens, span, cfg, teacher)
        self.timings["bp_s"] += time.perf_counter() - t0
        self.skipped += int(skipped)
        return nll, skipped

    # ---- the step-wise write --------------------------------------------------------------------
    def _write(self, ids) -> torch.Tensor:
        t0 = time.perf_counter()
        count = None if self.write_tokens == "all" and self.update == "nlsvd" else self.write_count
        select = "top" if self.update == "bp" else self.write_tokens
        w = step_write(self.lm, ids, self.memory, self.layers, eps=self.eps, select=select, count=count)
        self.timings["write_s"] += time.perf_counter() - t0
        if self.used + w.count > self.capacity:  # expansion-compression cycle
            t1 = time.perf_counter()
            act = self.lm.wrappers[self.layers[0]].act
            with torch.no_grad():
                self.memory.copy_(compress_memory(self.memory, self.capacity // 2, act=act, used=self.used))
            self.used = self.capacity // 2
            self.compressions += 1
            self.timings["nlsvd_s"] += time.perf_counter() - t1
        with torch.no_grad():  # in place on the parameter: its version moves (see MemoryMLP's cached channels)
            self.used = append_slots(self.memory, self.used, w)
            if self.clip and self.update == "nlsvd":
                clip_vectors_(self.memory)
        return w.nll

    # ---- results and checkpoints --------------------------------------------------------------
    def state_tensors(self):
        return {"memory": self.memory.detach(), "used": torch.tensor([self.used, self.compressions, self.skipped])}

    def load_state_tensors(self, tensors):
        with torch.no_grad():
            self.memory.copy_(tensors["memory"])
        self.used, self.compressions, self.skipped = (int(x) for x in tensors["used"])
