"""Core Locas-GLU behaviour across every registered GLU architecture."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import random_ids, random_memory, tiny_lm, tiny_model
from locas import LocasForCausalLM, UnsupportedArchitectureError, clip_vectors_
from locas.core.init import unit_importance


def test_zero_memory_is_bit_identical(glu_arch):
    base = tiny_model(glu_arch)
    ids = random_ids(2, 20)
    with torch.no_grad():
        ref = base(ids).logits.clone()
        lm = LocasForCausalLM(base)
        mem = lm.init_memory(ids, width=5)
        assert mem.dtype == torch.float32 and mem.shape == (lm.num_layers, 2, 5, lm.hidden_size, 3)
        mem.requires_grad_(True)  # forces the memory path to run (no zero-layer shortcut)
        out = lm(ids, memory=mem).logits
    assert torch.equal(out, ref)


def test_memory_changes_output_and_disable_restores(glu_arch):
    lm = tiny_lm(glu_arch)
    ids = random_ids(1, 16)
    mem = random_memory(lm)
    with torch.no_grad():
        with lm.disabled():
            base = lm(ids, memory=mem).logits
        plain = lm(ids).logits
        with_mem = lm(ids, memory=mem).logits
    assert torch.equal(base, plain)
    assert (with_mem - base).abs().max() > 1e-3


def test_fused_dense_matches_memory_model(glu_arch, tmp_path):
    lm = tiny_lm(glu_arch)
    ids = random_ids(1, 20)
    mem = random_memory(lm, width=6)
    with torch.no_grad():
        expected = lm(ids, memory=mem).logits
        dense = lm.to_dense(mem)
        assert dense.config.intermediate_size == lm.intermediate_size + 6
        got = dense(ids).logits
        dense.save_pretrained(tmp_path)
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
        again = reloaded(ids).logits
    assert (got - expected).abs().max() <= 1e-5
    assert (again - expected).abs().max() <= 1e-5
    # the wrapper itself is untouched by fusion
    with torch.no_grad():
        assert torch.equal(lm(ids, memory=mem).logits, expected)


def test_partial_layers_fuse_exactly():
    lm = tiny_lm("llama")
    ids = random_ids(1, 12)
    mem = random_memory(lm, width=3)[1:]  # layers 1 and 2 only
    with torch.no_grad():
        expected = lm(ids, memory=mem, layers=[1, 2]).logits
        got = lm.to_dense(mem, layers=[1, 2])(ids).logits
    assert (got - expected).abs().max() <= 1e-5


def _brute_force_importance(lm, ids):
    """Recompute act(gate x) * up x per layer by hand from the MLP inputs."""
    inputs = []
    hooks = [w.base_mlp.register_forward_pre_hook(lambda m, a: inputs.append(a[0].detach()))
             for w in lm.wrappers]
    with torch.no_grad(), lm.disabled():
        lm.model(ids)
    for h in hooks:
        h.remove()
    out = []
    for w, x in zip(lm.wrappers, inputs):
        g = x @ lm.spec.gate_weight(w.base_mlp).T
        u = x @ lm.spec.up_weight(w.base_mlp).T
        out.append((w.act(g) * u).abs().mean(dim=1))  # (B, I)
    return torch.stack(out)


@pytest.mark.parametrize("arch", ["llama", "phi3", "gemma"])
@pytest.mark.parametrize("init", ["highest", "lowest"])
def test_highest_lowest_pick_brute_force_units(arch, init):
    lm = tiny_lm(arch)
    ids = random_ids(2, 18)
    brute = _brute_force_importance(lm, ids)
    assert torch.allclose(unit_importance(lm, ids), brute, atol=1e-5)
    mem = lm.init_memory(ids, width=7, init=init)
    for i, w in enumerate(lm.wrappers):
        for b in range(2):
            expect = set(brute[i, b].topk(7, largest=init == "highest").indices.tolist())
            up = torch.nn.functional.normalize(lm.spec.up_weight(w.base_mlp), dim=-1)
            picked = {int((up @ k).argmax()) for k in mem[i, b, :, :, 0]}
            assert picked == expect
    assert torch.all(mem[..., 2] == 0)
    assert torch.allclose(mem[..., :2].norm(dim=-2), torch.ones(()), atol=1e-5)


@pytest.mark.parametrize("init", ["random_index", "random", "activation"])
def test_other_inits_are_unit_norm_with_zero_values(init):
    lm = tiny_lm("qwen3")
    ids = random_ids(1, 30)
    a = lm.init_memory(ids, width=5, init=init, seed=3)
    b = lm.memorize(ids, keep_top=5, memory_init=init, seed=3)  # the reference implementation's name
    assert torch.equal(a, b)
    assert torch.allclose(a[..., :2].norm(dim=-2), torch.ones(()), atol=1e-5)
    assert torch.all(a[..., 2] == 0)


def test_importance_ignores_padding():
    lm = tiny_lm("llama")
    ids = random_ids(1, 10)
    padded = torch.cat([ids, torch.full((1, 5), 7)], dim=1)
    mask = torch.cat([torch.ones(1, 10), torch.zeros(1, 5)], dim=1).long()
    assert torch.allclose(unit_importance(lm, padded, mask), unit_importance(lm, ids), atol=1e-5)


def test_clipping_and_tau():
    mem = torch.randn(2, 1, 5, 16, 3)
    mem[0, 0, 0, :, 0] *= 0.01  # a short vector
    short = mem[0, 0, 0, :, 0].clone()
    clip_vectors_(mem)
    assert mem.norm(dim=-2).max() <= 1 + 1e-6
    assert torch.equal(mem[0, 0, 0, :, 0], short)
    lm = tiny_lm("llama")
    for w in lm.wrappers:
        down = lm.spec.down_weight(w.base_mlp)
        expected = torch.stack([down[:, j].norm() for j in range(down.shape[1])]).mean().item() / 8
        assert w.tau(8) == pytest.approx(expected, rel=1e-5)


def test_batched_memories_equal_rowwise():
    lm = tiny_lm("mistral")
    ids = random_ids(2, 14)
    mem = random_memory(lm, width=4, batch=2)
    with torch.no_grad():
        both = lm(ids, memory=mem).logits
        for b in range(2):
            alone = lm(ids[b:b + 1], memory=mem[:, b:b + 1]).logits
            assert (both[b] - alone[0]).abs().max() <= 1e-5


def test_compute_nll_shape_and_value():
    lm = tiny_lm("llama")
    ids = random_ids(2, 11)
    nll = lm.compute_nll(ids)
    assert nll.shape == (2, 10) and nll.dtype == torch.float32
    with torch.no_grad():
        logp = torch.log_softmax(lm(ids).logits.float(), -1)
    assert torch.allclose(nll[1, 3], -logp[1, 3, ids[1, 4]], atol=1e-5)


@pytest.mark.parametrize("site", ["ffn", "attn", "both"])
def test_bf16_model_keeps_fp32_memory(site):
    lm = tiny_lm("llama", dtype=torch.bfloat16, memory_on=site)
    ids = random_ids(1, 12)
    mem = lm.init_memory(ids, width=4)
    assert mem.dtype == torch.float32
    mem = random_memory(lm, width=4).requires_grad_(True)
    out = lm(ids, memory=mem).logits
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert mem.grad is not None and mem.grad.dtype == torch.float32


def test_generate_with_memory_and_detach():
    base = tiny_model("llama")
    original_mlp = base.model.layers[0].mlp
    lm = LocasForCausalLM(base)
    ids = random_ids(1, 6)
    mem = random_memory(lm, scale=2.0)
    out = lm.generate(ids, memory=mem, max_new_tokens=5, do_sample=False)
    plain = lm.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape == plain.shape == (1, 11)
    assert all(w.memory is None for w in lm.wrappers)  # memory only installed for the call
    restored = lm.detach()
    assert restored.model.layers[0].mlp is original_mlp


def test_wrapped_model_state_dict_keeps_original_keys(tmp_path):
    base = tiny_model("llama")
    keys = set(base.state_dict())
    lm = LocasForCausalLM(base)
    assert set(lm.model.state_dict()) == keys
    lm.model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = random_ids(1, 9)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, lm(ids).logits)
    fresh = LocasForCausalLM(tiny_model("llama", seed=7))
    fresh.model.load_state_dict(lm.model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(ids).logits, lm(ids).logits)


def test_unknown_architecture_error():
    class Cfg:
        model_type = "my_new_arch"

    class Fake(torch.nn.Module):
        config = Cfg()

    with pytest.raises(UnsupportedArchitectureError, match="my_new_arch.*register_arch"):
        LocasForCausalLM(Fake())


def test_bad_memory_shape_error():
    lm = tiny_lm("llama")
    with pytest.raises(Exception, match="does not fit this model"):
        lm(random_ids(), memory=torch.zeros(2, 1, 4, 32, 3))


def _layer_out(wrapper, x, memory):
    wrapper.memory = memory
    try:
        with torch.no_grad():
            return wrapper(x)
    finally:
        wrapper.memory = None


def test_stacked_memory_adds_outputs_exactly():
    """stack_memories: slots concatenated, values rescaled so each keeps its own tau; one layer's output is
    base + a's extra + b's extra (and a width-padded memory gives what it gives alone)."""
    from locas.core.memory import rescale_width, stack_memories

    lm = tiny_lm("llama")
    w = lm.wrappers[0]
    x = torch.randn(2, 7, lm.hidden_size)
    a, b = random_memory(lm, width=3, seed=4)[0], random_memory(lm, width=5, seed=5)[0]  # (1, r, d, 3)
    base = _layer_out(w, x, None)
    ya, yb = _layer_out(w, x, a), _layer_out(w, x, b)
    both = stack_memories([a[None], b[None]])[0]
    assert both.shape[-3] == 8
    assert torch.allclose(_layer_out(w, x, both), base + (ya - base) + (yb - base), atol=1e-5)
    assert torch.allclose(_layer_out(w, x, rescale_width(a[None], 11)[0]), ya, atol=1e-6)
    assert not torch.allclose(ya, yb, atol=1e-3)  # the memories differ, so the sum is a real test
    with pytest.raises(ValueError, match="shrink"):
        rescale_width(b[None], 2)


def test_batch_serving_rows_match_alone():
    """Rows of different widths, and a row without memory (the exact base model), in one batch written in channel
    layout; rows that all share one memory read it once (broadcast); a layer whose values are all zero in every
    row gets no memory."""
    from locas.core.memory import ServingMemory, batch_serving

    lm = tiny_lm("qwen2")
    ids = random_ids(3, 9)
    a, b = random_memory(lm, width=2, seed=6), random_memory(lm, width=6, seed=7)
    a[1, ..., -1] = 0.0  # layer 1: no value in a
    ready_a, ready_b = ServingMemory.of(a), ServingMemory.of(b)
    assert ready_a.live == (True, False, True) and torch.equal(ready_a.tensor(), a)
    channels, live = batch_serving([ready_a, None, ready_b])
    assert [c.shape for c in channels] == [(lm.num_layers, 3, 6, lm.hidden_size)] * 3 and live == [True] * 3
    with torch.no_grad():
        lm.set_memory_channels((channels, live))
        batch = lm.model(input_ids=ids).logits
        lm.set_memory(None)
        assert torch.allclose(batch[0], lm(ids[:1], memory=a).logits[0], atol=1e-5)
        assert torch.equal(batch[1], lm(ids[1:2]).logits[0])  # no memory: the base model, bit for bit
        assert torch.allclose(batch[2], lm(ids[2:], memory=b).logits[0], atol=1e-5)
        shared, live = batch_serving([ready_a, ready_a])
        assert shared[0].shape[1] == 1 and shared[0].data_ptr() == ready_a.channels[0].data_ptr()  # not copied
        assert live == [True, False, True]
        lm.set_memory_channels((shared, live))
        assert lm.wrappers[1].memory is None
        both = lm.model(input_ids=ids[:2]).logits
        lm.set_memory(None)
        assert torch.allclose(both, lm(ids[:2], memory=a).logits, atol=1e-5)
    assert batch_serving([None, None]) is None


def test_cached_channels_follow_the_memory():
    """A memory without grad is split into contiguous channels once; an in-place change or another tensor
    is seen at the next call, and a memory being trained still gets its gradient."""
    lm = tiny_lm("llama")
    w = lm.wrappers[0]
    x = torch.randn(1, 5, lm.hidden_size)
    mem = random_memory(lm, width=4)[0].clone()
    first = _layer_out(w, x, mem)
    w.memory = mem
    with torch.no_grad():
        assert torch.equal(w(x), first) and w._split is not None
        mem[..., -1].mul_(3.0)  # in place: the cached copy is stale
        changed = w(x)
    w.memory = None
    assert w._split is None  # the copy does not outlive the memory
    base = _layer_out(w, x, None)
    assert torch.allclose(changed - base, 3 * (first - base), atol=1e-5)
    trained = mem.clone().requires_grad_(True)
    w.memory = trained
    w(x).sum().backward()
    w.memory = None
    assert trained.grad is not None and trained.grad.abs().sum() > 0
