"""Silence off the text: how strongly a memory fires on text it was not trained for, and a loss that quiets it.

A Locas memory adds ``tau * V^T (act(G^T x) * (K^T x))`` to every MLP it sits beside. Nothing in next-token or
probe training asks it to stay quiet on *other* text, and its keys start from the layer's most active units,
which fire on almost everything. ``firing`` measures it: per memory layer, the memory's output energy relative
to the frozen MLP's own, ``E|tau mem(x)|^2 / E|mlp(x)|^2``, on the base model's MLP inputs of a text. The
``silence`` loss is that same energy on *off-text*: the base model's own samples, drawn once from its start of
text (``own_samples``). The MLP inputs are the frozen model's, read once and cached, so each training step pays
only the memory's own matmuls on them (no extra pass through the network). A memory trained with it learns to
fire where its facts are and to keep its gates shut elsewhere; the architecture is unchanged, so it fuses,
serves and exports as any memory.

    >>> off = off_text(lm, layers, own_samples(lm, seed=0))                            # cached once
    >>> loss = task_loss + weight * relative_energy(learner.model_memory(), layers, off, lm).mean()
    >>> firing(lm, memory, layers, text_ids)                                           # (L',) relative output norm
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.init import base_forward_with_hooks
from ..core.memory import memory_output
from ..text.decoding import Decoder, Sampling


@dataclass
class LayerInputs:
    """The frozen model's MLP inputs on some text, for each memory layer."""

    inputs: list[torch.Tensor]  # per memory layer: (N, d) float32 MLP inputs
    energy: torch.Tensor  # (L',) mean |mlp(x)|^2 per token of the frozen MLP on them

    @property
    def tokens(self) -> int:
        return int(self.inputs[0].shape[0]) if self.inputs else 0


@torch.no_grad()
def own_samples(lm, rows: int = 4, tokens: int = 128, seed: int = 0) -> torch.Tensor:
    """(rows, tokens) text the frozen model writes from its start of text (its BOS, else its end-of-text token),
    sampled at temperature 1, top-p 0.95, from ``seed``: text that is nobody's document. The start is included
    (``tokens`` fewer where the model's context is shorter)."""
    tok = lm.tokenizer
    eos = getattr(tok, "eos_token_id", None)
    eos = lm.config.eos_token_id if eos is None else eos
    eos = eos[0] if isinstance(eos, (list, tuple)) else eos
    start = list(lm.bos_ids) or [0 if eos is None else eos]
    tokens = min(tokens, lm.max_length - len(start))  # a model with a short context writes less
    with lm.disabled():
        decoder = Decoder(lm.model, tok, [], batch_size=rows, stop_ids=())
        sampling = Sampling(temperature=1.0, top_p=0.95, generator=torch.Generator().manual_seed(seed))
        outs = decoder.generate([start] * rows, tokens, sampling=sampling)
    return torch.tensor([start + o.tokens for o in outs], dtype=torch.long)


@torch.no_grad()
def off_text(lm, layers: list[int], samples: torch.Tensor) -> LayerInputs:
    """The frozen model's MLP inputs on its own ``samples`` (``own_samples``: (rows, 1 + tokens)), their start token
    left out."""
    return layer_inputs(lm, samples, layers, skip=1)


@torch.no_grad()
def layer_inputs(lm, ids: torch.Tensor, layers: list[int], skip: int = 0) -> LayerInputs:
    """The frozen model's memory inputs at ``layers`` for the tokens of ``ids`` (B, T), read from the model's BOS
    (``core.init.base_forward_with_hooks``), after the first ``skip`` of each row (a start token: an attention sink,
    whose states are outliers), and the frozen block's output energy on them. The memory's input is the MLP's input,
    or on the attention path (``reads_output``) the output projection's output."""
    inputs: dict[int, torch.Tensor] = {}
    energy: dict[int, torch.Tensor] = {}

    def make_hook(j):
        def hook(_module, args, out):
            read = out if lm.wrappers[layers[j]].reads_output else args[0]
            x = read.detach().float().reshape(ids.shape[0], -1, read.shape[-1])[:, skip:]  # (B, T', d); OPT: flat
            inputs[j] = x.reshape(-1, x.shape[-1])  # (N, d)
            energy[j] = out.detach().float().reshape(ids.shape[0], -1, out.shape[-1])[:, skip:].pow(2).sum(-1).mean()

        return hook

    base_forward_with_hooks(lm, [lm.wrappers[i].base_mlp for i in layers], make_hook, ids.to(lm.device), output=True)
    return LayerInputs([inputs[j] for j in range(len(layers))], torch.stack([energy[j] for j in range(len(layers))]))


def relative_energy(memory: torch.Tensor, layers: list[int], cached: LayerInputs, lm) -> torch.Tensor:
    """(L',) ``E|tau mem(x)|^2 / E|mlp(x)|^2`` of ``memory`` (L', 1, r, d, C), as the model reads it, on the cached
    inputs; differentiable in ``memory``."""
    out = []
    for j, i in enumerate(layers):
        wrapper = lm.wrappers[i]
        x = cached.inputs[j].to(memory.device)[None]  # (1, N, d)
        extra = memory_output(x, memory[j], wrapper.act, wrapper.kind) * wrapper.tau(memory.shape[-3])  # (1, N, d)
        out.append(extra.pow(2).sum(-1).mean())
    return torch.stack(out) / cached.energy.to(memory.device).clamp(min=1e-12)


@torch.no_grad()
def firing(lm, memory: torch.Tensor, layers: list[int] | None, ids: torch.Tensor) -> torch.Tensor:
    """(L',) how strongly ``memory`` fires on ``ids`` (B, T): per layer, the memory's output norm relative to the
    frozen MLP's, ``sqrt(E|tau mem(x)|^2 / E|mlp(x)|^2)``, on the frozen model's inputs."""
    layers = list(range(lm.num_layers)) if layers is None else list(layers)
    memory = memory.to(lm.device)
    if memory.shape[0] != len(layers):  # a full (L, ...) memory: keep the given layers
        memory = memory[layers]
    ids = ids if ids.dim() == 2 else ids[None]
    return relative_energy(memory, layers, layer_inputs(lm, ids, layers), lm).sqrt()
