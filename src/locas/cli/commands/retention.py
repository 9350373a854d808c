"""``locas retention``: base vs memory files vs a TempLoRA adapter on MMLU and a held-out book.

    $ locas retention --memory book.locas --adapter lora_dir/ --limit-per-subject 4 -o runs/retention
    $ torchrun --nproc-per-node 2 -m locas.cli retention --memory book.locas -o runs/retention  # or --num-gpus 2
    $ locas pg19 --book 10146 --method locas --method lora --retention      # memorise, then this report
"""

from __future__ import annotations

from ...eval.mmlu import MMLUConfig
from ...eval.retention import HeldoutConfig
from ..checks import path_arg
from ..flags import (
    Number,
    add_dist_args,
    add_memory_arg,
    add_model_args,
    add_output_arg,
    add_resume_arg,
    add_settings,
    settings_from,
)

HELP = "forgetting report: MMLU change, held-out perplexity and KL vs the base model"
EXTRA = "eval"  # locas[eval]: checked before any work (locas/extras.py)
# a small valid invocation: the bad-input matrix (tests/test_bad_input.py) runs it, then breaks it
EXAMPLE = {"--memory": "{memory}", "--heldout": "{text}", "--heldout-tokens": "64", "--shots": "0",
           "--window-size": "32",
           "-o": "{out}", "--model": "{model}", "--device": "cpu", "--data-dir": "{data}"}
DISTRIBUTED = True


def add_retention_args(p) -> None:
    """The held-out text and the MMLU questions of a retention report (also on ``locas pg19 --retention``)."""
    add_settings(p, HeldoutConfig, title="retention report: held-out text")
    add_settings(p, MMLUConfig, title="retention report: MMLU (the subset is drawn with --seed)")


def add_arguments(p):
    add_memory_arg(p, repeat=True)
    path_arg(p, "--adapter", kind="dir", default=None,
             help="peft LoRA adapter directory, e.g. a saved TempLoRA (default: none)")
    path_arg(p, "--dense", kind="dir", default=None,
             help="fused checkpoint directory from `locas fuse` (default: none)")
    p.add_argument("--window-size", type=Number(int, minimum=2), default=1024,
                   help="window for the held-out perplexity and KL (default: 1024)")
    p.add_argument("--seed", type=Number(int, minimum=0), default=0, help="seed of the MMLU subset (default: 0)")
    add_output_arg(p, default="runs/retention")
    add_resume_arg(p, "the MMLU subjects and held-out windows")
    add_model_args(p, data=True)
    add_dist_args(p)
    add_retention_args(p)


def inputs(lm, args):
    """(held-out tokens, MMLU questions, dev shots, categories, the two configs) from the retention flags."""
    from ...data.mmlu import categories
    from ...data.pg19 import load_book
    from ...eval.mmlu import shot_pool
    from ...text.tokens import tokenize_text

    held, mmlu = settings_from(args, HeldoutConfig), settings_from(args, MMLUConfig)
    tokens = tokenize_text(lm.tokenizer, load_book(held.heldout, args.data_dir), held.heldout_tokens or None)
    qs = mmlu.questions(args.data_dir, seed=_seed(args))
    return tokens, qs, shot_pool(qs, mmlu.shots, args.data_dir), categories(args.data_dir), held, mmlu


def _seed(args) -> int:
    from ...learn.config import TrainConfig
    from ..flags import setting_value

    return args.seed if hasattr(args, "seed") else setting_value(args, TrainConfig, "seed")


