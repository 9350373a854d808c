"""``locas mmlu``: MMLU accuracy (letter NLL) of a model, with or without a memory or adapter.

    $ locas mmlu --limit-per-subject 8 --shots 5                      # base model, stratified subset
    $ locas mmlu --memory book.locas --subjects astronomy,virology    # with a memory file
    $ locas mmlu --model fused/ --out mmlu.json                       # a fused dense checkpoint
"""

from __future__ import annotations

from .common import add_model_args

HELP = "MMLU accuracy per subject, category and overall (0- or k-shot, letter NLL)"


def add_arguments(p):
    p.add_argument("--memory", default=None, help="Locas memory file to install")
    p.add_argument("--adapter", default=None, help="peft LoRA adapter directory to inject")
    p.add_argument("--subjects", default=None, help="comma-separated subjects (default: all 57)")
    p.add_argument("--limit-per-subject", type=int, default=0, help="seeded stratified subset (0 = all questions)")
    p.add_argument("--shots", type=int, default=5, help="few-shot examples from the dev split")
    p.add_argument("--seed", type=int, default=0, help="seed of the stratified subset")
    p.add_argument("--batch-size", type=int, default=8, help="questions per forward pass")
    p.add_argument("--out", default=None, help="write the full report (with per-question records) as JSON")
    add_model_args(p)


def run(args):
    from ..data.mmlu import load_questions
    from ..errors import LocasError
    from ..eval.mmlu import evaluate_mmlu
    from ..eval.report import format_table, write_json
    from ..eval.retention import base_variant, load_adapter, lora_variant, memory_variant
    from ..io import load_memory
    from .common import load_lm

    if args.shots < 0 or args.limit_per_subject < 0 or args.batch_size < 1:
        raise LocasError("--shots and --limit-per-subject must be >= 0 and --batch-size >= 1")
    lm = load_lm(args)
    subjects = [s.strip() for s in args.subjects.split(",") if s.strip()] if args.subjects else None
    qs = load_questions(subjects, limit_per_subject=args.limit_per_subject or None, seed=args.seed,
                        data=args.data_dir)
    peft_model = load_adapter(lm, args.adapter) if args.adapter else None
    if args.memory:
        variant = memory_variant(lm, load_memory(args.memory, model=lm), peft_model=peft_model)
    elif peft_model is not None:
        variant = lora_variant(lm, peft_model)
    else:
        variant = base_variant(lm)
    with variant.enter() as model:
        rep = evaluate_mmlu(model, lm.tokenizer, qs, shots=args.shots, data=args.data_dir, batch_size=args.batch_size)
    rows = [[k, v["n"], 100 * v["acc"]] for k, v in rep["categories"].items()]
    rows += [["overall (micro)", rep["n"], 100 * rep["micro"]], ["overall (macro)", len(rep["subjects"]),
                                                                 100 * rep["macro"]]]
    print(format_table(["category", "n", "acc %"], rows))
    if args.out:
        write_json(args.out, {"model": str(lm.name), "memory": args.memory, "adapter": args.adapter, **rep})
        print(f"wrote {args.out}")
