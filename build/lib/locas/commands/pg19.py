"""``locas pg19``: whole-book streaming perplexity, several methods side by side."""

from __future__ import annotations

from .common import add_dist_args, add_model_args, add_train_args, load_lm, maybe_relaunch, rank_lm
from .mlp_args import add_mlp_args, mlp_setup
from .retention import add_retention_args

HELP = "PG-19 whole-book perplexity: truncation vs full attention vs Locas vs TempLoRA"


def add_arguments(p):
    p.add_argument("--book", action="append", default=None, help="PG-19 id or path (repeatable; default 10146)")
    p.add_argument("--method", action="append", default=None, choices=["truncate", "full", "locas", "lora"],
                   help="repeatable; default: truncate and locas")
    p.add_argument("--max-tokens", type=int, default=None, help="only the first N tokens of each book")
    p.add_argument("--out", default="runs/pg19", help="output directory")
    p.add_argument("--checkpoint-every", type=int, default=16, help="checkpoint every N windows (0 = never)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    p.add_argument("--retention", action="store_true", help="then report MMLU / held-out ppl / KL of base vs the "
                   "last book's Locas memory and TempLoRA adapter in <out>/retention (see locas retention)")
    add_model_args(p)
    add_dist_args(p)
    add_train_args(p)
    add_mlp_args(p)
    add_retention_args(p)


def run(args):
    from ..eval.pg19 import print_summary, run_pg19

    if args.retention:  # single process: the memorised states must stay in memory for the report
        from .retention import run_with_pg19

        return run_with_pg19(load_lm(args), args)
    code = maybe_relaunch(args)
    if code is not None:
        return code
    with rank_lm(args) as (lm, ctx):
        cfg, methods = mlp_setup(lm, args)
        payload = run_pg19(lm, args.book or ["10146"], methods, cfg,
                           args.out, max_tokens=args.max_tokens, data_dir=args.data_dir,
                           checkpoint_every=args.checkpoint_every, resume=args.resume, ctx=ctx)
    if payload is not None:
        print_summary(payload)
        print(f"wrote {args.out}/results.json, results.csv, ppl_curve.png")
