"""The one objective registry: ``name -> objective`` for every command that trains.

==========  =============================================================================  =======
name        what the memory learns                                                          windows
==========  =============================================================================  =======
ntp         next-token prediction on the text                                               yes
sd (st)     KL to the frozen model reading a longer context (self-distillation)             yes
mix         ntp + mix_weight x sd                                                           yes
selfstudy   answers to probes about the text, distilled from the model with the text        no
grpo        cloze completions rewarded by token F1 (group-relative policy optimisation)     no
==========  =============================================================================  =======

Window objectives can score each window before learning it (the streaming protocol of
``locas pg19`` and ``locas memorize``); all of them can train on a segment (``Objective.update``:
``locas memorize``, every LoCoMo session).

    >>> objective = make_objective(cfg)                                    # cfg.objective names it
    >>> objective = make_objective(cfg, ObjectiveSettings(grpo=GRPOConfig(group_size=8)))
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import LocasError
from ...probes.config import ProbeConfig
from .base import Objective
from .grpo import GRPO, GRPOConfig
from .selfstudy import SelfStudy, SelfStudyConfig
from .window import Mix, NextToken, SelfDistillation

OBJECTIVES: dict[str, type[Objective]] = {"ntp": NextToken, "sd": SelfDistillation, "st": SelfDistillation,
                                          "mix": Mix, "selfstudy": SelfStudy, "grpo": GRPO}
OBJECTIVE_NAMES = ("ntp", "sd", "mix", "selfstudy", "grpo")  # ``st`` is an alias of ``sd`` (the reference's name)
WINDOW_OBJECTIVES = tuple(n for n in OBJECTIVE_NAMES if OBJECTIVES[n].windows)


@dataclass
class ObjectiveSettings:
    """The settings of the objectives beyond ``TrainConfig`` (each objective reads its own part)."""

    selfstudy: SelfStudyConfig = field(default_factory=SelfStudyConfig)
    probes: ProbeConfig = field(default_factory=ProbeConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)


def objective_class(name: str) -> type[Objective]:
    key = str(name).lower()
    if key not in OBJECTIVES:
        raise LocasError(f"unknown objective '{name}'; choose one of {', '.join(OBJECTIVE_NAMES)} (st = sd)")
    return OBJECTIVES[key]


def make_objective(cfg, settings: ObjectiveSettings | None = None) -> Objective:
    """The objective named by ``cfg.objective``, with its settings."""
    return objective_class(cfg.objective)(cfg, settings or ObjectiveSettings())


__all__ = ["OBJECTIVES", "OBJECTIVE_NAMES", "WINDOW_OBJECTIVES", "GRPOConfig", "Objective", "ObjectiveSettings",
           "SelfStudyConfig", "make_objective", "objective_class"]
