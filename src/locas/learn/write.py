"""Step-wise write for Locas-MLP (PAPER.md 3.2): activation key + gradient value, one slot per token.

One forward and one backward of the span's log-likelihood give, for every memory layer ``i``
and position ``t``, the FFN input ``a_t^i`` and the gradient ``G_t^i = d log p / d H_t^i`` of the
log-likelihood with respect to that layer's FFN output (no parameter is updated). Each chosen
position then gets a new slot per layer::

    k = a_t^i / |a_t^i|                   (fires most on this token)
    v = eps * G_t^i / |G_t|               (|G_t| = norm over hidden size *and* layers)

so the token's hidden state moves along the likelihood gradient: ``tau * act(|a_t|) * v``.
Slot ``t`` predicts token ``t + 1``; the last position has no target and is never written.

    >>> w = step_write(lm, ids, memory=mem, layers=None, eps=1.0, select="top", count=64)
    >>> w.nll              # (T-1,) NLL of the span *before* the write (the streaming score)
    >>> used = append_slots(mem, used, w)   # mem (L', 1, capacity, d, 2) float32, filled in place
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core.head import token_nll
from ..core.memory import MLP
from ..errors import LocasError

SELECT = ("all", "top")


@dataclass
class WriteResult:
    nll: torch.Tensor  # (T-1,) per-token NLL before the write
    positions: torch.Tensor  # (n,) written positions (slot t predicts token t+1)
    keys: torch.Tensor  # (L', n, d) float32, unit norm
    values: torch.Tensor  # (L', n, d) float32, jointly eps-normalised over (L', d) per token

    @property
    def count(self) -> int:
        return int(self.positions.numel())


def _choose(nll: torch.Tensor, select: str, count: int | None) -> torch.Tensor:
    """Positions to write: all scored positions, or the ``count`` with the highest loss (in order)."""
    if select not in SELECT:
        raise LocasError(f"unknown write selection '{select}'; choose all or top")
    if select == "all" or count is None or count >= nll.numel():
        return torch.arange(nll.numel(), device=nll.device)
    if count < 1:
        raise LocasError(f"write count must be at least 1, got {count}")
    return nll.topk(count).indices.sort().values


def step_write(lm, input_ids: torch.Tensor, memory: torch.Tensor | None = None, layers=None, *,
               eps: float = 1.0, select: str = "all", count: int | None = None) -> WriteResult:
    """Compute new slots for ``input_ids`` (1, T) with ``memory`` (L', 1, r, d, 2) installed (may be None)."""
    if lm.memory_kind != MLP:
        raise LocasError(f"the step-wise write is for two-layer FFN models (Locas-MLP); {lm.config.model_type} "
                         "is a GLU model, use the Locas-GLU trainer instead")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.shape[0] != 1:
        raise LocasError("the step-wise write reads one token stream at a time (batch size 1)")
    if input_ids.shape[1] < 2:
        raise LocasError("a write needs at least 2 tokens (one prediction)")
    if not eps > 0:
        raise LocasError(f"write eps must be positive, got {eps}")
    layers = list(range(lm.num_layers)) if layers is None else list(layers)
    ids = input_ids.to(lm.device)
    T = ids.shape[1]
    inputs: dict[int, torch.Tensor] = {}
    deltas: dict[int, torch.Tensor] = {}

    def make_hook(i):
        def hook(_module, args, output):
            inputs[i] = args[0].detach().float().reshape(1, T, -1)  # (1, T, d) FFN input a_t
            delta = torch.zeros(output.shape, dtype=torch.float32, device=output.device, requires_grad=True)
            deltas[i] = delta  # d(log p)/d(delta) = gradient w.r.t. the FFN output
            return output + delta.to(output.dtype)

        return hook

    handles = [lm.wrappers[i].register_forward_hook(make_hook(i)) for i in layers]
    mem = None if memory is None else memory.detach()
    try:
        with torch.enable_grad(), lm.use_memory(mem, layers if mem is not None else None):
            logits = lm.model(input_ids=ids, use_cache=False).logits  # (1, T, V)
            nll = token_nll(logits, ids)[0]  # (T-1,)
            grads = torch.autograd.grad(-nll.sum(), [deltas[i] for i in layers])
    finally:
        for h in handles:
            h.remove()
    G = torch.stack([g.reshape(T, -1) for g in grads])[:, :-1]  # (L', T-1, d)
    A = torch.stack([inputs[i][0] for i in layers])[:, :-1]  # (L', T-1, d)
    nll = nll.detach()
    pos = _choose(nll, select, count)
    g = G[:, pos]  # (L', n, d)
    norm = g.pow(2).sum(dim=(0, 2)).sqrt()  # (n,) global norm over layers and hidden size
    ok = norm > 0
    pos, g, norm = pos[ok], g[:, ok], norm[ok]
    values = eps * g / norm[None, :, None]
    keys = F.normalize(A[:, pos], dim=-1)
    return WriteResult(nll=nll, positions=pos, keys=keys, values=values)


@torch.no_grad()
def append_slots(memory: torch.Tensor, used: int, write: WriteResult, row: int = 0) -> int:
    """Put the written slots into free slots ``used ..`` of ``memory`` (L', B, cap, d, 2) in place."""
    n, cap = write.count, memory.shape[2]
    if used + n > cap:
        raise LocasError(f"memory is full ({used} + {n} slots > capacity {cap}); compress it first "
                         "(locas.nlsvd.compress_memory) or raise the capacity")
    memory[:, row, used:used + n, :, 0] = write.keys.to(memory)
    memory[:, row, used:used + n, :, 1] = write.values.to(memory)
    return used + n
