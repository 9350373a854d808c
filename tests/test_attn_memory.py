"""The attention-path memory (``memory_on="attn"``, or ``"both"`` with the FFN's): a linear low-rank map of what each
attention block writes, trained like a Locas memory, fused into ``o_proj`` exactly, saved, stacked and served per
request."""

from __future__ import annotations

import copy
import threading

import httpx
import pytest
import torch

from conftest import GLU_CONFIGS, MLP_CONFIGS, random_ids, random_memory, tiny_lm
from locas import load_memory, save_memory
from locas.core import files
from locas.core.memory import ServingMemory, batch_serving, stack_memories
from locas.errors import LocasError, MemoryFileError
from locas.learn.config import TrainConfig
from locas.learn.learners import make_learner
from locas.learn.stream import stream

ARCHS = sorted(GLU_CONFIGS) + sorted(MLP_CONFIGS)


def _attn_memory(lm, ids, width=4, seed=3, scale=0.5):
    """A memory of ``lm``'s site initialised from ``ids`` with random (non-zero) values: it changes the output."""
    mem = lm.init_memory(ids, width=width)  # (L, 1, r, d, 2), or (2L, 1, r, d, C) for "both"
    mem[..., -1] = torch.randn(mem[..., -1].shape, generator=torch.Generator().manual_seed(seed)) * scale
    return mem


@pytest.mark.parametrize("site", ["attn", "both"])
@pytest.mark.parametrize("arch", ARCHS)
def test_attention_memory_fuses_into_o_proj_exactly_on_every_architecture(arch, site):
    lm = tiny_lm(arch, mlp_activation="backbone")
    ids = random_ids()
    depth, channels = lm.num_layers, lm.memory_parameters(1) // (lm.num_layers * lm.hidden_size)
    with torch.no_grad():
        base = lm(ids).logits
        lm.set_site(site)
        assert lm(ids).logits.equal(base)  # no memory yet: the exact base model
        mem = _attn_memory(lm, ids)
        with_memory = lm(ids, memory=mem).logits
        dense = lm.to_dense(mem)
        fused = dense(input_ids=ids).logits
    assert (with_memory - base).abs().max() > 1e-3  # the memory matters
    assert (fused - with_memory).abs().max() <= 1e-4
    if site == "attn":
        assert lm.memory_kind == "linear" and mem.shape == (depth, 1, 4, lm.hidden_size, 2)
        assert dense.config.to_dict() == lm.model.config.to_dict()  # every shape and the config unchanged
        assert all(a.shape == b.shape for a, b in zip(dense.state_dict().values(), lm.model.state_dict().values()))
    else:  # FFN slots first, then the attention's; an attention slot's gate channel stays unused (zero)
        assert mem.shape == (2 * depth, 1, 4, lm.hidden_size, channels)
        assert lm.memory_parameters(4) == depth * 4 * lm.hidden_size * (channels + 2)
        if channels == 3:
            assert not mem[depth:, ..., 1].any() and mem[:depth, ..., 1].any()
        assert dense.config.to_dict() != lm.model.config.to_dict()  # the FFN grew by the width
    lm.set_site("ffn")
    with torch.no_grad():
        assert lm(ids).logits.equal(base)  # the backbone's own projections are back


def test_keys_start_from_the_busiest_attention_channels_write_directions():
    lm = tiny_lm("llama", memory_on="attn")
    ids = random_ids()
    mem = lm.init_memory(ids, width=3)
    assert not mem[..., -1].any()  # values zero: a fresh memory changes nothing
    from locas.core.init import unit_importance

    top = unit_importance(lm, ids)[0, 0].topk(3).indices  # layer 0's busiest o_proj input channels
    o_proj = lm.model.model.layers[0].self_attn.o_proj.base_mlp.weight  # (d, A)
    expected = torch.nn.functional.normalize(o_proj[:, top].t(), dim=-1)
    assert torch.allclose(mem[0, 0, :, :, 0], expected, atol=1e-6)
    with pytest.raises(LocasError, match="attention output width"):
        lm.init_memory(ids, width=lm.num_units() + 1)


