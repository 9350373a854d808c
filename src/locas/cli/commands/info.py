"""``locas info [FILE]``: the metadata of a memory file, or what this locas supports.

    $ locas info notes.locas
    $ locas info              # architectures, methods and objectives
"""

from __future__ import annotations

from ..checks import path_arg

HELP = "show a memory file's metadata, or the supported architectures, methods and objectives"
# a small valid invocation: the bad-input matrix (tests/test_bad_input.py) runs it, then breaks it
EXAMPLE = {"file": "{memory}"}


def add_arguments(p):
    path_arg(p, "file", kind="memory", nargs="?",
             help="memory file (.locas) to describe (default: show what is supported)")


def run(args):
    import json

    from ...core.arch import supported_model_types
    from ...core.files import read_memory_info
    from ...learn.learners import METHODS
    from ...learn.objectives import OBJECTIVE_NAMES, objective_class

    if args.file:
        info = read_memory_info(args.file)
        info.pop("tau", None)
        print(json.dumps(info, indent=2))
        return
    print("supported model types:", ", ".join(supported_model_types()))
    print("methods compared:", ", ".join(METHODS))
    print("objectives (--objective):")
    for name in OBJECTIVE_NAMES:
        cls = objective_class(name)
        print(f"  {name:<10} {'windows ' if cls.windows else 'segments'}  {cls.summary}")
