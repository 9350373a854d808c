"""Architecture registry: where the decoder layers and feed-forward blocks of a model live.

Keyed by ``config.model_type``. Each entry says how to find the list of decoder layers, the
MLP inside a layer, and the names of its projections, so the memory can be attached beside it
and later fused into it.

    >>> spec = get_arch(model.config)            # ArchSpec for e.g. "llama"
    >>> layers = spec.layers(model)              # nn.ModuleList of decoder layers
    >>> register_arch("my_llama", ArchSpec(kind="glu", layers_path="model.layers"))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import UnsupportedArchitectureError


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

    def layers(self, model: nn.Module) -> nn.ModuleList:
        obj = model
        for part in self.layers_path.split("."):
            obj = getattr(obj, part)
        return obj

    def mlp(self, layer: nn.Module) -> nn.Module:
        return getattr(layer, self.mlp_attr)

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


_GLU = ArchSpec()
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
