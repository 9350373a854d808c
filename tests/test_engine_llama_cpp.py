"""llama.cpp (llama-cpp-python) runs the GGUF export of a fused checkpoint: the greedy tokens of the f32 file are
transformers' tokens, and q8_0 agrees on the top-1 token almost everywhere. Needs ``make engines``; skipped, with
the reason printed, where llama-cpp-python is not installed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import random_memory
from test_locomo_support import char_lm

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: run `make engines`")
pytestmark = pytest.mark.engines


@pytest.mark.parametrize("dtype, min_top1", [("f32", 1.0), ("q8_0", 0.9)])
def test_llama_cpp_runs_the_fused_export(tmp_path, dtype, min_top1):
    from locas.core.export import export_gguf

    torch.manual_seed(0)
    lm = char_lm(seed=4, chat=True, max_positions=256)
    dense = lm.to_dense(random_memory(lm, width=6, seed=8, scale=1.0)).eval()
    dense.save_pretrained(tmp_path / "fused")
    lm.tokenizer.save_pretrained(tmp_path / "fused")
    path = export_gguf(tmp_path / "fused", tmp_path / f"m-{dtype}.gguf", dtype=dtype, progress=False)
    ids = lm.tokenizer("Ann adopted a cat named Tom in May")["input_ids"]
    with torch.no_grad():
        want_logits = dense(torch.tensor([ids])).logits[0].numpy()
        want = dense.generate(torch.tensor([ids]), max_new_tokens=16, min_new_tokens=16, do_sample=False)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=1, logits_all=True, verbose=False)
    llm.eval(ids)
    got_logits = np.array(llm.scores[:len(ids)])
    out = []
    for _ in range(16):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval([out[-1]])
    assert np.mean(got_logits.argmax(-1) == want_logits.argmax(-1)) >= min_top1
    if dtype == "f32":
        assert out == want[0, len(ids):].tolist()
        assert np.abs(got_logits - want_logits).max() < 1e-3
