"""``locas fuse MEMORY -o DIR``: write a plain transformers checkpoint with the memory fused in."""

from __future__ import annotations

from .common import add_model_args, load_lm

HELP = "fuse a memory file into a standalone checkpoint (intermediate_size + r)"


def add_arguments(p):
    p.add_argument("memory", help="memory file (.locas)")
    p.add_argument("-o", "--output", required=True, help="output directory for the fused checkpoint")
    p.add_argument("--row", type=int, default=0, help="which batch row of the memory to fuse")
    p.add_argument("--no-strict", action="store_true", help="skip the base-weights fingerprint check")
    add_model_args(p)


def run(args):
    from ..io import load_memory

    lm = load_lm(args)
    memory = load_memory(args.memory, model=lm, strict=not args.no_strict)
    dense = lm.to_dense(memory, row=args.row)
    dense.save_pretrained(args.output)
    if lm.tokenizer is not None:
        lm.tokenizer.save_pretrained(args.output)
    print(f"wrote {args.output}: intermediate_size {lm.intermediate_size} -> {dense.config.intermediate_size}; "
          "load it with AutoModelForCausalLM.from_pretrained")
