"""The bad-input matrix, generated from the command table: every subcommand x every input class.

Each command module carries ``EXAMPLE``, a small valid invocation (run first: it must succeed).
The matrix then breaks one argument at a time, by what the parser says the argument is: its path
kind (``locas.cli.checks``), its number bounds (``flags.Number``) or its choices, plus a full disk
(``ENOSPC`` injected into every write). Every cell must exit 2 with exactly one line on stderr
that starts with ``error:`` (progress bars aside), no traceback, and nothing left at the output
path. A new subcommand with an ``EXAMPLE`` is covered without editing this file.
"""

from __future__ import annotations

import errno
import os  # noqa: E402
import re
from pathlib import Path

import pytest

from golden_cases import mmlu_data
from locas.cli.flags import Number
from locas.cli.main import COMMANDS, build_parser, command_module
from test_locomo_support import char_lm

_FSYNC = os.fsync
UNWRITABLE = "/proc/locas-bad-input/out"  # not writable even for root
_PROGRESS = re.compile(r"\r|\d+%\||it/s\]|s/it\]")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny chat model on disk, its memory, another model's memory, data, and input files of every class."""
    from conftest import random_memory, tiny_lm
    from locas import LocasForCausalLM, save_memory

    root = tmp_path_factory.mktemp("bad-input")
    lm = char_lm(seed=2, chat=True)
    lm.model.save_pretrained(root / "model")
    lm.tokenizer.save_pretrained(root / "model")
    model = LocasForCausalLM.from_pretrained(str(root / "model"), device="cpu")
    save_memory(random_memory(model, width=4), root / "good.locas", model=model)
    other = tiny_lm("qwen2")
    save_memory(random_memory(other, width=4), root / "other.locas", model=other)
    good = (root / "good.locas").read_bytes()
    files = {
        "text": "Ann adopted a cat named Tom in May. Bob bought a red bike from Carl. Tom likes fish a lot.\n",
        "empty": "", "one-token": "a", "binary": b"\x89PNG\x00\x00\x01\x02" * 20,
        "non-utf8": bytes(range(0x80, 0xA0)) * 8,
        "corrupt": good[: len(good) // 2], "comments": "# no key here\n\n",
    }
    paths = {}
    for name, content in files.items():
        paths[name] = root / f"{name}.txt"
        paths[name].write_bytes(content if isinstance(content, bytes) else content.encode())
    (root / "a-dir").mkdir()
    return {"root": root, "model": root / "model", "memory": root / "good.locas", "other": root / "other.locas",
            "data": mmlu_data(root), **paths, "dir": root / "a-dir"}


def _subparsers() -> dict:
    import argparse

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def _argv(command: str, example: dict, world: dict, out: Path, changes: dict | None = None) -> list[str]:
    values = {**example, **(changes or {})}
    fill = {"model": world["model"], "memory": world["memory"], "text": world["text"], "data": world["data"],
            "out": out}
    positional, options = [], []
    for key, value in values.items():
        if value is None:
            continue
        value = value.format(**fill) if isinstance(value, str) else value
        if key.startswith("-"):
            options += [key] if value is True else [key, str(value)]
        else:
            positional.append(str(value))
    return [command, *positional, *options]


def _key(action, example: dict) -> str:
    """The EXAMPLE key of a parser action (its positional name or one of its flags)."""
    if not action.option_strings:
        return action.dest
    return next((s for s in action.option_strings if s in example), action.option_strings[-1])


def _leftovers(out: Path) -> list[str]:
    found = [str(p) for p in out.parent.glob(out.name + "*") if p.is_file()]
    if out.is_dir():
        found += [str(p) for p in out.rglob("*") if p.is_file() and p.name != ".locas.lock"]
    found += [str(p) for p in out.parent.glob(".*.tmp")]
    return found


def cells(world) -> list[tuple[str, str, dict, object]]:
    """(command, class, argument changes, setup) for every cell of the matrix."""
    out = []
    for name, parser in _subparsers().items():
        example = getattr(command_module(name), "EXAMPLE", None)
        assert example is not None, f"locas {name} has no EXAMPLE for the bad-input matrix"
        has_model = any("--model" in a.option_strings for a in parser._actions)
        for action in parser._actions:
            key = _key(action, example)
            kind = getattr(action, "path_kind", None)
            classes: dict[str, object] = {}
            if kind in ("text", "context", "book", "memory", "keys"):
                classes |= {"missing path": "{root}/missing.txt", "directory for a file": "{dir}",
                            "empty file": "{empty}", "binary file": "{binary}"}
            if kind in ("text", "context", "book", "keys"):
                classes["non-UTF-8 file"] = "{non-utf8}"
            if kind in ("text", "book"):
                classes["one-token text"] = "{one-token}"
            if kind == "memory":
                classes["corrupt memory file"] = "{corrupt}"
                if has_model:
                    classes["memory of another model"] = "{other}"
            if kind == "dir":
                classes |= {"missing directory": "{root}/missing-dir", "file for a directory": "{text}"}
            if kind == "keys":
                classes["comments only"] = "{comments}"
            if kind == "store":
                classes |= {"unwritable output": UNWRITABLE, "file for a directory": "{text}"}
            if kind in ("file_out", "dir_out", "run_dir"):
                classes |= {"unwritable output": UNWRITABLE, "existing output": "EXISTING"}
                classes["directory for a file" if kind == "file_out" else "file for a directory"] = \
                    "{dir}" if kind == "file_out" else "{text}"
            for cls, value in classes.items():
                out.append((name, f"{cls} ({key})", {key: value}, kind))
            if isinstance(action.type, Number):
                lo, hi, positive = action.type.bounds()
                if positive:
                    out.append((name, f"zero ({key})", {key: "0"}, None))
                if lo is not None:
                    out.append((name, f"below minimum ({key})", {key: str(lo - 1)}, None))
                if hi is not None:
                    out.append((name, f"huge ({key})", {key: str(hi * 1000 + 1)}, None))
            if action.choices and action.option_strings:
                out.append((name, f"unknown choice ({key})", {key: "no-such-choice"}, None))
        if any(getattr(a, "path_kind", "") in ("file_out", "dir_out", "run_dir") for a in parser._actions):
            out.append((name, "full disk (ENOSPC)", {}, "enospc"))
    return out


def _fill(value: str, world: dict) -> str:
    return value.format(**{k: v for k, v in world.items()})


@pytest.fixture(autouse=True)
def _no_stdin(monkeypatch):
    """``locas chat`` reads questions from stdin: give it an empty one (it ends at once)."""
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.StringIO(""))