def report(variants, lm, args, out_dir, window: int, meta: dict, ctx=None, resume: bool = False,
           files=()) -> dict | None:
    """The retention report of ``variants`` in ``out_dir`` (sharded under torchrun; rank 0 writes)."""
    from pathlib import Path

    from ...eval.retention import retention_report, write_retention

    tokens, qs, dev, cats, held, mmlu = inputs(lm, args)
    meta = {"model": str(lm.name), "heldout": held.heldout, "heldout_tokens_requested": held.heldout_tokens,
            "limit_per_subject": mmlu.limit_per_subject, "mmlu_seed": _seed(args), **meta}
    fingerprint = {**meta, "variants": [v.name for v in variants], "shots": mmlu.shots, "window": window,
                   "subjects": mmlu.subjects, "batch_size": mmlu.batch_size,
                   "files": {str(f): file_stamp(f) for f in files}}
    payload = retention_report(variants, lm.tokenizer, tokens, qs, shots=mmlu.shots, dev=dev, window=window,
                               cats=cats, batch_size=mmlu.batch_size, meta=meta, ctx=ctx, resume=resume,
                               parts_dir=Path(out_dir) / "parts" if ctx is not None else None,
                               fingerprint=fingerprint)
    if payload is None:  # not rank 0
        return None
    print(write_retention(payload, out_dir))
    print(f"wrote {out_dir}/results.json, results.csv, retention.png")
    return payload


def file_stamp(path) -> list:
    """(name, size, mtime) of a file or of every file in a directory: a kept result is reused only if unchanged."""
    from pathlib import Path

    path = Path(path)
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    return [[str(f.relative_to(path)) if path.is_dir() else f.name, f.stat().st_size, f.stat().st_mtime_ns]
            for f in files if f.exists()]


def run(args):
    from pathlib import Path

    from ...core.files import load_memory
    from ...core.hub import load_model
    from ...errors import LocasError
    from ...eval.retention import base_variant, lora_variant, memory_variant, model_variant
    from ...learn.learners import load_adapter
    from ..flags import rank_lm

    settings_from(args, HeldoutConfig), settings_from(args, MMLUConfig)  # bad numbers fail before the model loads
    with rank_lm(args) as (lm, ctx):
        peft_model = load_adapter(lm, args.adapter) if args.adapter else None
        variants = [base_variant(lm, peft_model)]
        for path in args.memory:
            variants.append(memory_variant(lm, load_memory(path, model=lm, strict=not args.no_strict),
                                           peft_model=peft_model, name=Path(path).stem))
        if peft_model is not None:
            variants.append(lora_variant(lm, peft_model, name="lora"))
        if args.dense:
            dense, _ = load_model(args.dense, dtype=args.dtype, device=str(lm.device))
            variants.append(model_variant(dense, name="dense", bos_ids=lm.bos_ids))
        if len({v.name for v in variants}) != len(variants):
            raise LocasError("two variants share a name (memory files with the same stem); rename one")
        files = [*args.memory, *([args.adapter] if args.adapter else []), *([args.dense] if args.dense else [])]
        report(variants, lm, args, args.output, args.window_size,
               {"memories": args.memory, "adapter": args.adapter, "dense": args.dense}, ctx=ctx, resume=args.resume,
               files=files)


def run_with_pg19(lm, args) -> None:
    """``locas pg19 --retention``: stream every book with every method, keep the last book's Locas memory
    and TempLoRA adapter, write the PG-19 report, then the retention report in ``<output>/retention``."""
    from pathlib import Path

    from ...data.pg19 import load_book
    from ...eval.pg19 import print_summary, write_pg19_report
    from ...eval.retention import memorise, variants_for
    from ...text.tokens import tokenize_text
    from .pg19 import pg19_setup

    books = args.book or ["10146"]
    cfg, methods = pg19_setup(lm, args)
    results = {m: [] for m in methods}
    kept = []
    try:
        for i, book in enumerate(books):
            tokens = tokenize_text(lm.tokenizer, load_book(book, args.data_dir), args.max_tokens)
            for m in sorted(methods, key=lambda m: m == "lora"):  # LoRA last: its adapter stays in for the report
                keep = i == len(books) - 1 and m in ("locas", "lora")
                state = memorise(lm, m, tokens, cfg, keep=keep)
                results[m].append(state.result)
                if keep:
                    kept.append(state)
        print_summary(write_pg19_report(Path(args.output), lm, books, cfg, results, max_tokens=args.max_tokens))
        report(variants_for(lm, kept), lm, args, str(Path(args.output) / "retention"), cfg.window_size,
               {"memorised": str(books[-1]), "max_tokens": args.max_tokens, "config": cfg.to_dict()})
    finally:
        for k in kept:
            k.release()
