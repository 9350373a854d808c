"""``locas locomo`` and ``locas retention`` under torchrun (2 gloo processes on CPU) equal one process; resume."""

from __future__ import annotations

import copy
import json

import pytest

from locas.cli import main
from test_locomo import _write_dataset
from test_locomo_support import char_lm, single_thread  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")
VARYING = ("train_s", "train_cpu_s", "cpu_s", "prep_cpu_s", "prefill_s", "answer_s", "questions_per_s",
           "questions_per_s_with_prefill", "memory_file")


def untimed(obj):
    """``obj`` without clock fields (wall and CPU seconds) and output paths, the only values allowed to differ
    between runs."""
    if isinstance(obj, dict):
        return {k: untimed(v) for k, v in obj.items() if k not in VARYING}
    if isinstance(obj, list):
        return [untimed(v) for v in obj]
    return obj


@pytest.fixture
def locomo_setup(tmp_path):
    """A tiny chat model and a LoCoMo file with three different conversations."""
    lm = char_lm(seed=2, chat=True)
    lm.model.save_pretrained(tmp_path / "model")
    lm.tokenizer.save_pretrained(tmp_path / "model")
    _write_dataset(tmp_path / "data")
    path = tmp_path / "data" / "locomo" / "locomo10.json"
    raw = json.loads(path.read_text())[0]
    convs = []
    for k in range(3):
        conv = copy.deepcopy(raw)
        conv["sample_id"] = f"conv-{k}"
        for key, turns in conv["conversation"].items():
            if key.startswith("session_") and isinstance(turns, list):
                for t in turns:
                    t["text"] = f"{t['text']} {'Ok. ' * k}"
        convs.append(conv)
    path.write_text(json.dumps(convs))
    return ["--model", str(tmp_path / "model"), "--data-dir", str(tmp_path / "data"), "--device", "cpu",
            "--method", "locas", "--objective", "ntp", "--context-mode", "date_split", "--recent-tokens", "80",
            "--conversations", "conv-0", "conv-1", "conv-2", "--window-size", "64", "--memory-width", "4",
            "--lr", "0.05", "--max-new-tokens", "3"]


def _locomo(out):
    payload = json.loads((out / "results.json").read_text())
    return untimed(payload["runs"]), untimed(payload["methods"])


@pytest.mark.slow
def test_locomo_two_processes_match_one_and_resume(locomo_setup, tmp_path, capfd):
    assert main(["locomo", *locomo_setup, "-o", str(tmp_path / "one")]) == 0
    one_runs, one_methods = _locomo(tmp_path / "one")
    assert [r["sample_id"] for r in one_runs] == ["conv-0", "conv-1", "conv-2"]
    assert len({json.dumps(r["answers"]) for r in one_runs}) == 3  # the conversations really differ
    capfd.readouterr()

    two = tmp_path / "two"
    assert main(["locomo", *locomo_setup, "-o", str(two), "--num-gpus", "2"]) == 0  # re-launches via torchrun
    err = capfd.readouterr().err
    assert (two / "results.json").is_file(), err[-2000:]
    assert _locomo(two) == (one_runs, one_methods)
    assert sorted(p.name for p in (two / "memories").iterdir()) == [f"conv-{k}.locas" for k in range(3)]

    # a removed part (e.g. a killed document) is recomputed alone, the others are kept untouched
    parts = two / "parts"
    (parts / "conv-1.json").unlink()
    mtimes = {p.name: p.stat().st_mtime_ns for p in parts.glob("*.json")}
    assert main(["locomo", *locomo_setup, "-o", str(two), "--resume"]) == 0
    assert "kept 2 finished unit(s) from an earlier run: conv-0, conv-2" in capfd.readouterr().out
    assert {p: (parts / p).stat().st_mtime_ns for p in mtimes} == mtimes and (parts / "conv-1.json").is_file()
    assert _locomo(two) == (one_runs, one_methods)


