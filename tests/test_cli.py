"""The ``locas`` command: one-line errors on bad input, never a traceback or a half-written file."""

from __future__ import annotations

import pytest
import torch

from conftest import random_memory, tiny_lm
from locas import cli, save_memory
from locas.data.paths import read_text
from locas.errors import LocasError


def _run(capsys, *argv):
    capsys.readouterr()  # drop output of the test's own setup
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    return code, err


def test_read_text_guards(tmp_path):
    with pytest.raises(LocasError, match="not found"):
        read_text(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("   \n")
    with pytest.raises(LocasError, match="empty"):
        read_text(tmp_path / "empty.txt")
    (tmp_path / "bin.txt").write_bytes(b"\x89PNG\x00\x00\x01\x02" * 10)
    with pytest.raises(LocasError, match="binary"):
        read_text(tmp_path / "bin.txt")
    with pytest.raises(LocasError, match="not a file"):
        read_text(tmp_path)
    (tmp_path / "ok.txt").write_bytes(b"line one\r\nline two\r\n")
    assert read_text(tmp_path / "ok.txt") == "line one\nline two\n"


def test_cli_reports_one_line_errors(tmp_path, capsys):
    code, err = _run(capsys, "info", str(tmp_path / "nope.locas"))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "not found" in err
    (tmp_path / "bad.locas").write_bytes(b"garbage" * 10)
    code, err = _run(capsys, "info", str(tmp_path / "bad.locas"))
    assert code == 2 and "corrupt" in err and err.count("\n") == 1
    code, err = _run(capsys, "memorize", str(tmp_path / "missing.txt"), "-o", str(tmp_path / "m.locas"))
    assert code == 2 and "not found" in err and not (tmp_path / "m.locas").exists()
    (tmp_path / "empty.txt").write_text("")
    code, err = _run(capsys, "memorize", str(tmp_path / "empty.txt"), "-o", str(tmp_path / "m.locas"))
    assert code == 2 and "empty" in err and not (tmp_path / "m.locas").exists()


def test_cli_info_shows_metadata(tmp_path, capsys):
    lm = tiny_lm("llama")
    save_memory(random_memory(lm), tmp_path / "m.locas", model=lm, init="highest")
    assert cli.main(["info", str(tmp_path / "m.locas")]) == 0
    out = capsys.readouterr().out
    assert '"model_type": "llama"' in out and '"width": 4' in out


def test_memorize_and_fuse_commands_on_a_local_model(tmp_path, capsys):
    """End to end through the CLI with a tiny model saved to a local directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    lm = tiny_lm("llama")
    vocab = {f"w{i}": i for i in range(97)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", pad_token="w0")
    model_dir = tmp_path / "tiny"
    lm.model.save_pretrained(model_dir)
    fast.save_pretrained(model_dir)
    text = tmp_path / "t.txt"
    text.write_text(" ".join(f"w{3 + (i * 7) % 40}" for i in range(300)))
    out = tmp_path / "t.locas"
    code = cli.main(["memorize", str(text), "-o", str(out), "--model", str(model_dir), "--device", "cpu",
                     "--objective", "ntp", "--window-size", "64", "--memory-width", "4", "--epochs", "2",
                     "--lr", "0.05"])
    printed = capsys.readouterr().out
    assert code == 0 and out.is_file() and "epoch 2" in printed and "without memory" in printed
    code = cli.main(["fuse", "--memory", str(out), "-o", str(tmp_path / "fused"), "--model", str(model_dir),
                     "--device", "cpu"])
    assert code == 0
    from transformers import AutoModelForCausalLM

    from locas import LocasForCausalLM, load_memory

    base = LocasForCausalLM(AutoModelForCausalLM.from_pretrained(model_dir).eval())
    fused = AutoModelForCausalLM.from_pretrained(tmp_path / "fused").eval()
    ids = torch.randint(3, 97, (1, 20))
    with torch.no_grad():
        diff = (fused(ids).logits - base(ids, memory=load_memory(out, model=base)).logits).abs().max()
    assert diff <= 1e-5
    # a memory file from another model is refused with a one-line error
    other = tiny_lm("qwen2")
    save_memory(random_memory(other), tmp_path / "other.locas", model=other)
    code, err = _run(capsys, "fuse", "--memory", str(tmp_path / "other.locas"), "-o", str(tmp_path / "x"),
                     "--model", str(model_dir), "--device", "cpu")
    assert code == 2 and "not this model" in err and not (tmp_path / "x").exists()


def test_unsupported_architecture_is_one_line(tmp_path, capsys):
    import transformers

    cfg = transformers.GPTBigCodeConfig(n_embd=32, n_layer=1, n_head=4, vocab_size=50, n_positions=64)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path / "m")
    (tmp_path / "t.txt").write_text("hello world " * 50)
    code, err = _run(capsys, "memorize", str(tmp_path / "t.txt"), "-o", str(tmp_path / "o.locas"),
                     "--model", str(tmp_path / "m"), "--device", "cpu")
    assert code == 2 and "gpt_bigcode" in err and "register_arch" in err and err.count("\n") == 1


def _subparsers():
    import argparse

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices


def test_every_flag_has_help_and_its_default_and_every_command_takes_threads():
    import argparse

    for name, p in _subparsers().items():
        assert p.format_help()  # renders (no stray % in a help text)
        options = {s for a in p._actions for s in a.option_strings}
        assert "--threads" in options or name == "info", name
        for a in p._actions:
            if a.dest == "help" or a.help == argparse.SUPPRESS:
                continue
            assert a.help and a.help.strip(), (name, a.option_strings or a.dest)
            if a.option_strings:
                assert "default" in a.help or "required" in a.help, (name, a.option_strings, a.help)


def test_no_flag_shown_where_it_does_nothing():
    def flags(name):
        return {s for a in _subparsers()[name]._actions for s in a.option_strings}

    assert not flags("memorize") & {"--lora-rank", "--lora-alpha", "--full-context", "--data-dir"}
    assert not flags("locomo") & {"--full-context", "--probe-style"}  # probes are asked in the answer prompt
    assert not flags("ask") & {"--data-dir", "--lora-rank", "--objective"}
    assert {"--objective", "--full-context", "--lora-rank"} <= flags("pg19")
    for name in ("memorize", "locomo", "pg19"):  # one flag for the objective, the reference names as aliases
        assert {"--objective", "--loss-function", "--ttt-loss"} <= flags(name)
    for name in ("pg19", "retention", "locomo", "mmlu", "memorize", "fuse", "demo"):
        assert {"-o", "--output"} <= flags(name), name
    for name in ("ask", "chat", "fuse", "mmlu", "retention", "memorize"):
        assert "--memory" in flags(name), name


def test_objective_a_command_cannot_take_is_one_line(capsys):
    code, err = _run(capsys, "pg19", "--objective", "selfstudy")
    assert code == 2 and err.count("\n") == 1
    assert "ntp, sd, mix" in err and "memorize, locomo" in err
    code, err = _run(capsys, "memorize", "x.txt", "-o", "x.locas", "--ttt_loss", "riddle")  # reference spelling
    assert code == 2 and err.count("\n") == 1 and "unknown objective 'riddle'" in err
    code, err = _run(capsys, "pg19", "--memory_width", "0")  # underscores work everywhere; bad numbers: one line
    assert code == 2 and err.count("\n") == 1 and "--memory-width" in err


def test_python_dash_m_locas_runs_the_command(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "locas", "info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "objectives" in out.stdout and "selfstudy" in out.stdout


def test_two_names_of_one_flag_with_different_values_is_an_error(capsys):
    code, err = _run(capsys, "memorize", "x.txt", "-o", "y.locas", "--objective", "ntp", "--loss", "sd")
    assert code == 2 and err.count("\n") == 1 and "given twice" in err and "--objective ntp, --loss sd" in err


def test_a_closed_pipe_is_not_a_traceback(tmp_path):
    import subprocess
    import sys

    lm = tiny_lm("llama")
    save_memory(random_memory(lm), tmp_path / "m.locas", model=lm)
    cmd = f"{sys.executable} -m locas info {tmp_path / 'm.locas'} | head -1"
    out = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "{" and "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr
