"""``locas mmlu``: MMLU accuracy (letter NLL) of a model, with or without a memory or adapter.

    $ locas mmlu --limit-per-subject 8 --shots 5                      # base model, stratified subset
    $ locas mmlu --memory book.locas --subjects astronomy,virology    # with a memory file
    $ locas mmlu --model fused/ -o mmlu.json                          # a fused dense checkpoint
"""

from __future__ import annotations

from ...eval.mmlu import MMLUConfig
from ..checks import path_arg
from ..flags import Number, add_memory_arg, add_model_args, add_output_arg, add_settings, settings_from

HELP = "MMLU accuracy per subject, category and overall (0- or k-shot, letter NLL)"
# a small valid invocation: the bad-input matrix (tests/test_bad_input.py) runs it, then breaks it
EXAMPLE = {"--shots": "0", "-o": "{out}.json", "--model": "{model}", "--device": "cpu", "--data-dir": "{data}"}


def add_arguments(p):
    add_memory_arg(p)
    path_arg(p, "--adapter", kind="dir", default=None, help="peft LoRA adapter directory to inject (default: none)")
    p.add_argument("--seed", type=Number(int, minimum=0), default=0, help="seed of the stratified subset (default: 0)")
    add_output_arg(p, what="JSON file for the full report with per-question records (default: none, print only)",
                   kind="file_out")
    add_settings(p, MMLUConfig, title="MMLU")
    add_model_args(p, data=True)


def run(args):
    from ...core.files import load_memory
    from ...eval.mmlu import evaluate_mmlu
    from ...eval.report import format_table, write_json
    from ...eval.retention import base_variant, lora_variant, memory_variant
    from ...learn.learners import load_adapter
    from ..flags import load_lm

    mmlu = settings_from(args, MMLUConfig)
    lm = load_lm(args)
    qs = mmlu.questions(args.data_dir, seed=args.seed)
    peft_model = load_adapter(lm, args.adapter) if args.adapter else None
    if args.memory:
        variant = memory_variant(lm, load_memory(args.memory, model=lm, strict=not args.no_strict),
                                 peft_model=peft_model)
    elif peft_model is not None:
        variant = lora_variant(lm, peft_model)
    else:
        variant = base_variant(lm)
    with variant.enter() as model:
        rep = evaluate_mmlu(model, lm.tokenizer, qs, shots=mmlu.shots, data=args.data_dir, batch_size=mmlu.batch_size)
    rows = [[k, v["n"], 100 * v["acc"]] for k, v in rep["categories"].items()]
    rows += [["overall (micro)", rep["n"], 100 * rep["micro"]], ["overall (macro)", len(rep["subjects"]),
                                                                 100 * rep["macro"]]]
    print(format_table(["category", "n", "acc %"], rows))
    if args.output:
        write_json(args.output, {"model": str(lm.name), "memory": args.memory, "adapter": args.adapter, **rep})
        print(f"wrote {args.output}")
