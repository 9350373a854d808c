"""Checking a command's paths before any work: inputs exist and are what they should be, outputs can be
written and do not clobber anything without ``--overwrite``, one process at a time per run directory.

A path argument is declared with ``path_arg(parser, *flags, kind=...)``; ``check_paths`` walks the
parsed arguments of every command the same way (the bad-input matrix of tests/test_bad_input.py
walks them too). Kinds:

==========  ====================================================================================
text        a UTF-8 text file to learn from (empty, binary and non-UTF-8 files are refused)
context     a UTF-8 text file to put in a prompt (the same checks; any length will do)
book        a PG-19 id, or a text file
memory      a memory file (.locas), checked in full: metadata and checksum
dir         a directory to read (an adapter, a fused checkpoint, the data directory)
keys        a file of API keys (one per line; UTF-8, at least one key)
file_out    a file to write: not a directory, its folder writable, an existing one only with --overwrite
dir_out     an artefact directory to write (a fused checkpoint): not a file, an existing non-empty one
            only with --overwrite
run_dir     a run's directory (pg19, locomo, retention, demo): an earlier run in it only with --resume
            (to continue it) or --overwrite (to replace its results); locked while the command runs
store       a directory a long-running command keeps its files in (`locas serve --memory-dir`): created if
            missing, must be writable; locked while the command runs (one server per directory)
==========  ====================================================================================

    >>> path_arg(p, "file", kind="text", help="UTF-8 text file to memorise")
    >>> check_paths(parser, args)                  # LocasError with one line naming the problem and the fix
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

from ..errors import LocasError

KINDS = ("text", "context", "book", "memory", "dir", "keys", "file_out", "dir_out", "run_dir", "store")
LOCKED = ("run_dir", "store")
RUN_MARKERS = ("results.json", "parts", "ckpt", "memories", "retention", "book.locas")
LOCK = ".locas.lock"


def path_arg(p, *flags, kind: str, **kwargs):
    """``p.add_argument`` for a path, tagged with its ``kind`` (one of ``KINDS``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown path kind {kind!r}")
    action = p.add_argument(*flags, **kwargs)
    action.path_kind = kind
    return action


def path_actions(parser) -> list:
    return [a for a in parser._actions if getattr(a, "path_kind", None)]


def _values(value) -> list:
    if value is None:
        return []
    return [v for v in (value if isinstance(value, (list, tuple)) else [value]) if v is not None]


def check_paths(parser, args) -> None:
    """Every path argument of ``args`` checked against its kind; the first problem is a ``LocasError``."""
    overwrite, resume = getattr(args, "overwrite", False), getattr(args, "resume", None)  # None: no --resume
    for action in path_actions(parser):
        for value in _values(getattr(args, action.dest, None)):
            CHECKS[action.path_kind](Path(value), overwrite=overwrite, resume=resume)


def check_repeated(parser, argv: list[str]) -> None:
    """One setting given twice with different values (``--objective ntp --loss sd``: two names of one flag)
    is an error, not a silent override."""
    import argparse

    for action in parser._actions:
        if not action.option_strings or isinstance(action, (argparse._AppendAction, argparse._CountAction)):
            continue
        given = []
        for i, token in enumerate(argv):
            name, eq, value = token.partition("=")
            if name in action.option_strings:
                given.append((name, value if eq else (argv[i + 1] if action.nargs != 0 and i + 1 < len(argv)
                                                      else "")))
        if len({v for _, v in given}) > 1:
            shown = ", ".join(f"{n} {v}".strip() for n, v in given)
            raise LocasError(f"one setting given twice with different values ({shown}); give "
                             f"{action.option_strings[0]} once")


# ---- inputs ----------------------------------------------------------------------------------------
def check_text(path: Path, **_) -> None:
    from ..data.paths import read_text

    read_text(path)


def check_book(path: Path, **_) -> None:
    text = str(path)
    if text.isdigit() and not path.exists():
        return  # a PG-19 id, looked up in the data directory when the book is read
    check_text(path)


def check_memory(path: Path, **_) -> None:
    from ..core.files import load_memory
    from ..errors import LocasWarning

    with warnings.catch_warnings():  # the note on an old file comes once, when the command loads it
        warnings.simplefilter("ignore", LocasWarning)
        load_memory(path)


def check_dir(path: Path, **_) -> None:
    if not path.exists():
        raise LocasError(f"directory '{path}' not found; check the path")
    if not path.is_dir():
        raise LocasError(f"'{path}' is a file, not a directory; give a directory")


def check_keys(path: Path, **_) -> None:
    from ..serve.auth import ApiKeys

    check_text(path)
    ApiKeys.from_file(path)


# ---- outputs ---------------------------------------------------------------------------------------
def _writable(path: Path) -> None:
    """The nearest existing folder above ``path`` must be a folder we can create files in (probed for real:
    permissions alone do not tell, e.g. for root or a read-only mount)."""
    ancestor = path.parent if str(path.parent) else Path(".")
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise LocasError(f"cannot write '{path}': '{ancestor}' is a file, not a directory; choose another output")
    try:
        fd, probe = tempfile.mkstemp(prefix=".locas-write-check.", dir=ancestor)
    except OSError as exc:
        raise LocasError(f"cannot write '{path}': '{ancestor}' is not writable ({exc.strerror or exc}); "
                         "choose another output") from None
    os.close(fd)
    os.unlink(probe)


def check_file_out(path: Path, overwrite: bool = False, **_) -> None:
    if path.is_dir():
        raise LocasError(f"'{path}' is a directory; give a file path to write (e.g. {path / 'out'})")
    if path.exists() and not overwrite:
        raise LocasError(f"'{path}' already exists; pass --overwrite to replace it, or choose another output")
    _writable(path)


def check_dir_out(path: Path, overwrite: bool = False, **_) -> None:
    if path.exists() and not path.is_dir():
        raise LocasError(f"'{path}' is a file, not a directory; give a directory path to write")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise LocasError(f"'{path}' already exists and is not empty; pass --overwrite to replace it")
    _writable(path / "x")


def check_run_dir(path: Path, overwrite: bool = False, resume: bool | None = None) -> None:
    if path.exists() and not path.is_dir():
        raise LocasError(f"'{path}' is a file, not a directory; give a directory for the run's files")
    earlier = [m for m in RUN_MARKERS if (path / m).exists()]
    if earlier and not (overwrite or resume):
        how = "--resume to continue it, or --overwrite to replace its results" if resume is not None else \
            "--overwrite to replace its results"
        raise LocasError(f"'{path}' holds an earlier run ({', '.join(earlier)}); pass {how}, or choose another "
                         "output")
    _writable(path / "x")


def check_store(path: Path, **_) -> None:
    if path.exists() and not path.is_dir():
        raise LocasError(f"'{path}' is a file, not a directory; give a directory to keep the memories in")
    _writable(path / "x")


CHECKS = {"text": check_text, "context": check_text, "book": check_book, "memory": check_memory, "dir": check_dir,
          "keys": check_keys, "file_out": check_file_out, "dir_out": check_dir_out, "run_dir": check_run_dir,
          "store": check_store}


# ---- one process per run directory ------------------------------------------------------------------
@contextmanager
def run_lock(parser, args):
    """Hold an exclusive lock on every run directory of ``args`` while the command runs (rank 0 of a
    torchrun job, or the process that re-launched it); a second process gets a one-line error. A run
    directory this command created and left empty is removed again."""
    dirs = [Path(v) for a in path_actions(parser) if a.path_kind in LOCKED for v in _values(getattr(args, a.dest))]
    if os.environ.get("LOCAS_LOCK_HELD") or os.environ.get("RANK", "0") != "0":
        dirs = []  # the parent process (--num-gpus) or rank 0 holds it
    held, created = [], []
    try:
        for d in dirs:
            if not d.exists():
                created.append(d)
            d.mkdir(parents=True, exist_ok=True)
            fh = open(d / LOCK, "a+")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.close()
                raise LocasError(f"another locas process is running in '{d}'; wait for it to finish, or choose "
                                 "another directory") from None
            held.append(fh)
        if dirs:
            os.environ["LOCAS_LOCK_HELD"] = "1"  # children re-launched through torchrun inherit it
        yield
    finally:
        if dirs:
            os.environ.pop("LOCAS_LOCK_HELD", None)
        for fh in held:
            fh.close()
        for d in created:
            if d.is_dir() and [p.name for p in d.iterdir()] == [LOCK]:
                (d / LOCK).unlink()
                d.rmdir()
