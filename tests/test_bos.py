"""A model whose tokenizer puts a BOS before every text (Gemma) reads every sequence from it: windows cut from a
text (scoring, training, memory initialisation, held-out KL, a teacher's targets) and prompts. Without it Gemma-3
reads noise (PG-19 window perplexity 157 against 39). A tokenizer that adds none (SmolLM2) changes nothing."""

from __future__ import annotations

import pytest
import torch
import transformers
from tokenizers import processors

from conftest import random_memory
from locas import LocasForCausalLM
from locas.core.head import next_token_nll
from locas.core.model import bos_prefix
from locas.text.prompts import Prompt, user_prompt_ids
from test_locomo_support import CHAT_TEMPLATE, char_tokenizer

BOS = 1  # "<s>" in the character tokenizer


def bos_tokenizer(chat: bool = False):
    """The tests' character tokenizer, made to put "<s>" before every text as Gemma's does."""
    tok = char_tokenizer(chat)
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    return tok


def lms(seed: int = 3):
    """The same tiny random Llama twice: with a BOS-adding tokenizer, and with the plain one."""
    plain = char_tokenizer()
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=len(plain), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                      pad_token_id=0, bos_token_id=BOS, eos_token_id=2, initializer_range=0.3)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    return LocasForCausalLM(model, tokenizer=bos_tokenizer(), name="bos"), LocasForCausalLM(model, tokenizer=plain)


WINDOW = torch.tensor([[40, 41, 55, 60, 70, 33, 44, 80, 51, 62, 47]])  # (1, T): characters from inside a text


def test_bos_prefix_is_what_the_tokenizer_puts_before_a_text():
    with_bos, plain = lms()
    assert bos_prefix(with_bos.tokenizer) == [BOS] and with_bos.bos_ids == [BOS]
    assert bos_prefix(plain.tokenizer) == [] and plain.bos_ids == []
    ids, k = with_bos.with_bos(WINDOW)
    assert k == 1 and ids[0].tolist() == [BOS] + WINDOW[0].tolist()
    assert with_bos.with_bos(ids) == (ids, 0)  # already from the BOS
    assert plain.with_bos(WINDOW) == (WINDOW, 0)


def test_windows_are_scored_and_trained_from_the_bos():
    from locas.learn.config import TrainConfig
    from locas.learn.learners import FullAttentionLearner, LocasLearner, TruncateLearner

    lm, plain = lms()
    with torch.no_grad():
        want = next_token_nll(lm.model, torch.cat([torch.tensor([[BOS]]), WINDOW], 1))[:, 1:]  # (1, T-1)
        without = next_token_nll(lm.model, WINDOW)
    assert want.shape == without.shape and (want - without).abs().max() > 1e-3  # the BOS matters to this model
    cfg = TrainConfig(window_size=16, memory_width=4)
    for learner in (TruncateLearner(lm, cfg), FullAttentionLearner(lm, cfg)):
        torch.testing.assert_close(learner.score(WINDOW[0], 0, WINDOW.shape[1])[None], want)
    torch.testing.assert_close(lm.compute_nll(WINDOW), want)
    torch.testing.assert_close(TruncateLearner(plain, cfg).score(WINDOW[0], 0, WINDOW.shape[1])[None], without)
    learner = LocasLearner(lm, cfg)
    learner.begin(WINDOW[0], (0, WINDOW.shape[1]))
    logits = learner.logits(WINDOW)  # what the training objectives read
    assert logits.shape[:2] == WINDOW.shape
    torch.testing.assert_close(learner.nll(WINDOW), want)  # a fresh memory (values zero) is the base model


def test_a_memory_is_initialised_from_activations_read_from_the_bos():
    from locas.core.init import unit_importance

    lm, plain = lms()
    got = unit_importance(lm, WINDOW)  # (L, 1, I)
    ids = torch.cat([torch.tensor([[BOS]]), WINDOW], 1)
    mask = torch.ones_like(ids, dtype=torch.float32)
    seen = []

    def keep(_module, args):
        seen.append(args[0].detach().float().abs()[:, 1:].mean(1))  # (1, I): the window's tokens, not the BOS

    handles = [lm.spec.down_module(w.base_mlp).register_forward_pre_hook(keep) for w in lm.wrappers]
    with torch.no_grad(), lm.disabled():
        lm.model(input_ids=ids, attention_mask=mask, use_cache=False)
    for h in handles:
        h.remove()
    torch.testing.assert_close(got, torch.stack(seen))
    assert (unit_importance(plain, WINDOW) - got).abs().max() > 1e-4


def test_heldout_kl_and_a_teachers_targets_read_from_the_bos():
    from locas.eval.retention import base_variant, memory_variant, window_stats
    from locas.learn.objectives.window import teacher_targets

    lm, _ = lms()
    tokens = WINDOW[0]
    stats = window_stats([base_variant(lm), memory_variant(lm, random_memory(lm, width=4, seed=1))], tokens,
                         (0, len(tokens)))
    assert stats["base"]["nll"] == pytest.approx(float(lm.compute_nll(WINDOW).sum()), rel=1e-5)
    assert stats["locas"]["kl"] > 0
    targets = teacher_targets(lm, tokens, 0, len(tokens), context=64)
    with torch.no_grad():
        logits = lm.model(torch.cat([torch.tensor([[BOS]]), WINDOW], 1)).logits[0, 1:-1]
    torch.testing.assert_close(targets.logprobs, torch.log_softmax(logits.float(), -1))


@pytest.mark.parametrize("chat", [False, True])
def test_prompts_start_with_one_bos(chat):
    tok = bos_tokenizer(chat)
    prompt = Prompt.build(tok, [40, 41], style="chat" if chat else "plain")
    assert prompt.prefix_ids[:1] == [BOS] and prompt.prefix_ids[1:2] != [BOS]
    assert user_prompt_ids(tok, "Write one question.", use_chat=chat)[:1] == [BOS]
    tok.chat_template = "<s>" + CHAT_TEMPLATE  # a template that writes the BOS itself: not a second one
    built = Prompt.build(tok, [], style="chat")
    assert built.prefix_ids[:2] != [BOS, BOS] and built.prefix_ids[:1] == [BOS]
    plain = char_tokenizer(chat)
    assert Prompt.build(plain, [40], style="plain").prefix_ids[:1] != [BOS]
