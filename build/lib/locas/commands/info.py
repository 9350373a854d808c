"""``locas info [MEMORY]``: supported architectures, or the metadata of a memory file."""

from __future__ import annotations

HELP = "show a memory file's metadata, or the supported architectures"


def add_arguments(p):
    p.add_argument("memory", nargs="?", help="memory file (.locas)")


def run(args):
    import json

    from ..arch import supported_model_types
    from ..io import read_memory_info

    if args.memory:
        info = read_memory_info(args.memory)
        info.pop("tau", None)
        print(json.dumps(info, indent=2))
    else:
        print("supported model types:", ", ".join(supported_model_types()))
