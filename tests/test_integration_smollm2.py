"""Integration: the embedded SmolLM2-135M model and a real PG-19 book."""

from __future__ import annotations

import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from locas import LocasForCausalLM, load_memory, save_memory
from locas.data.pg19 import load_book
from locas.learn.config import TrainConfig
from locas.learn.learners import LocasLearner
from locas.learn.stream import stream
from locas.text.tokens import tokenize_text

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2():
    LocasForCausalLM.from_pretrained("smollm2-135m")  # builds the cache on first use
    t0 = time.perf_counter()
    lm = LocasForCausalLM.from_pretrained("smollm2-135m")
    lm.load_seconds = time.perf_counter() - t0
    return lm


def test_trained_memory_fuses_exactly_on_smollm2(smollm2, tmp_path):
    lm = smollm2
    assert lm.config.model_type == "llama" and lm.num_layers == 30 and lm.hidden_size == 576
    assert lm.load_seconds < 5, f"cached default model took {lm.load_seconds:.1f} s to load"
    tokens = tokenize_text(lm.tokenizer, load_book("10146"), 384)
    cfg = TrainConfig(window_size=128, lr=3e-2, memory_width=16)
    learner = LocasLearner(lm, cfg)
    result = stream(learner, tokens, cfg, progress=False)
    memory = learner.full_memory()
    assert memory[..., 2].abs().max() > 0 and result.skipped_updates == 0
    probe = tokens[-128:][None]
    with torch.no_grad():
        expected = lm(probe, memory=memory).logits
        with lm.disabled():
            base = lm(probe).logits
        dense = lm.to_dense(memory)
        dense.save_pretrained(tmp_path / "fused")
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "fused").eval()
        got = reloaded(probe).logits
    assert (expected - base).abs().max() > 1e-2  # the memory does something
    assert (got - expected).abs().max() <= 1e-4
    path = save_memory(memory, tmp_path / "book.locas", model=lm)
    assert torch.equal(load_memory(path, model=lm), memory.cpu())
