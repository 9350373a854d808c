"""Fuse a memory into the FFN weights: a plain checkpoint with ``intermediate_size + r``.

Memory unit ``j`` of layer ``i`` becomes a new FFN unit: its gate and key rows are appended to
``gate_proj``/``up_proj`` (or both halves of a fused ``gate_up_proj``), and ``tau_i * v_j`` is
appended as a new column of ``down_proj``. Two-layer FFNs (GPT-2 ``c_fc``/``c_proj`` Conv1D,
stored input x output; NeoX, OPT, GPT-J, Phi, Falcon) get a key row and a value column; new up
biases are zero, the down bias is unchanged. A two-layer memory fuses only when it uses the
backbone's activation (``mlp_activation="backbone"``, or a ReLU backbone such as OPT).
The result is exact up to float rounding, loads with plain
``AutoModelForCausalLM.from_pretrained`` and needs no custom code. Layers without memory
get zero units so every layer keeps the same width (vLLM rejects per-layer widths).

An attention-path memory (``memory_on="attn"``, kind ``linear``) reads the projection's output ``y`` and adds
``tau * V^T K y``: it fuses into the attention output projection itself, ``W <- W + tau V^T (K W)`` and
``b <- b + tau V^T (K b)``, so the checkpoint keeps every shape and its config (``fuse_attn_layer``).

    >>> dense = to_dense(lm, mem)        # mem (L, B, r, d, C); row 0 is fused
    >>> dense.save_pretrained("fused/")
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import LocasError
from .memory import GLU, MLP, MemoryMLP


def _cat_rows(weight: torch.Tensor, rows: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(torch.cat([weight.detach(), rows.to(weight)], dim=0), requires_grad=False)


def _grow_out(linear: nn.Module, rows: torch.Tensor, conv1d: bool) -> None:
    """Append output units: ``rows`` (r, d_in). Conv1D stores (d_in, d_out)."""
    if conv1d:
        linear.weight = nn.Parameter(torch.cat([linear.weight.detach(), rows.t().to(linear.weight)], dim=1),
                                     requires_grad=False)
        linear.nf = linear.weight.shape[1]
    else:
        linear.weight = _cat_rows(linear.weight, rows)
        linear.out_features = linear.weight.shape[0]
    if getattr(linear, "bias", None) is not None:
        zeros = torch.zeros(rows.shape[0], dtype=linear.bias.dtype, device=linear.bias.device)
        linear.bias = nn.Parameter(torch.cat([linear.bias.detach(), zeros]), requires_grad=False)


def _grow_in(linear: nn.Module, cols: torch.Tensor, conv1d: bool) -> None:
    """Append input units: ``cols`` (d_out, r)."""
    if conv1d:
        linear.weight = _cat_rows(linear.weight, cols.t())
        linear.nx = linear.weight.shape[0]
    else:
        linear.weight = nn.Parameter(torch.cat([linear.weight.detach(), cols.to(linear.weight)], dim=1),
                                     requires_grad=False)
        linear.in_features = linear.weight.shape[1]


def fuse_layer(spec, mlp: nn.Module, mem: torch.Tensor, tau: float) -> None:
    """Append one layer's memory (r, d, C) to ``mlp`` in place."""
    key = mem[..., 0]  # (r, d)
    value = mem[..., -1] * tau  # (r, d)
    if spec.kind == GLU and spec.gate_up:
        fused = getattr(mlp, spec.gate_up)
        gate_w, up_w = fused.weight.detach().chunk(2, dim=0)
        fused.weight = nn.Parameter(
            torch.cat([gate_w, mem[..., 1].to(gate_w), up_w, key.to(up_w)], dim=0), requires_grad=False)
        fused.out_features = fused.weight.shape[0]
        if getattr(fused, "bias", None) is not None:
            raise LocasError("fusing into a fused gate_up_proj with bias is not supported")
    else:
        _grow_out(getattr(mlp, spec.up), key, spec.conv1d)
        if spec.kind == GLU:
            _grow_out(getattr(mlp, spec.gate), mem[..., 1], spec.conv1d)
    _grow_in(getattr(mlp, spec.down), value.t(), spec.conv1d)


