"""Streaming trainer and baselines on tiny random models."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import random_ids, tiny_lm
from locas.errors import LocasError
from locas.learn.config import TrainConfig, parse_layers
from locas.learn.learners import FullAttentionLearner, LocasLearner, LoraLearner, TruncateLearner
from locas.learn.objectives import make_objective
from locas.learn.objectives.window import teacher_targets
from locas.learn.stream import stream, window_spans


def _tokens(n=90, seed=4):
    # a repetitive stream, so memorising earlier windows helps on later ones
    base = random_ids(1, 15, seed=seed)[0]
    return base.repeat(n // 15 + 1)[:n]


def test_window_spans_cover_every_token_once():
    spans = window_spans(50, 8)
    scored = [t for s, e in spans for t in range(s + 1, e)]
    assert scored == list(range(1, 50))
    assert all(e - s <= 8 for s, e in spans)
    assert window_spans(5, 100) == [(0, 5)]  # shorter than a window: one window
    with pytest.raises(LocasError, match="too short"):
        window_spans(1, 8)


def test_locas_trains_memory_only_and_helps_on_repetition():
    lm = tiny_lm("llama")
    backbone = {k: v.clone() for k, v in lm.model.state_dict().items()}
    cfg = TrainConfig(window_size=16, lr=5e-2, memory_width=8, steps_per_window=2)
    tokens = _tokens()
    base = stream(TruncateLearner(lm, cfg), tokens, cfg, progress=False)
    learner = LocasLearner(lm, cfg)
    res = stream(learner, tokens, cfg, progress=False)
    for k, v in lm.model.state_dict().items():
        assert torch.equal(v, backbone[k]), k
    assert learner.memory[..., 2].abs().sum() > 0
    assert learner.memory.norm(dim=-2).max() <= 1 + 1e-6
    assert res.tokens == base.tokens == len(tokens) - 1
    assert res.window_nll[0] == pytest.approx(base.window_nll[0], rel=1e-5)  # first window: zero memory
    assert res.ppl < base.ppl


def test_score_of_window_never_sees_its_own_update():
    lm = tiny_lm("qwen2")
    cfg = TrainConfig(window_size=12, lr=5e-2, memory_width=4)
    tokens = _tokens(60)
    full = stream(LocasLearner(lm, cfg), tokens, cfg, progress=False)
    for i in (1, 3):
        learner = LocasLearner(lm, cfg)
        stream(learner, tokens, cfg, progress=False, stop_after=i)  # trained on windows < i only
        s, e = window_spans(len(tokens), cfg.window_size)[i]
        nll = learner.score(tokens, s, e)
        assert float(nll.sum()) == pytest.approx(full.window_nll[i], rel=1e-5)


@pytest.mark.parametrize("method", ["locas", "locas-gain", "lora"])
def test_resume_equals_uninterrupted(tmp_path, method):
    lm = tiny_lm("llama")
    cfg = TrainConfig(window_size=10, lr=3e-2, memory_width=4, lora_rank=2, gain_lr=0.1 * (method == "locas-gain"))
    tokens = _tokens(70)
    make = (lambda: LoraLearner(lm, cfg)) if method == "lora" else (lambda: LocasLearner(lm, cfg))
    ref_learner = make()
    ref = stream(ref_learner, tokens, cfg, progress=False)
    ref_learner.finish()
    first = make()
    stream(first, tokens, cfg, progress=False, checkpoint_dir=tmp_path, checkpoint_every=2, stop_after=5)
    first.finish()
    second = make()
    res = stream(second, tokens, cfg, progress=False, checkpoint_dir=tmp_path, checkpoint_every=2, resume=True)
    second.finish()
    assert res.window_nll == pytest.approx(ref.window_nll, rel=1e-6)
    assert len(list(tmp_path.glob("state-*.safetensors"))) == 1


def test_sd_loss_zero_for_same_context_and_zero_memory():
    lm = tiny_lm("llama")
    tokens = _tokens(30)
    obj = make_objective(TrainConfig(objective="sd"))
    teacher = teacher_targets(lm, tokens, 0, 12, context=12)
    mem = lm.init_memory(tokens[:12][None], width=4).requires_grad_(True)
    ids = tokens[:12][None]
    loss, _ = obj(lm(ids, memory=mem).logits, ids, teacher)
    assert abs(loss.item()) < 1e-6
    top = teacher_targets(lm, tokens, 0, 12, context=12, topk=5)
    loss_top, _ = make_objective(TrainConfig(objective="sd", sd_topk=5))(lm(ids, memory=mem).logits, ids, top)
    assert abs(loss_top.item()) < 1e-6
    longer = teacher_targets(lm, tokens, 12, 24, context=24)
    loss2, _ = obj(lm(tokens[12:24][None], memory=mem).logits, tokens[12:24][None], longer)
    assert loss2.item() > 1e-4  # the teacher sees more context than the student


@pytest.mark.parametrize("topk", [0, 5])
def test_sd_gradient_is_exactly_zero_where_the_student_is_its_teacher(topk):
    """A zero memory on the teacher's own context: no signal, so no step. (Autograd's own gradient was ~1e-9
    noise that AdamW scaled into a CPU-dependent first step.)"""
    lm = tiny_lm("llama")
    tokens = _tokens(30)
    ids = tokens[:12][None]
    teacher = teacher_targets(lm, tokens, 0, 12, context=12, topk=topk)
    mem = lm.init_memory(ids, width=4).requires_grad_(True)
    loss, _ = make_objective(TrainConfig(objective="sd", sd_topk=topk))(lm(ids, memory=mem).logits, ids, teacher)
    loss.backward()
    assert mem.grad is not None and torch.count_nonzero(mem.grad) == 0


def test_distill_kl_gradient_is_the_kl_gradient():
    from locas.learn.objectives.window import TeacherTargets, distill_kl

    torch.manual_seed(0)
    student = torch.randn(7, 11, dtype=torch.float64, requires_grad=True)
    logp = torch.log_softmax(torch.randn(7, 11, dtype=torch.float64), -1)
    distill_kl(student, TeacherTargets(logp, None)).backward()
    want = torch.func.grad(lambda s: (logp.exp() * (logp - torch.log_softmax(s, -1))).sum(-1).mean())(student.detach())
    torch.testing.assert_close(student.grad, want, rtol=1e-5, atol=1e-7)  # distill_kl computes in float32


@pytest.mark.parametrize("objective", ["sd", "mix"])
def test_sd_and_mix_train(objective):
    lm = tiny_lm("llama")
    cfg = TrainConfig(window_size=12, lr=5e-2, memory_width=4, objective=objective, sd_topk=8)
    learner = LocasLearner(lm, cfg)
    res = stream(learner, _tokens(40), cfg, progress=False)
    assert learner.memory[..., 2].abs().sum() > 0 and math.isfinite(res.ppl)


def test_lora_trains_only_lora_weights_and_unloads():
    lm = tiny_lm("llama")
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    cfg = TrainConfig(window_size=12, lr=1e-2, lora_rank=2)
    learner = LoraLearner(lm, cfg)
    res = stream(learner, _tokens(40), cfg, progress=False)
    names = [n for n, p in learner.peft_model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert {n.split(".")[-3] for n in names} == {"lora_A", "lora_B"}
    targeted = {n.split(".")[-4] for n in names}
    assert targeted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert res.extra_params == sum(p.numel() for p in learner.params)
    learner.finish()
    after = lm.model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_lora_targets_split_a_layer_into_its_attention_and_its_feed_forward_projections(arch):
    """--lora-targets attn / mlp adapt the projections outside / inside each feed-forward block, together every one
    that `all` adapts (GPT-2's attention and MLP both have a ``c_proj``: only full names tell them apart)."""
    from locas.learn.learners import linear_target_names

    lm = tiny_lm(arch)
    attn, mlp = linear_target_names(lm, "attn"), linear_target_names(lm, "mlp")
    mlp_ids = {id(m) for layer in lm.spec.layers(lm.model) for m in lm.spec.mlp(layer).modules()}
    modules = dict(lm.model.named_modules())
    assert attn and mlp and not set(attn) & set(mlp)
    assert all(id(modules[n]) in mlp_ids for n in mlp) and not any(id(modules[n]) in mlp_ids for n in attn)
    assert {n.rsplit(".", 1)[-1] for n in attn + mlp} == set(linear_target_names(lm, "all"))
    assert len(mlp) == lm.num_layers * (2 if lm.memory_kind == "mlp" else 3)
    cfg = TrainConfig(window_size=12, lr=1e-2, lora_rank=2, lora_targets="mlp")
    learner = LoraLearner(lm, cfg)
    stream(learner, _tokens(30), cfg, progress=False)
    adapted = {n.split(".lora_")[0].replace("base_model.model.", "", 1) for n, p in
               learner.peft_model.named_parameters() if p.requires_grad}
    assert adapted == set(mlp)  # only the feed-forward projections got adapters
    learner.finish()


def test_full_attention_scores_same_tokens_with_more_context():
    lm = tiny_lm("llama")
    cfg = TrainConfig(window_size=8, full_context=64)
    tokens = _tokens(40)
    trunc = stream(TruncateLearner(lm, cfg), tokens, cfg, progress=False)
    full = stream(FullAttentionLearner(lm, cfg), tokens, cfg, progress=False)
    assert trunc.window_tokens == full.window_tokens
    assert full.window_nll[0] == pytest.approx(trunc.window_nll[0], rel=1e-5)
    assert abs(full.window_nll[2] - trunc.window_nll[2]) > 1e-4  # tiny random models use context weakly


def test_memory_layers_subset_stops_gradients_below():
    lm = tiny_lm("llama")
    cfg = TrainConfig(window_size=12, lr=5e-2, memory_width=4, memory_layers="top:1")
    learner = LocasLearner(lm, cfg)
    stream(learner, _tokens(30), cfg, progress=False)
    assert learner.layers == [2] and learner.memory.shape[0] == 1
    assert parse_layers("bottom:2", 5) == [0, 1] and parse_layers("1,3", 5) == [1, 3]
    with pytest.raises(LocasError):
        parse_layers("top:9", 5)


def test_nan_loss_skips_update_and_keeps_memory():
    lm = tiny_lm("llama")
    cfg = TrainConfig(window_size=12, lr=5e-2, memory_width=4)
    learner = LocasLearner(lm, cfg)
    tokens = _tokens(40)
    learner.begin(tokens, (0, 12))
    with torch.no_grad():
        learner.memory[0, 0, 0, 0, 2] = float("nan")
    before = learner.memory.detach().clone()
    res = stream(learner, tokens, cfg, progress=False)
    assert res.skipped_updates == len(res.window_nll)
    assert torch.equal(learner.memory.detach().nan_to_num(), before.nan_to_num())


def test_epochs_report_falling_ppl():
    lm = tiny_lm("llama")
    cfg = TrainConfig(window_size=16, lr=5e-2, memory_width=8, epochs=3)
    res = stream(LocasLearner(lm, cfg), random_ids(1, 40, seed=9)[0], cfg, progress=False)
    per_epoch = res.epoch_ppl()
    assert len(per_epoch) == 3 and per_epoch[2] < per_epoch[0]


def test_lora_teacher_is_the_frozen_base_model():
    """sd/mix teachers read through ``learner.frozen()``: for TempLoRA that switches the injected adapter off too
    (before 0.2 the SD teacher of a LoRA learner still had its adapter on)."""
    lm = tiny_lm("llama")
    tokens = _tokens(40)
    want = teacher_targets(lm, tokens, 12, 24, context=24).logprobs
    cfg = TrainConfig(window_size=12, lr=5e-2, lora_rank=2, objective="sd")
    learner = LoraLearner(lm, cfg)
    stream(learner, tokens, cfg, progress=False)  # the adapter has learned: it changes the logits
    try:
        with learner.frozen():
            got = teacher_targets(lm, tokens, 12, 24, context=24).logprobs
        live = teacher_targets(lm, tokens, 12, 24, context=24).logprobs  # adapter on
    finally:
        learner.finish()
    assert torch.equal(got, want)
    assert (live - want).abs().max() > 1e-4
