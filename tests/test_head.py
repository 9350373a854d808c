"""The chunked head (``core.head``): the same NLL and the same memory gradient as the plain logits path, on every
architecture, in float32 and bfloat16; heads it must not take (soft-capping, a trained head) take the plain path."""

from __future__ import annotations

import pytest
import torch

from conftest import GLU_CONFIGS, MLP_CONFIGS, random_ids, random_memory, tiny_lm
from locas.core.head import _HeadNLL, next_token_nll, plain_head, token_nll


@pytest.mark.parametrize("arch", sorted(GLU_CONFIGS) + sorted(MLP_CONFIGS))
def test_chunked_nll_and_memory_gradient_equal_the_plain_path(arch):
    lm = tiny_lm(arch)
    ids = random_ids(batch=2, length=20)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # a left-padded row
    memory = random_memory(lm, width=4, batch=2).requires_grad_(True)
    grads = []
    for chunked in (False, True):
        memory.grad = None
        with lm.use_memory(memory):
            if chunked:
                nll = next_token_nll(lm.model, ids, rows=7, attention_mask=mask)  # 7: chunks that cut rows
            else:
                nll = token_nll(lm.model(input_ids=ids, attention_mask=mask, use_cache=False).logits, ids)
        weights = torch.linspace(0.5, 2.0, nll.numel()).view_as(nll)  # a non-uniform upstream gradient
        (nll * weights).sum().backward()
        grads.append((nll.detach(), memory.grad.clone()))
    (plain, g_plain), (chunk, g_chunk) = grads
    torch.testing.assert_close(chunk, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_chunk, g_plain, rtol=1e-4, atol=1e-6 * g_plain.abs().max().item())
    assert g_plain.abs().max() > 0


def test_bfloat16_model_matches_its_plain_path():
    lm = tiny_lm("llama", dtype=torch.bfloat16)
    ids = random_ids(length=16)
    plain = token_nll(lm.model(input_ids=ids, use_cache=False).logits, ids)
    chunked = next_token_nll(lm.model, ids, rows=5)
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, plain, rtol=0, atol=2e-2)  # bf16 logits: the same rounding, chunk by chunk


def test_no_gradient_is_computed_without_one_needed():
    lm = tiny_lm("llama")
    with torch.no_grad():
        nll = next_token_nll(lm.model, random_ids(length=12))
    assert not nll.requires_grad


def test_gradient_of_a_row_is_the_softmax_minus_the_target():
    torch.manual_seed(0)
    hidden = torch.randn(5, 8, requires_grad=True)
    weight, targets = torch.randn(11, 8), torch.tensor([0, 3, 10, 3, 7])
    nll = _HeadNLL.apply(hidden, weight, None, targets, 2)
    g = torch.tensor([1.0, 0.0, 2.0, -1.0, 0.5])
    nll.backward(g)
    probs = torch.softmax(hidden.detach() @ weight.T, -1)
    probs[torch.arange(5), targets] -= 1
    torch.testing.assert_close(hidden.grad, (probs @ weight) * g[:, None])
    torch.testing.assert_close(nll, torch.nn.functional.cross_entropy(hidden @ weight.T, targets, reduction="none"))


def test_heads_it_must_not_take():
    lm = tiny_lm("gemma2")
    lm.model.config.final_logit_softcapping = 30.0  # Gemma 2: logits = 30 tanh(h W / 30)
    assert plain_head(lm.model) is None
    ids = random_ids(length=12)
    torch.testing.assert_close(next_token_nll(lm.model, ids),
                               token_nll(lm.model(input_ids=ids, use_cache=False).logits, ids))
    lm = tiny_lm("llama")
    assert plain_head(lm.model) is lm.model.lm_head
    lm.model.lm_head.weight.requires_grad_(True)  # a head being trained needs its own gradient
    assert plain_head(lm.model) is None


@pytest.mark.parametrize("method", ["truncate", "locas", "lora"])
def test_every_learner_scores_the_same_through_either_head(method):
    """A learner's ``nll`` (chunked, through its state: memory, adapter or none) equals the NLL of its logits."""
    pytest.importorskip("peft")
    from locas.learn.config import TrainConfig
    from locas.learn.learners import make_learner

    lm = tiny_lm("llama")
    ids = random_ids(length=16)
    learner = make_learner(method, lm, TrainConfig(window_size=16, memory_width=4, lora_rank=2))
    learner.begin(ids[0], (0, 16))
    with torch.no_grad():
        for p in learner.parameters():  # a state that changes the output (values and lora_B start at zero)
            p.add_(torch.randn_like(p) * 0.3)
    try:
        nll = learner.nll(ids)
        torch.testing.assert_close(nll, token_nll(learner.logits(ids), ids), rtol=1e-5, atol=1e-5)
        if method != "truncate":
            with learner.frozen():
                base = token_nll(lm.model(input_ids=ids).logits, ids)
            assert (nll - base).abs().max() > 1e-3  # the state is really on
    finally:
        learner.finish()
