"""The PG-19 levers on the paper recipe: output scale laws baked into what is saved, per-channel learning
rates, the gradient-informed value init, the value clipping radius, cheaper steps, warm-up, presets."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import random_ids, tiny_lm
from locas.core.files import load_memory, save_memory
from locas.errors import LocasError
from locas.learn.config import MLPTrainConfig, TrainConfig
from locas.learn.learner import Learner
from locas.learn.learners import LocasLearner, TruncateLearner
from locas.learn.mlp_learner import LocasMLPLearner
from locas.learn.objectives import make_objective
from locas.learn.presets import PRESETS, TUNED, preset_settings
from locas.learn.step import guarded_step, lr_at, make_optimizer
from locas.learn.stream import stream, window_spans


def _tokens(n=72, seed=4):
    base = random_ids(1, 12, seed=seed)[0]
    return base.repeat(n // 12 + 1)[:n]


@pytest.mark.parametrize("over", [{"tau_scale": 4.0}, {"tau_law": "sqrt"}])
def test_output_scale_is_baked_into_the_saved_memory(tmp_path, over):
    lm = tiny_lm("llama")
    cfg = TrainConfig(window_size=12, lr=5e-2, memory_width=8, **over)
    learner = LocasLearner(lm, cfg)
    stream(learner, _tokens(), cfg, progress=False)
    ids = random_ids(1, 10, seed=7)
    with torch.no_grad():
        trained = learner.logits(ids)
        path = save_memory(learner.full_memory(), tmp_path / "m.locas", model=lm)
        loaded = load_memory(path, lm)
        assert torch.allclose(lm(ids, memory=loaded).logits, trained, atol=1e-5)
        plain = lm(ids, memory=learner.memory.detach()).logits  # the parameter alone lacks the scale
    assert not torch.allclose(plain, trained, atol=1e-4)
    assert cfg.output_scale() == (4.0 if "tau_scale" in over else math.sqrt(8))
    again = LocasLearner(lm, cfg, memory=loaded)  # continuing a file divides the scale back out
    assert torch.allclose(again.model_memory(), learner.model_memory(), atol=1e-6)


def test_learned_gain_is_per_layer_baked_in_and_steps_at_its_own_lr(tmp_path):
    lm = tiny_lm("llama")
    cfg = TrainConfig(window_size=12, lr=1e-2, memory_width=8, tau_law="sqrt", gain_lr=0.2)
    learner = LocasLearner(lm, cfg)
    learner.begin(_tokens(), (0, 12))
    params = learner.parameters()
    assert len(params) == 2 and params[1].shape == (lm.num_layers, 1, 1, 1, 1)
    assert learner.extra_params() == learner.memory.numel() + lm.num_layers
    opt = make_optimizer(params, cfg)
    grad = torch.randn(params[1].shape)
    learner.memory.grad, params[1].grad = torch.zeros_like(learner.memory), grad
    assert guarded_step(learner, opt)  # AdamW's first step is lr * sign(g); the gain's is gain_lr * sign(g)
    assert torch.allclose(params[1].detach(), -0.2 * grad.sign(), atol=1e-5)
    learner = LocasLearner(lm, cfg)
    stream(learner, _tokens(), cfg, progress=False)
    gains = learner.log_gain.detach().flatten()
    assert gains.abs().min() > 0 and len(set(gains.tolist())) == lm.num_layers  # each layer its own gain
    ids = random_ids(1, 10, seed=7)
    with torch.no_grad():
        path = save_memory(learner.full_memory(), tmp_path / "m.locas", model=lm)
        assert torch.allclose(lm(ids, memory=load_memory(path, lm)).logits, learner.logits(ids), atol=1e-5)
        want = learner.memory * math.sqrt(8) * learner.log_gain.exp()  # (L, 1, r, d, C): the values channel
        assert torch.allclose(learner.model_memory()[..., -1], want[..., -1])
        assert torch.equal(learner.model_memory()[..., :-1], learner.memory[..., :-1])  # keys, gates as trained
    with pytest.raises(LocasError, match="gain-lr"):
        LocasMLPLearner(tiny_lm("gpt2"), MLPTrainConfig(window_size=12, gain_lr=0.1))


class _Pair(Learner):
    trainable = True

    def __init__(self):
        self.p = torch.nn.Parameter(torch.zeros(2, 3))

    def parameters(self):
        return [self.p]

    def update_scales(self):
        return [torch.tensor([0.5, 0.5, 1.0])]


def test_update_scales_multiply_the_optimiser_step_per_channel():
    learner = _Pair()
    opt = torch.optim.SGD(learner.parameters(), lr=1.0)
    learner.p.grad = torch.ones(2, 3)
    assert guarded_step(learner, opt)
    assert torch.equal(learner.p.detach(), torch.tensor([[-0.5, -0.5, -1.0]] * 2))


def test_key_lr_scale_leaves_values_and_slows_keys():
    lm = tiny_lm("llama")
    tokens = _tokens(24)
    out = {}
    for k in (1.0, 0.1):
        cfg = TrainConfig(window_size=12, lr=1e-3, memory_width=4, key_lr_scale=k)
        learner = LocasLearner(lm, cfg)
        learner.begin(tokens, (0, 12))
        start = learner.memory.detach().clone()
        opt = make_optimizer(learner.parameters(), cfg)
        learner.learn(opt, make_objective(cfg), tokens, (0, 12), cfg)  # zero values: keys get no gradient yet
        first = learner.memory.detach().clone()
        learner.learn(opt, make_objective(cfg), tokens, (11, 23), cfg)
        out[k] = (start, first, learner.memory.detach().clone())
    (s1, f1, m1), (s2, f2, m2) = out[1.0], out[0.1]
    assert torch.equal(s1, s2) and torch.equal(f1[..., 2], f2[..., 2])  # values: the same lr
    key_move = (m2[..., :2] - f2[..., :2]).norm() / (m1[..., :2] - f1[..., :2]).norm()
    assert 0.09 < float(key_move) < 0.11


def test_gradient_value_init_is_the_closed_form_first_step_and_never_leaks_into_the_score():
    lm = tiny_lm("qwen2")
    tokens = _tokens(36)
    cfg = TrainConfig(window_size=12, lr=1e-2, memory_width=4, value_init="gradient", value_radius=0.5)
    learner = LocasLearner(lm, cfg)
    learner.begin(tokens, (0, 12))
    ids = tokens[:12][None]
    probe = torch.nn.Parameter(learner.memory.detach().clone())  # the gradient at zero values, computed apart
    with lm.use_memory(probe, learner.layers):
        loss, _ = make_objective(cfg)(lm.model(input_ids=ids, use_cache=False).logits, ids, None)
    loss.backward()
    grad = probe.grad[..., -1]
    expected = -0.5 * grad / grad.norm(dim=-1, keepdim=True).amax(dim=-2, keepdim=True)
    opt = make_optimizer(learner.parameters(), cfg)
    nll, _ = learner.learn(opt, make_objective(cfg), tokens, (0, 12), cfg)
    assert torch.allclose(learner.memory[..., -1].detach(), expected, atol=1e-6)
    assert float(learner.memory[..., -1].detach().norm(dim=-1).max()) == pytest.approx(0.5, rel=1e-5)
    base = TruncateLearner(lm, cfg).score(tokens, 0, 12)
    assert torch.allclose(nll, base, atol=1e-5)  # scored before anything was written
    written = learner.memory[..., -1].detach().clone()
    learner.learn(opt, make_objective(cfg), tokens, (11, 23), cfg)  # later steps: ordinary AdamW
    assert not torch.allclose(learner.memory[..., -1].detach(), written)


def test_value_radius_bounds_values_only():
    lm = tiny_lm("llama")
    cfg = TrainConfig(window_size=12, lr=0.5, memory_width=4, value_radius=2.0)
    learner = LocasLearner(lm, cfg)
    stream(learner, _tokens(), cfg, progress=False)
    norms = learner.memory.detach().norm(dim=-2)  # (L, 1, r, C)
    assert norms[..., :2].max() <= 1 + 1e-5
    assert 1.2 < norms[..., 2].max() <= 2 + 1e-5


def test_update_every_trains_on_every_nth_window_and_scores_the_rest():
    lm = tiny_lm("llama")
    tokens = _tokens()
    cfg = TrainConfig(window_size=12, lr=5e-2, memory_width=4, update_every=2)
    learner = LocasLearner(lm, cfg)
    calls = []
    learn = learner.learn
    learner.learn = lambda *a, **k: calls.append(a[3]) or learn(*a, **k)
    res = stream(learner, tokens, cfg, progress=False)
    spans = window_spans(len(tokens), 12)
    assert calls == spans[::2] and res.tokens == len(tokens) - 1


def test_update_every_is_refused_where_it_would_do_nothing():
    from locas.learn.segments import Segment, train_segments

    lm = tiny_lm("llama")
    tokens = _tokens(36)
    cfg = TrainConfig(window_size=12, memory_width=4, update_every=2)
    with pytest.raises(LocasError, match="update-every"):  # memorize / locomo train segment by segment
        train_segments(lm, [Segment(tokens, (0, 36))], make_objective(cfg), cfg, progress=False)
    one = TrainConfig(window_size=12, memory_width=4)
    learner, _ = train_segments(lm, [Segment(tokens, (0, 36))], make_objective(one), one, progress=False)
    assert learner.memory[..., -1].abs().sum() > 0


def test_extra_steps_train_on_the_window_tail():
    lm = tiny_lm("llama")
    cfg = TrainConfig(window_size=12, lr=5e-2, memory_width=4, steps_per_window=3, extra_step_tokens=5)
    learner = LocasLearner(lm, cfg)
    lengths = []
    nll = learner.nll
    learner.nll = lambda ids, **kw: lengths.append(ids.shape[1]) or nll(ids, **kw)
    stream(learner, _tokens(23), cfg, progress=False)  # windows (0, 12), (11, 23)
    assert lengths == [12, 5, 5, 12, 5, 5]
    sd = TrainConfig(window_size=12, memory_width=4, steps_per_window=2, extra_step_tokens=5, objective="sd")
    with pytest.raises(LocasError, match="ntp objective only"):
        stream(LocasLearner(lm, sd), _tokens(24), sd, progress=False)


def test_warmup_and_adam_settings():
    cfg = TrainConfig(lr=0.1, warmup_windows=4, adam_beta1=0.5, adam_beta2=0.99, adam_eps=1e-6)
    assert [round(lr_at(cfg, i, 10), 6) for i in range(6)] == [0.025, 0.05, 0.075, 0.1, 0.1, 0.1]
    group = make_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg).param_groups[0]
    assert group["betas"] == (0.5, 0.99) and group["eps"] == 1e-6


def test_locas_mlp_refuses_other_output_scales():
    lm = tiny_lm("gpt2")
    with pytest.raises(LocasError, match="output scale"):
        LocasMLPLearner(lm, MLPTrainConfig(window_size=12, memory_width=4, tau_law="sqrt"))


def test_presets_set_their_fields_and_explicit_flags_win():
    from locas.cli.flags import apply_preset, setting_value
    from locas.cli.main import build_parser

    assert set(PRESETS) >= {"paper", TUNED} and TUNED != "paper"
    parser = build_parser()
    argv = ["pg19", "--preset", TUNED, "--lr", "0.2"]
    args = parser.parse_args(argv)
    apply_preset(args._parser, args, argv)
    assert setting_value(args, TrainConfig, "lr") == 0.2
    for field, value in preset_settings(TUNED).items():
        if field != "lr":
            assert setting_value(args, TrainConfig, field) == value, field
    paper = TrainConfig(**preset_settings("paper"))
    assert paper == TrainConfig(lr=3e-2, memory_width=64)  # the paper's recipe is the defaults
    with pytest.raises(LocasError, match="unknown preset"):
        preset_settings("nope")


def test_a_model_changes_its_presets_and_window_defaults_and_flags_still_win():
    """gemma3-270m (by name, alias or hub id) takes its own lrs; any other model the presets as written."""
    from locas.cli.flags import apply_preset, setting_value
    from locas.cli.main import build_parser
    from locas.learn.memorize import objective_defaults
    from locas.learn.presets import MODEL_SETTINGS

    for name in ("gemma3-270m", "gemma-3-270m", "google/gemma-3-270m"):
        assert preset_settings("paper", model=name)["lr"] == 1e-2
        assert preset_settings(TUNED, model=name)["lr"] == MODEL_SETTINGS["gemma3-270m"][TUNED]["lr"] != 1e-2
        assert objective_defaults("NTP", name) == {"lr": 1e-2}
    assert preset_settings(TUNED, model="gemma3-270m")["tau_law"] == "sqrt"  # only the lr moves
    assert objective_defaults("selfstudy", "gemma3-270m") == objective_defaults("selfstudy")
    for other in (None, "smollm2-135m", "/some/dir", "Qwen/Qwen3-0.6B-Base"):
        assert preset_settings("paper", model=other) == preset_settings("paper")
        assert objective_defaults("ntp", other) == {}

    parser = build_parser()

    def lr(argv):
        args = parser.parse_args(argv)
        apply_preset(args._parser, args, argv)
        return setting_value(args, TrainConfig, "lr")

    assert lr(["pg19", "--model", "gemma3-270m"]) == 1e-2  # ntp, the paper's recipe: the model's lr
    assert lr(["pg19", "--model", "gemma3-270m", "--lr", "0.05"]) == 0.05
    assert lr(["pg19", "--model", "smollm2-135m"]) == TrainConfig().lr
    assert lr(["pg19", "--model", "gemma3-270m", "--preset", TUNED]) == MODEL_SETTINGS["gemma3-270m"][TUNED]["lr"]
    assert lr(["memorize", "f.txt", "-o", "m.locas", "--model", "gemma3-270m"]) is None  # selfstudy: its own default
    assert lr(["memorize", "f.txt", "-o", "m.locas", "--model", "gemma3-270m", "--objective", "ntp"]) == 1e-2
    # the recall preset `strong`: its own lr on Gemma, the rest as written; a flag still wins
    strong = ["memorize", "f.txt", "-o", "m.locas", "--preset", "strong"]
    assert lr(strong + ["--model", "gemma3-270m"]) == MODEL_SETTINGS["gemma3-270m"]["strong"]["lr"] == 1e-3
    assert lr(strong + ["--model", "smollm2-135m"]) == preset_settings("strong")["lr"] == 3e-3
    assert lr(strong + ["--model", "gemma3-270m", "--lr", "0.02"]) == 0.02
    assert {k: v for k, v in preset_settings("strong", "gemma3-270m").items() if k != "lr"} == \
        {k: v for k, v in preset_settings("strong").items() if k != "lr"}


def test_memorize_recall_presets_set_scale_silence_and_lr_and_flags_still_win(tmp_path, capsys):
    from locas import cli
    from locas.cli.flags import apply_preset, setting_value
    from locas.cli.main import build_parser
    from locas.learn.objectives import SelfStudyConfig
    from locas.learn.presets import RECALL_PRESETS

    parser = build_parser()

    def parsed(argv):
        args = parser.parse_args(argv)
        apply_preset(args._parser, args, argv)
        return (setting_value(args, TrainConfig, "tau_scale"), setting_value(args, SelfStudyConfig, "silence_weight"),
                setting_value(args, TrainConfig, "lr"), setting_value(args, TrainConfig, "epochs"))

    base = ["memorize", "f.txt", "-o", "m.locas"]
    for name, fields in RECALL_PRESETS.items():
        assert parsed(base + ["--preset", name]) == tuple(fields[k] for k in ("tau_scale", "silence_weight", "lr",
                                                                               "epochs"))
    assert RECALL_PRESETS["strong"]["silence_weight"] > 0 and RECALL_PRESETS["strong"]["tau_scale"] > 1
    # balanced: strong's reach and cost, held quieter off the text
    balanced = {k: v for k, v in RECALL_PRESETS["balanced"].items() if k != "silence_weight"}
    assert balanced == {k: v for k, v in RECALL_PRESETS["strong"].items() if k != "silence_weight"}
    assert RECALL_PRESETS["balanced"]["silence_weight"] > RECALL_PRESETS["strong"]["silence_weight"]
    assert parsed(base + ["--preset", "strong", "--silence-weight", "5", "--lr", "0.2"])[1:3] == (5.0, 0.2)
    assert parsed(base) == (TrainConfig().tau_scale, SelfStudyConfig().silence_weight, None, None)
    text = tmp_path / "t.txt"
    text.write_text("Ada Voss built the mill in 1871.")
    out = tmp_path / "m.locas"
    code = cli.main(["memorize", str(text), "-o", str(out), "--objective", "ntp", "--preset", "strong"])
    err = capsys.readouterr().err
    assert code == 2 and "recall preset of --objective selfstudy" in err and err.count("\n") == 1
    assert not out.exists()
