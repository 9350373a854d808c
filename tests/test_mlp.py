"""Locas-MLP on tiny random two-layer-FFN models: registry, fusion, step-wise write, streaming learner."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from conftest import MLP_CONFIGS, random_ids, random_memory, tiny_lm, tiny_model
from locas import LocasForCausalLM
from locas.core.files import load_memory, read_memory_info, save_memory
from locas.errors import LocasError
from locas.learn.config import TrainConfig
from locas.learn.learners import TruncateLearner
from locas.learn.mlp_learner import LocasMLPLearner
from locas.learn.nlsvd import compress_memory
from locas.learn.stream import stream, window_spans
from locas.learn.write import append_slots, step_write


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run far faster single-threaded on a shared, loaded CPU."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(params=sorted(MLP_CONFIGS))
def mlp_arch(request):
    return request.param


def _randomise_biases(model, seed=5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") and p.dim() == 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


def test_mlp_registry_wraps_every_layer_and_detach_restores(mlp_arch):
    base = tiny_model(mlp_arch)
    keys = set(base.state_dict())
    ids = random_ids(1, 12)
    with torch.no_grad():
        ref = base(ids).logits.clone()
    lm = LocasForCausalLM(base)
    assert lm.memory_kind == "mlp" and lm.num_layers == 3
    assert lm.hidden_size == 32 and lm.intermediate_size == 48
    assert isinstance(lm.wrappers[0].act, torch.nn.ReLU)  # the paper's memory activation by default
    with torch.no_grad():
        mem = lm.init_memory(ids, width=5).requires_grad_(True)  # values zero, memory path forced to run
        assert torch.equal(lm(ids, memory=mem).logits, ref)
    # state dicts stay under the original keys while wrapped (OPT: fc1/fc2 on the layer itself)
    state = lm.model.state_dict()
    assert set(state) == keys
    other = LocasForCausalLM(tiny_model(mlp_arch, seed=9))
    other.model.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert torch.equal(other(ids).logits, ref)
    plain = lm.detach()
    assert set(plain.state_dict()) == keys
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, ref)


def test_fused_dense_matches_memory_model_for_every_mlp_arch(mlp_arch, tmp_path):
    lm = LocasForCausalLM(_randomise_biases(tiny_model(mlp_arch)), mlp_activation="backbone")
    ids = random_ids(1, 20)
    mem = random_memory(lm, width=6)
    with torch.no_grad():
        expected = lm(ids, memory=mem).logits
        with lm.disabled():
            base = lm(ids).logits
        assert (expected - base).abs().max() > 1e-3
        dense = lm.to_dense(mem)
        got = dense(ids).logits
        dense.save_pretrained(tmp_path)
        again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()(ids).logits
    assert (got - expected).abs().max() <= 1e-5
    assert (again - expected).abs().max() <= 1e-5
    with torch.no_grad():  # the wrapper is untouched by fusion
        assert torch.equal(lm(ids, memory=mem).logits, expected)


def test_relu_memory_refuses_inexact_fusion_but_relu_backbone_fuses():
    lm = tiny_lm("gpt2")  # GELU backbone, ReLU memory
    with pytest.raises(LocasError, match="mlp_activation='backbone'"):
        lm.to_dense(random_memory(lm))
    opt = tiny_lm("opt")  # OPT's FFN is ReLU: the paper's memory fuses exactly
    ids = random_ids(1, 16)
    mem = random_memory(opt, width=4)
    with torch.no_grad():
        assert (opt.to_dense(mem)(ids).logits - opt(ids, memory=mem).logits).abs().max() <= 1e-5
    with pytest.raises(LocasError, match="mlp_activation"):
        tiny_lm("gpt2", mlp_activation="tanh")


def test_memory_file_records_and_restores_its_activation(tmp_path):
    lm = tiny_lm("gpt2", mlp_activation="backbone")
    ids = random_ids(1, 16)
    mem = random_memory(lm, width=4)
    with torch.no_grad():
        expected = lm(ids, memory=mem).logits
    save_memory(mem, tmp_path / "m.locas", lm)
    assert read_memory_info(tmp_path / "m.locas")["mlp_activation"] == "backbone"
    other = tiny_lm("gpt2")  # relu by default: loading the file switches it back
    assert other.mlp_activation == "relu"
    loaded = load_memory(tmp_path / "m.locas", model=other)
    assert other.mlp_activation == "backbone"
    with torch.no_grad():
        assert torch.allclose(other(ids, memory=loaded).logits, expected, atol=1e-6)


def test_glu_models_ignore_mlp_activation():
    lm = tiny_lm("llama", mlp_activation="relu")
    assert lm.mlp_activation == "backbone"
    assert not isinstance(lm.wrappers[0].act, torch.nn.ReLU)


def test_opt_batched_memory_rows_match_rowwise():
    lm = tiny_lm("opt")  # OPT flattens (B, T, d) to (B*T, d) before its FFN
    ids = random_ids(2, 14)
    mem = random_memory(lm, width=4, batch=2)
    with torch.no_grad():
        both = lm(ids, memory=mem).logits
        for b in range(2):
            alone = lm(ids[b:b + 1], memory=mem[:, b:b + 1]).logits
            assert (both[b] - alone[0]).abs().max() <= 1e-5


# ---- step-wise write ------------------------------------------------------------------------------
def _written(lm, ids, w, width=32):
    mem = torch.zeros(lm.num_layers, 1, width, lm.hidden_size, 2)
    append_slots(mem, 0, w)
    return mem


@pytest.mark.parametrize("arch", ["gpt2", "opt", "gpt_neox"])
@pytest.mark.parametrize("select,count", [("all", None), ("top", 4)])
def test_write_raises_likelihood_of_every_written_token(arch, select, count):
    lm = tiny_lm(arch)
    ids = random_ids(1, 24)
    w = step_write(lm, ids, eps=0.05, select=select, count=count)
    assert w.count == (23 if select == "all" else 4)
    if select == "top":  # the highest-loss positions
        assert set(w.positions.tolist()) == set(w.nll.topk(4).indices.tolist())
    with torch.no_grad():
        before = lm.compute_nll(ids)[0]
        after = lm.compute_nll(ids, _written(lm, ids, w))[0]
    assert torch.allclose(before, w.nll, atol=1e-5)  # the write's forward is the score
    assert torch.all(after[w.positions] < before[w.positions])


def test_write_slots_are_unit_keys_and_globally_normalised_values():
    lm = tiny_lm("gpt2")
    w = step_write(lm, random_ids(1, 20), eps=0.3)
    assert w.keys.dtype == w.values.dtype == torch.float32
    assert torch.allclose(w.keys.norm(dim=-1), torch.ones(()), atol=1e-5)
    joint = w.values.pow(2).sum(dim=(0, 2)).sqrt()  # over layers and hidden size
    assert torch.allclose(joint, torch.full_like(joint, 0.3), atol=1e-6)
    assert w.values.norm(dim=-1).std() > 0  # layers get different shares (not per-layer normalised)


def _hidden_grads(lm, ids):
    """Independent check: d sum log p / d (FFN output) per layer via retain_grad, (L, T, d)."""
    outs = []

    def hook(_m, _a, out):
        out.retain_grad()
        outs.append(out)

    hs = [w.register_forward_hook(hook) for w in lm.wrappers]
    try:
        logits = lm.model(input_ids=ids, inputs_embeds=None, use_cache=False).logits
        for o in outs:
            assert o.requires_grad
        F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum").neg().backward()
    finally:
        for h in hs:
            h.remove()
    return torch.stack([o.grad[0] for o in outs])


def test_write_hidden_change_is_collinear_with_gradient():
    lm = tiny_lm("gpt2")
    ids = random_ids(1, 24)
    lm.model.transformer.wte.weight.requires_grad_(True)  # so FFN outputs carry grad for the check
    G = _hidden_grads(lm, ids)
    lm.model.transformer.wte.weight.requires_grad_(False)
    lm.model.zero_grad(set_to_none=True)
    w = step_write(lm, ids, eps=1e-3, select="top", count=1)
    t = int(w.positions[0])
    mem = _written(lm, ids, w, width=4)
    outs = {}

    def grab(i):
        def hook(module, args, out):
            outs.setdefault(i, []).append((out[0, t].detach().clone(), module.base_mlp(args[0])[0, t].detach()))
        return hook

    hs = [wr.register_forward_hook(grab(i)) for i, wr in enumerate(lm.wrappers)]
    with torch.no_grad():
        lm(ids)
        lm(ids, memory=mem)
    for h in hs:
        h.remove()
    cos = torch.nn.functional.cosine_similarity
    # the memory's own contribution at the written token, per layer, lies along that layer's gradient
    for i in range(lm.num_layers):
        out, base = outs[i][1]
        assert cos(out - base, G[i, t], dim=0) > 0.99
    # layer 0's input is untouched by the memory, so its whole hidden change is the write
    assert cos(outs[0][1][0] - outs[0][0][0], G[0, t], dim=0) > 0.99
    # the value is the *global* direction: eps * G_t / |G_t| over all layers
    assert torch.allclose(w.values[:, 0], 1e-3 * G[:, t] / G[:, t].norm(), atol=1e-6)


def test_float32_enforced_under_bf16_model():
    lm = tiny_lm("gpt2", dtype=torch.bfloat16)
    ids = random_ids(1, 16)
    w = step_write(lm, ids, eps=0.5)
    assert w.keys.dtype == w.values.dtype == w.nll.dtype == torch.float32
    mem = _written(lm, ids, w)
    squeezed = compress_memory(mem.to(torch.bfloat16), n=4, act=lm.wrappers[0].act, used=w.count)
    assert squeezed.dtype == torch.float32
    cfg = TrainConfig(window_size=8, memory_width=8)
    learner = LocasMLPLearner(lm, cfg, update="nlsvd", eps=0.5, write_count=4)
    stream(learner, random_ids(1, 40)[0], cfg, progress=False)
    assert learner.memory.dtype == torch.float32 and learner.compressions >= 1
    out = lm(ids, memory=learner.memory).logits
    assert out.dtype == torch.bfloat16


def test_write_errors_are_clear():
    with pytest.raises(LocasError, match="GLU"):
        step_write(tiny_lm("llama"), random_ids(1, 8))
    lm = tiny_lm("gpt2")
    with pytest.raises(LocasError, match="eps"):
        step_write(lm, random_ids(1, 8), eps=0)
    with pytest.raises(LocasError, match="all or top"):
        step_write(lm, random_ids(1, 8), select="best")
    w = step_write(lm, random_ids(1, 8))
    with pytest.raises(LocasError, match="memory is full"):
        append_slots(torch.zeros(3, 1, 4, 32, 2), 0, w)


# ---- streaming learner ----------------------------------------------------------------------------
def _tokens(n=96, seed=4):
    base = random_ids(1, 15, seed=seed)[0]
    return base.repeat(n // 15 + 1)[:n]


@pytest.mark.parametrize("kw", [dict(update="nlsvd", eps=2.0, write_count=6),
                                dict(update="nlsvd", eps=2.0, write_tokens="all", capacity=32),
                                dict(update="nlsvd", eps=2.0, write_count=6, clip=True),
                                dict(update="bp"), dict(update="bp", init="random")])
def test_learner_helps_on_repetition_and_keeps_backbone(kw):
    lm = tiny_lm("gpt2")
    backbone = {k: v.clone() for k, v in lm.model.state_dict().items()}
    cfg = TrainConfig(window_size=16, lr=5e-2, memory_width=12)
    tokens = _tokens()
    base = stream(TruncateLearner(lm, cfg), tokens, cfg, progress=False)
    learner = LocasMLPLearner(lm, cfg, **kw)
    res = stream(learner, tokens, cfg, progress=False)
    for k, v in lm.model.state_dict().items():
        assert torch.equal(v, backbone[k]), k
    assert res.window_nll[0] == pytest.approx(base.window_nll[0], rel=1e-5)  # first window: empty memory
    assert res.ppl < base.ppl
    assert learner.used <= learner.capacity
    if kw["update"] == "nlsvd":
        assert learner.compressions >= 1 and learner.timings["nlsvd_s"] > 0
        assert learner.memory.shape[2] == kw.get("capacity", 12)
        assert (learner.memory.norm(dim=-2).max() <= 1 + 1e-6) == kw.get("clip", False)
    else:
        assert learner.memory.norm(dim=-2).max() <= 1 + 1e-6  # weight-norm clipping


@pytest.mark.parametrize("kw", [dict(update="nlsvd", eps=2.0, write_count=4), dict(update="bp")])
def test_learner_never_scores_its_own_update_and_resumes(tmp_path, kw):
    lm = tiny_lm("gpt2")
    cfg = TrainConfig(window_size=12, memory_width=8, lr=3e-2)
    tokens = _tokens(60)
    full = stream(LocasMLPLearner(lm, cfg, **kw), tokens, cfg, progress=False)
    learner = LocasMLPLearner(lm, cfg, **kw)
    stream(learner, tokens, cfg, progress=False, stop_after=3)
    s, e = window_spans(len(tokens), cfg.window_size)[3]
    assert learner.score(tokens, s, e).sum().item() == pytest.approx(full.window_nll[3], rel=1e-5)
    # interrupted + resumed == uninterrupted
    part = LocasMLPLearner(lm, cfg, **kw)
    stream(part, tokens, cfg, progress=False, checkpoint_dir=tmp_path, checkpoint_every=1, stop_after=2)
    resumed = LocasMLPLearner(lm, cfg, **kw)
    res = stream(resumed, tokens, cfg, progress=False, checkpoint_dir=tmp_path, resume=True)
    assert res.window_nll == pytest.approx(full.window_nll, rel=1e-5)


def test_cosine_schedule_reaches_the_mlp_learner():
    """The streaming loop's learning-rate schedule applies to Locas-MLP (bp) as to every trainable learner."""
    lm = tiny_lm("gpt2")
    tokens = _tokens(96)
    runs = {}
    for schedule in ("constant", "cosine"):
        cfg = TrainConfig(window_size=16, memory_width=8, lr=5e-2, schedule=schedule)
        learner = LocasMLPLearner(lm, cfg, update="bp")
        runs[schedule] = stream(learner, tokens, cfg, progress=False).window_nll
    const, cos = runs["constant"], runs["cosine"]
    assert const[:2] == cos[:2]  # scored before any optimiser step (window 1 is the write)
    assert all(abs(a - b) > 1e-6 for a, b in zip(const[2:], cos[2:]))  # the lr decays from step 1: other memories


