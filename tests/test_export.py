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


PIECES = ["▁a", "at", "an", "▁c", "▁cat", "▁T", "om", "▁Tom", "▁n", "am", "ed", "▁nam", "▁named", "nn", "▁Ann",
          "▁ad", "op", "ted", "▁adop", "▁adopted", "▁in", "▁M", "ay", "▁May", "he", "▁t", "▁the"]


def spm_tokenizer():
    """A tiny Gemma-style tokenizer: SentencePiece BPE with byte fallback, "▁" for spaces, no space prefix; its
    merges are every split of every piece, ordered by the piece (as transformers derives them from a
    SentencePiece model), so that its merges and llama.cpp's score-ranked merging agree."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, normalizers

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    chars = sorted(set("".join(PIECES).replace("▁", "")) | set("▁.,?!:'-"))
    vocab = {t: i for i, t in enumerate(specials + [f"<0x{b:02X}>" for b in range(256)] + chars + PIECES)}
    merges = [(p[:k], p[k:]) for p in PIECES for k in range(1, len(p)) if p[:k] in vocab and p[k:] in vocab]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(specials)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>",
                                                eos_token="<eos>", unk_token="<unk>")


def tiny_gemma3(tokenizer, seed: int = 0, window: int = 8):
    """A tiny Gemma 3 (sliding window shorter than the tests' prompts, every 6th layer global, tied head)."""
    import transformers

    from locas import LocasForCausalLM

    torch.manual_seed(seed)
    config = transformers.Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=6, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32, sliding_window=window,
        max_position_embeddings=256, pad_token_id=0, eos_token_id=1, bos_token_id=2, initializer_range=0.2)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    return LocasForCausalLM(model, tokenizer=tokenizer, name="tiny-gemma3")


TEXT = "Ann adopted a cat named Tom in May. The cat, Tom: named in May!"


@pytest.mark.parametrize("dtype, tolerance", [("f32", (1e-4, 1e-5)), ("f16", (0.2, 0.01)), ("q8_0", (4.0, 0.15))])
def test_gemma3_gguf_round_trip_gives_the_fused_logits_and_tokens(tmp_path, dtype, tolerance):
    """Gemma 3: norms shifted by one, no rotary permutation, SentencePiece scores; read back by transformers'
    GGUF loader, the fused model's logits (past the sliding window) and the tokenizer's ids come out again."""
    from transformers import AutoTokenizer

    from locas.core.export import export_gguf

    lm = tiny_gemma3(spm_tokenizer())
    memory = random_memory(lm, width=32, seed=8, scale=1.0)
    dense = lm.to_dense(memory).eval()
    dense.save_pretrained(tmp_path / "fused")
    lm.tokenizer.save_pretrained(tmp_path / "fused")
    ids = torch.tensor([lm.tokenizer(TEXT)["input_ids"]])
    assert ids.shape[1] > 2 * lm.model.config.sliding_window
    with torch.no_grad():
        want = dense(ids).logits
        with lm.disabled():
            assert (want - lm(ids).logits).abs().max() > 1e-2  # the memory matters
    path = export_gguf(tmp_path / "fused", tmp_path / f"g-{dtype}.gguf", dtype=dtype, progress=False)
    # transformers' GGUF reader does not read query_pre_attn_scalar (llama.cpp takes it as head_dim, as here)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32,
                                                  query_pre_attn_scalar=32).eval()
    assert loaded.config.sliding_window == 8 and loaded.config.intermediate_size == 96 + 32
    with torch.no_grad():
        got = loaded(ids).logits
    diff = (torch.log_softmax(got, -1) - torch.log_softmax(want, -1)).abs()
    assert diff.max() <= tolerance[0] and diff.mean() <= tolerance[1], f"{dtype}: |logprob difference| {diff.max()}"
    read = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in (TEXT, "the tomcat adopted  Ann", "zebra ünïcode 🙂"):  # unknown letters: byte fallback
        assert read(text)["input_ids"] == lm.tokenizer(text)["input_ids"], text


def test_export_refuses_a_gemma3_that_llama_cpp_would_misread(tmp_path):
    from locas.core.export import export_gguf

    lm = tiny_gemma3(spm_tokenizer())
    lm.model.config.query_pre_attn_scalar = 256  # llama.cpp takes 1/sqrt(head_dim) = 1/sqrt(32)
    lm.model.save_pretrained(tmp_path / "g")
    lm.tokenizer.save_pretrained(tmp_path / "g")
    with pytest.raises(LocasError, match=r"^llama\.cpp's gemma3 assumes query_pre_attn_scalar = head_dim"):
        export_gguf(tmp_path / "g", tmp_path / "g.gguf")
    assert not (tmp_path / "g.gguf").exists()


def spm_merge(text: str, tokens: list[str], scores: list[float]) -> list[int]:
    """llama.cpp's SentencePiece tokenizer, for a text of known characters: start from the characters, then merge
    the adjacent pair whose concatenation is a token with the highest score (the leftmost on ties), until none."""
    ids = {t: i for i, t in enumerate(tokens)}
    pieces = list(text.replace(" ", "▁"))
    while True:
        best = max(((scores[ids[a + b]], -k) for k, (a, b) in enumerate(zip(pieces, pieces[1:])) if a + b in ids),
                   default=None)
        if best is None:
            return [ids[p] for p in pieces]
        k = -best[1]
        pieces[k:k + 2] = [pieces[k] + pieces[k + 1]]


def test_gemma3_gguf_scores_make_llama_cpps_merges_give_the_tokenizers_ids(tmp_path):
    import gguf

    from locas.core.export import export_gguf

    lm = tiny_gemma3(spm_tokenizer())
    lm.model.save_pretrained(tmp_path / "g")
    lm.tokenizer.save_pretrained(tmp_path / "g")
    reader = gguf.GGUFReader(export_gguf(tmp_path / "g", tmp_path / "g.gguf", dtype="f32", progress=False))
    field = lambda name: reader.fields[name].contents()  # noqa: E731
    assert field("tokenizer.ggml.model") == "llama" and field("tokenizer.ggml.add_space_prefix") is False
    assert field("general.architecture") == "gemma3" and field("gemma3.attention.sliding_window") == 8
    tokens, scores = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.scores")
    for text in (TEXT, "the tomcat adopted Ann, named at May", "Tom named the cat"):
        assert spm_merge(text, tokens, scores) == lm.tokenizer(text, add_special_tokens=False)["input_ids"], text
