"""Locas-MLP flags shared by commands: ``--variant mlp --update {bp,nlsvd}`` and the write settings.

    >>> add_mlp_args(parser)                      # in add_arguments
    >>> cfg, methods = mlp_setup(lm, args)        # MLPTrainConfig and "locas" -> "locas-mlp" when --variant mlp
"""

from __future__ import annotations

import argparse

from ..errors import LocasError
from ..init import INITS
from .common import train_config


def add_mlp_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Locas-MLP (two-layer FFN models: gpt2, gpt_neox, opt, gptj, phi, falcon)")
    g.add_argument("--variant", choices=["glu", "mlp"], default="glu",
                   help="memory variant run by the 'locas' method (default: glu)")
    g.add_argument("--update", choices=["bp", "nlsvd"], default="bp",
                   help="mlp: backprop on a fixed-width memory, or step-wise writes + NL-SVD compression")
    g.add_argument("--mlp-init", choices=["write", *INITS], default="write",
                   help="mlp + bp: step-wise write of window 1 (default) or a locas.init initialiser")
    g.add_argument("--write-eps", type=float, default=1.0, help="step size of the step-wise write (default 1.0)")
    g.add_argument("--write-tokens", choices=["all", "top"], default="top",
                   help="write every token of a window or only the highest-loss ones (default top)")
    g.add_argument("--write-count", type=int, default=0, help="slots written per window (0: capacity/2)")
    g.add_argument("--capacity", type=int, default=0,
                   help="nlsvd: slots before compression to capacity/2 (0: --memory-width)")
    g.add_argument("--nlsvd-clip", action="store_true",
                   help="nlsvd: weight-norm clipping after each write/compression (bounds the memory's growth)")
    g.add_argument("--mlp-activation", choices=["relu", "backbone"], default="relu",
                   help="memory activation: relu (paper) or the backbone's own (needed to fuse exactly)")


def mlp_setup(lm, args):
    """(TrainConfig or MLPTrainConfig, methods) for ``args``; switches the memory activation if asked."""
    from ..train_mlp import MLPTrainConfig

    cfg = train_config(args)
    methods = list(getattr(args, "method", None) or ["truncate", "locas"])
    if getattr(args, "variant", "glu") != "mlp":
        return cfg, methods
    if lm.memory_kind != "mlp":
        raise LocasError(f"--variant mlp needs a two-layer FFN model (gpt2, gpt_neox, opt, gptj, phi, falcon); "
                         f"{lm.config.model_type} is a GLU model: drop --variant mlp")
    lm.set_mlp_activation(args.mlp_activation)
    cfg = MLPTrainConfig(**cfg.to_dict(), update=args.update, mlp_init=args.mlp_init, write_eps=args.write_eps,
                         write_tokens=args.write_tokens, write_count=args.write_count, capacity=args.capacity,
                         nlsvd_clip=args.nlsvd_clip)
    return cfg, ["locas-mlp" if m == "locas" else m for m in methods]
