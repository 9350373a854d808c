"""Architecture registry: where the decoder layers and feed-forward blocks of a model live.

Keyed by ``config.model_type``. Each entry says how to find the list of decoder layers, the
MLP inside a layer, and the names of its projections, so the memory can be attached beside it
and later fused into it.

    >>> spec = get_arch(model.config)            # ArchSpec for e.g. "llama"
    >>> layers = spec.layers(model)              # nn.ModuleList of decoder layers
    >>> register_arch("my_llama", ArchSpec(kind="glu", layers_path="model.layers"))

Two-layer ("mlp") entries cover GPT-2 (Conv1D weights stored input x output), GPT-NeoX, OPT,
GPT-J, Phi-1/2 and Falcon. OPT keeps ``fc1``/``fc2`` directly on the decoder layer; for such
models (``ffn_on_layer``) a ``LayerFFN`` adapter gathers them into one module, which is what the
memory wraps (the layer's own ``activation_fn``/``fc2`` become identities while attached).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UnsupportedArchitectureError


@dataclass(frozen=True)
class ArchSpec:
    """How one model family lays out its feed-forward blocks.

    kind:        "glu" (down(act(gate x) * up x)) or "mlp" (down(act(up x)), the classic 2-layer FFN).
    layers_path: dotted path from the *CausalLM* to the ``nn.ModuleList`` of decoder layers.
    mlp_attr:    attribute of a decoder layer holding the feed-forward block.
    gate, up, down: projection attribute names inside the MLP (``gate`` unused for "mlp").
    gate_up:     name of a fused gate+up projection (Phi-3: first half gate, second half up).
    act_attr:    attribute of the MLP holding its activation module (the memory reuses it, so
                 fusing stays exact).
    conv1d:      projections are GPT-2 ``Conv1D`` (weight stored input x output).
    ffn_on_layer: the projections and activation are attributes of the decoder layer itself (OPT);
                 ``mlp_attr`` is then unused and ``mlp()`` returns a ``LayerFFN`` adapter.
    attn_out:    dotted path from a decoder layer to the attention's output projection (what the
                 attention-path memory wraps, ``--memory-on attn``).
    """

    kind: str = "glu"
    layers_path: str = "model.layers"
    mlp_attr: str = "mlp"
    gate: str = "gate_proj"
    up: str = "up_proj"
    down: str = "down_proj"
    gate_up: str | None = None
    act_attr: str = "act_fn"
    conv1d: bool = False
    ffn_on_layer: bool = False
    attn_out: str = "self_attn.o_proj"

    def layers(self, model: nn.Module) -> nn.ModuleList:
        obj = model
        for part in self.layers_path.split("."):
            obj = getattr(obj, part)
        return obj

    def mlp(self, layer: nn.Module) -> nn.Module:
        """The layer's feed-forward module (its memory wrapper once attached)."""
        if not self.ffn_on_layer:
            return getattr(layer, self.mlp_attr)
        slot = getattr(layer, self.up)
        if isinstance(getattr(layer, self.down), nn.Identity):  # already wrapped: slot holds the wrapper
            return slot
        return LayerFFN(self, slot, getattr(layer, self.act_attr), getattr(layer, self.down))

    def set_mlp(self, layer: nn.Module, module: nn.Module) -> None:
        """Install ``module`` (a wrapper, or a plain FFN to restore) as the layer's feed-forward block."""
        if not self.ffn_on_layer:
            setattr(layer, self.mlp_attr, module)
        elif isinstance(module, LayerFFN):  # restore the original projections on the layer
            for name in (self.up, self.act_attr, self.down):
                setattr(layer, name, getattr(module, name))
            for handle in module.hooks:
                handle.remove()
            module.hooks = []
        else:  # a wrapper around a LayerFFN: it computes the whole block in the ``up`` slot
            setattr(layer, self.up, module)
            setattr(layer, self.act_attr, nn.Identity())
            setattr(layer, self.down, nn.Identity())
            module.base_mlp.hooks = [layer._register_state_dict_hook(self._save_flat),
                                     layer._register_load_state_dict_pre_hook(self._load_flat)]

    # the wrapped layer saves and loads under its original keys (``fc1.weight``, not ``fc1.fc1.weight``)
    def _save_flat(self, _layer, state_dict, prefix, _meta):
        for name in (self.up, self.down):
            for inner in (f"{self.up}.base_mlp.{name}.", f"{self.up}.{name}."):
                for key in [k for k in state_dict if k.startswith(prefix + inner)]:
                    state_dict[prefix + name + "." + key[len(prefix + inner):]] = state_dict.pop(key)

    def _load_flat(self, state_dict, prefix, *_args):
        for name in (self.up, self.down):
            flat = f"{prefix}{name}."
            for key in [k for k in state_dict if k.startswith(flat) and k.count(".") == flat.count(".")]:
                state_dict[f"{prefix}{self.up}.base_mlp.{name}.{key[len(flat):]}"] = state_dict.pop(key)

    def attn_out_proj(self, layer: nn.Module) -> nn.Module:
        """The layer's attention output projection (its memory wrapper once attached)."""
        obj = layer
        for part in self.attn_out.split("."):
            obj = getattr(obj, part)
        return obj

    def set_attn_out(self, layer: nn.Module, module: nn.Module) -> None:
        """Install ``module`` (a wrapper, or the plain projection to restore) as the attention output projection."""
        *parents, name = self.attn_out.split(".")
        obj = layer
        for part in parents:
            obj = getattr(obj, part)
        setattr(obj, name, module)

    def attn_out_weight(self, proj: nn.Module) -> torch.Tensor:
        """(d, A) weight of an attention output projection, "out x in"; column j writes attention channel j."""
        return proj.weight.t() if self.conv1d else proj.weight

    def activation(self, mlp: nn.Module):
        return getattr(mlp, self.act_attr)

    # ---- weights in the canonical "out x in" orientation -----------------------------------
    def _weight(self, mlp: nn.Module, name: str) -> torch.Tensor:
        w = getattr(mlp, name).weight
        return w.t() if self.conv1d else w

    def gate_weight(self, mlp: nn.Module) -> torch.Tensor:
        """(I, d) gate rows of a GLU MLP."""
        if self.gate_up:
            return getattr(mlp, self.gate_up).weight.chunk(2, dim=0)[0]
        return self._weight(mlp, self.gate)

    def up_weight(self, mlp: nn.Module) -> torch.Tensor:
        """(I, d) up/key rows."""
        if self.gate_up:
            return getattr(mlp, self.gate_up).weight.chunk(2, dim=0)[1]
        return self._weight(mlp, self.up)

    def down_weight(self, mlp: nn.Module) -> torch.Tensor:
        """(d, I) down projection; column j is the value vector of unit j."""
        return self._weight(mlp, self.down)

    def down_module(self, mlp: nn.Module) -> nn.Module:
        return getattr(mlp, self.down)