def test_learner_rejects_bad_settings():
    cfg = TrainConfig(window_size=16, memory_width=8)
    with pytest.raises(LocasError, match="GLU"):
        LocasMLPLearner(tiny_lm("llama"), cfg)
    lm = tiny_lm("gpt2")
    with pytest.raises(LocasError, match="capacity"):
        LocasMLPLearner(lm, cfg, update="nlsvd", write_tokens="all")
    with pytest.raises(LocasError, match="bp or nlsvd"):
        LocasMLPLearner(lm, cfg, update="sgd")


def _byte_gpt2(path):
    """A tiny random byte-level GPT-2 saved with the (file-free) ByT5 byte tokenizer."""
    from transformers import ByT5Tokenizer, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=384, n_embd=32, n_layer=2, n_head=4, n_inner=48, n_positions=256)
    GPT2LMHeadModel(cfg).save_pretrained(path)
    ByT5Tokenizer().save_pretrained(path)
    return path


def test_cli_pg19_variant_mlp_nlsvd(tmp_path, capsys):
    from locas.cli import main

    model = _byte_gpt2(tmp_path / "model")
    book = tmp_path / "book.txt"
    book.write_text("The ship sailed at dawn. " * 12)
    out = tmp_path / "run"
    code = main(["pg19", "--model", str(model), "--book", str(book), "--method", "truncate", "--method", "locas",
                 "--variant", "mlp", "--update", "nlsvd", "--window-size", "40", "--memory-width", "16",
                 "--write-count", "8", "--write-eps", "2", "--out", str(out), "--checkpoint-every", "0"])
    assert code == 0
    payload = json.loads((out / "results.json").read_text())
    assert set(payload["methods"]) == {"truncate", "locas-mlp"}
    assert payload["config"]["update"] == "nlsvd" and payload["config"]["capacity"] == 0
    assert payload["methods"]["locas-mlp"]["ppl"] < payload["methods"]["truncate"]["ppl"]  # repetitive text
    assert "locas-mlp" in capsys.readouterr().out
    code = main(["pg19", "--model", str(model), "--book", str(book), "--variant", "mlp", "--update", "nlsvd",
                 "--write-tokens", "all", "--window-size", "40", "--memory-width", "16", "--out", str(out),
                 "--overwrite"])
    assert code == 2 and "--capacity" in capsys.readouterr().err
