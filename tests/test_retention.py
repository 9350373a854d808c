"""Retention report: zero memory is exactly the base, a real memory and a LoRA adapter move KL off zero."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import random_ids, random_memory, tiny_lm
from locas.data.mmlu import load_questions
from locas.eval.retention import (
    base_variant,
    heldout_metrics,
    lora_variant,
    memory_variant,
    retention_report,
    write_retention,
)
from locas.learn.config import TrainConfig
from test_mmlu import QUESTIONS, char_tokenizer, write_mmlu


@pytest.fixture
def mmlu_dir(tmp_path):
    write_mmlu(tmp_path, "toy", [(q, ch, i % 4) for i, (q, ch) in enumerate(QUESTIONS)], "test")
    write_mmlu(tmp_path, "toy", [(f"dev {i}?", ("a", "b", "c", "d"), i % 4) for i in range(5)], "dev")
    return tmp_path


def zero_value_memory(lm, width=4):
    mem = random_memory(lm, width=width)
    mem[..., -1] = 0.0  # keys and gates random, values zero: the memory adds exactly nothing
    return mem


def test_zero_memory_is_exactly_base(mmlu_dir, tmp_path):
    lm, tok = tiny_lm("llama"), char_tokenizer()
    lm.model.config.max_position_embeddings = 1024  # rotary positions: few-shot character-level prompts fit
    qs = load_questions(data=mmlu_dir)
    dev = load_questions(split="dev", data=mmlu_dir)
    variants = [base_variant(lm), memory_variant(lm, zero_value_memory(lm), name="zero"),
                memory_variant(lm, random_memory(lm), name="random")]
    payload = retention_report(variants, tok, random_ids(1, 70)[0], qs, shots=5, dev=dev, window=32, progress=False)
    v = payload["variants"]
    assert v["zero"]["mmlu_micro"] == v["base"]["mmlu_micro"]
    assert payload["mmlu_records"]["zero"] == payload["mmlu_records"]["base"]  # identical letter log-probs
    assert v["zero"]["heldout_kl"] == 0.0 and v["zero"]["letter_kl"] == 0.0 and v["zero"]["agreement"] == 1.0
    assert v["zero"]["heldout_ppl"] == v["base"]["heldout_ppl"]
    assert v["random"]["heldout_kl"] > 1e-4 and v["random"]["letter_kl"] > 0  # a real memory is seen
    assert v["base"]["heldout_tokens"] == 69  # every token but the first, once (windows share one token)
    table = write_retention(payload, tmp_path / "out")
    assert "zero" in table and (tmp_path / "out" / "retention.png").stat().st_size > 1000
    assert json.loads((tmp_path / "out" / "results.json").read_text())["variants"]["zero"]["heldout_kl"] == 0.0


def test_heldout_kl_matches_direct_computation():
    lm = tiny_lm("llama")
    mem = random_memory(lm)
    ids = random_ids(1, 20)[0]
    got = heldout_metrics([base_variant(lm), memory_variant(lm, mem)], ids, window=64, progress=False)
    with torch.no_grad():
        with lm.disabled():
            p = torch.log_softmax(lm.model(input_ids=ids[None]).logits[0, :-1], -1)
        q = torch.log_softmax(lm(ids[None], memory=mem).logits[0, :-1], -1)
    kl = (p.exp() * (p - q)).sum(-1).mean()
    nll = -q.gather(1, ids[1:, None]).mean()
    assert got["locas"]["kl"] == pytest.approx(float(kl), rel=1e-4)
    assert got["locas"]["ppl"] == pytest.approx(float(nll.exp()), rel=1e-4)


def test_lora_variant_and_base_with_adapter_injected():
    from locas.learn.learners import LoraLearner
    from locas.learn.stream import stream

    lm = tiny_lm("llama")
    ids = random_ids(1, 40)[0]
    cfg = TrainConfig(window_size=16, lr=5e-2, lora_rank=4)
    before = heldout_metrics([base_variant(lm)], ids, 16, progress=False)["base"]
    learner = LoraLearner(lm, cfg)
    stream(learner, ids, cfg, progress=False)
    try:  # adapter still injected: base must switch it off, the lora variant must see it
        got = heldout_metrics([base_variant(lm, learner.peft_model), lora_variant(lm, learner.peft_model)], ids, 16,
                              progress=False)
    finally:
        learner.finish()
    assert got["base"]["ppl"] == pytest.approx(before["ppl"], rel=1e-6)
    assert got["lora"]["kl"] > 1e-4 and got["lora"]["ppl"] < got["base"]["ppl"]  # it memorised the text


def test_cli_pg19_retention_and_mmlu(tmp_path, capsys):
    from locas.cli import main

    lm, tok = tiny_lm("llama"), char_tokenizer()
    lm.model.config.max_position_embeddings = 1024  # rotary positions: few-shot character-level prompts fit
    lm.model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    data = tmp_path / "data"
    write_mmlu(data / "mmlu", "toy", [(q, ch, i % 4) for i, (q, ch) in enumerate(QUESTIONS)], "test")
    write_mmlu(data / "mmlu", "toy", [(f"dev {i}?", ("a", "b", "c", "d"), i % 4) for i in range(5)], "dev")
    (tmp_path / "book.txt").write_text("the cat sat on the mat. " * 8)
    (tmp_path / "other.txt").write_text("a different text about dogs and the sea. " * 3)
    common = ["--model", str(tmp_path / "model"), "--data-dir", str(data), "--device", "cpu"]
    out = tmp_path / "run"
    code = main(["pg19", "--book", str(tmp_path / "book.txt"), "--method", "lora", "--method", "locas",
                 "--window-size", "32", "--memory-width", "4", "--lora-rank", "2", "--lr", "3e-2",
                 "--heldout", str(tmp_path / "other.txt"), "--heldout-tokens", "0", "--shots", "2",
                 "--retention", "-o", str(out), *common])
    assert code in (None, 0)
    payload = json.loads((out / "retention" / "results.json").read_text())
    assert list(payload["variants"]) == ["base", "locas", "lora"]
    assert payload["variants"]["locas"]["heldout_kl"] > 0 and payload["variants"]["lora"]["heldout_kl"] > 0
    assert (out / "results.json").is_file() and (out / "retention" / "retention.png").is_file()
    assert not any("lora" in type(m).__name__.lower() for m in lm.model.modules())  # adapter removed again

    assert main(["mmlu", "--shots", "0", "-o", str(tmp_path / "m.json"), *common]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["n"] == len(QUESTIONS)
    assert main(["mmlu", "--subjects", "nope", *common]) == 2
    assert "unknown MMLU subject(s) nope" in capsys.readouterr().err
