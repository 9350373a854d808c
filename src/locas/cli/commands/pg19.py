"""``locas pg19``: whole-book streaming perplexity, several methods side by side.

    $ locas pg19 --book 10146 --method truncate --method locas --method lora --max-tokens 16384 -o runs/pg19
    $ locas pg19 --model path/to/gpt2 --variant mlp --update nlsvd --write-count 64 --capacity 128
"""

from __future__ import annotations

from ...learn.config import MLPTrainConfig, TrainConfig
from ..checks import path_arg
from ..flags import (
    FULL,
    LORA,
    MEMORY,
    OBJECTIVE,
    OPTIMISER,
    WINDOW,
    Number,
    add_dist_args,
    add_model_args,
    add_output_arg,
    add_preset_arg,
    add_resume_arg,
    add_settings,
    settings_from,
)
from .retention import add_retention_args

HELP = "PG-19 whole-book perplexity: truncation vs full attention vs Locas vs TempLoRA"
EXTRA = "eval"  # locas[eval]: checked before any work (locas/extras.py)
# a small valid invocation: the bad-input matrix (tests/test_bad_input.py) runs it, then breaks it
EXAMPLE = {"--book": "{text}", "--method": "locas", "--max-tokens": "64", "--window-size": "32", "--memory-width": "4",
           "-o": "{out}", "--model": "{model}", "--device": "cpu", "--data-dir": "{data}"}
TRAINS = "windows"
DISTRIBUTED = True
MLP_ONLY = [f for f in MLPTrainConfig.__dataclass_fields__ if f not in TrainConfig.__dataclass_fields__]


def add_arguments(p):
    from ...eval.pg19 import PG19_METHODS

    path_arg(p, "--book", kind="book", action="append", default=None,
                   help="PG-19 id or text file; repeatable (default: 10146)")
    p.add_argument("--method", action="append", default=None, choices=PG19_METHODS,
                   help="what reads the book; repeatable (default: truncate and locas)")
    p.add_argument("--max-tokens", type=Number(int, minimum=2), default=None,
                   help="only the first N tokens of each book (default: all)")
    add_output_arg(p, default="runs/pg19")
    p.add_argument("--checkpoint-every", type=Number(int, minimum=0), default=16,
                   help="checkpoint every N windows, 0 = never (default: 16)")
    add_resume_arg(p, "the checkpoints and finished books")
    p.add_argument("--retention", action="store_true",
                   help="then report MMLU / held-out ppl / KL of base vs the last book's Locas memory and TempLoRA "
                        "adapter in <output>/retention, as `locas retention` does (default: off)")
    add_model_args(p, data=True)
    add_dist_args(p)
    g = add_settings(p, TrainConfig, title="test-time training",
                     only=WINDOW + OPTIMISER + OBJECTIVE + MEMORY + LORA + FULL)
    add_preset_arg(g)
    g = add_settings(p, MLPTrainConfig, title="Locas-MLP (two-layer FFN models: gpt2, gpt_neox, opt, gptj, phi, "
                                              "falcon; with --variant mlp)", only=MLP_ONLY)
    g.add_argument("--variant", choices=["glu", "mlp"], default="glu",
                   help="memory variant run by the 'locas' method (default: glu)")
    g.add_argument("--mlp-activation", choices=["relu", "backbone"], default="relu",
                   help="Locas-MLP memory activation: relu (paper) or the backbone's own, which fusing needs "
                        "(default: relu)")
    add_retention_args(p)


def pg19_setup(lm, args) -> tuple[TrainConfig, list[str]]:
    """(TrainConfig or MLPTrainConfig, methods) for ``args``; switches the memory activation for --variant mlp."""
    from ...errors import LocasError

    methods = list(args.method or ["truncate", "locas"])
    if len(set(methods)) != len(methods):
        raise LocasError("a method is listed twice in --method; list each once")
    if args.variant != "mlp":
        return settings_from(args, TrainConfig), methods
    if lm.memory_kind != "mlp":
        raise LocasError(f"--variant mlp needs a two-layer FFN model (gpt2, gpt_neox, opt, gptj, phi, falcon); "
                         f"{lm.config.model_type} is a GLU model: drop --variant mlp")
    lm.set_mlp_activation(args.mlp_activation)
    return settings_from(args, MLPTrainConfig), ["locas-mlp" if m == "locas" else m for m in methods]


def run(args):
    from ...eval.pg19 import print_summary, run_pg19
    from ..flags import load_lm, rank_lm

    if args.max_tokens is not None and args.max_tokens < 2:
        from ...errors import LocasError

        raise LocasError(f"--max-tokens must be at least 2 (or left out for the whole book), got {args.max_tokens}")
    settings_from(args, MLPTrainConfig if args.variant == "mlp" else TrainConfig)  # bad settings: before the model
    if not args.retention:
        from ...eval.mmlu import MMLUConfig
        from ...eval.retention import HeldoutConfig

        if settings_from(args, HeldoutConfig) != HeldoutConfig() or settings_from(args, MMLUConfig) != MMLUConfig():
            from ...errors import LocasError

            raise LocasError("--heldout, --heldout-tokens, --subjects, --limit-per-subject, --shots and --batch-size "
                             "take effect only with --retention; add --retention or drop them")
    if args.retention:  # single process: the memorised states must stay in memory for the report
        from .retention import run_with_pg19

        return run_with_pg19(load_lm(args), args)
    with rank_lm(args) as (lm, ctx):
        cfg, methods = pg19_setup(lm, args)
        payload = run_pg19(lm, args.book or ["10146"], methods, cfg, args.output, max_tokens=args.max_tokens,
                           data_dir=args.data_dir, checkpoint_every=args.checkpoint_every, resume=args.resume, ctx=ctx)
    if payload is not None:
        print_summary(payload)
        print(f"wrote {args.output}/results.json, results.csv, ppl_curve.png")
