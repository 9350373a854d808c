"""vLLM's CPU build serves a fused checkpoint: greedy tokens equal transformers', prompt log-probs within 1e-3.

vLLM lives in its own environment (``make vllm``: ``.venv-vllm/``, its own torch and transformers), so this
runs ``benchmarks/vllm_check.py`` there on a checkpoint fused here; skipped, with the reason printed, where that
environment has not been made."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import random_memory

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
pytestmark = [pytest.mark.engines,
              pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="vLLM is not installed: run `make vllm`")]


def test_vllm_runs_the_fused_checkpoint(tmp_path):
    import transformers

    from locas import LocasForCausalLM
    from locas.core.hub import default_model_dir

    tokenizer = transformers.AutoTokenizer.from_pretrained(default_model_dir())
    torch.manual_seed(0)
    # head_dim 64, as SmolLM2's: vLLM's CPU attention refuses small ones ("Unsupported CPU attention
    # configuration: head_dim=16")
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=256,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=512, tie_word_embeddings=True, initializer_range=0.1)
    lm = LocasForCausalLM(transformers.AutoModelForCausalLM.from_config(config).eval(), tokenizer=tokenizer)
    lm.to_dense(random_memory(lm, width=32, seed=8, scale=1.0)).save_pretrained(tmp_path / "fused")
    tokenizer.save_pretrained(tmp_path / "fused")
    prompts = [tokenizer(t)["input_ids"] for t in ("Ann adopted a cat named Tom", "The lamps were lit at dusk")]
    (tmp_path / "fused" / "prompts.json").write_text(json.dumps(prompts))
    run = subprocess.run([str(VLLM_PYTHON), str(ROOT / "benchmarks" / "vllm_check.py"), str(tmp_path / "fused"),
                          str(tmp_path / "vllm.json")], capture_output=True, text=True, timeout=900)
    record = json.loads((tmp_path / "vllm.json").read_text())
    assert record["ok"], record.get("error") or run.stderr[-2000:]
    assert record["greedy_equal"] == len(prompts)
    assert record["prompt_logprob_max_abs_diff"] < 1e-3