def test_locomo_failure_names_the_conversation_and_resume_reruns_it(locomo_setup, tmp_path, capsys, monkeypatch):
    from locas.eval import locomo as harness

    real = harness.run_conversation
    calls = []

    def flaky(lm, conv, *args, **kwargs):
        calls.append(conv.sample_id)
        if conv.sample_id == "conv-1":
            raise RuntimeError("out of memory\nlong trace")
        return real(lm, conv, *args, **kwargs)

    monkeypatch.setattr(harness, "run_conversation", flaky)
    out = tmp_path / "run"
    args = ["locomo", *locomo_setup, "-o", str(out), "--limit", "2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "conv-1 failed on rank 0: RuntimeError: out of memory (finished documents are kept in" in err
    assert sorted(p.name for p in (out / "parts").glob("*.json")) == ["conv-0.json", "conv-2.json"]
    assert not (out / "results.json").exists()
    monkeypatch.setattr(harness, "run_conversation", lambda *a, **k: (calls.append(a[1].sample_id), real(*a, **k))[1])
    calls.clear()
    assert main([*args, "--resume"]) == 0
    assert calls == ["conv-1"]  # only the missing conversation ran
    # other settings: a kept part is not reused
    calls.clear()
    assert main([*args[:-1], "3", "--resume"]) == 0
    assert calls == ["conv-0", "conv-1", "conv-2"] and "reran 3 unit(s)" in capsys.readouterr().out
    summary = json.loads((out / "results.json").read_text())["methods"]["locas-NTP [date_split]"]["summary"]
    assert summary["overall"]["n"] == 9  # 3 questions (none adversarial) of each of the 3 conversations


@pytest.fixture
def retention_setup(tmp_path):
    """A tiny model, a memory file, two MMLU subjects and a held-out text of several windows."""
    from conftest import random_memory, tiny_lm
    from locas.core.files import save_memory
    from test_mmlu import QUESTIONS, char_tokenizer, write_mmlu

    lm, tok = tiny_lm("llama"), char_tokenizer()
    lm.model.config.max_position_embeddings = 1024  # rotary positions: few-shot character-level prompts fit
    lm.model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    save_memory(random_memory(lm), tmp_path / "book.locas", model=lm)
    for subject in ("toy", "other"):
        write_mmlu(tmp_path / "data" / "mmlu", subject, [(f"{subject} {q}", ch, i % 4)
                                                        for i, (q, ch) in enumerate(QUESTIONS)], "test")
        write_mmlu(tmp_path / "data" / "mmlu", subject, [(f"dev {i}?", ("a", "b", "c", "d"), i % 4)
                                                        for i in range(2)], "dev")
    (tmp_path / "heldout.txt").write_text("a different text about dogs and the sea. " * 4)
    return ["--model", str(tmp_path / "model"), "--data-dir", str(tmp_path / "data"), "--device", "cpu",
            "--memory", str(tmp_path / "book.locas"), "--heldout", str(tmp_path / "heldout.txt"),
            "--heldout-tokens", "0", "--shots", "2", "--batch-size", "2", "--limit-per-subject", "4",
            "--window-size", "48"]


@pytest.mark.slow
def test_retention_two_processes_match_one_and_resume(retention_setup, tmp_path, capfd):
    assert main(["retention", *retention_setup, "-o", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    assert one["variants"]["book"]["heldout_kl"] > 0 and len(one["mmlu_records"]["book"]) == 8  # 4 a subject
    capfd.readouterr()
    two = tmp_path / "two"
    assert main(["retention", *retention_setup, "-o", str(two), "--num-gpus", "2"]) == 0
    err = capfd.readouterr().err
    assert (two / "results.json").is_file(), err[-2000:]
    assert json.loads((two / "results.json").read_text()) == one  # every number, exactly
    parts = sorted(p.name for p in (two / "parts").glob("*.json"))
    assert parts[:2] == ["heldout__00000.json", "heldout__00001.json"] and parts[-2:] == ["mmlu__other.json",
                                                                                           "mmlu__toy.json"]
    (two / "parts" / "mmlu__toy.json").unlink()
    assert main(["retention", *retention_setup, "-o", str(two), "--resume"]) == 0
    assert f"kept {len(parts) - 1} finished unit(s)" in capfd.readouterr().out
    assert json.loads((two / "results.json").read_text()) == one


def test_a_conversation_does_not_depend_on_its_company(tmp_path):
    """Self-study shuffles its probes: each conversation is seeded on its own, so its company changes nothing."""
    import torch

    from locas.eval import locomo as harness
    from locas.learn.config import TrainConfig
    from test_locomo import _conv

    lm = char_lm(seed=1)
    first, second = _conv(), _conv()
    second.sample_id = "conv-y"
    second.sessions[0].turns[0].text = "I adopted a dog named Rex in Boston last week."
    settings = harness.LocomoSettings(method="locas", context_mode="none", max_new_tokens=3, batch_size=2, limit=2,
                                      control=False)
    cfg = TrainConfig(window_size=64, memory_width=4, lr=5e-2, objective="selfstudy")
    both = harness.run_conversations(lm, [first, second], settings, cfg, tmp_path / "both", progress=False)
    torch.manual_seed(1234)  # whatever the global random state was before
    torch.rand(7)
    alone = harness.run_conversations(lm, [second], settings, cfg, tmp_path / "alone", progress=False)
    assert untimed(both[1]) == untimed(alone[0])
    mem = "memories/conv-y.locas"
    assert (tmp_path / "both" / mem).read_bytes() == (tmp_path / "alone" / mem).read_bytes()
    assert untimed(both[0]["train"]) != untimed(both[1]["train"])  # the two conversations really differ
