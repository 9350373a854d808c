"""The memory modules: a small side feed-forward network beside each frozen MLP.

A memory tensor holds, for every layer and batch row, ``r`` slots of ``d``-dimensional
vectors. Layout (the reference implementation's): ``(L, B, r, d, C)`` with

* ``C = 3`` for Locas-GLU: (key/up, gate, value/down), ``out = V^T (act(G^T x) * (K^T x))``
* ``C = 2`` for Locas-MLP: (key, value),              ``out = V^T act(K^T x)``
* ``C = 2`` for a linear memory: (key, value),         ``out = V^T (K^T x)`` (the attention-path memory: it
  reads what the attention block writes, ``x = o_proj(z)``, and fuses into ``o_proj``; ``core.fuse``)

Memory weights are float32 whatever the model dtype; inputs are cast up at the boundary and
the output is cast back. Row ``b`` of a batch uses memory row ``b`` (a memory with one row is
broadcast over the batch). This module has no transformers imports.

    >>> wrapped = MemoryMLP(layer.mlp, act=layer.mlp.act_fn, kind="glu", value_norm=0.9)
    >>> wrapped.memory = mem[i]            # (B, r, d, 3), float32
    >>> y = wrapped(x)                     # mlp(x) + tau * memory(x), tau = value_norm / r
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

GLU, MLP, LINEAR = "glu", "mlp", "linear"
CHANNELS = {GLU: 3, MLP: 2, LINEAR: 2}


def memory_output(x: torch.Tensor, mem: torch.Tensor | tuple, act, kind: str = GLU) -> torch.Tensor:
    """Side-FFN output for hidden states ``x`` (B, T, d) and one layer's memory (B|1, r, d, C), or that memory's
    channels already split (``C`` tensors (B|1, r, d), see ``MemoryMLP``).

    Returns (B, T, d) in the memory's dtype (float32; bfloat16 for a serving copy made so, ``ServingMemory.of``);
    the caller applies ``tau`` and casts back.
    """
    channels = mem.unbind(-1) if isinstance(mem, torch.Tensor) else mem
    xf = x.to(channels[0].dtype)  # (B, T, d)
    if kind == GLU:
        key, gate, value = channels  # each (B, r, d)
        h = act(xf @ gate.transpose(-1, -2)) * (xf @ key.transpose(-1, -2))  # (B, T, r)
    elif kind == LINEAR:  # (key, value), or a GLU-shaped memory's slot with its gate unused (memory_on="both")
        key, value = channels[0], channels[-1]
        h = xf @ key.transpose(-1, -2)  # (B, T, r)
    else:
        key, value = channels
        h = act(xf @ key.transpose(-1, -2))  # (B, T, r)
    return h @ value  # (B, T, d)


class MemoryMLP(nn.Module):
    """Wraps a frozen feed-forward block: ``base_mlp(x) + tau * memory(x)``.

    ``act`` is the memory's activation: the backbone's own for GLU, ReLU (the paper's choice) or
    the backbone's for two-layer "mlp" memories, unused by a linear one.

    With ``reads_output`` the memory reads the wrapped module's output instead of its input,
    ``y + tau * memory(y)`` with ``y = base_mlp(x)``: the attention-path memory wraps the attention's output
    projection this way (``base_mlp`` is then that projection), so it reads and writes in the residual stream's
    ``d`` dimensions and its linear map fuses into the projection exactly.

    ``memory`` is a plain attribute (not a parameter or buffer) so it never enters the base
    model's state dict; ``None`` or ``enabled = False`` gives the base output bit-exactly.

    A memory that needs no gradient (serving, evaluation) is split once into contiguous channels and
    reused until it changes (another tensor, or an in-place update: torch's version counter): a matmul
    on the strided channel views of the (r, d, C) layout costs ~9x more per decoding step.
    """

    def __init__(self, base_mlp: nn.Module, act, kind: str = GLU, value_norm: float = 1.0,
                 reads_output: bool = False):
        super().__init__()
        if kind not in CHANNELS:
            raise ValueError(f"unknown memory kind '{kind}' (expected one of {sorted(CHANNELS)})")
        self.base_mlp = base_mlp
        self.act = act
        self.kind = kind
        self.value_norm = float(value_norm)  # mean |W_down[:, j]|_2 of the backbone
        self.reads_output = bool(reads_output)
        self._memory: torch.Tensor | None = None
        self._split: tuple | None = None  # (memory, its version, its channels as contiguous (B|1, r, d) tensors)
        self.enabled = True
        # state-dict transparent: a wrapped model saves and loads under the original MLP's keys
        self._register_state_dict_hook(_strip_base_prefix)
        self._register_load_state_dict_pre_hook(_add_base_prefix)

    @property
    def memory(self) -> torch.Tensor | tuple | None:
        """This layer's memory (B|1, r, d, C) float32, its channels already split (C tensors (B|1, r, d), as
        ``batch_serving`` gives them), or None."""
        return self._memory

    @memory.setter
    def memory(self, mem: torch.Tensor | tuple | None) -> None:
        self._memory = mem
        if self._split is not None and self._split[0] is not mem:
            self._split = None  # a cached copy never outlives its memory

    def tau(self, width: int) -> float:
        """Output scale ``mean_j |W_down[:, j]| / r`` (a learner's other scale laws are baked into its values)."""
        return self.value_norm / width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_mlp(x)
        mem = self.memory
        if mem is None or not self.enabled:
            return out
        channels = mem if isinstance(mem, tuple) else self._channels(mem)  # C x (B|1, r, d)
        if channels[0].device != x.device:  # layers spread over devices (device_map="auto"): memory follows
            channels = tuple(c.to(x.device) for c in channels)
        read = out if self.reads_output else x
        flat = read.dim() == 2  # (B*T, d): OPT flattens the batch before its FFN
        xb = read.view(channels[0].shape[0], -1, read.shape[-1]) if flat else read  # (B, T, d)
        extra = memory_output(xb, channels, self.act, self.kind) * self.tau(channels[0].shape[-2])
        if flat:
            extra = extra.reshape(out.shape)
        return out + extra.to(out.dtype)

    def _channels(self, mem: torch.Tensor):
        """``mem``'s channels: views while it is being trained (autograd runs through them), otherwise split and
        made contiguous, cached for as long as ``mem`` is the same, unchanged tensor."""
        if mem.requires_grad:
            return mem.unbind(-1)
        split = self._split
        if split is None or split[0] is not mem or split[1] != mem._version:
            split = self._split = (mem, mem._version, tuple(c.contiguous() for c in mem.unbind(-1)))
        return split[2]

    def extra_repr(self) -> str:
        mem = self.memory
        width = None if mem is None else mem[0].shape[-2] if isinstance(mem, tuple) else mem.shape[-3]
        return f"kind={self.kind}, width={width}, enabled={self.enabled}, reads_output={self.reads_output}"


_BASE = "base_mlp."


def _strip_base_prefix(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix + _BASE)]:
        state_dict[prefix + key[len(prefix + _BASE):]] = state_dict.pop(key)


def _add_base_prefix(state_dict, prefix, *args):
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(prefix + _BASE)]:
        state_dict[prefix + _BASE + key[len(prefix):]] = state_dict.pop(key)