def fuse_attn_layer(spec, proj: nn.Module, mem: torch.Tensor, tau: float) -> None:
    """Fold one layer's linear attention-path memory (r, d, C) (key first, value last) into its output projection
    in place (float32 arithmetic, stored in the projection's dtype)."""
    key, value = mem[..., 0].float(), mem[..., -1].float() * tau  # (r, d) each
    weight = spec.attn_out_weight(proj).detach().float()  # (d, A)
    fused = weight + value.t() @ (key @ weight)  # (d, A)
    proj.weight = nn.Parameter((fused.t() if spec.conv1d else fused).contiguous().to(proj.weight), requires_grad=False)
    if getattr(proj, "bias", None) is not None:
        bias = proj.bias.detach().float()  # (d,)
        proj.bias = nn.Parameter((bias + (key @ bias) @ value).to(proj.bias), requires_grad=False)


def check_fusable(lm) -> None:
    """Fusion appends memory units to the backbone FFN, so the memory must use the FFN's activation (an
    attention-path memory is linear: always exact)."""
    if lm.memory_kind != MLP:
        return
    w = lm.wrappers[0]
    probe = torch.linspace(-6, 6, 97)
    same = torch.allclose(w.act(probe), lm.spec.activation(w.base_mlp)(probe), atol=1e-6)
    if not same:
        raise LocasError(f"this memory uses {lm.mlp_activation} but the {lm.config.model_type} FFN uses "
                         f"{type(lm.spec.activation(w.base_mlp)).__name__}; fusing would not be exact. Train the "
                         "memory with mlp_activation='backbone' (CLI: --mlp-activation backbone) to fuse it")


def _set_width(config, width: int) -> None:
    for attr in ("intermediate_size", "n_inner", "ffn_dim", "ffn_hidden_size"):
        if hasattr(config, attr):
            setattr(config, attr, width)
            return
    raise LocasError(f"cannot find the FFN width field in the {config.model_type} config")


@torch.no_grad()
def to_dense(lm, memory: torch.Tensor, row: int = 0, layers=None) -> nn.Module:
    """A new plain transformers model with memory row ``row`` fused in (the wrapper is untouched): FFN memories
    widen the FFN (``intermediate_size + r``), attention-path ones change ``o_proj``'s values only."""
    layers = lm.check_memory(memory, layers)
    check_fusable(lm)
    if not 0 <= row < memory.shape[1]:
        raise LocasError(f"memory has {memory.shape[1]} rows; row {row} does not exist")
    width = memory.shape[2]
    full = torch.zeros((lm.num_layers,) + tuple(memory.shape[2:]), dtype=torch.float32)
    full[layers] = memory[:, row].detach().float().cpu()

    saved = [w.memory for w in lm.wrappers]
    for w in lm.wrappers:
        w.memory = None  # non-leaf tensors cannot be deep-copied
    try:
        dense = copy.deepcopy(lm.model)
    finally:
        for w, m in zip(lm.wrappers, saved):
            w.memory = m
    spec, dense_layers = lm.spec, list(lm.spec.layers(dense))
    for layer in dense_layers:  # the copy's wrappers out: plain modules only
        if isinstance(spec.mlp(layer), MemoryMLP):
            spec.set_mlp(layer, spec.mlp(layer).base_mlp)
        if isinstance(spec.attn_out_proj(layer), MemoryMLP):
            spec.set_attn_out(layer, spec.attn_out_proj(layer).base_mlp)
    for i, w in enumerate(lm.wrappers):  # slot i sits on decoder layer i mod depth (memory_on="both": FFN, then attn)
        layer, tau = dense_layers[i % lm.depth], w.tau(width)
        if w.reads_output:
            fuse_attn_layer(spec, spec.attn_out_proj(layer), full[i].to(lm.device), tau)
        else:
            fuse_layer(spec, spec.mlp(layer), full[i].to(lm.device), tau)
    if lm.site != "attn":
        _set_width(dense.config, lm.intermediate_size + width)
    dense.requires_grad_(False)
    return dense
