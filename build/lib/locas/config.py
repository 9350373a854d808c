"""Validated configuration dataclasses with JSON round-trip.

    >>> cfg = TrainConfig(window_size=1024, lr=3e-2, memory_width=64)
    >>> TrainConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .errors import LocasError


@dataclass
class TrainConfig:
    """Settings of the streaming test-time trainer (shared by Locas and the TempLoRA baseline)."""

    window_size: int = 1024  # tokens visible to the model per window (scored and trained on)
    steps_per_window: int = 1  # optimiser steps per window (the first reuses the scoring pass)
    lr: float = 1e-2
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | cosine (over the run's windows, to 10 %)
    loss: str = "NTP"  # NTP | SD | ST | MIX
    mix_weight: float = 1.0  # weight of the SD term in MIX
    sd_context: int = 0  # teacher context in tokens; 0 = 4 x window (capped at the model maximum)
    sd_topk: int = 0  # keep only the teacher's top-k logits (0 = full vocabulary)
    memory_width: int = 64  # Locas slots per layer (r)
    memory_init: str = "highest"
    memory_layers: str = "all"  # all | top:N | bottom:N | comma-separated indices
    tau_scale: float = 1.0  # multiplies the paper's tau
    lora_rank: int = 16
    lora_alpha: float = 0.0  # 0 = equal to the rank (scale 1)
    full_context: int = 0  # context of the full-attention baseline; 0 = the model maximum
    epochs: int = 1  # passes over the text (for short texts)
    seed: int = 0

    def __post_init__(self):
        if self.window_size < 2:
            raise LocasError(f"window size must be at least 2 tokens, got {self.window_size}")
        if self.steps_per_window < 1:
            raise LocasError("steps per window must be at least 1")
        if not self.lr > 0:
            raise LocasError(f"learning rate must be positive, got {self.lr}")
        if self.schedule not in ("constant", "cosine"):
            raise LocasError(f"unknown schedule '{self.schedule}'; use constant or cosine")
        if self.epochs < 1:
            raise LocasError("epochs must be at least 1")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def parse_layers(spec: str | list[int] | None, num_layers: int) -> list[int]:
    """``all`` | ``top:N`` | ``bottom:N`` | ``"3,4,5"`` -> sorted layer indices."""
    if spec is None or spec == "all":
        return list(range(num_layers))
    if isinstance(spec, (list, tuple)):
        layers = sorted({int(i) for i in spec})
    elif ":" in spec:
        where, _, n = spec.partition(":")
        if where not in ("top", "bottom") or not n.isdigit() or not 1 <= int(n) <= num_layers:
            raise LocasError(f"bad --memory-layers '{spec}'; use all, top:N or bottom:N with 1 <= N <= {num_layers}")
        n = int(n)
        layers = list(range(num_layers - n, num_layers)) if where == "top" else list(range(n))
    else:
        try:
            layers = sorted({int(i) for i in spec.split(",") if i.strip()})
        except ValueError:
            raise LocasError(
                f"bad --memory-layers '{spec}'; use all, top:N, bottom:N or a list like 20,25,29") from None
    if not layers or layers[0] < 0 or layers[-1] >= num_layers:
        raise LocasError(f"--memory-layers '{spec}' is outside the model's {num_layers} layers")
    return layers
