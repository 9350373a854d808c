"""GGUF export (``locas export``): read back by an independent reader, transformers' own GGUF loader, the
fused model's logits come out again (exact for f32, close for f16 and q8_0); the fused config stays what
engines accept."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import GLU_CONFIGS, random_memory, tiny_lm
from locas.errors import LocasError
from test_locomo_support import char_lm


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    """A tiny GQA chat model (4 heads, 2 KV heads) with a memory fused in, saved with its tokenizer."""
    lm = char_lm(seed=4, chat=True, max_positions=128)
    memory = random_memory(lm, width=6, seed=8, scale=1.0)
    root = tmp_path_factory.mktemp("export")
    dense = lm.to_dense(memory)
    dense.save_pretrained(root / "fused")
    lm.tokenizer.save_pretrained(root / "fused")
    ids = torch.tensor([lm.tokenizer("Ann adopted a cat named Tom")["input_ids"]])
    with torch.no_grad():
        logits = dense(ids).logits
        with lm.disabled():
            base = lm(ids).logits
    assert (logits - base).abs().max() > 1e-2  # the memory matters, so surviving the export means something
    return root, ids, logits, dense.config.intermediate_size


# (max, mean) |logprob difference| allowed; measured on this tiny random model (large weights, 32-wide rows, so
# q8_0's 32-element blocks are coarse here): f16 0.076 / 0.0029, q8_0 1.73 / 0.071
@pytest.mark.parametrize("dtype, tolerance", [("f32", (1e-4, 1e-5)), ("f16", (0.2, 0.01)), ("q8_0", (4.0, 0.15))])
def test_gguf_round_trip_gives_the_fused_logits(fused, dtype, tolerance):
    from locas.core.export import export_gguf

    root, ids, want, width = fused
    path = export_gguf(root / "fused", root / f"model-{dtype}.gguf", dtype=dtype, progress=False)
    loaded = AutoModelForCausalLM.from_pretrained(root, gguf_file=path.name, dtype=torch.float32).eval()
    assert loaded.config.intermediate_size == width  # the memory's units are in the FFN
    with torch.no_grad():
        got = loaded(ids).logits
    diff = (torch.log_softmax(got, -1) - torch.log_softmax(want, -1)).abs()
    print(f"{dtype}: max |dlogp| {diff.max():.4f}, mean {diff.mean():.5f}")
    assert diff.max() <= tolerance[0] and diff.mean() <= tolerance[1], f"{dtype}: |logprob difference| {diff.max()}"
    assert got.argmax(-1).eq(want.argmax(-1)).float().mean() >= (1.0 if dtype == "f32" else 0.9)


def test_gguf_metadata_and_tokenizer(fused):
    import gguf

    from locas.core.export import export_gguf

    root, *_ = fused
    path = export_gguf(root / "fused", root / "meta.gguf", dtype="f32", progress=False)
    reader = gguf.GGUFReader(path)
    fields = {name: f for name, f in reader.fields.items()}

    def value(name):
        f = fields[name]
        return f.contents() if hasattr(f, "contents") else f.parts[f.data[0]]

    assert value("general.architecture") == "llama"
    assert value("llama.attention.head_count_kv") == 2 and value("llama.attention.head_count") == 4
    tokens = value("tokenizer.ggml.tokens")
    assert tokens[:3] == ["<pad>", "<s>", "</s>"] and "tokenizer.chat_template" in fields
    names = {t.name for t in reader.tensors}
    assert "output.weight" not in names or "token_embd.weight" in names
    assert {"blk.0.attn_q.weight", "blk.1.ffn_down.weight", "output_norm.weight"} <= names


def test_export_refuses_what_it_cannot_write(tmp_path):
    from locas.core.export import export_gguf

    lm = tiny_lm("qwen2")
    lm.model.save_pretrained(tmp_path / "qwen")
    with pytest.raises(LocasError, match="convert_hf_to_gguf"):
        export_gguf(tmp_path / "qwen", tmp_path / "q.gguf")
    with pytest.raises(LocasError, match="no config.json"):
        export_gguf(tmp_path, tmp_path / "q.gguf")
    with pytest.raises(LocasError, match="choose one of"):
        export_gguf(tmp_path / "qwen", tmp_path / "q.gguf", dtype="q4_k")
    assert not (tmp_path / "q.gguf").exists()


@pytest.mark.parametrize("arch", sorted(GLU_CONFIGS))
def test_fused_config_is_what_engines_accept(arch, tmp_path):
    """Every architecture's fused checkpoint: one intermediate_size for all layers, no custom code."""
    import json

    lm = tiny_lm(arch)
    memory = random_memory(lm, width=3)
    memory[1:] = 0  # a memory in the first layer only: the other layers still get the same width
    lm.to_dense(memory).save_pretrained(tmp_path / "fused")
    config = json.loads((tmp_path / "fused" / "config.json").read_text())
    assert isinstance(config["intermediate_size"], int)
    assert config["intermediate_size"] == lm.intermediate_size + 3
    assert "auto_map" not in config and config["model_type"] == lm.config.model_type
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "fused")
    assert {m.shape[0] for n, m in reloaded.named_parameters() if n.endswith("up_proj.weight")} == \
        {lm.intermediate_size + 3} or arch == "phi3"
