"""``locas retention``: base vs a memory file vs a TempLoRA adapter on MMLU and a held-out book.

    $ locas retention --memory book.locas --adapter lora_dir/ --limit-per-subject 4 --out runs/retention
    $ torchrun --nproc-per-node 2 -m locas.cli retention --memory book.locas --out runs/retention  # or --num-gpus 2
    $ locas pg19 --book 10146 --method locas --method lora --retention      # memorise, then this report
"""

from __future__ import annotations

from .common import add_dist_args, add_model_args, maybe_relaunch

HELP = "forgetting report: MMLU change, held-out perplexity and KL vs the base model"


def add_retention_args(p, heldout_tokens: int = 8192) -> None:
    g = p.add_argument_group("retention report")
    g.add_argument("--heldout", default="10321", help="held-out PG-19 id or text file (default: 10321)")
    g.add_argument("--heldout-tokens", type=int, default=heldout_tokens,
                   help=f"first N tokens of the held-out text (default: {heldout_tokens}; 0 = all)")
    g.add_argument("--subjects", default=None, help="comma-separated MMLU subjects (default: all 57)")
    g.add_argument("--limit-per-subject", type=int, default=4,
                   help="seeded stratified subset: N questions per subject (default: 4; 0 = all)")
    g.add_argument("--shots", type=int, default=5, help="few-shot examples from the dev split (default: 5)")
    g.add_argument("--mmlu-seed", type=int, default=0, help="seed of the stratified subset")
    g.add_argument("--mmlu-batch-size", type=int, default=8, help="questions per forward pass")


def add_arguments(p):
    p.add_argument("--memory", action="append", default=[], help="Locas memory file (repeatable)")
    p.add_argument("--adapter", default=None, help="peft LoRA adapter directory (e.g. a saved TempLoRA)")
    p.add_argument("--dense", default=None, help="fused checkpoint directory (from `locas fuse`)")
    p.add_argument("--window-size", type=int, default=1024, help="window for held-out perplexity / KL")
    p.add_argument("--out", default="runs/retention", help="output directory")
    p.add_argument("--resume", action="store_true",
                   help="reuse the MMLU subjects and held-out windows already finished in <out>/parts")
    add_model_args(p)
    add_dist_args(p)
    add_retention_args(p)


def inputs(lm, args):
    """(held-out tokens, MMLU questions, dev shots, categories) from the retention flags."""
    from ..data.mmlu import categories, load_questions
    from ..data.pg19 import load_book
    from ..errors import LocasError
    from ..eval.pg19 import tokenize_text

    if args.shots < 0 or args.limit_per_subject < 0 or args.heldout_tokens < 0:
        raise LocasError("--shots, --limit-per-subject and --heldout-tokens must not be negative")
    tokens = tokenize_text(lm.tokenizer, load_book(args.heldout, args.data_dir), args.heldout_tokens or None)
    subjects = [s.strip() for s in args.subjects.split(",") if s.strip()] if args.subjects else None
    qs = load_questions(subjects, limit_per_subject=args.limit_per_subject or None, seed=args.mmlu_seed,
                        data=args.data_dir)
    dev = load_questions(sorted({q.subject for q in qs}), split="dev", data=args.data_dir) if args.shots else []
    return tokens, qs, dev, categories(args.data_dir)


def report(variants, lm, args, window: int, meta: dict, ctx=None, resume: bool = False, files=()) -> dict | None:
    """The retention report of ``variants`` in ``args.out_retention`` (sharded under torchrun; rank 0 writes)."""
    from pathlib import Path

    from ..eval.retention import retention_report, write_retention

    tokens, qs, dev, cats = inputs(lm, args)
    meta = {"model": str(lm.name), "heldout": args.heldout, "heldout_tokens_requested": args.heldout_tokens,
            "limit_per_subject": args.limit_per_subject, "mmlu_seed": args.mmlu_seed, **meta}
    fingerprint = {**meta, "variants": [v.name for v in variants], "shots": args.shots, "window": window,
                   "subjects": args.subjects, "batch_size": args.mmlu_batch_size,
                   "files": {str(f): file_stamp(f) for f in files}}
    payload = retention_report(variants, lm.tokenizer, tokens, qs, shots=args.shots, dev=dev, window=window,
                               cats=cats, batch_size=args.mmlu_batch_size, meta=meta, ctx=ctx, resume=resume,
                               parts_dir=Path(args.out_retention) / "parts" if ctx is not None else None,
                               fingerprint=fingerprint)
    if payload is None:  # not rank 0
        return None
    print(write_retention(payload, args.out_retention))
    print(f"wrote {args.out_retention}/results.json, results.csv, retention.png")
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

    from ..errors import LocasError
    from ..eval.retention import base_variant, load_adapter, lora_variant, memory_variant, model_variant
    from ..io import load_memory
    from ..models import load_model
    from .common import rank_lm

    code = maybe_relaunch(args)
    if code is not None:
        return code
    with rank_lm(args) as (lm, ctx):
        peft_model = load_adapter(lm, args.adapter) if args.adapter else None
        variants = [base_variant(lm, peft_model)]
        for path in args.memory:
            variants.append(memory_variant(lm, load_memory(path, model=lm), peft_model=peft_model,
                                           name=Path(path).stem))
        if peft_model is not None:
            variants.append(lora_variant(lm, peft_model, name="lora"))
        if args.dense:
            dense, _ = load_model(args.dense, dtype=args.dtype, device=str(lm.device))
            variants.append(model_variant(dense, name="dense"))
        if len({v.name for v in variants}) != len(variants):
            raise LocasError("two variants share a name (memory files with the same stem); rename one")
        args.out_retention = args.out
        files = [*args.memory, *([args.adapter] if args.adapter else []), *([args.dense] if args.dense else [])]
        report(variants, lm, args, args.window_size, {"memories": args.memory, "adapter": args.adapter,
                                                       "dense": args.dense}, ctx=ctx, resume=args.resume, files=files)


def run_with_pg19(lm, args) -> None:
    """``locas pg19 --retention``: stream every book with every method, keep the last book's Locas memory
    and TempLoRA adapter, write the PG-19 report, then the retention report in ``<out>/retention``."""
    from pathlib import Path

    from ..data.pg19 import load_book
    from ..eval.pg19 import print_summary, tokenize_text, write_pg19_report
    from ..eval.retention import memorise, variants_for
    from .common import train_config

    books, methods, cfg = args.book or ["10146"], args.method or ["truncate", "locas"], train_config(args)
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
        print_summary(write_pg19_report(Path(args.out), lm, books, cfg, results, max_tokens=args.max_tokens))
        args.out_retention = str(Path(args.out) / "retention")
        report(variants_for(lm, kept), lm, args, cfg.window_size,
               {"memorised": str(books[-1]), "max_tokens": args.max_tokens, "config": cfg.to_dict()})
    finally:
        for k in kept:
            k.release()
