"""The ``locas`` command: a thin table from subcommand to one library call.

    $ locas pg19 --book 10146 --method truncate --method locas --max-tokens 16384
    $ locas memorize notes.txt -o notes.locas --objective selfstudy
    $ locas fuse --memory notes.locas -o fused/
    $ locas serve --memory-dir memories/
    $ python -m locas info

Each command module defines ``HELP``, ``add_arguments(parser)`` and ``run(args)``; ``TRAINS``
("windows" or "segments") says which objectives it takes, ``DISTRIBUTED`` that ``--num-gpus``
re-launches it through torchrun.
"""

from __future__ import annotations

import importlib
import os
import sys

from .._version import __version__
from ..errors import LocasError
from ..extras import require, require_extra
from .flags import Parser, apply_preset, default_threads, normalize_argv, setting_value

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
    "stack": "stack",
    "serve": "serve",
    "export": "export",
}


def command_module(name: str):
    return importlib.import_module(f"locas.cli.commands.{COMMANDS[name]}")


def build_parser() -> Parser:
    parser = Parser(prog="locas", description="Parametric test-time memory for causal language models.")
    parser.add_argument("--version", action="version", version=f"locas {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name in COMMANDS:
        mod = command_module(name)
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run, _module=mod, _parser=p)
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
    for module in cls.requires:
        require(module, f"--objective {name}")
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


def quiet_libraries(verbose: bool = False) -> None:
    """The command's own output only: no weight-loading bars or deprecation notices from transformers and
    torch (``--verbose`` shows them); locas's own notes print as one ``note: ...`` line each."""
    import warnings

    from ..errors import LocasWarning

    def note(message, category, *_args, **_kwargs):
        prefix = "note" if issubclass(category, LocasWarning) else category.__name__
        print(f"{prefix}: {message}", file=sys.stderr)

    warnings.showwarning = note
    if verbose:
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|transformers|peft|accelerate)\b")
    if "transformers" in sys.modules:  # already imported (e.g. main() called from Python)
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C."""


def _on_sigterm(signum, frame):
    raise Terminated()


def os_error(exc: OSError) -> str:
    """One line for an operating-system error that reached the top (disk full, permission, ...)."""
    import errno

    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    if exc.errno == errno.ENOSPC:
        return f"no space left on device{where}; free some space or choose another --output"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"permission denied{where}; choose another path or fix its permissions"
    if exc.errno == errno.ENOENT:
        return f"file not found{where}; check the path"
    return f"{exc.strerror or exc}{where}"


def interrupted(args) -> str:
    """What an interrupted command leaves: nothing (atomic writes), or a run to resume."""
    from pathlib import Path

    out = getattr(args, "output", None)
    if hasattr(args, "resume") and out and any((Path(out) / d).exists() for d in ("parts", "ckpt")):
        return f"interrupted: what finished is kept in {out}; rerun with --resume to continue"
    return "interrupted: nothing written (outputs are written whole or not at all)"


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    argv = normalize_argv(list(sys.argv[1:] if argv is None else argv))
    quiet_libraries("--verbose" in argv)
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        return _run(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(argv: list[str]) -> int:
    args = None
    try:
        args = build_parser().parse_args(argv)  # imports torch: Ctrl-C may come here too
        args._argv = argv  # for --num-gpus re-launching
        from .checks import check_paths, check_repeated, run_lock

        check_repeated(args._parser, argv)
        if getattr(args._module, "EXTRA", None):  # an optional part: its packages, before any work
            require_extra(args._module.EXTRA, f"locas {args.command}")
        apply_preset(args._parser, args, argv)
        check_objective(args)
        check_paths(args._parser, args)  # before the model loads: a bad path costs nothing
        with run_lock(args._parser, args):
            if getattr(args._module, "DISTRIBUTED", False):
                from .flags import maybe_relaunch

                code = maybe_relaunch(args)
                if code is not None:
                    return code
            set_threads(args)
            code = args._run(args)
    except SystemExit as exc:  # --help, or a usage error already printed on one line
        return int(exc.code or 0)
    except LocasError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(interrupted(args) if args is not None else "interrupted: nothing written", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except BrokenPipeError:  # e.g. `locas info x.locas | head -1`: the reader left, nothing to report
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as exc:
        print(f"error: {os_error(exc)}", file=sys.stderr)
        return 2
    return int(code or 0)


def exit_now(code: int) -> None:
    """End the ``locas`` process with ``code`` without tearing every module down one by one.

    Exit handlers still run (temporary directories are removed, logs flushed) and both streams are
    flushed; then ``os._exit``. With torch and transformers loaded, the interpreter's own teardown takes
    about 0.7 s here (docs/PERFORMANCE.md, "Start-up"), a fifth of a `locas ask`. A process in a
    torch.distributed group leaves the ordinary way.
    """
    import atexit

    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that left, or a stream already closed
            pass
    os._exit(code)


def entry() -> None:
    """The ``locas`` console script and ``python -m locas``: ``main`` and a quick exit."""
    exit_now(main())


if __name__ == "__main__":
    entry()
