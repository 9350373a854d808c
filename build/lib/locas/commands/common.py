"""Shared CLI plumbing: model flags, training flags generated from ``TrainConfig``.

    >>> add_model_args(parser); add_train_args(parser)
    >>> lm = load_lm(args); cfg = train_config(args)
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from dataclasses import fields

from ..config import TrainConfig

TRAIN_HELP = {
    "window_size": "tokens visible per window (scored, then trained on)",
    "steps_per_window": "optimiser steps per window; the first reuses the scoring pass",
    "lr": "learning rate (AdamW)",
    "weight_decay": "AdamW weight decay",
    "schedule": "learning-rate schedule over the run: constant or cosine",
    "loss": "test-time objective: NTP, SD (=ST), MIX",
    "mix_weight": "weight of the SD term in MIX",
    "sd_context": "teacher context in tokens for SD/MIX (0 = 4 x window, capped at the model maximum)",
    "sd_topk": "keep only the teacher's top-k logits (0 = full vocabulary)",
    "memory_width": "Locas slots per layer (r)",
    "memory_init": "highest | lowest | random_index | random | activation",
    "memory_layers": "layers with memory: all, top:N, bottom:N or a list like 20,25,29",
    "tau_scale": "multiplier on the paper's output scale tau",
    "lora_rank": "TempLoRA rank",
    "lora_alpha": "TempLoRA alpha (0 = rank)",
    "full_context": "context of the full-attention baseline (0 = the model maximum)",
    "epochs": "passes over the text",
    "seed": "random seed",
}
ALIASES = {"loss": ["--loss-function"]}


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="smollm2-135m", help="hub id, local directory, or smollm2-135m (embedded)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    g.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (memory stays float32)")
    g.add_argument("--data-dir", default=None, help="data directory with pg19/, locomo/, mmlu/")
    g.add_argument("--device-map", default=None,
                   help="'auto' spreads a model too large for one GPU over all GPUs (accelerate)")


def add_dist_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-gpus", type=int, default=0,
                   help="re-launch through torchrun with N processes (one per GPU; CPU processes without GPUs)")


def maybe_relaunch(args: argparse.Namespace, argv: list[str] | None = None) -> int | None:
    """With ``--num-gpus N`` outside torchrun, re-run the command under torchrun; returns its exit code.

    ``argv`` defaults to the arguments ``locas.cli.main`` parsed (else ``sys.argv[1:]``).
    """
    import os
    import sys

    from ..distributed import relaunch_with_torchrun, strip_flag

    if args.num_gpus and args.num_gpus > 1 and "WORLD_SIZE" not in os.environ:
        argv = argv if argv is not None else getattr(args, "_argv", None) or sys.argv[1:]
        return relaunch_with_torchrun(args.num_gpus, strip_flag(argv, "--num-gpus"))
    return None


def add_train_args(p: argparse.ArgumentParser, **defaults) -> None:
    g = p.add_argument_group("test-time training")
    base = TrainConfig()
    for f in fields(TrainConfig):
        default = defaults.get(f.name, getattr(base, f.name))
        flags = ["--" + f.name.replace("_", "-"), *ALIASES.get(f.name, [])]
        g.add_argument(*flags, dest=f.name, type=type(getattr(base, f.name)), default=default,
                       help=f"{TRAIN_HELP.get(f.name, '')} (default: {default})")


def train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})


@contextmanager
def rank_lm(args: argparse.Namespace):
    """``(lm, ctx)`` for this process: under torchrun the process group is joined (and left on exit)
    and the model sits on this rank's device; without torchrun ``ctx`` is a world of one."""
    from ..distributed import DistContext

    ctx = DistContext.from_env()
    try:
        yield load_lm(args, ctx), ctx
    finally:
        ctx.close()


def load_lm(args: argparse.Namespace, ctx=None):
    """The model named by ``--model``; under torchrun each rank takes its own device."""
    from ..model import LocasForCausalLM

    device = args.device
    if ctx is not None and ctx.world > 1 and device in (None, "cuda"):  # plain "cuda" means this rank's GPU
        device = ctx.device
    return LocasForCausalLM.from_pretrained(args.model, dtype=args.dtype, device=device,
                                            device_map=getattr(args, "device_map", None))
