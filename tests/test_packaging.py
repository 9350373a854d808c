"""A lean core with extras: nothing optional at import, one clear line where an extra is missing, one version.

The real proof, a wheel installed with the core alone into a clean venv, is tests/test_wheel.py (`make test-wheel`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version

import pytest

from locas import extras
from locas._version import __version__
from locas.cli.main import COMMANDS, command_module, main

OPTIONAL = sorted({"starlette", "pydantic", *(m for modules in extras.EXTRAS.values() for m in modules)})


def test_import_and_help_load_no_optional_package():
    code = ("import sys, contextlib, io\n"
            "import locas\n"
            "from locas.cli.main import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['--help'])\n"
            "    for name in main.__globals__['COMMANDS']:\n"
            "        main([name, '--help'])\n"
            f"print(__import__('json').dumps(sorted(m for m in {OPTIONAL!r} if m in sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def _parsable_argv(name: str) -> list[str]:
    """The command's EXAMPLE with every placeholder a plain word: parses, and would fail later on its paths."""
    argv = [name]
    for key, value in command_module(name).EXAMPLE.items():
        value = value.replace("{out}", "x").replace("{", "").replace("}", "") if isinstance(value, str) else value
        if not key.startswith("-"):
            argv.append(value)
        elif value is True:
            argv.append(key)
        else:
            argv += [key, value]
    return argv


@pytest.mark.parametrize("name", sorted(n for n in COMMANDS if getattr(command_module(n), "EXTRA", None)))
def test_a_command_without_its_extra_says_what_to_install(name, monkeypatch, capsys, tmp_path):
    extra = command_module(name).EXTRA
    gone = sorted(extras.EXTRAS[extra])[:1]
    monkeypatch.setattr(extras, "_installed", lambda module: module not in gone)
    monkeypatch.chdir(tmp_path)
    assert main(_parsable_argv(name)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: locas {name} needs the {extra} extra ({extras.EXTRAS[extra][gone[0]]} is not installed): "
                   f"pip install 'locas[{extra}]'"]
    assert list(tmp_path.iterdir()) == []  # refused before any work


def test_the_core_commands_need_no_extra():
    assert {n for n in COMMANDS if getattr(command_module(n), "EXTRA", None) is None} >= \
        {"memorize", "ask", "chat", "fuse", "export", "stack", "info", "mmlu"}


def test_an_objective_without_its_extra_is_refused_before_work(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(extras, "_installed", lambda module: module != "nltk")
    text = tmp_path / "t.txt"
    text.write_text("Ann has a cat. " * 20)
    assert main(["memorize", str(text), "-o", str(tmp_path / "m.locas"), "--objective", "grpo"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --objective grpo needs the eval extra (nltk is not installed): pip install 'locas[eval]'"]


def test_library_paths_name_their_extra(monkeypatch):
    from locas.eval.report import plt_agg
    from locas.learn.learners import load_adapter
    from locas.text.metrics import _stemmer

    monkeypatch.setattr(extras, "_installed", lambda module: False)
    _stemmer.cache_clear()
    for call, package in [(lambda: load_adapter(None, "x"), "peft"), (plt_agg, "matplotlib"), (_stemmer, "nltk")]:
        with pytest.raises(extras.MissingExtra, match=rf"\({package} is not installed\): pip install 'locas\[eval\]'"):
            call()
    _stemmer.cache_clear()


def test_one_version(capsys):
    assert version("locas") == __version__  # the installed metadata reads src/locas/_version.py
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"locas {__version__}"
    from pathlib import Path

    changelog = (Path(__file__).resolve().parents[1] / "CHANGELOG.md").read_text()
    assert f"## {__version__}" in changelog  # every version says what it changed
