"""How strongly a memory fires off its text, and the silence term (``locas.learn.silence``)."""

from __future__ import annotations

import pytest
import torch

from conftest import random_ids, random_memory, tiny_lm
from locas.errors import LocasError
from locas.eval.report import scatter_plot
from locas.learn.config import TrainConfig
from locas.learn.objectives import ObjectiveSettings, SelfStudyConfig, make_objective
from locas.learn.segments import Segment, train_segments
from locas.learn.silence import firing, layer_inputs, off_text, own_samples, relative_energy
from locas.probes.teacher import Example


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_relative_energy_is_what_the_memory_adds_to_each_mlp(arch):
    lm = tiny_lm(arch)
    memory = random_memory(lm, width=4)  # (L, 1, r, d, C)
    layers = [0, 2]
    ids = random_ids(batch=2, length=12)
    cached = layer_inputs(lm, ids, layers, skip=1)
    assert cached.tokens == 2 * 11
    got = relative_energy(memory[layers], layers, cached, lm)  # (2,)
    for j, i in enumerate(layers):
        wrapper, x = lm.wrappers[i], cached.inputs[j][None]  # (1, N, d)
        with torch.no_grad():
            base = wrapper.base_mlp(x)
            wrapper.memory = memory[i]
            added = wrapper(x) - base
            wrapper.memory = None
        want = added.pow(2).sum(-1).mean() / base.pow(2).sum(-1).mean()
        torch.testing.assert_close(got[j], want, rtol=1e-4, atol=1e-8)
    assert float(got.min()) > 0


def test_firing_is_zero_for_a_fresh_memory_and_reads_the_given_layers():
    lm = tiny_lm("llama")
    ids = random_ids(length=16)
    fresh = lm.init_memory(ids, width=4)  # values zero: the memory adds nothing
    assert float(firing(lm, fresh, None, ids).abs().max()) == 0.0
    memory = random_memory(lm, width=4)
    full = firing(lm, memory, None, ids)  # (L,)
    assert full.shape == (lm.num_layers,) and float(full.min()) > 0
    torch.testing.assert_close(firing(lm, memory, [1, 2], ids), full[1:])  # a full memory, two of its layers
    torch.testing.assert_close(firing(lm, memory[[1, 2]], [1, 2], ids), full[1:])  # a memory of those layers only
    louder = memory.clone()
    louder[..., -1] *= 2  # values twice as long: twice the output
    torch.testing.assert_close(firing(lm, louder, None, ids), 2 * full, rtol=1e-4, atol=0)


def test_own_samples_fit_the_context_and_the_off_text_leaves_out_the_start():
    lm = tiny_lm("llama")  # context 256, no tokenizer: starts from the config's end-of-text token
    ids = own_samples(lm, rows=3, tokens=500, seed=0)
    assert ids.shape == (3, 256) and bool((ids[:, 0] == lm.config.eos_token_id).all())
    assert torch.equal(ids, own_samples(lm, rows=3, tokens=500, seed=0))  # seeded
    assert not torch.equal(ids, own_samples(lm, rows=3, tokens=500, seed=1))
    off = off_text(lm, [0, 1], own_samples(lm, rows=2, tokens=20, seed=0))
    assert off.tokens == 2 * 20 and off.energy.shape == (2,)


def test_silence_weight_refuses_a_learner_without_a_memory():
    lm = tiny_lm("llama")
    ex = Example("question", [], [5, 6], [7, 2], torch.zeros((0, 0)), torch.zeros((0, 0), dtype=torch.long),
                 reference="x")
    segment = Segment(random_ids(length=12)[0], (0, 12), window=12)
    cfg = TrainConfig(window_size=12, memory_width=4, lora_rank=2, objective="selfstudy")
    objective = make_objective(cfg, ObjectiveSettings(selfstudy=SelfStudyConfig(silence_weight=10.0)))
    with pytest.raises(LocasError, match="--silence-weight quiets a Locas memory"):
        train_segments(lm, [segment], objective, cfg, method="lora", passes=1, examples=[ex], progress=False)


def test_scatter_plot_writes_a_png(tmp_path):
    points = {"Locas": [(0.02, 0.6, "a"), (0.05, 0.5, "b")], "TempLoRA": [(0.6, 0.4, "")]}
    path = scatter_plot(tmp_path / "f.png", points, "KL", "ratio", logx=True, hlines={"in context": 0.45}, join=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