def test_locas_learns_on_the_attention_path_and_leaves_the_backbone():
    lm = tiny_lm("llama")
    backbone = {k: v.clone() for k, v in lm.model.state_dict().items()}
    tokens = random_ids(1, 15, seed=4)[0].repeat(6)  # repetition: memorising earlier windows helps later ones
    cfg = TrainConfig(window_size=16, lr=5e-2, memory_width=8, steps_per_window=2)
    plain = stream(make_learner("truncate", lm, cfg), tokens, cfg, progress=False)
    attn_cfg = TrainConfig(window_size=16, lr=5e-2, memory_width=8, steps_per_window=2, memory_on="attn")
    learner = make_learner("locas", lm, attn_cfg)
    result = stream(learner, tokens, attn_cfg, progress=False)
    assert lm.site == "attn" and learner.memory.shape[-1] == 2 and learner.memory[..., -1].abs().sum() > 0
    assert result.window_nll[0] == pytest.approx(plain.window_nll[0], rel=1e-5)  # the first window: zero memory
    assert result.ppl < plain.ppl
    state = learner.state()
    lora = make_learner("lora", lm, TrainConfig(lora_rank=2))  # another method puts the FFN site back
    assert lm.site == "ffn" and lora is not None
    ids = tokens[:20][None]
    with torch.no_grad(), state.apply(lm) as model:  # the state carries its site
        assert lm.site == "attn"
        got = model(input_ids=ids).logits
    assert lm.site == "ffn"
    with torch.no_grad():
        lm.set_site("attn")
        assert torch.equal(got, lm(ids, memory=state.memory).logits)
    assert all(torch.equal(v, backbone[k]) for k, v in lm.model.state_dict().items())
    with pytest.raises(LocasError, match="memory-on attn is a Locas memory's site"):
        make_learner("lora", lm, TrainConfig(memory_on="attn"))


def test_both_paths_train_together_on_the_chosen_decoder_layers(tmp_path):
    lm = tiny_lm("llama")
    tokens = random_ids(1, 15, seed=4)[0].repeat(4)
    cfg = TrainConfig(window_size=16, lr=5e-2, memory_width=4, memory_on="both", memory_layers="top:1")
    plain = stream(make_learner("truncate", lm, TrainConfig(window_size=16)), tokens, cfg, progress=False)
    learner = make_learner("locas", lm, cfg)
    result = stream(learner, tokens, cfg, progress=False)
    depth = lm.depth
    assert lm.site == "both" and lm.num_layers == 2 * depth and learner.layers == [depth - 1, 2 * depth - 1]
    assert learner.memory.shape == (2, 1, 4, lm.hidden_size, 3) and not learner.memory[1, ..., 1].any()
    assert learner.extra_params() == 4 * lm.hidden_size * (3 + 2)  # the unused gate channel is not counted
    assert result.ppl < plain.ppl
    full = learner.full_memory()  # (2L, 1, r, d, 3)
    save_memory(full, tmp_path / "both.locas", model=lm)
    fresh = tiny_lm("llama")
    loaded = load_memory(tmp_path / "both.locas", model=fresh)
    assert fresh.site == "both" and torch.equal(loaded, full.cpu())
    ids = tokens[:20][None]
    with torch.no_grad():
        assert torch.equal(fresh(ids, memory=loaded).logits, lm(ids, memory=full).logits)


def test_the_file_records_its_site_and_an_older_reader_refuses_it_in_one_line(tmp_path, monkeypatch):
    lm = tiny_lm("qwen2", memory_on="attn")
    ids = random_ids()
    mem = _attn_memory(lm, ids)
    save_memory(mem, tmp_path / "attn.locas", model=lm)
    info = files.read_memory_info(tmp_path / "attn.locas")
    assert info["memory_on"] == "attn" and info["version"] == 3 and info["kind"] == "linear"
    fresh = tiny_lm("qwen2")  # the FFN site: loading puts it on the file's site
    loaded = load_memory(tmp_path / "attn.locas", model=fresh)
    assert fresh.site == "attn" and torch.equal(loaded, mem)
    with torch.no_grad():
        assert torch.equal(fresh(ids, memory=loaded).logits, lm(ids, memory=mem).logits)
    ffn = tiny_lm("qwen2")
    save_memory(random_memory(ffn), tmp_path / "ffn.locas", model=ffn)
    assert files.read_memory_info(tmp_path / "ffn.locas")["version"] == 2  # an FFN memory is read as before
    monkeypatch.setattr(files, "VERSION", 2)  # a reader from before the attention path
    files.read_memory_info(tmp_path / "ffn.locas")
    with pytest.raises(MemoryFileError, match="unsupported format locas-memory v3; upgrade locas") as err:
        files.read_memory_info(tmp_path / "attn.locas")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("site", ["attn", "both"])
