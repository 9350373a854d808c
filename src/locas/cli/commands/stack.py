"""``locas stack A.locas B.locas -o AB.locas``: one memory whose output is the sum of several memories' outputs.

    $ locas stack ann.locas bob.locas -o both.locas
    $ locas ask --memory both.locas "What did Ann adopt?"

The slots are concatenated and each memory's values rescaled, so every memory keeps its own
output scale (``core.memory.stack_memories``): running the stacked file is exactly running the
memories side by side. What composing does to recall is measured in docs/SERVING.md.
"""

from __future__ import annotations

from ..checks import path_arg
from ..flags import add_model_args, add_output_arg

HELP = "stack memory files into one whose output is the sum of theirs (exact composition)"
# a small valid invocation: the bad-input matrix (tests/test_bad_input.py) runs it, then breaks it
EXAMPLE = {"memories": "{memory}", "-o": "{out}", "--model": "{model}", "--device": "cpu"}


def add_arguments(p):
    path_arg(p, "memories", kind="memory", nargs="+", help="memory files (.locas) of one model, one row each")
    add_output_arg(p, what="memory file (.locas)", kind="file_out", required=True)
    p.add_argument("--no-strict", action="store_true",
                   help="stack memories made for different weights of the same architecture anyway (default: off)")
    add_model_args(p)


def run(args):
    from ...core.files import load_memory, read_memory_info, save_memory
    from ...core.memory import stack_memories
    from ...errors import LocasError
    from ..flags import load_lm

    lm = load_lm(args)
    memories, activations, sites = [], set(), set()
    for path in args.memories:
        memory = load_memory(path, model=lm, strict=not args.no_strict)  # (L, B, r, d, C), all layers
        if memory.shape[1] != 1:
            raise LocasError(f"'{path}' holds {memory.shape[1]} rows; stack one-row memories (see `locas info`)")
        memories.append(memory)
        info = read_memory_info(path)
        activations.add(info.get("mlp_activation"))
        sites.add(info.get("memory_on", "ffn"))
    if len(activations - {None}) > 1:
        raise LocasError("these memories were trained with different mlp_activation settings; stack memories "
                         "trained alike")
    if len(sites) > 1:
        raise LocasError(f"these memories sit on different paths (--memory-on {', '.join(sorted(sites))}); stack "
                         "memories of one site")
    stacked = stack_memories(memories)
    widths = [m.shape[2] for m in memories]
    save_memory(stacked, args.output, model=lm, init="stack",
                extra={"stacked": [{"file": str(p), "width": w} for p, w in zip(args.memories, widths)]})
    print(f"wrote {args.output}: {len(memories)} memories, width {' + '.join(map(str, widths))} = "
          f"{stacked.shape[2]}")
