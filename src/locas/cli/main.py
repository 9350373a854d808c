"""The ``locas`` command: a thin table from subcommand to one library call.

    $ locas pg19 --book 10146 --method truncate --method locas --max-tokens 16384
    $ locas memorize notes.txt -o notes.locas --objective selfstudy
    $ locas fuse --memory notes.locas -o fused/
    $ python -m locas info

Each command module defines ``HELP``, ``add_arguments(parser)`` and ``run(args)``; ``TRAINS``
("windows" or "segments") says which objectives it takes, ``DISTRIBUTED`` that ``--num-gpus``
re-launches it through torchrun.
"""

from __future__ import annotations

import importlib
import os
import sys

from ..errors import LocasError
from .flags import Parser, default_threads, normalize_argv, setting_value

# subcommand -> module in locas.cli.commands
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


def command_module(name: str):
    return importlib.import_module(f"locas.cli.commands.{COMMANDS[name]}")


def build_parser() -> Parser:
    parser = Parser(prog="locas", description="Parametric test-time memory for causal language models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name in COMMANDS:
        mod = command_module(name)
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run, _module=mod)
    return parser


def check_objective(args) -> None:
    """An objective a command cannot train with is a one-line error naming the commands that take it."""
    from ..learn.config import TrainConfig
    from ..learn.objectives import WINDOW_OBJECTIVES, objective_class

    trains = getattr(args._module, "TRAINS", None)
    if trains is None:
        return
    name = setting_value(args, TrainConfig, "objective")
    cls = objective_class(name)
    if trains == "windows" and not cls.windows:
        takers = [c for c in COMMANDS if getattr(command_module(c), "TRAINS", None) == "segments"]
        raise LocasError(f"{args.command} scores every window before learning it, so it takes the window objectives "
                         f"{', '.join(WINDOW_OBJECTIVES)}; '{name}' is taken by {', '.join(takers)}")


def set_threads(args) -> None:
    import torch

    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise LocasError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads or default_threads())


def quiet_libraries() -> None:
    """The command's own output only: no weight-loading bars or deprecation notices from transformers."""
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    if "transformers" in sys.modules:  # already imported (e.g. main() called from Python)
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    quiet_libraries()
    argv = normalize_argv(list(sys.argv[1:] if argv is None else argv))
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed on one line
        return int(exc.code or 0)
    args._argv = argv  # for --num-gpus re-launching
    try:
        check_objective(args)
        if getattr(args._module, "DISTRIBUTED", False):
            from .flags import maybe_relaunch

            code = maybe_relaunch(args)
            if code is not None:
                return code
        set_threads(args)
        code = args._run(args)
    except LocasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"error: file not found: {exc.filename}; check the path", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = "; rerun with --resume to continue from what was kept" if hasattr(args, "resume") else ""
        print(f"interrupted{hint}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `locas info x.locas | head -1`: the reader left, nothing to report
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