def test_stacked_and_batched_attention_memories_equal_each_alone(site):
    lm = tiny_lm("llama", memory_on=site)
    ids = random_ids(length=16)
    a, b = _attn_memory(lm, ids, width=4, seed=5), _attn_memory(lm, ids, width=2, seed=6)
    with torch.no_grad():
        base, out_a, out_b = (lm(ids, memory=m).logits if m is not None else lm(ids).logits for m in (None, a, b))
        both = lm(ids, memory=stack_memories([a, b])).logits
        # the last slot's (an attention projection's) memory: the stack's extra output is the sum of the two extras
        wrapper = lm.wrappers[-1]
        x = torch.randn(1, 5, lm.num_units(lm.num_layers - 1))
        outs = []
        for m in (a[-1], b[-1], stack_memories([a, b])[-1]):
            wrapper.memory = m
            outs.append(wrapper(x) - wrapper.base_mlp(x))
        wrapper.memory = None
        assert torch.allclose(outs[2], outs[0] + outs[1], atol=1e-6)
        assert (both - out_a).abs().max() > 1e-4 and (both - out_b).abs().max() > 1e-4
        rows = [ServingMemory.of(a), None, ServingMemory.of(b)]
        lm.set_memory_channels(batch_serving(rows))
        batched = lm(ids.repeat(3, 1)).logits
        lm.set_memory_channels(None)
    for got, want in zip(batched, (out_a, base, out_b)):
        assert torch.allclose(got, want[0], atol=1e-5)