@torch.no_grad()
def clip_vectors_(memory: torch.Tensor, radius: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Weight-norm clipping in place: every key/gate/value vector ``w <- w / max(|w|_2 / radius, 1)``.

    ``memory`` is (..., r, d, C); norms are taken over ``d``; ``radius`` is a number or (C,) per channel.
    Short vectors are unchanged.
    """
    norms = memory.norm(dim=-2, keepdim=True)  # (..., r, 1, C)
    memory.div_((norms / radius).clamp(min=1.0))
    return memory


def value_norm_mean(down_weight: torch.Tensor) -> float:
    """Mean L2 norm of the backbone's value vectors (columns of ``down_weight``, (d, I))."""
    return down_weight.detach().float().norm(dim=0).mean().item()


def rescale_width(memory: torch.Tensor, width: int) -> torch.Tensor:
    """``memory`` (L, B, r, d, C) as a memory of ``width`` >= r slots with the same output: zero-value slots
    appended, and the values scaled by ``width / r`` because the output scale is ``tau = value_norm / width``."""
    r = memory.shape[-3]
    if width < r:
        raise ValueError(f"cannot shrink a memory of width {r} to {width}")
    out = torch.zeros(memory.shape[:-3] + (width,) + memory.shape[-2:], dtype=memory.dtype, device=memory.device)
    out[..., :r, :, :] = memory
    if width != r:
        out[..., :r, :, -1] *= width / r
    return out


def stack_memories(memories: list[torch.Tensor]) -> torch.Tensor:
    """Several memories (L, B, r_i, d, C) of one model as one (L, B, sum r_i, d, C) whose output is the sum of
    theirs: slots concatenated, each memory's values scaled by ``sum r / r_i`` (each keeps its own ``tau``).

        >>> both = stack_memories([a, b])            # lm(x, memory=both) == base + tau_a a(x) + tau_b b(x)
    """
    if not memories:
        raise ValueError("nothing to stack")
    total = sum(m.shape[-3] for m in memories)
    parts = []
    for m in memories:
        part = m.clone()
        part[..., -1] *= total / m.shape[-3]
        parts.append(part)
    return torch.cat(parts, dim=-3)


@dataclass(frozen=True, eq=False)
class ServingMemory:
    """A memory laid out once for decoding (one row): its channels as contiguous (L, r, d) tensors, and which
    layers have a non-zero value. A server keeps memories this way, so a batch is assembled in one copy.

        >>> ready = ServingMemory.of(memory)              # memory (L, 1, r, d, C)
        >>> channels, live = batch_serving([ready, None, other])
    """

    channels: tuple[torch.Tensor, ...]  # C x (L, r, d)
    live: tuple[bool, ...]  # (L,): layers where some value is non-zero (the others are skipped, exactly)

    @classmethod
    def of(cls, memory: torch.Tensor, dtype: torch.dtype | None = None) -> ServingMemory:
        """``memory`` (L, 1, r, d, C) laid out; ``dtype`` (default: its own, float32) is the serving copy's: bfloat16
        halves the bytes a decoding step reads but is not exact (``locas serve --memory-dtype``, docs/PERFORMANCE.md);
        the stored memory stays float32."""
        live = tuple(bool(v) for v in memory[:, 0, ..., -1].flatten(1).any(1))  # read before any rounding
        channels = tuple(c.to(dtype or c.dtype).contiguous() for c in memory[:, 0].unbind(-1))  # C x (L, r, d)
        return cls(channels, live)

    @property
    def width(self) -> int:
        return self.channels[0].shape[-2]

    def tensor(self) -> torch.Tensor:
        """The memory as (L, 1, r, d, C) again (in the serving copy's dtype)."""
        return torch.stack(self.channels, dim=-1)[:, None]


def batch_serving(rows: list[ServingMemory | None]) -> tuple[tuple[torch.Tensor, ...], list[bool]] | None:
    """One batch memory from per-row memories (None: the exact base model), written once in channel layout:
    (C x (L, B, W, d), live layers). Every row is padded to the widest with zero-value slots and its values
    rescaled (as ``rescale_width``), so row ``b`` gives what its memory gives alone; when every row has the same
    memory it is not copied at all (B = 1, broadcast). None when no row has a memory."""
    present = [m for m in rows if m is not None]
    if not present:
        return None
    first = present[0]
    live = [any(m.live[i] for m in present) for i in range(len(first.live))]
    if len(present) == len(rows) and all(m is first for m in rows):
        return tuple(c[:, None] for c in first.channels), live
    L, _, d = first.channels[0].shape
    width = max(m.width for m in present)
    out = tuple(c.new_empty((L, len(rows), width, d)) for c in first.channels)  # C x (L, B, W, d)
    for b, m in enumerate(rows):
        r = 0 if m is None else m.width
        for i, dst in enumerate(out):
            if m is not None:
                if i == len(out) - 1 and r != width:  # values: tau = value_norm / width (rescale_width)
                    torch.mul(m.channels[i], width / r, out=dst[:, b, :r])
                else:
                    dst[:, b, :r].copy_(m.channels[i])
            if r < width:
                dst[:, b, r:].zero_()
    return out, live
