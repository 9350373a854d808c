"""The decoder on models whose layers attend through a sliding window (Gemma 2/3, Mistral): a prefix and prompts
longer than the window give transformers' own greedy tokens and NLLs, with a memory installed too."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers

from conftest import random_memory
from locas import LocasForCausalLM, ModelState
from locas.text.decoding import Decoder
from test_locomo_support import char_tokenizer

WINDOW = 8
SLIDING = {  # tiny configs whose window is far shorter than the prefix (20 tokens) and the prompts
    "mistral": lambda v: transformers.MistralConfig(**_common(v), sliding_window=WINDOW),
    "gemma2": lambda v: transformers.Gemma2Config(**_common(v), head_dim=8, sliding_window=WINDOW),
    "gemma3_text": lambda v: transformers.Gemma3TextConfig(
        **_common(v), head_dim=8, sliding_window=WINDOW,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"]),
}


def _common(vocab: int) -> dict:
    return dict(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2)


@pytest.fixture(params=sorted(SLIDING))
def sliding_lm(request) -> LocasForCausalLM:
    tok = char_tokenizer(False)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(SLIDING[request.param](len(tok))).eval()
    return LocasForCausalLM(model, tokenizer=tok, name=f"tiny-{request.param}")


def _generate(model, ids: list[int], n: int) -> list[int]:
    """transformers' greedy continuation, up to and including its EOS (it stops there; the decoder, given no stop
    tokens, goes on)."""
    x = torch.tensor([ids])
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False)[0, x.shape[1]:]
    eos = model.config.eos_token_id
    return out[:out.tolist().index(eos) + 1].tolist() if eos in out.tolist() else out.tolist()


@pytest.mark.parametrize("with_memory", [False, True])
def test_greedy_tokens_and_nll_equal_transformers_past_the_window(sliding_lm, with_memory):
    lm = sliding_lm
    torch.manual_seed(1)
    vocab = lm.model.config.vocab_size
    prefix = torch.randint(3, vocab, (20,)).tolist()
    suffixes = [torch.randint(3, vocab, (n,)).tolist() for n in (3, 11, 6)]  # different lengths
    memory = random_memory(lm, width=4, seed=3, scale=1.0) if with_memory else None
    with ModelState(memory=memory).apply(lm) as model:
        for pre in (prefix, []):
            decoder = Decoder(model, lm.tokenizer, pre, max_new_tokens=12, batch_size=4, stop_ids=[],
                              prefill_chunk=7)
            got = [c.tokens for c in decoder.generate(suffixes)]
            for g, s in zip(got, suffixes):
                want = _generate(model, pre + s, 12)
                assert len(g) == 12 and g[:len(want)] == want
            targets = [g[:5] for g in got]
            want = []
            for s, t in zip(suffixes, targets):
                with torch.no_grad():
                    logits = model(input_ids=torch.tensor([pre + s + t])).logits[0].float()
                start = len(pre) + len(s) - 1
                want.append(float(F.cross_entropy(logits[start:start + len(t)], torch.tensor(t))))
            assert decoder.nll(suffixes, targets) == pytest.approx(want, rel=1e-5)
    assert len({tuple(g) for g in got}) > 1  # the prompts matter, so the equality means something


def test_the_server_batcher_decodes_a_sliding_model_exactly(sliding_lm):
    """Rows submitted together on a windowed model: each gives what transformers' generate gives it alone."""
    from locas.serve.batcher import Batcher, Generation

    lm = sliding_lm
    torch.manual_seed(2)
    vocab = lm.model.config.vocab_size
    prompts = [torch.randint(3, vocab, (n,)).tolist() for n in (14, 25, 9)]  # past the window of 8
    memory = random_memory(lm, width=4, seed=5, scale=1.0)
    batcher = Batcher(lm, max_batch=4, max_wait_ms=200)
    try:
        rows = [batcher.submit(Generation(p, memory=m, max_tokens=10, stop_ids=frozenset()))
                for p, m in zip(prompts, [memory, None, memory])]
        got = [g.future.result(timeout=120).tokens for g in rows]
    finally:
        batcher.close()
    for g, p, m in zip(got, prompts, [memory, None, memory]):
        with ModelState(memory=m).apply(lm) as model:
            want = _generate(model, p, 10)
        assert len(g) == 10 and g[:len(want)] == want
    assert batcher.peak == 1  # one row at a time: no padding inside a window
