"""Training settings: validated dataclasses with JSON round-trip, the one source of the training flags.

``TrainConfig`` holds what every test-time learner shares (windows, optimiser, objective, memory
shape, the TempLoRA and full-attention baselines); ``MLPTrainConfig`` adds the Locas-MLP write and
NL-SVD settings. Field help texts become the command-line flags (``locas.cli.flags``).

    >>> cfg = TrainConfig(window_size=1024, lr=3e-2, memory_width=64, objective="sd")
    >>> TrainConfig.from_dict(cfg.to_dict()) == cfg
    True
    >>> parse_layers("top:2", 30)
    [28, 29]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..core.init import INITS
from ..errors import LocasError
from ..settings import setting

SCHEDULES = ("constant", "cosine")
UPDATES = ("bp", "nlsvd")
WRITE_TOKENS = ("all", "top")


@dataclass
class TrainConfig:
    """Settings of test-time training (shared by Locas and the TempLoRA baseline)."""

    window_size: int = setting(1024, "tokens visible to the model per window (scored, then trained on)")
    steps_per_window: int = setting(1, "optimiser steps per window (the first reuses the scoring pass); for "
                                       "segment objectives, passes over a segment's items")
    lr: float = setting(3e-2, "learning rate (AdamW); 3e-2 is Locas's best on PG-19, TempLoRA's is about 1e-3")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    schedule: str = setting("constant", "learning-rate schedule over a run of known length: constant, or cosine "
                                        "down to 10 %", choices=SCHEDULES)
    objective: str = setting("ntp", "test-time objective (see `locas objectives`)",
                             aliases=("--loss", "--loss-function", "--ttt-loss"), metavar="OBJECTIVE")
    mix_weight: float = setting(1.0, "weight of the SD term in the mix objective")
    sd_context: int = setting(0, "teacher context in tokens for sd/mix (0 = 4 x window, capped at the model maximum)")
    sd_topk: int = setting(0, "keep only the teacher's top-k logits in sd/mix (0 = the full vocabulary)")
    memory_width: int = setting(64, "Locas slots per layer (r)")
    memory_init: str = setting("highest", "memory initialiser", choices=INITS)
    memory_layers: str = setting("all", "layers with memory: all, top:N, bottom:N or a list like 20,25,29")
    tau_scale: float = setting(1.0, "multiplier on the paper's output scale tau = mean|W_down| / r")
    lora_rank: int = setting(16, "TempLoRA rank")
    lora_alpha: float = setting(0.0, "TempLoRA alpha (0 = the rank, i.e. scale 1)")
    full_context: int = setting(0, "context of the full-attention baseline in tokens (0 = the model maximum)")
    epochs: int = setting(1, "passes over the text")
    seed: int = setting(0, "random seed (initialisation, shuffling, sampling, probes)")

    def __post_init__(self):
        self.objective = str(self.objective).lower()
        if self.window_size < 2:
            raise LocasError(f"--window-size must be at least 2 tokens, got {self.window_size}")
        if self.steps_per_window < 1:
            raise LocasError(f"--steps-per-window must be at least 1, got {self.steps_per_window}")
        if not self.lr > 0:
            raise LocasError(f"--lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise LocasError(f"--weight-decay must not be negative, got {self.weight_decay}")
        if self.schedule not in SCHEDULES:
            raise LocasError(f"unknown schedule '{self.schedule}'; use constant or cosine")
        if self.epochs < 1:
            raise LocasError(f"--epochs must be at least 1, got {self.epochs}")
        if self.memory_width < 1 or self.lora_rank < 1:
            raise LocasError("--memory-width and --lora-rank must be at least 1")
        if self.memory_init not in INITS:
            raise LocasError(f"unknown memory init '{self.memory_init}'; choose one of {', '.join(INITS)}")
        if min(self.sd_context, self.sd_topk, self.full_context, self.lora_alpha) < 0 or not self.tau_scale > 0:
            raise LocasError("--sd-context, --sd-topk, --full-context and --lora-alpha must be >= 0, "
                             "and --tau-scale > 0")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class MLPTrainConfig(TrainConfig):
    """``TrainConfig`` plus the Locas-MLP settings (so they are saved with results and checkpoints)."""

    update: str = setting("bp", "mlp: backprop on a fixed-width memory, or step-wise writes + NL-SVD compression",
                          choices=UPDATES)
    mlp_init: str = setting("write", "mlp + bp: step-wise write of window 1, or a locas initialiser",
                            choices=("write", *INITS))
    write_eps: float = setting(1.0, "step size of the step-wise write: v = eps * G / |G|")
    write_tokens: str = setting("top", "write every token of a window, or only the highest-loss ones",
                                choices=WRITE_TOKENS)
    write_count: int = setting(0, "slots written per window (0: capacity / 2 for nlsvd, the width for bp init)")
    capacity: int = setting(0, "nlsvd: slots before compression to capacity / 2 (0: --memory-width)")
    nlsvd_clip: bool = setting(False, "nlsvd: weight-norm clipping after each write and compression (bounds the "
                                      "memory's growth)")

    def __post_init__(self):
        super().__post_init__()
        if self.update not in UPDATES:
            raise LocasError(f"unknown update '{self.update}'; choose bp or nlsvd")
        if self.mlp_init != "write" and self.mlp_init not in INITS:
            raise LocasError(f"unknown MLP init '{self.mlp_init}'; choose write or one of {', '.join(INITS)}")
        if self.write_tokens not in WRITE_TOKENS:
            raise LocasError(f"unknown write selection '{self.write_tokens}'; choose all or top")
        if not self.write_eps > 0:
            raise LocasError(f"--write-eps must be positive, got {self.write_eps}")
        if self.write_count < 0 or self.capacity < 0:
            raise LocasError("--write-count and --capacity must be >= 0 (0 = automatic)")


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
