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
from ..core.model import SITES
from ..errors import LocasError
from ..settings import setting, validate

SCHEDULES = ("constant", "cosine")
TAU_LAWS = ("r", "sqrt")
VALUE_INITS = ("zero", "gradient")
UPDATES = ("bp", "nlsvd")
WRITE_TOKENS = ("all", "top")


@dataclass
class TrainConfig:
    """Settings of test-time training (shared by Locas and the TempLoRA baseline)."""

    window_size: int = setting(1024, "tokens visible to the model per window (scored, then trained on)",
                               minimum=2)
    steps_per_window: int = setting(1, "optimiser steps per window (the first reuses the scoring pass); for "
                                       "segment objectives, passes over a segment's items", minimum=1)
    lr: float = setting(3e-2, "learning rate (AdamW); 3e-2 is Locas's best on PG-19, TempLoRA's is about 1e-3",
                        positive=True, maximum=10.0)
    weight_decay: float = setting(0.0, "AdamW weight decay", minimum=0)
    adam_beta1: float = setting(0.9, "AdamW beta1 (first-moment decay)", minimum=0, maximum=0.999999)
    adam_beta2: float = setting(0.999, "AdamW beta2 (second-moment decay)", minimum=0, maximum=0.999999)
    adam_eps: float = setting(1e-8, "AdamW epsilon", positive=True, maximum=1.0)
    warmup_windows: int = setting(0, "linear learning-rate warm-up over the first N steps (windows)", minimum=0)
    schedule: str = setting("constant", "learning-rate schedule over a run of known length: constant, or cosine "
                                        "down to 10 %", choices=SCHEDULES)
    objective: str = setting("ntp", "test-time objective (see `locas info`)",
                             aliases=("--loss", "--loss-function", "--ttt-loss"), metavar="OBJECTIVE")
    mix_weight: float = setting(1.0, "weight of the SD term in the mix objective", minimum=0)
    sd_context: int = setting(0, "teacher context in tokens for sd/mix (0 = 4 x window, capped at the model maximum)",
                              minimum=0)
    sd_topk: int = setting(0, "keep only the teacher's top-k logits in sd/mix (0 = the full vocabulary)", minimum=0)
    memory_width: int = setting(64, "Locas slots per layer (r)", minimum=1)
    memory_init: str = setting("highest", "memory initialiser", choices=INITS)
    memory_layers: str = setting("all", "layers with memory: all, top:N, bottom:N or a list like 20,25,29")
    memory_on: str = setting("ffn", "where the Locas memory sits: ffn (beside every feed-forward block, the paper), "
                                    "attn (a linear low-rank map on every attention output projection, fused into "
                                    "o_proj; docs/ATTENTION.md) or both", choices=SITES)
    tau_scale: float = setting(1.0, "multiplier on the output scale (see --tau-law)", positive=True)
    tau_law: str = setting("r", "output scale law: r = the paper's tau = mean|W_down| / r; sqrt = mean|W_down| / "
                                "sqrt(r), so the memory's largest output grows with its width", choices=TAU_LAWS)
    value_init: str = setting("zero", "Locas values at the first update: zero, then an AdamW step (the paper); or "
                                      "gradient: a closed-form first step, each layer's values set to -radius * G / "
                                      "max_j |G_j| from the first window's gradient G", choices=VALUE_INITS)
    value_radius: float = setting(1.0, "Locas: weight-norm clipping radius of the value vectors (keys and gates "
                                       "stay at 1)", positive=True)
    key_lr_scale: float = setting(1.0, "Locas: learning-rate multiplier for keys and gates (values get --lr)",
                                  positive=True, maximum=100.0)
    attn_lr_scale: float = setting(1.0, "Locas: learning-rate multiplier for the attention-path slots (--memory-on "
                                        "attn or both; the attention path wants a smaller lr than the FFN's)",
                                   positive=True, maximum=100.0)
    gain_lr: float = setting(0.0, "Locas: learn a per-layer output gain (exp of a parameter that starts at 0, on "
                                  "top of --tau-law's scale) with this lr; 0 = a fixed scale (the paper)",
                             minimum=0, maximum=10.0)
    extra_step_tokens: int = setting(0, "optimiser steps after a window's first train on only its last N tokens "
                                        "(a cheaper extra step; 0 = the whole window)", minimum=0)
    update_every: int = setting(1, "train on every N-th window only; the windows between are scored by the "
                                   "current state without an update (cheaper)", minimum=1)
    lora_rank: int = setting(16, "TempLoRA rank", minimum=1)
    lora_alpha: float = setting(0.0, "TempLoRA alpha (0 = the rank, i.e. scale 1)", minimum=0)
    lora_targets: str = setting("all", "TempLoRA: the projections it adapts: all of a layer's, attn (attention's "
                                       "only) or mlp (the feed-forward block's only)", choices=("all", "attn", "mlp"))
    full_context: int = setting(0, "context of the full-attention baseline in tokens (0 = the model maximum)",
                                minimum=0)
    epochs: int = setting(1, "passes over the text", minimum=1)
    seed: int = setting(0, "random seed (initialisation, shuffling, sampling, probes)", minimum=0)

    def __post_init__(self):
        self.objective = str(self.objective).lower()
        validate(self)

    def to_dict(self) -> dict:
        return asdict(self)

    def output_scale(self, width: int | None = None) -> float:
        """The factor on the paper's ``tau = mean|W_down| / r`` that ``tau_scale`` and ``tau_law`` give a memory of
        ``width`` slots (default ``memory_width``)."""
        r = width or self.memory_width
        return self.tau_scale * (r ** 0.5 if self.tau_law == "sqrt" else 1.0)

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
    write_eps: float = setting(1.0, "step size of the step-wise write: v = eps * G / |G|", positive=True)
    write_tokens: str = setting("top", "write every token of a window, or only the highest-loss ones",
                                choices=WRITE_TOKENS)
    write_count: int = setting(0, "slots written per window (0: capacity / 2 for nlsvd, the width for bp init)",
                               minimum=0)
    capacity: int = setting(0, "nlsvd: slots before compression to capacity / 2 (0: --memory-width)", minimum=0)
    nlsvd_clip: bool = setting(False, "nlsvd: weight-norm clipping after each write and compression (bounds the "
                                      "memory's growth)")

    def __post_init__(self):
        super().__post_init__()  # validates the MLP fields too: ``validate`` walks every field


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
