"""The built wheel, installed with the core alone into a clean venv, does the library user's whole loop.

``make test-wheel`` builds the sdist and wheel, checks them with twine, installs the wheel (no extras) into
a new venv and runs this file with ``LOCAS_CORE_VENV`` pointing at it; elsewhere it skips, saying why. Every
command runs from a temporary directory through the venv's own ``locas``, so no checkout is on the path.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from locas._version import __version__
from locas.cli.main import COMMANDS, command_module
from locas.extras import EXTRAS
from test_bad_input import _argv, world  # noqa: F401  (the bad-input matrix's files, and its EXAMPLE filler)

CORE = os.environ.get("LOCAS_CORE_VENV")
pytestmark = pytest.mark.skipif(not CORE, reason="no core-only venv: `make test-wheel` builds one and runs this")


def _run(*argv, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
                          input="")


@pytest.fixture(scope="module")
def venv() -> Path:
    return Path(CORE).resolve()


def test_the_venv_holds_the_core_and_no_extra(venv, tmp_path):
    code = ("import importlib.util, json, locas, importlib.metadata as md\n"
            f"optional = {sorted({m for modules in EXTRAS.values() for m in modules} | {'starlette'})!r}\n"
            "print(json.dumps({'file': locas.__file__, 'version': locas.__version__,\n"
            "  'extras': [m for m in optional if importlib.util.find_spec(m)],\n"
            "  'packages': sorted(d.metadata['Name'] for d in md.distributions())}))")
    out = _run(venv / "bin" / "python", "-c", code, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads(out.stdout)
    assert Path(info["file"]).is_relative_to(venv) and info["version"] == __version__  # the wheel, not a checkout
    assert info["extras"] == []
    print(f"core venv: {len(info['packages'])} packages (pip and setuptools included)")


def test_the_wheel_carries_the_playground_page(venv, tmp_path):
    """`pip install 'locas[serve]'` serves the page at "/": its static files must be in the wheel."""
    code = "import locas, pathlib; print(sorted(p.name for p in (pathlib.Path(locas.__file__).parent / 'serve' / " \
           "'static').iterdir()))"
    out = _run(venv / "bin" / "python", "-c", code, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    shipped = {p.name for p in (Path(__file__).parents[1] / "src/locas/serve/static").iterdir()}
    assert set(json.loads(out.stdout.replace("'", '"'))) == shipped >= {"index.html", "playground.js"}


def test_version(venv, tmp_path):
    out = _run(venv / "bin" / "locas", "--version", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == f"locas {__version__}"


def test_memorize_ask_fuse_on_a_tiny_model(venv, tmp_path):
    from golden_cases import char_model, doc_file

    model, doc = char_model(tmp_path), doc_file(tmp_path, 1)
    common = ["--model", model, "--device", "cpu"]
    locas = venv / "bin" / "locas"
    made = _run(locas, "memorize", doc, "-o", tmp_path / "m.locas", "--chunk-tokens", 40, "--epochs", 1,
                "--window-size", 64, "--memory-width", 4, *common, cwd=tmp_path)  # the default objective
    assert made.returncode == 0, made.stderr[-2000:]
    asked = _run(locas, "ask", "--memory", tmp_path / "m.locas", "What is the cat called?", "--max-new-tokens", 6,
                 *common, cwd=tmp_path)
    assert asked.returncode == 0 and asked.stdout.strip(), asked.stderr[-2000:]
    fused = _run(locas, "fuse", "--memory", tmp_path / "m.locas", "-o", tmp_path / "fused", *common, cwd=tmp_path)
    assert fused.returncode == 0, fused.stderr[-2000:]
    base = json.loads((model / "config.json").read_text())["intermediate_size"]
    assert json.loads((tmp_path / "fused" / "config.json").read_text())["intermediate_size"] == base + 4
    info = _run(locas, "info", tmp_path / "m.locas", cwd=tmp_path)
    assert info.returncode == 0 and "4" in info.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_answers(venv, world, tmp_path, name):  # noqa: F811
    """Each command's EXAMPLE: done by the core alone, or refused in one line that names its extra."""
    module = command_module(name)
    extra = getattr(module, "EXTRA", None)
    out = _run(venv / "bin" / "locas", *_argv(name, module.EXAMPLE, world, tmp_path / "out"), cwd=tmp_path)
    if extra is None:
        assert out.returncode == 0, out.stderr[-2000:]
        return
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
    assert lines[0].startswith(f"error: locas {name} needs the {extra} extra") and \
        lines[0].endswith(f"pip install 'locas[{extra}]'")
    assert list(tmp_path.iterdir()) == []  # refused before any work


def test_an_objective_without_its_extra_is_one_line(venv, world, tmp_path):  # noqa: F811
    out = _run(venv / "bin" / "locas", "memorize", world["text"], "-o", tmp_path / "m.locas", "--objective", "grpo",
               "--model", world["model"], cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: --objective grpo needs the eval extra (nltk is not installed): pip install 'locas[eval]'"]
    assert list(tmp_path.iterdir()) == []
