"""Integration: the embedded SmolLM2-135M model and a real PG-19 book."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from locas import LocasForCausalLM, load_memory, save_memory
from locas.data.pg19 import load_book
from locas.learn.config import TrainConfig
from locas.learn.learners import LocasLearner
from locas.learn.stream import stream
from locas.text.tokens import tokenize_text

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2():
    """The default model, loaded a second time: from the cache, never dequantised from its GGUF again (a
    property, not a time: the machine may be busy)."""
    from locas.core import hub

    LocasForCausalLM.from_pretrained("smollm2-135m")  # builds the cache on first use
    real = hub._gguf_file
    hub._gguf_file = lambda *a: pytest.fail("the cached default model was dequantised from its GGUF again")
    try:
        return LocasForCausalLM.from_pretrained("smollm2-135m")
    finally:
        hub._gguf_file = real


def test_trained_memory_fuses_exactly_on_smollm2(smollm2, tmp_path):
    lm = smollm2
    assert lm.config.model_type == "llama" and lm.num_layers == 30 and lm.hidden_size == 576
    tokens = tokenize_text(lm.tokenizer, load_book("10146"), 384)
    cfg = TrainConfig(window_size=128, lr=3e-2, memory_width=16)
    learner = LocasLearner(lm, cfg)
    result = stream(learner, tokens, cfg, progress=False)
    memory = learner.full_memory()
    assert memory[..., 2].abs().max() > 0 and result.skipped_updates == 0
    probe = tokens[-128:][None]
    with torch.no_grad():
        expected = lm(probe, memory=memory).logits
        with lm.disabled():
            base = lm(probe).logits
        dense = lm.to_dense(memory)
        dense.save_pretrained(tmp_path / "fused")
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "fused").eval()
        got = reloaded(probe).logits
    assert (expected - base).abs().max() > 1e-2  # the memory does something
    assert (got - expected).abs().max() <= 1e-4
    path = save_memory(memory, tmp_path / "book.locas", model=lm)
    assert torch.equal(load_memory(path, model=lm), memory.cpu())


def test_server_on_smollm2_matches_generate(smollm2, tmp_path):
    """`locas serve` on the real model: the openai client's chat completion with a memory (by its id as the
    model) is what ``lm.generate`` gives with that memory after the chat template, streamed or not."""
    from openai import OpenAI

    from conftest import random_memory
    from locas.serve.app import Server, serving

    lm = smollm2
    memory = random_memory(lm, width=8, seed=3, scale=0.3)
    save_memory(memory, tmp_path / "notes.locas", model=lm)
    server = Server(lm, tmp_path / "served", max_batch=4, max_wait_ms=5)
    server.store.put_bytes("public", "notes", (tmp_path / "notes.locas").read_bytes())
    messages = [{"role": "user", "content": "Where did Ann go on Sunday?"}]
    ids = lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = torch.tensor([list(ids["input_ids"] if hasattr(ids, "keys") else ids)])
    end = lm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    out = lm.generate(ids, memory=memory, max_new_tokens=10, do_sample=False,
                      eos_token_id=[end, lm.tokenizer.eos_token_id])
    want = lm.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    with torch.no_grad(), lm.disabled():
        base = lm.tokenizer.decode(lm.model.generate(ids, max_new_tokens=10, do_sample=False)[0, ids.shape[1]:],
                                   skip_special_tokens=True)
    with serving(server) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0)
        models = {m.id: m for m in client.models.list().data}
        assert "notes" in models
        got = client.chat.completions.create(model="notes", messages=messages, max_tokens=10, temperature=0)
        streamed = client.chat.completions.create(model="notes", messages=messages, max_tokens=10, temperature=0,
                                                  stream=True)
        pieces = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert got.choices[0].message.content == want == pieces
    assert got.usage.prompt_tokens == ids.shape[1] and got.usage.completion_tokens >= 1
    assert want != base  # the memory changes the answer, so the equality above is about the memory


def test_default_memorize_then_ask_answers_from_the_memory_on_smollm2(smollm2, tmp_path, capsys):
    """A new user's path: `locas memorize doc.txt` with the defaults, then `locas ask` with no flags. The memory
    records the prompt it trained in, ask uses it, the answer is not blank, and questions about the text
    (worded differently from it) get a lower answer NLL than without the memory."""
    import json
    from pathlib import Path

    from locas import cli
    from locas.core.files import read_memory_info
    from locas.eval.recall import question_examples, recall_report
    from locas.probes.config import ProbeConfig

    doc = json.loads((Path(__file__).parent.parent / "benchmarks/data/recall/isle-of-kesh.json").read_text())
    text = doc["text"].split("\n\n")[0]  # the first paragraph (~130 tokens)
    path = tmp_path / "kesh.txt"
    path.write_text(text)
    out = tmp_path / "kesh.locas"
    torch.set_num_threads(2)
    assert cli.main(["memorize", str(path), "-o", str(out), "--device", "cpu", "--no-recall"]) == 0
    info = read_memory_info(out)
    assert info["objective"] == "selfstudy" and info["prompt"]["style"] == "plain" and info["steps"] >= 3
    capsys.readouterr()
    assert cli.main(["ask", "What is the capital of the Isle of Kesh?", "--memory", str(out), "--device", "cpu",
                     "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.strip()  # never a blank answer
    questions = [q for q in doc["questions"] if q["answer"] in text]
    assert len(questions) >= 4
    examples = question_examples(smollm2, text, questions, ProbeConfig(chunk_tokens=1024))
    report = recall_report(smollm2, load_memory(out, model=smollm2), examples, ProbeConfig(), progress=False)
    s = report["summary"]["all"]
    assert s["nll_ratio"] < 0.9 and s["improved"] >= 0.5, s
