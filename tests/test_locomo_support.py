"""Helpers for the LoCoMo/GRPO tests: a character-level tokenizer and a tiny Llama with a matching vocabulary."""

from __future__ import annotations

import string

import pytest
import torch
import transformers
from tokenizers import Tokenizer, decoders, models

from locas import LocasForCausalLM

SPECIALS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CHARS = list(string.printable[:95]) + ["\n"]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def char_tokenizer(chat: bool = False):
    vocab = {t: i for i, t in enumerate(SPECIALS + [c for c in dict.fromkeys(CHARS)])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<pad>"))
    tok.add_special_tokens(SPECIALS)
    tok.decoder = decoders.Fuse()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                                eos_token="</s>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def char_lm(seed: int = 0, layers: int = 2, chat: bool = False, max_positions: int = 4096,
            ffn: int = 48) -> LocasForCausalLM:
    tok = char_tokenizer(chat)
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=ffn,
                                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=max_positions, pad_token_id=0, bos_token_id=1,
                                      eos_token_id=2, initializer_range=0.3)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    return LocasForCausalLM(model, tokenizer=tok, name="tiny-char")


@pytest.fixture(autouse=False)
def single_thread():
    """One intra-op thread: tiny models on a busy 2-core machine are 10-40x faster without thread contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
