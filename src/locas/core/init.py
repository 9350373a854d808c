"""Principled memory initialisers (PAPER.md section 3.1).

* ``highest``      clone the ``r`` GLU units with the largest mean |intermediate| on the input (default); on the
                   attention path (``memory_on="attn"``) the keys are the write directions (columns of
                   ``o_proj``) of the ``r`` attention output channels with the largest mean |activation|
* ``lowest``       clone the ``r`` least active units (ablation)
* ``random_index`` clone ``r`` random units (ablation)
* ``random``       Gaussian unit-norm keys and gates (ablation)
* ``activation``   normalised input activations of ``r`` evenly spaced tokens as keys (MLP-style)

Values start at zero, so a fresh memory leaves the model's outputs exactly unchanged.
Importance comes from one no-grad forward pass; per-unit sums are accumulated by a hook on the
down projection, so no activation tensor is ever stored.

    >>> mem = build_memory(lm, input_ids, keep_top=32, memory_init="highest")   # (L, B, 32, d, 3)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import LocasError
from .memory import CHANNELS, GLU

INITS = ("highest", "lowest", "random_index", "random", "activation")


def unit_importance(lm, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean |activation| per unit of every memory slot (FFN units, or attention output channels): (L, B, I)
    float32, padding excluded (``slot_importance`` where the slots' widths differ, as with ``memory_on="both"``)."""
    return torch.stack(slot_importance(lm, input_ids, attention_mask))


def slot_importance(lm, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
    """``unit_importance`` per memory slot: L tensors (B, I_slot)."""
    mask = _token_mask(input_ids, attention_mask)  # (B, T) float
    sums: list[torch.Tensor | None] = [None] * lm.num_layers

    def make_hook(i):
        def hook(_module, args):
            inter = args[0].detach().float().abs().reshape(*mask.shape, -1)  # (B, T, I) (OPT passes (B*T, I))
            sums[i] = torch.einsum("bti,bt->bi", inter, mask.to(inter.device))

        return hook

    base_forward_with_hooks(lm, [lm.unit_module(i) for i in range(lm.num_layers)], make_hook, input_ids,
                            attention_mask)
    counts = mask.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1)
    return [s.to(counts.device) / counts for s in sums]  # L x (B, I)


def base_forward_with_hooks(lm, modules, make_hook, input_ids, attention_mask=None, output: bool = False) -> None:
    """One no-grad forward of the base model with ``make_hook(i)`` on ``modules[i]``: a forward-pre-hook
    ``hook(module, args)``, or with ``output`` a forward hook ``hook(module, args, out)``. A window without a mask is
    read from the model's BOS (``lm.with_bos``), which the hooks never see (in ``args[0]`` nor in ``out``)."""
    read, k = lm.with_bos(input_ids) if attention_mask is None else (input_ids, 0)

    def drop_bos(x):
        if not k:
            return x
        if x.dim() == 3:  # (B, k + T, X)
            return x[:, k:]
        return x.reshape(*read.shape, -1)[:, k:].reshape(-1, x.shape[-1])  # flattened (B * (k + T), X), as OPT

    def without_bos(hook):
        def inner(module, args, *out):
            return hook(module, (drop_bos(args[0]), *args[1:]), *(drop_bos(o) for o in out))

        return inner

    handles = [(m.register_forward_hook if output else m.register_forward_pre_hook)(without_bos(make_hook(i)))
               for i, m in enumerate(modules)]
    try:
        with torch.no_grad(), lm.disabled():
            lm.model(input_ids=read, attention_mask=attention_mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()


def _token_mask(input_ids, attention_mask):
    if attention_mask is None:
        return torch.ones(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    return attention_mask.float()


def _activation_keys(lm, input_ids, attention_mask, width: int) -> torch.Tensor:
    """Normalised inputs of the memory (the MLP's, or on the attention path the projection's output) at ``width``
    evenly spaced valid tokens: (L, B, r, d)."""
    mask = _token_mask(input_ids, attention_mask)
    positions = []
    for row in mask:
        valid = torch.nonzero(row > 0).flatten()
        idx = torch.linspace(0, len(valid) - 1, width).round().long()
        positions.append(valid[idx.to(valid.device)])
    pos = torch.stack(positions)  # (B, r)
    keys: list[torch.Tensor | None] = [None] * lm.num_layers

    def make_hook(i):
        def hook(_module, args, out):
            read = out if lm.wrappers[i].reads_output else args[0]
            x = read.detach().float().reshape(*input_ids.shape, -1)  # (B, T, d)
            keys[i] = torch.gather(x, 1, pos.to(x.device)[..., None].expand(-1, -1, x.shape[-1]))

        return hook

    base_forward_with_hooks(lm, [w.base_mlp for w in lm.wrappers], make_hook, input_ids, attention_mask, output=True)
    return F.normalize(torch.stack(keys), dim=-1)


def build_memory(
    lm,
    input_ids: torch.Tensor,
    keep_top: int = 32,
    memory_init: str = "highest",
    attention_mask: torch.Tensor | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """A fresh memory (L, B, keep_top, d, C) float32 on the model's device, values zero."""
    if memory_init not in INITS:
        raise LocasError(f"unknown memory init '{memory_init}'; choose one of {', '.join(INITS)}")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    L = lm.num_layers
    n_units = min(lm.num_units(i) for i in range(L))
    if not 1 <= keep_top <= n_units:
        what = "FFN width" if n_units == lm.intermediate_size else "attention output width"
        raise LocasError(f"memory width {keep_top} must be between 1 and the {what} {n_units}")
    B, d = input_ids.shape[0], lm.hidden_size
    kind = lm.memory_kind
    device = lm.device
    gen = torch.Generator().manual_seed(seed)
    mem = torch.zeros(L, B, keep_top, d, CHANNELS[kind], dtype=torch.float32, device=device)

    if memory_init == "random":
        for c in range(CHANNELS[kind] - 1):
            mem[..., c] = F.normalize(torch.randn(L, B, keep_top, d, generator=gen), dim=-1).to(device)
    elif memory_init == "activation":
        keys = _activation_keys(lm, input_ids, attention_mask, keep_top).to(device)  # (L, B, r, d)
        for c in range(CHANNELS[kind] - 1):
            mem[..., c] = keys
    else:
        if memory_init == "random_index":
            index = [torch.stack([torch.randperm(lm.num_units(i), generator=gen)[:keep_top] for _ in range(B)])
                     for i in range(L)]  # L x (B, r)
        else:
            index = [imp.topk(keep_top, dim=-1, largest=memory_init == "highest").indices
                     for imp in slot_importance(lm, input_ids, attention_mask)]  # L x (B, r)
        for i, w in enumerate(lm.wrappers):
            idx = index[i].to(device)  # (B, r)
            mem[i, ..., 0] = F.normalize(lm.unit_keys(i).detach().float()[idx], dim=-1)
            if kind == GLU and not w.reads_output:
                mem[i, ..., 1] = F.normalize(lm.spec.gate_weight(w.base_mlp).detach().float()[idx], dim=-1)
    for i, w in enumerate(lm.wrappers):  # a linear slot in a GLU-shaped memory (memory_on="both"): no gate
        if w.reads_output and mem.shape[-1] == CHANNELS[GLU]:
            mem[i, ..., 1] = 0.0
    return mem