class LayerFFN(nn.Module):
    """``down(act(up(x)))`` over projections that live on a decoder layer (OPT's fc1/fc2).

    The modules keep their attribute names, so the ``ArchSpec`` accessors work on the adapter.
    """

    def __init__(self, spec: ArchSpec, up: nn.Module, act, down: nn.Module):
        super().__init__()
        self._names = (spec.up, spec.act_attr, spec.down)
        self.hooks: list = []  # state-dict hooks on the decoder layer while wrapped
        for name, module in zip(self._names, (up, act, down)):
            setattr(self, name, module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up, act, down = (getattr(self, n) for n in self._names)
        return down(act(up(x)))


_GLU = ArchSpec()
_MLP = dict(kind="mlp", act_attr="act")
_REGISTRY: dict[str, ArchSpec] = {
    "llama": _GLU,
    "qwen2": _GLU,
    "qwen3": _GLU,
    "mistral": _GLU,
    "gemma": _GLU,
    "gemma2": _GLU,
    "gemma3_text": _GLU,
    "olmo": _GLU,
    "olmo2": _GLU,
    "granite": _GLU,
    "phi3": ArchSpec(gate_up="gate_up_proj", act_attr="activation_fn"),
    # classic two-layer FFNs: out = down(act(up x))
    "gpt2": ArchSpec(**_MLP, layers_path="transformer.h", up="c_fc", down="c_proj", conv1d=True,
                     attn_out="attn.c_proj"),
    "gpt_neox": ArchSpec(**_MLP, layers_path="gpt_neox.layers", up="dense_h_to_4h", down="dense_4h_to_h",
                         attn_out="attention.dense"),
    "gptj": ArchSpec(**_MLP, layers_path="transformer.h", up="fc_in", down="fc_out", attn_out="attn.out_proj"),
    "falcon": ArchSpec(**_MLP, layers_path="transformer.h", up="dense_h_to_4h", down="dense_4h_to_h",
                       attn_out="self_attention.dense"),
    "phi": ArchSpec(kind="mlp", act_attr="activation_fn", up="fc1", down="fc2", attn_out="self_attn.dense"),
    "opt": ArchSpec(kind="mlp", layers_path="model.decoder.layers", up="fc1", down="fc2",
                    act_attr="activation_fn", ffn_on_layer=True, attn_out="self_attn.out_proj"),
}


def register_arch(model_type: str, spec: ArchSpec) -> None:
    """Add or replace the registry entry for ``model_type``."""
    _REGISTRY[model_type] = spec


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


def get_arch(config) -> ArchSpec:
    """The ArchSpec for a transformers config (or a model_type string)."""
    model_type = config if isinstance(config, str) else getattr(config, "model_type", None)
    if model_type not in _REGISTRY:
        raise UnsupportedArchitectureError(
            f"architecture '{model_type}' is not supported (supported: {', '.join(supported_model_types())}); "
            f"register it with locas.register_arch('{model_type}', ArchSpec(...))"
        )
    return _REGISTRY[model_type]
