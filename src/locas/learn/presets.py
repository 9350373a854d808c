"""Named training recipes: a preset sets several ``TrainConfig`` fields at once (flags given still win).

* ``paper``      the paper's recipe (PAPER.md): tau = mean|W_down| / r, zero values, one AdamW step per
                 window at lr 3e-2 (the best of its sweep on PG-19 10146), every vector clipped to norm 1.
* ``sqrt-tail``  tuned on the first 6,144 tokens of PG-19 10146 one lever at a time (docs/PG19.md):
                 tau = mean|W_down| / sqrt(r) (8x the paper's at r = 64), lr 1e-2, and a second, cheaper
                 step on the last 256 tokens of each window.

    >>> cfg = TrainConfig(**preset_settings("paper"))
    >>> preset_settings("paper")["lr"]
    0.03
"""

from __future__ import annotations

from ..errors import LocasError

PRESETS: dict[str, dict] = {
    "paper": {"lr": 3e-2, "memory_width": 64, "tau_scale": 1.0, "tau_law": "r", "value_init": "zero",
              "value_radius": 1.0, "key_lr_scale": 1.0, "gain_lr": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999,
              "adam_eps": 1e-8, "warmup_windows": 0, "steps_per_window": 1, "extra_step_tokens": 0, "update_every": 1},
}
TUNED = "sqrt-tail"  # the best combination of the PG-19 levers on book 10146's prefix (docs/PG19.md)
PRESETS[TUNED] = {**PRESETS["paper"], "lr": 1e-2, "tau_law": "sqrt", "steps_per_window": 2, "extra_step_tokens": 256}
PRESET_HELP = {
    "paper": "the paper's recipe: tau = mean|W_down|/r, zero values, one AdamW step per window, lr 3e-2",
    TUNED: "the PG-19-tuned recipe: tau = mean|W_down|/sqrt(r), lr 1e-2, a second step on each window's last 256 "
           "tokens",
}


def preset_settings(name: str) -> dict:
    """The ``TrainConfig`` fields preset ``name`` sets."""
    if name not in PRESETS:
        raise LocasError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])
