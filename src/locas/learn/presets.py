"""Named training recipes: a preset sets several ``TrainConfig`` fields at once (flags given still win).

* ``paper``      the paper's recipe (PAPER.md): tau = mean|W_down| / r, zero values, one AdamW step per
                 window at lr 3e-2 (the best of its sweep on PG-19 10146), every vector clipped to norm 1.
* ``sqrt-tail``  tuned on the first 6,144 tokens of PG-19 10146 one lever at a time (docs/PG19.md):
                 tau = mean|W_down| / sqrt(r) (8x the paper's at r = 64), lr 1e-2, and a second, cheaper
                 step on the last 256 tokens of each window.

A model can want other values: ``MODEL_SETTINGS`` holds, per packaged model, what changes in each preset and in
each window objective's defaults (the paper's recipe), each tuned on that model's PG-19 tuning prefix
(docs/PG19.md "The second model"). Flags and request settings still win over both.

    >>> cfg = TrainConfig(**preset_settings("paper"))
    >>> preset_settings("paper")["lr"], preset_settings("paper", model="gemma3-270m")["lr"]
    (0.03, 0.01)
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


# `locas memorize --preset`: points on the recall / forgetting frontier of the self-study objective, chosen on the
# recall benchmark's tuning documents and measured on its held-out ones (docs/RECALL.md "Selectivity"). Each sets
# the output scale (--tau-scale), the silence term (--silence-weight: the memory's output energy on the model's own
# samples, relative to the MLP's) and the learning rate; the rest are the selfstudy defaults.
_STRONG = {"tau_scale": 256.0, "silence_weight": 1e4, "silence_tokens": 2048, "lr": 3e-3, "epochs": 3}
RECALL_PRESETS: dict[str, dict] = {
    "safe": {"tau_scale": 1.0, "silence_weight": 0.0, "lr": 0.1, "epochs": 1},
    "balanced": {**_STRONG, "silence_weight": 1e5},  # strong, held 10x quieter off the text
    "strong": _STRONG,
}
RECALL_PRESET_HELP = {
    "safe": "the memorize defaults: the paper's output scale, no silence term, one pass (least forgetting)",
    "balanced": "strong's reach held 10x quieter off the text (--silence-weight 1e5): fewer answers than strong at "
                "about 2/3 of its forgetting, the same CPU time",
    "strong": "256x the output scale kept quiet off the text (--silence-weight 1e4 on 2,048 tokens of the model's "
              "own samples), lr 3e-3, 3 passes: the model says more of the answers, at about 4x the CPU time and "
              "more forgetting than safe",
}


# packaged model -> preset or window objective -> the fields that differ there. gemma3-270m: on the first 6,144
# tokens of PG-19 10146 (truncation 19.68), 4 lrs per recipe (benchmarks/results/pg19-gemma3-270m-sweep-*.json):
# the paper recipe is best at 1e-2 (19.09; SmolLM2's 3e-2 gives 23.79), sqrt-tail at 1e-3 (19.01; its 1e-2 is
# worse than truncation). ntp trains with the paper's recipe by default, so it takes that lr; sd and mix were not
# measured on it and keep theirs.
# `strong` on gemma3-270m: on the recall benchmark's tuning document verlaine-glassworks at 4x recall's CPU-seconds,
# lr 1e-3 gave NLL ratio 0.458 at KL 0.140 (tau-scale 64 at 3e-3: 0.515 at 0.183); SmolLM2's 3e-3 moved Gemma 12x
# further off unrelated text than the defaults (docs/RECALL.md). `balanced` on gemma3-270m was not tuned there; it
# takes strong's lr (the same recipe but a larger silence weight, which only pulls the memory in further).
MODEL_SETTINGS: dict[str, dict[str, dict]] = {
    "gemma3-270m": {"paper": {"lr": 1e-2}, TUNED: {"lr": 1e-3}, "ntp": {"lr": 1e-2}, "strong": {"lr": 1e-3},
                    "balanced": {"lr": 1e-3}},
}
for _help in (PRESET_HELP, RECALL_PRESET_HELP):  # say where a model changes a preset
    for _name in _help:
        _help[_name] += "".join(f" ({', '.join(f'{k} {v:g}' for k, v in over[_name].items())} on {model})"
                                for model, over in MODEL_SETTINGS.items() if _name in over)


def preset_settings(name: str, model: str | None = None) -> dict:
    """The fields preset ``name`` sets on ``model`` (a packaged model's name, alias or hub id; any other model gets
    the preset as written): ``TrainConfig`` fields, and for a recall preset also ``SelfStudyConfig`` ones."""
    table = RECALL_PRESETS if name in RECALL_PRESETS else PRESETS
    if name not in table:
        raise LocasError(f"unknown preset '{name}'; choose one of {', '.join([*PRESETS, *RECALL_PRESETS])}")
    return {**table[name], **model_settings(model, name)}


def model_settings(model: str | None, key: str) -> dict:
    """What ``model`` changes in preset or window objective ``key`` (``MODEL_SETTINGS``; {} for most models).

        >>> model_settings("gemma3-270m", "ntp")
        {'lr': 0.01}
    """
    from ..core.hub import model_key

    return dict(MODEL_SETTINGS.get(model_key(model), {}).get(str(key).lower(), {}))
