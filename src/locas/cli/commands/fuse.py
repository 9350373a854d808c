"""``locas fuse --memory MEMORY -o DIR``: write a plain transformers checkpoint with the memory fused in.

    $ locas fuse --memory notes.locas -o fused/
"""

from __future__ import annotations

from ..flags import Number, add_memory_arg, add_model_args, add_output_arg

HELP = "fuse a memory file into a standalone checkpoint (intermediate_size + r)"
# a small valid invocation: the bad-input matrix (tests/test_bad_input.py) runs it, then breaks it
EXAMPLE = {"--memory": "{memory}", "-o": "{out}", "--model": "{model}", "--device": "cpu"}


def add_arguments(p):
    add_memory_arg(p, required=True)
    add_output_arg(p, what="directory for the fused checkpoint", kind="dir_out", required=True)
    p.add_argument("--row", type=Number(int, minimum=0), default=0,
                   help="which batch row of the memory to fuse (default: 0)")
    add_model_args(p)


def run(args):
    from ...core.files import atomic_directory, load_memory
    from ..flags import load_lm

    lm = load_lm(args)
    memory = load_memory(args.memory, model=lm, strict=not args.no_strict)
    dense = lm.to_dense(memory, row=args.row)

    def write(tmp):
        dense.save_pretrained(tmp)
        if lm.tokenizer is not None:
            lm.tokenizer.save_pretrained(tmp)

    atomic_directory(args.output, write, overwrite=args.overwrite)  # a kill leaves the old directory or the new
    print(f"wrote {args.output}: intermediate_size {lm.intermediate_size} -> {dense.config.intermediate_size}; "
          "load it with AutoModelForCausalLM.from_pretrained")
