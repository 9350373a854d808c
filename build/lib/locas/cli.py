"""The ``locas`` command: a thin table from subcommand to one library call.

    $ locas pg19 --book 10146 --method truncate --method locas --max-tokens 16384
    $ locas memorize notes.txt -o notes.locas --epochs 3
    $ locas fuse notes.locas -o fused/
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import LocasError

# subcommand -> module in locas.commands (each defines HELP, add_arguments, run)
COMMANDS = {
    "demo": "demo",
    "pg19": "pg19",
    "memorize": "memorize",
    "fuse": "fuse",
    "info": "info",
    "mmlu": "mmlu",
    "retention": "retention",
    "locomo": "locomo",
    "ask": "ask",
    "chat": "chat",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="locas", description="Parametric test-time memory for causal LMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        mod = importlib.import_module(f"locas.commands.{module}")
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)  # for --num-gpus re-launching
    try:
        code = args._run(args)
    except LocasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"error: file not found: {exc.filename}; check the path", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