def test_a_server_on_the_attention_path_serves_its_memories_and_refuses_the_others(tmp_path):
    from serve_support import memory_files, open_server, served_lm, upload
    from test_serve import expected

    lm = served_lm()
    ffn_file = tmp_path / "ffn.locas"
    save_memory(random_memory(lm, width=4, seed=21, scale=2.0), ffn_file, model=lm)
    lm.set_site("attn")
    made = memory_files(lm, tmp_path / "files")  # a, b, c on the attention path
    prompt = "Ann: hello\nBob:"
    with open_server(lm, made, tmp_path / "served") as (url, srv), httpx.Client(base_url=url, timeout=60) as client:
        def ask(memory):
            r = client.post("/v1/completions", json={"model": srv.model_id, "memory": memory, "prompt": prompt,
                                                     "max_tokens": 8, "temperature": 0})
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["text"]

        alone = {m: ask(m) for m in ("a", "b", None)}
        for name in "ab":
            assert alone[name] == expected(lm, prompt, load_memory(made[name], model=lm), 8)
        assert alone["a"] != alone[None] and lm.site == "attn"
        results = {}
        threads = [threading.Thread(target=lambda m=m: results.__setitem__(m, ask(m))) for m in ("a", "b", None)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == alone  # decoded together, each row as it is alone
        refused = upload(client, ffn_file, "ffn")
        assert refused.status_code == 400 and "--memory-on ffn" in refused.text, refused.text
    assert copy.deepcopy(lm).site == "attn"  # a job's model copy keeps its site


def test_memorize_ask_and_fuse_on_the_attention_path_from_the_command_line(tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from locas import LocasForCausalLM, cli

    vocab = {f"w{i}": i for i in range(97)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    model_dir = tmp_path / "tiny"
    tiny_lm("llama").model.save_pretrained(model_dir)
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", pad_token="w0").save_pretrained(model_dir)
    text = tmp_path / "t.txt"
    text.write_text(" ".join(f"w{3 + (i * 7) % 40}" for i in range(200)))
    out = tmp_path / "t.locas"
    common = ["--model", str(model_dir), "--device", "cpu"]
    assert cli.main(["memorize", str(text), "-o", str(out), "--objective", "ntp", "--window-size", "64",
                     "--memory-width", "4", "--memory-on", "attn", "--attn-lr-scale", "0.5", "--lr", "0.01",
                     *common]) == 0
    assert files.read_memory_info(out)["memory_on"] == "attn"
    assert cli.main(["fuse", "--memory", str(out), "-o", str(tmp_path / "fused"), *common]) == 0
    base = LocasForCausalLM(AutoModelForCausalLM.from_pretrained(model_dir).eval())
    fused = AutoModelForCausalLM.from_pretrained(tmp_path / "fused").eval()
    ids = torch.randint(3, 97, (1, 20))
    with torch.no_grad():
        memory = load_memory(out, model=base)  # the model takes the file's site
        assert (fused(ids).logits - base(ids, memory=memory).logits).abs().max() <= 1e-5
        assert memory[..., -1].any() and (fused(ids).logits - base.model(ids).logits).abs().max() > 1e-5
    capsys.readouterr()
    code = cli.main(["memorize", str(text), "-o", str(tmp_path / "again.locas"), "--memory", str(out),
                     "--objective", "ntp", "--window-size", "64", "--memory-width", "4", *common])
    err = capsys.readouterr().err
    assert code == 2 and "continue it with --memory-on attn" in err and err.count("\n") == 1
    ffn_lm = LocasForCausalLM(AutoModelForCausalLM.from_pretrained(model_dir).eval())
    save_memory(random_memory(ffn_lm), tmp_path / "ffn.locas", model=ffn_lm)
    code = cli.main(["stack", str(out), str(tmp_path / "ffn.locas"), "-o", str(tmp_path / "mixed.locas"), *common])
    err = capsys.readouterr().err
    assert code == 2 and "different paths (--memory-on attn, ffn)" in err and not (tmp_path / "mixed.locas").exists()


def test_variants_of_both_sites_are_scored_side_by_side():
    from locas.eval.retention import memory_variant

    lm = tiny_lm("llama")
    ids = random_ids()
    ffn_memory = random_memory(lm)
    with torch.no_grad():
        want_ffn = lm(ids, memory=ffn_memory).logits
    ffn = memory_variant(lm, ffn_memory)
    lm.set_site("attn")
    attn_memory = _attn_memory(lm, ids)
    with torch.no_grad():
        want_attn = lm(ids, memory=attn_memory).logits
    attn = memory_variant(lm, attn_memory, name="attn")
    lm.set_site("ffn")
    with torch.no_grad():
        for variant, want in ((attn, want_attn), (ffn, want_ffn), (attn, want_attn)):
            with variant.enter() as model:
                assert torch.equal(model(input_ids=ids).logits, want)
    assert lm.site == "ffn" and not torch.equal(want_ffn, want_attn)


def test_the_wrapped_model_saves_under_its_own_keys_and_detaches_to_the_plain_modules():
    from conftest import tiny_model
    from locas import LocasForCausalLM

    model = tiny_model("llama")
    keys, o_proj = set(model.state_dict()), model.model.layers[0].self_attn.o_proj
    lm = LocasForCausalLM(model, memory_on="both")
    assert set(lm.model.state_dict()) == keys  # the wrappers are state-dict transparent
    assert lm.detach().model.layers[0].self_attn.o_proj is o_proj


@pytest.mark.parametrize("site", ["attn", "both"])
def test_a_fused_attention_memory_survives_the_gguf_export(tmp_path, site):
    from transformers import AutoModelForCausalLM

    from locas.core.export import export_gguf
    from test_locomo_support import char_lm

    lm = char_lm(seed=4, chat=True, max_positions=128)
    lm.set_site(site)
    ids = torch.tensor([lm.tokenizer("Ann adopted a cat named Tom")["input_ids"]])
    memory = _attn_memory(lm, ids, width=6, scale=1.0)
    dense = lm.to_dense(memory)
    dense.save_pretrained(tmp_path / "fused")
    lm.tokenizer.save_pretrained(tmp_path / "fused")
    path = export_gguf(tmp_path / "fused", tmp_path / "m.gguf", dtype="f32", progress=False)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        want = lm(ids, memory=memory).logits
        base = lm.model(ids).logits if site == "attn" else None
        got = loaded(ids).logits
    assert (torch.log_softmax(got, -1) - torch.log_softmax(want, -1)).abs().max() <= 1e-4
    if base is not None:  # the same shapes as the base model, the memory inside o_proj
        assert loaded.config.intermediate_size == lm.intermediate_size and (want - base).abs().max() > 1e-2


@pytest.mark.parametrize("site", ["attn", "both"])
def test_an_attention_wider_than_the_residual_stream_fuses_exactly(site):
    """Gemma 3's o_proj reads more channels than the model is wide (heads x head_dim = 64 > d = 32 here; 1024 > 640
    in Gemma-3-270M): the keys live in d dimensions all the same."""
    import transformers

    from locas import LocasForCausalLM

    torch.manual_seed(0)
    config = transformers.Gemma3TextConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                           num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                                           max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
                                           eos_token_id=2, sliding_window=8)
    lm = LocasForCausalLM(transformers.AutoModelForCausalLM.from_config(config).eval(), memory_on=site)
    ids = random_ids()
    memory = _attn_memory(lm, ids)
    assert lm.num_units(lm.num_layers - 1) == 64 and memory.shape[-2] == 32
    with torch.no_grad():
        want, base = lm(ids, memory=memory).logits, lm.model(ids).logits
        fused = lm.to_dense(memory)(input_ids=ids).logits
    assert (want - base).abs().max() > 1e-2 and (fused - want).abs().max() <= 1e-4