def test_every_example_runs(world, tmp_path, capsys):
    from locas.cli.main import main

    for name in COMMANDS:
        example = command_module(name).EXAMPLE
        out = tmp_path / name / "out"
        code = main(_argv(name, example, world, out))
        err = capsys.readouterr().err
        assert code == 0, f"locas {name} EXAMPLE failed: {err[-500:]}"


def test_bad_input_matrix(world, tmp_path, capsys, monkeypatch):
    from locas.cli.main import main

    matrix = cells(world)
    failures = []
    for i, (name, cls, changes, setup) in enumerate(matrix):
        example = command_module(name).EXAMPLE
        out = tmp_path / f"cell{i}" / "out"
        out.parent.mkdir()
        changes = {k: (_fill(v, world) if isinstance(v, str) and v not in ("EXISTING",) else v)
                   for k, v in changes.items()}
        before = None
        for key, value in list(changes.items()):
            if value == "EXISTING":  # an earlier artefact at the output path: it must survive untouched
                target = Path(_fill(example.get(key, "{out}.extra"), {**world, "out": out}))
                if setup == "file_out":
                    target.write_text("earlier")
                else:
                    target.mkdir(parents=True)
                    (target / ("results.json" if setup == "run_dir" else "config.json")).write_text("earlier")
                before = {p: p.read_bytes() for p in target.parent.rglob("*") if p.is_file()}
                changes[key] = str(target)
        if setup == "enospc":
            def full(*_args):
                raise OSError(errno.ENOSPC, "No space left on device")

            monkeypatch.setattr("locas.core.files.os.fsync", full)
        try:
            code = main(_argv(name, example, world, out, changes))
        finally:
            monkeypatch.setattr("locas.core.files.os.fsync", _FSYNC)
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and not _PROGRESS.search(ln)]
        problems = []
        if code != 2:
            problems.append(f"exit {code}")
        if len(err) != 1 or not err[0].startswith("error: ") or "Traceback" in "".join(err):
            problems.append(f"stderr {err[-3:]}")
        if before is not None:
            after = {p: p.read_bytes() for p in before}
            if after != before:
                problems.append("the earlier output changed")
        elif _leftovers(out):
            problems.append(f"left behind {_leftovers(out)[:3]}")
        if problems:
            failures.append(f"locas {name}, {cls}: {'; '.join(problems)}")
    print(f"{len(matrix)} cells over {len(COMMANDS)} commands: {len(matrix) - len(failures)} passed")
    assert not failures, f"{len(failures)} of {len(matrix)} cells failed:\n" + "\n".join(failures[:40])
