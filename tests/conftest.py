"""Shared fixtures: tiny random models built from configs (never the network)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from locas import LocasForCausalLM  # noqa: E402

transformers.logging.set_verbosity_error()

VOCAB = 97
_COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
               pad_token_id=0, bos_token_id=1, eos_token_id=2)

GLU_CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**_COMMON),
    "qwen2": lambda: transformers.Qwen2Config(**_COMMON),
    "qwen3": lambda: transformers.Qwen3Config(**_COMMON, head_dim=8),
    "mistral": lambda: transformers.MistralConfig(**_COMMON),
    "gemma": lambda: transformers.GemmaConfig(**_COMMON, head_dim=8),
    "gemma2": lambda: transformers.Gemma2Config(**_COMMON, head_dim=8),
    "phi3": lambda: transformers.Phi3Config(**_COMMON),
}


def tiny_model(arch: str = "llama", seed: int = 0, dtype=torch.float32):
    """A tiny random transformers causal LM of ``arch`` with randomised (non-trivial) weights."""
    torch.manual_seed(seed)
    config = GLU_CONFIGS[arch]() if arch in GLU_CONFIGS else MLP_CONFIGS[arch]()
    model = transformers.AutoModelForCausalLM.from_config(config).to(dtype).eval()
    return model


_SPECIAL = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)
MLP_CONFIGS: dict = {  # classic two-layer FFN models (Locas-MLP)
    "gpt2": lambda: transformers.GPT2Config(**_SPECIAL, n_embd=32, n_layer=3, n_head=4, n_inner=48, n_positions=256),
    "gpt_neox": lambda: transformers.GPTNeoXConfig(**_SPECIAL, hidden_size=32, intermediate_size=48,
                                                   num_hidden_layers=3, num_attention_heads=4,
                                                   max_position_embeddings=256),
    "opt": lambda: transformers.OPTConfig(**_SPECIAL, hidden_size=32, ffn_dim=48, num_hidden_layers=3,
                                          num_attention_heads=4, max_position_embeddings=256, word_embed_proj_dim=32),
    "gptj": lambda: transformers.GPTJConfig(**_SPECIAL, n_embd=32, n_layer=3, n_head=4, n_inner=48, rotary_dim=4,
                                            n_positions=256),
    "phi": lambda: transformers.PhiConfig(**_SPECIAL, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                          num_attention_heads=4, max_position_embeddings=256),
    "falcon": lambda: transformers.FalconConfig(**_SPECIAL, hidden_size=32, ffn_hidden_size=48, num_hidden_layers=3,
                                                num_attention_heads=4, max_position_embeddings=256, bias=True),
}


def tiny_lm(arch: str = "llama", seed: int = 0, dtype=torch.float32, **kwargs) -> LocasForCausalLM:
    return LocasForCausalLM(tiny_model(arch, seed, dtype), name=f"tiny-{arch}", **kwargs)


def random_ids(batch: int = 1, length: int = 24, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g)


def random_memory(lm, width: int = 4, batch: int = 1, seed: int = 2, scale: float = 0.5) -> torch.Tensor:
    """A memory with non-zero values in every channel (so it changes the output)."""
    g = torch.Generator().manual_seed(seed)
    from locas.core.memory import CHANNELS

    shape = (lm.num_layers, batch, width, lm.hidden_size, CHANNELS[lm.memory_kind])
    return torch.randn(shape, generator=g) * scale


@pytest.fixture(params=sorted(GLU_CONFIGS))
def glu_arch(request):
    return request.param
